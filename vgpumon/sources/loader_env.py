"""What the dynamic loader was told when a process started: its ``LD_PRELOAD`` and
``LD_LIBRARY_PATH`` (from ``/proc/PID/environ``, fixed at exec) and ``/etc/ld.so.preload`` in
its root; and the SONAME of a file it maps. These decide which shims a process is expected to
map and whether glibc hands it the shim or the real library (docs/configuration.md#expectations,
docs/ollama.md#preloaded-shims-and-the-soname).

Reading another user's environ needs the same privilege as its maps (CAP_SYS_PTRACE); without
it the variables are unknown, never empty.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from vgpumon.linux.elf import ElfError, read_elf
from vgpumon.linux.procfs import ProcFS

SYSTEM_PRELOAD = "/etc/ld.so.preload"
MAX_PRELOAD_FILE = 64 << 10
_SEPARATORS = re.compile(r"[\s:]+")


@dataclass(frozen=True)
class LoaderVariables:
    preload: tuple[str, ...] = ()  # LD_PRELOAD entries, in order
    library_path: tuple[str, ...] = ()  # LD_LIBRARY_PATH directories, in order
    system_preload: tuple[str, ...] = ()  # /etc/ld.so.preload entries in the process's root
    known: bool = True  # False: the environment could not be read
    # The variables as set (None: unset), for the loader model (vgpumon/linux/loader/), which
    # splits them as ld.so does (an empty LD_LIBRARY_PATH element is the working directory).
    ld_preload: str | None = None
    ld_library_path: str | None = None


def split_preload(text: str) -> tuple[str, ...]:
    """LD_PRELOAD and ld.so.preload list objects separated by spaces or colons."""
    return tuple(entry for entry in _SEPARATORS.split(text) if entry)


def split_path(text: str) -> tuple[str, ...]:
    """LD_LIBRARY_PATH: colon- or semicolon-separated; an empty entry is the working dir,
    which no shim link is in."""
    return tuple(entry for entry in re.split(r"[:;]", text) if entry)


def read_loader_variables(procfs: ProcFS, pid: int) -> LoaderVariables:
    system = _read_system_preload(procfs.path(pid, "root") + SYSTEM_PRELOAD)
    try:
        environ = procfs.environ(pid)
    except OSError:
        return LoaderVariables(system_preload=system, known=False)
    preload, library_path = environ.get("LD_PRELOAD"), environ.get("LD_LIBRARY_PATH")
    return LoaderVariables(split_preload(preload or ""), split_path(library_path or ""), system,
                           ld_preload=preload, ld_library_path=library_path)


def _read_system_preload(path: str) -> tuple[str, ...]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return ()
    try:
        data = os.read(fd, MAX_PRELOAD_FILE)
    except OSError:
        return ()
    finally:
        os.close(fd)
    return split_preload(data.decode("utf-8", "replace"))


def soname_of(procfs: ProcFS, pid: int, path: str) -> str | None:
    """The SONAME of a file `pid` maps at `path` (read through its root): "" when it has
    none, None when it cannot be read (then nothing is concluded from it)."""
    try:
        return read_elf(procfs.path(pid, "root") + path).soname or ""
    except (OSError, ElfError):
        return None
