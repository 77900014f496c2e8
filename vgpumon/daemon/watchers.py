"""The event sources of the daemon: process exits and execs, the kernel log, inotify.

Each source registers its file descriptor with the daemon's loop and turns what it reads into
targeted refreshes (classify one PID, re-read maps, re-check links) and exit evidence. A source
that cannot be opened (missing privilege, other namespace) is marked failed in
``vgpumon_collector_success`` and the daemon carries on with the rest.
"""

from __future__ import annotations

import logging
import os
import select
import time

from vgpumon.daemon.exitclassifier import OOM_KILL, SEGFAULT, Evidence
from vgpumon.daemon.loop import Daemon
from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.sources.fswatch import FsWatcher, plan_watches
from vgpumon.sources.kmsg import KERNEL_FACILITY, KmsgReader, parse_oom_kill, parse_segfault
from vgpumon.sources.pidfds import PidfdWatcher, StatusNotYet, exit_status
from vgpumon.sources.proc_connector import ConnectorError, EventsLost, ProcConnector

log = logging.getLogger(__name__)

# A runner that loads a library produces a burst of IN_OPEN events; re-read maps at most this
# often (the first event is handled at once, the rest of the burst once more at the end).
MAPS_REFRESH_MIN_GAP = 0.05
FULL_REFRESH_MIN_GAP = 0.5
# When to read a new process's maps again after it was first seen (seconds).
NEW_PROCESS_MAPS_READS = (0.05, 0.25, 1.0, 3.0)
# Opening these device files is what creating a CUDA context looks like to inotify. Watched
# only on hosts with NVIDIA devices: /dev is busy (every /dev/null open is an event).
GPU_DEVICE_DIR = "/dev"
GPU_DEVICE_PATTERN = "nvidia*"
GPU_DEVICE_PRESENT = "/dev/nvidiactl"
# How long to keep asking a pidfd for the exit status before settling for "unknown".
PIDFD_STATUS_RETRY = 0.01
PIDFD_STATUS_PATIENCE = 1.0


# The kernel's process start time has clock-tick resolution (10 ms).
START_TIME_SLACK_NS = 20_000_000


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


