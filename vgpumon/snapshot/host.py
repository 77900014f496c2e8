"""The immutable snapshot of the host, and what changed between two snapshots."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.snapshot.expectations import Bypass, Expectation
from vgpumon.snapshot.ollama import OllamaState
from vgpumon.sources.libraries import LibraryFile, ProcessLibraries
from vgpumon.sources.links import ShimLinkState
from vgpumon.sources.nvml import GpuMemory
from vgpumon.sources.processes import RejectedProcess, TrackedProcess


@dataclass(frozen=True)
class ProcessState:
    process: TrackedProcess
    libraries: ProcessLibraries
    expected: tuple[Expectation, ...] = ()  # what it should map, and why
    preload_failed: tuple[str, ...] = ()  # shims it was told to preload and does not map
    bypasses: tuple[Bypass, ...] = ()  # shims it goes around


@dataclass(frozen=True)
class CollectorStatus:
    """How the last refresh of one source went."""

    name: str
    success: bool
    duration: float
    last_success: float | None
    error: str | None = None


@dataclass(frozen=True)
class HostState:
    """Everything vgpumon knows about the host at `taken_at`; never mutated once built."""

    taken_at: float
    processes: tuple[ProcessState, ...] = ()
    links: tuple[ShimLinkState, ...] = ()
    library_files: tuple[LibraryFile, ...] = ()
    collectors: tuple[CollectorStatus, ...] = ()
    ollama: OllamaState = field(default_factory=OllamaState)
    gpu_memory: GpuMemory | None = None  # None: no NVML on this host
    rejected: tuple[RejectedProcess, ...] = ()  # look-alikes: never members

    def in_group(self, group: str) -> tuple[ProcessState, ...]:
        return tuple(p for p in self.processes if p.process.group == group)


@dataclass(frozen=True)
class SnapshotDiff:
    started: tuple[ProcessState, ...]
    vanished: tuple[ProcessState, ...]
    events: tuple[Event, ...]  # library and link changes


def diff(old: HostState, new: HostState) -> SnapshotDiff:
    """What changed from `old` to `new`. Process exits are left to the caller, which may know
    their exit status from another source."""
    old_by_key = {p.process.key: p for p in old.processes}
    new_by_key = {p.process.key: p for p in new.processes}
    # A process that re-exec'd into another group (same PID and start time) starts there.
    started = tuple(p for key, p in new_by_key.items()
                    if key not in old_by_key or old_by_key[key].process.group != p.process.group)
    vanished = tuple(p for key, p in old_by_key.items() if key not in new_by_key)
    changes: list[Event] = []
    for key, now_state in new_by_key.items():
        before = old_by_key.get(key)
        changes.extend(_library_changes(before, now_state, new.taken_at))
    changes.extend(_link_changes(old.links, new.links, new.taken_at))
    seen_before = {r.key for r in old.rejected}
    changes.extend(Event(new.taken_at, ev.PROCESS_REJECTED, {
        "group": r.group, "pid": r.pid, "uid": r.uid, "reason": r.reason, "comm": r.comm})
        for r in new.rejected if r.key not in seen_before)
    return SnapshotDiff(started, vanished, tuple(changes))


def process_started_event(state: ProcessState, ts: float) -> Event:
    process = state.process
    fields: dict[str, object] = {"group": process.group, "pid": process.pid, "ppid": process.ppid}
    if process.model_arg:
        fields["model"] = process.model_arg
    if process.container:
        fields["container"] = process.container
    return Event(ts, ev.PROCESS_STARTED, fields)


def _library_changes(before: ProcessState | None, now: ProcessState, ts: float) -> Iterable[Event]:
    if not now.libraries.readable:
        return
    if before is not None and not before.libraries.readable:
        return  # nothing to compare with: unreadable then, readable now
    old_libs = before.libraries if before is not None else ProcessLibraries(readable=True)
    process = now.process
    old_mapped = {m.library: m for m in old_libs.mappings}
    new_mapped = {m.library: m for m in now.libraries.mappings}

    def event(kind: str, library: str, path: str) -> Event:
        return Event(ts, kind, {"group": process.group, "pid": process.pid,
                                "library": library, "path": path})

    for library, mapping in new_mapped.items():
        if library not in old_mapped:
            yield event(ev.LIBRARY_LOADED, library, mapping.path)
        if now.libraries.stale(library) and not old_libs.stale(library):
            stale_path = next(m.path for m in now.libraries.mappings
                              if m.library == library and m.stale)
            yield event(ev.LIBRARY_STALE, library, stale_path)
    for library, mapping in old_mapped.items():
        if library not in new_mapped:
            yield event(ev.LIBRARY_UNLOADED, library, mapping.path)
    yield from _judgement_changes(before, now, ts)


def _judgement_changes(before: ProcessState | None, now: ProcessState,
                       ts: float) -> Iterable[Event]:
    """A preload that failed and a shim bypassed, each once, when first judged so."""
    process = now.process
    base = {"group": process.group, "pid": process.pid}
    failed_before = set(before.preload_failed) if before is not None else set()
    because = {e.library: e.because for e in now.expected}
    for library in now.preload_failed:
        if library not in failed_before:
            yield Event(ts, ev.PRELOAD_FAILED,
                        {**base, "library": library, "because": because.get(library, "")})
    bypassed_before = set(before.bypasses) if before is not None else set()
    for bypass in now.bypasses:
        if bypass not in bypassed_before:
            yield Event(ts, ev.SHIM_BYPASSED,
                        {**base, "shim": bypass.shim, "real": bypass.real, "why": bypass.why})


def _link_changes(old: tuple[ShimLinkState, ...], new: tuple[ShimLinkState, ...],
                  ts: float) -> Iterable[Event]:
    before = {(link.view, link.path): link for link in old}
    for link in new:
        previous = before.get((link.view, link.path))
        if previous is None or previous.state is None or link.state is None:
            continue  # first sight, or not checkable then or now: not a change
        if (previous.state, previous.target) == (link.state, link.target):
            continue
        yield Event(ts, ev.SHIM_LINK_CHANGED, {
            "path": link.path,
            "old_target": previous.target,
            "new_target": link.target,
            "state": link.state,
            "old_state": previous.state,
            "view": link.view,
        })
