"""What Ollama's exit texts say about how a runner ended (docs/ollama.md#exit-texts).

Go's ``exec.ExitError`` prints ``exit status N`` or ``signal: <name>[ (core dumped)]``; 0.30+
also prints ``OK`` and ``unknown``; from 0.2.8 Ollama often shows the runner's last recognised
error line instead. The reasons are those of docs/metrics.md#exit-reasons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vgpumon.linux.waitstatus import decode
from vgpumon.model.exits import (
    CLEAN,
    CRASH,
    ERROR,
    UNKNOWN,
    reason_for_exit_code,
    reason_for_signal,
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
class ReportedExit:
    """How a process ended as a text or a logged wait status tells: the reason, and the exit
    code or signal when the report names one."""

    reason: str
    exit_code: int | None = None
    signal: int | None = None
    core_dumped: bool = False


def classify_exit_text(text: str) -> ReportedExit:
    """Read an exit text (``exit status 2``, ``signal: killed``, ``OK``, a last error line).

    ``signal: killed`` is `STOPPED`: the text cannot tell Ollama's unload from the OOM killer.
    A Go crash line or a ggml abort line is `CRASH`; any other error line is `ERROR`.
    """
    text = text.strip()
    m = _SIGNAL_TEXT.search(text)
    if m is not None:
        number = int(m.group(1)) if m.group(1) else SIGNAL_NUMBERS[m.group(2)]
        return ReportedExit(reason_for_signal(number), signal=number, core_dumped=bool(m.group(3)))
    m = _EXIT_STATUS.search(text)
    if m is not None:
        code = int(m.group(1), 0) if m.group(1).startswith("0x") else int(m.group(1))
        return ReportedExit(reason_for_exit_code(code), exit_code=code)
    if text == "OK" or text.startswith("OK:"):
        return ReportedExit(CLEAN, exit_code=0)
    if not text or text == "unknown" or text.startswith("unknown:"):
        return ReportedExit(UNKNOWN)
    if _GO_CRASH_TEXT.search(text) or _GGML_ABORT_TEXT.search(text):
        return ReportedExit(CRASH)
    return ReportedExit(ERROR)


def exit_status_from_wait_status(status: int) -> ReportedExit:
    """A raw Linux wait status (Go's ``syscall.WaitStatus``, logged as ``sys=N``)."""
    decoded = decode(status)
    if decoded.signal is not None:
        return ReportedExit(reason_for_signal(decoded.signal), signal=decoded.signal,
                            core_dumped=decoded.core_dumped)
    if decoded.exit_code is not None:
        return ReportedExit(reason_for_exit_code(decoded.exit_code), exit_code=decoded.exit_code)
    return ReportedExit(UNKNOWN)
