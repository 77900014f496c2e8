"""Statistics and per-process CPU and memory readings for the benchmarks."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Summary:
    """Median, 99th percentile, mean and count of a series (seconds unless said otherwise)."""

    median: float
    p99: float
    mean: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` in 0..1): a value that was really observed."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        return Summary(math.nan, math.nan, math.nan, 0)
    return Summary(statistics.median(values), percentile(values, 0.99),
                   statistics.fmean(values), len(values))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (whole seconds / CLK_TCK: 10 ms resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    # After comm: state is field 3, so utime (14) and stime (15) are at indexes 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_bytes(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in bytes."""
    found = {}
    with open(f"/proc/{pid}/status", "rb") as handle:
        for line in handle:
            name, _, value = line.partition(b":")
            if name in (b"VmRSS", b"VmHWM"):
                found[name.decode()] = int(value.split()[0]) * 1024
    return found


def host_forks() -> int:
    """Processes created since boot (`processes` in /proc/stat): how busy the host is."""
    with open("/proc/stat", "rb") as handle:
        for line in handle:
            if line.startswith(b"processes "):
                return int(line.split()[1])
    return 0


def host_pids() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


@contextlib.contextmanager
def stopwatch(into: dict[str, float], key: str) -> Iterator[None]:
    """Record in `into[key]` how many wall seconds the block took (where a run's time goes)."""
    started = time.monotonic()
    try:
        yield
    finally:
        into[key] = round(time.monotonic() - started, 1)
