"""Steady-state cost of a real `vgpumon run`: CPU (percent of one core) and memory.

The daemon is left alone except for a scrape every `scrape_every` seconds (as Prometheus
would); the CPU is that of all its threads over the window (`cpu.ProcessCpu`). Everything
else on the machine that forks or execs reaches vgpumon through the proc connector, so the
host's fork rate over the window is recorded next to the figure, and a baseline daemon (another
version, ``--baseline``) can be measured over the same window, seeing the same host.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.bench.client import Scraper
from tests.bench.cpu import ProcessCpu
from tests.bench.measure import host_forks, memory_bytes


@dataclass(frozen=True)
class SteadyState:
    seconds: float
    cpu_percent: float
    rss_bytes: int
    peak_rss_bytes: int
    host_forks_per_second: float
    scrapes: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def measure_steady(targets: Sequence[tuple[str, int]], seconds: float,
                   scrape_every: float = 15.0) -> list[SteadyState]:
    """Each target is a daemon (address, PID); all are measured over the same window, so a
    baseline daemon next to the measured one sees the same host."""
    scrapers = [Scraper(address) for address, _pid in targets]
    meters = [ProcessCpu(pid) for _address, pid in targets]
    scrapes = 0
    try:
        forks_before = host_forks()
        cpu_before = [meter.seconds() for meter in meters]
        started = time.monotonic()
        next_scrape = started
        while (now := time.monotonic()) < started + seconds:
            if now >= next_scrape:
                for scraper in scrapers:
                    scraper.get()
                scrapes += 1
                next_scrape += scrape_every
            time.sleep(min(0.5, max(0.0, min(next_scrape, started + seconds) - now)))
        elapsed = time.monotonic() - started
        cpu = [meter.seconds() - before for meter, before in zip(meters, cpu_before,
                                                                  strict=True)]
        forks = host_forks() - forks_before
    finally:
        for scraper in scrapers:
            scraper.close()
        for meter in meters:
            meter.close()
    found = []
    for (_address, pid), used in zip(targets, cpu, strict=True):
        memory = memory_bytes(pid)
        found.append(SteadyState(elapsed, 100.0 * used / elapsed, memory["VmRSS"],
                                 memory["VmHWM"], forks / elapsed, scrapes))
    return found


@dataclass(frozen=True)
class Churn:
    """What the host's other processes cost the daemon: every exec and exit reaches it."""

    processes: int
    seconds: float
    cpu_per_process: float  # seconds, the steady rate subtracted

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def measure_churn(pids: Sequence[int], count: int,
                  steady_cpu_percents: Sequence[float]) -> list[Churn]:
    """Run `count` short processes (fork, exec /bin/true, exit) one after the other and
    divide each daemon's extra CPU by the processes the host started meanwhile."""
    meters = [ProcessCpu(pid) for pid in pids]
    try:
        forks_before = host_forks()
        cpu_before = [meter.seconds() for meter in meters]
        started = time.monotonic()
        subprocess.run(["sh", "-c", f"i=0; while [ $i -lt {count} ]; do /bin/true; "
                                    "i=$((i+1)); done"], check=True)
        time.sleep(0.5)  # the last events
        elapsed = time.monotonic() - started
        forks = host_forks() - forks_before
        used = [meter.seconds() - before for meter, before in zip(meters, cpu_before,
                                                                   strict=True)]
    finally:
        for meter in meters:
            meter.close()
    found = []
    for cpu, percent in zip(used, steady_cpu_percents, strict=True):
        extra = cpu - percent / 100.0 * elapsed
        found.append(Churn(forks, elapsed, max(0.0, extra) / max(1, forks)))
    return found
