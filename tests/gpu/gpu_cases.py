"""The real-GPU cases: llama-server as the rig runs it, vgpumon beside it, checks in a table.

Run by tests/gpu/run_on_gpu.sh on the GPU machine after the rig built llama-server, the shim
and the tiny model under /tmp/vgpurig. Each case gets a directory with the server's log, the
config, /metrics, /events, /state, the doctor's report and the checks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import Vgpumon, parse_metrics, stop_process, wait_for  # noqa: E402

RIG = Path(os.environ.get("RIG_W", "/tmp/vgpurig"))
BIN = RIG / "build" / "bin"
SHIM = RIG / "shim"
MODEL = REPO / "tests" / "gpu" / "rig" / "src" / "tiny.gguf"
CLOSED_PORT = 9  # discard: nothing listens; vgpumon_ollama_up is 0, as expected here


@dataclass
class Case:
    name: str
    ngl: int
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ("-lv", "4")  # Ollama runs llama-server with --log-verbosity 4
    expect_crash: bool = False
    shim: str = "libvgpu-cuda.so"  # the shim file the process loads, under the rig's shim dir
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, what: str, ok: bool, detail: object = "") -> None:
        self.checks.append((what, bool(ok), str(detail)[:300]))


def real_driver() -> str:
    return (SHIM / "realcuda").read_text().strip()


def config_for(case_dir: Path, log: Path, shim: str) -> dict:
    return {
        "listen": "127.0.0.1:0",
        "interval": "2s",
        "libraries": {
            "vgpu-cuda": {"path": str(SHIM / shim)},
            "ggml-cuda": {"name": "libggml-cuda.so*"},
            "cuda-driver": {"name": "libcuda.so.*", "driver": True},
        },
        "shims": ["vgpu-cuda"],
        "links": [{"path": str(SHIM / "sym" / "libcuda.so.1"),
                   "target": str(SHIM / "sym" / "libvgpu-cuda.so")}],
        "groups": {"runner": {"cmdline": "llama-server", "expect": ["vgpu-cuda", "ggml-cuda"]}},
        "ollama": {"url": f"http://127.0.0.1:{CLOSED_PORT}", "timeout": "500ms",
                   "log": {"file": str(log)}, "models_dir": str(case_dir / "no-models")},
        "events": {"file": str(case_dir / "events.jsonl")},
        "crash_loop": {"crashes": 3, "window": "10m"},
        "nvml": "auto",
    }


def health(port: int, pid: int, timeout: float = 90) -> bool:
    def ready() -> bool:
        if not alive(pid):
            raise RuntimeError("llama-server exited while loading")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(ready, timeout, interval=0.2, message="llama-server /health")
    except (AssertionError, RuntimeError):
        return False
    return True


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def value(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


def logged_offload(log: Path) -> tuple[int, int] | None:
    found = re.findall(r"offloaded (\d+)/(\d+) layers to GPU", log.read_text(errors="replace"))
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def run_case(case: Case, out: Path, port: int) -> None:
    d = out / case.name
    d.mkdir(parents=True, exist_ok=True)
    log = d / "server.log"
    log.touch()
    config = config_for(d, log, case.shim)
    daemon = Vgpumon(config, d, env={"PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))})
    argv = [str(BIN / "llama-server"), "-m", str(MODEL), "-ngl", str(case.ngl), "--host",
            "127.0.0.1", "--port", str(port), "-c", "512", "-np", "1", *case.args]
    (d / "command.txt").write_text(" ".join(f"{k}={v}" for k, v in case.env.items()) + " "
                                   + " ".join(argv) + "\n")
    with open(log, "ab") as handle:
        server = subprocess.Popen(argv, env={**os.environ, **case.env}, stdout=handle,
                                  stderr=handle, stdin=subprocess.DEVNULL,
                                  preexec_fn=no_core_dumps)
    try:
        if case.expect_crash:
            server.wait(timeout=60)
        else:
            ready = health(port, server.pid)
            case.check("llama-server became ready", ready)
            daemon.wait_value("vgpumon_processes", 1, timeout=15, group="runner")
            with contextlib.suppress(AssertionError):  # the evaluator says what is missing
                wait_for(lambda: logged_offload(log) is not None, 30,
                         message="the offload line")
            collect(daemon, d, "running")
            doctor(d)
        evaluate(case, daemon, d, log, server)
    finally:
        stop_process(server, timeout=15)
        collect(daemon, d, "final")
        daemon.stop()
        (d / "vgpumon.log").write_text(daemon.log_text())
        (d / "checks.json").write_text(json.dumps(case.checks, indent=1))


def no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def collect(daemon: Vgpumon, d: Path, tag: str) -> None:
    for path, name in (("/metrics", "metrics"), ("/events", "events"), ("/state", "state")):
        try:
            (d / f"{name}_{tag}.txt").write_bytes(daemon.get(path))
        except OSError as err:
            (d / f"{name}_{tag}.txt").write_text(f"error: {err}\n")


def doctor(d: Path) -> None:
    config = d / "vgpumon.yaml"
    result = subprocess.run([sys.executable, "-m", "vgpumon", "doctor", "--json", "--config",
                             str(config)], capture_output=True, text=True, timeout=120,
                            env=os.environ.copy())
    (d / "doctor.json").write_text(result.stdout)
    (d / "doctor_stderr.txt").write_text(f"exit {result.returncode}\n{result.stderr}")


def evaluate(case: Case, daemon: Vgpumon, d: Path, log: Path,
             server: subprocess.Popen[bytes]) -> None:
    EVALUATORS[case.name](case, daemon, d, log, server)


def metrics_of(daemon: Vgpumon) -> dict:
    return parse_metrics(daemon.get("/metrics").decode())


def check_offload(case: Case, daemon: Vgpumon, log: Path, expect_all: bool | None) -> None:
    logged = logged_offload(log)
    model = MODEL.name

    def offload_seen():
        m = metrics_of(daemon)
        got = (value(m, "vgpumon_ollama_model_gpu_layers", model=model),
               value(m, "vgpumon_ollama_model_layers", model=model))
        return got if got[0] is not None and got[1] is not None else None

    try:
        got = wait_for(offload_seen, 15, message="model layer metrics")
    except AssertionError:
        got = None
    case.check("offload line in the runner's log", logged is not None, logged)
    case.check("vgpumon model_gpu_layers/model_layers = the log's N/M",
               got is not None and logged is not None and got == (float(logged[0]),
                                                                   float(logged[1])),
               f"vgpumon {got} log {logged}")
    if expect_all is True:
        case.check("model_gpu_layers == model_layers", got is not None and got[0] == got[1], got)
    elif expect_all is False and got is not None:
        case.check("model_gpu_layers < model_layers", got[0] < got[1], got)


def expect(case: Case, daemon: Vgpumon, what: str, name: str, wanted: float,
           timeout: float = 10, **labels: str) -> None:
    """Check that the metric reaches `wanted` (it may take a refresh or an event to get
    there: a CUDA context is created, a library dlopened, after the process started)."""
    def reached() -> bool:
        return value(metrics_of(daemon), name, **labels) == wanted

    try:
        wait_for(reached, timeout, interval=0.1, message=what)
        case.check(what, True)
    except AssertionError:
        case.check(what, False, f"{name}{labels} = "
                                f"{value(metrics_of(daemon), name, **labels)}, wanted {wanted}")


def common_running(case: Case, daemon: Vgpumon) -> None:
    expect(case, daemon, "runner present", "vgpumon_processes", 1, group="runner")
    expect(case, daemon, "ggml-cuda mapped", "vgpumon_processes_with_library", 1,
           group="runner", library="ggml-cuda")


def eval_full(case, daemon, d, log, server):
    common_running(case, daemon)
    check_offload(case, daemon, log, expect_all=True)
    expect(case, daemon, "holds a CUDA context (/dev/nvidia* mapped)",
           "vgpumon_processes_with_gpu_device", 1, group="runner")
    expect(case, daemon, "no shim: bypassing_shim == 1", "vgpumon_processes_bypassing_shim",
           1, group="runner")

    def memory() -> float | None:
        used = value(metrics_of(daemon), "vgpumon_process_gpu_memory_bytes", group="runner")
        return used if used else None

    try:
        used = wait_for(memory, 15, interval=0.2, message="NVML memory")
    except AssertionError:
        used = None
    case.check("NVML: runner GPU memory > 0", used is not None and used > 0, used)


def eval_partial(case, daemon, d, log, server):
    common_running(case, daemon)
    check_offload(case, daemon, log, expect_all=False)


def eval_cpu(case, daemon, d, log, server):
    common_running(case, daemon)
    check_offload(case, daemon, log, expect_all=None)
    got = value(metrics_of(daemon), "vgpumon_ollama_model_gpu_layers", model=MODEL.name)
    case.check("model_gpu_layers == 0", got == 0, got)


def eval_no_visible_gpu(case, daemon, d, log, server):
    expect(case, daemon, "ggml-cuda mapped", "vgpumon_processes_with_library", 1,
           group="runner", library="ggml-cuda")
    expect(case, daemon, "real driver mapped", "vgpumon_processes_with_library", 1,
           group="runner", library="cuda-driver")
    time.sleep(3)  # give a CUDA context time to appear, so its absence means something
    expect(case, daemon, "but no CUDA context (no /dev/nvidia* mapping)",
           "vgpumon_processes_with_gpu_device", 0, group="runner")
    try:
        event = daemon.wait_event("cuda_init_failed", timeout=10)
    except AssertionError:
        event = None
    case.check("cuda_init_failed seen in the log", event is not None, event)


def eval_preload(case, daemon, d, log, server):
    common_running(case, daemon)
    expect(case, daemon, "shim mapped (LD_PRELOAD)", "vgpumon_processes_with_library", 1,
           group="runner", library="vgpu-cuda")
    expect(case, daemon, "not bypassing", "vgpumon_processes_bypassing_shim", 0,
           group="runner")


def eval_symlink(case, daemon, d, log, server):
    common_running(case, daemon)
    expect(case, daemon, "shim mapped (through libcuda.so.1 -> libvgpu-cuda.so)",
           "vgpumon_processes_with_library", 1, group="runner", library="vgpu-cuda")
    expect(case, daemon, "real driver mapped too (the shim forwards to it)",
           "vgpumon_processes_with_library", 1, group="runner", library="cuda-driver")
    expect(case, daemon, "not bypassing", "vgpumon_processes_bypassing_shim", 0,
           group="runner")
    expect(case, daemon, "link state ok", "vgpumon_shim_link_state", 1,
           path=str(SHIM / "sym" / "libcuda.so.1"), state="ok", view="host")


def eval_kill_segv(case, daemon, d, log, server):
    common_running(case, daemon)
    pid = server.pid
    os.kill(pid, signal.SIGSEGV)
    server.wait(timeout=30)
    event = daemon.wait_event("process_exited", timeout=10, match=lambda e: e["pid"] == pid)
    case.check("one crash: reason crash, signal SIGSEGV",
               (event["reason"], event.get("signal")) == ("crash", "SIGSEGV"), event)
    expect(case, daemon, "crashes_total == 1", "vgpumon_process_crashes_total", 1,
           group="runner")


def eval_shim_crash(case, daemon, d, log, server):
    pid = server.pid
    case.check("llama-server died by SIGSEGV", server.returncode == -signal.SIGSEGV,
               server.returncode)
    try:
        event = daemon.wait_event("process_exited", timeout=10,
                                  match=lambda e: e["pid"] == pid)
    except AssertionError:
        event = {}
    case.check("one crash: reason crash", event.get("reason") == "crash", event)
    case.check("attributed to libvgpu-cuda.so (kernel log)",
               event.get("library") == "libvgpu-cuda.so", event)


EVALUATORS: dict[str, Callable] = {
    "gpu_full_ngl99": eval_full,
    "gpu_partial_ngl2": eval_partial,
    "cpu_ngl0": eval_cpu,
    "cpu_ngl0_no_visible_gpu": eval_no_visible_gpu,
    "shim_preload_ngl99": eval_preload,
    "shim_symlink_ngl99": eval_symlink,
    "crash_kill_segv": eval_kill_segv,
    "crash_real_segv_in_shim": eval_shim_crash,
}


def cases() -> list[Case]:
    return [
        Case("gpu_full_ngl99", 99),
        Case("gpu_partial_ngl2", 2),
        Case("cpu_ngl0", 0),
        Case("cpu_ngl0_no_visible_gpu", 0, {"CUDA_VISIBLE_DEVICES": ""}),
        Case("shim_preload_ngl99", 99, {"LD_PRELOAD": str(SHIM / "libvgpu-cuda.so")}),
        Case("shim_symlink_ngl99", 99, {"LD_LIBRARY_PATH": str(SHIM / "sym"),
                                        "VGPU_SHIM_REAL_LIBCUDA": real_driver()},
             shim="sym/libvgpu-cuda.so"),
        Case("crash_kill_segv", 99),
        Case("crash_real_segv_in_shim", 99, {"LD_PRELOAD": str(SHIM / "libvgpu-cuda.so"),
                                             "VGPU_SHIM_CRASH": "cuDeviceGetAttribute"},
             expect_crash=True),
    ]


def environment(out: Path) -> dict[str, str]:
    def run(command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except OSError as err:
            return f"({err})"

    facts = {
        "gpu": run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                    "--format=csv,noheader"]),
        "cuda": (run(["nvcc", "--version"]).splitlines() or [""])[-1],
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "llama_server": run([str(BIN / "llama-server"), "--version"])[:200],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    (out / "environment.json").write_text(json.dumps(facts, indent=1))
    return facts


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("cases", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/vgpumon-gpu")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    facts = environment(work)
    selected = [c for c in cases() if not args.cases or c.name in args.cases]
    started = time.monotonic()
    for index, case in enumerate(selected):
        print(f"== {case.name}", flush=True)
        try:
            run_case(case, work, 18300 + index)
        except Exception as err:  # one broken case must not hide the others' results
            case.check("case ran to the end", False, f"{type(err).__name__}: {err}")
        for what, ok, detail in case.checks:
            print(f"   {'PASS' if ok else 'FAIL'}  {what}  {detail if not ok else ''}", flush=True)
    table = [f"vgpumon on a real GPU: {facts['gpu']} | {facts['cuda']} | kernel "
             f"{facts['kernel']} | {facts['date']} | {time.monotonic() - started:.0f} s", ""]
    table += ["| case | check | result |", "|---|---|---|"]
    failed = 0
    for case in selected:
        for what, ok, detail in case.checks:
            failed += not ok
            table.append(f"| {case.name} | {what} | {'PASS' if ok else 'FAIL: ' + detail} |")
    (out / "gpu_table.txt").write_text("\n".join(table) + "\n")
    (work / "gpu_table.txt").write_text("\n".join(table) + "\n")
    with tarfile.open(out / "gpu_results.tgz", "w:gz") as archive:
        archive.add(work, arcname="gpu")
    print("\n".join(table))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
