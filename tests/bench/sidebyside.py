"""vgpumon side by side with process-exporter, on a busy host and under hostile clients.

Every row here measures `vgpumon run` and, with ``--baseline``, the baseline tree's daemon
next to it on the same host over the same window (`window.run_window`), and where it makes
sense Debian's process-exporter tracking the same groups, scraped as Prometheus would (every
15 s, its usual interval, or every 1 s). The host: the server, 4 runners (1,000 maps lines),
the stand-in for Ollama's API, and idle processes.

- idle CPU at the defaults, everything scraped every 15 s, at 500, 2,000 and 5,000 idle
  processes, and at vgpumon ``interval: 1s`` with everything scraped every 1 s at 500: the
  ratio vgpumon CPU / process-exporter CPU in the same window;
- churn: ``/bin/true`` started 100, 300 and 1,000 times a second (churn.py): each daemon's
  CPU per exec+exit above its idle rate, its percent of a core, process-exporter's percent
  (it polls: its cost does not follow the churn); the daemon's thread count before, under
  and after the fastest churn; and 300 a second with the system's library directory among
  the watched ones, as on a host whose shims live in /usr/lib64;
- a tracked runner killed with SIGKILL, until `process_exited` shows at /events (exits.py);
- half-open HTTP requests held open, /metrics meanwhile, threads (halfopen.py);
- scale: 10,000 idle processes next to 8 runners mapping 5,000 lines each: refresh CPU
  (scale.py, per tree), and the daemon's CPU per refresh and RSS.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tests.bench import versus
from tests.bench.churn import TAIL_SECONDS, churn_load, exec_cost
from tests.bench.client import Scraper
from tests.bench.cpu import ProcessCpu
from tests.bench.exits import kill_trials
from tests.bench.halfopen import HalfOpen, measure_half_open, nofile_limit
from tests.bench.measure import host_pids, memory_bytes, stopwatch
from tests.bench.plan import SCALE_MAPS_LINES, SCALE_RUNNERS, Plan, Row
from tests.bench.scale import refresh_in_tree
from tests.bench.synthetic import SyntheticHost
from tests.bench.window import Target, Window, run_window, settled_thread_count, thread_count
from tests.harness import Vgpumon, wait_for

SIDE_RUNNERS = 4
SIDE_MAPS_LINES = 1000
SLOW_SCRAPE = 15.0  # Prometheus's usual interval
FAST_SCRAPE = 1.0
SCALE_INTERVAL = "100ms"  # the daemon's refresh in the scale row: its CPU / 10 per second
SCALE_INTERVAL_SECONDS = 0.1
EXPORTER = "process-exporter"
WARM_TIMEOUT = 30.0
UNDER_TEST = "vgpumon"  # the daemon of the tree measured; "baseline" is --baseline's
SYSTEM_LIBDIR_CHURN_RATE = 300  # execs a second in the churn row with /usr/lib64 watched


class Daemons:
    """`vgpumon run` of each tree in `envs` (name -> environment), one config, the same host;
    each with a work dir, an event log and a CPU meter of its own."""

    def __init__(self, config: dict[str, Any], workdir: Path, envs: dict[str, dict[str, str]],
                 *, runners: int, preexec: Callable[[], None] | None = None):
        self.running: dict[str, Vgpumon] = {}
        self.meters: dict[str, ProcessCpu] = {}
        try:
            for name, env in envs.items():
                directory = workdir / name
                directory.mkdir(parents=True)
                own = {**config, "events": {"file": str(directory / "events.jsonl")}}
                self.running[name] = Vgpumon(own, directory, env=env, preexec=preexec)
                self.meters[name] = ProcessCpu(self.running[name].process.pid)
            for name, daemon in self.running.items():
                wait_for(partial(_sees, daemon, runners), 60,
                         message=f"{name} to see {runners} runners and the API")
        except BaseException:
            self.stop()
            raise

    def address(self, name: str) -> str:
        return self.running[name].url.removeprefix("http://")

    def pid(self, name: str) -> int:
        return self.running[name].process.pid

    def targets(self, scrape_every: float) -> list[Target]:
        return [Target(name, self.pid(name), self.meters[name], self.address(name),
                       scrape_every) for name in self.running]

    def stop(self) -> None:
        for name, daemon in self.running.items():
            daemon.stop()
            self.meters[name].close()


def _sees(daemon: Vgpumon, runners: int) -> bool:
    return (daemon.value("vgpumon_processes", group="runner") == runners
            and daemon.value("vgpumon_ollama_up") == 1)


@dataclass
class Exporter:
    pid: int
    address: str
    cpu: ProcessCpu

    def target(self, name: str, scrape_every: float) -> Target:
        return Target(name, self.pid, self.cpu, self.address, scrape_every)


def run(host: SyntheticHost, plan: Plan, workdir: Path, envs: dict[str, dict[str, str]],
        rows: list[Row], results: dict[str, Any], timings: dict[str, float]) -> None:
    """The side-by-side rows. Needs the host's server running and its API served; leaves the
    host as it found it. Where the run's time goes is written to `timings`."""
    section: dict[str, Any] = {}
    results["sidebyside"] = section
    idle: list[Row] = []  # the idle rows first in the table, then the others as they ran
    mine: list[Row] = []
    exporter_config = host.process_exporter_config() if versus.install() else None
    if exporter_config is None:
        section["process_exporter"] = f"skipped: {versus.BINARY} is not installed"
    runners = [host.start_runner(host.models[i], lines=SIDE_MAPS_LINES)
               for i in range(SIDE_RUNNERS)]
    host.api_loaded = SIDE_RUNNERS
    expect = {"server": 1, "runner": SIDE_RUNNERS}
    counts = list(plan.side_idle_counts)
    seconds = dict(zip(counts, plan.side_idle_seconds, strict=True))
    pools = [host.spawn_idle(counts[0])]
    try:
        with contextlib.ExitStack() as stack:
            with stopwatch(timings, "side_start"):
                daemons = Daemons(host.vgpumon_config(), workdir / "defaults", envs,
                                  runners=SIDE_RUNNERS, preexec=nofile_limit())
                stack.callback(daemons.stop)
                slow = _exporter(stack, exporter_config, workdir, expect)
                _settle(plan)
            with stopwatch(timings, f"side_idle_{counts[0]}"):
                quiet = _idle_row(idle, section, daemons, slow, seconds[counts[0]],
                                  counts[0], "defaults", SLOW_SCRAPE, "<= 0.5x")
            with stopwatch(timings, "side_churn"), contextlib.ExitStack() as churning:
                fast = _exporter(churning, exporter_config, workdir, expect)  # every 1 s
                _churn_rows(host, plan, mine, section, daemons, slow, fast, quiet)
            with stopwatch(timings, "side_exit_sigkill"):
                _exit_row(host, plan, mine, section, daemons)
            for before, count in itertools.pairwise(counts):
                with stopwatch(timings, f"side_idle_{count}"):
                    pools.append(host.spawn_idle(count - before))
                    time.sleep(plan.pool_settle_seconds)
                    _idle_row(idle, section, daemons, slow, seconds[count], count,
                              "defaults", SLOW_SCRAPE, "")
            # Last for these daemons: a thread per connection may linger after the clients
            # left (see halfopen.py), and they are stopped right after.
            with stopwatch(timings, "side_half_open"):
                _half_open_rows(plan, mine, section, daemons)
        with stopwatch(timings, "side_churn_system_libdir"):
            _churn_system_libdir_row(host, plan, workdir, envs, mine, section)
        with stopwatch(timings, f"side_idle_{counts[0]}_fast"):
            for pool in pools[1:]:
                host.stop(pool)
            del pools[1:]
            with contextlib.ExitStack() as stack:
                daemons = Daemons(host.vgpumon_config(interval="1s"), workdir / "fast", envs,
                                  runners=SIDE_RUNNERS)
                stack.callback(daemons.stop)
                fast = _exporter(stack, exporter_config, workdir, expect)
                _settle(plan)
                _idle_row(idle, section, daemons, fast, plan.fast_idle_seconds, counts[0],
                          "interval 1s", FAST_SCRAPE, "<= 0.25x")
        with stopwatch(timings, "side_scale"):
            for runner in runners:
                host.stop(runner)
            runners = [host.start_runner(host.models[i], lines=SCALE_MAPS_LINES)
                       for i in range(SCALE_RUNNERS)]
            host.api_loaded = SCALE_RUNNERS
            pools.append(host.spawn_idle(plan.scale_idle - counts[0]))
            _scale_rows(host, plan, workdir, envs, mine, section)
    finally:
        for child in [*runners, *pools]:
            host.stop(child)
    rows.extend(idle + mine)


