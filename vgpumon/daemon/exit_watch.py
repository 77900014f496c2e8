"""Process execs and exits as an event source: the netlink proc connector, else a pidfd per
tracked process, else nothing (each refresh still sees exits, without their status).

A busy host's events are read in batches (a coalescing window), except that a fork or an exit
of a tracked process, which a second, filtered subscription reports, ends the window: an exec
by a tracked server's child is classified at once (a runner is seen before it can vanish).
An exit that matters goes to the exit classifier with its wait status, after the kernel log
has been read for its evidence. A new member is re-read a few times while its loader maps
its libraries. `exit_watch:` in the
config may force a mechanism; a forced connector that cannot be opened leaves the collector
failed, with pidfds standing in.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Sequence
from functools import partial

from vgpumon.config.schema import Config
from vgpumon.daemon.kernel_log import KernelLog
from vgpumon.daemon.source import Loop, SourceFailure
from vgpumon.model import collectors
from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.sources.pidfds import PidfdWatcher, StatusNotYet, exit_status
from vgpumon.sources.proc_connector import (
    ConnectorError,
    EventsLost,
    ProcConnector,
    ProcEvent,
    TrackedWatch,
)

log = logging.getLogger(__name__)

PROC_CONNECTOR, PIDFD, POLL = "proc_connector", "pidfd", "poll"
# When to read a new process's maps again after it was first seen (seconds).
NEW_PROCESS_MAPS_READS = (0.05, 0.25, 1.0, 3.0)
# How long to keep asking a pidfd for the exit status before settling for "unknown".
PIDFD_STATUS_RETRY = 0.01
PIDFD_STATUS_PATIENCE = 1.0
# The kernel's process start time has clock-tick resolution (10 ms).
START_TIME_SLACK_NS = 20_000_000
# After a read of the connector that found events, its socket is left unread for a window, so
# that on a busy host one loop turn reads a window's worth of datagrams; the first event after
# a quiet spell is read at once. The window starts at `COALESCE_SECONDS` and doubles while
# every read finds events, up to `COALESCE_MAX_SECONDS`; a read that finds none starts over.
# A fork or an exit of a tracked process (the TrackedWatch) ends the window at once, and the
# socket is read at once until that child's exec (or that exit) was read, or `AWAIT_SECONDS`
# passed: a runner is classified before it can vanish, and a tracked exit is not delayed
# (docs/performance.md#process-events).
COALESCE_SECONDS = 0.02
COALESCE_MAX_SECONDS = 0.3
AWAIT_SECONDS = 1.0


def started_after(start_ticks: int, event_ns: int, clock_ticks: int) -> bool:
    """Whether a process that started at `start_ticks` (since boot) started after an event
    stamped `event_ns` (since boot): then the event belongs to an earlier process of that PID."""
    return start_ticks * 1_000_000_000 // clock_ticks > event_ns + START_TIME_SLACK_NS


def _suspended_ns() -> int:
    """Connector events are stamped on the monotonic clock, process starts on the boot-time
    clock; they differ by the time the machine spent suspended."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


