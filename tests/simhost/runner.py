"""The simulated model runners and discovery probes.

One module for every runner-like process the eras start: `ollama-runner` (A),
`ollama_llama_server` (C, D1, D2), `ollama runner` (D2 CPU, E, F), `llama-server` (G), the F/G
discovery probes and `ollama gpu-discover`. Each loads the era's libraries with the real
dynamic loader (by SONAME where the real program relies on the search path, by path where it
relies on RPATH or dlopens a path), writes the era's stderr lines, serves its HTTP endpoints
and crashes on request with a real signal, a Go crash trace, an exit status or by exhausting
memory.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import logfmt
from .eras import DRIVER_VERSION, LIB64, LIB_OLLAMA, Era
from .models import MemoryPlan, Model, from_blob
from .simproc import (
    HostConfig,
    allocate_forever,
    die_by,
    emit,
    go_crash_trace,
    load_library,
    loader_failure,
    mapped_library,
    on_main_thread,
    read_json,
    segfault_in,
    serve_main_thread,
)

CUDA_ARCHS = "500,600,610,700,750,800,860,870,890,900,1000,1200"
CPU_FEATURES = ("CPU.0.SSE3=1 CPU.0.SSSE3=1 CPU.0.AVX=1 CPU.0.AVX2=1 CPU.0.F16C=1 CPU.0.FMA=1 "
                "CPU.0.BMI2=1 CPU.0.LLAMAFILE=1 CPU.1.LLAMAFILE=1")

GO_FRAMES = {
    "llama": [
        ("github.com/ollama/ollama/llama._Cfunc_llama_decode", "_cgo_gotypes.go:548"),
        ("github.com/ollama/ollama/llama.(*Context).Decode",
         "github.com/ollama/ollama/llama/llama.go:186"),
        ("github.com/ollama/ollama/runner/llamarunner.(*Server).processBatch",
         "github.com/ollama/ollama/runner/llamarunner/runner.go:433"),
        ("github.com/ollama/ollama/runner/llamarunner.(*Server).run",
         "github.com/ollama/ollama/runner/llamarunner/runner.go:342"),
    ],
    "ollama": [
        ("github.com/ollama/ollama/ml/backend/ggml._Cfunc_ggml_backend_sched_graph_compute_async",
         "_cgo_gotypes.go:1050"),
        ("github.com/ollama/ollama/ml/backend/ggml.(*Context).ComputeWithNotify",
         "github.com/ollama/ollama/ml/backend/ggml/ggml.go:825"),
        ("github.com/ollama/ollama/runner/ollamarunner.(*Server).computeBatch",
         "github.com/ollama/ollama/runner/ollamarunner/runner.go:716"),
        ("github.com/ollama/ollama/runner/ollamarunner.(*Server).run",
         "github.com/ollama/ollama/runner/ollamarunner/runner.go:447"),
    ],
}
DEFAULT_MISSING = {"A": "libcudart.so.11.0", "C": "libcudart.so.12", "D1": "libcudart.so.12",
                   "D2": "libcudart.so.12", "E": "libggml-base.so", "F": "libggml-base.so",
                   "G": "libllama.so.0"}


def _flag(argv: list[str], *names: str) -> str | None:
    for name in names:
        if name in argv:
            i = argv.index(name)
            if i + 1 < len(argv):
                return argv[i + 1]
    return None


def slog(level: str, source: str, msg: str, *attrs: tuple[str, object]) -> None:
    emit(logfmt.slog_line(logfmt.now(), level, source, msg, list(attrs)))


def cpp_info(function: str, message: str, **kv: object) -> None:
    """Era C's C++ server log: `INFO [main] message | key="v" tid="..." timestamp=N`."""
    parts = [f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in kv.items()]
    parts += [f'tid="{threading.get_ident()}"', f"timestamp={int(time.time())}"]
    emit(f"INFO [{function}] {message} | " + " ".join(parts))


