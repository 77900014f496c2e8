"""Process discovery: which processes belong to which configured group.

A scan lists ``<procfs>`` and classifies only PIDs it has not seen: classification is cached
per (pid, start time), so an idle host costs one directory listing, compared with the last one
as sets (no work per PID in Python). Young processes are classified again for a short while
because a runner is forked by the server (same cmdline) and only then execs into ``ollama
runner …``. Tracked processes are re-validated each scan so a reused PID cannot inherit a
group.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace

from vgpumon.config.schema import GroupSpec
from vgpumon.linux.containers import container_of
from vgpumon.linux.procfs import ProcFS, ProcParseError

log = logging.getLogger(__name__)

# A process is re-classified during its first scans while younger than this: long enough for
# a fork-then-exec to settle, short enough that a busy host does not re-read much.
YOUNG_SECONDS = 30.0
YOUNG_RECHECKS = 2


@dataclass(frozen=True)
class TrackedProcess:
    """A process that belongs to a group."""

    pid: int
    start_ticks: int
    start_time: float
    ppid: int
    group: str
    comm: str
    cmdline: tuple[str, ...]
    exe: str | None
    model_arg: str | None
    container: str | None = None  # runtime://id, None on the host

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)


@dataclass
class _Seen:
    """What the scanner remembers about a PID (mutable bookkeeping, never exported)."""

    start_ticks: int
    tracked: TrackedProcess | None
    rechecks_left: int
    vsize: int | None = None  # address-space size at the last look (tracked processes)


class _SeenTable(dict[int, _Seen]):
    """PID -> _Seen, with the tracked subset and the PIDs to look at again at the next scan
    (tracked or young) kept apart, so that neither walks all PIDs."""

    def __init__(self) -> None:
        super().__init__()
        self.tracked: dict[int, TrackedProcess] = {}
        self.look_again: set[int] = set()

    def update_tracked(self, pid: int) -> None:
        seen = self.get(pid)
        if seen is not None and seen.tracked is not None:
            self.tracked[pid] = seen.tracked
        else:
            self.tracked.pop(pid, None)
        if seen is not None and (seen.tracked is not None or seen.rechecks_left > 0):
            self.look_again.add(pid)
        else:
            self.look_again.discard(pid)


def model_argument(cmdline: tuple[str, ...]) -> str | None:
    """The value of ``--model`` (or ``-m``) in a runner's argv."""
    for index, arg in enumerate(cmdline):
        if arg in ("--model", "-m") and index + 1 < len(cmdline):
            return cmdline[index + 1]
        if arg.startswith("--model="):
            return arg[len("--model="):]
    return None


def classify(groups: Iterable[GroupSpec], comm: str, exe: str | None,
             cmdline: tuple[str, ...]) -> str | None:
    """The first group whose patterns all match, or None."""
    joined = " ".join(cmdline)
    for group in groups:
        if group.comm is not None and not group.comm.search(comm):
            continue
        if group.exe is not None and (exe is None or not group.exe.search(exe)):
            continue
        if group.cmdline is not None and not group.cmdline.search(joined):
            continue
        return group.name
    return None


