"""The simulated `ollama serve`: Ollama's HTTP API, its log, and its runner children.

It runs inside the launcher (comm `ollama`, argv `<root>/usr/local/bin/ollama serve`), writes
its log to stderr (the harness points stderr and stdout at the host's log file, as systemd
points them at the journal), starts runners and probes as direct children with
`subprocess.Popen`, copies their stderr into its own, reaps them and logs their exits as the
era does. Harness-only control lives under `/_sim/`.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import glob
import json
import mmap
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import logfmt, models
from .eras import LIB_OLLAMA, Era
from .logfmt import Attrs, human_bytes
from .simproc import (
    HostConfig,
    emit,
    on_main_thread,
    read_json,
    serve_main_thread,
    write_json,
)

# Source positions for the server's records: real file names, plausible lines.
SRC = {
    "config": "routes.go:1331", "blobs": "images.go:518", "listen": "routes.go:1384",
    "extract": "common.go:135", "dynlibs": "common.go:49", "gpus": "gpu.go:217",
    "discover": "runner.go:80", "compute": "types.go:42", "nocompat": "gpu.go:386",
    "fit": "sched.go:714", "sysmem": "server.go:105", "offload": "memory.go:326",
    "start": "server.go:376", "loading": "server.go:212", "gpumem": "server.go:770",
    "loaded": "sched.go:449", "wait": "server.go:1142", "status": "server.go:1176",
    "started": "server.go:1190", "error": "sched.go:457", "loadfail": "server.go:1051",
    "terminated": "server.go:427", "gone": "server.go:611", "stopping": "server.go:1361",
    "dyn": "dyn_ext_server.go:90", "llamago": "llama.go:436",
}

SRC_A = {"listen": "routes.go:895", "wait": "llama.go:494", "started": "llama.go:508",
         "error": "llama.go:517"}

ERROR_PREFIXES = [  # llm/status.go; (first version, prefix)
    ("0.1.32", "error:"), ("0.1.32", "CUDA error"), ("0.1.32", "cudaMalloc failed"),
    ("0.1.32", '"ERR"'), ("0.2.0", "error loading model"), ("0.3.5", "GGML_ASSERT"),
    ("0.12.9", "ROCm error"), ("0.23.0", "panic:"), ("0.23.0", "fatal error:"),
    ("0.23.0", "Error:"), ("0.23.0", "signal arrived during cgo execution"),
    ("0.23.0", "llama_init_from_model:"),
]
LEVELS = {"TRACE": -8, "DEBUG": -4, "INFO": 0, "WARN": 4, "ERROR": 8}


class Logger:
    """Writes the server's records in its era's shape to stderr."""

    def __init__(self, era: Era, debug: str):
        self.era = era
        self.threshold = {"1": -4, "true": -4, "2": -8}.get(debug.lower(), 0)

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def __call__(self, level: str, key: str, msg: str, *attrs: tuple[str, object]) -> None:
        if not self.enabled(level):
            return
        t, source = logfmt.now(), SRC.get(key, key)
        if self.era.name == "A":
            source = SRC_A.get(key, source)
        if not self.era.at_least("0.1.21"):
            text = logfmt.golog_line(t, source, msg)
            if attrs:
                text += " " + logfmt.fmt_attrs(list(attrs))
        elif not self.era.at_least("0.1.25"):
            text = logfmt.bridged_line(t, level, source, msg, list(attrs))
        else:
            text = logfmt.slog_line(t, level, source, msg, list(attrs))
        emit(text)

    def bridged(self, level: str, key: str, msg: str, *attrs: tuple[str, object]) -> None:
        emit(logfmt.bridged_line(logfmt.now(), level, SRC.get(key, key), msg, list(attrs)))


@dataclass
class Child:
    """A runner or probe the server started, and what became of it."""

    id: int
    kind: str                     # "runner", "probe", or "in-process" (era B)
    argv: list[str]
    proc: subprocess.Popen
    port: int | None = None
    model: models.Model | None = None
    scenario: str = ""
    gpu: bool = False
    estimate_layers: int = 0
    actual_layers: int | None = None
    ctx: int = 0
    state: str = "starting"      # starting, loading, ready, failed, exited
    error: str = ""
    last_err: str = ""
    wait_status: int | None = None
    killed_by_server: bool = False
    started: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    exited_at: float | None = None
    expires_at: dt.datetime | None = None
    keep_alive: float = 300.0
    spawned: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.wait_status is None

    def as_json(self) -> dict:
        return {
            "id": self.id, "kind": self.kind, "pid": self.pid, "port": self.port,
            "argv": self.argv, "model": self.model.name if self.model else None,
            "blob": self.model.blob if self.model else None, "scenario": self.scenario,
            "gpu": self.gpu, "estimate_layers": self.estimate_layers,
            "actual_layers": self.actual_layers,
            "total_layers": self.model.layers if self.model else None,
            "state": self.state, "error": self.error, "wait_status": self.wait_status,
            "exit_text": (logfmt.exit_text(self.wait_status)
                          if self.wait_status is not None else None),
            "killed_by_server": self.killed_by_server, "started": self.started,
            "exited_at": self.exited_at,
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_keep_alive(value: object, default: float) -> float:
    """Ollama's keep_alive: seconds (number), a Go duration string; negative = forever."""
    if value is None or value == "":
        return default
    if isinstance(value, int | float):
        return float("inf") if value < 0 else float(value)
    text = str(value).strip()
    if text.startswith("-"):
        return float("inf")
    total, num = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            num += ch
            i += 1
            continue
        unit = "ms" if text[i:i + 2] == "ms" else ch
        total += float(num or 0) * units.get(unit, 1)
        num, i = "", i + len(unit)
    return total + (float(num) if num else 0.0)


