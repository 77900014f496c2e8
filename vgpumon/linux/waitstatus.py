"""wait(2) statuses and signal names: the one decoder vgpumon has (pure functions).

The proc connector, pidfds and Go's ``syscall.WaitStatus`` (logged by Ollama as ``sys=N``)
all hand over the raw Linux status: the low 7 bits are the terminating signal (0: the
process exited, 0x7f: stopped or continued), bit 7 says it dumped core, bits 8-15 hold the
exit code.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

_STOPPED_OR_CONTINUED = 0x7F


@dataclass(frozen=True)
class WaitStatus:
    """How a process ended: an exit code or a signal, or neither when that is not known."""

    exit_code: int | None = None
    signal: int | None = None
    core_dumped: bool = False

    @property
    def signal_name(self) -> str | None:
        return signal_name(self.signal)


def decode(status: int) -> WaitStatus:
    """A raw wait status; a negative one (not known) or a stop is neither exit nor signal."""
    if status < 0:
        return WaitStatus()
    number = status & 0x7F
    if number == 0:
        return WaitStatus(exit_code=(status >> 8) & 0xFF)
    if number == _STOPPED_OR_CONTINUED:
        return WaitStatus()
    return WaitStatus(signal=number, core_dumped=bool(status & 0x80))


def signal_name(number: int | None) -> str | None:
    """``SIGSEGV`` for 11, ``SIG64`` for a number Linux does not name: the form events use."""
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"
