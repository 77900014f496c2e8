"""Detection latency of a real `vgpumon run`: from a change on the host to the daemon's event.

Two figures per change, from the moment the change began (taken by whoever made it, on the
same clock as the daemon's):
- *visible*: when the event first showed up at ``/events``, polled every 2 ms over one
  keep-alive connection (so up to ~2 ms of polling granularity is included);
- *seen*: the event's ``ts``, the daemon's clock when it started the work that found the
  change (handling the proc connector datagram or the inotify event, or a full refresh that
  began before the change and still saw it: then it is negative).

Changes: runner start (from just before the spawn, fork+exec included, to
``process_started``); library load (from just before the runner's open() of the late library
to ``library_loaded``); runner exit (from just before SIGKILL to ``process_exited``: published
as soon as the exit and its status are read, with the kernel log read at that moment; trees
before that waited up to 0.5 s for kernel-log evidence); link swap (from just before the rename of
``ln -sf`` to ``shim_link_changed``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from tests.bench.client import Scraper
from tests.bench.synthetic import SyntheticHost

POLL_SECONDS = 0.002
KINDS = ("start", "library_load", "exit", "link_swap")


class EventWaiter:
    def __init__(self, address: str):
        self._scraper = Scraper(address)

    def wait(self, kind: str, since: float, match: Callable[[dict[str, Any]], bool],
             timeout: float = 15.0) -> tuple[dict[str, Any], float]:
        """The first event of `kind` with a ``ts`` after `since` that matches, and when it was
        first seen here."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self._scraper.get(f"/events?kind={kind}&since={since}")
            seen_at = time.time()
            for event in json.loads(body)["events"]:
                if match(event):
                    return event, seen_at
            time.sleep(POLL_SECONDS)
        raise AssertionError(f"no {kind} event within {timeout}s")

    def close(self) -> None:
        self._scraper.close()


class Latencies:
    """Seen and visible latencies per kind of change, in seconds."""

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.visible: dict[str, list[float]] = {kind: [] for kind in KINDS}

    def add(self, kind: str, began: float, event: dict[str, Any], visible_at: float) -> None:
        self.seen[kind].append(event["ts"] - began)
        self.visible[kind].append(visible_at - began)


def runner_trials(host: SyntheticHost, address: str, trials: int, found: Latencies) -> None:
    """Start a runner, load its CUDA library late, kill it: three changes per trial."""
    events = EventWaiter(address)
    try:
        for index in range(trials):
            model = host.models[index % len(host.models)]
            spawned = time.time()
            runner = host.start_runner(model, lines=200, late_load=True)
            pid = runner.pid

            def of_runner(event: dict[str, Any], pid: int = pid) -> bool:
                return event["pid"] == pid

            # A PID is new to this run, so any event naming it is of this trial; a full
            # refresh that began a little before the change may have stamped it earlier.
            since = spawned - 60
            found.add("start", spawned, *events.wait("process_started", since, of_runner))
            opened, _mapped = runner.load_late_library()
            found.add("library_load", opened, *events.wait(
                "library_loaded", since,
                lambda e, pid=pid: e["pid"] == pid and e["library"] == "ggml-cuda"))
            killed = time.time()
            runner.kill()
            host.stop(runner)
            found.add("exit", killed, *events.wait("process_exited", since, of_runner))
    finally:
        events.close()


def link_trials(host: SyntheticHost, address: str, trials: int, found: Latencies) -> None:
    """Swap a shim link to the real driver and back (`ln -sf`), timing each change."""
    events = EventWaiter(address)
    link, _shim = host.link_paths()[0]
    texts = [str(host.lib64 / "libcuda.so.575.51.03"), os.readlink(link)]
    last = time.time() - 60  # the ts of the last change seen: the next one is after it
    try:
        for index in range(trials):
            text = texts[index % 2]
            temporary = f"{link}.bench-tmp"
            os.symlink(text, temporary)
            swapped = time.time()
            os.rename(temporary, link)
            event, visible = events.wait("shim_link_changed", last,
                                         lambda e, text=text: e["new_target"] == text)
            found.add("link_swap", swapped, event, visible)
            last = event["ts"]
    finally:
        events.close()
        if os.readlink(link) != texts[1]:
            os.symlink(texts[1], f"{link}.bench-tmp")
            os.rename(f"{link}.bench-tmp", link)
