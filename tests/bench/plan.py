"""What a run measures (the full plan and `--quick`'s), the synthetic host's shape, a row."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    refresh_rounds: int
    idle_counts: tuple[int, ...]
    maps_lines: tuple[int, ...]
    scrape_rounds: int
    steady_seconds: float
    runner_trials: int
    link_trials: int
    versus_scrapes: int
    churn_processes: int
    # Side by side with process-exporter (sidebyside.py), each in one window for all.
    side_idle_counts: tuple[int, ...]  # idle rows at the defaults, scraped every 15 s
    side_idle_seconds: tuple[float, ...]  # the window of each (a multiple of 15 s)
    fast_idle_seconds: float  # the idle row at `interval: 1s`, scraped every 1 s
    churn_rates: tuple[int, ...]  # execs of /bin/true a second
    churn_seconds: float
    kill_trials: int  # the SIGKILL-exit row
    half_open: int  # half-open HTTP requests held open
    scale_idle: int  # the scale row: idle processes next to SCALE_RUNNERS runners
    scale_rounds: int
    scale_seconds: float
    # After a daemon starts, before a window: past the re-checks of the new processes (two
    # refreshes at the default interval).
    settle_seconds: float
    # After a pool of idle processes is spawned next to running daemons: they fork without an
    # exec, so no event announces them and the daemon finds them at its next listing of
    # /proc (at most `RECONCILE_SECONDS` later), then re-checks them at two refreshes.
    pool_settle_seconds: float


FULL = Plan(refresh_rounds=100, idle_counts=(100, 1000, 5000), maps_lines=(1000, 5000, 20000),
            scrape_rounds=1000, steady_seconds=30.0, runner_trials=20, link_trials=30,
            versus_scrapes=100, churn_processes=2000,
            side_idle_counts=(500, 2000, 5000), side_idle_seconds=(60.0, 30.0, 30.0),
            fast_idle_seconds=20.0, churn_rates=(100, 300, 1000), churn_seconds=20.0,
            kill_trials=30, half_open=2000, scale_idle=10000, scale_rounds=30,
            scale_seconds=5.0, settle_seconds=12.0, pool_settle_seconds=42.0)
QUICK = Plan(refresh_rounds=10, idle_counts=(100, 1000, 5000), maps_lines=(1000, 5000, 20000),
             scrape_rounds=30, steady_seconds=5.0, runner_trials=3, link_trials=4,
             versus_scrapes=10, churn_processes=200,
             side_idle_counts=(500, 2000, 5000), side_idle_seconds=(3.0, 3.0, 3.0),
             fast_idle_seconds=3.0, churn_rates=(100, 300, 1000), churn_seconds=2.0,
             kill_trials=3, half_open=200, scale_idle=2000, scale_rounds=5, scale_seconds=2.0,
             settle_seconds=2.0, pool_settle_seconds=2.0)
# The host of the steady-state, detection and comparison benchmarks.
STEADY_IDLE = 1000
STEADY_RUNNERS = 4
STEADY_MAPS_LINES = 1000
REFERENCE_MAPS_LINES = 5000  # the runner of the idle-process series
SCRAPE_RUNNERS = 8
SCRAPE_MODELS = 20
SCALE_RUNNERS = 8
SCALE_MAPS_LINES = 5000


@dataclass(frozen=True)
class Row:
    """One line of the table. `median`/`p99` are in `unit`; `note` says what it is relative to."""

    key: str
    label: str
    median: float | None
    p99: float | None = None
    unit: str = "ms"
    target: str = ""
    note: str = ""
