"""`/proc` files: pure parsers over bytes, and a thin reader rooted at a configurable procfs.

Parsers never touch the filesystem; `ProcFS` only reads bytes and hands them over. A file that
vanishes or is unreadable raises the OSError of the read, which callers map to "gone" or
"unreadable" — never to "not loaded".
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import overload

DELETED_SUFFIX = " (deleted)"
# How much of /proc/PID/cmdline is read: every configured pattern is matched against this
# prefix, and no real Ollama command line comes near it (docs/reliability.md#untrusted-text).
CMDLINE_LIMIT = 64 * 1024


class ProcParseError(ValueError):
    """A /proc file did not have the documented shape."""


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` vgpumon uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    start_ticks: int
    vsize: int | None = None  # bytes of address space (None in a short fixture line)


def parse_stat(data: bytes) -> ProcStat:
    """Parse ``/proc/PID/stat``; `comm` may hold spaces and ``)``, so split at the last ``)``."""
    open_paren = data.find(b"(")
    close_paren = data.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        raise ProcParseError("stat: no (comm)")
    fields = data[close_paren + 2:].split()
    # After comm: state(3) ppid(4) ... starttime(22) vsize(23) -> indexes 0, 1, 19, 20.
    if len(fields) < 20:
        raise ProcParseError(f"stat: {len(fields)} fields after comm, expected at least 20")
    try:
        return ProcStat(
            pid=int(data[:open_paren]),
            comm=data[open_paren + 1:close_paren].decode("utf-8", "replace"),
            state=fields[0].decode("ascii", "replace"),
            ppid=int(fields[1]),
            start_ticks=int(fields[19]),
            vsize=int(fields[20]) if len(fields) > 20 else None,
        )
    except ValueError as err:
        raise ProcParseError(f"stat: {err}") from None


def parse_stat_head(data: bytes) -> tuple[str, int]:
    """`comm` and `ppid` of ``/proc/PID/stat``, all a process's first look needs, without
    splitting the other fifty fields."""
    open_paren = data.find(b"(")
    close_paren = data.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        raise ProcParseError("stat: no (comm)")
    fields = data[close_paren + 2:close_paren + 40].split(None, 2)
    try:
        ppid = int(fields[1])
    except (IndexError, ValueError):
        raise ProcParseError("stat: no ppid after comm") from None
    return data[open_paren + 1:close_paren].decode("utf-8", "replace"), ppid


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    """argv from ``/proc/PID/cmdline`` (NUL-separated; empty for kernel threads and zombies)."""
    if not data:
        return ()
    if data.endswith(b"\0"):
        data = data[:-1]
    return tuple(arg.decode("utf-8", "surrogateescape") for arg in data.split(b"\0"))


def parse_environ(data: bytes) -> dict[str, str]:
    """``/proc/PID/environ`` as a dict; entries without ``=`` are skipped."""
    result: dict[str, str] = {}
    for entry in data.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            result[name.decode("utf-8", "surrogateescape")] = value.decode(
                "utf-8", "surrogateescape"
            )
    return result


@dataclass(frozen=True)
class Credentials:
    """Whose rights a process acts with: its effective uid and gid and its supplementary
    groups, from ``/proc/PID/status``."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def parse_credentials(data: bytes) -> Credentials:
    """The effective ids of ``/proc/PID/status`` (``Uid:``/``Gid:`` list real, effective,
    saved and filesystem ids) and its ``Groups:`` line."""
    fields: dict[bytes, list[bytes]] = {}
    for line in data.splitlines():
        name, sep, rest = line.partition(b":")
        if sep and name in (b"Uid", b"Gid", b"Groups"):
            fields[name] = rest.split()
    try:
        uid, gid = int(fields[b"Uid"][1]), int(fields[b"Gid"][1])
        groups = tuple(int(group) for group in fields[b"Groups"])
    except (KeyError, IndexError, ValueError):
        raise ProcParseError("status: no complete Uid, Gid and Groups lines") from None
    return Credentials(uid, gid, groups)


