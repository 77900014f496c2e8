"""Exit classification with evidence and grace periods (pure; time is given)."""

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


def test_sigkill_waits_for_an_oom_record_then_is_stopped():
    c = classifier()
    c.exited(RUNNER, 110.0, signal.SIGKILL, "proc_connector")
    assert settle(c, 110.1) == []
    assert c.next_deadline() == 110.5
    (event,) = settle(c, 110.5)
    assert event["reason"] == "stopped"


def test_sigkill_with_an_oom_record_is_oom():
    c = classifier()
    c.exited(RUNNER, 110.0, signal.SIGKILL, "proc_connector")
    c.add_evidence(Evidence(OOM_KILL, 110.2, pid=4242))
    (event,) = settle(c, 110.2)
    assert event["reason"] == "oom" and "library" not in event


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
