"""Scrape latency of a real `vgpumon run`, and the daemon's CPU per scrape.

Each round scrapes /metrics, then /healthz (the HTTP floor: the same server and connection, a
handler that does nothing) right after, so the ratio of the two cancels the machine's noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tests.bench.client import Scraper
from tests.bench.cpu import ProcessCpu
from tests.bench.measure import Summary, cpu_seconds, summarize


@dataclass(frozen=True)
class ScrapeCost:
    latency: Summary
    floor: Summary  # /healthz over the same connection
    cpu_per_scrape: float  # the daemon's CPU, /metrics and /healthz together, per round
    body_bytes: int
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return {"latency": self.latency.as_dict(), "healthz": self.floor.as_dict(),
                "over_healthz": self.latency.median / self.floor.median,
                "cpu_per_scrape": self.cpu_per_scrape, "body_bytes": self.body_bytes,
                "samples": self.samples}


def measure_scrapes(address: str, pid: int, rounds: int) -> ScrapeCost:
    scraper = Scraper(address)
    try:
        body = scraper.get()
        for _ in range(20):  # warm up: connection, caches, the allocator
            scraper.get()
        latency, floor = [], []
        cpu_before = cpu_seconds(pid)
        for _ in range(rounds):
            started = time.perf_counter()
            scraper.get("/metrics")
            middle = time.perf_counter()
            scraper.get("/healthz")
            latency.append(middle - started)
            floor.append(time.perf_counter() - middle)
        cpu = (cpu_seconds(pid) - cpu_before) / rounds
    finally:
        scraper.close()
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return ScrapeCost(summarize(latency), summarize(floor), cpu, len(body), samples)


@dataclass(frozen=True)
class ScrapeCpu:
    """The daemon's CPU per /metrics scrape of a snapshot that does not change meanwhile (a
    quiet host between two refreshes: what a scrape costs when nothing is new)."""

    cpu_per_scrape: float
    latency: Summary
    rounds: int
    meter: str

    def as_dict(self) -> dict[str, Any]:
        return {"cpu_per_scrape": self.cpu_per_scrape, "latency": self.latency.as_dict(),
                "rounds": self.rounds, "meter": self.meter}


def measure_scrape_cpu(address: str, pid: int, rounds: int) -> ScrapeCpu:
    """`rounds` scrapes of /metrics back to back over one keep-alive connection."""
    scraper = Scraper(address)
    meter = ProcessCpu(pid)
    try:
        for _ in range(20):
            scraper.get()
        before = meter.seconds()
        latency = scraper.timed("/metrics", rounds)
        cpu = (meter.seconds() - before) / rounds
    finally:
        meter.close()
        scraper.close()
    return ScrapeCpu(cpu, summarize(latency), rounds, meter.kind)
