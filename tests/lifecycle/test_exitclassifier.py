"""Exit classification with evidence, grace periods and amendments (pure; time is given)."""

from __future__ import annotations

import signal

from vgpumon.daemon.exitclassifier import (
    GO_CRASH,
    LOG_EXIT,
    OOM_KILL,
    SEGFAULT,
    Evidence,
    ExitClassifier,
)
from vgpumon.linux.procfs import MappedFile, MappedRange
from vgpumon.sources.processes import TrackedProcess

RUNNER = TrackedProcess(pid=4242, start_ticks=1, start_time=100.0, ppid=4100, group="runner",
                        comm="ollama", cmdline=("ollama", "runner", "--model", "/b/sha256-aa"),
                        exe=None, model_arg="/b/sha256-aa")
MAPS = (MappedFile("/usr/lib64/libvgpu-cuda.so", 1, 2, False,
                   (MappedRange(0x7000, 0x8000, 0),)),)


def classifier(**kw):
    options = {"status_source": "proc_connector", "kernel_log": True, "ollama_log": True}
    options.update(kw)
    return ExitClassifier(**options)


def settle(c, now):
    return [e.to_dict() for e in c.ready(now)]


def test_clean_exit_is_final_at_once():
    c = classifier()
    c.exited(RUNNER, 110.0, 0, "proc_connector")
    (event,) = settle(c, 110.0)
    assert event["reason"] == "clean" and event["exit_code"] == 0
    assert event["lifetime_seconds"] == 10.0 and event["model"] == "/b/sha256-aa"
    assert c.next_deadline() is None


def test_signal_crash_gets_the_library_from_the_kernel_record():
    c = classifier()
    c.add_evidence(Evidence(SEGFAULT, 110.0, pid=4242, library="libggml-cuda.so", address=1))
    c.exited(RUNNER, 110.0, signal.SIGSEGV, "proc_connector", MAPS)
    (event,) = settle(c, 110.0)
    assert (event["reason"], event["signal"], event["library"]) == (
        "crash", "SIGSEGV", "libggml-cuda.so")


def test_sigkill_is_published_at_once_as_stopped():
    c = classifier()
    c.exited(RUNNER, 110.0, signal.SIGKILL, "proc_connector")
    (event,) = settle(c, 110.0)
    assert (event["kind"], event["reason"], event["signal"]) == (
        "process_exited", "stopped", "SIGKILL")
    assert c.next_deadline() is None  # nothing left to wait for


def test_sigkill_with_the_oom_record_in_hand_is_oom_at_once():
    c = classifier()
    c.add_evidence(Evidence(OOM_KILL, 110.0, pid=4242))  # the OOM killer logs, then kills
    c.exited(RUNNER, 110.0, signal.SIGKILL, "proc_connector")
    (event,) = settle(c, 110.0)
    assert event["reason"] == "oom"


def test_sigkill_with_an_oom_record_is_oom():
    c = classifier()
    c.exited(RUNNER, 110.0, signal.SIGKILL, "proc_connector")
    c.add_evidence(Evidence(OOM_KILL, 110.2, pid=4242))
    (event,) = settle(c, 110.2)
    assert event["reason"] == "oom" and "library" not in event


def test_an_oom_record_after_the_exit_amends_it_once():
    c = classifier()
    c.exited(RUNNER, 110.0, signal.SIGKILL, "proc_connector")
    (exited,) = settle(c, 110.0)
    assert exited["reason"] == "stopped"
    c.add_evidence(Evidence(OOM_KILL, 110.3, pid=4242))
    (amended,) = settle(c, 110.3)
    assert amended == {
        "ts": 110.3, "kind": "exit_reason_amended", "group": "runner", "pid": 4242,
        "ppid": 4100, "exit_ts": exited["ts"], "old_reason": "stopped", "reason": "oom",
        "signal": "SIGKILL", "model": "/b/sha256-aa", "source": "proc_connector",
        "because": "oom_kill"}
    assert settle(c, 110.4) == []


def test_evidence_after_the_amendment_window_changes_nothing():
    c = classifier()
    c.exited(RUNNER, 110.0, signal.SIGKILL, "proc_connector")
    settle(c, 110.0)
    c.add_evidence(Evidence(OOM_KILL, 115.1, pid=4242))
    assert settle(c, 115.1) == []


def test_an_oom_record_of_another_process_amends_nothing():
    c = classifier()
    c.exited(RUNNER, 110.0, signal.SIGKILL, "proc_connector")
    settle(c, 110.0)
    c.add_evidence(Evidence(OOM_KILL, 110.1, pid=9999))
    assert settle(c, 110.1) == []


