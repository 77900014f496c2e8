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


def amended(ts, exit_ts, old, new, group="runner"):
    return Event(ts, ev.EXIT_REASON_AMENDED, {"group": group, "pid": 1, "exit_ts": exit_ts,
                                              "old_reason": old, "reason": new})


def test_an_amended_exit_stays_counted_under_its_first_reason_and_counts_apart():
    tracker = Tracker(CrashLoopSpec(crashes=3, window=60))
    tracker.record([exited(10, "stopped")])
    tracker.record([amended(10.2, 10, "stopped", "oom")])
    counters = tracker.counters(11)
    assert counters.exits == {("runner", "stopped"): 1}
    assert counters.amended == {("runner", "stopped", "oom"): 1}
    assert counters.crashes == {"runner": 1}  # it turned out a crash: counted now
    assert counters.last_crash == {"runner": 10}  # when it exited, not when it was amended
    assert counters.window_crashes == {"runner": 1}
    assert counters.events[ev.EXIT_REASON_AMENDED] == 1


def test_an_amendment_between_crash_reasons_counts_no_second_crash():
    tracker = Tracker(CrashLoopSpec(crashes=2, window=60))
    tracker.record([exited(10, "error")])
    tracker.record([amended(10.8, 10, "error", "crash")])
    counters = tracker.counters(11)
    assert counters.crashes == {"runner": 1} and counters.window_crashes == {"runner": 1}
    assert not counters.crash_loop.get("runner")


def test_unloads_amended_to_oom_kills_make_a_crash_loop():
    """A SIGKILL reads as an unload (`stopped`) until the OOM-kill record comes: the crash
    loop still sees the crash, in the window of the exit's time."""
    tracker = Tracker(CrashLoopSpec(crashes=3, window=60))
    recorded = []
    for t in (0, 20, 40):
        recorded += tracker.record([exited(t, "stopped")])
        assert not tracker.counters(t).crash_loop.get("runner")
        recorded += tracker.record([amended(t + 0.1, t, "stopped", "oom")])
    assert recorded[-1].kind == ev.CRASH_LOOP_STARTED and recorded[-1].ts == 40.1
    assert tracker.counters(41).crash_loop == {"runner": True}
    assert [e.kind for e in tracker.tick(81)] == [ev.CRASH_LOOP_ENDED]  # 0 and 20 left


def test_a_crash_amended_late_joins_the_window_in_order():
    tracker = Tracker(CrashLoopSpec(crashes=3, window=60))
    tracker.record([exited(10, "stopped"), exited(11, "crash")])
    tracker.record([amended(12, 10, "stopped", "oom")])  # older than the last crash
    tracker.record([exited(50, "crash")])
    assert tracker.counters(50).crash_loop == {"runner": True}
    assert tracker.tick(69.9) == []  # 10, 11 and 50 inside [9.9, 69.9]
    (ended,) = tracker.tick(70.5)  # the amended crash at 10 left the window first
    assert (ended.kind, ended.get("crashes")) == (ev.CRASH_LOOP_ENDED, 2)
