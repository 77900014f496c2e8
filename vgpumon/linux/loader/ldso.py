"""What the machine's own dynamic loader expands ``$PLATFORM`` and ``$LIB`` to.

``$PLATFORM`` is glibc's ``dl_platform``: the kernel's ``AT_PLATFORM`` (``x86_64``,
``aarch64``, ``i686``), except that glibc 2.26+ on x86-64 replaces it on Intel CPUs by
``haswell`` (AVX2, FMA, BMI1/2, LZCNT, MOVBE, POPCNT usable) or ``xeon_phi`` (AVX512ER/PF)
(``sysdeps/x86/cpu-features.c``). ``$LIB`` is compiled in (``DL_DST_LIB``): ``lib64`` on
Fedora/RHEL, ``lib/x86_64-linux-gnu`` on Debian/Ubuntu, ``lib`` on Arch. Neither can be
guessed from ``uname``, so they are asked of the loader itself, in this order
(docs/doctor.md#the-loader-model):

1. ``ld.so --list-diagnostics`` (glibc 2.33+): ``dl_platform``, ``dl_dst_lib``, the default
   dirs (``path.system_dirs``). The loader is run from a fixed path per machine (its
   ``PT_INTERP``), never one another process names, only when it is a root-owned file that
   nobody else may write, with an empty environment; what it prints is parsed, not trusted.
2. For ``$PLATFORM`` on this process's own machine: glibc's choice redone from
   ``/proc/cpuinfo`` on x86-64 (glibc 2.26+, per ``os.confstr``), else ``AT_PLATFORM`` from
   ``/proc/self/auxv``.

Each answer is asked once per process and kept; the daemon asks before its loop runs
(`ask_ahead`), so its loop thread never waits on the child.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass

from vgpumon.linux import elf

log = logging.getLogger(__name__)

Arch = tuple[int, int, str]  # (e_machine, ELF class, byte order)

# The PT_INTERP of each machine's glibc programs: where its ld.so is.
SYSTEM_LOADERS: dict[Arch, str] = {
    (elf.EM_X86_64, 64, "little"): "/lib64/ld-linux-x86-64.so.2",
    (elf.EM_X86_64, 32, "little"): "/libx32/ld-linux-x32.so.2",
    (elf.EM_386, 32, "little"): "/lib/ld-linux.so.2",
    (elf.EM_AARCH64, 64, "little"): "/lib/ld-linux-aarch64.so.1",
    (elf.EM_ARM, 32, "little"): "/lib/ld-linux-armhf.so.3",
    (elf.EM_PPC64, 64, "little"): "/lib64/ld64.so.2",
    (elf.EM_PPC64, 64, "big"): "/lib64/ld64.so.1",
    (elf.EM_S390, 64, "big"): "/lib/ld64.so.1",
    (elf.EM_RISCV, 64, "little"): "/lib/ld-linux-riscv64-lp64d.so.1",
}
DIAGNOSTICS_TIMEOUT = 5.0
DIAGNOSTICS_LIMIT = 1 << 20
AT_NULL, AT_PLATFORM = 0, 15
HASWELL_FLAGS = frozenset({"avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "popcnt"})  # abm: LZCNT


@dataclass(frozen=True)
class Diagnostics:
    """What ``ld.so --list-diagnostics`` says of the loader's choices.

    `platform` is ``dl_platform`` (None where the loader has none: elements with
    ``$PLATFORM`` are then dropped); `lib` is ``dl_dst_lib`` (printed by glibc 2.36+ builds
    that have it), else derived from `system_dirs`; `system_dirs` without trailing ``/``.
    """

    platform: str | None
    lib: str | None
    system_dirs: tuple[str, ...]
    version: str | None = None


@dataclass(frozen=True)
class Platform:
    """``$PLATFORM`` as the loader expands it (`value` None: it has none) and who said so."""

    value: str | None
    source: str


# --- parsing (pure) --------------------------------------------------------------------------

_LINE = re.compile(r'([A-Za-z0-9_.\[\]]+)=(?:"((?:[^"\\]|\\.)*)"|(0x[0-9a-fA-F]+))\Z')
_ESCAPE = re.compile(r"\\([0-7]{1,3}|.)")


def _unquote(text: str) -> str:
    """The value of one of ld.so's quoted strings (``\\"``, ``\\\\``, octal ``\\ooo``)."""
    def one(m: re.Match[str]) -> str:
        ch = m.group(1)
        return chr(int(ch, 8)) if ch[0] in "01234567" else ch
    return _ESCAPE.sub(one, text)