def test_sigkill_is_final_at_once_without_a_kernel_log():
    c = classifier(kernel_log=False)
    c.exited(RUNNER, 110.0, signal.SIGKILL, "proc_connector")
    assert settle(c, 110.0)[0]["reason"] == "stopped"


def test_exit_2_with_a_go_trace_is_a_crash_attributed_by_pc():
    c = classifier()
    c.exited(RUNNER, 110.0, 2 << 8, "proc_connector", MAPS)
    assert settle(c, 110.1) == []
    c.add_evidence(Evidence(GO_CRASH, 110.2, address=0x7ABC, crash_signal="SIGSEGV"))
    (event,) = settle(c, 110.2)
    assert (event["reason"], event["exit_code"], event["library"], event["crash_signal"]) == (
        "crash", 2, "libvgpu-cuda.so", "SIGSEGV")


def test_exit_2_without_a_trace_is_an_error_after_the_grace():
    c = classifier()
    c.exited(RUNNER, 110.0, 2 << 8, "proc_connector")
    assert settle(c, 110.49) == []
    assert settle(c, 110.5)[0]["reason"] == "error"


def test_exit_2_is_an_error_at_once_without_the_ollama_log():
    c = classifier(ollama_log=False)
    c.exited(RUNNER, 110.0, 2 << 8, "proc_connector")
    assert settle(c, 110.0)[0]["reason"] == "error"


def test_a_go_trace_after_the_grace_amends_the_error_to_a_crash():
    c = classifier()
    c.exited(RUNNER, 110.0, 2 << 8, "proc_connector", MAPS)
    assert settle(c, 110.5)[0]["reason"] == "error"
    c.add_evidence(Evidence(GO_CRASH, 110.8, address=0x7ABC, crash_signal="SIGSEGV"))
    (amended,) = settle(c, 110.8)
    assert (amended["kind"], amended["old_reason"], amended["reason"], amended["because"]) == (
        "exit_reason_amended", "error", "crash", "go_crash")
    assert (amended["library"], amended["crash_signal"], amended["exit_code"]) == (
        "libvgpu-cuda.so", "SIGSEGV", 2)


def test_a_go_trace_goes_to_the_exit_waiting_for_one_before_an_amendment():
    c = classifier()
    c.exited(RUNNER, 110.0, 2 << 8, "proc_connector")
    assert settle(c, 110.5)[0]["reason"] == "error"
    other = TrackedProcess(**{**RUNNER.__dict__, "pid": 4243})
    c.exited(other, 111.0, 2 << 8, "proc_connector")
    c.add_evidence(Evidence(GO_CRASH, 111.1))
    (event,) = settle(c, 111.1)
    assert (event["kind"], event["pid"], event["reason"]) == ("process_exited", 4243, "crash")


def test_a_trace_seen_before_the_exit_counts_too():
    c = classifier()
    c.add_evidence(Evidence(GO_CRASH, 109.9, crash_signal="SIGSEGV"))
    c.exited(RUNNER, 110.0, 2 << 8, "proc_connector")
    assert settle(c, 110.0)[0]["reason"] == "crash"


def test_one_trace_explains_one_exit_only():
    c = classifier()
    c.add_evidence(Evidence(GO_CRASH, 110.0))
    other = TrackedProcess(**{**RUNNER.__dict__, "pid": 4243})
    c.exited(RUNNER, 110.0, 2 << 8, "proc_connector")
    c.exited(other, 110.0, 2 << 8, "proc_connector")
    reasons = sorted(e["reason"] for e in settle(c, 111.0))
    assert reasons == ["crash", "error"]


def test_vanished_process_waits_for_its_status():
    c = classifier()
    c.vanished(RUNNER, 110.0, MAPS)
    assert settle(c, 110.1) == []
    assert c.status_of_pending(4242, signal.SIGSEGV, "proc_connector")
    (event,) = settle(c, 110.1)
    assert event["reason"] == "crash" and event["source"] == "proc_connector"


def test_a_status_that_comes_after_the_grace_amends_an_unknown_exit():
    c = classifier(status_source="pidfd")
    c.vanished(RUNNER, 110.0)
    assert settle(c, 110.5)[0]["reason"] == "unknown"
    assert c.is_pending(4242)  # its status is still awaited
    assert c.status_of_pending(4242, signal.SIGKILL, "pidfd")
    assert not c.is_pending(4242)
    (amended,) = settle(c, 110.7)
    assert (amended["old_reason"], amended["reason"], amended["because"], amended["signal"],
            amended["source"]) == ("unknown", "stopped", "status", "SIGKILL", "pidfd")