def parse_boot_time(data: bytes) -> float:
    """``btime`` from ``/proc/stat``: the boot time in unix seconds."""
    for line in data.splitlines():
        if line.startswith(b"btime "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                break
    raise ProcParseError("/proc/stat: no btime line")


@dataclass(frozen=True)
class MappedRange:
    start: int
    end: int
    offset: int


@dataclass(frozen=True)
class MappedFile:
    """One file mapped into a process: all its VMAs folded together.

    `path` is the path in the process's own mount namespace without the ``" (deleted)"``
    suffix; `deleted` says the kernel appended it (the name was unlinked or replaced).
    """

    path: str
    dev: int
    inode: int
    deleted: bool
    ranges: tuple[MappedRange, ...]

    @property
    def basename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def contains(self, address: int) -> bool:
        return any(r.start <= address < r.end for r in self.ranges)


def parse_maps(data: bytes) -> tuple[MappedFile, ...]:
    """The file-backed mappings of ``/proc/PID/maps``, one `MappedFile` per file.

    Anonymous mappings (inode 0: heap, stack, vdso, anonymous memory) are skipped before any
    other work, since they are most of the lines of a large process. Paths are not escaped by
    the kernel (only newline is, as ``\\012``), so the path is everything after the fifth field.
    """
    files: dict[tuple[int, int, str], list[MappedRange]] = {}
    for line in data.split(b"\n"):
        fields = line.split(None, 5)
        if len(fields) < 6 or fields[4] == b"0":
            continue
        address, _perms, offset, dev, inode, path = fields
        try:
            start, _, end = address.partition(b"-")
            major, _, minor = dev.partition(b":")
            key = (
                os.makedev(int(major, 16), int(minor, 16)),
                int(inode),
                path.decode("utf-8", "surrogateescape"),
            )
            mapped = MappedRange(int(start, 16), int(end, 16), int(offset, 16))
        except (ValueError, OverflowError):  # OverflowError: a device number beyond dev_t
            continue  # not a maps line; the kernel never writes one, a fixture might
        files.setdefault(key, []).append(mapped)
    result = []
    for (device, ino, raw_path), ranges in files.items():
        deleted = raw_path.endswith(DELETED_SUFFIX)
        name = raw_path[: -len(DELETED_SUFFIX)] if deleted else raw_path
        result.append(MappedFile(name, device, ino, deleted, tuple(ranges)))
    return tuple(result)


def select_lines(data: bytes, patterns: Iterable[re.Pattern[bytes]]) -> bytes:
    """The lines of `data` in which any of `patterns` matches, in order, newline-joined.

    Each pattern is one C-level search over the whole buffer; lines no pattern touches cost
    nothing. A large process's maps is thousands of lines (anonymous memory, a model's
    weights) of which a handful name a configured library: this leaves `parse_maps` those.
    """
    starts: set[int] = set()
    for pattern in patterns:
        for match in pattern.finditer(data):
            starts.add(data.rfind(b"\n", 0, match.start()) + 1)
    lines = []
    for start in sorted(starts):
        end = data.find(b"\n", start)
        lines.append(data[start:end] if end >= 0 else data[start:])
    return b"\n".join(lines)


# A maps text at least this long is kept compressed by `ProcessMaps`.
PACK_OVER = 64 * 1024


class ProcessMaps(Sequence[MappedFile]):
    """A process's maps as read, parsed into its file-backed mappings only when looked at.

    The observer keeps the maps of live and recently exited processes for the exit
    classifier's crash attribution, which needs them rarely; the bytes are smaller than the
    parsed form, and a large maps is kept compressed (`PACK_OVER`: a runner's 5,000 lines,
    600 KB, keep in 50 KB, for 1.6 ms of zlib at the read). `selected` is what the reader
    parsed at once (the lines that mattered to it). True when anything was read (a zombie's
    maps is empty).
    """

    __slots__ = ("_files", "_kept", "_packed", "selected", "size")

    def __init__(self, data: bytes = b"", selected: tuple[MappedFile, ...] = ()):
        self._packed = len(data) >= PACK_OVER
        self._kept = zlib.compress(data, 1) if self._packed else data
        self.size = len(data)
        self.selected = selected
        self._files: tuple[MappedFile, ...] | None = None

    @property
    def data(self) -> bytes:
        """The maps as read."""
        return zlib.decompress(self._kept) if self._packed else self._kept

    def files(self) -> tuple[MappedFile, ...]:
        if self._files is None:
            self._files = parse_maps(self.data)
        return self._files

    @overload
    def __getitem__(self, index: int) -> MappedFile: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[MappedFile, ...]: ...
    def __getitem__(self, index: int | slice) -> MappedFile | tuple[MappedFile, ...]:
        return self.files()[index]

    def __len__(self) -> int:
        return len(self.files())

    def __bool__(self) -> bool:
        return self.size > 0

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return self.files() == tuple(other)
        return NotImplemented

    # Equal by content, unhashable (as a list): mypy types __hash__ as a method, not None.
    __hash__ = None  # type: ignore[assignment]


class ProcFS:
    """Reads files of ``<root>/<pid>/``; `root` is the ``procfs:`` setting."""

    def __init__(self, root: str = "/proc"):
        self.root = root.rstrip("/") or "/"
        self.clock_ticks = os.sysconf("SC_CLK_TCK")
        self._boot_time: float | None = None

    def path(self, pid: int, name: str = "") -> str:
        return f"{self.root}/{pid}/{name}" if name else f"{self.root}/{pid}"

    def listing(self) -> set[str]:
        """The names in procfs, PIDs and the rest: compare two with set operations, convert
        only the new ones (raises OSError when procfs itself is unreadable)."""
        return set(os.listdir(self.root))

    def read(self, pid: int, name: str) -> bytes:
        return read_file(self.path(pid, name))

    def stat(self, pid: int) -> ProcStat:
        return parse_stat(read_whole_record(self.path(pid, "stat")))

    def stat_head(self, pid: int) -> tuple[str, int]:
        """`comm` and `ppid` (`parse_stat_head`)."""
        return parse_stat_head(read_whole_record(self.path(pid, "stat")))

    def cmdline(self, pid: int, limit: int = CMDLINE_LIMIT) -> tuple[str, ...]:
        """argv, read no further than `limit` bytes: a process chooses its argv (up to about
        2 MiB), and what it chose is never read whole (docs/reliability.md#untrusted-text)."""
        return parse_cmdline(read_whole_record(self.path(pid, "cmdline"), limit=limit))

    def exe(self, pid: int) -> str:
        return os.readlink(self.path(pid, "exe"))

    def environ(self, pid: int) -> dict[str, str]:
        return parse_environ(self.read(pid, "environ"))

    def credentials(self, pid: int) -> Credentials:
        return parse_credentials(self.read(pid, "status"))

    def boot_time(self) -> float:
        if self._boot_time is None:
            self._boot_time = parse_boot_time(read_file(f"{self.root}/stat"))
        return self._boot_time

    def start_time(self, start_ticks: int) -> float:
        """Unix seconds of a process start given in clock ticks since boot."""
        return self.boot_time() + start_ticks / self.clock_ticks


def read_whole_record(path: str, chunk: int = 4096, limit: int | None = None) -> bytes:
    """A /proc file the kernel prints in one go (``stat``, ``cmdline``): a read that returns
    less than asked is the end, so the usual second read (for the 0 of the end) is saved. It
    is not nothing: for a process exec'ing or exiting on another CPU, each read waits for its
    memory map, and every exec on the host is classified. With `limit`, at most that many
    bytes (the first ones) are read."""
    if limit is not None:
        chunk = min(chunk, limit)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, chunk)
        if len(data) < chunk:
            return data
        parts = [data]
        size = len(data)
        while limit is None or size < limit:
            part = os.read(fd, 1 << 16 if limit is None else min(1 << 16, limit - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def read_file(path: str, chunk: int = 1 << 16) -> bytes:
    """The whole file, read with plain os calls (proc files report size 0)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts = []
        while True:
            part = os.read(fd, chunk)
            if not part:
                break
            parts.append(part)
            chunk = max(chunk, 1 << 18)
        return b"".join(parts)
    finally:
        os.close(fd)