def _settle(plan: Plan) -> None:
    """Past a daemon's start-up (its first refresh, the re-reads of young processes) or the
    events of a pool just spawned, and one timer refresh."""
    time.sleep(plan.settle_seconds)


def _exporter(stack: contextlib.ExitStack, config: str | None, workdir: Path,
              expect: dict[str, int]) -> Exporter | None:
    """A process-exporter for the rest of `stack`, its first scrape done (it reads every
    process then) and its groups checked; None where it is not installed."""
    if config is None:
        return None
    proc, address = stack.enter_context(versus.running(config, workdir))
    meter = ProcessCpu(proc.pid)
    stack.callback(meter.close)
    scraper = Scraper(address)
    try:
        versus.check_groups(scraper.get(), expect)
    finally:
        scraper.close()
    return Exporter(proc.pid, address, meter)


def _warm(targets: list[Target]) -> None:
    """Scrape each target once before a window: process-exporter pays for every process it
    has not seen yet (the pool just spawned) on its first scrape, not on one in the window."""
    for target in targets:
        if target.address is not None:
            scraper = Scraper(target.address, timeout=WARM_TIMEOUT)
            try:
                scraper.get()
            except (OSError, RuntimeError, http.client.HTTPException):
                pass  # a daemon that cannot answer now: the window counts its failures
            finally:
                scraper.close()


