"""What Ollama's exit texts say about how a runner ended (docs/ollama.md#exit-texts).

Go's ``exec.ExitError`` prints ``exit status N`` or ``signal: <name>[ (core dumped)]``; 0.30+
also prints ``OK`` and ``unknown``; from 0.2.8 Ollama often shows the runner's last recognised
error line instead. The reasons are those of docs/metrics.md#exit-reasons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vgpumon.model.exits import (  # noqa: F401 - the reasons, re-exported for this module's users
    CLEAN,
    CRASH,
    CRASH_SIGNALS,
    ERROR,
    OOM,
    STOP_SIGNALS,
    STOPPED,
    UNKNOWN,
)

# Go's signal names (syscall.Signal.String on Linux) → number.
SIGNAL_NUMBERS = {
    "hangup": 1,
    "interrupt": 2,
    "quit": 3,
    "illegal instruction": 4,
    "trace/breakpoint trap": 5,
    "aborted": 6,
    "bus error": 7,
    "floating point exception": 8,
    "killed": 9,
    "user defined signal 1": 10,
    "segmentation fault": 11,
    "user defined signal 2": 12,
    "broken pipe": 13,
    "alarm clock": 14,
    "terminated": 15,
    "bad system call": 31,
}
SIGNAL_NAMES = {
    1: "SIGHUP",
    2: "SIGINT",
    3: "SIGQUIT",
    4: "SIGILL",
    5: "SIGTRAP",
    6: "SIGABRT",
    7: "SIGBUS",
    8: "SIGFPE",
    9: "SIGKILL",
    10: "SIGUSR1",
    11: "SIGSEGV",
    12: "SIGUSR2",
    13: "SIGPIPE",
    14: "SIGALRM",
    15: "SIGTERM",
    31: "SIGSYS",
}


def signal_name(number: int | None) -> str | None:
    """``SIGSEGV`` for 11: the form `process_exited` uses too."""
    if number is None:
        return None
    return SIGNAL_NAMES.get(number, f"SIG{number}")

# Windows NTSTATUS exit codes that mean the process faulted.
_NTSTATUS_CRASHES = frozenset({0xC0000005, 0xC000001D, 0xC0000409, 0xC0000094, 0xC00000FD})

_SIGNAL_TEXT = re.compile(
    r"signal: (?:signal (\d{1,3})|("
    + "|".join(re.escape(name) for name in sorted(SIGNAL_NUMBERS, key=len, reverse=True))
    + r"))( \(core dumped\))?"
)
_EXIT_STATUS = re.compile(r"exit status (0x[0-9a-fA-F]{1,8}|-?\d{1,10})")
_GO_CRASH_TEXT = re.compile(r"signal arrived during cgo execution|panic:|fatal error:")
# ggml aborts the process after these (GGML_ABORT), so the runner died by SIGABRT.
_GGML_ABORT_TEXT = re.compile(r"GGML_ASSERT|CUDA error|ROCm error")


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended, as far as a text or a wait status tells (with its reason; the
    daemon's `vgpumon.model.exits.ExitStatus` is the bare wait status)."""

    reason: str
    exit_code: int | None = None
    signal: int | None = None
    core_dumped: bool = False


def reason_for_signal(signal: int) -> str:
    if signal in CRASH_SIGNALS:
        return CRASH
    if signal in STOP_SIGNALS:
        return STOPPED
    return ERROR


def reason_for_exit_code(code: int) -> str:
    if code == 0:
        return CLEAN
    if code in _NTSTATUS_CRASHES:
        return CRASH
    return ERROR


def classify_exit_text(text: str) -> ExitStatus:
    """Read an exit text (``exit status 2``, ``signal: killed``, ``OK``, a last error line).

    ``signal: killed`` is `STOPPED`: the text cannot tell Ollama's unload from the OOM killer.
    A Go crash line or a ggml abort line is `CRASH`; any other error line is `ERROR`.
    """
    text = text.strip()
    m = _SIGNAL_TEXT.search(text)
    if m is not None:
        number = int(m.group(1)) if m.group(1) else SIGNAL_NUMBERS[m.group(2)]
        return ExitStatus(reason_for_signal(number), signal=number, core_dumped=bool(m.group(3)))
    m = _EXIT_STATUS.search(text)
    if m is not None:
        code = int(m.group(1), 0) if m.group(1).startswith("0x") else int(m.group(1))
        return ExitStatus(reason_for_exit_code(code), exit_code=code)
    if text == "OK" or text.startswith("OK:"):
        return ExitStatus(CLEAN, exit_code=0)
    if not text or text == "unknown" or text.startswith("unknown:"):
        return ExitStatus(UNKNOWN)
    if _GO_CRASH_TEXT.search(text) or _GGML_ABORT_TEXT.search(text):
        return ExitStatus(CRASH)
    return ExitStatus(ERROR)


def exit_status_from_wait_status(status: int) -> ExitStatus:
    """Decode a raw Linux wait status (Go's ``syscall.WaitStatus``, logged as ``sys=N``)."""
    if status < 0:
        return ExitStatus(UNKNOWN)
    signal = status & 0x7F
    if signal == 0:
        code = (status >> 8) & 0xFF
        return ExitStatus(reason_for_exit_code(code), exit_code=code)
    if signal == 0x7F:  # stopped or continued, not an exit
        return ExitStatus(UNKNOWN)
    return ExitStatus(reason_for_signal(signal), signal=signal, core_dumped=bool(status & 0x80))
