"""The kernel log (``/dev/kmsg``): segfault and OOM-kill records that explain exits.

Records are parsed by pure functions. Only records of the kernel facility (0) are believed:
root can write any text into /dev/kmsg, but only with the user facility.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

KERNEL_FACILITY = 0


class KmsgFormatError(ValueError):
    """Not a /dev/kmsg record."""


@dataclass(frozen=True)
class KmsgRecord:
    priority: int
    facility: int
    sequence: int
    timestamp_us: int
    message: str


@dataclass(frozen=True)
class Segfault:
    """A fatal fault the kernel logged for a process (unhandled SIGSEGV, GP fault, trap)."""

    pid: int
    comm: str
    ip: int | None
    library: str | None  # basename the kernel named (``in libvgpu-cuda.so[…]``)
    kind: str  # segfault, general protection fault, invalid opcode, …


@dataclass(frozen=True)
class OomKill:
    pid: int
    comm: str | None
    cgroup: str | None = None


def parse_record(data: bytes) -> KmsgRecord:
    """One record as returned by one read() of /dev/kmsg (continuation lines ignored)."""
    header, sep, rest = data.partition(b";")
    if not sep:
        raise KmsgFormatError("no ';' after the record header")
    fields = header.split(b",")
    if len(fields) < 3:
        raise KmsgFormatError("record header has fewer than 3 fields")
    try:
        prefix, sequence, timestamp = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        raise KmsgFormatError("record header fields are not numbers") from None
    message = rest.split(b"\n", 1)[0].decode("utf-8", "replace")
    return KmsgRecord(prefix & 7, prefix >> 3, sequence, timestamp, message)


# PIDs and addresses are ASCII and bounded: int() of a 5,000-digit or non-ASCII "number"
# raises, and the kernel never prints one.
_PID = r"(?P<pid>[0-9]{1,10})"
_IP = r"(?P<ip>[0-9a-f]{1,16})\b"
_SEGFAULT = re.compile(r"^(?P<comm>.*?)\[" + _PID + r"\]: segfault at [0-9a-f]+ ip " + _IP)
_TRAP = re.compile(
    r"^traps: (?P<comm>.*?)\[" + _PID + r"\] (?P<kind>[a-z][a-z ]*?) ip:" + _IP
)
# "… in libggml-cuda.so[4d4119,7f2c8dd00000+2a10000]" (6.10+) or "… in libc.so.6[7f…+…]"
_IN_LIBRARY = re.compile(r" in (?P<lib>[^\[\s]+)\[[0-9a-f]+[,+]")
_KILLED = re.compile(r"(?:Out of memory|Memory cgroup out of memory): Killed process "
                     + _PID + r" \((?P<comm>.*?)\)")
_PID_VALUE = re.compile(r"[0-9]{1,10}")
_OOM_KILL = re.compile(r"^oom-kill:(?P<attrs>\S+)")


def parse_segfault(message: str) -> Segfault | None:
    match = _SEGFAULT.match(message)
    kind = "segfault"
    if match is None:
        match = _TRAP.match(message)
        if match is None:
            return None
        kind = match["kind"].removeprefix("trap ")
    library = _IN_LIBRARY.search(message, match.end())
    return Segfault(int(match["pid"]), match["comm"], int(match["ip"], 16),
                    library["lib"] if library else None, kind)


def parse_oom_kill(message: str) -> OomKill | None:
    match = _KILLED.search(message)
    if match:
        return OomKill(int(match["pid"]), match["comm"])
    match = _OOM_KILL.match(message)
    if match:
        attrs = dict(part.partition("=")[::2] for part in match["attrs"].split(","))
        if _PID_VALUE.fullmatch(attrs.get("pid", "")):
            return OomKill(int(attrs["pid"]), attrs.get("task"), attrs.get("task_memcg"))
    return None


class KmsgReader:
    """Non-blocking reader of new /dev/kmsg records (history is skipped at open).

    `fd`: read this non-blocking descriptor instead, one record per read, as /dev/kmsg gives
    them (a test's socket standing in for the kernel); `path` then only names it.
    """

    def __init__(self, path: str = "/dev/kmsg", *, fd: int | None = None):
        self.path = path
        self.lost = 0
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(fd, 0, os.SEEK_END)
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def read(self) -> list[KmsgRecord]:
        """Every record available now; records overwritten before reading are counted."""
        found: list[KmsgRecord] = []
        while True:
            try:
                data = os.read(self._fd, 8192)
            except BlockingIOError:
                return found
            except OSError as err:
                if err.errno == errno.EPIPE:
                    self.lost += 1
                    continue
                raise
            if not data:
                return found
            try:
                found.append(parse_record(data))
            except KmsgFormatError:
                continue

    def close(self) -> None:
        os.close(self._fd)
