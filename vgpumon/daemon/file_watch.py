"""inotify as an event source: a changed shim link is re-checked at once, a library opened in
a watched directory has the members' maps re-read, and a lost queue (``IN_Q_OVERFLOW``) ends
in a full refresh, counted.

What is watched: the directories of every link, link target and path library, in their view
(a server-view directory is watched as /proc/PID/root/<dir> of the current server), the
directories of libraries the members have mapped, `watch_dirs:`, and the NVIDIA device files
on hosts that have them; in the system's library directories and /dev, loads only of the
configured files and the devices, each watched by itself. The plan is armed again after every
full refresh and whenever the server changes. A load is followed by a pause of
`MAPS_REFRESH_MIN_GAP` before inotify is read again.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Sequence

from vgpumon.config.schema import Config
from vgpumon.daemon.exit_watch import ExitWatch
from vgpumon.daemon.source import Loop, SourceFailure
from vgpumon.model import collectors
from vgpumon.model.events import Event
from vgpumon.sources.fswatch import FsWatcher, plan_watches, system_library_dir

# A runner that loads a library produces a burst of IN_OPEN events; re-read maps at most this
# often (the first event is handled at once, the rest of the burst once more at the end).
MAPS_REFRESH_MIN_GAP = 0.05
FULL_REFRESH_MIN_GAP = 0.5
# Opening these device files is what creating a CUDA context looks like to inotify. Watched
# only on hosts with NVIDIA devices, each device by itself: /dev is busy (every /dev/null
# open would be an event), and so are the system's library directories.
GPU_DEVICE_DIR = "/dev"
GPU_DEVICE_PATTERN = "nvidia*"
GPU_DEVICE_PRESENT = "/dev/nvidiactl"


def _busy(directory: str) -> bool:
    """Directories where loads are watched file by file (see `fswatch`)."""
    return directory == GPU_DEVICE_DIR or system_library_dir(directory)


class FileWatch:
    collector = collectors.INOTIFY

    def __init__(self, exits: ExitWatch):
        self._exits = exits
        self._loop: Loop | None = None
        self._fs: FsWatcher | None = None
        self._problem: str | None = None
        self._server_pid: int | None = None
        self._last_maps_refresh = 0.0
        self._maps_refresh_pending = False
        self._full_pending = False  # the pending re-read reads every maps (a GPU device)
        self._armed: tuple[object, ...] | None = None  # what the plan was made from

    def start(self, loop: Loop) -> None:
        self._loop = loop
        try:
            self._fs = FsWatcher()
        except OSError as err:
            self._problem = err.strerror or str(err)
            raise SourceFailure(self._problem) from None
        loop.watch(self._fs.fileno(), self.collector, self._on_readable)
        self._arm()

    def after_refresh(self, now: float) -> None:
        if self._fs is None:
            raise SourceFailure(self._problem or "inotify is not open")
        self._arm()

    def on_events(self, events: Sequence[Event]) -> None:
        """Re-arm the watches when the server changed (its root is a watched view)."""
        if self._fs is None or self._loop is None:
            return
        server = self._loop.observer.server()
        if (server.pid if server else None) != self._server_pid:
            self._arm()

    def reconfigure(self, config: Config) -> None:
        pass  # the loop's refresh after a reload re-arms with the new links and libraries

    def close(self) -> None:
        if self._fs is not None and self._loop is not None:
            self._loop.unwatch(self._fs.fileno())
            self._fs.close()
            self._fs = None

    def _arm(self) -> None:
        assert self._fs is not None and self._loop is not None
        config, observer = self._loop.config, self._loop.observer
        server = observer.server()
        devices = (frozenset(glob.glob(os.path.join(GPU_DEVICE_DIR, GPU_DEVICE_PATTERN)))
                   if os.path.exists(GPU_DEVICE_PRESENT) else None)
        mapped = observer.mapped_library_paths()
        inputs = (config, observer.library_files, mapped, server.pid if server else None,
                  devices)
        if (self._armed is not None and all(a is b or a == b for a, b in zip(
                inputs, self._armed, strict=True)) and not self._fs.missing):
            return  # the same plan as after the last refresh (the common case)
        self._armed = inputs
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
        library_dirs |= {path.rsplit("/", 1)[0] or "/" for path in mapped}
        patterns = [spec.glob for spec in config.libraries if spec.glob]
        patterns += [os.path.basename(p) for p in related]
        files = set(mapped)
        if devices is not None:
            library_dirs.add(GPU_DEVICE_DIR)
            patterns.append(GPU_DEVICE_PATTERN)
            files |= devices
        self._fs.set_plan(plan_watches(links, related, library_dirs, patterns, files,
                                       busy=_busy, device_patterns=(GPU_DEVICE_PATTERN,)))
        self._server_pid = server.pid if server else None

    def _on_readable(self, now: float) -> None:
        assert self._fs is not None and self._loop is not None
        try:
            change = self._fs.read()
        except OSError as err:
            raise SourceFailure(err.strerror or str(err)) from None
        if change.overflow:
            self._loop.events_lost(self.collector)
            self._loop.refresh_now()
            return
        if change.rearm:
            self._fs.arm()
        if change.links:
            self._loop.apply(self._loop.observer.refresh_links(now))
        if change.libraries:
            self._refresh_maps_soon(now, full=change.devices)
            self._rest()

    def _rest(self) -> None:
        """After loads, read inotify again only when the burst's gap has passed (what came
        meanwhile is read then): a host that preloads a shim into every program opens it at
        every exec, and must not wake the loop at each."""
        assert self._fs is not None and self._loop is not None
        loop, fs = self._loop, self._fs
        loop.unwatch(fs.fileno())

        def wake() -> None:
            if self._fs is fs:  # not closed meanwhile
                loop.watch(fs.fileno(), self.collector, self._on_readable)
                self._on_readable(time.time())

        loop.call_later(MAPS_REFRESH_MIN_GAP, self.collector, wake)

    def _refresh_maps_soon(self, now: float, *, full: bool = False) -> None:
        """Re-read maps now (unless one was read within the burst's gap), and once more when
        the burst has had time: ``IN_OPEN`` comes before the loader maps the file. Without
        exec events the refresh must also look for new processes: a full refresh, which is
        throttled harder. `full`: a GPU device was opened, whose mappings the driver may place
        inside address space it reserved before (the size stays): every maps is read."""
        assert self._loop is not None
        loop = self._loop
        self._full_pending = self._full_pending or full
        min_gap = MAPS_REFRESH_MIN_GAP if self._exits.sees_execs else FULL_REFRESH_MIN_GAP
        gap = time.monotonic() - self._last_maps_refresh
        if gap >= min_gap:
            self._refresh_maps_now(now, full=full)
        if not self._maps_refresh_pending:
            self._maps_refresh_pending = True

            def later() -> None:
                self._maps_refresh_pending = False
                self._refresh_maps_now(time.time(), full=self._full_pending)
                self._full_pending = False

            loop.call_later(min_gap if gap >= min_gap else min_gap - gap, self.collector,
                            later)

    def _refresh_maps_now(self, now: float, *, full: bool) -> None:
        assert self._loop is not None
        loop = self._loop
        self._last_maps_refresh = time.monotonic()
        if not self._exits.sees_execs:
            # No exec events: the process loading the library may be new; look for it.
            loop.refresh_now()
        else:
            # A load maps the library: the address space grows. Maps whose size stayed are
            # not read again (a busy host opens these files at every exec).
            loop.apply(loop.observer.refresh_maps(now, changed_only=not full))
