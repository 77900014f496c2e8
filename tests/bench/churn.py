"""Process churn on the host, and what each process started and exited costs a daemon.

The load is `benchproc` in churn mode: ``/bin/true`` started R times a second for S seconds
(posix_spawn on absolute deadlines, children reaped as they exit), as CI runners, shells and
health checks do on a busy Ollama host. The window it runs in (`window.run_window`) measures
every daemon over the same seconds. A daemon's cost per exec+exit is its CPU above its rate in
an idle window just before (same host, same scrapes), over the processes the host started
above the idle window's rate: forks of anything else on a shared machine count on both sides.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.bench.window import Window

PROGRAM = "/bin/true"
# The window runs this long after the last start: the daemons handle the last events.
TAIL_SECONDS = 0.5


@dataclass(frozen=True)
class ChurnLoad:
    rate: int
    started: int  # programs the driver started (it drops a start it is 100 ms late for)
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def churn_load(benchproc: Path, rate: int,
               seconds: float) -> Callable[[], Callable[[], ChurnLoad]]:
    """A load for `run_window`: start the driver as the window opens, wait for it at the end."""

    def start() -> Callable[[], ChurnLoad]:
        proc = subprocess.Popen([str(benchproc)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, text=True,
                                env={"PATH": "/usr/bin:/bin", "BENCH_MODE": "churn",
                                     "BENCH_RATE": str(rate), "BENCH_SECONDS": str(seconds),
                                     "BENCH_PROGRAM": PROGRAM})

        def finish() -> ChurnLoad:
            out, _ = proc.communicate(timeout=seconds + 60)
            words = out.split()
            if proc.returncode != 0 or len(words) != 4 or words[0] != "started":
                raise RuntimeError(f"churn driver failed ({proc.returncode}): {out!r}")
            return ChurnLoad(rate, int(words[1]), float(words[3]))

        return finish

    return start


@dataclass(frozen=True)
class ExecCost:
    """One daemon's cost of the churn in one window."""

    per_exec: float  # seconds of CPU per process started and exited, above the idle rate
    percent: float  # percent of a core over the whole window
    idle_percent: float
    extra_forks: float  # processes started above the idle window's rate

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def exec_cost(churn: Window, idle: Window, name: str) -> ExecCost:
    busy, quiet = churn.usage[name], idle.usage[name]
    extra_cpu = busy.cpu_seconds - quiet.cpu_seconds / quiet.seconds * busy.seconds
    extra_forks = churn.host_forks - idle.forks_per_second * churn.seconds
    return ExecCost(max(0.0, extra_cpu) / max(1.0, extra_forks), busy.percent, quiet.percent,
                    extra_forks)