class EventSources:
    def __init__(self, daemon: Daemon, *, kmsg_path: str = "/dev/kmsg"):
        self.daemon = daemon
        self._kmsg_path = kmsg_path
        self._connector: ProcConnector | None = None
        self._pidfds: PidfdWatcher | None = None
        self._kmsg: KmsgReader | None = None
        self._fs: FsWatcher | None = None
        self._last_maps_refresh = 0.0
        self._maps_refresh_pending = False
        self._overflows: dict[str, int] = {}
        self._server_pid: int | None = None

    # -- set-up --------------------------------------------------------------------------------

    def start(self) -> None:
        now = time.time()
        mechanism = self._open_exit_source(now)
        self._open_kmsg(now)
        self._open_fswatch(now)
        self.daemon.classifier.status_source = None if mechanism == "poll" else mechanism
        self.daemon.classifier.kernel_log = self._kmsg is not None
        self.daemon.set_runtime(exit_mechanism=mechanism)
        self.daemon.after_refresh(self._after_refresh)
        self.daemon.on_events(self._on_events)
        self._after_refresh(now)
        log.info("event sources exits=%s kmsg=%s inotify=%s", mechanism,
                 "yes" if self._kmsg else "no", "yes" if self._fs else "no")

    def close(self) -> None:
        for source in (self._connector, self._kmsg, self._fs):
            if source is not None:
                self.daemon.unwatch(source.fileno())
                source.close()
        if self._pidfds is not None:
            for pid, start in self._pidfds.watched_keys():
                fd = self._pidfds.unwatch(pid, start)
                if fd is not None:
                    self.daemon.unwatch(fd)

    def _open_exit_source(self, now: float) -> str:
        """The proc connector, else pidfds, else nothing (the refresh still sees exits, without
        their status); `exit_watch:` may force one. A forced connector that cannot be opened
        leaves the exits collector failed, with pidfds standing in."""
        health = self.daemon.health
        wanted = self.daemon.config.exit_watch
        if wanted == "poll":
            return "poll"
        problem = None
        if wanted in ("auto", "proc_connector"):
            try:
                self._connector = ProcConnector.open()
            except ConnectorError as err:
                log.warning("proc connector unavailable, using pidfds error=%r", str(err))
                if wanted == "proc_connector":
                    problem = f"proc connector: {err}"
            else:
                self.daemon.watch(self._connector.fileno(), self._on_connector)
                health.record("exits", now, True, 0.0)
                return "proc_connector"
        if hasattr(os, "pidfd_open"):
            self._pidfds = PidfdWatcher()
            health.record("exits", now, problem is None, 0.0, problem)
            return "pidfd"
        health.record("exits", now, False, 0.0, "neither proc connector nor pidfd available")
        return "poll"

    def _open_kmsg(self, now: float) -> None:
        try:
            self._kmsg = KmsgReader(self._kmsg_path)
        except OSError as err:
            hint = " (needs CAP_SYSLOG under kernel.dmesg_restrict=1)" \
                if err.errno in (1, 13) else ""
            self.daemon.health.record("kmsg", now, False, 0.0,
                                      f"{self._kmsg_path}: {err.strerror}{hint}")
            return
        self.daemon.watch(self._kmsg.fileno(), self._on_kmsg)
        self.daemon.health.record("kmsg", now, True, 0.0)

    def _open_fswatch(self, now: float) -> None:
        try:
            self._fs = FsWatcher()
        except OSError as err:
            self.daemon.health.record("inotify", now, False, 0.0, err.strerror or str(err))
            return
        self.daemon.watch(self._fs.fileno(), self._on_fs)

    # -- after every full refresh: re-sync watches --------------------------------------------

    def _after_refresh(self, now: float) -> None:
        if self._fs is not None:
            self.daemon.health.run("inotify", now, self._arm_fswatch)
        if self._pidfds is not None:
            self._sync_pidfds()
        self._still_healthy(now)

    def _exits_healthy(self) -> bool:
        status = self.daemon.health.status("exits")
        return status is None or status.success

    def _still_healthy(self, now: float) -> None:
        """An event source with nothing to report is fine: renew its last success."""
        for name, open_source in (("exits", self._connector or self._pidfds),
                                  ("kmsg", self._kmsg)):
            if open_source is not None:
                self.daemon.health.renew(name, now)

    def _arm_fswatch(self) -> None:
        """Watch the directories of every link, link target and path library, in their view
        (a server-view directory is watched as /proc/PID/root/<dir> of the current server)."""
        assert self._fs is not None
        config, observer = self.daemon.config, self.daemon.observer
        links, related, library_dirs = [], [], set()
        for spec in config.links:
            view = observer.view(spec.view)
            if view is not None:
                links.append(view.outside(spec.path))
                related.append(view.outside(spec.target))
        for found in observer.library_files:
            view = observer.view(config.library(found.library).view)
            if view is not None:
                related += [view.outside(found.path), view.outside(found.resolved)]
                library_dirs.add(os.path.dirname(view.outside(found.resolved)))
        library_dirs |= {observer.host_view.outside(d) for d in config.watch_dirs}
        library_dirs |= observer.mapped_library_dirs()
        patterns = [spec.glob for spec in config.libraries if spec.glob]
        patterns += [os.path.basename(p) for p in related]
        if os.path.exists(GPU_DEVICE_PRESENT):
            library_dirs.add(GPU_DEVICE_DIR)
            patterns.append(GPU_DEVICE_PATTERN)
        self._fs.set_plan(plan_watches(links, related, library_dirs, patterns))
        self._server_pid = observer.server().pid if observer.server() else None

    def _on_events(self, events: list[Event]) -> None:
        """Follow up on new processes; re-arm the watches when the server changed."""
        for event in events:
            if event.kind == ev.PROCESS_STARTED:
                self._follow_new_process(event.get("pid"))
        if self._fs is None:
            return
        server = self.daemon.observer.server()
        if (server.pid if server else None) != self._server_pid:
            self.daemon.health.run("inotify", time.time(), self._arm_fswatch)

    def _follow_new_process(self, pid: int) -> None:
        """Re-read a new process's maps a few times: at exec the loader has not mapped its
        libraries yet, and a runner dlopens its GPU backend and creates its CUDA context
        within seconds, in directories no watch may cover."""
        for delay in NEW_PROCESS_MAPS_READS:
            self.daemon.call_later(delay, lambda: self._reread(pid))

    def _reread(self, pid: int) -> None:
        observer = self.daemon.observer
        if any(p.pid == pid for p in observer.tracked()):
            self.daemon.apply(observer.refresh_maps(time.time(), frozenset({pid})))

    def _sync_pidfds(self) -> None:
        assert self._pidfds is not None
        procfs = self.daemon.observer.procfs
        tracked = {p.key: p for p in self.daemon.observer.tracked()}
        for key in self._pidfds.watched_keys() - set(tracked):
            fd = self._pidfds.fd_of(*key)
            if fd is not None and _readable(fd):
                continue  # it exited: its handler reads the status (a refresh saw it first)
            fd = self._pidfds.unwatch(*key)
            if fd is not None:
                self.daemon.unwatch(fd)
        for key in set(tracked) - self._pidfds.watched_keys():
            pid, start_ticks = key

            def still_same(pid: int = pid, start_ticks: int = start_ticks) -> bool:
                try:
                    return procfs.stat(pid).start_ticks == start_ticks
                except (OSError, ValueError):
                    return False

            fd = self._pidfds.watch(pid, start_ticks, still_same)
            if fd is not None:
                self.daemon.watch(fd, lambda now, fd=fd: self._on_pidfd(fd, now))

    # -- handlers ------------------------------------------------------------------------------

    def _on_connector(self, now: float) -> None:
        assert self._connector is not None
        try:
            events = self._connector.receive()
        except EventsLost:
            self._overflow("proc_connector")
            return
        except OSError as err:
            self.daemon.health.record("exits", now, False, 0.0, err.strerror or str(err))
            return
        if not self._exits_healthy():
            self.daemon.health.record("exits", now, True, 0.0)
        kmsg_read = False
        # A process whose exit is already in this batch is gone: classifying its exec would
        # read an empty cmdline. A busy host's short-lived processes end here, unread.
        exiting = {e.pid: index for index, e in enumerate(events)
                   if e.kind == "exit" and e.is_process}
        observer = self.daemon.observer
        for index, event in enumerate(events):
            if not event.is_process:
                continue  # a thread
            if event.kind == "exec":
                if exiting.get(event.pid, -1) > index and not observer.is_tracked(event.pid):
                    continue
                state = observer.classify(event.pid, now)
                if state is not None:
                    self.daemon.apply(state)
            elif event.kind == "exit":
                if not kmsg_read and self._exit_matters(event.pid):
                    self._on_kmsg(now)  # evidence for this exit may be in the kernel log
                    kmsg_read = True
                self._exited(event.pid, event.status, "proc_connector", now,
                             exited_ns=event.timestamp_ns)

    def _exit_matters(self, pid: int) -> bool:
        """A tracked process, or one whose exit is awaited; the host's other exits are not."""
        return self.daemon.observer.is_tracked(pid) or self.daemon.classifier.is_pending(pid)

    def _on_pidfd(self, fd: int, now: float, waited: float = 0.0) -> None:
        assert self._pidfds is not None
        target = self._pidfds.target(fd)
        if target is None:
            return
        self.daemon.unwatch(fd)  # stays readable from now on
        try:
            status = exit_status(fd)
        except StatusNotYet:
            if waited < PIDFD_STATUS_PATIENCE:
                self.daemon.call_later(PIDFD_STATUS_RETRY, lambda: self._on_pidfd(
                    fd, time.time(), waited + PIDFD_STATUS_RETRY))
                return
            status = None
        except OSError:
            status = None
        self._pidfds.unwatch(*target)
        self._on_kmsg(now)
        self._exited(target[0], status, "pidfd", now, key=target)

    def _exited(self, pid: int, status: int | None, source: str, now: float, *,
                exited_ns: int | None = None, key: tuple[int, int] | None = None) -> None:
        """`exited_ns` (connector) or `key` (pidfd) tell which process of that PID exited."""
        observer, classifier = self.daemon.observer, self.daemon.classifier
        current = next((p for p in observer.tracked() if p.pid == pid), None)
        successor = current is not None and (
            (key is not None and current.key != key)
            or (exited_ns is not None
                and started_after(current.start_ticks, exited_ns + _suspended_ns(),
                                  observer.procfs.clock_ticks)))
        if successor:
            # The exit of an earlier process with this PID; a scan already found its successor.
            if classifier.status_of_pending(pid, status, source):
                self.daemon.record((), now)
            return
        gone, state = observer.drop(pid, now)
        if gone is not None and state is not None:
            classifier.exited(gone, now, status, source, observer.last_maps(gone.key))
            self.daemon.apply(state)
        elif classifier.status_of_pending(pid, status, source):
            # It left the snapshot first (e.g. already a zombie when it was re-classified).
            self.daemon.record((), now)

    def _on_kmsg(self, now: float) -> None:
        if self._kmsg is None:
            return
        try:
            records = self._kmsg.read()
        except OSError as err:
            self.daemon.health.record("kmsg", now, False, 0.0, err.strerror or str(err))
            return
        self.daemon.health.record("kmsg", now, True, 0.0)
        if self._kmsg.lost != self._overflows.get("kmsg", 0):
            # Records overwritten in the kernel's ring before we read them: nothing to rescan,
            # but a crash's evidence may be among them.
            self._overflows["kmsg"] = self._kmsg.lost
            self.daemon.set_runtime(overflows=dict(self._overflows))
        for record in records:
            if record.facility != KERNEL_FACILITY:
                continue
            fault = parse_segfault(record.message)
            if fault is not None:
                self.daemon.classifier.add_evidence(Evidence(
                    SEGFAULT, now, pid=fault.pid, library=fault.library, address=fault.ip,
                    message=record.message))
                continue
            killed = parse_oom_kill(record.message)
            if killed is not None:
                self.daemon.classifier.add_evidence(Evidence(OOM_KILL, now, pid=killed.pid,
                                                             message=record.message))

    def _on_fs(self, now: float) -> None:
        assert self._fs is not None
        try:
            change = self._fs.read()
        except OSError as err:
            self.daemon.health.record("inotify", now, False, 0.0, err.strerror or str(err))
            return
        if change.overflow:
            self._overflow("inotify")
            return
        if change.rearm:
            self._fs.arm()
        if change.links:
            self.daemon.apply(self.daemon.observer.refresh_links(now))
        if change.libraries:
            self._refresh_maps_soon(now)

    def _refresh_maps_soon(self, now: float) -> None:
        """Re-read maps now, or, inside a burst, once more when the burst has had time.
        Without exec events the refresh must also look for new processes: a full refresh,
        which is throttled harder."""
        min_gap = MAPS_REFRESH_MIN_GAP if self._connector is not None else FULL_REFRESH_MIN_GAP
        gap = time.monotonic() - self._last_maps_refresh
        if gap >= min_gap:
            self._last_maps_refresh = time.monotonic()
            if self._connector is None:
                # No exec events: the process loading the library may be new; look for it.
                self.daemon.refresh_now()
            else:
                self.daemon.apply(self.daemon.observer.refresh_maps(now))
            return
        if not self._maps_refresh_pending:
            self._maps_refresh_pending = True

            def later() -> None:
                self._maps_refresh_pending = False
                self._refresh_maps_soon(time.time())

            self.daemon.call_later(min_gap - gap, later)

    def _overflow(self, source: str) -> None:
        self._overflows[source] = self._overflows.get(source, 0) + 1
        self.daemon.set_runtime(overflows=dict(self._overflows))
        log.warning("events lost, full rescan source=%s count=%d", source,
                    self._overflows[source])
        self.daemon.refresh_now()

