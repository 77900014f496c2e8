"""`python -m tests.bench [--quick]`: vgpumon's benchmarks on a synthetic host.

Prints a table and writes the figures as JSON (default ``tests/bench/results.json``), with
where the run's time went (``timings``). Needs root (the proc connector, /dev/kmsg, other
processes' maps), gcc, and Debian's ``prometheus-process-exporter`` for the comparisons (those
rows are skipped without it). The full run takes about six minutes, ``--quick`` (a smoke run:
few rounds, short windows) about a minute and a half. ``--source DIR`` measures the vgpumon
package found in DIR instead of this checkout's (for before/after comparisons: ``git archive
<commit> vgpumon | tar -x -C DIR``); ``--baseline DIR`` runs DIR's daemon next to this one in
the steady state, the scrape rows and the side-by-side rows (not the detection rows), so that
both see the same host over the same window.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from tests.bench.plan import (
    FULL,
    QUICK,
    REFERENCE_MAPS_LINES,
    SCRAPE_MODELS,
    SCRAPE_RUNNERS,
    STEADY_IDLE,
    STEADY_MAPS_LINES,
    STEADY_RUNNERS,
    Plan,
    Row,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    source = Path(args.source).resolve() if args.source else REPO
    sys.path.insert(0, str(source))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(source), str(REPO)])
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "source": source_info(source),
                               "quick": args.quick, "plan": asdict(plan)}
    rows: list[Row] = []
    from tests.bench import sidebyside
    from tests.bench.measure import stopwatch
    from tests.bench.synthetic import SyntheticHost

    timings: dict[str, float] = {}
    results["timings"] = timings

    with SyntheticHost.create() as host, tempfile.TemporaryDirectory() as workdir:
        host.serve_api()
        baseline = Path(args.baseline).resolve() if args.baseline else None
        with stopwatch(timings, "refresh"):
            pools = refresh_benchmarks(host, plan, rows, results)
        with stopwatch(timings, "daemon"):
            daemon_benchmarks(host, plan, Path(workdir), rows, results, baseline)
        for pool in pools:
            host.stop(pool)
        envs = {"vgpumon": _daemon_env(), **({"baseline": _daemon_env(baseline)}
                                             if baseline is not None else {})}
        sidebyside.run(host, plan, Path(workdir), envs, rows, results, timings)
    results["rows"] = [asdict(row) for row in rows]
    results["seconds"] = time.monotonic() - started
    out = Path(args.out)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(render(rows, results))
    print(f"\nwritten to {out} ({results['seconds']:.0f} s)")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds")
    parser.add_argument("--out", default=str(HERE / "results.json"), help="the JSON file")
    parser.add_argument("--source", metavar="DIR",
                        help="measure the vgpumon package in DIR instead of this checkout")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run the vgpumon package in DIR next to it in the steady "
                             "state (same host, same window: the noise is shared)")
    return parser.parse_args(argv)


# -- the benchmarks ----------------------------------------------------------------------------

def refresh_benchmarks(host: Any, plan: Plan, rows: list[Row], results: dict) -> list[Any]:
    """The refresh rows; returns the idle pools left running (STEADY_IDLE processes)."""
    from tests.bench.refresh import measure_refresh

    config = host.vgpumon_config()
    section: dict[str, Any] = {}
    results["refresh"] = section

    def add(key: str, idle: int, lines: int, runner: Any) -> None:
        cost = measure_refresh(config, plan.refresh_rounds, expect_tracked=1)
        section[key] = {"idle": idle, "maps_lines": runner.lines, **cost.as_dict()}
        target = "p50 <= 5 ms" if (idle, lines) == (1000, 5000) else ""
        rows.append(Row(key, f"refresh CPU, {idle} idle processes, runner maps {lines} lines",
                        cost.cpu.median * 1e3, cost.cpu.p99 * 1e3, "ms", target,
                        f"maps read in full: p50 {cost.full.median * 1e3:.2f} / p99 "
                        f"{cost.full.p99 * 1e3:.2f} ms = {cost.full_over_floor:.2f}x the I/O "
                        f"floor ({cost.floor.median * 1e3:.2f} ms: /proc listing + maps "
                        f"read); {cost.host_pids} PIDs on the host"))

    runner = host.start_runner(lines=REFERENCE_MAPS_LINES)
    pools, spawned = [], 0
    for idle in sorted(plan.idle_counts):
        pools.append((idle, host.spawn_idle(idle - spawned)))
        spawned = idle
        add(f"refresh_idle_{idle}", idle, REFERENCE_MAPS_LINES, runner)
    left = []
    for idle, pool in pools:  # back to STEADY_IDLE for the rest
        if idle > STEADY_IDLE:
            host.stop(pool)
        else:
            left.append(pool)
    host.stop(runner)
    for lines in plan.maps_lines:
        if lines == REFERENCE_MAPS_LINES:
            continue  # measured above, at the same host size
        runner = host.start_runner(lines=lines)
        add(f"refresh_maps_{lines}", STEADY_IDLE, lines, runner)
        host.stop(runner)
    rows.sort(key=lambda row: _refresh_order(row.key, plan))
    return left


def _refresh_order(key: str, plan: Plan) -> int:
    if key.startswith("refresh_idle_"):
        return plan.idle_counts.index(int(key.rsplit("_", 1)[1]))
    lines = int(key.rsplit("_", 1)[1])
    return len(plan.idle_counts) + plan.maps_lines.index(lines)


def daemon_benchmarks(host: Any, plan: Plan, workdir: Path, rows: list[Row],
                      results: dict, baseline: Path | None) -> None:
    from tests.bench import versus
    from tests.bench.detection import KINDS, Latencies, link_trials, runner_trials
    from tests.bench.measure import summarize
    from tests.bench.refresh import measure_refresh
    from tests.bench.scrape import measure_scrape_cpu, measure_scrapes
    from tests.bench.steady import measure_churn, measure_steady
    from tests.harness import Vgpumon, wait_for

    host.start_server()
    runners = [host.start_runner(host.models[i], lines=STEADY_MAPS_LINES)
               for i in range(STEADY_RUNNERS)]
    host.api_loaded = STEADY_RUNNERS
    config = host.vgpumon_config()
    (workdir / "steady").mkdir()
    daemon = Vgpumon(config, workdir / "steady", env=_daemon_env())
    daemons = [daemon]
    try:
        if baseline is not None:  # the same host, the same window, another version
            (workdir / "baseline").mkdir()
            events = {"file": str(workdir / "baseline" / "events.jsonl")}
            daemons.append(Vgpumon({**config, "events": events}, workdir / "baseline",
                                   env=_daemon_env(baseline)))
        address = daemon.url.removeprefix("http://")
        for each in daemons:
            wait_for(lambda each=each: each.value("vgpumon_processes", group="runner")
                     == STEADY_RUNNERS and each.value("vgpumon_ollama_up") == 1, 30,
                     message="the steady host")
        time.sleep(min(6.0, plan.steady_seconds))  # past start-up and one timer refresh
        steadies = measure_steady([(d.url.removeprefix("http://"), d.process.pid)
                                   for d in daemons], plan.steady_seconds)
        churns = measure_churn([d.process.pid for d in daemons], plan.churn_processes,
                               [s.cpu_percent for s in steadies])
        for each in daemons[1:]:
            each.stop()
        steady, churn = steadies[0], churns[0]
        results["steady"], results["churn"] = steady.as_dict(), churn.as_dict()
        versus_baseline = {"cpu": "", "rss": "", "churn": ""}
        if baseline is not None:
            results["baseline"] = {"source": str(baseline), "steady": steadies[1].as_dict(),
                                   "churn": churns[1].as_dict()}
            versus_baseline = {
                "cpu": f"; baseline {steadies[1].cpu_percent:.2f} % in the same window",
                "rss": f"; baseline {steadies[1].rss_bytes / 1e6:.1f} MB",
                "churn": f"; baseline {churns[1].cpu_per_process * 1e6:.0f} us"}
        rows.append(Row("steady_cpu", f"vgpumon run CPU, {STEADY_IDLE} idle + {STEADY_RUNNERS} "
                        f"runners, {steady.seconds:.0f} s", steady.cpu_percent, None,
                        "% core", "<= 0.5 %",
                        f"interval 5 s, a scrape every 15 s; the host forked "
                        f"{steady.host_forks_per_second:.1f} processes/s meanwhile"
                        + versus_baseline["cpu"]))
        rows.append(Row("steady_rss", "vgpumon run RSS", steady.rss_bytes / 1e6, None, "MB",
                        "<= 45 MB", f"peak {steady.peak_rss_bytes / 1e6:.1f} MB"
                        + versus_baseline["rss"]))
        rows.append(Row("churn", "vgpumon CPU per process started on the host",
                        churn.cpu_per_process * 1e6, None, "us", "",
                        f"{churn.processes} processes (fork, exec /bin/true, exit) in "
                        f"{churn.seconds:.1f} s, the steady rate subtracted"
                        + versus_baseline["churn"]))

        found = Latencies()
        runner_trials(host, address, plan.runner_trials, found)
        link_trials(host, address, plan.link_trials, found)
        results["detection"] = {
            kind: {"seen": summarize(found.seen[kind]).as_dict(),
                   "visible": summarize(found.visible[kind]).as_dict()} for kind in KINDS}
        for kind, label in (("start", "runner start"), ("exit", "runner exit (SIGKILL)"),
                            ("library_load", "library load (late ggml-cuda)"),
                            ("link_swap", "shim link swap (ln -sf)")):
            seen, visible = summarize(found.seen[kind]), summarize(found.visible[kind])
            rows.append(Row(f"detect_{kind}", f"detection latency, {label}",
                            visible.median * 1e3, visible.p99 * 1e3, "ms", "",
                            f"{seen.n} trials, until visible at /events; the event's ts: "
                            f"p50 {seen.median * 1e3:.1f} / p99 {seen.p99 * 1e3:.1f} ms"))
    finally:
        for each in daemons:
            each.stop()
    versus_benchmarks(host, plan, workdir, rows, results,
                      expect={"server": 1, "runner": STEADY_RUNNERS},
                      measure_refresh=measure_refresh, versus=versus)

    runners += [host.start_runner(host.models[i], lines=STEADY_MAPS_LINES)
                for i in range(STEADY_RUNNERS, SCRAPE_RUNNERS)]
    host.api_loaded = SCRAPE_MODELS
    (workdir / "scrape").mkdir()
    daemons = [Vgpumon(config, workdir / "scrape", env=_daemon_env())]
    try:
        if baseline is not None:
            (workdir / "scrape-baseline").mkdir()
            events = {"file": str(workdir / "scrape-baseline" / "events.jsonl")}
            daemons.append(Vgpumon({**config, "events": events}, workdir / "scrape-baseline",
                                   env=_daemon_env(baseline)))
        host.write_log(SCRAPE_MODELS)

        def ready(daemon: Vgpumon) -> bool:
            metrics = daemon.metrics()
            layers = [k for k in metrics if k[0] == "vgpumon_ollama_model_gpu_layers"]
            return (metrics.get(("vgpumon_processes", (("group", "runner"),))) == SCRAPE_RUNNERS
                    and len(layers) == SCRAPE_MODELS)

        for daemon in daemons:
            wait_for(partial(ready, daemon), 30, message="8 runners and 20 models in /metrics")
        # One daemon at a time: each is CPU-bound while scraped back to back.
        costs = [measure_scrapes(d.url.removeprefix("http://"), d.process.pid,
                                 plan.scrape_rounds) for d in daemons]
        cpus = [measure_scrape_cpu(d.url.removeprefix("http://"), d.process.pid,
                                   plan.scrape_rounds) for d in daemons]
        cost, cpu = costs[0], cpus[0]
        results["scrape"] = {"runners": SCRAPE_RUNNERS, "models": SCRAPE_MODELS,
                             "links": len(config["links"]), **cost.as_dict(),
                             "unchanged": cpu.as_dict()}
        versus_baseline = {"latency": "", "cpu": ""}
        if baseline is not None:
            results["baseline"]["scrape"] = {**costs[1].as_dict(), "unchanged": cpus[1].as_dict()}
            versus_baseline = {
                "latency": f"; baseline p50 {costs[1].latency.median * 1e3:.2f} / p99 "
                           f"{costs[1].latency.p99 * 1e3:.2f} ms",
                "cpu": f"; baseline {cpus[1].cpu_per_scrape * 1e3:.3f} ms"}
        rows.append(Row("scrape", f"/metrics scrape latency, {SCRAPE_RUNNERS} runners, "
                        f"{SCRAPE_MODELS} models, {len(config['links'])} links",
                        cost.latency.median * 1e3, cost.latency.p99 * 1e3, "ms",
                        "p99 <= 10 ms",
                        f"{cost.latency.median / cost.floor.median:.1f}x /healthz "
                        f"({cost.floor.median * 1e3:.2f} ms); {cost.samples} samples, "
                        f"OpenMetrics+gzip; daemon CPU {cost.cpu_per_scrape * 1e3:.2f} ms "
                        f"per scrape" + versus_baseline["latency"]))
        rows.append(Row("scrape_cpu", "daemon CPU per /metrics scrape, unchanged snapshot",
                        cpu.cpu_per_scrape * 1e3, None, "ms", "<= 0.3 ms",
                        f"{cpu.rounds} scrapes back to back over one keep-alive connection, "
                        f"OpenMetrics+gzip, {cost.samples} samples; latency p50 "
                        f"{cpu.latency.median * 1e3:.2f} ms; CPU from {cpu.meter}"
                        + versus_baseline["cpu"]))
    finally:
        for daemon in daemons:
            daemon.stop()
    for runner in runners:
        host.stop(runner)


def _daemon_env(source: Path | None = None) -> dict[str, str]:
    # The measured source (--source, or `source`) first; `python -m` would put the current
    # directory (this checkout) before it, PYTHONSAFEPATH keeps it out.
    path = os.pathsep.join([str(source), str(REPO)]) if source else os.environ["PYTHONPATH"]
    return {"PYTHONPATH": path, "PYTHONSAFEPATH": "1"}


def versus_benchmarks(host: Any, plan: Plan, workdir: Path, rows: list[Row], results: dict, *,
                      expect: dict[str, int], measure_refresh: Any, versus: Any) -> None:
    if versus.install() is None:
        results["versus"] = {"skipped": f"{versus.BINARY} is not installed"}
        rows.append(Row("versus", "vgpumon / process-exporter CPU", None, note=(
            f"skipped: {versus.BINARY} missing (apt-get install {versus.BINARY})")))
        return
    refresh = measure_refresh(host.vgpumon_config(), plan.versus_scrapes,
                              expect_tracked=sum(expect.values()))
    section: dict[str, Any] = {"vgpumon_refresh": refresh.as_dict(), "expect": expect}
    results["versus"] = section
    # What one refresh costs on average in the daemon: every 6th reads all maps (30 s at the
    # default 5 s interval), the others skip the unchanged ones.
    reread_every = 6
    mean = (refresh.full.mean + (reread_every - 1) * refresh.cpu.mean) / reread_every
    section["vgpumon_refresh_mean"] = mean
    rows.append(Row("versus_vgpumon", "vgpumon CPU per full refresh (same host)",
                    refresh.cpu.median * 1e3, refresh.cpu.p99 * 1e3, "ms", "",
                    f"maps read in full: p50 {refresh.full.median * 1e3:.2f} ms; mean over a "
                    f"30 s cycle {mean * 1e3:.2f} ms"))
    for variant in versus.VARIANTS:
        cost = versus.measure_process_exporter(host.process_exporter_config(), workdir, variant,
                                               plan.versus_scrapes, expect)
        ratio = mean / cost.cpu_per_scrape if cost.cpu_per_scrape else float("nan")
        section[variant] = {**cost.as_dict(), "ratio": ratio}
        flags = " ".join(cost.args) or "its defaults"
        rows.append(Row(f"versus_{variant}", f"process-exporter CPU per scrape ({flags})",
                        cost.cpu_per_scrape * 1e3, None, "ms", "",
                        f"scrape latency p50 {cost.latency.median * 1e3:.1f} ms"))
        rows.append(Row(f"ratio_{variant}", f"ratio vgpumon refresh / process-exporter scrape "
                        f"({variant})", ratio, None, "x", "<= 0.5",
                        f"mean CPU over mean CPU, same host, same groups; with every maps "
                        f"read: {refresh.full.mean / cost.cpu_per_scrape:.2f}x"))


# -- reporting ---------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def source_info(source: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"path": str(source), "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "vgpumon"))}


def render(rows: list[Row], results: dict) -> str:
    info = results["machine"]
    lines = [f"vgpumon benchmarks — {info['date']}, {info['cpu']} ({info['cpus']} CPUs), "
             f"Linux {info['kernel']}, Python {info['python']}, source {results['source']['path']}"
             f"{' @' + results['source']['commit'] if results['source']['commit'] else ''}"
             f"{' (quick)' if results['quick'] else ''}", ""]
    header = ("benchmark", "median", "p99", "target", "note")
    table = [header] + [(row.label, _fmt(row.median, row.unit), _fmt(row.p99, row.unit),
                         row.target, row.note) for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for number, row in enumerate(table):
        lines.append("  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]),
                                row[2].rjust(widths[2]), row[3].ljust(widths[3]), row[4]]))
        if number == 0:
            lines.append("-" * (sum(widths) + 8 + len(header[4])))
    return "\n".join(lines)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "us":
        return f"{value:.0f} us" if value >= 10 else f"{value:.1f} us"
    if unit == "threads":
        return f"{value:.0f}"
    return f"{value:.2f} {unit}"


if __name__ == "__main__":
    sys.exit(main())
