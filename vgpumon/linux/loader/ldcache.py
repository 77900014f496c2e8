"""``/etc/ld.so.cache``: the soname → path table that ``ldconfig`` writes and ``ld.so`` reads.

Three layouts exist (glibc ``elf/cache.c``, ``sysdeps/generic/dl-cache.h``):

- new (``glibc-ld.so.cache1.1``), the default since glibc 2.32: a 48-byte header, 24-byte
  entries ``(flags, key, value, osversion, hwcap)``, strings addressed from the header's start,
  and an extension directory (generator string, glibc-hwcaps subdirectory names);
- old (``ld.so-1.7.0``): a 16-byte header and 12-byte entries ``(flags, key, value)`` whose
  strings follow the entries;
- compat: an old section followed, at the next 8-byte boundary, by a complete new one. Readers
  that know the new format (ld.so, ``ldconfig -p``) use it and ignore the old section.

`parse_ld_cache` is pure; `read_ld_cache` reads the file through a `FileView`.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from vgpumon.linux import elf
from vgpumon.linux.paths import HOST, FileView

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"

FLAG_TYPE_MASK = 0x00FF
FLAG_REQUIRED_MASK = 0xFF00
FLAG_ELF = 0x0001
FLAG_ELF_LIBC6 = 0x0003
HWCAP_EXTENSION = 1 << 62  # DL_CACHE_HWCAP_EXTENSION: low 32 bits index the hwcaps names

_EXT_MAGIC = 0xEAA42174
_EXT_GENERATOR = 0
_EXT_GLIBC_HWCAPS = 1
_MAX_CACHE = 64 << 20
# The cache is the process's root's, so a container's own file: hostile input. Bounds that no
# real cache comes near (a large host's has a few thousand entries of paths under 200 bytes):
MAX_ENTRIES = 65536  # entries beyond are not read
PATH_MAX = 4096  # a longer string is cut here: cut or not, no file can be opened by that name
_MAX_STRING_BYTES = 16 << 20  # decoded string bytes in all; beyond, the cache is refused

# ldconfig's print_entry(): the words `ldconfig -p` prints for the flags.
_TYPE_NAMES = {0x00: "libc4", 0x01: "ELF", 0x02: "libc5", 0x03: "libc6"}
_REQUIRED_NAMES = {
    0x0000: "",
    0x0100: ",64bit",  # SPARC
    0x0200: ",IA-64",
    0x0300: ",x86-64",
    0x0400: ",64bit",  # s390
    0x0500: ",64bit",  # POWER
    0x0600: ",N32",
    0x0700: ",64bit",  # MIPS n64
    0x0800: ",x32",
    0x0900: ",hard-float",
    0x0A00: ",AArch64",
    0x0B00: ",soft-float",
    0x0C00: ",nan2008",
    0x0D00: ",N32,nan2008",
    0x0E00: ",64bit,nan2008",
    0x0F00: ",soft-float",  # RISC-V
    0x1000: ",double-float",  # RISC-V
    0x1100: ",soft-float",  # LoongArch
    0x1200: ",double-float",  # LoongArch
}

_ABI_TAG_OS = ("Linux", "Hurd", "Solaris", "FreeBSD", "kNetBSD", "Syllable", "Unknown OS")

# (e_machine, ELF class) -> the entry flags that machine's ld.so accepts
# (_dl_cache_check_flags in sysdeps/*/dl-cache.h).
_LOADER_FLAGS: dict[tuple[int, int], frozenset[int]] = {
    (elf.EM_X86_64, 64): frozenset({0x0303}),
    (elf.EM_X86_64, 32): frozenset({0x0803}),  # x32
    (elf.EM_386, 32): frozenset({FLAG_ELF, FLAG_ELF_LIBC6}),
    (elf.EM_AARCH64, 64): frozenset({0x0A03}),
    (elf.EM_ARM, 32): frozenset({0x0903, FLAG_ELF_LIBC6}),
    (elf.EM_PPC64, 64): frozenset({0x0503}),
    (elf.EM_S390, 64): frozenset({0x0403}),
    (elf.EM_RISCV, 64): frozenset({0x1003}),
}


class LdCacheError(ValueError):
    """The bytes are not a well-formed ld.so cache."""


@dataclass(frozen=True)
class CacheEntry:
    """One line of ``ldconfig -p``."""

    soname: str
    path: str
    flags: int
    hwcap: int = 0
    hwcaps_name: str | None = None  # glibc-hwcaps subdirectory, for extension entries
    osversion: int = 0  # minimum kernel ABI, unused since glibc 2.33

    @property
    def arch(self) -> str:
        """The flags as ``ldconfig -p`` words them, e.g. ``libc6,x86-64``."""
        kind = _TYPE_NAMES.get(self.flags & FLAG_TYPE_MASK, "unknown")
        required = self.flags & FLAG_REQUIRED_MASK
        return kind + _REQUIRED_NAMES.get(required, f",{required}")

    @property
    def is_hwcaps(self) -> bool:
        """A glibc-hwcaps entry (library in a ``glibc-hwcaps/<name>/`` subdirectory)."""
        return self.hwcap >> 32 == HWCAP_EXTENSION >> 32

    def ldconfig_line(self) -> str:
        """The line ``ldconfig -p`` prints for this entry (without the newline)."""
        extra = ""
        if self.hwcaps_name is not None:
            extra = f', hwcap: "{self.hwcaps_name}"'
        elif self.hwcap:
            extra = f", hwcap: {self.hwcap:#018x}"
        if self.osversion:
            os_name = _ABI_TAG_OS[min(self.osversion >> 24, len(_ABI_TAG_OS) - 1)]
            version = ".".join(str(self.osversion >> s & 0xFF) for s in (16, 8, 0))
            extra += f", OS ABI: {os_name} {version}"
        return f"\t{self.soname} ({self.arch}{extra}) => {self.path}"


@dataclass(frozen=True)
class LdCache:
    """A parsed cache: entries in file order (the order ``ldconfig -p`` prints)."""

    entries: tuple[CacheEntry, ...]
    format: str  # "new", "old" or "compat"
    generator: str | None = None

    def lookup(
        self,
        soname: str,
        *,
        flags: Collection[int] | None = None,
        hwcaps: Sequence[str] = (),
    ) -> CacheEntry | None:
        """The entry ld.so would use for `soname` (glibc ``search_cache``).

        `flags`: the entry flags the loader accepts (`loader_flags`); None accepts any.
        `hwcaps`: glibc-hwcaps names the CPU supports, best first (``x86-64-v3``, ...).
        Entries are scanned in cache order (ldconfig puts glibc-hwcaps entries before the plain
        one of the same name): the best-ranked supported glibc-hwcaps entry seen before the
        first plain entry wins, else that plain entry. Legacy hwcap entries (``tls/``, platform
        subdirectories, dropped in glibc 2.37) are never chosen.
        """
        best: tuple[int, CacheEntry] | None = None
        for entry in self.entries:
            if entry.soname != soname or (flags is not None and entry.flags not in flags):
                continue
            if entry.is_hwcaps:
                if entry.hwcaps_name is not None and entry.hwcaps_name in hwcaps:
                    rank = list(hwcaps).index(entry.hwcaps_name)
                    if best is None or rank < best[0]:
                        best = (rank, entry)
            elif entry.hwcap == 0:
                return best[1] if best is not None else entry
        return best[1] if best is not None else None


def loader_flags(machine: int, elf_class: int) -> frozenset[int] | None:
    """Cache entry flags the ld.so for this ELF machine and class accepts; None if unknown."""
    return _LOADER_FLAGS.get((machine, elf_class))


def read_ld_cache(view: FileView = HOST, path: str = "/etc/ld.so.cache") -> LdCache:
    """Read and parse the cache at `path` in `view`. ``OSError`` if it cannot be read."""
    fd = os.open(view.outside(view.realpath(path, strict=True)),
                 os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block the loop
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LdCacheError(f"{path}: not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= _MAX_CACHE:
            chunk = os.read(fd, _MAX_CACHE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > _MAX_CACHE:
        raise LdCacheError(f"{path}: larger than {_MAX_CACHE} bytes")
    return parse_ld_cache(b"".join(chunks))


def parse_ld_cache(data: bytes) -> LdCache:
    """Parse the bytes of an ld.so cache in any of its layouts. Raises `LdCacheError`."""
    try:
        return _parse(data)
    except (struct.error, IndexError) as exc:  # belt and braces: bounds are checked below
        raise LdCacheError(f"malformed ld.so cache: {exc}") from exc


def _parse(data: bytes) -> LdCache:
    if data.startswith(NEW_MAGIC):
        return _parse_new(data, 0, "new")
    if not data.startswith(OLD_MAGIC):
        raise LdCacheError("not an ld.so cache (bad magic)")
    order = "<" if sys.byteorder == "little" else ">"
    if len(data) < 16:
        raise LdCacheError("truncated old-format header")
    (nlibs,) = struct.unpack_from(order + "I", data, 12)
    if (len(data) - 16) // 12 < nlibs:
        raise LdCacheError(f"old format claims {nlibs} entries, file holds fewer")
    strings = 16 + nlibs * 12
    new_at = (strings + 7) & ~7
    if len(data) > new_at + 48 and data[new_at : new_at + len(NEW_MAGIC)] == NEW_MAGIC:
        return _parse_new(data, new_at, "compat")
    entries = []
    text = _Strings(data)
    for i in range(min(nlibs, MAX_ENTRIES)):
        flags, key, value = struct.unpack_from(order + "iII", data, 16 + i * 12)
        entries.append(CacheEntry(text.at(strings, key), text.at(strings, value), flags))
    return LdCache(tuple(entries), "old")


def _parse_new(data: bytes, base: int, layout: str) -> LdCache:
    if len(data) < base + 48:
        raise LdCacheError("truncated new-format header")
    order = _new_byte_order(data[base + 28])
    nlibs, _len_strings = struct.unpack_from(order + "II", data, base + 20)
    (ext_offset,) = struct.unpack_from(order + "I", data, base + 32)
    if (len(data) - base - 48) // 24 < nlibs:
        raise LdCacheError(f"new format claims {nlibs} entries, file holds fewer")
    generator, hwcaps_index = _extensions(data, order, ext_offset)
    entries = []
    text = _Strings(data)
    for i in range(min(nlibs, MAX_ENTRIES)):
        flags, key, value, osv, hwcap = struct.unpack_from(
            order + "iIIIQ", data, base + 48 + i * 24
        )
        name = None
        if hwcap >> 32 == HWCAP_EXTENSION >> 32 and (hwcap & 0xFFFFFFFF) < hwcaps_index[1]:
            # ld.so and ldconfig read these names from the start of the file, not of the new
            # section; in a compat file that gives a wrong (usually empty) name, so compat
            # glibc-hwcaps entries never match. Reproduced, not "fixed".
            (offset,) = struct.unpack_from(
                order + "I", data, hwcaps_index[0] + 4 * (hwcap & 0xFFFFFFFF))
            name = text.at(0, offset)
        soname, path = text.at(base, key), text.at(base, value)
        entries.append(CacheEntry(soname, path, flags, hwcap, name, osv))
    return LdCache(tuple(entries), layout, generator)


def _new_byte_order(flags: int) -> str:
    endian = flags & 3
    if endian == 0:  # written by a glibc before 2.33: the writer's own byte order
        return "<" if sys.byteorder == "little" else ">"
    if endian == 1:
        raise LdCacheError("cache marks its byte order invalid")
    return "<" if endian == 2 else ">"


def _extensions(data: bytes, order: str, offset: int) -> tuple[str | None, tuple[int, int]]:
    """The generator string and where the glibc-hwcaps name index (string offsets) is:
    (its offset, its count); read an index at a time, not unpacked whole."""
    if offset == 0:
        return None, (0, 0)
    if offset % 4 or offset + 8 > len(data):
        raise LdCacheError(f"bad extension directory offset {offset:#x}")
    magic, count = struct.unpack_from(order + "II", data, offset)
    if magic != _EXT_MAGIC:
        raise LdCacheError("bad extension directory magic")
    if (len(data) - offset - 8) // 16 < count:
        raise LdCacheError("truncated extension directory")
    generator: str | None = None
    hwcaps = (0, 0)
    for i in range(count):
        tag, _flags, sec_off, size = struct.unpack_from(order + "IIII", data, offset + 8 + i * 16)
        if sec_off + size > len(data):
            raise LdCacheError(f"extension section {tag} beyond the end of the file")
        if tag == _EXT_GENERATOR:
            generator = os.fsdecode(data[sec_off : sec_off + min(size, PATH_MAX)])
        elif tag == _EXT_GLIBC_HWCAPS:
            if size % 4:
                raise LdCacheError("glibc-hwcaps section size is not a multiple of 4")
            hwcaps = (sec_off, size // 4)
    return generator, hwcaps


class _Strings:
    """The cache's strings, each decoded once however many entries point at it (a hostile
    cache can point every entry at one huge string), cut at `PATH_MAX` bytes, and at most
    `_MAX_STRING_BYTES` decoded in all."""

    def __init__(self, data: bytes):
        self.data = data
        self.decoded: dict[int, str] = {}
        self.budget = _MAX_STRING_BYTES

    def at(self, base: int, offset: int) -> str:
        start = base + offset
        known = self.decoded.get(start)
        if known is not None:
            return known
        data = self.data
        if start >= len(data):
            raise LdCacheError(f"string offset {offset:#x} outside the cache")
        end = data.find(b"\0", start, start + PATH_MAX)
        if end < 0:
            if start + PATH_MAX >= len(data):
                raise LdCacheError(f"string at {offset:#x} runs past the end of the cache")
            end = start + PATH_MAX
        self.budget -= end - start
        if self.budget < 0:
            raise LdCacheError(f"strings larger than {_MAX_STRING_BYTES} bytes in all")
        text = self.decoded[start] = os.fsdecode(data[start:end])
        return text
