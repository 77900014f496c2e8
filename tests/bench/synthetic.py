"""A synthetic Ollama host for the benchmarks: cheap real processes, real files, real links.

Everything lives under one temporary root. Processes are one small C program
(`benchproc.c`) under two names: ``<root>/usr/bin/idler`` forks N sleeping children (the
host's other processes), ``<root>/usr/local/bin/ollama`` is the server (``ollama serve``) and
the runners (``ollama runner --ollama-engine --model <blob> --port N``), each mapping the shims
and a filler file in one-page pieces so that its maps has as many lines as asked;
``<root>/build/benchproc`` itself drives the churn (churn.py). Every process dies when the
benchmark closes its stdin or dies itself (``PR_SET_PDEATHSIG``); `close()` also kills
whatever still runs an executable of the root and waits until none is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PAGE = os.sysconf("SC_PAGESIZE")
SHIMS = ("exec", "cuda", "nvml", "cudart")
REAL_DRIVER = "libcuda.so.575.51.03"
LIBRARY_BYTES = 64 << 10
# (link, its text, the shim it must reach), paths relative to the root; "@" in a text stands for
# the root. The first four are the default links (config/vgpumon.yaml).
LINKS = (
    ("usr/lib64/libcuda.so.1", "libvgpu-cuda.so", "usr/lib64/libvgpu-cuda.so"),
    ("usr/lib64/libcudart.so.12", "libvgpu-cudart.so", "usr/lib64/libvgpu-cudart.so"),
    ("usr/local/lib/ollama/cuda_v12/libcuda.so.1", "@/usr/lib64/libvgpu-cuda.so",
     "usr/lib64/libvgpu-cuda.so"),
    ("usr/local/lib/ollama/cuda_v12/libcudart.so.12.8.90", "@/usr/lib64/libvgpu-cudart.so",
     "usr/lib64/libvgpu-cudart.so"),
    ("usr/lib64/libnvidia-ml.so.1", "libvgpu-nvml.so", "usr/lib64/libvgpu-nvml.so"),
    ("usr/lib64/libcuda.so", "libcuda.so.1", "usr/lib64/libvgpu-cuda.so"),
    ("usr/lib64/libcudart.so", "libcudart.so.12", "usr/lib64/libvgpu-cudart.so"),
    ("usr/lib64/libnvidia-ml.so", "libnvidia-ml.so.1", "usr/lib64/libvgpu-nvml.so"),
    ("usr/local/lib/ollama/cuda_v12/libnvidia-ml.so.1", "@/usr/lib64/libvgpu-nvml.so",
     "usr/lib64/libvgpu-nvml.so"),
    ("usr/local/lib/ollama/cuda_v12/libcudart.so.12", "libcudart.so.12.8.90",
     "usr/lib64/libvgpu-cudart.so"),
)


class HostError(RuntimeError):
    """The synthetic host could not be built or did not behave."""


def compile_benchproc(out: Path) -> Path:
    proc = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(HERE / "benchproc.c")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise HostError(f"gcc benchproc.c failed:\n{proc.stderr}")
    return out


@dataclass
class Child:
    """A process of the host, ended by closing its stdin (it then exits, or its children die)."""

    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0]:
            raise HostError(f"pid {self.pid}: no output within {timeout}s "
                            f"(exit {self.proc.poll()})")
        return line[0].decode(errors="replace").strip()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        self.proc.wait()


@dataclass
class Runner(Child):
    lines: int = 0

    def load_late_library(self) -> tuple[float, float]:
        """Map the late library (ggml-cuda) now: the unix times before the runner opened it
        and once its mapping existed."""
        os.kill(self.pid, signal.SIGUSR1)
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"\n")  # wake the read() should the signal land before it
        self.proc.stdin.flush()
        answer = self.readline()
        word, *times = answer.split()
        if word != "loaded":
            raise HostError(f"runner {self.pid} could not load its late library: {answer}")
        return float(times[0]), float(times[1])


@dataclass
class Model:
    name: str
    blob_hex: str
    layers: int


@dataclass
class SyntheticHost:
    root: Path
    benchproc: Path
    models: list[Model] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    api_port: int = 0
    api_loaded: int = 0  # how many models /api/ps lists
    _api: ThreadingHTTPServer | None = None
    _ports: int = 40000
    _own_dir: bool = False

    @classmethod
    def create(cls, base: Path | None = None, *, models: int = 20) -> SyntheticHost:
        own = base is None
        root = Path(tempfile.mkdtemp(prefix="vgpumon_bench_")) if base is None else base
        root = root.resolve()
        host = cls(root=root, benchproc=root / "build" / "benchproc", _own_dir=own)
        try:
            host._build(models)
        except BaseException:
            host.close()
            raise
        return host

    # -- the tree ------------------------------------------------------------------------------

    @property
    def lib64(self) -> Path:
        return self.root / "usr/lib64"

    @property
    def cuda_dir(self) -> Path:
        return self.root / "usr/local/lib/ollama/cuda_v12"

    @property
    def ollama(self) -> Path:
        return self.root / "usr/local/bin/ollama"

    @property
    def idler(self) -> Path:
        return self.root / "usr/bin/idler"

    @property
    def ggml_cuda(self) -> Path:
        return self.cuda_dir / "libggml-cuda.so"

    @property
    def models_dir(self) -> Path:
        return self.root / "usr/share/ollama/.ollama/models"

    @property
    def log_file(self) -> Path:
        return self.root / "var/log/ollama.log"

    def shim(self, name: str) -> Path:
        return self.lib64 / f"libvgpu-{name}.so"

    def link_paths(self, count: int = len(LINKS)) -> list[tuple[Path, Path]]:
        """The first `count` links: (link, the shim it must reach)."""
        return [(self.root / link, self.root / shim) for link, _text, shim in LINKS[:count]]

    def _build(self, models: int) -> None:
        for directory in (self.lib64, self.cuda_dir, self.ollama.parent, self.idler.parent,
                          self.models_dir / "blobs", self.log_file.parent,
                          self.root / "build", self.root / "var/lib/vgpumon", self.root / "data"):
            directory.mkdir(parents=True, exist_ok=True)
        compile_benchproc(self.benchproc)
        shutil.copy(self.benchproc, self.ollama)
        shutil.copy(self.benchproc, self.idler)
        for index, path in enumerate([*(self.shim(s) for s in SHIMS),
                                      self.lib64 / REAL_DRIVER, self.ggml_cuda]):
            path.write_bytes(bytes([index + 1]) * LIBRARY_BYTES)
        for link, text, _shim in LINKS:
            os.symlink(text.replace("@", str(self.root), 1), self.root / link)
        self.log_file.touch()
        for index in range(models):
            self.add_model(f"model{index:02d}:latest", layers=20 + index)

    def add_model(self, name: str, layers: int) -> Model:
        import hashlib

        blob_hex = hashlib.sha256(name.encode()).hexdigest()
        (self.models_dir / "blobs" / f"sha256-{blob_hex}").write_bytes(b"GGUF")
        model, tag = name.split(":")
        manifest = self.models_dir / "manifests/registry.ollama.ai/library" / model / tag
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({
            "schemaVersion": 2,
            "layers": [{"mediaType": "application/vnd.ollama.image.model",
                        "digest": f"sha256:{blob_hex}", "size": 4}],
        }))
        found = Model(name, blob_hex, layers)
        self.models.append(found)
        return found

    def blob_path(self, model: Model) -> Path:
        return self.models_dir / "blobs" / f"sha256-{model.blob_hex}"

    # -- processes -----------------------------------------------------------------------------

    def _spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env={"PATH": "/usr/bin:/bin", **env}, close_fds=True)

    def spawn_idle(self, count: int) -> Child:
        """`count` sleeping processes (children of one idler)."""
        child = Child(self._spawn([str(self.idler), "--sleep"],
                                  {"BENCH_MODE": "idle", "BENCH_COUNT": str(count)}))
        self.children.append(child)
        if child.readline(timeout=120) != "ready":
            raise HostError("idler did not start its children")
        return child

    def filler(self, pieces: int) -> Path:
        """A file of `pieces` pages (a model's weights stand-in), shared by runners."""
        path = self.root / "data" / f"filler-{pieces}.bin"
        if not path.exists():
            with open(path, "wb") as handle:
                handle.truncate(pieces * PAGE)
        return path

    def start_server(self) -> Child:
        """`ollama serve`, mapping the four shims (as with LD_PRELOAD)."""
        env = {"BENCH_MODE": "runner",
               "BENCH_LIBS": ":".join(str(self.shim(s)) for s in SHIMS)}
        child = Child(self._spawn([str(self.ollama), "serve"], env))
        self.children.append(child)
        if child.readline() != "ready":
            raise HostError("server did not start")
        return child

    def start_runner(self, model: Model | None = None, *, lines: int = 1000,
                     late_load: bool = False) -> Runner:
        """An `ollama runner` of `model` whose maps has about `lines` lines: the shims, the
        real driver, ggml-cuda (unless `late_load`: then on `load_late_library()`), and a
        filler mapped in one-page pieces for the rest."""
        model = model or self.models[0]
        libs = [*(self.shim(s) for s in ("exec", "cuda", "cudart")), self.lib64 / REAL_DRIVER]
        if not late_load:
            libs.append(self.ggml_cuda)
        base_lines = 24  # the program, libc, ld.so, stack, vdso, ...
        pieces = max(0, lines - base_lines - len(libs))
        self._ports += 1
        env = {"BENCH_MODE": "runner", "BENCH_LIBS": ":".join(map(str, libs)),
               "BENCH_FILLER": str(self.filler(max(pieces, 1))), "BENCH_PIECES": str(pieces),
               "BENCH_LATE": str(self.ggml_cuda)}
        argv = [str(self.ollama), "runner", "--ollama-engine", "--model",
                str(self.blob_path(model)), "--port", str(self._ports)]
        runner = Runner(self._spawn(argv, env))
        self.children.append(runner)
        if runner.readline() != "ready":
            raise HostError("runner did not start")
        runner.lines = maps_lines(runner.pid)
        return runner

    def stop(self, child: Child) -> None:
        child.close()
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    # -- Ollama's API and log -------------------------------------------------------------------

    def api_ps(self) -> bytes:
        """What /api/ps answers: the first `api_loaded` models."""
        return json.dumps({"models": [{
            "name": m.name, "model": m.name, "size": 2_000_000_000 + i,
            "size_vram": 1_900_000_000 + i, "digest": f"{i:064x}",
            "details": {"family": "llama", "parameter_size": "3.2B",
                        "quantization_level": "Q4_K_M"},
            "expires_at": "2099-01-01T00:00:00Z", "context_length": 4096,
        } for i, m in enumerate(self.models[:self.api_loaded])]}).encode()

    def serve_api(self) -> int:
        """A stand-in for Ollama's API: `/api/version`, and `/api/ps` (see `api_loaded`)."""
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/api/ps":
                    status, body = 200, host.api_ps()
                elif self.path == "/api/version":
                    status, body = 200, b'{"version":"0.13.5"}'
                else:
                    status, body = 404, b"404 page not found"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._api = _QuietServer(("127.0.0.1", 0), Handler)
        self._api.daemon_threads = True
        threading.Thread(target=self._api.serve_forever, daemon=True).start()
        self.api_port = self._api.server_address[1]
        return self.api_port

    def write_log(self, models: int) -> None:
        """Log lines of the F era for a server start, a discovery and `models` loads."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        lines = [f'time={stamp} level=INFO source=routes.go:1550 msg="Listening on '
                 f'127.0.0.1:{self.api_port} (version 0.13.5)"',
                 f'time={stamp} level=INFO source=types.go:42 msg="inference compute" '
                 'id=GPU-076afa50-fc31-49ca-be1d-f9e53480fe75 filter_id="" library=CUDA '
                 'compute=8.6 name=CUDA0 description="NVIDIA A10" libdirs=ollama,cuda_v12 '
                 'driver=12.8 pci_id=0000:3b:00.0 type=discrete total="22.1 GiB" '
                 'available="21.7 GiB"']
        for index, model in enumerate(self.models[:models]):
            lines.append(f'time={stamp} level=INFO source=server.go:392 msg="starting runner" '
                         f'cmd="{self.ollama} runner --ollama-engine --model '
                         f'{self.blob_path(model)} --port {41000 + index}"')
            lines.append(f'time={stamp} level=INFO source=ggml.go:501 msg="offloaded '
                         f'{model.layers}/{model.layers} layers to GPU"')
        with open(self.log_file, "a") as handle:
            handle.write("\n".join(lines) + "\n")

    # -- configs ------------------------------------------------------------------------------

    def vgpumon_config(self, *, links: int = len(LINKS), **overrides: Any) -> dict[str, Any]:
        """The default config (config/vgpumon.yaml) moved into the root; groups only match this
        root."""
        root = re.escape(str(self.root))
        config: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "interval": "5s",
            "procfs": "/proc",
            "libraries": {
                **{f"vgpu-{s}": {"path": str(self.shim(s))} for s in SHIMS},
                "ggml-cuda": {"name": "libggml-cuda.so*"},
                "cuda-driver": {"name": "libcuda.so.*", "driver": True},
            },
            "shims": [f"vgpu-{s}" for s in SHIMS],
            "links": [{"path": str(p), "target": str(t)} for p, t in self.link_paths(links)],
            "groups": {
                "server": {"comm": "^ollama$", "cmdline": f"^{root}/.*?\\bserve\\b",
                           "expect": [f"vgpu-{s}" for s in SHIMS]},
                "runner": {"cmdline": f"^{root}/.*?(ollama runner|ollama_llama_server|"
                                      "llama-server).*--model",
                           "expect": ["vgpu-exec", "vgpu-cuda", "ggml-cuda"]},
                "discovery": {"cmdline": f"^{root}/.*?(ollama runner|llama-server|"
                                         "ollama gpu-discover)",
                              "expect": []},
            },
            "ollama": {"url": f"http://127.0.0.1:{self.api_port or 9}", "timeout": "2s",
                       "log": {"file": str(self.log_file)}, "models_dir": str(self.models_dir)},
            "events": {"file": str(self.root / "var/lib/vgpumon/events.jsonl")},
            "watch_dirs": [str(self.cuda_dir)],
        }
        config.update(overrides)
        return config

    def process_exporter_config(self) -> str:
        """process-exporter's `process_names` for the same three groups (first match wins)."""
        root = re.escape(str(self.root))
        groups = [
            ("server", {"comm": ["ollama"], "cmdline": [f"^{root}/.*?\\bserve\\b"]}),
            ("runner", {"cmdline": [f"^{root}/.*?(ollama runner|ollama_llama_server|"
                                    "llama-server).*--model"]}),
            ("discovery", {"cmdline": [f"^{root}/.*?(ollama runner|llama-server|"
                                       "ollama gpu-discover)"]}),
        ]
        return json.dumps({"process_names": [{"name": name, **rules}
                                             for name, rules in groups]}, indent=1)

    # -- teardown ------------------------------------------------------------------------------

    def processes(self) -> list[int]:
        """Live processes running an executable of this root."""
        found = []
        prefix = str(self.root) + "/"
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                exe = os.readlink(f"/proc/{name}/exe")
            except OSError:
                continue
            if exe.startswith(prefix):
                found.append(int(name))
        return found

    def close(self) -> None:
        """End every process of the host and remove the tree; raises if one survives."""
        if self._api is not None:
            self._api.shutdown()
            self._api.server_close()
            self._api = None
        for child in reversed(self.children):
            child.close()
        self.children.clear()
        deadline = time.monotonic() + 20
        left = self.processes()
        while left and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
            left = [pid for pid in self.processes() if not _zombie(pid)]
        if left:
            raise HostError(f"processes of {self.root} survived: {left[:10]}")
        if self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SyntheticHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a daemon's API poll that timed out while the host was busy)
        is no error of the stand-in's; anything else is printed as usual."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def maps_lines(pid: int) -> int:
    with open(f"/proc/{pid}/maps", "rb") as handle:
        return handle.read().count(b"\n")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True
