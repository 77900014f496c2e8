"""Process discovery: which processes belong to which configured group.

A scan lists ``<procfs>`` and classifies only PIDs it has not seen: classification is cached
per (pid, start time), so an idle host costs one directory listing, compared with the last one
as sets (no work per PID in Python). Where exec and exit events report every process, a scan
may skip the listing (`scan(listing=False)`). Young processes are classified again for a short
while because a runner is forked by the server (same cmdline) and only then execs into
``ollama runner …``. Tracked processes are re-validated each scan so a reused PID cannot
inherit a group. An exec is classified by its stat first (comm and parent), the cmdline only
where they leave a group possible.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from vgpumon.config.patterns import search_limit
from vgpumon.config.schema import SERVER, GroupSpec
from vgpumon.linux.containers import container_of
from vgpumon.linux.procfs import CMDLINE_LIMIT, ProcFS, ProcParseError
from vgpumon.model.untrusted import clip, clip_argv
from vgpumon.sources.identity import PARENT, has_identity_rules, read_executable, rejection

log = logging.getLogger(__name__)

# A process is re-classified during its first scans while younger than this: long enough for
# a fork-then-exec to settle, short enough that a busy host does not re-read much.
YOUNG_SECONDS = 30.0
YOUNG_RECHECKS = 2
# What is kept of a tracked process's argv and --model value (for /state, the landing page,
# events and the doctor): a process chooses these, so they are clipped with a marker. Patterns
# see more: the space-joined first CMDLINE_LIMIT characters (docs/reliability.md).
CMDLINE_KEEP = 4096
MODEL_ARG_KEEP = 4096


@dataclass(frozen=True)
class TrackedProcess:
    """A process that belongs to a group."""

    pid: int
    start_ticks: int
    start_time: float
    ppid: int
    group: str
    comm: str
    cmdline: tuple[str, ...]  # clipped to CMDLINE_KEEP characters (clip_argv)
    exe: str | None
    model_arg: str | None  # clipped to MODEL_ARG_KEEP characters
    container: str | None = None  # runtime://id, None on the host
    uid: int | None = None  # whose it is (the owner of /proc/PID)

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)


@dataclass(frozen=True)
class RejectedProcess:
    """A process that matched a group's patterns but not its identity rules: a look-alike
    (vgpumon.sources.identity). Never a member; counted apart."""

    pid: int
    start_ticks: int
    group: str
    reason: str
    uid: int | None
    comm: str

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)


@dataclass(slots=True)
class _Seen:
    """What the scanner remembers about a PID (mutable bookkeeping, never exported)."""

    start_ticks: int
    tracked: TrackedProcess | None
    rechecks_left: int
    vsize: int | None = None  # address-space size at the last look (tracked processes)
    rejected: RejectedProcess | None = None


class _SeenTable(dict[int, _Seen]):
    """PID -> _Seen of the processes worth remembering (tracked, rejected or young), with the
    tracked subset and the PIDs to look at again at the next scan (tracked or young) kept
    apart, so that neither walks all PIDs. A process that is none of these is not kept: the
    scanner's listing remembers that it was seen, and a busy host's 10,000 others cost no
    more."""

    def __init__(self) -> None:
        super().__init__()
        self.tracked: dict[int, TrackedProcess] = {}
        self.rejected: dict[int, RejectedProcess] = {}
        self.look_again: set[int] = set()

    def put(self, pid: int, seen: _Seen) -> None:
        """Remember what was found about `pid` (or nothing, if it is not worth keeping)."""
        if seen.tracked is None and seen.rejected is None and seen.rechecks_left <= 0:
            self.pop(pid, None)
        else:
            self[pid] = seen
        self.update_tracked(pid)

    def update_tracked(self, pid: int) -> None:
        seen = self.get(pid)
        if seen is not None and seen.tracked is not None:
            self.tracked[pid] = seen.tracked
        else:
            self.tracked.pop(pid, None)
        if seen is not None and seen.rejected is not None:
            self.rejected[pid] = seen.rejected
        else:
            self.rejected.pop(pid, None)
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


def match_text(cmdline: tuple[str, ...]) -> str:
    """What the cmdline patterns are searched in: the space-joined argv, at most its first
    `CMDLINE_LIMIT` characters, so that a pattern's cost is bounded whatever argv it meets."""
    return " ".join(cmdline)[:CMDLINE_LIMIT]


def found(pattern: re.Pattern[str], text: str) -> bool:
    """Whether `pattern` occurs in `text`, searched no further than the pattern's cost allows
    (`vgpumon.config.patterns.search_limit`: a quadratic one sees the first 1 KiB)."""
    return pattern.search(text, 0, search_limit(pattern)) is not None


