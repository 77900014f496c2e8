"""Counters, exit reasons and crash-loop windows."""

from __future__ import annotations

import os
import signal

import pytest

from vgpumon.config.schema import CrashLoopSpec
from vgpumon.daemon.counters import Tracker
from vgpumon.linux.waitstatus import WaitStatus, decode, signal_name
from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.model.exits import reason_for


@pytest.mark.parametrize(("status", "oom", "reason"), [
    (0, False, "clean"),
    (3 << 8, False, "error"),
    (2 << 8, False, "error"),  # a Go crash until the log says so
    (signal.SIGSEGV, False, "crash"),
    (signal.SIGSEGV | 0x80, False, "crash"),  # core dumped
    (signal.SIGABRT, False, "crash"),
    (signal.SIGBUS, False, "crash"),
    (signal.SIGKILL, False, "stopped"),
    (signal.SIGKILL, True, "oom"),
    (signal.SIGTERM, False, "stopped"),
    (signal.SIGINT, False, "stopped"),
    (signal.SIGHUP, False, "error"),
])
def test_reason_for_wait_status(status, oom, reason):
    assert reason_for(decode(status), oom_killed=oom) == reason


def test_reason_unknown_without_status():
    assert reason_for(None) == "unknown"


def test_wait_status_decoding_agrees_with_the_os_module():
    for status in (0, 768, 0xFF00, signal.SIGSEGV | 0x80, signal.SIGKILL, 64):
        decoded = decode(status)
        if os.WIFEXITED(status):
            assert decoded == WaitStatus(exit_code=os.WEXITSTATUS(status))
        else:
            assert decoded == WaitStatus(signal=os.WTERMSIG(status),
                                         core_dumped=os.WCOREDUMP(status))
    segv = decode(signal.SIGSEGV | 0x80)
    assert segv.signal == signal.SIGSEGV and segv.core_dumped and segv.signal_name == "SIGSEGV"
    assert decode(-1) == WaitStatus() and decode(0x137F) == WaitStatus()  # unknown, stopped


def test_signal_names_are_the_kernels_with_a_fallback():
    assert signal_name(6) == "SIGABRT" and signal_name(31) == "SIGSYS"
    assert signal_name(None) is None
    assert signal_name(200) == "SIG200"


def exited(ts, reason, group="runner"):
    return Event(ts, ev.PROCESS_EXITED, {"group": group, "pid": 1, "reason": reason})


def test_counters_follow_events():
    tracker = Tracker(CrashLoopSpec(crashes=3, window=600))
    tracker.record([
        Event(1, ev.PROCESS_STARTED, {"group": "runner", "pid": 1}),
        exited(2, "clean"), exited(3, "stopped"), exited(4, "crash"), exited(5, "oom"),
        Event(6, ev.SHIM_LINK_CHANGED, {"path": "/l", "state": "wrong_target"}),
        Event(7, ev.CUDA_ERROR, {"message": "x"}),
    ])
    counters = tracker.counters(10)
    assert counters.starts == {"runner": 1}
    assert counters.exits[("runner", "clean")] == 1
    assert counters.exits[("runner", "crash")] == 1
    assert counters.crashes == {"runner": 2}
    assert counters.last_crash == {"runner": 5}
    assert counters.link_changes == {"host:/l": 1} and counters.link_last_change == {"host:/l": 6}
    assert counters.log_errors == {ev.CUDA_ERROR: 1}
    assert counters.events[ev.PROCESS_EXITED] == 4


def test_crash_loop_starts_at_threshold_and_ends_after_the_window():
    tracker = Tracker(CrashLoopSpec(crashes=3, window=60))
    assert [e.kind for e in tracker.record([exited(0, "crash"), exited(10, "error")])] == [
        ev.PROCESS_EXITED, ev.PROCESS_EXITED]
    recorded = tracker.record([exited(20, "crash")])
    assert [e.kind for e in recorded] == [ev.PROCESS_EXITED, ev.CRASH_LOOP_STARTED]
    assert recorded[1].fields == {"group": "runner", "crashes": 3, "window_seconds": 60}
    assert tracker.counters(21).crash_loop == {"runner": True}
    assert tracker.counters(21).window_crashes == {"runner": 3}
    assert tracker.record([exited(25, "crash")])[-1].kind == ev.PROCESS_EXITED  # no 2nd start
    assert tracker.tick(70) == []  # crashes at 10, 20, 25 are still inside [10, 70]
    ended = tracker.tick(81)
    assert [e.kind for e in ended] == [ev.CRASH_LOOP_ENDED]
    assert tracker.counters(81).crash_loop == {"runner": False}
    assert tracker.counters(81).events[ev.CRASH_LOOP_ENDED] == 1


def test_clean_and_stopped_exits_never_make_a_loop():
    tracker = Tracker(CrashLoopSpec(crashes=2, window=60))
    tracker.record([exited(t, "stopped") for t in range(5)] + [exited(6, "clean")])
    assert not tracker.counters(7).crash_loop.get("runner")


def test_window_starts_count_restarts():
    tracker = Tracker(CrashLoopSpec(crashes=3, window=60))
    tracker.record([Event(t, ev.PROCESS_STARTED, {"group": "server", "pid": t})
                    for t in (0, 30, 50)])
    assert tracker.counters(55).window_starts == {"server": 3}
    tracker.tick(100)
    assert tracker.counters(100).window_starts == {"server": 1}


def test_counters_are_the_same_object_until_something_changes():
    """The exporter reuses its families while the published counters are the same object."""
    tracker = Tracker(CrashLoopSpec(crashes=3, window=60))
    tracker.record([exited(0, "crash")])
    first = tracker.counters(1)
    assert tracker.counters(2) is first
    tracker.record([Event(3, ev.PROCESS_STARTED, {"group": "runner", "pid": 2})])
    second = tracker.counters(4)
    assert second is not first and second.starts == {"runner": 1}
    assert tracker.counters(61).window_crashes == {"runner": 0}  # the crash left the window
    assert tracker.counters(61) is not second
    tracker.reconfigure(CrashLoopSpec(crashes=3, window=600))
    assert tracker.counters(62).window_crashes == {"runner": 1}
