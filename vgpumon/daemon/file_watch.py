"""inotify as an event source: a changed shim link is re-checked at once, a library opened in
a watched directory has the members' maps re-read, and a lost queue (``IN_Q_OVERFLOW``) ends
in a full refresh, counted.

What is watched: the directories of every link, link target and path library, in their view
(a server-view directory is watched as /proc/PID/root/<dir> of the current server), the
directories of libraries the members have mapped, `watch_dirs:`, and the NVIDIA device files
on hosts that have them. The plan is armed again after every full refresh and whenever the
server changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from vgpumon.config.schema import Config
from vgpumon.daemon.exit_watch import ExitWatch
from vgpumon.daemon.source import Loop, SourceFailure
from vgpumon.model import collectors
from vgpumon.model.events import Event
from vgpumon.sources.fswatch import FsWatcher, plan_watches

# A runner that loads a library produces a burst of IN_OPEN events; re-read maps at most this
# often (the first event is handled at once, the rest of the burst once more at the end).
MAPS_REFRESH_MIN_GAP = 0.05
FULL_REFRESH_MIN_GAP = 0.5
# Opening these device files is what creating a CUDA context looks like to inotify. Watched
# only on hosts with NVIDIA devices: /dev is busy (every /dev/null open is an event).
GPU_DEVICE_DIR = "/dev"
GPU_DEVICE_PATTERN = "nvidia*"
GPU_DEVICE_PRESENT = "/dev/nvidiactl"


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
        server = observer.server()
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
            self._refresh_maps_soon(now)

    def _refresh_maps_soon(self, now: float) -> None:
        """Re-read maps now, or, inside a burst, once more when the burst has had time.
        Without exec events the refresh must also look for new processes: a full refresh,
        which is throttled harder."""
        assert self._loop is not None
        loop = self._loop
        min_gap = MAPS_REFRESH_MIN_GAP if self._exits.sees_execs else FULL_REFRESH_MIN_GAP
        gap = time.monotonic() - self._last_maps_refresh
        if gap >= min_gap:
            self._last_maps_refresh = time.monotonic()
            if not self._exits.sees_execs:
                # No exec events: the process loading the library may be new; look for it.
                loop.refresh_now()
            else:
                loop.apply(loop.observer.refresh_maps(now))
            return
        if not self._maps_refresh_pending:
            self._maps_refresh_pending = True

            def later() -> None:
                self._maps_refresh_pending = False
                self._refresh_maps_soon(time.time())

            loop.call_later(min_gap - gap, self.collector, later)