class OllamaServer:
    def __init__(self, host: HostConfig, argv: list[str]):
        self.host = host
        self.era = Era.get(host.era, host.version)
        self.argv = argv
        self.opts: dict = read_json(host.state("server.json"), {})  # type: ignore[assignment]
        wanted = self.opts.get("gpus")
        self.gpus = host.gpus if wanted is None else host.gpus[: int(wanted)]
        self.log = Logger(self.era, os.environ.get("OLLAMA_DEBUG", ""))
        self.lock = threading.RLock()
        self.children: list[Child] = []
        self.loaded: dict[str, Child] = {}       # model name -> its (latest) runner
        self.scenarios: dict[str, dict] = {}     # model name -> scenario for API-driven loads
        self.fault: dict = {}
        self.stop_event = threading.Event()
        self.discovered = False
        self.keep_alive = parse_keep_alive(os.environ.get("OLLAMA_KEEP_ALIVE"), 300.0)
        self.ext_server: ctypes.CDLL | None = None  # era B: the in-process llama.cpp
        self.model_maps: dict[str, mmap.mmap] = {}  # era B: model name -> its mapped blob
        bind = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").removeprefix("http://")
        host_part, _, port = bind.rpartition(":")
        self.bind = (host_part or "127.0.0.1", int(port or 11434))

    # -- start-up --------------------------------------------------------------------------

    def run(self) -> int:
        if self.era.name in ("E", "F"):  # the 0.5.8+ binary links libggml-base.so (RPATH)
            ctypes.CDLL(os.path.join(self.host.root, LIB_OLLAMA, "libggml-base.so"))
        self._log_server_config()
        if self.era.at_least("0.1.25"):
            blobs = len(glob.glob(os.path.join(self.host.models_dir, "blobs", "sha256-*")))
            self.log("INFO", "blobs", f"total blobs: {blobs}")
            self.log("INFO", "blobs", "total unused blobs removed: 0")
        try:
            httpd = ThreadingHTTPServer(self.bind, Handler)
        except OSError as e:
            emit(f"Error: listen tcp {self.bind[0]}:{self.bind[1]}: bind: {e.strerror.lower()}")
            return 1
        httpd.daemon_threads = True
        httpd.app = self  # type: ignore[attr-defined]
        addr = f"{self.bind[0]}:{httpd.server_address[1]}"
        self.log("INFO", "listen", f"Listening on {addr} (version {self.era.version})")
        self._log_payloads()
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        self.discover()
        self.discovered = True
        threading.Thread(target=self._expiry_loop, daemon=True).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        serve_main_thread(self.stop_event)
        self.shutdown()
        return 0

    def _env_map(self) -> str:
        keys = ["CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "HIP_VISIBLE_DEVICES",
                "HSA_OVERRIDE_GFX_VERSION", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY",
                "OLLAMA_DEBUG", "OLLAMA_FLASH_ATTENTION", "OLLAMA_GPU_OVERHEAD", "OLLAMA_HOST",
                "OLLAMA_KEEP_ALIVE", "OLLAMA_LLM_LIBRARY", "OLLAMA_LOAD_TIMEOUT",
                "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_MAX_QUEUE", "OLLAMA_MODELS",
                "OLLAMA_NOPRUNE", "OLLAMA_NUM_PARALLEL", "OLLAMA_ORIGINS",
                "OLLAMA_SCHED_SPREAD", "ROCR_VISIBLE_DEVICES", "http_proxy", "https_proxy",
                "no_proxy"]
        defaults = {"OLLAMA_DEBUG": "INFO" if self.era.at_least("0.12.0") else "false",
                    "OLLAMA_FLASH_ATTENTION": "false", "OLLAMA_GPU_OVERHEAD": "0",
                    "OLLAMA_HOST": f"http://{self.bind[0]}:{self.bind[1]}",
                    "OLLAMA_KEEP_ALIVE": "5m0s", "OLLAMA_LOAD_TIMEOUT": "5m0s",
                    "OLLAMA_MAX_LOADED_MODELS": "0", "OLLAMA_MAX_QUEUE": "512",
                    "OLLAMA_NOPRUNE": "false", "OLLAMA_NUM_PARALLEL": "0",
                    "OLLAMA_ORIGINS": "[http://localhost https://localhost http://127.0.0.1 "
                                      "https://127.0.0.1 http://0.0.0.0 https://0.0.0.0]",
                    "OLLAMA_SCHED_SPREAD": "false"}
        values = {k: os.environ.get(k, defaults.get(k, "")) for k in keys}
        values["OLLAMA_MODELS"] = self.host.models_dir
        values["OLLAMA_HOST"] = defaults["OLLAMA_HOST"]
        return "map[" + " ".join(f"{k}:{values[k]}" for k in sorted(values)) + "]"

    def _log_server_config(self) -> None:
        if not self.era.at_least("0.1.34"):
            return
        if self.era.at_least("0.6.9"):
            self.log("INFO", "config", "server config", ("env", self._env_map()))
        else:
            self.log.bridged("INFO", "config", "server config", ("env", self._env_map()))

    def _log_payloads(self) -> None:
        if self.era.name in ("C", "D1"):
            tmp = os.path.join(self.host.root, os.path.dirname(self.era.cuda_dir))
            self.log("INFO", "extract", "extracting embedded files", ("dir", tmp))
            runners = "cpu_avx2 cuda_v12" if self.era.name == "C" else "cpu_avx2 cuda_v12_avx"
            self.log("INFO", "dynlibs", "Dynamic LLM libraries", ("runners", f"[{runners}]"))

    # -- GPU discovery -----------------------------------------------------------------------

    def discover(self, probes: bool | None = None) -> None:
        """The era's GPU discovery at start (and on /_sim/discover): log lines, dlopens,
        probes (unless the server was started without them and `probes` is not True)."""
        e = self.era
        if e.name == "A":
            return
        if e.name == "B":
            self.log("INFO", "gpus", "Detecting GPU type")
            lib = self._dlopen_driver("libnvidia-ml.so*", keep=True)
            if self.gpus and lib:
                self.log("INFO", "gpus", f"Discovered GPU libraries: [{lib}]")
                self.log("INFO", "gpus", "Nvidia GPU detected")
                self.log("INFO", "gpus", f"CUDA Compute Capability detected: "
                                         f"{self.gpus[0].compute}")
            else:
                self.log("INFO", "gpus", "no GPU detected")
            return
        if e.uses_probes:
            self.log("INFO", "discover", "discovering available GPUs...")
            if probes if probes is not None else self.opts.get("probes", True):
                self.run_probes()
        else:
            self.log("INFO", "gpus", "looking for compatible GPUs")
            self._dlopen_driver("libcuda.so*", keep=False)
            if not self.gpus:
                self.log("INFO", "nocompat", "no compatible GPUs were discovered")
        for line in self._inference_compute():
            self.log("INFO", "compute", "inference compute", *line)

    def _driver_candidates(self, pattern: str) -> list[str]:
        """discover/gpu_linux.go: lib/ollama, LD_LIBRARY_PATH, then the default globs."""
        root = self.host.root
        dirs = [os.path.join(root, LIB_OLLAMA)]
        dirs += [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
        defaults = ["usr/local/cuda*/targets/*/lib", "usr/lib/*-linux-gnu/nvidia/current",
                    "usr/lib/*-linux-gnu", "usr/lib/wsl/lib", "usr/lib/wsl/drivers/*",
                    "opt/cuda/lib*", "usr/local/cuda/lib*", "usr/lib*", "usr/local/lib*"]
        dirs += [os.path.join(root, d) for d in defaults]
        seen, out = set(), []
        for d in dirs:
            for cand in sorted(glob.glob(os.path.join(d, pattern))):
                real = os.path.realpath(cand)
                if real not in seen and os.path.isfile(real):
                    seen.add(real)
                    out.append(real)
        return out

    def _dlopen_driver(self, pattern: str, keep: bool) -> str | None:
        """dlopen the first working driver library by its resolved path; dlclose unless keep."""
        for path in self._driver_candidates(pattern):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            if pattern.startswith("libcuda"):
                lib.cuInit(0)
                n = ctypes.c_int(0)
                lib.cuDeviceGetCount(ctypes.byref(n))
            else:
                lib.nvmlInit_v2()
            hold = float(self.opts.get("discovery_hold", 0))
            if not keep:
                if hold:
                    time.sleep(hold)
                import _ctypes
                _ctypes.dlclose(lib._handle)
            return path
        return None

    def _inference_compute(self) -> list[Attrs]:
        e, out = self.era, []
        total, avail = _meminfo()
        if not self.gpus:
            if e.at_least("0.12.4"):
                out.append([("id", "cpu"), ("library", "cpu"), ("compute", ""), ("name", "cpu"),
                            ("description", "cpu"), ("libdirs", "ollama"), ("driver", ""),
                            ("pci_id", ""), ("type", ""), ("total", human_bytes(total)),
                            ("available", human_bytes(avail))])
            elif e.at_least("0.1.35"):
                line: Attrs = [("id", "0"), ("library", "cpu")]
                if e.at_least("0.3.7"):
                    line.append(("variant", "avx2"))
                line += [("compute", ""), ("driver", "0.0"), ("name", ""),
                         ("total", human_bytes(total)), ("available", human_bytes(avail))]
                out.append(line)
            return out
        for g in self.gpus:
            if e.at_least("0.12.4"):
                line = [("id", g.uuid)]
                if e.at_least("0.12.10"):
                    line.append(("filter_id", ""))
                line += [("library", "CUDA"), ("compute", g.compute), ("name", "CUDA0"),
                         ("description", g.name), ("libdirs", "ollama,cuda_v12"),
                         ("driver", g.driver), ("pci_id", g.pci_id), ("type", "discrete")]
            elif e.at_least("0.1.35"):
                line = [("id", g.uuid), ("library", "cuda")]
                if e.at_least("0.3.7"):
                    line.append(("variant", "v12"))
                line += [("compute", g.compute), ("driver", g.driver), ("name", g.name)]
            else:
                continue
            line += [("total", human_bytes(g.total)), ("available", human_bytes(g.free))]
            out.append(line)
        return out

    def run_probes(self) -> list[Child]:
        """Era F/G discovery probes: real children, killed or exiting as Ollama's are."""
        done = []
        for kind, argv in self.era.probe_argvs(self.host.root, free_port()):
            if kind == "info":
                done.append(self._probe_info(argv, gpu_uuid=None))
                for g in self.gpus:
                    done.append(self._probe_info(self.era.probe_argvs(
                        self.host.root, free_port())[0][1], gpu_uuid=g.uuid))
            else:
                done.append(self._probe_g(kind, argv))
        return done

    def _spawn(self, kind: str, argv: list[str], env: dict[str, str], *, port: int | None,
               pipe_stdout: bool) -> Child:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if pipe_stdout else None,
                                stderr=subprocess.PIPE)
        with self.lock:
            child = Child(id=len(self.children) + 1, kind=kind, argv=argv, proc=proc, port=port)
            self.children.append(child)
        return child

    def _reap(self, child: Child, on_exit=None) -> None:
        def wait() -> None:
            _, status = os.waitpid(child.pid, 0)
            child.proc.returncode = logfmt.exit_code(status)
            for t in child.readers:
                t.join(timeout=5)
            child.wait_status, child.exited_at = status, time.time()
            if child.kind == "probe":
                child.state = "exited"
            if on_exit:
                on_exit(child)
            child.exited.set()
        threading.Thread(target=wait, daemon=True).start()

    def _pump(self, child: Child, stream, forward: bool, watch=None) -> None:
        def copy() -> None:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if child.kind == "runner":
                    self._check_error(child, line)
                if forward:
                    emit(line)
                if watch:
                    watch(line)
            stream.close()
        t = threading.Thread(target=copy, daemon=True)
        child.readers.append(t)
        t.start()

    def _check_error(self, child: Child, line: str) -> None:
        """llm/status.go: remember the last line holding a recognised error prefix."""
        msg = ""
        for since, prefix in ERROR_PREFIXES:
            if self.era.at_least(since) and prefix in line:
                msg = prefix + line.split(prefix, 1)[1].strip()
        if msg:
            child.last_err = msg

    def _probe_env(self, gpu_uuid: str | None) -> dict[str, str]:
        """A library-dir probe sees every device; a device probe only its own
        (docs/ollama.md#process-model)."""
        env = self.era.runner_env(self.host.root, dict(os.environ), gpu=True, gpu_uuid="")
        env.pop("CUDA_VISIBLE_DEVICES", None)
        if gpu_uuid is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu_uuid
            if self.era.at_least("0.13.0"):
                env["GGML_CUDA_INIT"] = "1"
        return env

    def _probe_info(self, argv: list[str], gpu_uuid: str | None) -> Child:
        port = int(argv[argv.index("--port") + 1])
        write_json(self.host.state("run", f"{port}.json"), {
            "gpu": True, "scenario": "full_offload" if self.gpus else "cuda_init_failure"})
        child = self._spawn("probe", argv, self._probe_env(gpu_uuid), port=port,
                            pipe_stdout=self.era.at_least("0.12.7"))
        self.log("INFO", "start", "starting runner", ("cmd", " ".join(argv)))
        trace = self.log.enabled("TRACE")
        self._pump(child, child.proc.stderr, trace)
        if child.proc.stdout:
            self._pump(child, child.proc.stdout, trace)
        self._reap(child)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and child.alive:
            try:
                _http_json(f"http://127.0.0.1:{port}/info", timeout=1)
                break
            except (OSError, ValueError):
                time.sleep(0.01)
        time.sleep(float(self.opts.get("probe_hold", 0)))
        self._kill(child)
        return child

    def _probe_g(self, kind: str, argv: list[str]) -> Child:
        env = self.era.runner_env(self.host.root, dict(os.environ), gpu=True,
                                  gpu_uuid=self.gpus[0].uuid if self.gpus else "")
        child = self._spawn("probe", argv, env, port=None, pipe_stdout=True)
        seen = threading.Event()
        trace = self.log.enabled("TRACE")
        self._pump(child, child.proc.stderr, trace,
                   watch=lambda line: line.startswith("system_info:") and seen.set())
        self._pump(child, child.proc.stdout, trace)
        self._reap(child)
        if kind == "system-info":
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not seen.is_set() and child.alive:
                seen.wait(0.01)
            time.sleep(float(self.opts.get("probe_hold", 0)))
            self._kill(child)
        else:
            child.exited.wait(30)
        return child

    def _kill(self, child: Child, timeout: float = 10) -> None:
        """Process.Kill(): SIGKILL, then wait for the reaper."""
        if child.alive:
            child.killed_by_server = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
        child.exited.wait(timeout)

    # -- loading -----------------------------------------------------------------------------

    def scenario_for(self, name: str) -> dict:
        return self.scenarios.get(name, {"scenario": self.opts.get("scenario", "full_offload")})

    def ensure_loaded(self, model: models.Model, scenario: str, options: dict,
                      keep_alive: float | None = None) -> Child:
        """The scheduler: reuse a live runner, else (re)start one. Returns once spawned."""
        with self.lock:
            cur = self.loaded.get(model.name)
            if cur is not None and cur.alive and cur.state in ("loading", "ready", "starting"):
                cur.expires_at = _expiry(keep_alive if keep_alive is not None else cur.keep_alive)
                return cur
            if cur is not None:
                self._notice_dead(cur)
                self.loaded.pop(model.name, None)
            child = self._start_runner(model, scenario, options,
                                       self.keep_alive if keep_alive is None else keep_alive)
            if child.model is not None:
                self.loaded[model.name] = child
        return child

    def _notice_dead(self, child: Child) -> None:
        """Next request to a dead runner: getServerStatus fails, the runner is replaced."""
        if child.wait_status is None or child.killed_by_server or self.era.name in ("A", "G"):
            return
        if logfmt.exit_code(child.wait_status) == -1:
            self.log("WARN", "gone", "llama runner process no longer running",
                     ("sys", child.wait_status), ("string", logfmt.exit_text(child.wait_status)))

    def _plan(self, model: models.Model, scenario: str, options: dict) -> tuple[bool, int, int]:
        """(runner is the GPU variant, layers the server estimates, layers the runner will
        report when CUDA works)."""
        m = model.layers
        if not self.gpus:
            return False, 0, 0
        if scenario == "partial_offload":
            n = int(options.get("gpu_layers", min(10, m - 1)))
            return True, n, n
        if scenario == "cpu_fallback":
            if self.era.name in ("A", "C", "D1", "D2"):
                return False, 0, 0       # the estimate found no room: the CPU runner variant
            return True, m, 0            # backend fails silently; the estimate still says GPU
        return True, m, m

    def _start_runner(self, model: models.Model, scenario: str, options: dict,
                      keep_alive: float) -> Child:
        e = self.era
        gpu, estimate, actual = self._plan(model, scenario, options)
        ctx = int(options.get("num_ctx", e.default_ctx))
        engine = options.get("engine", e.default_engine)
        if e.name == "B":
            return self._load_in_process(model, scenario, options, gpu, estimate, ctx)
        if e.server_discovers_with_dlopen and gpu:
            self._dlopen_driver("libcuda.so*", keep=False)  # refresh free VRAM before a load
        port = free_port()
        plan = models.MemoryPlan.of(model, ctx)
        self._log_pre_start(model, gpu, estimate, ctx, plan, options)
        argv = e.runner_argv(self.host.root, model.blob, port, gpu=gpu,
                             gpu_layers=estimate if gpu else 0, ctx=ctx, engine=engine)
        write_json(self.host.state("run", f"{port}.json"), {
            "scenario": scenario, "options": options, "model": model.name, "gpu": gpu,
            "gpu_layers": actual, "ctx": ctx, "engine": engine,
            "gpu_uuid": self.gpus[0].uuid if self.gpus else "",
        })
        env = e.runner_env(self.host.root, dict(os.environ), gpu=gpu,
                           gpu_uuid=self.gpus[0].uuid if self.gpus else "")
        if scenario == "bypass":
            env.pop("LD_PRELOAD", None)
        key = {"G": "starting llama-server", "A": "starting llama runner"}.get(
            e.name, "starting runner" if e.at_least("0.11.5") else "starting llama server")
        if e.name == "A":
            self.log("INFO", "llamago", key)
        else:
            self.log("INFO", "start", key, ("cmd", " ".join(argv)))
        child = self._spawn("runner", argv, env, port=port,
                            pipe_stdout=e.at_least("0.12.7"))
        child.model, child.scenario, child.gpu = model, scenario, gpu
        child.estimate_layers, child.ctx, child.keep_alive = estimate, ctx, keep_alive
        child.expires_at = _expiry(keep_alive)
        if e.uses_load_requests:
            self.log("INFO", "loading", "loading model", ("model layers", model.layers),
                     ("requested", int(options.get("gpu_layers", -1))))
        self._pump(child, child.proc.stderr, True)
        if child.proc.stdout:
            self._pump(child, child.proc.stdout, True)
        self._reap(child, self._on_runner_exit)
        child.spawned.set()
        threading.Thread(target=self._wait_ready, args=(child,), daemon=True).start()
        return child

    def _log_pre_start(self, model: models.Model, gpu: bool, estimate: int, ctx: int,
                       plan: models.MemoryPlan, options: dict) -> None:
        e, log = self.era, self.log
        total, free = _meminfo()
        if e.name == "A":
            vram = self.gpus[0].free >> 20 if self.gpus else 0
            log("INFO", "llamago", f"{vram} MB VRAM available, loading up to {estimate} GPU "
                                   "layers")
            return
        if e.name == "G":
            log("INFO", "loading", "loading model via llama-server", ("model", model.blob))
            if gpu:
                log("INFO", "loading", "selecting GPU backend for llama-server model",
                    ("library", "CUDA"), ("libdirs", "ollama,cuda_v12"))
            return
        if gpu and e.at_least("0.1.33"):
            log("INFO", "fit", "new model will fit in available VRAM in single GPU, loading",
                ("model", model.blob), ("gpu", self.gpus[0].uuid),
                ("parallel", e.parallel), ("available", self.gpus[0].free),
                ("required", human_bytes(plan.vram(estimate))))
        if e.at_least("0.3.0"):
            log("INFO", "sysmem", "system memory", ("total", human_bytes(total)),
                ("free", human_bytes(free)), ("free_swap", "0 B"))
        if e.at_least("0.12.11") or (e.uses_load_requests and
                                       options.get("engine", e.default_engine) == "ollama"):
            if gpu:
                g = self.gpus[0]
                log("INFO", "gpumem", "gpu memory", ("id", g.uuid), ("library", "CUDA"),
                    ("available", human_bytes(g.free - (457 << 20))),
                    ("free", human_bytes(g.free)), ("minimum", "457.0 MiB"),
                    ("overhead", "0 B"))
            return
        if not e.at_least("0.1.45"):
            return
        lib = "cuda" if gpu else "cpu"
        offload: Attrs = [
            ("layers.requested", int(options.get("gpu_layers", -1))),
            ("layers.model", model.layers), ("layers.offload", estimate),
            ("layers.split", ""),
            ("memory.available", f"[{human_bytes(self.gpus[0].free if gpu else free)}]"),
            ("memory.gpu_overhead", "0 B"),
            ("memory.required.full", human_bytes(plan.total)),
            ("memory.required.partial", human_bytes(plan.vram(estimate))),
            ("memory.required.kv", human_bytes(plan.kv)),
            ("memory.required.allocations", f"[{human_bytes(plan.vram(estimate))}]"),
            ("memory.weights.total", human_bytes(plan.weights)),
            ("memory.weights.repeating", human_bytes(plan.weights - plan.non_repeating)),
            ("memory.weights.nonrepeating", human_bytes(plan.non_repeating)),
            ("memory.graph.full", human_bytes(plan.graph)),
            ("memory.graph.partial", human_bytes(plan.graph * 4 // 3)),
        ]
        if e.at_least("0.5.12"):
            log("INFO", "offload", "offload", ("library", lib), *offload)
        else:
            log("INFO", "offload", f"offload to {lib}", *offload)

    def _runner_url(self, child: Child, path: str) -> str:
        return f"http://127.0.0.1:{child.port}{path}"

    def _wait_ready(self, child: Child) -> None:
        """waitUntilRunning: poll the runner until it reports ready, or it dies."""
        e, log = self.era, self.log
        deadline = time.monotonic() + float(self.opts.get("load_timeout", 60))
        if e.name != "A":
            with self.lock:  # ensure_loaded registers the child under this lock
                count = len(self._live_runners())
            log("INFO", "loaded", "loaded runners", ("count", count))
        log("INFO", "wait", "waiting for llama runner to start responding")
        if e.uses_load_requests and not self._load_requests(child, deadline):
            return self._fail(child)
        last_status = None
        child.state = "loading"
        while child.alive and time.monotonic() < deadline:
            try:
                health = _http_json(self._runner_url(child, "/health"), timeout=1)
                status = ("llm server loading model" if health.get("status") != "ok"
                          else "ok")
            except (OSError, ValueError):
                status = "llm server not responding"
            if status == "ok":
                child.actual_layers = int(health.get("offloaded", child.estimate_layers))
                secs = time.monotonic() - child.started_mono
                what = "llama-server" if e.name == "G" else "llama runner"
                text = f"{secs:f}" if e.name == "A" else f"{secs:.2f}"
                log("INFO", "started", f"{what} started in {text} seconds")
                child.state = "ready"
                child.finished.set()
                return None
            if status != last_status and e.name != "A":
                log("INFO", "status", "waiting for server to become available",
                    ("status", status))
                last_status = status
            time.sleep(0.05)
        if child.alive:
            child.error = "timed out waiting for llama runner to start"
            log("ERROR", "error", "error loading llama server", ("error", child.error))
            self._kill(child)
            child.state = "failed"
            child.finished.set()
            return None
        return self._fail(child)

    def _load_requests(self, child: Child, deadline: float) -> bool:
        """0.11.5+: wait for the runner's HTTP server, then POST /load fit, alloc, commit."""
        while child.alive and time.monotonic() < deadline:
            try:
                _http_json(self._runner_url(child, "/health"), timeout=1)
                break
            except (OSError, ValueError):
                time.sleep(0.02)
        for op in ("fit", "alloc", "commit"):
            try:
                _http_json(self._runner_url(child, "/load"), {"Operation": op}, timeout=60)
            except (OSError, ValueError):
                return False
        return True

    def _fail(self, child: Child) -> None:
        """The runner died while loading: the scheduler's error line."""
        child.exited.wait(10)
        e = self.era
        status = child.wait_status or 0
        exit_text = logfmt.exit_text(status)
        if e.name == "G":
            reason = f"llama-server process has terminated: {exit_text}"
            if child.last_err:
                reason += f": {child.last_err}"
        elif e.at_least("0.2.8"):
            reason = "llama runner process has terminated: " + (child.last_err or exit_text)
        elif e.at_least("0.1.32"):
            reason = f"llama runner process has terminated: {exit_text} {child.last_err}".rstrip()
        else:
            reason = "llama runner process has terminated"
        child.error, child.state = reason, "failed"
        if e.uses_load_requests:
            self.log("INFO", "loadfail", "Load failed", ("model", child.model.blob),
                     ("error", reason))
        if e.name == "A":
            self.log("INFO", "llamago", f"error starting llama runner: {reason}")
        else:
            self.log("ERROR", "error", "error loading llama server", ("error", reason))
        child.finished.set()

    def _on_runner_exit(self, child: Child) -> None:
        """The reaper (cmd.Wait() goroutine) and its log line."""
        e, status = self.era, child.wait_status or 0
        if child.state == "ready":
            child.state = "exited"  # while loading, _wait_ready turns it into "failed"
        if status == 0:
            return
        err = logfmt.exit_text(status)
        if e.name == "G":
            if not child.killed_by_server:
                code = logfmt.exit_code(status)
                self.log("WARN", "terminated", "llama-server terminated", ("error", err),
                         ("exit", code if code >= 0 else "unknown"))
        elif e.at_least("0.2.8") and child.last_err:
            level = "ERROR" if e.at_least("0.5.8") else "DEBUG"
            self.log(level, "terminated", "llama runner terminated", ("error", err))

    def _load_in_process(self, model: models.Model, scenario: str, options: dict, gpu: bool,
                         estimate: int, ctx: int) -> Child:
        """Era B: no runner; libext_server.so is dlopened into `ollama serve` itself."""
        from . import runner as runner_mod
        variant = self.era.cuda_dir if gpu else self.era.cpu_dir
        path = os.path.join(self.host.root, variant, "libext_server.so")
        self.log("INFO", "dyn", f"Loading Dynamic llm server: {path}")
        self.ext_server = ctypes.CDLL(path)
        if gpu:
            ctypes.CDLL("libcuda.so.1").cuInit(0)
        with open(model.blob, "rb") as weights:  # llama.cpp maps the model file (use_mmap)
            self.model_maps[model.name] = mmap.mmap(weights.fileno(), 0, prot=mmap.PROT_READ)
        runner_mod.print_llama_cpp_load(self.era, model, ctx, estimate, gpu, "llm_load_tensors")
        child = Child(id=len(self.children) + 1, kind="in-process", argv=self.argv,
                      proc=_SelfProc(), model=model, scenario=scenario, gpu=gpu,
                      estimate_layers=estimate, actual_layers=estimate, ctx=ctx,
                      state="ready")
        child.expires_at = _expiry(self.keep_alive)
        for ev in (child.spawned, child.finished):
            ev.set()
        with self.lock:
            self.children.append(child)
        return child

    def _live_runners(self) -> list[Child]:
        return [c for c in self.loaded.values() if c.alive]

    # -- unloading, expiry, shutdown -----------------------------------------------------------

    def unload(self, name: str) -> Child | None:
        with self.lock:
            child = self.loaded.pop(name, None)
        if child is None:
            return None
        if child.kind == "in-process":
            child.state = "exited"
            weights = self.model_maps.pop(name, None)
            if weights is not None:
                weights.close()  # llama_free_model unmaps it
            return child
        self.log("DEBUG", "stopping", "stopping llama server", ("pid", child.pid))
        self._kill(child)
        self.log("DEBUG", "stopping", "llama server stopped", ("pid", child.pid))
        return child

    def _expiry_loop(self) -> None:
        while not self.stop_event.wait(0.2):
            now = dt.datetime.now().astimezone()
            for name, child in list(self.loaded.items()):
                if child.expires_at is not None and child.expires_at <= now \
                        and child.state != "loading":
                    self.unload(name)

    def shutdown(self) -> None:
        for name in list(self.loaded):
            self.unload(name)
        for child in list(self.children):
            if child.kind != "in-process" and child.alive:
                self._kill(child, timeout=5)

    # -- /api/ps -------------------------------------------------------------------------------

    def ps(self) -> dict:
        e = self.era
        entries = []
        for child in list(self.loaded.values()):
            m = child.model
            if m is None:
                continue
            plan = models.MemoryPlan.of(m, child.ctx)
            estimate_mode = not e.at_least("0.11.5") or (
                not e.at_least("0.12.11") and e.name != "G"
                and child.argv.count("--ollama-engine") == 0)
            layers = child.estimate_layers if (estimate_mode or child.actual_layers is None) \
                else child.actual_layers
            entry: dict = {"name": m.name, "model": m.name, "size": plan.total,
                           "digest": m.digest, "details": m.details,
                           "expires_at": _rfc3339(child.expires_at),
                           "size_vram": plan.vram(layers)}
            if e.at_least("0.10.0"):
                entry["context_length"] = child.ctx
            if not e.at_least("0.1.42"):  # omitempty on the zero values
                if not entry["size_vram"]:
                    entry.pop("size_vram")
                if entry["expires_at"].startswith("0001"):
                    entry.pop("expires_at")
            entries.append(entry)
        if e.at_least("0.3.0"):
            entries.sort(key=lambda x: x.get("expires_at", ""), reverse=True)
        return {"models": entries}


class _SelfProc:
    """Stands in for a Popen where the 'runner' is the server itself (era B)."""

    pid = os.getpid()
    stdout = stderr = None
    returncode = None

    def poll(self) -> None:
        return None


def _expiry(keep_alive: float) -> dt.datetime:
    now = dt.datetime.now().astimezone()
    if keep_alive == float("inf"):
        return now + dt.timedelta(days=365 * 290)
    return now + dt.timedelta(seconds=keep_alive)


def _rfc3339(t: dt.datetime | None) -> str:
    """Go's time.Time JSON form (RFC 3339 with trimmed nanoseconds)."""
    if t is None:
        return "0001-01-01T00:00:00Z"
    frac = f"{t.microsecond:06d}".rstrip("0")
    off = t.utcoffset() or dt.timedelta(0)
    mins = int(off.total_seconds()) // 60
    zone = "Z" if mins == 0 else f"{'+' if mins > 0 else '-'}{abs(mins) // 60:02d}:" \
                                 f"{abs(mins) % 60:02d}"
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + zone


def _meminfo() -> tuple[int, int]:
    vals = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            vals[k] = int(v.split()[0]) * 1024
    return vals.get("MemTotal", 0), vals.get("MemAvailable", 0)


def _http_json(url: str, body: dict | None = None, timeout: float = 2) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = ""
    sys_version = ""

    @property
    def app(self) -> OllamaServer:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass  # access lines are Gin's, written in _gin

    def send_response(self, code: int, message: str | None = None) -> None:
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _reply(self, code: int, body: bytes | str | dict, ctype: str | None = None,
               head: bool = False) -> None:
        if isinstance(body, dict):
            payload = json.dumps(body, separators=(",", ":")).encode()
            ctype = ctype or "application/json; charset=utf-8"
        else:
            payload = body.encode() if isinstance(body, str) else body
            ctype = ctype or "text/plain; charset=utf-8"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not head:
            self.wfile.write(payload)
        self._status = code

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw.strip() else {}

    def _gin(self, started: float) -> None:
        emit(logfmt.gin_line(logfmt.now(), getattr(self, "_status", 200),
                             time.monotonic() - started, self.client_address[0],
                             self.command, self.path.split("?")[0]), fd=1)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_POST(self) -> None:
        self._dispatch(head=False)

    def do_DELETE(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        path = self.path.split("?")[0]
        if path.startswith("/_sim/"):
            try:
                self._sim(path)
            except Exception as e:  # the harness wants to see what went wrong
                self._reply(500, {"error": f"{type(e).__name__}: {e}"})
            return
        started = time.monotonic()
        if self._fault(path):
            self._gin(started)
            return
        try:
            self._api(path, head)
        except (BrokenPipeError, ConnectionResetError):
            return
        self._gin(started)

    def _fault(self, path: str) -> bool:
        """Apply a harness-requested fault to this API request; True if it answered."""
        f = self.app.fault
        if not f or (f.get("paths") and path not in f["paths"]):
            return False
        if f.get("remaining") is not None:
            if f["remaining"] <= 0:
                return False
            f["remaining"] -= 1
        mode = f["mode"]
        if mode == "hang":
            time.sleep(float(f.get("seconds", 5)))
            return False
        if mode == "error":
            self._reply(500, {"error": f.get("message", "simulated internal error")})
        elif mode == "garbage":
            self._reply(200, b'{"models":[{"name":"llama3.2:lat\x00\xff', "application/json")
        elif mode == "huge":
            n = int(f.get("bytes", 32 << 20))
            self._reply(200, b'{"models":[],"pad":"' + b"x" * n + b'"}', "application/json")
        elif mode == "close":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            self._status = 0
        else:
            return False
        return True

    def _api(self, path: str, head: bool) -> None:
        app = self.app
        if path == "/" and self.command in ("GET", "HEAD"):
            return self._reply(200, "Ollama is running", head=head)
        if path == "/api/version" and self.command in ("GET", "HEAD") \
                and app.era.at_least("0.1.14"):
            return self._reply(200, {"version": app.era.version}, head=head)
        if path == "/api/ps" and self.command == "GET" and app.era.at_least("0.1.38"):
            return self._reply(200, app.ps())
        if path == "/api/tags" and self.command in ("GET", "HEAD"):
            return self._reply(200, self._tags(), head=head)
        if path == "/api/generate" and self.command == "POST":
            return self._generate()
        if path == "/api/show" and self.command == "POST":
            return self._show()
        return self._reply(404, "404 page not found")

    def _tags(self) -> dict:
        out = []
        for name, manifest in models.list_models(self.app.host.models_dir):
            try:
                m = models.resolve(self.app.host.models_dir, name)
            except (OSError, ValueError, KeyError, StopIteration):
                continue
            mtime = dt.datetime.fromtimestamp(os.path.getmtime(manifest)).astimezone()
            out.append({"name": name, "model": name, "modified_at": _rfc3339(mtime),
                        "size": os.path.getsize(m.blob), "digest": m.digest,
                        "details": m.details})
        return {"models": out}

    def _show(self) -> None:
        name = self._body().get("model") or ""
        try:
            m = models.resolve(self.app.host.models_dir, name)
        except (OSError, StopIteration):
            return self._reply(404, {"error": f"model '{name}' not found"})
        return self._reply(200, {"modelfile": f"FROM {m.blob}\n", "details": m.details,
                                 "model_info": {"general.architecture": m.architecture,
                                                f"{m.architecture}.block_count": m.n_layer}})

    def _generate(self) -> None:
        app, body = self.app, self._body()
        name = body.get("model")
        if not name:
            return self._reply(400, {"error": "model is required"})
        try:
            model = models.resolve(app.host.models_dir, name)
        except (OSError, StopIteration):
            return self._reply(404, {"error": f"model '{name}' not found"})
        spec = app.scenario_for(model.name)
        keep = parse_keep_alive(body.get("keep_alive"), app.keep_alive)
        child = app.ensure_loaded(model, spec.get("scenario", "full_offload"),
                                  {**spec.get("options", {}), **(body.get("options") or {})},
                                  keep_alive=keep)
        child.finished.wait(float(app.opts.get("load_timeout", 60)) + 5)
        if child.state != "ready":
            return self._reply(500, {"error": child.error or "llama runner process has "
                                                            "terminated"})
        now = _rfc3339(dt.datetime.now().astimezone())
        reply = {"model": model.name, "created_at": now, "response": "", "done": True,
                 "done_reason": "load"}
        if body.get("prompt"):
            reply.update(response="The sky is blue because of Rayleigh scattering.",
                         done_reason="stop", total_duration=1000000, eval_count=9)
        if keep == 0:
            app.unload(model.name)
        return self._reply(200, reply)

    # -- harness control ---------------------------------------------------------------------

    def _sim(self, path: str) -> None:
        app = self.app
        body = self._body() if self.command == "POST" else {}
        if path == "/_sim/status":
            return self._reply(200, {"pid": os.getpid(), "discovered": app.discovered,
                                     "era": app.era.name, "version": app.era.version})
        if path == "/_sim/runners":
            with app.lock:
                return self._reply(200, {"children": [c.as_json() for c in app.children]})
        if path == "/_sim/load":
            return self._sim_load(body)
        if path == "/_sim/scenario":
            app.scenarios[models.ModelName.parse(body["model"]).short] = body
            return self._reply(200, {"ok": True})
        if path == "/_sim/crash":
            return self._sim_crash(body)
        if path == "/_sim/unload":
            child = app.unload(models.ModelName.parse(body["model"]).short)
            if child is None:
                return self._reply(404, {"error": "not loaded"})
            return self._reply(200, child.as_json())
        if path == "/_sim/fault":
            mode = body.get("mode", "none")
            app.fault = {} if mode == "none" else {**body, "remaining": body.get("count")}
            return self._reply(200, {"ok": True})
        if path == "/_sim/discover":
            app.discover(probes=body.get("probes", True))
            return self._reply(200, {"ok": True})
        if path == "/_sim/stop":
            self._reply(200, {"ok": True})
            app.stop_event.set()
            return None
        return self._reply(404, {"error": f"no such control endpoint {path}"})

    def _sim_load(self, body: dict) -> None:
        app = self.app
        model = models.resolve(app.host.models_dir, body["model"])
        child = app.ensure_loaded(model, body.get("scenario", "full_offload"),
                                  body.get("options") or {},
                                  keep_alive=parse_keep_alive(body.get("keep_alive"),
                                                              app.keep_alive))
        timeout = float(body.get("timeout", 60))
        if body.get("wait", "ready") == "ready":
            child.finished.wait(timeout)
            if child.state == "failed":
                child.exited.wait(timeout)
        else:
            child.spawned.wait(timeout)
            if child.port:
                _wait_http(f"http://127.0.0.1:{child.port}/health", child, timeout)
        return self._reply(200, child.as_json())

    def _sim_crash(self, body: dict) -> None:
        app = self.app
        name = models.ModelName.parse(body["model"]).short
        child = app.loaded.get(name)
        if child is None or not child.alive:
            return self._reply(404, {"error": f"{name} has no live runner"})
        if child.kind == "in-process":
            from . import runner as runner_mod
            self._reply(202, {"pid": child.pid})
            library = body.get("library") or app.era.ggml_cuda
            on_main_thread(lambda: runner_mod.crash(body["mode"], library, app.era))
            return None
        try:
            _http_json(f"http://127.0.0.1:{child.port}/_sim/crash", body, timeout=5)
        except (OSError, ValueError) as e:
            if child.alive and not child.exited.wait(0.5):
                return self._reply(500, {"error": f"runner did not take the crash: {e}"})
        child.exited.wait(float(body.get("timeout", 30)))
        return self._reply(200, child.as_json())


def _wait_http(url: str, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while child.alive and time.monotonic() < deadline:
        try:
            _http_json(url, timeout=1)
            return
        except (OSError, ValueError):
            time.sleep(0.01)


def main(host: HostConfig, argv: list[str]) -> int:
    return OllamaServer(host, argv).run()

