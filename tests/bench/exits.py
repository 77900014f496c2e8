"""A tracked runner killed with SIGKILL, until its `process_exited` is visible at /events.

Each trial starts a runner, waits until every daemon measured has its `process_started`, then
kills it and polls each daemon's /events every 2 ms over a keep-alive connection of its own
(one thread per daemon, so a baseline daemon next to the measured one is timed from the same
kill). Latency is from just before the kill to the poll that first showed the event.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tests.bench.detection import EventWaiter
from tests.bench.measure import Summary, summarize
from tests.bench.synthetic import SyntheticHost


@dataclass
class ExitLatencies:
    visible: list[float] = field(default_factory=list)  # seconds from the kill
    seen: list[float] = field(default_factory=list)  # the event's ts, from the kill
    reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> Summary:
        return summarize(self.visible)

    def as_dict(self) -> dict[str, Any]:
        return {"visible": self.summary().as_dict(), "seen": summarize(self.seen).as_dict(),
                "reasons": self.reasons}


def kill_trials(host: SyntheticHost, addresses: dict[str, str],
                trials: int) -> dict[str, ExitLatencies]:
    """`addresses`: daemon name -> host:port. Latencies per daemon."""
    waiters = {name: EventWaiter(address) for name, address in addresses.items()}
    found = {name: ExitLatencies() for name in addresses}
    pool = ThreadPoolExecutor(max_workers=len(addresses))
    try:
        for index in range(trials):
            since = time.time() - 60  # a PID is new to this run: any event naming it is ours
            runner = host.start_runner(host.models[index % len(host.models)], lines=200)
            pid = runner.pid

            def of_runner(event: dict[str, Any], pid: int = pid) -> bool:
                return event["pid"] == pid

            for waiter in waiters.values():
                waiter.wait("process_started", since, of_runner)
            futures = {}
            killed = time.time()
            runner.kill()
            for name, waiter in waiters.items():
                futures[name] = pool.submit(waiter.wait, "process_exited", since, of_runner)
            for name, future in futures.items():
                event, visible_at = future.result()
                found[name].visible.append(visible_at - killed)
                found[name].seen.append(event["ts"] - killed)
                reason = str(event.get("reason"))
                found[name].reasons[reason] = found[name].reasons.get(reason, 0) + 1
            host.stop(runner)
    finally:
        pool.shutdown()
        for waiter in waiters.values():
            waiter.close()
    return found