class ProcessScanner:
    """Keeps the set of tracked processes current, cheaply."""

    def __init__(self, procfs: ProcFS, groups: tuple[GroupSpec, ...]):
        self._procfs = procfs
        self._groups = groups
        self._needs_exe = any(group.exe is not None for group in groups)
        # When every group has a cmdline pattern, a cmdline none of them matches decides
        # "not tracked" alone: no stat, exe or cgroup read.
        self._cmdline_patterns = tuple(g.cmdline for g in groups if g.cmdline is not None)
        self._cmdline_decides = len(self._cmdline_patterns) == len(groups)
        self._seen = _SeenTable()
        # The names of the last listing, plus PIDs learned since from events: every PID in
        # `_seen` is in here, so a PID missing from a new listing is one that went away.
        self._listed: set[str] = set()

    def scan(self, now: float) -> tuple[TrackedProcess, ...]:
        """List procfs, classify new PIDs, re-check young and tracked ones."""
        listed = self._procfs.listing()
        for name in self._listed - listed:
            if name.isdigit():
                self.forget(int(name))
        again = [(pid, self._seen[pid]) for pid in self._seen.look_again]
        for name in listed - self._listed:
            if name.isdigit() and int(name) not in self._seen:
                self._seen[int(name)] = self._first_look(int(name), now)
                self._seen.update_tracked(int(name))
        self._listed = listed
        for pid, seen in again:
            self._look_again(pid, seen, now)
            self._seen.update_tracked(pid)
        return self.tracked()

    def rescan_pid(self, pid: int, now: float) -> TrackedProcess | None:
        """Classify `pid` afresh (after an exec event): forget what was known about it."""
        self._seen.pop(pid, None)
        seen = self._look_after_exec(pid, now)
        self._seen[pid] = seen
        self._seen.update_tracked(pid)
        self._listed.add(str(pid))
        return seen.tracked

    def forget(self, pid: int) -> TrackedProcess | None:
        """Drop `pid` (it exited); returns what it was if it was tracked. Should the PID come
        back (reused), the next scan sees it as new."""
        seen = self._seen.pop(pid, None)
        self._seen.update_tracked(pid)
        self._listed.discard(str(pid))
        return seen.tracked if seen else None

    def is_tracked(self, pid: int) -> bool:
        return pid in self._seen.tracked

    def vsize(self, pid: int) -> int | None:
        """The size of `pid`'s address space when the last scan looked (None: not known)."""
        seen = self._seen.get(pid)
        return seen.vsize if seen is not None else None

    def tracked(self) -> tuple[TrackedProcess, ...]:
        return tuple(process for _, process in sorted(self._seen.tracked.items()))

    def _look_after_exec(self, pid: int, now: float) -> _Seen:
        """Every exec on the host comes here, nearly all of programs no group is about: those
        cost one cmdline read. They stay young (looked at again by the next scans, in full,
        as a process first seen by a scan would be)."""
        if self._cmdline_decides:
            try:
                cmdline = self._procfs.cmdline(pid)
            except OSError:
                return _Seen(start_ticks=-1, tracked=None, rechecks_left=0)  # gone already
            joined = " ".join(cmdline)
            if not any(pattern.search(joined) for pattern in self._cmdline_patterns):
                return _Seen(start_ticks=-1, tracked=None, rechecks_left=YOUNG_RECHECKS)
        return self._first_look(pid, now)

    def _first_look(self, pid: int, now: float) -> _Seen:
        try:
            stat = self._procfs.stat(pid)
        except (OSError, ProcParseError):
            return _Seen(start_ticks=-1, tracked=None, rechecks_left=0)  # gone or unreadable
        start_time = self._procfs.start_time(stat.start_ticks)
        young = now - start_time < YOUNG_SECONDS
        tracked = self._classify(pid, stat.start_ticks, start_time, stat.ppid, stat.comm)
        return _Seen(stat.start_ticks, tracked, YOUNG_RECHECKS if young else 0, stat.vsize)

    def _look_again(self, pid: int, seen: _Seen, now: float) -> None:
        try:
            stat = self._procfs.stat(pid)
        except (OSError, ProcParseError):
            seen.tracked, seen.rechecks_left = None, 0
            return
        if stat.start_ticks != seen.start_ticks:  # reused PID, or only checked by cmdline
            fresh = self._first_look(pid, now)
            seen.start_ticks, seen.tracked = fresh.start_ticks, fresh.tracked
            seen.rechecks_left, seen.vsize = fresh.rechecks_left, fresh.vsize
            return
        seen.vsize = stat.vsize
        if stat.state == "Z":  # exited, not yet reaped: nothing mapped any more
            seen.tracked, seen.rechecks_left = None, 0
            return
        if seen.rechecks_left > 0:
            seen.rechecks_left -= 1
            start_time = self._procfs.start_time(stat.start_ticks)
            seen.tracked = self._classify(pid, stat.start_ticks, start_time, stat.ppid, stat.comm)
        elif seen.tracked is not None and seen.tracked.ppid != stat.ppid:
            seen.tracked = replace(seen.tracked, ppid=stat.ppid)  # reparented (server died)

    def _classify(self, pid: int, start_ticks: int, start_time: float, ppid: int,
                  comm: str) -> TrackedProcess | None:
        try:
            cmdline = self._procfs.cmdline(pid)
        except OSError:
            return None
        if not cmdline:
            return None  # kernel thread or zombie
        exe = self._read_exe(pid) if self._needs_exe else None
        group = classify(self._groups, comm, exe, cmdline)
        if group is None or self._is_unexeced_fork(ppid, cmdline):
            return None
        return TrackedProcess(
            pid=pid, start_ticks=start_ticks, start_time=start_time, ppid=ppid, group=group,
            comm=comm, cmdline=cmdline, exe=exe, model_arg=model_argument(cmdline),
            container=self._read_container(pid),
        )

    def _is_unexeced_fork(self, ppid: int, cmdline: tuple[str, ...]) -> bool:
        """A child that still carries its tracked parent's argv has forked but not yet exec'd."""
        parent = self._seen.get(ppid)
        return bool(parent and parent.tracked and parent.tracked.cmdline == cmdline)

    def _read_container(self, pid: int) -> str | None:
        try:
            return container_of(self._procfs.read(pid, "cgroup"))
        except OSError:
            return None

    def _read_exe(self, pid: int) -> str | None:
        try:
            return self._procfs.exe(pid)
        except OSError:
            return None  # another user's process without CAP_SYS_PTRACE: match on the rest

