"""Steady-state cost of a real `vgpumon run`: CPU (percent of one core) and memory.

The daemon is left alone except for a scrape every `scrape_every` seconds (as Prometheus
would); the CPU is utime+stime from /proc/PID/stat over the window. Everything else on the
machine that forks or execs reaches vgpumon through the proc connector, so the host's fork
rate over the window is recorded next to the figure.
"""

from __future__ import annotations

import subprocess
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


@dataclass(frozen=True)
class Churn:
    """What the host's other processes cost the daemon: every exec and exit reaches it."""

    processes: int
    seconds: float
    cpu_per_process: float  # seconds, the steady rate subtracted

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def measure_churn(pid: int, count: int, steady_cpu_percent: float) -> Churn:
    """Run `count` short processes (fork, exec /bin/true, exit) one after the other and
    divide the daemon's extra CPU by the processes the host started meanwhile."""
    forks_before, cpu_before = host_forks(), cpu_seconds(pid)
    started = time.monotonic()
    subprocess.run(["sh", "-c", f"i=0; while [ $i -lt {count} ]; do /bin/true; i=$((i+1)); "
                                "done"], check=True)
    time.sleep(0.5)  # the last events
    elapsed = time.monotonic() - started
    extra = cpu_seconds(pid) - cpu_before - steady_cpu_percent / 100.0 * elapsed
    forks = host_forks() - forks_before
    return Churn(forks, elapsed, max(0.0, extra) / max(1, forks))