def parse_diagnostics(text: str) -> Diagnostics | None:
    """The fields of ``ld.so --list-diagnostics`` output; None if it is not such output."""
    strings: dict[str, str | None] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        key, quoted, number = m.groups()
        if quoted is not None:
            strings[key] = _unquote(quoted)
        elif number is not None and int(number, 16) == 0:
            strings[key] = None  # a NULL string is printed as 0x0
    if "dl_platform" not in strings or "version.version" not in strings:
        return None
    dirs = tuple(
        (value.rstrip("/") or "/")
        for key, value in sorted(
            ((k, v) for k, v in strings.items() if k.startswith("path.system_dirs[")),
            key=lambda kv: _index(kv[0]))
        if value
    )
    lib = strings.get("dl_dst_lib") or lib_of_system_dirs(dirs)
    return Diagnostics(strings["dl_platform"], lib, dirs, strings["version.version"])


def _index(key: str) -> int:
    m = re.search(r"\[(0x[0-9a-fA-F]+|\d+)\]", key)
    return int(m.group(1), 0) if m else 0


def lib_of_system_dirs(dirs: tuple[str, ...]) -> str | None:
    """``$LIB`` of a glibc whose first default dir is ``dirs[0]``: upstream builds use the last
    component of ``slibdir`` (``/lib64`` → ``lib64``, Arch's ``/usr/lib`` → ``lib``); Debian's
    multiarch builds ``lib/<triplet>``."""
    if not dirs:
        return None
    last = dirs[0].rstrip("/").rsplit("/", 1)[-1]
    if not last:
        return None
    return f"lib/{last}" if "-linux-" in last else last


def x86_64_platform(cpuinfo: str) -> str:
    """glibc's ``dl_platform`` on x86-64 (2.26+) from ``/proc/cpuinfo``: ``haswell`` or
    ``xeon_phi`` on Intel CPUs with those features, else the kernel's ``x86_64``."""
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", cpuinfo, re.MULTILINE)
    flags_line = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    if vendor is None or vendor.group(1) != "GenuineIntel" or flags_line is None:
        return "x86_64"
    flags = set(flags_line.group(1).split())
    if {"avx512cd", "avx512er", "avx512pf"} <= flags:
        return "xeon_phi"
    if flags >= HASWELL_FLAGS:
        return "haswell"
    return "x86_64"