def cuda_init_lines(era: Era, host: HostConfig, ok: bool, error: str) -> None:
    fn = "ggml_init_cublas" if not era.at_least("0.1.32") else "ggml_cuda_init"
    if not ok:
        emit(f"{fn}: failed to initialize CUDA: {error}")
        return
    emit(f"{fn}: GGML_CUDA_FORCE_MMQ:    no")
    emit(f"{fn}: GGML_CUDA_FORCE_CUBLAS: no")
    emit(f"{fn}: found {len(host.gpus)} CUDA devices:")
    for i, g in enumerate(host.gpus):
        tail = f", ID: {g.uuid}" if era.at_least("0.11.5") else ""
        emit(f"  Device {i}: {g.name}, compute capability {g.compute}, VMM: yes{tail}")


def print_llama_cpp_load(era: Era, model: Model, ctx: int, offloaded: int, gpu: bool,
                         fn: str | None = None) -> None:
    """llama.cpp's model loading report (llama_model_loader, load_tensors, context)."""
    fn = fn or ("llm_load_tensors" if not era.at_least("0.5.13") else "load_tensors")
    meta_fn = "llm_load_print_meta" if fn == "llm_load_tensors" else "print_info"
    emit(f"llama_model_loader: loaded meta data with 7 key-value pairs and "
         f"{model.n_layer * 9 + 3} tensors from {model.blob} (version GGUF V3 (latest))")
    emit(f"llama_model_loader: - kv   0:                       general.architecture str"
         f"              = {model.architecture}")
    emit(f"llama_model_loader: - kv   1:                               general.name str"
         f"              = {model.display_name}")
    emit(f"{meta_fn}: arch             = {model.architecture}")
    emit(f"{meta_fn}: n_layer          = {model.n_layer}")
    emit(f"{meta_fn}: model params     = {model.details.get('parameter_size', '')}")
    plan = MemoryPlan.of(model, ctx)
    emit(f"{fn}: offloading {min(offloaded, model.n_layer)} repeating layers to GPU")
    if offloaded > model.n_layer:
        emit(f"{fn}: offloading non-repeating layers to GPU")
    emit(f"{fn}: offloaded {offloaded}/{model.layers} layers to GPU")
    gpu_w = plan.gpu_weights(offloaded)
    label = "model buffer size" if fn == "load_tensors" else "buffer size"
    cpu_name = "CPU_Mapped" if fn == "load_tensors" else "CPU"
    emit(f"{fn}: {cpu_name:>12} {label} = {(plan.weights - gpu_w) / (1 << 20):8.2f} MiB")
    if gpu and offloaded:
        emit(f"{fn}: {'CUDA0':>12} {label} = {gpu_w / (1 << 20):8.2f} MiB")
    ctx_fn = "llama_context" if era.name == "G" else "llama_new_context_with_model"
    emit(f"{ctx_fn}: n_ctx      = {ctx}")
    if gpu and offloaded:
        emit(f"llama_kv_cache_init:      CUDA0 KV buffer size = "
             f"{plan.gpu_kv(offloaded) / (1 << 20):8.2f} MiB")
    emit(f"{ctx_fn}: {'CUDA0' if gpu and offloaded else 'CPU':>10} compute buffer size = "
         f"{plan.graph / (1 << 20):8.2f} MiB")


def go_frames(era: Era, engine: str) -> list[tuple[str, str]]:
    return GO_FRAMES["ollama" if engine == "ollama" and era.name in ("E", "F") else "llama"]


def crash(mode: str, library: str, era: Era, engine: str = "llama") -> None:
    """Crash this process as `mode` says; returns only if the mode is unknown."""
    library = os.path.basename(library)
    if mode == "sigsegv":
        segfault_in(library)
    elif mode == "kill_segv":
        die_by(signal.SIGSEGV)
    elif mode == "abort":
        os.abort()
    elif mode == "go_crash":
        for line in go_crash_trace(library, go_frames(era, engine),
                                   goroutine_ids=era.at_least("0.5.0")):
            emit(line)
        os._exit(2)
    elif mode.startswith("exit:"):
        os._exit(int(mode.split(":", 1)[1]))
    elif mode == "oom":
        allocate_forever()
    else:
        raise ValueError(f"unknown crash mode {mode!r}")