class ExitWatch:
    collector = collectors.EXITS

    def __init__(self, kernel_log: KernelLog):
        self._kernel_log = kernel_log
        self._loop: Loop | None = None
        self._connector: ProcConnector | None = None
        self._urgent: TrackedWatch | None = None
        self._watching = False  # the connector's socket is registered with the loop
        self._windows = 0  # coalescing windows started (the timer of an older one is void)
        self._window_seconds = COALESCE_SECONDS  # the next window's length
        self._awaited: dict[int, float] = {}  # PID whose next event is read at once: until
        self._tracked_seen: object = None  # the observer's tracked tuple the watch follows
        self._pidfds: PidfdWatcher | None = None
        self._problem: str | None = None  # the last read failed, and why
        self.mechanism = POLL

    @property
    def sees_execs(self) -> bool:
        """Whether new processes are reported as they exec (else only a scan finds them)."""
        return self._connector is not None

    # -- the Source protocol -------------------------------------------------------------------

    def start(self, loop: Loop) -> None:
        self._loop = loop
        self.mechanism = self._open(loop)
        loop.classifier.status_source = None if self.mechanism == POLL else self.mechanism
        loop.set_exit_mechanism(self.mechanism)
        if self._pidfds is not None:
            self._sync_pidfds()
        if self.mechanism == POLL:
            if loop.config.exit_watch == POLL:
                loop.set_absent(self.collector, True)  # asked for: nothing to report on
            else:
                self._problem = "neither proc connector nor pidfd available"
                raise SourceFailure(self._problem)

    def after_refresh(self, now: float) -> None:
        if self._pidfds is not None:
            self._sync_pidfds()
        self._follow_tracked()  # a server a refresh found cuts windows short from now on
        if self._problem is not None:
            raise SourceFailure(self._problem)

    def on_events(self, events: Sequence[Event]) -> None:
        for event in events:
            if event.kind == ev.PROCESS_STARTED:
                self._follow_new_process(event.get("pid"))

    def reconfigure(self, config: Config) -> None:
        pass  # exit_watch: takes effect at the next start (the loop says so)

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if self._connector is not None:
            loop.unwatch(self._connector.fileno())
            self._connector.close()
            self._connector = None
        if self._urgent is not None:
            loop.unwatch(self._urgent.fileno())
            self._urgent.close()
            self._urgent = None
        if self._pidfds is not None:
            for pid, start in self._pidfds.watched_keys():
                fd = self._pidfds.unwatch(pid, start)
                if fd is not None:
                    loop.unwatch(fd)

    # -- set-up --------------------------------------------------------------------------------

    def _open(self, loop: Loop) -> str:
        wanted = loop.config.exit_watch
        if wanted == POLL:
            return POLL
        if wanted in ("auto", PROC_CONNECTOR):
            try:
                self._connector = ProcConnector.open()
            except ConnectorError as err:
                log.warning("proc connector unavailable, using pidfds error=%r", str(err))
                if wanted == PROC_CONNECTOR:
                    loop.degraded(self.collector, time.time(), f"proc connector: {err}")
            else:
                self._urgent = self._open_tracked_watch()
                if self._urgent is not None:
                    loop.watch(self._urgent.fileno(), self.collector, self._on_tracked_event)
                loop.watch(self._connector.fileno(), self.collector, self._on_connector)
                self._watching = True
                loop.observer.events_complete = True  # a refresh need not list /proc
                return PROC_CONNECTOR
        if hasattr(os, "pidfd_open"):
            self._pidfds = PidfdWatcher()
            return PIDFD
        return POLL

    def _open_tracked_watch(self) -> TrackedWatch | None:
        """The wake-up for forks and exits of tracked processes; without it the connector is
        read whenever it is readable (no coalescing: no runner may wait for a window)."""
        assert self._loop is not None
        try:
            urgent = TrackedWatch.open()
            urgent.set_tracked(p.pid for p in self._loop.observer.tracked())
        except (ConnectorError, OSError) as err:
            log.warning("tracked-process watch unavailable, reading every event at once "
                        "error=%r", str(err))
            return None
        return urgent

    def _sync_pidfds(self) -> None:
        """A pidfd for every tracked process, none for the rest."""
        assert self._pidfds is not None and self._loop is not None
        loop = self._loop
        procfs = loop.observer.procfs
        tracked = {p.key: p for p in loop.observer.tracked()}
        for key in self._pidfds.watched_keys() - set(tracked):
            fd = self._pidfds.fd_of(*key)
            if fd is not None and _readable(fd):
                continue  # it exited: its handler reads the status (a refresh saw it first)
            fd = self._pidfds.unwatch(*key)
            if fd is not None:
                loop.unwatch(fd)
        for key in set(tracked) - self._pidfds.watched_keys():
            pid, start_ticks = key

            def still_same(pid: int = pid, start_ticks: int = start_ticks) -> bool:
                try:
                    return procfs.stat(pid).start_ticks == start_ticks
                except (OSError, ValueError):
                    return False

            fd = self._pidfds.watch(pid, start_ticks, still_same)
            if fd is not None:
                loop.watch(fd, self.collector, partial(self._on_pidfd, fd))

    def _follow_new_process(self, pid: int) -> None:
        """Re-read a new process's maps a few times: at exec the loader has not mapped its
        libraries yet, and a runner dlopens its GPU backend and creates its CUDA context
        within seconds, in directories no watch may cover."""
        assert self._loop is not None
        for delay in NEW_PROCESS_MAPS_READS:
            self._loop.call_later(delay, self.collector, lambda: self._reread(pid))

    def _reread(self, pid: int) -> None:
        assert self._loop is not None
        observer = self._loop.observer
        if any(p.pid == pid for p in observer.tracked()):
            self._loop.apply(observer.refresh_maps(time.time(), frozenset({pid})))

    # -- handlers ------------------------------------------------------------------------------

    def _on_connector(self, now: float) -> None:
        """Read what the connector holds (readable, or a coalescing window ended), handle it,
        and decide when to read again (`_pace`)."""
        assert self._connector is not None and self._loop is not None
        loop = self._loop
        try:
            events = self._connector.receive()
        except EventsLost as lost:
            loop.events_lost(PROC_CONNECTOR)
            loop.observer.events_lost()
            self._window_seconds = COALESCE_SECONDS  # the buffer filled: read it more often
            try:
                self._handle(lost.events, now)
                loop.refresh_now()
            finally:
                self._pace(busy=True)  # what is still queued is read next
            return
        except OSError as err:
            loop.observer.events_lost()
            self._pace(busy=True, retry=True)  # tried again after a window, not every turn
            self._problem = err.strerror or str(err)
            raise SourceFailure(self._problem) from None
        self._problem = None
        try:
            self._handle(events, now)
        finally:
            # Even when handling raised (the loop counts it): a window must never leave the
            # connector unwatched with no timer to read it again.
            self._pace(busy=bool(events))

    def _handle(self, events: list[ProcEvent], now: float) -> None:
        assert self._loop is not None
        loop = self._loop
        observer, classifier = loop.observer, loop.classifier
        tracked = observer.tracked_pids  # live: a classification below may add to it
        awaited = self._awaited
        kmsg_read = False
        # A process whose exit is already in this batch is gone: classifying its exec would
        # read nothing. A busy host's short-lived processes end here, unread, unless their
        # parent (the exit names it) is tracked: a runner is read while it may still be.
        exiting = {e.pid: (index, e.parent_tgid) for index, e in enumerate(events)
                   if e.kind == "exit" and e.pid == e.tgid}
        for index, event in enumerate(events):
            pid = event.pid
            if pid != event.tgid:
                continue  # a thread
            if awaited and event.kind in ("exec", "exit"):
                awaited.pop(pid, None)  # what was awaited (a fork's own event is not)
            if event.kind == "exec":
                later = exiting.get(pid)
                if (later is not None and later[0] > index and pid not in tracked
                        and later[1] not in tracked):
                    continue
                state = observer.classify(pid, now)
                if state is not None:
                    loop.apply(state)
            elif event.kind == "exit":
                if pid not in tracked and not classifier.is_pending(pid):
                    observer.forget_untracked(pid)  # nothing to report: only forget it
                    continue
                if not kmsg_read:
                    self._kernel_log.read_now(now)  # this exit's evidence may be there
                    kmsg_read = True
                self._exited(pid, event.status, PROC_CONNECTOR, now,
                             exited_ns=event.timestamp_ns)
        self._follow_tracked()

    def _pace(self, *, busy: bool, retry: bool = False) -> None:
        """Read the connector again as soon as it is readable, or, after a read that found
        events, at the end of a coalescing window: unless the tracked-process watch is
        missing, an awaited event has not come yet, or the last read stopped at its limit.
        After a failed read (`retry`), always at the end of a window."""
        assert self._connector is not None and self._loop is not None
        loop = self._loop
        fd = self._connector.fileno()
        if not busy:
            self._window_seconds = COALESCE_SECONDS
        if retry or (busy and self._urgent is not None and self._connector.drained
                     and not self._awaiting()):
            if self._watching:
                loop.unwatch(fd)
                self._watching = False
            self._windows += 1
            window = self._windows
            loop.call_later(self._window_seconds, self.collector,
                            lambda: self._window_ended(window))
            self._window_seconds = min(2 * self._window_seconds, COALESCE_MAX_SECONDS)
        elif not self._watching:
            self._windows += 1  # a pending window's timer is void
            loop.watch(fd, self.collector, self._on_connector)
            self._watching = True

    def _window_ended(self, window: int) -> None:
        if window == self._windows and self._connector is not None:
            self._on_connector(time.time())

    def _awaiting(self) -> bool:
        awaited = self._awaited
        if awaited:
            now = time.monotonic()
            for pid in [pid for pid, deadline in awaited.items() if deadline < now]:
                del awaited[pid]
        return bool(awaited)

    def _on_tracked_event(self, now: float) -> None:
        """A tracked process forked or exited: read the child's exec, or the exit, as soon as
        it is on the connector (the events themselves are handled from there, in order)."""
        assert self._urgent is not None
        deadline = time.monotonic() + AWAIT_SECONDS
        for event in self._urgent.receive():
            self._awaited[event.pid] = deadline  # the child's, or the exiting process's
        if self._awaited and not self._watching:
            self._on_connector(now)  # what the window held so far, then read at once

    def _follow_tracked(self) -> None:
        """Let the tracked-process watch pass the events of the processes tracked now."""
        if self._urgent is None or self._loop is None:
            return
        processes = self._loop.observer.tracked()
        if processes is self._tracked_seen:
            return  # the same snapshot of tracked processes as last time
        self._tracked_seen = processes
        tracked = frozenset(p.pid for p in processes)
        if tracked != self._urgent.tracked:
            try:
                self._urgent.set_tracked(tracked)
            except OSError as err:
                log.warning("tracked-process watch failed, reading every event at once "
                            "error=%r", str(err))
                self._loop.unwatch(self._urgent.fileno())
                self._urgent.close()
                self._urgent = None

    def _on_pidfd(self, fd: int, now: float, waited: float = 0.0) -> None:
        assert self._pidfds is not None and self._loop is not None
        target = self._pidfds.target(fd)
        if target is None:
            return
        self._loop.unwatch(fd)  # stays readable from now on
        status: int | None
        try:
            status = exit_status(fd)
        except StatusNotYet:
            if waited < PIDFD_STATUS_PATIENCE:
                self._loop.call_later(PIDFD_STATUS_RETRY, self.collector, lambda: self._on_pidfd(
                    fd, time.time(), waited + PIDFD_STATUS_RETRY))
                return
            status = None
        except OSError:
            status = None
        self._pidfds.unwatch(*target)
        self._kernel_log.read_now(now)
        self._exited(target[0], status, PIDFD, now, key=target)

    def _exited(self, pid: int, status: int | None, source: str, now: float, *,
                exited_ns: int | None = None, key: tuple[int, int] | None = None) -> None:
        """`exited_ns` (connector) or `key` (pidfd) tell which process of that PID exited."""
        assert self._loop is not None
        loop = self._loop
        observer, classifier = loop.observer, loop.classifier
        current = next((p for p in observer.tracked() if p.pid == pid), None)
        successor = current is not None and (
            (key is not None and current.key != key)
            or (exited_ns is not None
                and started_after(current.start_ticks, exited_ns + _suspended_ns(),
                                  observer.procfs.clock_ticks)))
        exited_at = None if exited_ns is None else \
            time.time() - (time.monotonic_ns() - exited_ns) / 1e9
        if successor:
            # The exit of an earlier process with this PID; a scan already found its successor.
            if classifier.status_of_pending(pid, status, source, exited_at=exited_at):
                loop.record((), now)
            return
        gone, state = observer.drop(pid, now)
        if gone is not None and state is not None:
            classifier.exited(gone, now, status, source, observer.last_maps(gone.key))
            loop.apply(state)
        elif classifier.status_of_pending(pid, status, source, exited_at=exited_at):
            # It left the snapshot first (e.g. already a zombie when it was re-classified).
            loop.record((), now)
