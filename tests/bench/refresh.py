"""Refresh cost: the CPU of one full `HostObserver.refresh()` in this process.

A full refresh is what the daemon's safety-net timer runs every `interval`: the /proc scan, the
library files, the maps of every tracked process, the links. Each round also measures the I/O
floor right after it, in the same process: listing /proc and reading the maps of the tracked
processes, the part no implementation can skip. The ratio to it cancels much of the noise of a
shared machine.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from typing import Any

import yaml

from tests.bench.measure import Summary, host_pids, summarize


@dataclass(frozen=True)
class RefreshCost:
    cpu: Summary
    wall: Summary
    floor: Summary  # CPU of the I/O floor, measured in the same rounds
    tracked: int
    host_pids: int

    @property
    def over_floor(self) -> float:
        return self.cpu.median / self.floor.median if self.floor.median else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu.as_dict(), "wall": self.wall.as_dict(),
                "floor": self.floor.as_dict(), "over_floor": self.over_floor,
                "tracked": self.tracked, "host_pids": self.host_pids}


def observer_for(config: dict[str, Any]):
    from vgpumon.config import parse_config
    from vgpumon.observer import HostObserver

    return HostObserver(parse_config(yaml.safe_dump(config, sort_keys=False)))


def measure_refresh(config: dict[str, Any], rounds: int, *, expect_tracked: int) -> RefreshCost:
    """Median and p99 CPU of `rounds` full refreshes, after two warm-up refreshes (the first
    classifies every PID on the host, the second settles the young re-checks)."""
    from vgpumon.procfs import read_file

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
    cpu, wall, floor = [], [], []
    gc.collect()
    for _ in range(rounds):
        started, started_wall = time.process_time(), time.perf_counter()
        observer.refresh(time.time())
        cpu.append(time.process_time() - started)
        wall.append(time.perf_counter() - started_wall)
        started = time.process_time()
        os.listdir("/proc")
        for pid in pids:
            read_file(f"/proc/{pid}/maps")
        floor.append(time.process_time() - started)
    return RefreshCost(summarize(cpu), summarize(wall), summarize(floor), tracked,
                       host_pids())