def _baseline(daemons: Daemons) -> list[str]:
    return [name for name in daemons.running if name != UNDER_TEST]


# -- idle --------------------------------------------------------------------------------------

def _idle_row(rows: list[Row], section: dict[str, Any], daemons: Daemons,
              exporter: Exporter | None, seconds: float, count: int, setting: str,
              every: float, target: str) -> Window:
    targets = daemons.targets(every)
    if exporter is not None:
        targets.append(exporter.target(EXPORTER, every))
    _warm(targets)
    window = run_window(targets, seconds)
    key = f"side_idle_{count}" if setting == "defaults" else f"side_idle_{count}_fast"
    section[key] = {"idle": count, "host_pids": host_pids(), "setting": setting,
                    "scrape_every": every, **window.as_dict()}
    ours = window.percent(UNDER_TEST)
    theirs = window.percent(EXPORTER) if exporter is not None else None
    note = [f"vgpumon {ours:.3f} %"]
    if theirs is not None:
        note.append(f"process-exporter {theirs:.3f} % of a core")
    note[-1] += f" over {window.seconds:.0f} s; the host forking {window.forks_per_second:.1f}/s"
    for name in _baseline(daemons):
        theirs_text = f" = {window.percent(name) / theirs:.2f}x" if theirs else ""
        note.append(f"baseline {window.percent(name):.3f} %{theirs_text}")
    rows.append(Row(key, f"idle CPU, {setting}, {count} idle processes, all scraped every "
                    f"{every:.0f} s: vgpumon / process-exporter",
                    ours / theirs if theirs else None, None, "x", target, "; ".join(note)))
    return window


