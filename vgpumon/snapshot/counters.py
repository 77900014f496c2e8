"""The daemon's counters at one moment: what the loop publishes beside the host snapshot and
the exporter reads. `vgpumon.daemon.counters.Tracker` makes them from events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Counters:
    """The tracker's numbers at one moment."""

    starts: Mapping[str, int] = field(default_factory=dict)
    exits: Mapping[tuple[str, str], int] = field(default_factory=dict)
    amended: Mapping[tuple[str, str, str], int] = field(default_factory=dict)  # group, from, to
    crashes: Mapping[str, int] = field(default_factory=dict)
    last_crash: Mapping[str, float] = field(default_factory=dict)
    window_crashes: Mapping[str, int] = field(default_factory=dict)
    window_starts: Mapping[str, int] = field(default_factory=dict)
    crash_loop: Mapping[str, bool] = field(default_factory=dict)
    link_changes: Mapping[str, int] = field(default_factory=dict)
    link_last_change: Mapping[str, float] = field(default_factory=dict)
    events: Mapping[str, int] = field(default_factory=dict)
    log_errors: Mapping[str, int] = field(default_factory=dict)



def link_key(view: str, path: str) -> str:
    """Links are counted per view and path: the same path may be watched in two views."""
    return f"{view}:{path}"
