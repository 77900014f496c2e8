"""The coalescing window of the exit watch against the real proc connector, in a real
`Daemon`: it doubles while every read finds events (a busy host is read a few times a
second, not fifty) and starts over after a read that found none."""

from __future__ import annotations

import errno
import itertools
import subprocess
import time

from tests.lifecycle.turns import turn
from vgpumon.daemon import exit_watch
from vgpumon.daemon.exit_watch import ExitWatch
from vgpumon.model import collectors

CHURN = "i=0; while [ $i -lt 4000 ]; do /bin/true; i=$((i+1)); done"




def test_the_window_grows_while_busy_and_starts_over_after_a_quiet_read(daemon, monkeypatch):
    windows: list[float] = []
    call_later = daemon.call_later

    def recording(delay, collector, action):
        if collector == collectors.EXITS and delay >= exit_watch.COALESCE_SECONDS:
            windows.append(delay)
        return call_later(delay, collector, action)

    monkeypatch.setattr(daemon, "call_later", recording)
    churn = subprocess.Popen(["sh", "-c", CHURN])
    try:
        deadline = time.monotonic() + 30.0
        while exit_watch.COALESCE_MAX_SECONDS not in windows:
            assert time.monotonic() < deadline, f"the window never grew: {windows}"
            assert churn.poll() is None, f"the churn ended first: {windows}"
            turn(daemon)
    finally:
        churn.kill()
        churn.wait()
    grown = windows[:windows.index(exit_watch.COALESCE_MAX_SECONDS) + 1]
    assert grown[0] == exit_watch.COALESCE_SECONDS
    assert all(b in (2 * a, exit_watch.COALESCE_MAX_SECONDS) and b > a
               for a, b in itertools.pairwise(grown)), grown

    # The churn is over: some read finds nothing, and the next event opens a short window.
    watch = next(s for s in daemon._sources if isinstance(s, ExitWatch))
    deadline = time.monotonic() + 30.0
    while watch._window_seconds != exit_watch.COALESCE_SECONDS:
        assert time.monotonic() < deadline, "the window never started over"
        turn(daemon)
    windows.clear()
    deadline = time.monotonic() + 30.0
    while not windows:
        assert time.monotonic() < deadline, "no window after a new event"
        subprocess.run(["true"], check=True)
        turn(daemon)
    assert windows[0] == exit_watch.COALESCE_SECONDS


def test_a_read_that_keeps_failing_is_tried_again_once_a_window(daemon, monkeypatch):
    """A connector whose reads fail (the socket stays readable) must not be read at every
    turn of the loop: the failure is retried when a window has passed."""
    watch = next(s for s in daemon._sources if isinstance(s, ExitWatch))
    assert watch._connector is not None
    calls: list[float] = []

    connector = watch._connector

    def failing(limit: int = 0) -> list:
        calls.append(time.monotonic())
        connector.drained = False  # as a read that fails midway leaves it
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(connector, "receive", failing)
    turns = 0
    subprocess.run(["true"], check=True)  # readable now, and never drained
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        turn(daemon, at_most=0.01)
        turns += 1
    assert calls, "the connector was never read"
    # Windows of 20, 40, 80, 160 and 300 ms: five reads in 0.5 s at most, in ~50 turns.
    assert len(calls) <= 6, (len(calls), turns)
