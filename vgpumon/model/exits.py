"""Exit reasons: how a process ended (docs/metrics.md#exit-reasons; pure functions)."""

from __future__ import annotations

import signal

from vgpumon.linux.waitstatus import WaitStatus

CLEAN = "clean"
STOPPED = "stopped"
ERROR = "error"
CRASH = "crash"
OOM = "oom"
UNKNOWN = "unknown"
REASONS = (CLEAN, STOPPED, ERROR, CRASH, OOM, UNKNOWN)
CRASH_REASONS = frozenset({ERROR, CRASH, OOM})
# How a published exit's reason may change when evidence comes late (docs/events.md): a
# SIGKILL the OOM killer sent, an exit 2 that was a Go crash, an exit whose status was not
# known. Evidence only makes a reason more precise: a crash is never taken back.
AMENDMENTS = ((STOPPED, OOM), (ERROR, CRASH),
              *((UNKNOWN, reason) for reason in REASONS if reason != UNKNOWN))

CRASH_SIGNALS = frozenset({
    signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
    signal.SIGTRAP, signal.SIGSYS,
})
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGKILL})

# Go programs turn a fatal signal (and panics) into exit status 2 with a trace on stderr.
GO_CRASH_EXIT_CODE = 2
# Windows NTSTATUS exit codes that mean the process faulted, as Ollama reports them there
# (a Linux exit code never reaches them).
FAULT_EXIT_CODES = frozenset({0xC0000005, 0xC000001D, 0xC0000409, 0xC0000094, 0xC00000FD})


def reason_for_signal(number: int) -> str:
    """The reason of a death by signal `number` (SIGKILL: see `reason_for`)."""
    if number in CRASH_SIGNALS:
        return CRASH
    if number in STOP_SIGNALS:
        return STOPPED
    return ERROR


def reason_for_exit_code(code: int) -> str:
    if code == 0:
        return CLEAN
    if code in FAULT_EXIT_CODES:
        return CRASH
    return ERROR


def reason_for(status: WaitStatus | None, *, oom_killed: bool = False) -> str:
    """The exit reason of a status; `oom_killed` says the kernel logged an OOM kill of it."""
    if status is None:
        return UNKNOWN
    if status.signal is not None:
        if status.signal == signal.SIGKILL and oom_killed:
            return OOM
        return reason_for_signal(status.signal)
    if status.exit_code is None:
        return UNKNOWN
    return reason_for_exit_code(status.exit_code)


def is_crash(reason: str) -> bool:
    return reason in CRASH_REASONS
