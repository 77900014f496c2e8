"""What the dynamic loader needs to know about an ELF file, read without executing anything.

The parser is a pure function over a "read at offset" callable (`ReadAt`), so tests can feed it
bytes; `read_elf` binds it to a file with ``os.pread``. It reads only what it needs: the ELF
header, the program headers, the dynamic segment up to ``DT_NULL``, the few strings it names
and the note segments (for the build-id). Every size it asks for is bounded, so a lying header
cannot make it allocate or read gigabytes.

Anything malformed, truncated or not ELF raises `ElfError`; I/O errors stay ``OSError``.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, size)`` returns up to `size` bytes at `offset`, fewer only at end of file."""

ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2

ET_EXEC = 2
ET_DYN = 3

EM_386 = 3
EM_PPC64 = 21
EM_S390 = 22
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183
EM_RISCV = 243

PT_LOAD = 1
PT_DYNAMIC = 2
PT_INTERP = 3
PT_NOTE = 4

DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
DT_STRSZ = 10
DT_SONAME = 14
DT_RPATH = 15
DT_RUNPATH = 29
DT_FLAGS_1 = 0x6FFFFFFB
DF_1_NODEFLIB = 0x800

NT_GNU_BUILD_ID = 3

PN_XNUM = 0xFFFF

_MAGIC = b"\x7fELF"
_MAX_OFFSET = 1 << 62  # os.pread rejects offsets beyond off_t; anything this far is a lie
_DYN_CHUNK = 64  # dynamic entries read per pread
_STR_CHUNK = 256
_MAX_STRING = 1 << 16  # longest DT_NEEDED/DT_RPATH string we accept
_MAX_NOTES = 1 << 16  # bytes of one PT_NOTE segment scanned for the build-id


class ElfError(ValueError):
    """The bytes are not a well-formed ELF file (or not one this reader understands)."""


@dataclass(frozen=True)
class ElfInfo:
    """The loader-relevant facts of one ELF file.

    `rpath` and `runpath` are the raw ``DT_RPATH``/``DT_RUNPATH`` strings (colon separated,
    dynamic string tokens unexpanded). Where a tag occurs twice the last one wins, as in glibc.
    """

    elf_class: int  # 32 or 64
    byte_order: str  # "little" or "big"
    osabi: int  # e_ident[EI_OSABI]
    abi_version: int  # e_ident[EI_ABIVERSION]
    type: int  # e_type: ET_EXEC, ET_DYN, ...
    machine: int  # e_machine: EM_X86_64, ...
    soname: str | None = None
    needed: tuple[str, ...] = ()
    rpath: str | None = None
    runpath: str | None = None
    flags_1: int | None = None  # DT_FLAGS_1, when present
    build_id: str | None = None  # NT_GNU_BUILD_ID, lower-case hex
    interpreter: str | None = None  # PT_INTERP: the program's dynamic loader

    @property
    def nodeflib(self) -> bool:
        """``DF_1_NODEFLIB``: the loader must not search the cache or default dirs for it."""
        return bool((self.flags_1 or 0) & DF_1_NODEFLIB)


@dataclass(frozen=True)
class _Layout:
    """Struct formats of one ELF class and byte order."""

    elf_class: int
    order: str  # struct prefix: "<" or ">"

    @property
    def is64(self) -> bool:
        return self.elf_class == 64

    @property
    def phentsize(self) -> int:
        return 56 if self.is64 else 32

    @property
    def dynentsize(self) -> int:
        return 16 if self.is64 else 8

    def unpack(self, fmt: str, data: bytes, offset: int = 0) -> tuple[int, ...]:
        return struct.unpack_from(self.order + fmt, data, offset)


@dataclass(frozen=True)
class _Segment:
    type: int
    offset: int
    vaddr: int
    filesz: int
    align: int


def parse_elf(read_at: ReadAt) -> ElfInfo:
    """Parse the ELF file behind `read_at`. Raises `ElfError` for anything malformed."""
    try:
        return _parse(read_at)
    except (struct.error, OverflowError) as exc:  # belt and braces: bounds are checked below
        raise ElfError(f"malformed ELF: {exc}") from exc


def fd_reader(fd: int) -> ReadAt:
    """A `ReadAt` over an open file descriptor (``os.pread``: no shared file position)."""
    return lambda offset, size: os.pread(fd, size, offset)


