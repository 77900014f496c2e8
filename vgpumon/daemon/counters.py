"""The tracker: counters and crash-loop windows, fed by events.

It is owned by the daemon's loop thread. The exporter never reads it directly: after each
batch the loop publishes `Counters` (`vgpumon.snapshot.counters`), an immutable copy,
together with the snapshot.
"""

from __future__ import annotations

from bisect import insort
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from vgpumon.config.schema import CrashLoopSpec
from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.model.exits import is_crash
from vgpumon.snapshot.counters import Counters, link_key


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


class Tracker:
    """Turns events into counters and crash-loop state."""

    def __init__(self, crash_loop: CrashLoopSpec):
        self._spec = crash_loop
        self._starts: Counter[str] = Counter()
        self._exits: Counter[tuple[str, str]] = Counter()
        self._amended: Counter[tuple[str, str, str]] = Counter()  # group, from, to
        self._crashes: Counter[str] = Counter()
        self._last_crash: dict[str, float] = {}
        self._crash_times: dict[str, deque[float]] = {}
        self._start_times: dict[str, deque[float]] = {}
        self._looping: dict[str, bool] = {}
        self._link_changes: Counter[str] = Counter()
        self._link_last_change: dict[str, float] = {}
        self._events: Counter[str] = Counter()
        self._log_errors: Counter[str] = Counter()
        # The last `counters()` and what it was made from: the loop publishes after every
        # event and tick, mostly with nothing new to count.
        self._version = 0
        self._published: tuple[tuple[object, ...], Counters] | None = None

    def reconfigure(self, crash_loop: CrashLoopSpec) -> None:
        self._spec = crash_loop
        self._version += 1

    def record(self, events: Iterable[Event]) -> list[Event]:
        """Count `events`; returns them followed by the events they caused (crash loops)."""
        recorded: list[Event] = []
        for event in events:
            recorded.append(event)
            recorded.extend(self._apply(event))
        for event in recorded:
            self._events[event.kind] += 1
        if recorded:
            self._version += 1
        return recorded

    def tick(self, now: float) -> list[Event]:
        """Expire window entries; returns (and counts) `crash_loop_ended` events."""
        ended = []
        for group, times in self._crash_times.items():
            _expire(times, now - self._spec.window)
            if self._looping.get(group) and len(times) < self._spec.crashes:
                self._looping[group] = False
                ended.append(self._loop_event(ev.CRASH_LOOP_ENDED, group, now, len(times)))
        for times in self._start_times.values():
            _expire(times, now - self._spec.window)
        for event in ended:
            self._events[event.kind] += 1
        if ended:
            self._version += 1
        return ended

    def next_change(self) -> float | None:
        """When the oldest crash of a looping group leaves its window (a loop may end then)."""
        ends = [times[0] + self._spec.window for group, times in self._crash_times.items()
                if self._looping.get(group) and times]
        return min(ends, default=None)

    def counters(self, now: float) -> Counters:
        """The numbers now; the same object as last time when none of them changed."""
        window_start = now - self._spec.window
        window_crashes = {g: sum(1 for t in times if t >= window_start)
                          for g, times in self._crash_times.items()}
        window_starts = {g: sum(1 for t in times if t >= window_start)
                         for g, times in self._start_times.items()}
        basis = (self._version, window_crashes, window_starts)
        if self._published is not None and self._published[0] == basis:
            return self._published[1]
        counters = Counters(
            starts=_frozen(self._starts),
            exits=_frozen(self._exits),
            amended=_frozen(self._amended),
            crashes=_frozen(self._crashes),
            last_crash=_frozen(self._last_crash),
            window_crashes=_frozen(window_crashes),
            window_starts=_frozen(window_starts),
            crash_loop=_frozen(self._looping),
            link_changes=_frozen(self._link_changes),
            link_last_change=_frozen(self._link_last_change),
            events=_frozen(self._events),
            log_errors=_frozen(self._log_errors),
        )
        self._published = (basis, counters)
        return counters

    def _apply(self, event: Event) -> list[Event]:
        if event.kind == ev.PROCESS_STARTED:
            group = event.get("group")
            self._starts[group] += 1
            self._start_times.setdefault(group, deque()).append(event.ts)
        elif event.kind == ev.PROCESS_EXITED:
            return self._exited(event)
        elif event.kind == ev.EXIT_REASON_AMENDED:
            return self._amended_exit(event)
        elif event.kind == ev.SHIM_LINK_CHANGED:
            key = link_key(event.get("view", "host"), event.get("path"))
            self._link_changes[key] += 1
            self._link_last_change[key] = event.ts
        elif event.kind in ev.LOG_ERROR_KINDS:
            self._log_errors[event.kind] += 1
        return []

    def _exited(self, event: Event) -> list[Event]:
        """An exit counts under the reason it was published with; a crash counts now."""
        group, reason = event.get("group"), event.get("reason")
        self._exits[(group, reason)] += 1
        if not is_crash(reason):
            return []
        return self._crashed(group, event.ts, event.ts)

    def _amended_exit(self, event: Event) -> list[Event]:
        """An exit's reason changed: counted apart (a counter cannot move an exit from one
        reason to another), and an exit that turned out a crash counts as a crash now, at the
        time it exited (the classifier never amends a crash into something else)."""
        group, old, new = event.get("group"), event.get("old_reason"), event.get("reason")
        self._amended[(group, old, new)] += 1
        if is_crash(old) or not is_crash(new):
            return []
        return self._crashed(group, float(event.get("exit_ts", event.ts)), event.ts)

    def _crashed(self, group: str, crashed_at: float, now: float) -> list[Event]:
        self._crashes[group] += 1
        self._last_crash[group] = max(crashed_at, self._last_crash.get(group, 0.0))
        times = self._crash_times.setdefault(group, deque())
        insort(times, crashed_at)  # an amended crash may be older than the last one counted
        _expire(times, now - self._spec.window)
        if len(times) >= self._spec.crashes and not self._looping.get(group):
            self._looping[group] = True
            return [self._loop_event(ev.CRASH_LOOP_STARTED, group, now, len(times))]
        return []

    def _loop_event(self, kind: str, group: str, ts: float, crashes: int) -> Event:
        return Event(ts, kind, {"group": group, "crashes": crashes,
                                "window_seconds": self._spec.window})


def _expire(times: deque[float], oldest_kept: float) -> None:
    while times and times[0] < oldest_kept:
        times.popleft()
