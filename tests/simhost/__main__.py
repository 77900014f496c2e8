"""`python3 -m tests.simhost demo --era F --root DIR`: a simulated Ollama host to look at.

Builds the host under DIR, starts `ollama serve`, loads a model, writes a vgpumon config for
it (DIR/vgpumon.yaml; JSON is YAML) and keeps running until Ctrl-C, optionally crashing the
runner every few seconds so a dashboard has something to show.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import threading
from pathlib import Path

from .eras import DEFAULT_VERSIONS
from .host import CRASH_MODES, SCENARIOS, SimHost, SimHostError


def _prepare(root: Path) -> None:
    if not root.exists():
        return
    if (root / ".simhost" / "host.json").exists():
        shutil.rmtree(root)  # a host from an earlier demo: start afresh
    elif any(root.iterdir()):
        sys.exit(f"{root} exists and is not an earlier simulated host; choose another --root")
    else:
        root.rmdir()


def demo(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    _prepare(root)
    host = SimHost.create(root.parent, era=args.era, version=args.version, name=root.name,
                          shim_links=not args.no_shim_links)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        host.add_model(args.model, layers=args.layers)
        server = host.start_server(preload_shims=not args.no_preload,
                                   gpus=0 if args.cpu_only else None)
        runner = server.load_model(args.model, args.scenario)
        config = root / "vgpumon.yaml"
        config.write_text(json.dumps(host.vgpumon_config(listen=args.listen), indent=2) + "\n")
        print(f"era {host.era.name} (Ollama {host.era.version}) under {root}\n"
              f"  ollama serve  pid {server.pid}  {server.url}\n"
              f"  runner        pid {runner.pid}  {' '.join(runner.argv)}\n"
              f"  log           {host.log_file}\n"
              f"  vgpumon       vgpumon run --config {config}\n"
              "Ctrl-C to stop.", flush=True)
        while not stop.wait(args.crash_every or 3600):
            if args.crash_every:
                dead = server.crash_runner(args.model, args.crash_mode)
                print(f"crashed runner {dead.pid}: {dead.exit_text}", flush=True)
                runner = server.load_model(args.model, args.scenario)
                print(f"new runner {runner.pid}", flush=True)
    except KeyboardInterrupt:
        pass
    except SimHostError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        host.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tests.simhost")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run a simulated Ollama host until Ctrl-C")
    d.add_argument("--era", default="F", choices=sorted(DEFAULT_VERSIONS))
    d.add_argument("--version", help="an Ollama version inside the era")
    d.add_argument("--root", required=True, help="directory for the simulated host")
    d.add_argument("--model", default="llama3.2:latest")
    d.add_argument("--layers", type=int, default=29)
    d.add_argument("--scenario", default="full_offload", choices=SCENARIOS)
    d.add_argument("--listen", default="127.0.0.1:9842", help="vgpumon's listen address")
    d.add_argument("--no-preload", action="store_true", help="no shims in LD_PRELOAD")
    d.add_argument("--no-shim-links", action="store_true", help="libcuda.so.1 -> real driver")
    d.add_argument("--cpu-only", action="store_true", help="discovery finds no GPU")
    d.add_argument("--crash-every", type=float, default=0, metavar="SECONDS")
    d.add_argument("--crash-mode", default="sigsegv",
                   choices=[m for m in CRASH_MODES if m != "oom"] + ["exit:1"])
    args = p.parse_args(argv)
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())
