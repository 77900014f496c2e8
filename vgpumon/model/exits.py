"""Exit reasons: how a process ended (docs/metrics.md#exit-reasons; pure functions)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

CLEAN = "clean"
STOPPED = "stopped"
ERROR = "error"
CRASH = "crash"
OOM = "oom"
UNKNOWN = "unknown"
REASONS = (CLEAN, STOPPED, ERROR, CRASH, OOM, UNKNOWN)
CRASH_REASONS = frozenset({ERROR, CRASH, OOM})

CRASH_SIGNALS = frozenset({
    signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
    signal.SIGTRAP, signal.SIGSYS,
})
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGKILL})

# Go programs turn a fatal signal (and panics) into exit status 2 with a trace on stderr.
GO_CRASH_EXIT_CODE = 2


@dataclass(frozen=True)
class ExitStatus:
    """A decoded wait(2) status."""

    exit_code: int | None
    signal: int | None
    core_dumped: bool = False

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status), os.WCOREDUMP(status))
        if os.WIFEXITED(status):
            return cls(os.WEXITSTATUS(status), None)
        return cls(None, None)

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"SIG{self.signal}"


def reason_for(status: ExitStatus | None, *, oom_killed: bool = False) -> str:
    """The exit reason of a status; `oom_killed` says the kernel logged an OOM kill of it."""
    if status is None:
        return UNKNOWN
    if status.signal is not None:
        if status.signal == signal.SIGKILL and oom_killed:
            return OOM
        if status.signal in CRASH_SIGNALS:
            return CRASH
        if status.signal in STOP_SIGNALS:
            return STOPPED
        return ERROR
    if status.exit_code == 0:
        return CLEAN
    if status.exit_code is None:
        return UNKNOWN
    return ERROR


def is_crash(reason: str) -> bool:
    return reason in CRASH_REASONS