class Runner:
    """One model runner process (or an F/G probe when argv has no --model)."""

    def __init__(self, host: HostConfig, era: Era, argv: list[str]):
        self.host, self.era, self.argv = host, era, argv
        self.root = host.root
        self.port = int(_flag(argv, "--port") or 0)
        self.blob = _flag(argv, "--model")
        self.spec: dict = read_json(host.state("run", f"{self.port}.json"), {}) or {}
        self.scenario = self.spec.get("scenario", "full_offload")
        self.opts: dict = self.spec.get("options", {}) or {}
        self.gpu = bool(self.spec.get("gpu", bool(host.gpus)))
        self.engine = self.spec.get("engine") or ("ollama" if "--ollama-engine" in argv
                                                  else era.default_engine)
        self.ctx = int(self.spec.get("ctx") or _flag(argv, "--ctx-size", "-c") or era.default_ctx)
        self.status = "loading model"
        self.offloaded = 0
        self.backends_loaded = False
        self.model = from_blob(self.blob, self.spec.get("model", "")) if self.blob else None
        self.load_lock = threading.Lock()

    # -- libraries ---------------------------------------------------------------------------

    @property
    def cuda_works(self) -> bool:
        return self.gpu and self.scenario != "cpu_fallback"

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def exec_libraries(self) -> list[str]:
        """What the loader maps at exec (DT_NEEDED of the real executable): names searched
        through LD_LIBRARY_PATH, or absolute paths where the real binary has an RPATH."""
        e, name = self.era, os.path.basename(self.argv[0])
        if e.name == "A":
            return ["libcudart.so.11.0"] if self.gpu else []
        if e.name == "C":
            return ["libllama.so"]
        if e.name in ("D1", "D2") and name == "ollama_llama_server":
            return ["libggml_cuda_v12.so"] if self.gpu else []
        if e.name in ("E", "F") and name == "ollama":
            return [self._path(f"{LIB_OLLAMA}/libggml-base.so")]
        if e.name == "G" and name == "llama-server":
            return [self._path(f"{LIB_OLLAMA}/libllama.so.0")]
        return []

    def load_exec_libraries(self, deferred: bool) -> None:
        """Map the exec-time libraries; a missing one ends the process like ld.so (127).
        With `deferred` only the CUDA-bearing ones (late_load) are loaded."""
        cuda_bearing = {"libllama.so", "libggml_cuda_v12.so", "libcudart.so.11.0"}
        for lib in self.exec_libraries():
            if (os.path.basename(lib) in cuda_bearing and self.gpu) != deferred:
                continue
            try:
                load_library(lib)
            except OSError as err:
                # ld.so names the DT_NEEDED entry; a path here stands for an RPATH lookup
                missing = os.path.isabs(lib) and not os.path.exists(lib)
                loader_failure(self.argv[0], f"{os.path.basename(lib)}: cannot open shared "
                               "object file: No such file or directory" if missing else str(err))

    def load_backends(self) -> None:
        """Runtime dlopen of the ggml backends (0.5.8+), plus cuInit through libcuda.so.1."""
        if self.backends_loaded:
            return
        self.backends_loaded = True
        e = self.era
        if self.scenario == "late_load":
            time.sleep(float(self.opts.get("delay", 1.0)))
            self.load_exec_libraries(deferred=True)
        if self.scenario == "bypass" and self.cuda_works:
            load_library(self._path(f"{LIB64}/libcuda.so.{DRIVER_VERSION}"))
        cpu = self._path(f"{LIB_OLLAMA}/libggml-cpu-haswell.so")
        cuda = self._path(f"{e.cuda_dir}/libggml-cuda.so")
        if e.name in ("E", "F", "G"):
            if e.name == "G":
                cuda = os.environ.get("GGML_BACKEND_PATH", cuda)
            if self.cuda_works:
                load_library(cuda)
                self._cuda_init()
                emit(f"load_backend: loaded CUDA backend from {cuda}")
            load_library(cpu)
            emit(f"load_backend: loaded CPU backend from {cpu}")
            if e.name == "F" and self.cuda_works:  # free VRAM is read through NVML first
                load_library("libnvidia-ml.so.1").nvmlInit_v2()
        elif self.cuda_works:
            self._cuda_init()

    def _cuda_init(self) -> None:
        ok = self.scenario != "cuda_init_failure"
        if ok:
            load_library("libcuda.so.1").cuInit(0)
        cuda_init_lines(self.era, self.host, ok,
                        self.opts.get("error", "no CUDA-capable device is detected"))

    # -- life cycle --------------------------------------------------------------------------

    def run(self) -> None:
        if self.scenario == "missing_library":
            lib = self.opts.get("library", DEFAULT_MISSING.get(self.era.name, "libcuda.so.1"))
            loader_failure(self.argv[0], f"{lib}: cannot open shared object file: No such "
                                         "file or directory")
        if self.scenario == "bypass" and self.era.name in ("C", "D1", "D2") and self.gpu:
            load_library(self._path(f"{LIB64}/libcuda.so.{DRIVER_VERSION}"))
        self.load_exec_libraries(deferred=False)
        if self.scenario != "late_load":
            self.load_exec_libraries(deferred=True)
        self.intro()
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), RunnerHandler)
        httpd.daemon_threads = True
        httpd.runner = self  # type: ignore[attr-defined]
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        self.listening()
        if self.model is not None and not self.era.uses_load_requests:
            threading.Thread(target=self.load_model, daemon=True).start()
        serve_main_thread()

    def intro(self) -> None:
        """What the runner prints before it listens."""
        e = self.era
        if e.name == "A":
            emit(json.dumps({"timestamp": int(time.time()), "level": "INFO", "function": "main",
                             "line": 2667, "message": "build info", "build": 1,
                             "commit": "328b83d"}, separators=(",", ":")))
        elif e.name == "C":
            cpp_info("main", "build info", build=3871, commit="6f8c2a4")
            cpp_info("main", "system info", n_threads=8, n_threads_batch=8,
                     system_info="AVX = 1 | AVX_VNNI = 0 | AVX2 = 0 | AVX512 = 0 | FMA = 0 | "
                                 "F16C = 0 | SSE3 = 1 | SSSE3 = 1 | LLAMAFILE = 1 | ")
        elif e.name in ("D1", "D2"):
            slog("INFO", "runner.go:936", "starting go runner")
            slog("INFO", "runner.go:937", "system",
                 ("info", f"CUDA : ARCHS = {CUDA_ARCHS} | USE_GRAPHS = 1 | "
                          "PEER_MAX_BATCH_SIZE = 128 | CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | "
                          "LLAMAFILE = 1 | cgo(gcc)" if self.cuda_works
                  else "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | LLAMAFILE = 1 | cgo(gcc)"),
                 ("threads", 8))
        elif e.name == "E":
            slog("INFO", "runner.go:815", "starting ollama engine" if self.engine == "ollama"
                 else "starting go runner")
            if self.scenario != "late_load":
                self.load_backends()
                self._system_line()
        elif e.name == "F":
            slog("INFO", "runner.go:1398", "starting ollama engine" if self.engine == "ollama"
                 else "starting go runner")
        elif e.name == "G":
            if self.scenario != "late_load":
                self.load_backends()
            emit("build: 6500 (5a1b2c3d) with cc (Debian 12.2.0-14) 12.2.0 for "
                 "x86_64-linux-gnu")
            emit("system info: n_threads = 8, n_threads_batch = 8, total_threads = 16")
            emit("")
            cuda = f"CUDA : ARCHS = {CUDA_ARCHS} | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | "
            emit(f"system_info: n_threads = 8 (n_threads_batch = 8) / 16 | "
                 f"{cuda if self.cuda_works and self.scenario != 'cuda_init_failure' else ''}"
                 "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
                 "BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |")
            emit("")

    def _system_line(self) -> None:
        cuda = (f" CUDA.0.ARCHS={CUDA_ARCHS} CUDA.0.USE_GRAPHS=1 CUDA.0.PEER_MAX_BATCH_SIZE=128"
                if self.cuda_works and self.scenario != "cuda_init_failure" else "")
        emit(logfmt.slog_line(logfmt.now(), "INFO", "ggml.go:104", "system",
                              []) + f" {CPU_FEATURES}{cuda} compiler=cgo(gcc)")

    def listening(self) -> None:
        e, addr = self.era, f"127.0.0.1:{self.port}"
        if e.name == "C":
            cpp_info("main", "HTTP server listening", hostname="127.0.0.1",
                     n_threads_http="15", port=str(self.port))
        elif e.name in ("D1", "D2"):
            slog("INFO", ".:0", f"Server listening on {addr}")
        elif e.name in ("E", "F"):
            slog("INFO", "runner.go:874" if e.name == "E" else "runner.go:1433",
                 f"Server listening on {addr}")
        elif e.name == "G":
            emit("main: binding port with default address family")
            emit(f"main: HTTP server is listening, hostname: 127.0.0.1, port: {self.port}, "
                 "http threads: 15")
            if self.model is None:
                return
            emit("main: loading model")
            emit(f"srv    load_model: loading model '{self.blob}'")

    def load_model(self) -> None:
        """Load the model as the runner does, following the scenario."""
        with self.load_lock:
            if self.status == "ok":
                return
            time.sleep(float(self.opts.get("load_seconds", 0.05)))
            self.load_backends()
            self._scenario_failure()
            self.offloaded = int(self.spec.get("gpu_layers", 0)) \
                if self.cuda_works and self.scenario != "cuda_init_failure" else 0
            e, m = self.era, self.model
            assert m is not None
            if self.era.name == "G" and self.cuda_works:
                g = self.host.gpus[0]
                emit(f"llama_model_load_from_file_impl: using device CUDA0 ({g.name}) "
                     f"({g.pci_id}) - {g.free >> 20} MiB free")
            if e.name == "F" and self.engine == "ollama":
                self._ollama_engine_report()
            else:
                print_llama_cpp_load(e, m, self.ctx, self.offloaded,
                                     self.cuda_works and self.scenario != "cuda_init_failure")
            if e.name == "C":
                cpp_info("main", "model loaded")
            elif e.name == "A":
                emit(json.dumps({"timestamp": int(time.time()), "level": "INFO",
                                 "function": "main", "line": 3094, "message": "model loaded"},
                                separators=(",", ":")))
            elif e.name == "G":
                emit("main: model loaded")
                emit(f"main: server is listening on http://127.0.0.1:{self.port}")
                emit("main: starting the main loop...")
                emit("srv  update_slots: all slots are idle")
            self.status = "ok"

    def _ollama_engine_report(self) -> None:
        m = self.model
        assert m is not None
        plan = MemoryPlan.of(m, self.ctx)
        n = self.offloaded
        slog("INFO", "ggml.go:482", f"offloading {min(n, m.n_layer)} repeating layers to GPU")
        slog("INFO", "ggml.go:489",
             f"offloading output layer to {'GPU' if n > m.n_layer else 'CPU'}")
        slog("INFO", "ggml.go:494", f"offloaded {n}/{m.layers} layers to GPU")
        gpu_w = plan.gpu_weights(n)
        if n:
            slog("INFO", "device.go:245", "model weights", ("device", "CUDA0"),
                 ("size", logfmt.human_bytes(gpu_w)))
        slog("INFO", "device.go:245", "model weights", ("device", "CPU"),
             ("size", logfmt.human_bytes(plan.weights - gpu_w)))
        slog("INFO", "device.go:256", "kv cache", ("device", "CUDA0" if n else "CPU"),
             ("size", logfmt.human_bytes(plan.kv)))
        slog("INFO", "device.go:267", "compute graph", ("device", "CUDA0" if n else "CPU"),
             ("size", logfmt.human_bytes(plan.graph)))
        slog("INFO", "device.go:272", "total memory", ("size", logfmt.human_bytes(plan.total)))

    def _scenario_failure(self) -> None:
        """Scenarios that end the load in a failure: they never return."""
        e, sc = self.era, self.scenario
        lib = os.path.basename(self.opts.get("library") or e.ggml_cuda)
        if sc == "go_crash":
            crash("go_crash", lib, e, self.engine)
        if sc == "cxx_crash":
            if self.opts.get("signal", "abort") == "segv":
                crash("sigsegv", lib, e)
            emit("/home/runner/work/ollama/ollama/ml/backend/ggml/ggml/src/ggml-cuda/"
                 "ggml-cuda.cu:96: GGML_ASSERT(err == cudaSuccess) failed")
            crash("abort", lib, e)
        if sc == "oom":
            self._cuda_oom()

    def _cuda_oom(self) -> None:
        e, m = self.era, self.model
        assert m is not None
        size = MemoryPlan.of(m, self.ctx).gpu_weights(int(self.spec.get("gpu_layers", 0)))
        emit(f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating {size / (1 << 20):.2f} "
             f"MiB on device 0: cudaMalloc failed: out of memory")
        emit(f"alloc_tensor_range: failed to allocate CUDA0 buffer of size {size}")
        emit("llama_model_load: error loading model: unable to allocate CUDA0 buffer")
        fn = "llama_model_load_from_file_impl" if e.at_least("0.5.13") \
            else "llama_load_model_from_file"
        emit(f"{fn}: failed to load model")
        if e.go_runner:
            emit(f"panic: unable to load model: {self.blob}")
            emit("")
            emit("goroutine 20 [running]:" if not e.at_least("0.5.0")
                 else "goroutine 20 gp=0xc000504380 m=4 mp=0xc000100808 [running]:")
            emit("github.com/ollama/ollama/runner/llamarunner.(*Server).loadModel(...)")
            emit("\tgithub.com/ollama/ollama/runner/llamarunner/runner.go:789 +0x3c5")
            emit("created by github.com/ollama/ollama/runner/llamarunner.Execute in "
                 "goroutine 1")
            emit("\tgithub.com/ollama/ollama/runner/llamarunner/runner.go:925 +0xc6f")
            os._exit(2)
        if e.name == "G":
            emit(f"common_init_from_params: failed to load model '{self.blob}'")
            emit(f"srv    load_model: failed to load model, '{self.blob}'")
            emit("main: exiting due to model loading error")
        elif e.name == "C":
            emit(f'ERROR [load_model] unable to load model | model="{self.blob}" '
                 f'tid="{threading.get_ident()}" timestamp={int(time.time())}')
        os._exit(1)

    def handle_load(self, op: str) -> dict:
        """POST /load (0.11.5+): fit, alloc, commit."""
        m = self.model
        assert m is not None
        layers = int(self.spec.get("gpu_layers", 0)) if self.cuda_works else 0
        uuid = self.spec.get("gpu_uuid", "")
        gpu_layers = f"{layers}[ID:{uuid} Layers:{layers}(0..{layers - 1})]" if layers else "[]"
        slog("INFO", "runner.go:1271", "load",
             ("request", f"{{Operation:{op} LoraPath:[] Parallel:1 BatchSize:512 "
                         f"FlashAttention:Auto KvSize:{self.ctx} KvCacheType: NumThreads:8 "
                         f"GPULayers:{gpu_layers} MultiUserCache:false ProjectorPath: "
                         f"MainGPU:0 UseMmap:false}}"))
        if op == "fit":
            slog("INFO", "ggml.go:136", "", ("architecture", m.architecture),
                 ("file_type", "Q4_K_M"), ("name", m.display_name), ("description", ""),
                 ("num_tensors", m.n_layer * 9 + 3), ("num_key_values", 7))
            self.load_backends()
            self._system_line()
        if op == "commit":
            self.load_model()
        return {"Success": True}

    def info(self) -> list[dict]:
        """GET /info of a probe: load the backends, report the devices."""
        self.load_backends()
        if not (self.cuda_works and self.scenario != "cuda_init_failure"):
            return []
        return [{"id": g.uuid, "library": "CUDA", "name": f"CUDA{i}", "description": g.name,
                 "compute": g.compute, "driver": g.driver, "pci_id": g.pci_id,
                 "total_memory": g.total, "free_memory": g.free}
                for i, g in enumerate(self.host.gpus)]


class RunnerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def runner(self) -> Runner:
        return self.server.runner  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, code: int, obj: object) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}") if n else {}

    def do_GET(self) -> None:
        r = self.runner
        if self.path == "/health":
            return self._reply(200, {"status": r.status, "progress": 1 if r.status == "ok"
                                     else 0.5, "offloaded": r.offloaded})
        if self.path == "/info":
            return self._reply(200, r.info())
        return self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        r, body = self.runner, self._body()
        if self.path == "/load":
            return self._reply(200, r.handle_load(body.get("Operation", "commit")))
        if self.path == "/completion":
            return self._reply(200, {"content": "The sky is blue.", "stop": True})
        if self.path == "/_sim/crash":
            mode = body.get("mode", "sigsegv")
            library = body.get("library") or r.era.ggml_cuda
            if mode in ("sigsegv", "go_crash") and not mapped_library(
                    os.path.basename(library)):
                return self._reply(409, {"error": f"{library} is not mapped"})
            self._reply(202, {"pid": os.getpid(), "mode": mode})
            thread = body.get("thread", "main")
            if thread == "main":
                return on_main_thread(lambda: crash(mode, library, r.era, r.engine))
            return crash(mode, library, r.era, r.engine)
        return self._reply(404, {"error": "not found"})


def gpu_discover(host: HostConfig) -> None:
    """`ollama gpu-discover --lib-dir DIR` (era G): load the driver and NVML, print, exit."""
    try:
        cuda = load_library("libcuda.so.1")
        load_library("libnvidia-ml.so.1").nvmlInit_v2()
    except OSError as err:
        emit(json.dumps({"error": str(err)}), fd=1)
        os._exit(1)
    cuda.cuInit(0)
    emit(json.dumps([{"id": g.uuid, "library": "CUDA", "name": g.name, "total": g.total,
                      "free": g.free} for g in host.gpus]), fd=1)


def list_devices(host: HostConfig, era: Era) -> None:
    """`llama-server --list-devices`: load the backend, print the devices, exit."""
    r = Runner(host, era, ["llama-server"])
    r.gpu, r.spec = bool(host.gpus), {}
    load_library(os.path.join(host.root, LIB_OLLAMA, "libllama.so.0"))
    r.load_backends()
    emit("Available devices:", fd=1)
    for i, g in enumerate(host.gpus):
        emit(f"  CUDA{i}: {g.name} ({g.total >> 20} MiB, {g.free >> 20} MiB free)", fd=1)


def main(host: HostConfig, argv: list[str]) -> None:
    era = Era.get(host.era, host.version)
    name = os.path.basename(argv[0])
    if name == "ollama" and argv[1:2] == ["gpu-discover"]:
        return gpu_discover(host)
    if name == "llama-server" and "--list-devices" in argv:
        return list_devices(host, era)
    Runner(host, era, argv).run()
    return None

