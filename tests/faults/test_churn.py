"""PIDs that vanish between listing /proc and reading their files, hundreds per second, while
vgpumon scans every 100 ms: it keeps serving, no source fails, and the exits of the
processes it tracked are still counted exactly."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections import Counter

from tests.faults.workload import exits_by_reason, runner_config, wait_exits
from tests.harness import wait_for

CHURN_SECONDS = 6.0


def collector_success(metrics) -> dict[str, float]:
    return {dict(labels)["collector"]: value for (name, labels), value in metrics.items()
            if name == "vgpumon_collector_success"}


def test_churn_of_short_processes_while_scanning_every_100ms(tmp_path, runner_binary, runners,
                                                            daemons):
    binary = re.escape(str(runner_binary))
    config = runner_config(tmp_path, runner_binary, interval="100ms", groups={
        "runner": {"cmdline": f"^{binary} --model steady"},
        "churn": {"cmdline": f"^{binary} --model churn"},
    })
    daemon = daemons(config, tmp_path)
    steady = [runners.start(model="steady") for _ in range(3)]
    daemon.wait_value("vgpumon_processes", 3, group="runner")
    healthy = {name for name, ok in collector_success(daemon.metrics()).items() if ok == 1}
    assert {"processes", "maps", "exits"} <= healthy

    stop = threading.Event()
    spawned = [0, 0]

    def churn(slot: int) -> None:
        while not stop.is_set():
            batch = [subprocess.Popen([str(runner_binary), "--model", "churn", "--mode",
                                       "exit:0", "--ms", str(i % 4)]) for i in range(20)]
            for process in batch:
                process.wait()
            spawned[slot] += len(batch)

    threads = [threading.Thread(target=churn, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    scrapes, failures = 0, []
    try:
        deadline = time.monotonic() + CHURN_SECONDS
        while time.monotonic() < deadline:
            success = collector_success(daemon.metrics())
            scrapes += 1
            failures += [(name, success.get(name)) for name in healthy
                         if success.get(name) != 1]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    rate = sum(spawned) / CHURN_SECONDS
    assert rate >= 100, f"only {rate:.0f} processes per second"
    assert not failures, failures[:10]
    assert scrapes >= 20
    assert daemon.process.poll() is None
    started = daemon.value("vgpumon_process_starts_total", group="churn")
    assert 0 < started <= sum(spawned)

    # The processes it tracked all along: every exit counted, with its reason.
    for runner in steady:
        runners.kill(runner, signal.SIGTERM)
    wait_exits(daemon, Counter(stopped=3))
    wait_for(lambda: daemon.value("vgpumon_processes", group="churn") == 0,
             message="the churn group to empty")
    assert exits_by_reason(daemon) == Counter(stopped=3)
    assert "Traceback" not in daemon.log_text()
    assert "event handler failed" not in daemon.log_text()
