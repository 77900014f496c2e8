"""The exit watch against the real proc connector, in a real `Daemon`: while the connector
reports every exec and exit the daemon's refreshes do not list /proc; an overrun of its
receive buffer (``ENOBUFS``) is counted and followed by one listing."""

from __future__ import annotations

import subprocess
import time

from tests.faults.workload import build_runner
from tests.lifecycle.turns import turn
from vgpumon.daemon.exit_watch import PROC_CONNECTOR, ExitWatch
from vgpumon.daemon.loop import Daemon


def steps_until(daemon: Daemon, done, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        turn(daemon)


def test_refreshes_do_not_list_proc_while_the_connector_reports_everything(daemon):
    assert daemon.observer.events_complete
    listed = daemon.observer.listings
    subprocess.run(["true"], check=True)
    for _ in range(3):
        daemon.refresh_now()
    assert daemon.observer.listings == listed


def test_an_overrun_is_counted_and_followed_by_one_listing(daemon, tmp_path):
    burst = build_runner(tmp_path)
    listed = daemon.observer.listings
    # The daemon does not read while ~25,000 exits overrun the receive buffer.
    subprocess.run([str(burst), "burst", "25000"], check=True, timeout=120)
    steps_until(daemon, lambda: daemon.runtime.overflows.get(PROC_CONNECTOR) == 1)
    assert daemon.observer.listings == listed + 1
    # The events still queued after the overrun are read, and cause no further listing.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        turn(daemon)
    assert daemon.observer.listings == listed + 1
    assert daemon.runtime.overflows[PROC_CONNECTOR] == 1


def test_a_batch_whose_handling_raises_leaves_the_connector_read(daemon, monkeypatch):
    """A read at the end of a coalescing window finds the socket unwatched and a timer its
    only way back: if handling that batch raises (a bug; the loop counts it), the connector
    must still be read afterwards."""
    watch = next(s for s in daemon._sources if isinstance(s, ExitWatch))
    calls: list[int] = []
    handle = watch._handle

    def flaky(events, now):
        calls.append(len(events))
        if len(calls) == 2:
            raise RuntimeError("a bug in one batch")
        handle(events, now)

    monkeypatch.setattr(watch, "_handle", flaky)
    deadline = time.monotonic() + 20.0
    while len(calls) < 4:
        assert time.monotonic() < deadline, f"the connector was no longer read: {calls}"
        subprocess.run(["true"], check=True)
        turn(daemon)
