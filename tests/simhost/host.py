"""The test-facing API: SimHost (a simulated Ollama host), SimServer, SimRunner.

Everything here runs in the test process. It builds the tree, starts the real `ollama serve`
process of the chosen era and drives it through its `/_sim/` control endpoints; what the
tests then observe (/proc, the log, the API, the kernel log) comes from real processes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import build, eras, journal, models, tree
from .cgroups import MemoryCgroup
from .eras import LIB64, LIB_OLLAMA, Era
from .simproc import Gpu, write_json

DEFAULT_GPU = Gpu(uuid="GPU-076afa50-fc31-49ca-be1d-f9e53480fe75", name="NVIDIA A10",
                  compute="8.6", driver="12.8", pci_id="0000:3b:00.0",
                  total=23727570944, free=23299883008)
SERVER_ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SimHostError(RuntimeError):
    """The simulated host did not do what the harness asked; the message has the log tail."""


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.01):
    """Poll `predicate` until it returns a truthy value; SimHostError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SimHostError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _http(url: str, body: dict | None = None, timeout: float = 10,
          method: str | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _proc_exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@dataclass
class SimRunner:
    """A runner (or probe) as the server recorded it; `refresh()` re-reads the record."""

    server: SimServer
    record: dict

    id = property(lambda self: self.record["id"])
    pid = property(lambda self: self.record["pid"])
    port = property(lambda self: self.record["port"])
    blob = property(lambda self: self.record["blob"])
    model = property(lambda self: self.record["model"])
    argv = property(lambda self: self.record["argv"])
    kind = property(lambda self: self.record["kind"])
    scenario = property(lambda self: self.record["scenario"])
    state = property(lambda self: self.record["state"])
    error = property(lambda self: self.record["error"])
    wait_status = property(lambda self: self.record["wait_status"])
    exit_text = property(lambda self: self.record["exit_text"])

    def refresh(self) -> SimRunner:
        if self.record["kind"] == "in-process":
            status = self.server.poll()
            if status is not None:
                self.record = {**self.record, "wait_status": status, "state": "exited"}
            return self
        for rec in self.server.children_records():
            if rec["id"] == self.id:
                self.record = rec
        return self

    @property
    def alive(self) -> bool:
        return self.refresh().wait_status is None

    def wait_exit(self, timeout: float = 30) -> int:
        """Wait until the server reaped this process; its raw wait status."""
        wait_until(lambda: not self.alive, timeout, f"pid {self.pid} to exit")
        return self.wait_status

    def wait_ready(self, timeout: float = 30) -> SimRunner:
        wait_until(lambda: self.refresh().state in ("ready", "failed", "exited"), timeout,
                   f"runner {self.pid} to finish loading")
        return self

    def maps(self) -> str:
        with open(f"/proc/{self.pid}/maps") as f:
            return f.read()

    def mapped_paths(self) -> set[str]:
        return {line.split(None, 5)[5] for line in self.maps().splitlines()
                if len(line.split(None, 5)) == 6}

    def maps_library(self, name_or_path: str) -> bool:
        """Whether a mapped file has this path or this basename."""
        return any(p == name_or_path or os.path.basename(p) == name_or_path
                   for p in self.mapped_paths())

    def comm(self) -> str:
        return Path(f"/proc/{self.pid}/comm").read_text().rstrip("\n")

    def cmdline(self) -> list[str]:
        return Path(f"/proc/{self.pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")

    def ppid(self) -> int:
        return int(Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@dataclass
class SimServer:
    """A running simulated `ollama serve`."""

    host: SimHost
    proc: subprocess.Popen
    port: int
    log_offset: int
    status: int | None = None
    cgroups: list[MemoryCgroup] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- process ---------------------------------------------------------------------------

    def poll(self) -> int | None:
        """The server's raw wait status once it exited (reaped here), else None."""
        if self.status is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.status = status
                    self.proc.returncode = (os.WEXITSTATUS(status) if os.WIFEXITED(status)
                                            else -os.WTERMSIG(status))
        return self.status

    @property
    def alive(self) -> bool:
        return self.poll() is None

    def wait(self, timeout: float = 10) -> int:
        """Wait for the server to exit; its raw wait status."""
        wait_until(lambda: self.poll() is not None, timeout, f"server {self.pid} to exit")
        assert self.status is not None
        return self.status

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM (Ollama unloads its runners and exits), SIGKILL if it hangs."""
        if self.alive:
            self.kill(signal.SIGTERM)
            try:
                self.wait(timeout)
            except SimHostError:
                self.kill(signal.SIGKILL)
                self.wait(timeout)
        for cg in self.cgroups:
            cg.remove()
        return self.status

    # -- HTTP ------------------------------------------------------------------------------

    def request(self, path: str, body: dict | None = None, timeout: float = 60,
                method: str | None = None) -> tuple[int, bytes]:
        return _http(self.url + path, body, timeout, method)

    def api(self, path: str, body: dict | None = None, timeout: float = 60) -> dict:
        """An Ollama API call answered with JSON (raises on a non-2xx status)."""
        code, data = self.request(path, body, timeout)
        if code // 100 != 2:
            raise SimHostError(f"{path}: HTTP {code}: {data[:500]!r}")
        return json.loads(data)

    def _sim(self, path: str, body: dict | None = None, timeout: float = 60) -> dict:
        code, data = self.request(f"/_sim/{path}", body if body is not None else {}, timeout)
        if code // 100 != 2:
            raise SimHostError(f"/_sim/{path}: HTTP {code}: {data[:500]!r}\n"
                               f"{self.host.log_tail()}")
        return json.loads(data)

    def children_records(self) -> list[dict]:
        code, data = self.request("/_sim/runners", timeout=10)
        if code != 200:
            raise SimHostError(f"/_sim/runners: HTTP {code}")
        return json.loads(data)["children"]

    def children(self, kind: str | None = None) -> list[SimRunner]:
        """Every runner and probe this server started (live or not), oldest first."""
        return [SimRunner(self, r) for r in self.children_records()
                if kind is None or r["kind"] == kind]

    def runner(self, model: str) -> SimRunner:
        """The latest runner of `model`."""
        short = models.ModelName.parse(model).short
        found = [r for r in self.children() if r.model == short and r.kind != "probe"]
        if not found:
            raise SimHostError(f"no runner was started for {short}")
        return found[-1]

    # -- what the harness asks ---------------------------------------------------------------

    def load_model(self, model: str, scenario: str = "full_offload", *,
                   wait: str | None = None, timeout: float = 30,
                   keep_alive: str | float | None = None, **options) -> SimRunner:
        """Load `model` like Ollama does, following `scenario`. Returns once the runner has
        mapped its libraries and reported ready, or has died (failure scenarios); with
        wait="spawned" (the default for late_load) once its HTTP server answers."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
        wait = wait or ("spawned" if scenario == "late_load" else "ready")
        rec = self._sim("load", {"model": model, "scenario": scenario, "options": options,
                                 "wait": wait, "timeout": timeout, "keep_alive": keep_alive},
                        timeout=timeout + 10)
        return SimRunner(self, rec)

    def set_scenario(self, model: str, scenario: str, **options) -> None:
        """The scenario of loads the server does by itself (POST /api/generate)."""
        self._sim("scenario", {"model": model, "scenario": scenario, "options": options})

    def crash_runner(self, model: str, mode: str = "sigsegv", library: str | None = None, *,
                     cgroup: bool = True, memory_limit: int = 96 << 20,
                     thread: str = "main", timeout: float = 30) -> SimRunner:
        """Make the runner of `model` die (see CRASH_MODES); returns it once reaped.

        sigsegv  write through NULL in `library` (default: the era's ggml-cuda library)
        kill_segv the harness sends SIGSEGV
        abort    os.abort()
        go_crash a Go crash trace with its PC in `library`, then exit status 2
        exit:N   exit status N
        oom      allocate without bound; with cgroup=True the runner is first moved into
                 a memory cgroup limited to `memory_limit`, so the kernel OOM killer kills
                 it (cgroup=False leaves it to the global OOM killer: careful)
        unload   the server SIGKILLs it, as Ollama does on unload

        The fault happens on the runner's main thread (the kernel's segfault record then
        names the runner's PID); thread="worker" uses an HTTP worker thread (a TID).
        """
        if mode == "unload":
            return self.unload(model)
        if mode not in CRASH_MODES and not re.fullmatch(r"exit:\d+", mode):
            raise ValueError(f"unknown crash mode {mode!r}")
        runner = self.runner(model)
        if runner.kind == "in-process":
            self.request("/_sim/crash", {"model": model, "mode": mode, "library": library},
                         timeout=5)
            self.wait(timeout)
            return runner.refresh()
        if not runner.alive:
            raise SimHostError(f"runner of {model} (pid {runner.pid}) is not alive")
        if mode == "kill_segv":
            os.kill(runner.pid, signal.SIGSEGV)
            runner.wait_exit(timeout)
            return runner
        if mode == "oom" and cgroup:
            cg = MemoryCgroup.create(f"simhost-{os.getpid()}-{runner.pid}", memory_limit)
            self.cgroups.append(cg)
            cg.add(runner.pid)
        rec = self._sim("crash", {"model": model, "mode": mode, "library": library,
                                  "thread": thread, "timeout": timeout}, timeout=timeout + 10)
        runner.record = rec
        return runner.refresh() if runner.alive else runner

    def unload(self, model: str) -> SimRunner:
        """What Ollama does on keep-alive expiry or eviction: SIGKILL the runner."""
        return SimRunner(self, self._sim("unload", {"model": model}))

    def discover(self) -> None:
        """Run the era's GPU discovery again (F/G: new probe processes)."""
        self._sim("discover")

    def fault(self, mode: str, *, seconds: float = 5, count: int | None = None,
              paths: list[str] | None = None, **extra) -> None:
        """Make API answers misbehave: hang (for `seconds`), error (HTTP 500), garbage
        (invalid JSON), huge (a ~32 MiB body; `bytes=`), close (drop the connection), none.
        `count` limits it to that many requests, `paths` to those paths."""
        self._sim("fault", {"mode": mode, "seconds": seconds, "count": count, "paths": paths,
                            **extra})

    def clear_fault(self) -> None:
        self.fault("none")

    def generate(self, model: str, prompt: str = "", keep_alive: str | float | None = None,
                 timeout: float = 60) -> tuple[int, dict]:
        """POST /api/generate as a client (and `vgpumon doctor --load-model`) would."""
        body: dict = {"model": model, "prompt": prompt, "stream": False}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        code, data = self.request("/api/generate", body, timeout)
        return code, json.loads(data) if data.strip() else {}


SCENARIOS = ("full_offload", "partial_offload", "cpu_fallback", "cuda_init_failure", "oom",
             "go_crash", "cxx_crash", "late_load", "missing_library", "bypass")
CRASH_MODES = ("sigsegv", "kill_segv", "abort", "go_crash", "oom", "unload")


class SimHost:
    """A simulated Ollama host under `root`: tree, model store, server, log."""

    def __init__(self, root: Path, era: Era, port: int, shim_links: bool):
        self.root = root
        self.era = era
        self.port = port
        self.shim_links = shim_links
        self.servers: list[SimServer] = []
        self.segments: list[tuple[int, int]] = []   # (log offset, server pid)

    # -- creation --------------------------------------------------------------------------

    @classmethod
    def create(cls, base: str | os.PathLike, era: str = "F", *, version: str | None = None,
               shim_links: bool = True, gpus: list[Gpu] | None = None,
               name: str = "host", cuda_shim_soname: str | None = None) -> SimHost:
        """Build a host of `era` (and `version`) under `base`/`name`. `shim_links=False`
        builds a host without vGPU links (libcuda.so.1 -> the real driver).
        `cuda_shim_soname="libcuda.so.1"`: the CUDA shim carries the driver's SONAME."""
        e = Era.get(era, version)
        root = Path(base).resolve() / name
        root.mkdir(parents=True, exist_ok=False)
        toolchain = build.build(tree.lib_specs())
        tree.install(root, e, toolchain, shim_links, cuda_shim_soname)
        host = cls(root, e, _free_port(), shim_links)
        for d in (host.models_dir, host.root / "tmp", host.log_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        write_json(str(root / ".simhost" / "host.json"), {
            "era": e.name, "version": e.version, "models_dir": str(host.models_dir),
            "gpus": [g.__dict__ for g in (gpus if gpus is not None else [DEFAULT_GPU])],
        })
        host.log_file.touch()
        return host

    # paths, all on the host (the test process's view)
    lib64 = property(lambda self: self.root / LIB64)
    ollama_lib = property(lambda self: self.root / LIB_OLLAMA)
    cuda_dir = property(lambda self: self.root / self.era.cuda_dir)
    ggml_cuda = property(lambda self: self.root / self.era.ggml_cuda)
    models_dir = property(lambda self: self.root / "usr/share/ollama/.ollama/models")
    log_file = property(lambda self: self.root / "var/log/ollama.log")
    server_exe = property(lambda self: self.root / eras.BIN)
    real_driver = property(lambda self: self.root / tree.REAL_DRIVER)

    def shim(self, name: str) -> Path:
        """Path of a shim: shim("cuda") -> <root>/usr/lib64/libvgpu-cuda.so."""
        return self.lib64 / f"libvgpu-{name}.so"

    def links(self) -> list[tuple[Path, Path]]:
        """The default `links:` inside this host, as (link, the shim it should reach);
        those in directories the era does not have (cuda_v12/ before 0.5.8) are left out."""
        wanted = [(self.lib64 / "libcuda.so.1", self.shim("cuda")),
                  (self.lib64 / "libcudart.so.12", self.shim("cudart")),
                  (self.ollama_lib / "cuda_v12/libcuda.so.1", self.shim("cuda")),
                  (self.ollama_lib / "cuda_v12/libcudart.so.12.8.90", self.shim("cudart"))]
        return [(p, t) for p, t in wanted if p.parent.is_dir()]

    # -- models ------------------------------------------------------------------------------

    def add_model(self, name: str, layers: int = 29, **kw) -> str:
        """A real manifest + metadata-only GGUF blob; returns the blob digest `sha256:<hex>`.
        Keywords: family, parameter_size, quantization, weights_bytes, context_length."""
        return models.add_model(str(self.models_dir), name, layers=layers, **kw)

    def model(self, name: str) -> models.Model:
        return models.resolve(str(self.models_dir), name)

    # -- vgpumon -----------------------------------------------------------------------------

    def vgpumon_config(self, listen: str = "127.0.0.1:0", **overrides) -> dict:
        """A vgpumon config (docs/configuration.md) for this host; `overrides` merge in deeply."""
        r = str(self.root)
        ggml = ({"name": "libggml-cuda.so*"} if self.era.name in ("E", "F", "G") else
                {"name": "libggml_cuda_v12.so*"} if self.era.name in ("D1", "D2") else
                {"path": str(self.ggml_cuda)})
        cfg: dict = {
            "listen": listen,
            "interval": "5s",
            "procfs": "/proc",
            "libraries": {
                **{f"vgpu-{s}": {"path": str(self.shim(s))}
                   for s in ("exec", "cuda", "nvml", "cudart")},
                "ggml-cuda": ggml,
                "cuda-driver": {"name": "libcuda.so.*", "driver": True},
            },
            "shims": ["vgpu-exec", "vgpu-cuda", "vgpu-nvml", "vgpu-cudart"],
            "links": [{"path": str(p), "target": str(t)} for p, t in self.links()],
            "groups": {  # with the built-in identity rules: the simulated programs pass them
                "server": {"comm": "^ollama$", "cmdline": "\\bserve\\b",
                           "expect": ["vgpu-exec", "vgpu-cuda", "vgpu-nvml", "vgpu-cudart"],
                           **identity(parent=None)},
                "runner": {"cmdline": "(ollama runner|ollama_llama_server|llama-server|"
                                      "ollama-runner).*--model",
                           "expect": ["vgpu-exec", "vgpu-cuda", "ggml-cuda"],
                           **identity(parent="server")},
                "discovery": {"cmdline": "(ollama runner|llama-server|ollama gpu-discover)",
                              "expect": [], **identity(parent="server")},
            },
            "crash_loop": {"crashes": 3, "window": "10m"},
            "ollama": {"url": f"http://127.0.0.1:{self.port}", "timeout": "2s",
                       "log": {"file": str(self.log_file)}, "models_dir": str(self.models_dir)},
            "events": {"file": f"{r}/var/lib/vgpumon/events.jsonl", "max_bytes": 10485760},
        }
        return _merge(cfg, overrides)

    # -- the server ----------------------------------------------------------------------------

    def server_env(self, preload_shims: bool | list[str] = True, debug: bool = False,
                   env: dict[str, str] | None = None) -> dict[str, str]:
        """The environment `ollama serve` gets (systemd-like: small and explicit).
        LD_LIBRARY_PATH=<root>/usr/lib64 stands in for the loader's default directories."""
        out = {"PATH": SERVER_ENV_PATH, "HOME": str(self.root / "usr/share/ollama"),
               "LANG": "C.UTF-8", "OLLAMA_HOST": f"127.0.0.1:{self.port}",
               "OLLAMA_MODELS": str(self.models_dir), "LD_LIBRARY_PATH": str(self.lib64),
               "TMPDIR": str(self.root / "tmp")}
        if preload_shims:
            names = (["exec", "cuda", "nvml", "cudart"] if preload_shims is True
                     else list(preload_shims))
            out["LD_PRELOAD"] = ":".join(str(self.shim(n)) for n in names)
        if debug:
            out["OLLAMA_DEBUG"] = "1"
        out.update(env or {})
        return out

    def start_server(self, *, preload_shims: bool | list[str] = True,
                     env: dict[str, str] | None = None, gpus: int | None = None,
                     probes: bool = True, debug: bool = False, timeout: float = 30,
                     wrap: Callable[[list[str]], list[str]] | None = None,
                     **options) -> SimServer:
        """Start `<root>/usr/local/bin/ollama serve`; returns once its API answers and its
        GPU discovery is done. `gpus=0`: CPU-only discovery. `probes=False`: no F/G probe
        processes. Options: probe_hold, discovery_hold (seconds the server keeps the probe
        or the dlopened driver), load_timeout, scenario (default for API-driven loads).
        `wrap(argv)` returns the command that ends by exec'ing argv (e.g. `unshare` to start
        the server, and so its runners, in a mount namespace of its own: a "container")."""
        write_json(str(self.root / ".simhost" / "server.json"), {
            "gpus": gpus, "probes": probes, **options})
        offset = self.log_file.stat().st_size
        with open(self.log_file, "ab") as log:
            argv = [str(self.server_exe), "serve"]
            proc = subprocess.Popen(wrap(argv) if wrap else argv,
                                    env=self.server_env(preload_shims, debug, env),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    cwd=str(self.root), start_new_session=True)
        server = SimServer(self, proc, self.port, offset)
        self.servers.append(server)
        self.segments.append((offset, proc.pid))

        def up() -> bool:
            if not server.alive:
                raise SimHostError(f"ollama serve exited ({server.status}) while starting:\n"
                                   f"{self.log_tail()}")
            try:
                code, data = server.request("/_sim/status", timeout=1)
            except OSError:
                return False
            return code == 200 and json.loads(data).get("discovered")

        try:
            wait_until(up, timeout, "ollama serve to answer")
        except SimHostError:
            server.stop()
            raise
        return server

    # -- changing the host ---------------------------------------------------------------------

    def set_link(self, path: str | os.PathLike, target: str | os.PathLike) -> None:
        """`ln -sf target path`: a symlink under a temporary name renamed over `path`."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.simhost-tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(os.fspath(target), tmp)
        os.rename(tmp, path)

    def replace_file(self, path: str | os.PathLike) -> None:
        """Put a new inode at `path` (copy + rename), as package managers do; processes that
        mapped the old file now show it `(deleted)`."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.simhost-new")
        shutil.copy2(path, tmp)
        os.rename(tmp, path)

    def remove(self, path: str | os.PathLike) -> None:
        os.unlink(path)

    # -- the log -----------------------------------------------------------------------------

    def log_text(self, since: int = 0) -> str:
        with open(self.log_file, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def wait_log(self, pattern: str, timeout: float = 10, since: int = 0) -> re.Match:
        """Wait until the log (from byte `since`) matches the regex `pattern`."""
        rx = re.compile(pattern, re.M)
        try:
            return wait_until(lambda: rx.search(self.log_text(since)), timeout,
                              f"log line /{pattern}/")
        except SimHostError as e:
            raise SimHostError(f"{e}\n--- log tail ---\n{self.log_tail()}") from None

    def journal(self, fmt: str = "short", hostname: str = "simhost") -> str:
        """The log as `journalctl -u ollama -o <fmt>` would print it (short, short-iso,
        short-precise, json), each line attributed to the server that wrote it."""
        data = self.log_file.read_bytes()
        segments = self.segments or [(0, 0)]
        chunks = []
        for i, (start, pid) in enumerate(segments):
            end = segments[i + 1][0] if i + 1 < len(segments) else len(data)
            chunks.append((pid, data[start:end]))
        return journal.render(chunks, fmt, hostname=hostname, exe=str(self.server_exe))

    # -- processes and clean-up -------------------------------------------------------------------

    def processes(self) -> list[int]:
        """PIDs of live (non-zombie) processes running an executable of this host."""
        prefix = str(self.root) + "/"
        out = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                exe = _proc_exe(int(name))
                if exe and exe.startswith(prefix) and not _is_zombie(int(name)):
                    out.append(int(name))
        return out

    def close(self) -> None:
        """Stop every server, kill whatever of this host still runs, remove cgroups."""
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop(timeout=5)
        deadline = time.monotonic() + 10
        while True:
            left = self.processes()
            if not left or time.monotonic() > deadline:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for pid in left:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)
        for server in self.servers:
            for cg in server.cgroups:
                cg.remove()
        if left:
            raise SimHostError(f"processes of {self.root} survived SIGKILL: {left}")

    def __enter__(self) -> SimHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def identity(parent: str | None) -> dict:
    """The identity rules of vgpumon's built-in groups (docs/configuration.md#membership)."""
    rules: dict = {"executable": ["ollama"] if parent is None else
                   ["ollama", "ollama-runner", "ollama_llama_server", "llama-server"],
                   "owner": [0]}
    if parent is not None:
        rules["parent"] = parent
    return rules


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
