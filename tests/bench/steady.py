"""Steady-state cost of a real `vgpumon run`: CPU (percent of one core) and memory.

The daemon is left alone except for a scrape every `scrape_every` seconds (as Prometheus
would); the CPU is utime+stime from /proc/PID/stat over the window. Everything else on the
machine that forks or execs reaches vgpumon through the proc connector, so the host's fork
rate over the window is recorded next to the figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tests.bench.client import Scraper
from tests.bench.measure import cpu_seconds, host_forks, memory_bytes


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


def measure_steady(address: str, pid: int, seconds: float,
                   scrape_every: float = 15.0) -> SteadyState:
    scraper = Scraper(address)
    scrapes = 0
    try:
        forks_before, cpu_before = host_forks(), cpu_seconds(pid)
        started = time.monotonic()
        next_scrape = started
        while (now := time.monotonic()) < started + seconds:
            if now >= next_scrape:
                scraper.get()
                scrapes += 1
                next_scrape += scrape_every
            time.sleep(min(0.5, max(0.0, min(next_scrape, started + seconds) - now)))
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu_before
        forks = host_forks() - forks_before
    finally:
        scraper.close()
    memory = memory_bytes(pid)
    return SteadyState(elapsed, 100.0 * cpu / elapsed, memory["VmRSS"], memory["VmHWM"],
                       forks / elapsed, scrapes)