def glibc_version(text: str | None) -> tuple[int, int] | None:
    """(2, 36) of ``os.confstr("CS_GNU_LIBC_VERSION")``'s ``glibc 2.36``; None otherwise."""
    m = re.fullmatch(r"glibc (\d+)\.(\d+)(?:\.\d+)?", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_auxv(data: bytes, word: int = struct.calcsize("P"),
               order: str = sys.byteorder) -> dict[int, int]:
    """``/proc/PID/auxv``: (a_type, a_val) pairs of native words, up to ``AT_NULL``."""
    fmt = ("<" if order == "little" else ">") + ("Q" if word == 8 else "I") * 2
    size = struct.calcsize(fmt)
    entries: dict[int, int] = {}
    for offset in range(0, len(data) - size + 1, size):
        a_type, a_val = struct.unpack_from(fmt, data, offset)
        if a_type == AT_NULL:
            break
        entries.setdefault(a_type, a_val)
    return entries


# --- asking the machine --------------------------------------------------------------------------


def own_arch() -> Arch | None:
    """The ELF machine of this process (the Python interpreter)."""
    try:
        info = elf.read_elf("/proc/self/exe")
    except (OSError, elf.ElfError):
        return None
    return info.machine, info.elf_class, info.byte_order


def _runs_here(arch: Arch, own: Arch | None) -> bool:
    """A loader of `arch` runs natively here (no binfmt emulator answering for it)."""
    if own is None:
        return False
    return arch[0] == own[0] or (own[0] == elf.EM_X86_64 and arch[0] == elf.EM_386)


@functools.cache
def diagnostics(arch: Arch) -> Diagnostics | None:
    """``--list-diagnostics`` of the system's loader for `arch`; None where there is no such
    loader here, it is not root's, or it is too old to have the option (glibc < 2.33)."""
    path = SYSTEM_LOADERS.get(arch)
    if path is None or not _runs_here(arch, own_arch()):
        return None
    try:
        st = os.stat(path)
        info = elf.read_elf(path)
    except (OSError, elf.ElfError):
        return None
    if (not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022
            or (info.machine, info.elf_class, info.byte_order) != arch):
        return None
    text = _run_diagnostics(path)
    return parse_diagnostics(text) if text is not None else None


def _run_diagnostics(path: str) -> str | None:
    """Run the system loader at `path` (a fixed path from SYSTEM_LOADERS, checked to be
    root's) with the one fixed argument; its output, or None."""
    try:
        result = subprocess.run(
            [path, "--list-diagnostics"], env={}, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=DIAGNOSTICS_TIMEOUT, check=False, close_fds=True,
        )
    except (OSError, subprocess.SubprocessError) as err:
        log.debug("ld.so --list-diagnostics failed path=%s error=%r", path, str(err))
        return None
    if result.returncode != 0:
        return None  # glibc < 2.33: "unrecognized option"
    return result.stdout[:DIAGNOSTICS_LIMIT].decode("utf-8", "replace")


def ask_ahead() -> None:
    """Ask every loader that runs here now, so that later questions are answered from what
    was kept: the daemon calls this before its loop runs, since the child may take up to
    `DIAGNOSTICS_TIMEOUT` and the loop must not wait on it. Any other machine's loader is
    never run (`diagnostics` returns None for it without starting anything)."""
    own = own_arch()
    for arch in SYSTEM_LOADERS:
        if _runs_here(arch, own):
            loader_platform(arch)


def auxv_platform() -> str | None:
    """``AT_PLATFORM`` of this process: the kernel's string, read from our own memory."""
    try:
        with open("/proc/self/auxv", "rb") as handle:
            address = parse_auxv(handle.read(1 << 16)).get(AT_PLATFORM)
        if not address:
            return None
        fd = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, 64, address)
        finally:
            os.close(fd)
    except (OSError, OverflowError, struct.error):
        return None
    text = data.split(b"\0", 1)[0].decode("ascii", "replace")
    return text or None


@functools.cache
def loader_platform(arch: Arch) -> Platform | None:
    """``$PLATFORM`` for a process of `arch` on this machine; None when unknown."""
    found = diagnostics(arch)
    if found is not None:
        return Platform(found.platform, "ld.so --list-diagnostics")
    if arch != own_arch():
        return None  # AT_PLATFORM and /proc/cpuinfo below are this process's
    kernel = auxv_platform()
    if arch[0] == elf.EM_X86_64 and arch[1] == 64 and kernel == "x86_64":
        version = glibc_version(_confstr("CS_GNU_LIBC_VERSION"))
        if version is not None and version >= (2, 26):
            try:
                with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                    return Platform(x86_64_platform(handle.read(1 << 20)), "/proc/cpuinfo")
            except OSError:
                pass
    return Platform(kernel, "AT_PLATFORM") if kernel else None


def _confstr(name: str) -> str | None:
    try:
        return os.confstr(name)
    except (ValueError, OSError):
        return None
