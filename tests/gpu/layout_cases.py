"""The preload layouts of real vGPU hosts, on the real GPU, with vgpumon's default config.

Run by tests/gpu/run_on_gpu.sh after gpu_cases.py, on the GPU machine, as root: it installs an
Ollama 0.30-like host (tests/gpu/rig/ollama_serve.c as /usr/local/bin/ollama, the rig's
llama-server and libraries under /usr/local/lib/ollama with the CUDA backend in cuda_v13), the
shims under /usr/lib64 (the rig's forwarding libvgpu-cuda.so, and stand-ins for the other three)
and a link /usr/local/lib/ollama/cuda_v13/libcuda.so.1. For each layout it starts `ollama
serve`, which starts a real CUDA llama-server as its runner, and `vgpumon run` whose config is
the built-in default but for `links:` (this host's link) and where the Ollama API and log are.
A tiny Ollama API answers /api/version with 0.30.0, so the era is known.

Each case saves /metrics, /events, /state and `vgpumon doctor --json` and checks vgpumon's
verdict against the truth: the shim logs the first call of each driver function it intercepts,
so the runner's CUDA runtime went through the shim exactly when the shim logged
`cuGetProcAddress_v2` (cudart looks up the whole driver API through it, on the handle that
`dlopen("libcuda.so.1")` returned). The saved scrapes can then be judged by the shipped alert
rules with tests/gpu/alerts_on_scrapes.py (promtool, on a machine that has it).

The rig builds llama.cpp with `GGML_BACKEND_DL`, as Ollama does: the runner dlopens its CUDA
backend from `GGML_BACKEND_PATH` after every preload's constructor ran, so a preloaded
forwarding shim that loads the real driver at start, without carrying its SONAME, is shadowed
by it (`four_preloaded_shadowed`: glibc hands the real driver to `dlopen("libcuda.so.1")`).
A build that links the backend resolves `libcuda.so.1` at program load, before the
constructors, and is not shadowed; Ollama ships no such build (tests/gpu/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.gpu.gpu_cases import (  # noqa: E402
    MODEL,
    RIG,
    SHIM,
    alive,
    collect,
    doctor,
    logged_offload,
    metrics_of,
    real_driver,
)
from tests.harness import Vgpumon, stop_process, wait_for  # noqa: E402

BIN = RIG / "build" / "bin"
LIB = Path("/usr/local/lib/ollama")
CUDA_DIR = LIB / "cuda_v13"
LINK = CUDA_DIR / "libcuda.so.1"
SHIMS = Path("/usr/lib64")
OLLAMA = Path("/usr/local/bin/ollama")
API_PORT = 18434
RUNNER_PORT = 18401
STAND_INS = {"libvgpu-exec.so": "libvgpu-exec.so", "libvgpu-nvml.so": "libvgpu-nvml.so",
             "libvgpu-cudart.so": "libvgpu-cudart.so"}
ALL_FOUR = ("libvgpu-exec.so", "libvgpu-cuda.so", "libvgpu-nvml.so", "libvgpu-cudart.so")


@dataclass
class Layout:
    name: str
    preload: tuple[str, ...]
    cuda_soname: str  # the SONAME of /usr/lib64/libvgpu-cuda.so in this layout
    link_to_real: bool  # the cuda_v13 link points at the real driver instead of the shim
    expect_bypass: bool
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, what: str, ok: bool, detail: object = "") -> None:
        self.checks.append((what, bool(ok), str(detail)[:400]))


def layouts() -> list[Layout]:
    return [
        Layout("exec_preload_links", ("libvgpu-exec.so",), "libvgpu-cuda.so", False, False),
        Layout("exec_preload_links_to_real", ("libvgpu-exec.so",), "libvgpu-cuda.so", True,
               True),
        Layout("links_only", (), "libvgpu-cuda.so", False, False),
        Layout("four_preloaded_soname", ALL_FOUR, "libcuda.so.1", False, False),
        Layout("four_preloaded_soname_links_to_real", ALL_FOUR, "libcuda.so.1", True, False),
        Layout("four_preloaded_shadowed", ALL_FOUR, "libvgpu-cuda.so", False, True),
    ]


def run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True)


def install(work: Path) -> None:
    """The Ollama-like install, the server stand-in, the shims (both SONAMEs)."""
    CUDA_DIR.mkdir(parents=True, exist_ok=True)
    SHIMS.mkdir(parents=True, exist_ok=True)
    for item in BIN.iterdir():
        if item.name == "llama-server" or ".so" in item.name:
            target = CUDA_DIR if item.name.startswith("libggml-cuda") else LIB
            shutil.copy2(item, target / item.name, follow_symlinks=False)
    run(["gcc", "-O2", "-Wall", "-o", str(OLLAMA), str(REPO / "tests/gpu/rig/ollama_serve.c")])
    stub = work / "stub.c"
    stub.write_text("int vgpu_stand_in(void) { return 0; }\n")
    for name, soname in STAND_INS.items():
        run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(SHIMS / name),
             str(stub)])
    source = REPO / "tests/gpu/rig/shim/vgpu_shim.c"
    for soname in ("libvgpu-cuda.so", "libcuda.so.1"):
        run(["gcc", "-shared", "-fPIC", "-O2", f"-Wl,-soname,{soname}", "-o",
             str(work / f"cuda-shim-{soname}"), str(source), str(SHIM / "fwd.c"), "-ldl"])


def arrange(layout: Layout, work: Path) -> None:
    shutil.copy2(work / f"cuda-shim-{layout.cuda_soname}", SHIMS / ".libvgpu-cuda.so.new")
    os.replace(SHIMS / ".libvgpu-cuda.so.new", SHIMS / "libvgpu-cuda.so")
    with contextlib.suppress(FileNotFoundError):
        LINK.unlink()
    LINK.symlink_to(real_driver() if layout.link_to_real else SHIMS / "libvgpu-cuda.so")


class OllamaApi(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = {"/api/version": {"version": "0.30.0"}, "/api/ps": {"models": []}}.get(
            self.path.split("?")[0])
        data = json.dumps(body if body is not None else {"error": "not found"}).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def config_for(d: Path, log: Path) -> dict:
    return {
        "listen": "127.0.0.1:0",
        "interval": "2s",
        "links": [{"path": str(LINK), "target": str(SHIMS / "libvgpu-cuda.so")}],
        "ollama": {"url": f"http://127.0.0.1:{API_PORT}", "log": {"file": str(log)},
                   "models_dir": str(d / "no-models")},
        "events": {"file": str(d / "events.jsonl")},
    }


def total(metrics: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and wanted <= set(ls))


def run_layout(layout: Layout, work: Path) -> None:
    d = work / layout.name
    d.mkdir(parents=True, exist_ok=True)
    arrange(layout, work)
    log = d / "server.log"
    log.touch()
    env = {**os.environ, "RIG_MODEL": str(MODEL), "RIG_PORT": str(RUNNER_PORT),
           "VGPU_SHIM_REAL_LIBCUDA": real_driver()}
    if layout.preload:
        env["LD_PRELOAD"] = ":".join(str(SHIMS / name) for name in layout.preload)
    (d / "layout.json").write_text(json.dumps({
        "preload": env.get("LD_PRELOAD", ""), "link": os.readlink(LINK),
        "cuda_shim_soname": layout.cuda_soname}, indent=1))
    daemon = Vgpumon(config_for(d, log), d,
                     env={"PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))})
    with open(log, "ab") as handle:
        server = subprocess.Popen([str(OLLAMA), "serve"], env=env, stdout=handle, stderr=handle,
                                  stdin=subprocess.DEVNULL)
    try:
        layout.check("runner offloaded its layers (real CUDA)",
                     _offloaded(log, server.pid), logged_offload(log))
        with contextlib.suppress(AssertionError):
            daemon.wait_value("vgpumon_processes_with_gpu_device", 1, timeout=20,
                              group="runner")
        time.sleep(5)  # two refreshes after the CUDA context: a late finding has its chance
        collect(daemon, d, "running")
        doctor(d)
        evaluate(layout, daemon, d)
    finally:
        stop_process(server, timeout=15)
        daemon.stop()
        (d / "vgpumon.log").write_text(daemon.log_text())
        (d / "checks.json").write_text(json.dumps(layout.checks, indent=1))


def _offloaded(log: Path, pid: int) -> bool:
    try:
        wait_for(lambda: logged_offload(log) is not None or not alive(pid), 90, interval=0.2)
    except AssertionError:
        return False
    return logged_offload(log) is not None


def evaluate(layout: Layout, daemon: Vgpumon, d: Path) -> None:
    m = metrics_of(daemon)
    layout.check("server and runner tracked",
                 (total(m, "vgpumon_processes", group="server"),
                  total(m, "vgpumon_processes", group="runner")) == (1, 1))
    layout.check("runner maps ggml-cuda and holds a CUDA context",
                 total(m, "vgpumon_processes_with_library", group="runner",
                       library="ggml-cuda") == 1
                 and total(m, "vgpumon_processes_with_gpu_device", group="runner") == 1)
    layout.check("no preload failed", total(m, "vgpumon_processes_preload_failed") == 0,
                 total(m, "vgpumon_processes_preload_failed"))
    through_shim = "intercepted cuGetProcAddress_v2" in (d / "server.log").read_text(
        errors="replace")
    layout.check("truth: the runtime's driver path " + ("went around" if layout.expect_bypass
                                                       else "went through") + " the shim",
                 through_shim != layout.expect_bypass)
    bypass = total(m, "vgpumon_processes_bypassing_shim", group="runner")
    layout.check("vgpumon: runner bypasses the shim" if layout.expect_bypass
                 else "vgpumon: runner does not bypass the shim",
                 (bypass >= 1) == layout.expect_bypass, bypass)
    if not layout.expect_bypass:
        missing = {ls: v for (n, ls), v in m.items()
                   if n == "vgpumon_processes_missing_library" and v
                   and dict(ls).get("library", "").startswith("vgpu-")}
        layout.check("no expected shim missing", not missing, missing)
    link_ok = total(m, "vgpumon_shim_link_state", path=str(LINK), state="ok")
    layout.check("link state " + ("not ok" if layout.link_to_real else "ok"),
                 link_ok == (0 if layout.link_to_real else 1), link_ok)
    try:
        report = json.loads((d / "doctor.json").read_text())
    except ValueError as err:
        layout.check("doctor ran", False, err)
        return
    failed = [c["id"] for s in report.get("sections", []) for c in s.get("checks", [])
              if c.get("status") == "fail"]
    if layout.expect_bypass:
        layout.check("doctor fails shims.bypass", "shims.bypass" in failed, failed)
    elif layout.link_to_real:
        layout.check("doctor fails only on the link", failed == ["shims.links"], failed)
    else:
        layout.check("doctor reports no fail", not failed, failed)


def main() -> int:
    out = Path(os.environ.get("OUT", "/tmp/vgpumon-gpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/vgpumon-layouts")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    install(work)
    api = http.server.ThreadingHTTPServer(("127.0.0.1", API_PORT), OllamaApi)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    selected = [x for x in layouts() if len(sys.argv) < 2 or x.name in sys.argv[1:]]
    table = ["| layout | check | result |", "|---|---|---|"]
    failed = 0
    for layout in selected:
        print(f"== {layout.name}", flush=True)
        try:
            run_layout(layout, work)
        except Exception as err:  # one broken layout must not hide the others' results
            layout.check("layout ran to the end", False, f"{type(err).__name__}: {err}")
        for what, ok, detail in layout.checks:
            failed += not ok
            print(f"   {'PASS' if ok else 'FAIL'}  {what}  {detail if not ok else ''}",
                  flush=True)
            table.append(f"| {layout.name} | {what} | {'PASS' if ok else 'FAIL: ' + detail} |")
    api.shutdown()
    (out / "layout_table.txt").write_text("\n".join(table) + "\n")
    subprocess.run(["tar", "czf", str(out / "layout_results.tgz"), "-C", str(work.parent),
                    work.name], check=False)
    print("\n".join(table))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
