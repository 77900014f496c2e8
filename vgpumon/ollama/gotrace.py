"""Recognise the header of a Go runtime crash trace in a stream of unprefixed lines.

A Go runner that takes a fatal signal in cgo code (or panics) prints a trace and exits with
status 2 (docs/ollama.md#exit-texts). The header comes in three shapes:

    SIGSEGV: segmentation violation          fatal error: unexpected signal ...   panic: ...
    PC=0x7f3a1c02b1e4 m=5 sigcode=1 addr=0x0  [signal SIGSEGV: ... addr=0x0 pc=0x4a3b2c]
    signal arrived during cgo execution

and ends where the goroutine dump starts (``goroutine N [...]:``). `GoTraceReader` turns the
header into one `GoCrash`; the dump that follows is left to the caller to ignore.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_SIGNAL_HEADER = re.compile(r"(SIG[A-Z0-9]{2,8}): (.{1,200})")
_PANIC = re.compile(r"panic: (.*)", re.DOTALL)
_FATAL = re.compile(r"fatal error: (.*)", re.DOTALL)
_PC_LINE = re.compile(
    r"PC=(0x[0-9a-fA-F]{1,16}) m=\d{1,9} sigcode=-?\d{1,9}(?: addr=(0x[0-9a-fA-F]{1,16}))?"
)
_SIGNAL_DETAIL = re.compile(
    r"\[signal (SIG[A-Z0-9]{2,8}): ([^\]]*?)(?: code=\S+)?(?: addr=(0x[0-9a-fA-F]{1,16}))?"
    r"(?: pc=(0x[0-9a-fA-F]{1,16}))?\]"
)
_CGO = "signal arrived during cgo execution"
_GOROUTINE = re.compile(r"goroutine \d{1,12}\b")
_MESSAGE_LIMIT = 500
# A header is a handful of lines; if no goroutine dump follows, stop swallowing lines.
_MAX_HEADER_LINES = 40


@dataclass(frozen=True)
class GoCrash:
    """The header of one Go crash trace."""

    signal: str | None  # "SIGSEGV"; None for a panic without a signal
    message: str  # "segmentation violation", the panic value, the fatal error text
    pc: int | None = None
    addr: int | None = None
    cgo: bool = False


class GoTraceReader:
    """Feed it unprefixed lines; it says which belong to a crash header and when one ends."""

    def __init__(self) -> None:
        self._open: GoCrash | None = None
        self._lines = 0

    @property
    def reading(self) -> bool:
        return self._open is not None

    def feed(self, text: str) -> tuple[bool, list[GoCrash]]:
        """Returns (the line belongs to a crash header, the crashes whose header ended)."""
        text = text.strip()
        started = _start(text)
        if started is not None:
            return True, self._restart(started)
        if self._open is None:
            if text.startswith(_CGO):
                self._open, self._lines = GoCrash(None, _CGO, cgo=True), 0
                return True, []
            return False, []
        if _GOROUTINE.match(text) or self._lines >= _MAX_HEADER_LINES:
            return False, self.close()
        self._open = _refine(self._open, text)
        self._lines += 1
        return True, []

    def close(self) -> list[GoCrash]:
        """End the header being read (the log moved on); returns its crash, if any."""
        crash, self._open = self._open, None
        return [crash] if crash is not None else []

    def _restart(self, started: GoCrash) -> list[GoCrash]:
        finished = self.close()
        self._open, self._lines = started, 0
        return finished


def _start(text: str) -> GoCrash | None:
    m = _SIGNAL_HEADER.fullmatch(text)
    if m is not None:
        return GoCrash(m.group(1), m.group(2))
    m = _PANIC.match(text)
    if m is not None:
        return GoCrash(None, _cap(m.group(1)))
    m = _FATAL.match(text)
    if m is not None:
        return GoCrash(None, _cap(m.group(1)))
    return None


def _refine(crash: GoCrash, text: str) -> GoCrash:
    m = _PC_LINE.match(text)
    if m is not None:
        return replace(crash, pc=_hex(m.group(1)), addr=_hex(m.group(2)))
    m = _SIGNAL_DETAIL.match(text)
    if m is not None:
        return replace(
            crash,
            signal=m.group(1),
            pc=_hex(m.group(4)) if m.group(4) else crash.pc,
            addr=_hex(m.group(3)) if m.group(3) else crash.addr,
        )
    if text.startswith(_CGO):
        return replace(crash, cgo=True)
    return crash


def _hex(text: str | None) -> int | None:
    return int(text, 16) if text else None


def _cap(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "…"
