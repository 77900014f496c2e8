"""The host observer: runs the /proc and filesystem sources and assembles `HostState`.

A full refresh scans processes (listing /proc unless exec and exit events report every
process: then once per `RECONCILE_SECONDS`), stats the configured libraries and links, and
reads the maps of every tracked process. Event sources ask for less: the maps of the tracked
processes only, the links only, or the classification of one new PID. Each call returns a
fresh snapshot.

Reading a large maps is most of a full refresh (the kernel prints it: about 1 µs a line), and
between two refreshes it has nearly always stayed the same. A full refresh therefore skips a
process whose address space has the same size (``vsize`` in its stat, which the scan reads
anyway) as when its maps was last read, and re-checks the libraries it found then instead.
That stands in for "unchanged" except for a load and an unload of the same size between two
refreshes, so such a maps is read at least every `MAPS_REREAD_SECONDS`, and an exec and
every change of the configured library files read it in full. A library opened in a watched
directory reads the maps whose size changed, each process's stat read then
(`refresh_maps(changed_only=True)`): a load maps the file, and the system's shared
libraries are opened by every program the host starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from vgpumon.config.schema import SERVER, Config, GroupSpec
from vgpumon.linux.paths import FileView, process_view
from vgpumon.linux.procfs import ProcessMaps, ProcFS
from vgpumon.model import collectors
from vgpumon.snapshot.expectations import (
    BACKEND_LIBRARY,
    PRELOAD_SETTLE_SECONDS,
    bypasses,
    expectations,
    landings_wanted,
    loaded_at_start_by_preloads,
    preload_failures,
)
from vgpumon.snapshot.health import CollectorHealth
from vgpumon.snapshot.host import HostState, ProcessState
from vgpumon.sources.landing import Landing, LandingResolver
from vgpumon.sources.libraries import (
    LibraryFile,
    LibraryMatcher,
    ProcessLibraries,
    find_library_file,
    library_mappings,
    read_process_libraries,
)
from vgpumon.sources.links import ShimLinkState, check_link
from vgpumon.sources.loader_env import LoaderVariables, read_loader_variables, soname_of
from vgpumon.sources.nvml import GpuMemory, NvmlReader
from vgpumon.sources.processes import ProcessScanner, TrackedProcess, server_of

log = logging.getLogger(__name__)

# Maps of processes that exited are kept this long for crash attribution.
EXITED_MAPS_KEPT = 64
NOT_READ = ProcessLibraries(readable=False, error="not read yet")
# A full refresh reads a maps that looks unchanged (same vsize) at least this often. Reading
# is the kernel printing every line (about 1.5 ms for 1,000 lines): at 30 s, four idle
# runners cost more than every other part of an idle refresh together.
MAPS_REREAD_SECONDS = 120.0
# While an event source reports every exec and exit (`events_complete`), a full refresh lists
# /proc only this often (and at the first refresh after `events_lost`): the reconcile period.
RECONCILE_SECONDS = 30.0


@dataclass(frozen=True)
class _MapsRead:
    """The last full read of a process's maps: when (monotonic), at which vsize, matched by
    which matcher."""

    at: float
    vsize: int
    matcher: LibraryMatcher


class HostObserver:
    def __init__(self, config: Config, health: CollectorHealth | None = None):
        self.config = config
        self.procfs = ProcFS(config.procfs)
        self.health = health or CollectorHealth()
        self.host_view = FileView(config.rootfs, "host")
        self._scanner = ProcessScanner(self.procfs, config.groups)
        self._groups = {group.name: group for group in config.groups}
        self._specs = {spec.name: spec for spec in config.libraries}
        # Shims that stand for a library, and those libraries: whose SONAMEs decide bypass.
        self._soname_wanted = frozenset(
            name for spec in config.libraries if spec.name in config.shims and spec.stands_for
            for name in (spec.name, spec.stands_for))
        self._processes: tuple[TrackedProcess, ...] = ()
        self._libraries: dict[tuple[int, int], ProcessLibraries] = {}
        self._maps: dict[tuple[int, int], ProcessMaps] = {}
        self._exited_maps: dict[tuple[int, int], ProcessMaps] = {}
        self._maps_read: dict[tuple[int, int], _MapsRead] = {}
        self._library_files: tuple[LibraryFile, ...] = ()
        self._matcher = LibraryMatcher(config.libraries, {})
        self._links: tuple[ShimLinkState, ...] = ()
        self._nvml = NvmlReader.open() if config.nvml != "off" else None
        if self._nvml is None and config.nvml == "on":
            log.warning("nvml: on, but NVML is not available (see the reason above)")
        self._gpu_memory: GpuMemory | None = None
        self._loader: dict[tuple[int, int], LoaderVariables] = {}
        self._loaded_early: dict[tuple[int, int], frozenset[str]] = {}
        self._sonames: dict[tuple[tuple[int, int], str], str | None] = {}
        self._resolver = LandingResolver(self.procfs, (link.path for link in config.links))
        # Where a name landed in a process, resolved once when first needed (close to when
        # the process loaded it: a link changed later does not change what it loaded). A
        # resolution that told nothing is not kept: the next judgement asks again.
        self._landings: dict[tuple[tuple[int, int], str, str | None, str], Landing] = {}
        self._ollama_version: str | None = None
        self._version_of: tuple[int, int] | None = None  # the server process that told it
        self._evidence_from: int | None = None  # the server whose preloads are judged
        # The last judgement of each process, and the maps state it was made from.
        self._judged: dict[tuple[int, int],
                           tuple[ProcessLibraries, bool, ProcessState, frozenset[str]]] = {}
        # Set by the exit watch while the proc connector reports every exec and exit: then a
        # full refresh need not list /proc (`_listing_due`).
        self.events_complete = False
        self._listed_at: float | None = None  # monotonic time of the last /proc listing
        self.listings = 0  # /proc listings so far

    # -- refreshes ------------------------------------------------------------------------------

    def refresh(self, now: float) -> HostState:
        """Everything: processes, library files, maps, links. /proc is listed only when
        `_listing_due`; otherwise the known processes (tracked and young) are re-read."""
        listing = self._listing_due()
        scanned = self.health.run(collectors.PROCESSES, now,
                                  lambda: self._scanner.scan(now, listing=listing))
        if scanned is not None:
            self._set_processes(scanned)
            if listing:
                self._listed_at = time.monotonic()
                self.listings += 1
        self._refresh_library_files(now)
        self._refresh_maps(now, None, skip_unchanged=True)
        self._refresh_links(now)
        if self._nvml is not None:
            self._gpu_memory = self.health.run(collectors.NVML, now, self._nvml.read)
        return self.snapshot(now)

    def events_lost(self) -> None:
        """An event source lost events: the next full refresh lists /proc."""
        self._listed_at = None

    def _listing_due(self) -> bool:
        """List /proc at a full refresh unless every exec and exit is reported by events
        and the last listing is younger than the reconcile period."""
        return (not self.events_complete or self._listed_at is None
                or time.monotonic() - self._listed_at >= RECONCILE_SECONDS)

    def refresh_maps(self, now: float, pids: frozenset[int] | None = None, *,
                     changed_only: bool = False) -> HostState:
        """Re-read the maps of tracked processes (all, or those in `pids`); `changed_only`:
        only of those whose address space changed size since their maps was read (its stat
        read now), re-checking the others' libraries, as a full refresh does."""
        self._refresh_maps(now, pids, skip_unchanged=changed_only, fresh_vsize=changed_only)
        return self.snapshot(now)

    def refresh_links(self, now: float) -> HostState:
        """Re-check the links and the library files they point at."""
        self._refresh_library_files(now)
        self._refresh_links(now)
        return self.snapshot(now)

    def classify(self, pid: int, now: float) -> HostState | None:
        """A PID exec'd: classify it now and read its maps; None when nothing changed."""
        was_tracked = self._scanner.is_tracked(pid)
        if self._scanner.rescan_pid(pid, now) is None and not was_tracked:
            return None
        self._set_processes(self._scanner.tracked())
        self._refresh_maps(now, frozenset({pid}))
        return self.snapshot(now)

    def drop(self, pid: int, now: float) -> tuple[TrackedProcess | None, HostState | None]:
        """A PID exited: forget it; returns what it was and the new snapshot when tracked."""
        if not self._scanner.is_tracked(pid):
            self._scanner.forget(pid)
            return None, None
        gone = self._scanner.forget(pid)
        self._set_processes(self._scanner.tracked())
        return gone, self.snapshot(now)

    def set_ollama_version(self, version: str | None) -> bool:
        """The server's Ollama version, which some expectations depend on; True when it
        changed (every process is judged again at the next snapshot). An unknown version
        (an API poll that failed, with no log followed) keeps the one the same server
        process gave: a version does not change without a restart."""
        server = self.server()
        server_key = server.key if server is not None else None
        if version is None and server_key is not None and server_key == self._version_of:
            return False
        self._version_of = server_key if version is not None else None
        if version == self._ollama_version:
            return False
        self._ollama_version = version
        self._judged.clear()
        return True

    def close(self) -> None:
        """Release what the sources hold (NVML)."""
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None

    # -- queries -------------------------------------------------------------------------------

    def snapshot(self, now: float) -> HostState:
        server = self.server()
        start_loaded: frozenset[str] = frozenset()
        self._evidence_from = server.pid if server is not None else None
        if server is not None:
            judged = self._judge(server, now, frozenset())
            start_loaded = loaded_at_start_by_preloads(self.config, judged.libraries,
                                                       judged.expected, self._ollama_version)
        return HostState(
            taken_at=now,
            processes=tuple(self._judge(p, now, start_loaded) for p in self._processes),
            links=self._links,
            library_files=self._library_files,
            collectors=self.health.statuses(),
            gpu_memory=self._gpu_memory,
            rejected=self._scanner.rejected(),
        )

    def _judge(self, process: TrackedProcess, now: float,
               start_loaded: frozenset[str]) -> ProcessState:
        """The process with what it is expected to map and whether it bypasses a shim;
        judged again only when its maps were read again, it became old enough for its
        preloads to be judged, or the server shows other libraries its preloads load at
        start (`start_loaded`)."""
        libraries = self._libraries.get(process.key, NOT_READ)
        settled = now - process.start_time >= PRELOAD_SETTLE_SECONDS
        if process.group == SERVER or process.ppid != self._evidence_from:
            # A server maps no backend: never judged shadowed. What one server's preloads do
            # says nothing of another Ollama's (a container's) children.
            start_loaded = frozenset()
        last = self._judged.get(process.key)
        if (last is not None and last[0] is libraries and last[1] == settled
                and last[3] == start_loaded):
            return last[2]
        state = ProcessState(process, libraries)
        group = self._groups.get(process.group)
        if group is not None and libraries.readable:
            loader = self._loader.get(process.key)
            sonames = self._sonames_of(process, libraries)
            landings = self._landings_of(process, group, loader, libraries, sonames, now)
            expected = expectations(group, self.config, loader, libraries, landings,
                                    self._ollama_version)
            state = ProcessState(
                process, libraries, expected,
                preload_failures(expected, libraries) if settled else (),
                bypasses(self.config, expected, libraries, sonames,
                         self._loaded_early.get(process.key, frozenset()) | start_loaded,
                         landings))
        self._judged[process.key] = (libraries, settled, state, start_loaded)
        return state

    def _landings_of(self, process: TrackedProcess, group: GroupSpec,
                     loader: LoaderVariables | None, libraries: ProcessLibraries,
                     sonames: dict[str, str | None], now: float) -> dict[str, Landing]:
        """Where the names the shims' real libraries answer to land in this process, as its
        CUDA backend (else its executable) asks for them; only those the rules need."""
        found: dict[str, Landing] = {}
        backend = libraries.paths(BACKEND_LIBRARY)
        requester = backend[0] if backend else None
        for shim in landings_wanted(group, self.config, loader, libraries):
            real = self._specs[shim].stands_for
            name = sonames.get(real) if real is not None else None
            if loader is None or not name:
                continue  # the real library's SONAME is what is asked for: unknown
            key = (process.key, shim, requester, name)
            landing = self._landings.get(key)
            if landing is None:  # not asked yet, or not told last time: ask again
                landing = self._resolver.landing(process.pid, loader, requester, name, now)
                if landing is not None:
                    self._landings[key] = landing
            if landing is not None:
                found[shim] = landing
        return found

    def _note_loaded_early(self, key: tuple[int, int], libraries: ProcessLibraries) -> None:
        """Real libraries (what a shim stands for) seen mapped while the CUDA backend is not:
        loaded at start, by a preload. Kept for the process's life."""
        if not libraries.readable or libraries.mapped(BACKEND_LIBRARY):
            return
        early = {spec.stands_for for spec in self._specs.values()
                 if spec.stands_for is not None and libraries.mapped(spec.stands_for)}
        if early:
            self._loaded_early[key] = self._loaded_early.get(key, frozenset()) | early

    def _sonames_of(self, process: TrackedProcess,
                    libraries: ProcessLibraries) -> dict[str, str | None]:
        """SONAMEs of the files mapped for shims that stand for a library, and for those."""
        found: dict[str, str | None] = {}
        for mapping in libraries.mappings:
            if mapping.library in self._soname_wanted and mapping.library not in found:
                key = (process.key, mapping.path)
                if key not in self._sonames:
                    self._sonames[key] = soname_of(self.procfs, process.pid, mapping.path)
                found[mapping.library] = self._sonames[key]
        return found

    def last_maps(self, key: tuple[int, int]) -> ProcessMaps:
        """The maps last read for a process, also shortly after it exited (crash attribution)."""
        return self._maps.get(key) or self._exited_maps.get(key) or ProcessMaps()

    def tracked(self) -> tuple[TrackedProcess, ...]:
        return self._processes

    def is_tracked(self, pid: int) -> bool:
        return self._scanner.is_tracked(pid)

    @property
    def tracked_pids(self) -> Mapping[int, TrackedProcess]:
        """The tracked processes by PID: a live view, valid until the next reload."""
        return self._scanner.tracked_pids

    def forget_untracked(self, pid: int) -> None:
        """A PID that is not tracked exited: forget whatever was remembered about it."""
        self._scanner.forget(pid)

    @property
    def library_files(self) -> tuple[LibraryFile, ...]:
        return self._library_files

    def mapped_library_paths(self) -> frozenset[str]:
        """The files (as reachable from here) of configured libraries that processes map."""
        paths = set()
        for process in self._processes:
            libraries = self._libraries.get(process.key)
            if libraries is None:
                continue
            root = self.procfs.path(process.pid, "root")
            for mapping in libraries.mappings:
                paths.add(root + mapping.path)
        return frozenset(paths)

    def server(self) -> TrackedProcess | None:
        return server_of(self._processes)

    def view(self, name: str) -> FileView | None:
        """The filesystem view a configured path lives in (``host`` or ``server``)."""
        if name == "host":
            return self.host_view
        server = self.server()
        return process_view(self.procfs.root, server.pid) if server else None

    # -- internals -----------------------------------------------------------------------------

    def _set_processes(self, processes: tuple[TrackedProcess, ...]) -> None:
        self._processes = processes
        live = {p.key for p in processes}
        for key in list(self._libraries):
            if key not in live:
                del self._libraries[key]
        for key in list(self._maps_read):
            if key not in live:
                del self._maps_read[key]
        for table in (self._loader, self._judged, self._loaded_early):
            for key in [key for key in table if key not in live]:
                del table[key]
        for soname_key in [k for k in self._sonames if k[0] not in live]:
            del self._sonames[soname_key]
        for landing_key in [k for k in self._landings if k[0] not in live]:
            del self._landings[landing_key]
        for key in list(self._maps):
            if key not in live:
                self._exited_maps[key] = self._maps.pop(key)
        while len(self._exited_maps) > EXITED_MAPS_KEPT:
            del self._exited_maps[next(iter(self._exited_maps))]

    def _refresh_library_files(self, now: float) -> None:
        def find() -> tuple[LibraryFile, ...]:
            found = []
            for spec in self.config.libraries:
                if spec.path is None:
                    continue
                view = self.view(spec.view)
                if view is None:
                    found.append(LibraryFile(spec.name, spec.path, spec.path, None, None,
                                             f"no {spec.view} view"))
                else:
                    found.append(find_library_file(view, spec))
            return tuple(found)

        files = self.health.run(collectors.LIBRARIES, now, find)
        if files is not None:
            if files != self._library_files:  # else the same matcher: maps may be skipped
                self._resolver.invalidate()
                self._matcher = LibraryMatcher(self.config.libraries,
                                               {f.library: f for f in files})
            self._library_files = files

    def _refresh_maps(self, now: float, pids: frozenset[int] | None, *,
                      skip_unchanged: bool = False, fresh_vsize: bool = False) -> None:
        def read() -> None:
            for process in self._processes:
                if pids is not None and process.pid not in pids:
                    continue
                if skip_unchanged and self._maps_unchanged(process, fresh_vsize):
                    self._libraries[process.key] = library_mappings(
                        self.procfs, process.pid, self._maps[process.key].selected,
                        self._matcher)  # still re-checks whether the files were replaced
                    continue
                self._read_maps(process)

        self.health.run(collectors.MAPS, now, read)

    def _read_maps(self, process: TrackedProcess) -> None:
        if process.key not in self._loader:  # fixed at exec: read once
            self._loader[process.key] = read_loader_variables(self.procfs, process.pid)
        before = self._vsize(process.pid)
        libraries, maps = read_process_libraries(self.procfs, process.pid, self._matcher)
        if libraries.readable and not maps:
            # Only a zombie maps nothing at all; keep the last state until it is reaped.
            return
        self._libraries[process.key] = libraries
        self._note_loaded_early(process.key, libraries)
        self._maps_read.pop(process.key, None)
        if maps:
            self._maps[process.key] = maps
            after = self._vsize(process.pid)
            if before is not None and before == after:  # no change while it was read
                self._maps_read[process.key] = _MapsRead(time.monotonic(), after,
                                                         self._matcher)

    def _maps_unchanged(self, process: TrackedProcess, fresh_vsize: bool = False) -> bool:
        """Whether `process`'s address space has the size it had when its maps was read (as
        of the last scan, or `fresh_vsize`: now)."""
        last = self._maps_read.get(process.key)
        if (last is None or last.matcher is not self._matcher or process.key not in self._maps
                or time.monotonic() - last.at >= MAPS_REREAD_SECONDS):
            return False
        vsize = self._vsize(process.pid) if fresh_vsize else self._scanner.vsize(process.pid)
        return last.vsize == vsize

    def _vsize(self, pid: int) -> int | None:
        try:
            return self.procfs.stat(pid).vsize
        except (OSError, ValueError):
            return None

    def _refresh_links(self, now: float) -> None:
        def check() -> tuple[ShimLinkState, ...]:
            return tuple(check_link(self.view(spec.view), spec) for spec in self.config.links)

        links = self.health.run(collectors.LINKS, now, check)
        if links is not None:
            if links != self._links:
                self._resolver.invalidate()
            self._links = links

