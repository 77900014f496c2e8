"""inotify on the directories that hold the shim links and the libraries.

Watches are on parent directories, never on a symlink itself: renames (``ln -sf`` is symlink +
rename), creations and deletions are only visible there, and a watch on a link follows it to
its target. What an event means:
- a change to a link's name, its target's name or a path library's name → re-check links;
- ``IN_OPEN``/``IN_CLOSE_NOWRITE`` of a configured library ("a process is loading it" / "a
  process dropped it", without saying which) or its replacement → re-read maps;
- ``IN_Q_OVERFLOW`` → events were lost: re-check everything.

Loads are watched on a whole directory except in the system's library directories
(`system_library_dir`: ``/usr/lib64``, ``/lib/x86_64-linux-gnu``, ...), where every program
on the host opens its C library: there a directory is watched for name changes only, and
loads on the configured library files in it, each watched as a file (a replaced file is
watched again, as its new inode, when its name changes).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from inotify_simple import INotify
from inotify_simple import flags as in_flags

NAME_CHANGES = (in_flags.CREATE | in_flags.DELETE | in_flags.MOVED_FROM | in_flags.MOVED_TO
                | in_flags.ATTRIB | in_flags.CLOSE_WRITE)
LOADS = in_flags.OPEN | in_flags.CLOSE_NOWRITE
DIRECTORY_GONE = in_flags.DELETE_SELF | in_flags.MOVE_SELF | in_flags.IGNORED | in_flags.UNMOUNT
NAMES_MASK = NAME_CHANGES | in_flags.DELETE_SELF | in_flags.MOVE_SELF | in_flags.ONLYDIR
WATCH_MASK = NAMES_MASK | LOADS
FILE_MASK = LOADS | in_flags.DELETE_SELF | in_flags.MOVE_SELF
FILE_GONE = in_flags.DELETE_SELF | in_flags.MOVE_SELF | in_flags.IGNORED | in_flags.UNMOUNT
# The loader's system directories (and their multiarch subdirectories), as a process sees
# them or through /proc/PID/root.
_SYSTEM_LIBRARY_DIR = re.compile(
    r"(?:/proc/\d+/root)?(?:/usr)?/lib(?:32|64|x32)?(?:/[^/]+-linux-gnu[^/]*)?/?")


def system_library_dir(directory: str) -> bool:
    """Whether `directory` is one of the system's library directories, where every program
    started on the host opens libraries."""
    return _SYSTEM_LIBRARY_DIR.fullmatch(directory) is not None


@dataclass(frozen=True)
class FsChange:
    """What a batch of inotify events asks the daemon to re-check."""

    links: bool = False
    libraries: bool = False
    overflow: bool = False
    rearm: bool = False
    devices: bool = False  # a GPU device file (`device_patterns`) was opened

    def __or__(self, other: FsChange) -> FsChange:
        return FsChange(self.links or other.links, self.libraries or other.libraries,
                        self.overflow or other.overflow, self.rearm or other.rearm,
                        self.devices or other.devices)


@dataclass(frozen=True)
class WatchPlan:
    """Which names in which directories matter (directories as vgpumon reaches them).
    Loads are watched in `library_dirs` as a whole, and on `load_files` one by one."""

    link_names: dict[str, frozenset[str]]
    library_patterns: tuple[str, ...]
    library_dirs: frozenset[str]
    load_files: frozenset[str] = field(default=frozenset())
    device_patterns: tuple[str, ...] = ()  # among `library_patterns`: GPU device files

    @property
    def directories(self) -> frozenset[str]:
        return (frozenset(self.link_names) | self.library_dirs
                | {os.path.dirname(path) for path in self.load_files})

    def mask_of(self, directory: str) -> int:
        return WATCH_MASK if directory in self.library_dirs else NAMES_MASK

    def is_load_file(self, directory: str, name: str) -> bool:
        return f"{directory}/{name}" in self.load_files


def plan_watches(link_paths: Iterable[str], link_related: Iterable[str],
                 library_dirs: Iterable[str], library_patterns: Iterable[str],
                 library_files: Iterable[str] = (), *,
                 busy: Callable[[str], bool] = system_library_dir,
                 device_patterns: Iterable[str] = ()) -> WatchPlan:
    """`link_paths` and `link_related` (targets, path libraries) are files whose names are
    watched for changes; `library_dirs` are directories where library loads are watched, but
    in a `busy` directory only loads of `link_related` and `library_files` are."""
    names: dict[str, set[str]] = {}
    for path in (*link_paths, *link_related):
        directory, name = os.path.split(path)
        names.setdefault(directory or "/", set()).add(name)
    loads = frozenset(library_dirs) | frozenset(names)
    busy_dirs = {directory for directory in loads if busy(directory)}
    return WatchPlan(
        link_names={d: frozenset(n) for d, n in names.items()},
        library_patterns=tuple(dict.fromkeys(library_patterns)),
        library_dirs=loads - busy_dirs,
        load_files=frozenset(path for path in (*link_related, *library_files)
                             if os.path.dirname(path) in busy_dirs),
        device_patterns=tuple(device_patterns),
    )


def interpret(plan: WatchPlan, directory: str | None, mask: int, name: str) -> FsChange:
    """What one inotify event (in `directory`, for `name`) means (pure)."""
    if mask & in_flags.Q_OVERFLOW:
        return FsChange(links=True, libraries=True, overflow=True)
    if directory is None:
        return FsChange()
    if mask & DIRECTORY_GONE and not name:
        return FsChange(links=True, libraries=True, rearm=True)
    is_library = any(fnmatch.fnmatchcase(name, p) for p in plan.library_patterns)
    links = bool(mask & NAME_CHANGES) and name in plan.link_names.get(directory, ())
    libraries = is_library and bool(mask & (LOADS | NAME_CHANGES))
    # A file watched by itself follows its inode: a new file under its name is watched anew.
    rearm = bool(mask & NAME_CHANGES) and plan.is_load_file(directory, name)
    devices = libraries and any(fnmatch.fnmatchcase(name, p) for p in plan.device_patterns)
    return FsChange(links=links, libraries=libraries, rearm=rearm, devices=devices)


def interpret_file(plan: WatchPlan, path: str, mask: int) -> FsChange:
    """What one inotify event on a file watched by itself (a `load_files` entry) means."""
    if mask & FILE_GONE:
        return FsChange(libraries=True, rearm=True)
    directory, name = os.path.split(path)
    return interpret(plan, directory, mask, name)


class FsWatcher:
    """Owns the inotify instance and keeps a watch on every planned directory that exists."""

    def __init__(self) -> None:
        self._inotify = INotify(nonblocking=True)
        self._dirs_of_wd: dict[int, set[str]] = {}
        self._files_of_wd: dict[int, set[str]] = {}
        self._plan = WatchPlan({}, (), frozenset())
        self.missing: frozenset[str] = frozenset()

    def fileno(self) -> int:
        return self._inotify.fileno()

    def set_plan(self, plan: WatchPlan) -> None:
        """Adopt `plan`; watches are (re)added only when it changed or a directory was missing
        (a directory removed and re-created is re-armed through its IN_IGNORED)."""
        if plan == self._plan and not self.missing and self._dirs_of_wd:
            return
        self._plan = plan
        self.arm()

    def arm(self) -> None:
        """(Re)add watches: a directory created or re-created since is picked up here."""
        dirs_of_wd: dict[int, set[str]] = {}
        files_of_wd: dict[int, set[str]] = {}
        missing = set()
        plan = self._plan
        for directory in sorted(plan.directories):
            try:
                wd = self._inotify.add_watch(directory, plan.mask_of(directory))
            except OSError:
                missing.add(directory)
                continue
            # Two paths can name one directory (a symlinked dir, /proc/PID/root/...): one wd.
            dirs_of_wd.setdefault(wd, set()).add(directory)
        for path in sorted(plan.load_files):
            try:
                wd = self._inotify.add_watch(path, FILE_MASK)
            except OSError:
                missing.add(path)
                continue
            files_of_wd.setdefault(wd, set()).add(path)
        for wd in (set(self._dirs_of_wd) | set(self._files_of_wd)) - set(dirs_of_wd) \
                - set(files_of_wd):
            self._remove(wd)
        self._dirs_of_wd = dirs_of_wd
        self._files_of_wd = files_of_wd
        self.missing = frozenset(missing)

    def read(self) -> FsChange:
        change = FsChange()
        for event in self._inotify.read(timeout=0):
            files = self._files_of_wd.get(event.wd)
            if files:
                for path in files:
                    change = change | interpret_file(self._plan, path, event.mask)
            else:
                directories: set[str] | set[None] = self._dirs_of_wd.get(event.wd) or {None}
                for directory in directories:
                    change = change | interpret(self._plan, directory, event.mask, event.name)
            if event.mask & in_flags.IGNORED:
                self._dirs_of_wd.pop(event.wd, None)
                self._files_of_wd.pop(event.wd, None)
        return change

    def close(self) -> None:
        self._inotify.close()

    def _remove(self, wd: int) -> None:
        with contextlib.suppress(OSError):  # already gone with its directory
            self._inotify.rm_watch(wd)
