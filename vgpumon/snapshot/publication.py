"""What the loop hands to readers (HTTP, `once`): one immutable object, swapped by reference.

Scrapes run in the HTTP server's threads. They read `Publisher.current` once and use only that
object, so they never see a half-updated state and never touch ``/proc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vgpumon.config.schema import Config
from vgpumon.model.events import Event
from vgpumon.snapshot.counters import Counters
from vgpumon.snapshot.host import HostState


@dataclass(frozen=True)
class RuntimeInfo:
    """Facts about vgpumon itself."""

    started_at: float
    exit_mechanism: str = "poll"
    overflows: Mapping[str, int] = field(default_factory=dict)
    handler_errors: Mapping[str, int] = field(default_factory=dict)  # by source
    event_log_dropped: int = 0
    config_reload_success: bool = True
    config_reload_timestamp: float = 0.0
    heartbeat: float = 0.0


@dataclass(frozen=True)
class Published:
    config: Config
    state: HostState
    counters: Counters
    runtime: RuntimeInfo
    recent_events: tuple[Event, ...] = ()


class Publisher:
    """Holds the current `Published`; assignment of a reference is atomic in CPython."""

    def __init__(self, initial: Published):
        self._current = initial

    @property
    def current(self) -> Published:
        return self._current

    def publish(self, published: Published) -> None:
        self._current = published
