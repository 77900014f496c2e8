"""Where a library name lands in a process: the file glibc's loader gives the process when its
CUDA backend (or, without one, its executable) asks for that name, and the configured shim
links the search went through (docs/configuration.md#expectations).

The answer is the loader model's (`vgpumon.linux.loader.ldresolve`), in the process's root
and with its ``LD_LIBRARY_PATH``, ``LD_PRELOAD``, ``/etc/ld.so.preload`` and
``/etc/ld.so.cache``: what the process preloads (and what those load) first, by SONAME; then
``LD_LIBRARY_PATH``, the asking object's ``DT_RUNPATH`` (``$ORIGIN`` expanded to where it was
loaded from; or its ``DT_RPATH`` chain), the cache, the default directories. Every runner of
one server has the same environment, so answers are kept per (root, environment, asking
object, name) and reused until a configured link or library file changes, or `MAX_AGE`
passes; nothing is resolved again for a refresh that changed nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from vgpumon.linux.elf import ElfError
from vgpumon.linux.loader.ldcache import LdCacheError
from vgpumon.linux.loader.ldresolve import Dependency, LoaderEnvironment, Step, resolve_request
from vgpumon.linux.paths import HOST, FileView, process_view
from vgpumon.linux.procfs import DELETED_SUFFIX, ProcFS
from vgpumon.sources.loader_env import LoaderVariables

log = logging.getLogger(__name__)

MAX_AGE = 60.0  # seconds an answer is reused while no link or library file changed
MAX_ENTRIES = 256
_MAX_HOPS = 40  # symlinks followed from the path the search found (the kernel's limit)


@dataclass(frozen=True)
class Landing:
    """Where `name` lands. `path`: the file it resolves to, in the process's view (what its
    maps show), None when the loader finds nothing; `through`: the configured link paths on
    the way (the path the search found, then each symlink from there); `preloaded`: an object
    loaded at start (a preload, or what a preload needs) answers to the name, so glibc hands
    that out before searching any path."""

    name: str
    path: str | None
    through: tuple[str, ...] = ()
    preloaded: bool = False


_Key = tuple[tuple[int, int], tuple[int, int] | None, str | None, str | None, str | None, str,
             str, str]


class LandingResolver:
    """Resolves names as a process's loader would; `links` are the configured link paths
    whose use is reported in `Landing.through`."""

    def __init__(self, procfs: ProcFS, links: Iterable[str]):
        self.procfs = procfs
        self.links = tuple(dict.fromkeys(links))
        self._answers: dict[_Key, tuple[float, Landing]] = {}
        self._own_root = _identity("/")
        self._own_mounts = _mount_namespace("/proc/self/ns/mnt")
        self.resolutions = 0  # how many times the loader model ran (tests, benchmarks)

    def invalidate(self) -> None:
        """A link or library file changed: resolve again."""
        self._answers.clear()

    def landing(self, pid: int, loader: LoaderVariables, requester: str | None, name: str,
                now: float) -> Landing | None:
        """Where `name` lands when `requester` (a path in the process's view; None: its
        executable) asks for it in process `pid`; None when that cannot be told (the
        environment, root or files are unreadable)."""
        if not loader.known:
            return None
        try:
            root = _identity(self.procfs.path(pid, "root"))
            executable = _live_path(self.procfs.exe(pid))
            cwd = _live_path(os.readlink(self.procfs.path(pid, "cwd"))) or "/"
        except OSError:
            return None
        asker = requester or executable
        if asker is None:
            return None
        mounts = _mount_namespace(self.procfs.path(pid, "ns/mnt"))
        key = (root, mounts, loader.ld_library_path, loader.ld_preload, executable, cwd, asker,
               name)
        cached = self._answers.get(key)
        if cached is not None and now - cached[0] < MAX_AGE:
            return cached[1]
        # One root is not one view: the unit's PrivateTmp= and ProtectHome= give the daemon
        # its own /tmp and /home over the same "/" (where Ollama's runners and installs live).
        same_view = (root == self._own_root and mounts is not None
                     and mounts == self._own_mounts)
        view = HOST if same_view else process_view(self.procfs.root, pid)
        self.resolutions += 1
        found = resolve_landing(view, loader, executable, cwd, asker, name, self.links)
        if found is not None:
            if len(self._answers) >= MAX_ENTRIES:
                del self._answers[next(iter(self._answers))]
            self._answers[key] = (now, found)
        return found


def resolve_landing(view: FileView, loader: LoaderVariables, executable: str | None, cwd: str,
                    requester: str, name: str, links: tuple[str, ...]) -> Landing | None:
    """Where `name` lands when `requester` asks for it in a process of `executable` whose root
    is `view`, with `loader`'s variables; None when the files cannot be read."""
    environ = {key: value for key, value in (("LD_LIBRARY_PATH", loader.ld_library_path),
                                             ("LD_PRELOAD", loader.ld_preload))
               if value is not None}
    env = LoaderEnvironment.for_process(environ, view, executable=executable, cwd=cwd)
    try:
        dep = resolve_request(name, requester, env)
    except (OSError, ElfError, LdCacheError, ValueError) as err:
        log.debug("resolution failed name=%s requester=%s error=%r", name, requester, str(err))
        return None
    return landing_of(view, dep, links)


def landing_of(view: FileView, dep: Dependency, links: tuple[str, ...]) -> Landing:
    """The `Landing` of a resolved dependency: which of `links` its path leads through."""
    if dep.path is None or dep.real_path is None:
        return Landing(dep.name, None)
    hops = {_canonical(view, hop) for hop in _hops(view, dep.path)}
    through = tuple(link for link in links if _canonical(view, link) in hops)
    return Landing(dep.name, dep.real_path, through, dep.found_by is Step.PRELOAD)


def _hops(view: FileView, path: str) -> list[str]:
    """`path`, then each symlink target from it (relative ones against the link's dir)."""
    hops = [path]
    for _ in range(_MAX_HOPS):
        try:
            if not stat.S_ISLNK(view.lstat(path).st_mode):
                break
            target = view.readlink(path)
        except OSError:
            break
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        hops.append(path)
    return hops


def _canonical(view: FileView, path: str) -> str:
    """`path` with its directory resolved (``/lib`` -> ``/usr/lib`` on merged-/usr systems),
    its last component as written: two names of one link compare equal."""
    directory, base = posixpath.split(posixpath.normpath(path))
    with contextlib.suppress(OSError):  # a loop: compare as written
        directory = view.realpath(directory or "/")
    return posixpath.join(directory, base)


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _mount_namespace(path: str) -> tuple[int, int] | None:
    """The identity of the mount namespace at `path` (``/proc/PID/ns/mnt``); None if unknown."""
    try:
        return _identity(path)
    except OSError:
        return None


def _live_path(path: str) -> str | None:
    """A path /proc gives for a file; None for one unlinked since (`` (deleted)``)."""
    return None if path.endswith(DELETED_SUFFIX) else path