# -- churn -------------------------------------------------------------------------------------

def _churn_rows(host: SyntheticHost, plan: Plan, rows: list[Row], section: dict[str, Any],
                daemons: Daemons, slow: Exporter | None, fast: Exporter | None,
                idle: Window) -> None:
    targets = daemons.targets(SLOW_SCRAPE)
    for exporter, every in ((slow, SLOW_SCRAPE), (fast, FAST_SCRAPE)):
        if exporter is not None:
            targets.append(exporter.target(f"{EXPORTER} {every:.0f}s", every))
    fastest = max(plan.churn_rates)
    threads: dict[str, dict[str, Any]] = {}
    for rate in plan.churn_rates:
        if rate == fastest:
            threads = {name: {"before": thread_count(daemons.pid(name))}
                       for name in daemons.running}
        window = run_window(targets, plan.churn_seconds + TAIL_SECONDS,
                            churn_load(host.benchproc, rate, plan.churn_seconds))
        costs = {name: exec_cost(window, idle, name) for name in daemons.running}
        section[f"churn_{rate}"] = {**window.as_dict(),
                                    "cost": {n: c.as_dict() for n, c in costs.items()}}
        ours = costs[UNDER_TEST]
        note = [f"{ours.percent:.2f} % of a core (idle {ours.idle_percent:.3f} %)"]
        polls = [f"{window.percent(t.name):.2f} % scraped every {t.scrape_every:.0f} s"
                 for t in targets if t.name.startswith(EXPORTER)]
        if polls:
            note.append("process-exporter " + ", ".join(polls))
        note.append(f"{window.load.started} started in {window.load.seconds:.1f} s, "
                    f"{ours.extra_forks:.0f} above the idle rate")
        for name in _baseline(daemons):
            note.append(f"baseline {costs[name].per_exec * 1e6:.0f} us, "
                        f"{costs[name].percent:.2f} %")
        rows.append(Row(f"churn_{rate}", f"churn, {rate} execs/s of /bin/true: vgpumon CPU "
                        "per exec+exit", ours.per_exec * 1e6, None, "us", "<= 20 us",
                        "; ".join(note)))
        if rate == fastest:
            for name in daemons.running:
                samples = window.usage[name].threads
                threads[name].update(under_min=min(samples), under_max=max(samples),
                                     after=settled_thread_count(daemons.pid(name), 5.0)[0])
    section["threads_churn"] = threads
    ours_threads = threads[UNDER_TEST]
    note = [_threads_text(ours_threads)]
    note += [f"baseline {_threads_text(threads[name])}" for name in _baseline(daemons)]
    rows.append(Row("threads_churn", f"daemon threads under {fastest} execs/s (the most)",
                    ours_threads["under_max"], None, "threads", "constant", "; ".join(note)))


def _threads_text(threads: dict[str, int]) -> str:
    return (f"before {threads['before']}, under {threads['under_min']}-{threads['under_max']}, "
            f"after {threads['after']}")