def classify(groups: Iterable[GroupSpec], comm: str, exe: str | None,
             cmdline: tuple[str, ...]) -> str | None:
    """The first group whose patterns all match, or None."""
    joined = match_text(cmdline)
    for group in groups:
        if group.comm is not None and not found(group.comm, comm):
            continue
        if group.exe is not None and (exe is None or not found(group.exe, exe)):
            continue
        if group.cmdline is not None and not found(group.cmdline, joined):
            continue
        return group.name
    return None


class ProcessScanner:
    """Keeps the set of tracked processes current, cheaply."""

    def __init__(self, procfs: ProcFS, groups: tuple[GroupSpec, ...]):
        self._procfs = procfs
        self._groups = groups
        self._needs_exe = any(group.exe is not None for group in groups)
        self._by_name = {group.name: group for group in groups}
        self._seen = _SeenTable()
        # The names of the last listing, plus PIDs learned since from events: every PID in
        # `_seen` is in here, so a PID missing from a new listing is one that went away; one
        # in here but not in `_seen` was seen and is not remembered (`_SeenTable`).
        self._listed: set[str] = set()

    def scan(self, now: float, *, listing: bool = True) -> tuple[TrackedProcess, ...]:
        """List procfs and classify new PIDs, then re-check young and tracked ones. Without
        `listing` only the re-checks: an event source reports every exec and exit, so the
        PIDs known from events are all there are to look at (`HostObserver` decides)."""
        if listing:
            listed = self._procfs.listing()
            for name in self._listed - listed:
                if name.isdigit():
                    self.forget(int(name))
        again = [(pid, self._seen[pid]) for pid in self._seen.look_again]
        if listing:
            for name in listed - self._listed:
                if name.isdigit() and int(name) not in self._seen:
                    self._seen.put(int(name), self._first_look(int(name), now))
            self._listed = listed
        self._admit_children_of_new_parents(now)
        for pid, seen in again:
            self._look_again(pid, seen, now)
            if self._seen.get(pid) is seen:
                self._seen.put(pid, seen)
        return self.tracked()

    def rescan_pid(self, pid: int, now: float) -> TrackedProcess | None:
        """Classify `pid` afresh (after an exec event): forget what was known about it."""
        self._seen.pop(pid, None)
        seen = self._look_after_exec(pid, now)
        self._seen.put(pid, seen)
        self._listed.add(str(pid))
        return seen.tracked

    def forget(self, pid: int) -> TrackedProcess | None:
        """Drop `pid` (it exited); returns what it was if it was tracked. Should the PID come
        back (reused), the next scan sees it as new."""
        seen = self._seen.pop(pid, None)
        if seen is not None:
            self._seen.update_tracked(pid)
        self._listed.discard(str(pid))
        return seen.tracked if seen is not None else None

    def is_tracked(self, pid: int) -> bool:
        return pid in self._seen.tracked

    @property
    def tracked_pids(self) -> Mapping[int, TrackedProcess]:
        """The tracked processes by PID, as a live read-only view (for a batch of events,
        whose handling may track more of them meanwhile)."""
        return self._seen.tracked

    def vsize(self, pid: int) -> int | None:
        """The size of `pid`'s address space when the last scan looked (None: not known)."""
        seen = self._seen.get(pid)
        return seen.vsize if seen is not None else None

    def rejected(self) -> tuple[RejectedProcess, ...]:
        return tuple(process for _, process in sorted(self._seen.rejected.items()))

    def _admit_children_of_new_parents(self, now: float) -> None:
        """Listed in any order, a runner may have been judged before its server: look again
        at those rejected for their parent whose parent is a member now."""
        for pid, rejected in list(self._seen.rejected.items()):
            if rejected.reason != PARENT:
                continue
            try:
                ppid = self._procfs.stat(pid).ppid
            except (OSError, ProcParseError):
                continue
            if ppid in self._seen.tracked:
                self._seen.put(pid, self._first_look(pid, now))

    def tracked(self) -> tuple[TrackedProcess, ...]:
        return tuple(process for _, process in sorted(self._seen.tracked.items()))

    def _look_after_exec(self, pid: int, now: float) -> _Seen:
        """Every exec on the host comes here, nearly all of programs no group is about: those
        cost one read of the stat, whose comm and parent rule out every group (by its `comm`
        pattern, or by its `parent` rule when the parent is no member of that group). Where
        they cannot, and every group left has a cmdline pattern, the cmdline decides next;
        only a process that may match is looked at in full. Ruled-out processes stay young:
        the next scans look at them again in full, as at a process a scan found (a
        look-alike is counted then, and a comm changed after the exec is seen)."""
        try:
            comm, ppid = self._procfs.stat_head(pid)
        except (OSError, ProcParseError):
            return _Seen(start_ticks=-1, tracked=None, rechecks_left=0)  # gone already
        candidates = self._candidates(comm, ppid)
        if candidates and all(group.cmdline is not None for group in candidates):
            try:
                joined = match_text(self._procfs.cmdline(pid))
            except OSError:
                return _Seen(start_ticks=-1, tracked=None, rechecks_left=0)
            if not any(group.cmdline is not None and found(group.cmdline, joined)
                       for group in candidates):
                candidates = ()
        if not candidates:
            return _Seen(start_ticks=-1, tracked=None, rechecks_left=YOUNG_RECHECKS)
        return self._first_look(pid, now)

    def _candidates(self, comm: str, ppid: int) -> tuple[GroupSpec, ...]:
        """The groups a process of this comm and parent may be a member of."""
        parent = self._seen.tracked.get(ppid)
        return tuple(group for group in self._groups
                     if (group.comm is None or found(group.comm, comm))
                     and (group.parent is None
                          or (parent is not None and parent.group == group.parent)))

    def _first_look(self, pid: int, now: float) -> _Seen:
        try:
            stat = self._procfs.stat(pid)
        except (OSError, ProcParseError):
            return _Seen(start_ticks=-1, tracked=None, rechecks_left=0)  # gone or unreadable
        start_time = self._procfs.start_time(stat.start_ticks)
        young = now - start_time < YOUNG_SECONDS
        found = self._classify(pid, stat.start_ticks, start_time, stat.ppid, stat.comm)
        tracked = found if isinstance(found, TrackedProcess) else None
        rejected = found if isinstance(found, RejectedProcess) else None
        return _Seen(stat.start_ticks, tracked, YOUNG_RECHECKS if young else 0, stat.vsize,
                     rejected)

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
            seen.rejected = fresh.rejected
            return
        seen.vsize = stat.vsize
        if stat.state == "Z":  # exited, not yet reaped: nothing mapped any more
            seen.tracked, seen.rechecks_left, seen.rejected = None, 0, None
            return
        if seen.rechecks_left > 0:
            seen.rechecks_left -= 1
            start_time = self._procfs.start_time(stat.start_ticks)
            found = self._classify(pid, stat.start_ticks, start_time, stat.ppid, stat.comm)
            seen.tracked = found if isinstance(found, TrackedProcess) else None
            seen.rejected = found if isinstance(found, RejectedProcess) else None
        elif seen.tracked is not None and seen.tracked.ppid != stat.ppid:
            seen.tracked = replace(seen.tracked, ppid=stat.ppid)  # reparented (server died)

    def _classify(self, pid: int, start_ticks: int, start_time: float, ppid: int,
                  comm: str) -> TrackedProcess | RejectedProcess | None:
        try:
            cmdline = self._procfs.cmdline(pid)
        except OSError:
            return None
        if not cmdline:
            return None  # kernel thread or zombie
        exe = self._read_exe(pid) if self._needs_exe else None
        group = classify(self._groups, comm, exe, cmdline)
        kept = clip_argv(cmdline, CMDLINE_KEEP)
        if group is None or self._is_unexeced_fork(ppid, kept):
            return None
        uid = self._read_uid(pid)
        why = self._rejection(self._by_name[group], pid, ppid)
        if why is not None:
            return RejectedProcess(pid, start_ticks, group, why, uid, clip(comm, 64))
        model_arg = model_argument(cmdline)
        return TrackedProcess(
            pid=pid, start_ticks=start_ticks, start_time=start_time, ppid=ppid, group=group,
            comm=comm, cmdline=kept, exe=exe,
            model_arg=clip(model_arg, MODEL_ARG_KEEP) if model_arg is not None else None,
            container=self._read_container(pid), uid=uid,
        )

    def _rejection(self, group: GroupSpec, pid: int, ppid: int) -> str | None:
        """Why a process that matched `group`'s patterns is not its member (identity rules);
        None for a member."""
        if not has_identity_rules(group):
            return None
        parent = self._seen.tracked.get(ppid) if group.parent is not None else None
        parent_ok = parent is not None and parent.group == group.parent
        executable = read_executable(self._procfs, pid) if group.executables else None
        return rejection(group, executable, parent_ok,
                         parent.uid if parent_ok and parent is not None else None)

    def _read_uid(self, pid: int) -> int | None:
        try:
            return os.stat(self._procfs.path(pid)).st_uid
        except OSError:
            return None

    def _is_unexeced_fork(self, ppid: int, cmdline: tuple[str, ...]) -> bool:
        """A child that still carries its tracked parent's argv (both as kept) has forked but
        not yet exec'd."""
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


def server_of(processes: Iterable[TrackedProcess]) -> TrackedProcess | None:
    """The Ollama server: the oldest member of the server group (a second one is a restart
    overlapping, or a forked child not yet exec'd)."""
    servers = [p for p in processes if p.group == SERVER]
    return min(servers, key=lambda p: p.start_time) if servers else None
