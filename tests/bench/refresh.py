"""Refresh cost: the CPU of one full `HostObserver.refresh()` in this process.

A full refresh is what the daemon's safety-net timer runs every `interval`: the /proc scan, the
library files, the maps of every tracked process, the links. A refresh skips a maps whose
process's address space kept its size and re-reads it at least every
`vgpumon.snapshot.observer.MAPS_REREAD_SECONDS` (120 s: every 24th refresh at the default
interval), so two series are measured: as the daemon runs them back to back (maps unchanged,
skipped), and with every maps read in full. Each round also measures the I/O floor right after
it, in the same process: listing /proc and reading the maps of the tracked processes, the part
a full read cannot skip. The ratio to it cancels much of the noise of a shared machine.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from tests.bench.measure import Summary, host_pids, summarize


@dataclass(frozen=True)
class RefreshCost:
    cpu: Summary  # as the daemon refreshes: unchanged maps skipped
    full: Summary  # every maps read
    floor: Summary  # CPU of the I/O floor, measured in the same rounds as `full`
    tracked: int
    host_pids: int

    @property
    def full_over_floor(self) -> float:
        return self.full.median / self.floor.median if self.floor.median else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu.as_dict(), "full_read": self.full.as_dict(),
                "floor": self.floor.as_dict(), "full_over_floor": self.full_over_floor,
                "tracked": self.tracked, "host_pids": self.host_pids}


def observer_for(config: dict[str, Any]):
    from vgpumon.config.loading import parse_config
    from vgpumon.snapshot.observer import HostObserver

    return HostObserver(parse_config(yaml.safe_dump(config, sort_keys=False)))


@contextlib.contextmanager
def every_maps_read() -> Iterator[None]:
    """Make each refresh read every maps (a source without the skip always does)."""
    from vgpumon.snapshot import observer

    saved = getattr(observer, "MAPS_REREAD_SECONDS", None)
    if saved is None:
        yield
        return
    observer.MAPS_REREAD_SECONDS = 0.0
    try:
        yield
    finally:
        observer.MAPS_REREAD_SECONDS = saved


def measure_refresh(config: dict[str, Any], rounds: int, *, expect_tracked: int) -> RefreshCost:
    """Median and p99 CPU of `rounds` full refreshes of each kind, after two warm-up
    refreshes (the first classifies every PID on the host, the second settles the young
    re-checks)."""
    from vgpumon.linux.procfs import read_file

    observer = observer_for(config)
    for _ in range(2):
        state = observer.refresh(time.time())
    tracked = len(state.processes)
    if tracked != expect_tracked:
        raise AssertionError(f"the refresh tracks {tracked} processes, expected "
                             f"{expect_tracked}: {[p.process.cmdline for p in state.processes]}")
    if not all(p.libraries.readable and p.libraries.mappings for p in state.processes):
        raise AssertionError("a tracked process has no readable library mappings")
    pids = [p.process.pid for p in state.processes]
    if hasattr(observer, "events_complete"):
        # As in the daemon while the proc connector reports every exec and exit: /proc is
        # listed once per reconcile period (the first refreshes above listed it), not each time.
        observer.events_complete = True
    gc.collect()
    cpu = [_timed_refresh(observer) for _ in range(rounds)]
    full, floor = [], []
    if hasattr(observer, "events_complete"):
        observer.events_complete = False  # the reconcile refresh: listing and every maps
    with every_maps_read():
        for _ in range(rounds):
            full.append(_timed_refresh(observer))
            started = time.process_time()
            os.listdir("/proc")
            for pid in pids:
                read_file(f"/proc/{pid}/maps")
            floor.append(time.process_time() - started)
    return RefreshCost(summarize(cpu), summarize(full), summarize(floor), tracked,
                       host_pids())


def _timed_refresh(observer: Any) -> float:
    started = time.process_time()
    observer.refresh(time.time())
    return time.process_time() - started