def system_library_dir() -> str:
    """The directory this host's C library is loaded from (by this process, and so by
    /bin/true): where a real host's shims and links live (/usr/lib64 and the like)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rstrip("\n").split(None, 5)[-1]
            if os.path.basename(path).startswith("libc.so"):
                return os.path.dirname(path)
    raise RuntimeError("no libc in /proc/self/maps")


def _churn_system_libdir_row(host: SyntheticHost, plan: Plan, workdir: Path,
                             envs: dict[str, dict[str, str]], rows: list[Row],
                             section: dict[str, Any]) -> None:
    """Churn where the watched library directories include the system's (as on a host whose
    shims and links live in /usr/lib64): every exec there opens the C library."""
    libdir = system_library_dir()
    config = host.vgpumon_config()
    config["watch_dirs"] = [*config["watch_dirs"], libdir]
    daemons = Daemons(config, workdir / "system-libdir", envs, runners=SIDE_RUNNERS)
    try:
        _settle(plan)
        targets = daemons.targets(SLOW_SCRAPE)
        idle = run_window(targets, plan.churn_seconds)
        rate = SYSTEM_LIBDIR_CHURN_RATE
        window = run_window(targets, plan.churn_seconds + TAIL_SECONDS,
                            churn_load(host.benchproc, rate, plan.churn_seconds))
    finally:
        daemons.stop()
    costs = {name: exec_cost(window, idle, name) for name in daemons.running}
    section["churn_system_libdir"] = {"watched": libdir, "rate": rate, **window.as_dict(),
                                      "cost": {n: c.as_dict() for n, c in costs.items()}}
    ours = costs[UNDER_TEST]
    note = [f"{libdir} watched; {ours.percent:.2f} % of a core (idle {ours.idle_percent:.3f} %)"]
    note += [f"baseline {costs[name].per_exec * 1e6:.0f} us, {costs[name].percent:.2f} %"
             for name in _baseline(daemons)]
    rows.append(Row("churn_system_libdir", f"churn, {rate} execs/s, the system library "
                    "directory watched: vgpumon CPU per exec+exit", ours.per_exec * 1e6, None,
                    "us", "", "; ".join(note)))


# -- exits, hostile clients ------------------------------------------------------------------

def _exit_row(host: SyntheticHost, plan: Plan, rows: list[Row], section: dict[str, Any],
              daemons: Daemons) -> None:
    found = kill_trials(host, {name: daemons.address(name) for name in daemons.running},
                        plan.kill_trials)
    section["exit_sigkill"] = {name: latencies.as_dict() for name, latencies in found.items()}
    ours = found[UNDER_TEST].summary()
    seen = found[UNDER_TEST].as_dict()["seen"]
    note = [f"{ours.n} kills, /events polled every 2 ms; the event's ts p50 "
            f"{seen['median'] * 1e3:.1f} ms; reasons {found[UNDER_TEST].reasons}"]
    for name in _baseline(daemons):
        theirs = found[name].summary()
        note.append(f"baseline p50 {theirs.median * 1e3:.0f} / p99 {theirs.p99 * 1e3:.0f} ms")
    rows.append(Row("exit_sigkill", "runner killed with SIGKILL, until process_exited is "
                    "visible at /events", ours.median * 1e3, ours.p99 * 1e3, "ms",
                    "p99 <= 100 ms", "; ".join(note)))


def _half_open_rows(plan: Plan, rows: list[Row], section: dict[str, Any],
                    daemons: Daemons) -> None:
    found = {name: measure_half_open(daemons.address(name), daemons.pid(name), plan.half_open)
             for name in daemons.running}
    section["half_open"] = {name: result.as_dict() for name, result in found.items()}
    ours = found[UNDER_TEST]
    note = [f"a new connection each, {ours.failures} failed; over a keep-alive connection "
            f"p50 {ours.keepalive.median * 1e3:.1f} / max {ours.keepalive.p99 * 1e3:.1f} ms; "
            f"{ours.open_at_scrapes} of {ours.opened} still open as the scrapes began, "
            f"{ours.open_after_scrapes} as they ended (opened in {ours.open_seconds:.1f} s); "
            f"once they closed: the first /metrics {_first(ours)}, recovered in "
            f"{_after(ours.recovery)}; daemon RLIMIT_NOFILE {ours.daemon_nofile}"]
    for name in _baseline(daemons):
        theirs = found[name]
        note.append(f"baseline p50 {theirs.fresh.median * 1e3:.1f} / max "
                    f"{theirs.fresh.p99 * 1e3:.1f} ms, {theirs.failures} failed, opened in "
                    f"{theirs.open_seconds:.1f} s, first /metrics after {_first(theirs)}, "
                    f"recovered in {_after(theirs.recovery)}")
    rows.append(Row("half_open", f"/metrics latency while {ours.requested} half-open requests "
                    "are held open", ours.fresh.median * 1e3, ours.fresh.p99 * 1e3, "ms",
                    "< 50 ms", "; ".join(note)))
    note = [f"before {ours.threads_before}, after {ours.threads_after}"]
    note += [f"baseline {found[name].threads_before} -> {found[name].threads_held} -> "
             f"{found[name].threads_after}" for name in _baseline(daemons)]
    rows.append(Row("half_open_threads", f"daemon threads while {ours.requested} half-open "
                    "requests are held open", ours.threads_held, None, "threads", "constant",
                    "; ".join(note)))


def _after(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _first(found: HalfOpen) -> str:
    return _after(found.first_after) + ("" if found.first_after_ok else " (no answer)")


# -- scale -------------------------------------------------------------------------------------

def _scale_rows(host: SyntheticHost, plan: Plan, workdir: Path,
                envs: dict[str, dict[str, str]], rows: list[Row],
                section: dict[str, Any]) -> None:
    daemons = Daemons(host.vgpumon_config(interval=SCALE_INTERVAL), workdir / "scale", envs,
                      runners=SCALE_RUNNERS)
    try:
        _settle(plan)
        window = run_window(daemons.targets(SLOW_SCRAPE), plan.scale_seconds)
        memory = {name: memory_bytes(daemons.pid(name)) for name in daemons.running}
    finally:
        daemons.stop()
    refreshes = window.seconds / SCALE_INTERVAL_SECONDS
    per_refresh = {name: window.usage[name].cpu_seconds / refreshes for name in envs}
    refresh = {name: refresh_in_tree({**os.environ, **env}, host.vgpumon_config(),
                                     plan.scale_rounds, 1 + SCALE_RUNNERS)
               for name, env in envs.items()}
    section["scale"] = {"idle": plan.scale_idle, "runners": SCALE_RUNNERS,
                        "maps_lines": SCALE_MAPS_LINES, "host_pids": host_pids(),
                        **{name: {"refresh": refresh[name], "memory": memory[name],
                                  "daemon_cpu_per_refresh": per_refresh[name],
                                  "daemon_percent": window.percent(name)} for name in envs}}
    ours = refresh[UNDER_TEST]
    note = [f"full read p50 {ours['full_read']['median'] * 1e3:.2f} ms; vgpumon run at "
            f"interval {SCALE_INTERVAL}: {per_refresh[UNDER_TEST] * 1e3:.2f} ms of CPU per "
            f"refresh; {ours['host_pids']} PIDs on the host"]
    others = [name for name in envs if name != UNDER_TEST]
    for name in others:
        note.append(f"baseline p50 {refresh[name]['cpu']['median'] * 1e3:.2f} ms, run "
                    f"{per_refresh[name] * 1e3:.2f} ms per refresh")
    rows.append(Row("scale_refresh", f"scale: refresh CPU, {plan.scale_idle} idle processes, "
                    f"{SCALE_RUNNERS} runners x {SCALE_MAPS_LINES} maps lines",
                    ours["cpu"]["median"] * 1e3, ours["cpu"]["p99"] * 1e3, "ms",
                    "p50 <= 3 ms", "; ".join(note)))
    ours_memory = memory[UNDER_TEST]
    note = [f"peak {ours_memory['VmHWM'] / 1e6:.1f} MB"]
    note += [f"baseline {memory[name]['VmRSS'] / 1e6:.1f} MB (peak "
             f"{memory[name]['VmHWM'] / 1e6:.1f})" for name in others]
    rows.append(Row("scale_rss", f"scale: vgpumon run RSS, {plan.scale_idle} idle processes "
                    f"+ {SCALE_RUNNERS} runners", ours_memory["VmRSS"] / 1e6, None, "MB",
                    "<= 40 MB", "; ".join(note)))
