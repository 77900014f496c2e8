"""`make demo` (`python3 -m tests.demo`): vgpumon and Prometheus watching a simulated Ollama
host on 127.0.0.1, with something going wrong every half minute, to look at without a GPU.

Starts the simulated host of `tests.simhost` (an `ollama serve` and a model runner that map
the vGPU shims), a `vgpumon run` for it, and Debian's `prometheus` scraping vgpumon with the
alert rules of `dashboards/`. Every `--every` seconds it crashes the runner, flaps a shim
link, loads a model half on the GPU, makes the runner crash-loop or stops Ollama, so alerts
fire and graphs move. Ctrl-C (or `--duration`) stops everything it started and removes its
temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import REPO, Vgpumon, host_config
from tests.prometheus import (
    ALERT_RULES,
    GRAFANA_DASHBOARD,
    Prometheus,
    alert_rules_with_short_for,
    port_is_free,
    scrape_config,
)
from tests.simhost import SimHost
from tests.simhost.eras import DEFAULT_VERSIONS

MODEL = "llama3.2:latest"
SECOND = "qwen2.5:7b"
DEMO_ERAS = sorted(era for era in DEFAULT_VERSIONS if era != "B")


@dataclass
class Demo:
    workdir: Path
    host: SimHost
    server: Any = None
    vgpumon: Vgpumon | None = None
    prometheus: Prometheus | None = None
    link_target: str | None = None

    @property
    def link(self) -> Path:
        return self.host.lib64 / "libcuda.so.1"


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {text}", flush=True)


def _address(requested: str, what: str) -> str:
    """`requested` if its port is free (or 0), else the same host with a free port."""
    host, _, port = requested.rpartition(":")
    if int(port) and not port_is_free(int(port)):
        say(f"{what}: port {port} is taken, using a free one")
        return f"{host}:0"
    return requested


# -- what happens every --every seconds ------------------------------------------------------


def crash_runner(demo: Demo) -> str:
    dead = demo.server.crash_runner(MODEL, mode="sigsegv", library="libvgpu-cuda.so")
    demo.server.load_model(MODEL)
    return (f"runner {dead.pid} crashed ({dead.exit_text}) inside libvgpu-cuda.so and was "
            "loaded again: OllamaProcessCrashed")


def break_link(demo: Demo) -> str:
    demo.link_target = os.readlink(demo.link)
    demo.host.set_link(demo.link, demo.host.real_driver)
    return f"{demo.link} now points at the real driver: VgpuShimLinkBroken (wrong_target)"


def restore_link(demo: Demo) -> str:
    demo.host.set_link(demo.link, demo.link_target or demo.host.shim("cuda").name)
    return f"{demo.link} points at the shim again"


def partial_offload(demo: Demo) -> str:
    demo.server.load_model(SECOND, scenario="partial_offload", gpu_layers=10)
    return f"{SECOND} loaded with 10 of 29 layers on the GPU: OllamaPartialOffload"


def unload_second(demo: Demo) -> str:
    demo.server.unload(SECOND)
    return f"{SECOND} unloaded"


def crash_loop(demo: Demo) -> str:
    for _ in range(3):
        demo.server.load_model(MODEL)
        demo.server.crash_runner(MODEL, mode="kill_segv")
    demo.server.load_model(MODEL)
    return "the runner crashed three times in a row: OllamaCrashLooping"


def stop_ollama(demo: Demo) -> str:
    demo.server.stop()
    return "ollama serve stopped: OllamaAPIDown"


def start_ollama(demo: Demo) -> str:
    demo.server = demo.host.start_server()
    demo.server.load_model(MODEL)
    return f"ollama serve started again (pid {demo.server.pid}), {MODEL} loaded"


ACTIONS: list[Callable[[Demo], str]] = [crash_runner, break_link, restore_link, partial_offload,
                                        unload_second, crash_loop, stop_ollama, start_ollama]


# -- starting and stopping -------------------------------------------------------------------


def start(args: argparse.Namespace, demo: Demo) -> None:
    host = demo.host
    host.add_model(MODEL)
    host.add_model(SECOND)
    demo.server = host.start_server()
    demo.server.load_model(MODEL)
    config = host_config(host, listen=_address(args.listen, "vgpumon"))
    (demo.workdir / "vgpumon").mkdir()
    demo.vgpumon = Vgpumon(config, demo.workdir / "vgpumon")
    if args.no_prometheus:
        return
    if shutil.which("prometheus") is None:
        say("prometheus not found (Debian package 'prometheus'): running without it")
        return
    if args.shipped_for:
        rules = ALERT_RULES
    else:
        rules = demo.workdir / "vgpumon-alerts.yml"
        alert_rules_with_short_for(rules)
    address = _address(args.prometheus_listen, "prometheus")
    port = int(address.rpartition(":")[2]) or None
    target = demo.vgpumon.url.removeprefix("http://")
    demo.prometheus = Prometheus(scrape_config([target], [rules], interval=args.interval),
                                 demo.workdir / "prometheus", port=port)


def banner(args: argparse.Namespace, demo: Demo) -> str:
    host = demo.host
    lines = [
        f"Simulated Ollama {host.era.version} (era {host.era.name}) under {demo.workdir}",
        f"  ollama serve   pid {demo.server.pid}  {demo.server.url}",
        f"  vgpumon        pid {demo.vgpumon.process.pid}  config {demo.vgpumon.config_path}",
        f"    {demo.vgpumon.url}/          state at a glance",
        f"    {demo.vgpumon.url}/metrics   what Prometheus scrapes",
        f"    {demo.vgpumon.url}/events    what happened, as JSON",
    ]
    prometheus = demo.prometheus
    if prometheus is not None:
        shortened = ("" if args.shipped_for else
                     " (alert `for:` shortened to seconds; --shipped-for keeps them)")
        lines += [
            f"  prometheus     pid {prometheus.process.pid}  scrapes every {args.interval}"
            + shortened,
            f"    {prometheus.url}/alerts",
            f"    {prometheus.url}/graph?g0.expr=vgpumon_processes&g0.tab=0",
            f"    {prometheus.url}/targets",
            "",
            "A Grafana of your own? Import the dashboard (Dashboards > New > Import > Upload",
            f"{GRAFANA_DASHBOARD.relative_to(REPO)}) and pick a Prometheus data source for",
            f"{prometheus.url}, or with Grafana's API (admin:admin on :3000 here):",
            "  curl -su admin:admin -H 'Content-Type: application/json' "
            "localhost:3000/api/datasources \\",
            f"    -d '{{\"name\": \"vgpumon-demo\", \"type\": \"prometheus\", "
            f"\"url\": \"{prometheus.url}\", \"access\": \"proxy\"}}'",
            "  { printf '{\"overwrite\": true, \"dashboard\": '; "
            f"cat {GRAFANA_DASHBOARD.relative_to(REPO)}; echo '}}'; }} |",
            "    curl -su admin:admin -H 'Content-Type: application/json' "
            "localhost:3000/api/dashboards/db -d @-",
        ]
    lines += ["", f"Every {args.every:g} s something goes wrong. Ctrl-C stops everything."]
    return "\n".join(lines)


def stop(demo: Demo) -> list[str]:
    """Stop everything, in reverse order; the problems met on the way."""
    problems = []
    for name, action in (("prometheus", demo.prometheus and demo.prometheus.stop),
                         ("vgpumon", demo.vgpumon and demo.vgpumon.stop),
                         ("simulated host", demo.host.close),
                         ("temporary directory", lambda: shutil.rmtree(demo.workdir))):
        if not action:
            continue
        try:
            action()
        except Exception as err:  # stop the rest all the same
            problems.append(f"{name}: {err}")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    summary = __doc__.split("\n\n")[0].replace("\n", " ")
    p = argparse.ArgumentParser(prog="python3 -m tests.demo", description=summary)
    p.add_argument("--listen", default="127.0.0.1:9842",
                   help="vgpumon's address (a free port if taken; :0 for any)")
    p.add_argument("--prometheus-listen", default="127.0.0.1:9090",
                   help="Prometheus's address (a free port if taken; :0 for any)")
    p.add_argument("--interval", default="5s", help="Prometheus scrape and rule interval")
    p.add_argument("--every", type=float, default=30.0, metavar="SECONDS",
                   help="seconds between two mishaps")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--era", default="F", choices=DEMO_ERAS,
                   help="the Ollama era to imitate (tests/simhost/README.md; not B, whose "
                        "models run inside the server: a runner crash would end it)")
    p.add_argument("--shipped-for", action="store_true",
                   help="keep the alerts' `for:` durations (minutes) as shipped")
    p.add_argument("--no-prometheus", action="store_true", help="vgpumon and the host only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    finished = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: finished.set())
    workdir = Path(tempfile.mkdtemp(prefix="vgpumon-demo-"))
    try:
        demo = Demo(workdir, SimHost.create(workdir, era=args.era, name="host"))
    except BaseException:
        shutil.rmtree(workdir)
        raise
    status = 0
    try:
        start(args, demo)
        print(banner(args, demo), flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        step = 0
        while not finished.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if finished.wait(args.every if left is None else min(args.every, left)):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            action = ACTIONS[step % len(ACTIONS)]
            step += 1
            try:
                say(action(demo))
            except Exception as err:  # the simulation misbehaved: say so and go on
                say(f"{action.__name__} failed: {err}")
    except Exception as err:
        print(f"demo failed: {err}", file=sys.stderr)
        status = 1
    finally:
        say("stopping")
        for problem in stop(demo):
            print(f"while stopping {problem}", file=sys.stderr)
            status = 1
    if status == 0:
        say(f"stopped; {workdir} removed")
    return status


if __name__ == "__main__":
    sys.exit(main())
