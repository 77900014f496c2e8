"""One measurement window shared by several processes: the same host over the same seconds.

Each target (a vgpumon daemon, a baseline daemon, a process-exporter) is scraped on its own
schedule (every `scrape_every` seconds from the window's start, as Prometheus would: one
keep-alive connection, its headers), its thread count sampled every 0.25 s, and its CPU read
(`cpu.ProcessCpu`: all threads) at both ends. A scrape at the start and none at the end: a
window of 30 s scraped every 15 s holds exactly two, the rate over a long run. An optional
load (a churn driver) starts with the window and is waited for before the CPU is read.
"""

from __future__ import annotations

import contextlib
import http.client
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tests.bench.client import Scraper
from tests.bench.cpu import ProcessCpu
from tests.bench.measure import host_forks

THREAD_SAMPLE_SECONDS = 0.25


@dataclass
class Target:
    """A process measured in windows; `address` is scraped when `scrape_every` is set."""

    name: str
    pid: int
    cpu: ProcessCpu
    address: str | None = None
    scrape_every: float | None = None


@dataclass(frozen=True)
class Usage:
    name: str
    cpu_seconds: float
    seconds: float
    scrapes: int
    scrape_errors: int
    threads: tuple[int, ...]  # samples over the window

    @property
    def percent(self) -> float:
        """Percent of one core over the window."""
        return 100.0 * self.cpu_seconds / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {"cpu_seconds": self.cpu_seconds, "percent": self.percent,
                "scrapes": self.scrapes, "scrape_errors": self.scrape_errors,
                "threads_min": min(self.threads, default=0),
                "threads_max": max(self.threads, default=0)}


@dataclass(frozen=True)
class Window:
    seconds: float
    host_forks: int
    usage: dict[str, Usage]
    load: Any = None  # what the load's finish returned (an object with as_dict())

    @property
    def forks_per_second(self) -> float:
        return self.host_forks / self.seconds

    def percent(self, name: str) -> float:
        return self.usage[name].percent

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "host_forks_per_second": self.forks_per_second,
                "usage": {name: usage.as_dict() for name, usage in self.usage.items()},
                **({"load": self.load.as_dict()} if self.load is not None else {})}


def thread_count(pid: int) -> int:
    """Threads of a process now (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def settled_thread_count(pid: int, seconds: float = 10.0) -> tuple[int, int]:
    """(the thread count once it has not changed for 0.5 s, the most seen meanwhile); gives up
    waiting after `seconds`."""
    deadline = time.monotonic() + seconds
    last = most = thread_count(pid)
    since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 0.5:
        time.sleep(0.05)
        now = thread_count(pid)
        most = max(most, now)
        if now != last:
            last, since = now, time.monotonic()
    return last, most


def run_window(targets: Sequence[Target], seconds: float,
               load: Callable[[], Callable[[], Any]] | None = None) -> Window:
    """Measure every target over one window of `seconds`. `load()` is called as the window
    opens and returns what to call (and wait for) as it closes; that result is kept."""
    scrapers = {t.name: Scraper(t.address) for t in targets if t.address and t.scrape_every}
    scrapes = dict.fromkeys(scrapers, 0)
    errors = dict.fromkeys(scrapers, 0)
    threads: dict[str, list[int]] = {t.name: [] for t in targets}
    try:
        forks_before = host_forks()
        cpu_before = {t.name: t.cpu.seconds() for t in targets}
        started = time.monotonic()
        finish = load() if load is not None else None
        next_scrape = {name: started for name in scrapers}
        next_sample = started
        end = started + seconds
        while (now := time.monotonic()) < end:
            for target in targets:
                if target.name in scrapers and now >= next_scrape[target.name]:
                    scrapes[target.name] += 1
                    if not _scrape(scrapers, target):
                        errors[target.name] += 1
                    assert target.scrape_every is not None
                    next_scrape[target.name] += target.scrape_every
            if now >= next_sample:
                for target in targets:
                    threads[target.name].append(thread_count(target.pid))
                next_sample += THREAD_SAMPLE_SECONDS
            wake = min([end, next_sample, *next_scrape.values()])
            time.sleep(max(0.0, wake - time.monotonic()))
        result = finish() if finish is not None else None
        elapsed = time.monotonic() - started
        cpu = {t.name: t.cpu.seconds() - cpu_before[t.name] for t in targets}
        forks = host_forks() - forks_before
    finally:
        for scraper in scrapers.values():
            scraper.close()
    usage = {t.name: Usage(t.name, cpu[t.name], elapsed, scrapes.get(t.name, 0),
                           errors.get(t.name, 0), tuple(threads[t.name])) for t in targets}
    return Window(elapsed, forks, usage, result)


def _scrape(scrapers: dict[str, Scraper], target: Target) -> bool:
    try:
        scrapers[target.name].get()
        return True
    except (OSError, RuntimeError, ValueError, http.client.HTTPException):
        assert target.address is not None
        with contextlib.suppress(OSError):
            scrapers[target.name].close()
        scrapers[target.name] = Scraper(target.address)
        return False