def test_the_exit_of_a_process_that_reused_the_pid_is_not_taken_for_an_awaited_one():
    """The connector reports an exit of PID 4242 that happened after the awaited exit was
    seen: another process got the PID. Its status must neither settle the held exit nor
    amend a published one (an unrelated crash would count towards a crash loop)."""
    c = classifier()
    c.vanished(RUNNER, 110.0)
    assert not c.status_of_pending(4242, signal.SIGSEGV, "proc_connector", exited_at=110.3)
    assert settle(c, 110.6)[0]["reason"] == "unknown"
    assert not c.status_of_pending(4242, signal.SIGSEGV, "proc_connector", exited_at=111.0)
    assert settle(c, 111.1) == []  # no amendment into a crash
    assert c.status_of_pending(4242, signal.SIGSEGV, "proc_connector", exited_at=109.9)
    (amended,) = settle(c, 111.2)
    assert amended["reason"] == "crash"


def test_a_published_status_is_not_replaced():
    c = classifier()
    c.exited(RUNNER, 110.0, signal.SIGKILL, "proc_connector")
    settle(c, 110.0)
    assert not c.is_pending(4242)
    assert not c.status_of_pending(4242, signal.SIGSEGV, "pidfd")
    assert settle(c, 110.1) == []


def test_a_crash_is_never_amended_into_something_else():
    c = classifier(status_source="pidfd")
    c.add_evidence(Evidence(SEGFAULT, 110.0, pid=4242))
    c.vanished(RUNNER, 110.0)
    assert settle(c, 110.5)[0]["reason"] == "crash"
    assert c.status_of_pending(4242, signal.SIGKILL, "pidfd")  # a status saying otherwise
    assert settle(c, 110.6) == []


def test_vanished_without_any_status_is_unknown_or_what_the_evidence_says():
    c = classifier(status_source=None, kernel_log=False, ollama_log=False)
    c.vanished(RUNNER, 110.0)
    assert settle(c, 110.0)[0]["reason"] == "unknown"
    c.vanished(RUNNER, 120.0)
    c.add_evidence(Evidence(LOG_EXIT, 120.0, reason="crash"))
    assert settle(c, 120.0)[0]["reason"] == "crash"
    c.vanished(RUNNER, 130.0)
    c.add_evidence(Evidence(OOM_KILL, 130.0, pid=4242))
    assert settle(c, 130.0)[0]["reason"] == "oom"


def test_evidence_expires():
    c = classifier()
    c.add_evidence(Evidence(OOM_KILL, 100.0, pid=4242))
    c.ready(200.0)
    c.exited(RUNNER, 200.0, signal.SIGKILL, "proc_connector")
    assert settle(c, 201.0)[0]["reason"] == "stopped"


def test_a_logged_exit_explains_only_the_exit_it_belongs_to():
    c = classifier(status_source=None, kernel_log=True, ollama_log=True)
    c.add_evidence(Evidence(SEGFAULT, 110.0, pid=4242))
    c.vanished(RUNNER, 110.0)
    c.add_evidence(Evidence(LOG_EXIT, 110.1, reason="crash"))  # while 4242 is pending
    assert settle(c, 110.5)[0]["reason"] == "crash"
    later = TrackedProcess(**{**RUNNER.__dict__, "pid": 5000})
    c.vanished(later, 112.0)  # an unload 2 s later: Ollama logged nothing for it
    assert settle(c, 112.5)[0]["reason"] == "unknown"


def test_a_late_log_report_does_not_explain_a_later_exit():
    """Ollama reports a dead runner only when it next talks to it: the report of the first
    exit may come after that exit settled, just before the next one."""
    c = classifier(status_source=None, kernel_log=True, ollama_log=True)
    c.vanished(RUNNER, 110.0)
    assert settle(c, 110.5)[0]["reason"] == "unknown"
    c.add_evidence(Evidence(LOG_EXIT, 110.9, reason="crash"))  # about the first one
    later = TrackedProcess(**{**RUNNER.__dict__, "pid": 5000})
    c.vanished(later, 111.0)
    assert settle(c, 111.5)[0]["reason"] == "unknown"


def test_logged_exit_decides_an_exit_without_status():
    c = classifier(status_source=None, kernel_log=False, ollama_log=True)
    c.vanished(RUNNER, 110.0)
    c.add_evidence(Evidence(LOG_EXIT, 110.2, reason="crash"))
    assert settle(c, 110.5)[0]["reason"] == "crash"


def test_evidence_concerns_exits_held_or_published_lately():
    c = classifier()
    assert not c.concerns(4242)
    c.exited(RUNNER, 110.0, 2 << 8, "proc_connector")
    assert c.concerns(4242)  # held: it waits for a Go trace
    settle(c, 110.5)
    assert c.concerns(4242) and not c.concerns(4243)  # published: it may be amended
    settle(c, 115.6)
    assert not c.concerns(4242)