def read_elf(path: str | os.PathLike[str]) -> ElfInfo:
    """Parse the ELF file at `path` (a path vgpumon can open: go through a `FileView`).

    Raises ``OSError`` when the file cannot be opened or read and `ElfError` when it is not a
    regular file holding a well-formed ELF object. Opening never blocks (FIFOs are refused).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ElfError(f"{os.fsdecode(path)}: not a regular file")
        return parse_elf(fd_reader(fd))
    finally:
        os.close(fd)


def _read_exact(read_at: ReadAt, offset: int, size: int, what: str) -> bytes:
    if offset < 0 or size < 0 or offset + size > _MAX_OFFSET:
        raise ElfError(f"{what} out of range (offset {offset:#x}, size {size:#x})")
    data = read_at(offset, size)
    if len(data) < size:
        raise ElfError(f"truncated: {what} at {offset:#x} needs {size} bytes, got {len(data)}")
    return data


def _parse(read_at: ReadAt) -> ElfInfo:
    header = read_at(0, 64)
    if len(header) < 16 or header[:4] != _MAGIC:
        raise ElfError("not an ELF file (bad magic)")
    if header[4] not in (ELFCLASS32, ELFCLASS64):
        raise ElfError(f"invalid ELF class {header[4]}")
    if header[5] not in (ELFDATA2LSB, ELFDATA2MSB):
        raise ElfError(f"invalid ELF data encoding {header[5]}")
    lay = _Layout(64 if header[4] == ELFCLASS64 else 32, "<" if header[5] == ELFDATA2LSB else ">")
    if len(header) < (64 if lay.is64 else 52):
        raise ElfError(f"truncated: ELF header is {len(header)} bytes")
    e_type, e_machine = lay.unpack("HH", header, 16)
    if lay.is64:
        (phoff, shoff) = lay.unpack("QQ", header, 32)
        phentsize, phnum = lay.unpack("HH", header, 54)
        shentsize = lay.unpack("H", header, 58)[0]
    else:
        (phoff, shoff) = lay.unpack("II", header, 28)
        phentsize, phnum = lay.unpack("HH", header, 42)
        shentsize = lay.unpack("H", header, 46)[0]
    if phnum == PN_XNUM:
        phnum = _extended_phnum(read_at, lay, shoff, shentsize)
    segments = _program_headers(read_at, lay, phoff, phentsize, phnum)
    dynamic = _dynamic(read_at, lay, segments)
    return ElfInfo(
        elf_class=lay.elf_class,
        byte_order="little" if lay.order == "<" else "big",
        osabi=header[7],
        abi_version=header[8],
        type=e_type,
        machine=e_machine,
        build_id=_build_id(read_at, lay, segments),
        interpreter=_interpreter(read_at, segments),
        **dynamic,
    )


def _extended_phnum(read_at: ReadAt, lay: _Layout, shoff: int, shentsize: int) -> int:
    """``e_phnum == PN_XNUM``: the real count is ``sh_info`` of section header 0."""
    want = 64 if lay.is64 else 40
    if shoff == 0 or shentsize < want:
        raise ElfError("e_phnum is PN_XNUM but there is no section header 0")
    section0 = _read_exact(read_at, shoff, want, "section header 0")
    return lay.unpack("I", section0, 44 if lay.is64 else 28)[0]


def _program_headers(
    read_at: ReadAt, lay: _Layout, phoff: int, phentsize: int, phnum: int
) -> tuple[_Segment, ...]:
    if phnum == 0:
        return ()
    if phentsize != lay.phentsize:
        raise ElfError(f"e_phentsize {phentsize} is not {lay.phentsize}")
    if phnum > 1 << 16:
        raise ElfError(f"implausible program header count {phnum}")
    table = _read_exact(read_at, phoff, phnum * phentsize, "program headers")
    segments = []
    for i in range(phnum):
        at = i * phentsize
        if lay.is64:
            p_type, _flags, off, vaddr, _paddr, filesz, _memsz, align = lay.unpack(
                "IIQQQQQQ", table, at
            )
        else:
            p_type, off, vaddr, _paddr, filesz, _memsz, _flags, align = lay.unpack(
                "IIIIIIII", table, at
            )
        segments.append(_Segment(p_type, off, vaddr, filesz, align))
    return tuple(segments)


def _dynamic(read_at: ReadAt, lay: _Layout, segments: tuple[_Segment, ...]) -> dict:
    """SONAME, NEEDED, RPATH, RUNPATH and FLAGS_1 from the first ``PT_DYNAMIC``."""
    seg = next((s for s in segments if s.type == PT_DYNAMIC), None)
    if seg is None:
        return {}
    entries = _dynamic_entries(read_at, lay, seg)
    last: dict[int, int] = {}
    needed: list[int] = []
    for tag, val in entries:
        if tag == DT_NEEDED:
            needed.append(val)
        else:
            last[tag] = val
    wanted = [DT_SONAME, DT_RPATH, DT_RUNPATH]
    if not needed and not any(t in last for t in wanted):
        return {"flags_1": last.get(DT_FLAGS_1)}
    if DT_STRTAB not in last:
        raise ElfError("dynamic section names strings but has no DT_STRTAB")
    strings = _StringTable(read_at, segments, last[DT_STRTAB], last.get(DT_STRSZ))

    def string(tag: int) -> str | None:
        return strings.get(last[tag]) if tag in last else None

    return {
        "soname": string(DT_SONAME),
        "needed": tuple(strings.get(v) for v in needed),
        "rpath": string(DT_RPATH),
        "runpath": string(DT_RUNPATH),
        "flags_1": last.get(DT_FLAGS_1),
    }


def _dynamic_entries(read_at: ReadAt, lay: _Layout, seg: _Segment) -> list[tuple[int, int]]:
    size = lay.dynentsize
    count = seg.filesz // size
    fmt = "qQ" if lay.is64 else "iI"
    entries: list[tuple[int, int]] = []
    for start in range(0, count, _DYN_CHUNK):
        n = min(_DYN_CHUNK, count - start)
        chunk = _read_exact(read_at, seg.offset + start * size, n * size, "dynamic section")
        for i in range(n):
            tag, val = lay.unpack(fmt, chunk, i * size)
            if tag == DT_NULL:
                return entries
            entries.append((tag, val))
    return entries


class _StringTable:
    """The dynamic string table, read one string at a time."""

    def __init__(
        self, read_at: ReadAt, segments: tuple[_Segment, ...], vaddr: int, size: int | None
    ) -> None:
        load = next(
            (s for s in segments if s.type == PT_LOAD and s.vaddr <= vaddr < s.vaddr + s.filesz),
            None,
        )
        if load is None:
            raise ElfError(f"DT_STRTAB {vaddr:#x} lies in no PT_LOAD segment")
        self._read_at = read_at
        self._offset = vaddr - load.vaddr + load.offset
        room = load.vaddr + load.filesz - vaddr  # file-backed bytes after the table start
        self._size = room if size is None else min(size, room)

    def get(self, index: int) -> str:
        if index >= self._size:
            raise ElfError(f"string offset {index:#x} beyond the string table ({self._size:#x})")
        limit = min(self._size - index, _MAX_STRING)
        data = b""
        while True:
            want = min(_STR_CHUNK, limit - len(data))
            if want <= 0:
                raise ElfError(f"unterminated string at {index:#x} in the string table")
            chunk = _read_exact(
                self._read_at, self._offset + index + len(data), want, "string table"
            )
            end = chunk.find(b"\0")
            if end >= 0:
                return os.fsdecode(data + chunk[:end])
            data += chunk


def _interpreter(read_at: ReadAt, segments: tuple[_Segment, ...]) -> str | None:
    seg = next((s for s in segments if s.type == PT_INTERP), None)
    if seg is None:
        return None
    if not 0 < seg.filesz <= 4096:
        raise ElfError(f"PT_INTERP of implausible size {seg.filesz}")
    data = _read_exact(read_at, seg.offset, seg.filesz, "PT_INTERP")
    return os.fsdecode(data.split(b"\0", 1)[0])


def _build_id(read_at: ReadAt, lay: _Layout, segments: tuple[_Segment, ...]) -> str | None:
    for seg in segments:
        if seg.type != PT_NOTE or seg.filesz == 0:
            continue
        size = min(seg.filesz, _MAX_NOTES)
        notes = _read_exact(read_at, seg.offset, size, "note segment")
        found = _find_build_id(notes, lay.order, 8 if seg.align == 8 else 4,
                               cut=size < seg.filesz)
        if found is not None:
            return found
    return None


def _find_build_id(notes: bytes, order: str, align: int, *, cut: bool = False) -> str | None:
    """The build-id in a PT_NOTE segment's bytes; `cut` says they stop at our read limit,
    so a note running past the end is ours to skip, not a broken file."""
    at = 0
    while at + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from(order + "III", notes, at)
        name_at = at + 12
        desc_at = at + _align(12 + namesz, align)
        end = at + _align(desc_at - at + descsz, align)
        if desc_at + descsz > len(notes):
            if cut:
                return None
            raise ElfError("truncated note in PT_NOTE segment")
        if ntype == NT_GNU_BUILD_ID and notes[name_at : name_at + namesz] == b"GNU\0":
            return notes[desc_at : desc_at + descsz].hex()
        at = end
    return None


def _align(n: int, to: int) -> int:
    return (n + to - 1) & ~(to - 1)
