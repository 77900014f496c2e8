"""Ollama eras: which version imitates which process model, file layout, argv and environment.

Facts: docs/ollama.md (eras, process model, libraries, layout). An era is picked by name
("F") and has a default version; passing another version of the same era changes what is
version-dependent inside it (argv shape, log lines, API fields) where the facts give a version
boundary.
All paths here are relative to the simulated root unless a function takes `root`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_VERSIONS = {
    "A": "0.1.17",
    "B": "0.1.29",
    "C": "0.3.14",
    "D1": "0.4.7",
    "D2": "0.5.7",
    "E": "0.9.6",
    "F": "0.13.5",
    "G": "0.31.0",
}

# The payload dir that eras <= 0.5.1 extract to ($TMPDIR/ollamaNNN); fixed per host here.
EXTRACT_DIR = "tmp/ollama2750113406"
BIN = "usr/local/bin/ollama"
LIB_OLLAMA = "usr/local/lib/ollama"
LIB64 = "usr/lib64"
DRIVER_VERSION = "575.51.03"


def parse_version(text: str) -> tuple[int, int, int]:
    core = text.split("-", 1)[0]
    parts = [int(p) for p in core.split(".")]
    major, minor, patch = [*parts, 0, 0, 0][:3]
    return major, minor, patch


def era_of(version: str) -> str:
    """The era a version belongs to (docs/ollama.md#eras)."""
    v = parse_version(version)
    bounds = [((0, 1, 17), "A"), ((0, 1, 31), "B"), ((0, 3, 99), "C"), ((0, 5, 1), "D1"),
              ((0, 5, 7), "D2"), ((0, 12, 3), "E"), ((0, 29, 99), "F")]
    for last, name in bounds:
        if v <= last:
            return name
    return "G"


@dataclass(frozen=True)
class Era:
    """One era at one version; the single place that answers "what does this version do"."""

    name: str
    version: str

    @classmethod
    def get(cls, name: str, version: str | None = None) -> Era:
        if name not in DEFAULT_VERSIONS:
            raise ValueError(f"unknown era {name!r}; one of {', '.join(DEFAULT_VERSIONS)}")
        version = version or DEFAULT_VERSIONS[name]
        if era_of(version) != name:
            raise ValueError(f"version {version} belongs to era {era_of(version)}, not {name}")
        return cls(name, version)

    def at_least(self, version: str) -> bool:
        return parse_version(self.version) >= parse_version(version)

    # -- process model ---------------------------------------------------------------------

    @property
    def has_runner(self) -> bool:
        return self.name != "B"

    @property
    def go_runner(self) -> bool:
        """Model runners are Go programs (a fatal signal in cgo becomes a trace + exit 2)."""
        return self.name in ("D1", "D2", "E", "F")

    @property
    def runner_comm_name(self) -> str:
        return {"A": "ollama-runner", "C": "ollama_llama_server", "D1": "ollama_llama_server",
                "D2": "ollama_llama_server", "G": "llama-server"}.get(self.name, "ollama")

    @property
    def server_discovers_with_dlopen(self) -> bool:
        """<= 0.12.3: the server dlopens (and dlcloses) libcuda itself during discovery."""
        return self.name in ("C", "D1", "D2", "E")

    @property
    def uses_probes(self) -> bool:
        return self.name in ("F", "G")

    @property
    def uses_load_requests(self) -> bool:
        """0.11.5+: the runner gets only --model/--port; the model is loaded by POST /load."""
        return self.name in ("E", "F") and self.at_least("0.11.5")

    @property
    def default_engine(self) -> str:
        """Which Go engine runs llama-architecture models: "ollama" (new) or "llama"."""
        return "ollama" if self.name == "F" else "llama"

    @property
    def default_ctx(self) -> int:
        return {"A": 2048, "B": 2048, "C": 8192, "D1": 8192, "D2": 8192, "E": 8192}.get(
            self.name, 4096)

    @property
    def parallel(self) -> int:
        return 4 if self.name in ("C", "D1", "D2") else 1

    # -- layout ----------------------------------------------------------------------------

    @property
    def cuda_dir(self) -> str:
        """The directory holding the era's CUDA backend library."""
        return {
            "A": f"{EXTRACT_DIR}/llama.cpp/gguf/build/cuda/bin",
            "B": f"{EXTRACT_DIR}/cuda_v11",
            "C": f"{EXTRACT_DIR}/runners/cuda_v12",
            "D1": f"{EXTRACT_DIR}/runners/cuda_v12_avx",
            "D2": f"{LIB_OLLAMA}/runners/cuda_v12_avx",
        }.get(self.name, f"{LIB_OLLAMA}/cuda_v12")

    @property
    def cpu_dir(self) -> str:
        return {
            "A": f"{EXTRACT_DIR}/llama.cpp/gguf/build/cpu/bin",
            "B": f"{EXTRACT_DIR}/cpu_avx2",
            "C": f"{EXTRACT_DIR}/runners/cpu_avx2",
            "D1": f"{EXTRACT_DIR}/runners/cpu_avx2",
        }.get(self.name, LIB_OLLAMA)

    @property
    def ggml_cuda(self) -> str:
        """The era's CUDA backend library file (what vgpumon calls ggml-cuda)."""
        name = {"A": "libcudart.so.11.0", "B": "libext_server.so", "C": "libggml.so",
                "D1": "libggml_cuda_v12.so", "D2": "libggml_cuda_v12.so"}.get(
            self.name, "libggml-cuda.so")
        return f"{self.cuda_dir}/{name}"

    def runner_exe(self, gpu: bool) -> str:
        if self.name == "A":
            return f"{self.cuda_dir if gpu else self.cpu_dir}/ollama-runner"
        if self.name in ("C", "D1"):
            return f"{self.cuda_dir if gpu else self.cpu_dir}/ollama_llama_server"
        if self.name == "D2" and gpu:
            return f"{self.cuda_dir}/ollama_llama_server"
        if self.name == "G":
            return f"{LIB_OLLAMA}/llama-server"
        return BIN

    # -- argv and environment ----------------------------------------------------------------

    def runner_argv(self, root: str, blob: str, port: int, *, gpu: bool, gpu_layers: int,
                    ctx: int, engine: str) -> list[str]:
        """The argv `ollama serve` starts a model runner with (docs/ollama.md#eras)."""
        exe = os.path.join(root, self.runner_exe(gpu))
        p, ngl = str(port), str(gpu_layers)
        if self.name == "A":
            return [exe, "--model", blob, "--ctx-size", str(ctx), "--batch-size", "512",
                    "--n-gpu-layers", ngl, "--embedding", "--port", p]
        if self.name == "C":
            return [exe, "--model", blob, "--ctx-size", str(ctx), "--batch-size", "512",
                    "--embedding", "--n-gpu-layers", ngl, "--threads", "8",
                    "--parallel", str(self.parallel), "--port", p]
        if self.name in ("D1", "D2"):
            sub = ["runner"] if self.name == "D2" else []
            return [exe, *sub, "--model", blob, "--ctx-size", str(ctx), "--batch-size", "512",
                    "--n-gpu-layers", ngl, "--threads", "8", "--parallel", str(self.parallel),
                    "--port", p]
        if self.name == "G":
            return [exe, "--model", blob, "--port", p, "--host", "127.0.0.1", "--no-webui",
                    "--offline", "-c", str(ctx), "-np", "1", "-ngl", ngl, "--log-verbosity", "4",
                    "--no-log-prefix", "--no-log-timestamps"]
        flag = ["--ollama-engine"] if engine == "ollama" else []
        if self.uses_load_requests:
            return [exe, "runner", *flag, "--model", blob, "--port", p]
        return [exe, "runner", *flag, "--model", blob, "--ctx-size", str(ctx),
                "--batch-size", "512", "--n-gpu-layers", ngl, "--threads", "8",
                "--parallel", "1", "--port", p]

    def probe_argvs(self, root: str, port: int) -> list[tuple[str, list[str]]]:
        """The discovery probes the server starts: (kind, argv). Empty where there are none."""
        if self.name == "F":
            return [("info", [os.path.join(root, BIN), "runner", "--ollama-engine",
                              "--port", str(port)])]
        if self.name == "G":
            server = os.path.join(root, LIB_OLLAMA, "llama-server")
            return [
                ("gpu-discover", [os.path.join(root, BIN), "gpu-discover", "--lib-dir",
                                  os.path.join(root, self.cuda_dir)]),
                ("list-devices", [server, "--list-devices"]),
                ("system-info", [server, "--port", str(port), "--host", "127.0.0.1",
                                 "--no-webui", "--offline", "--verbose"]),
            ]
        return []

    def runner_lib_dirs(self, gpu: bool) -> list[str]:
        """Directories the server puts in front of the inherited LD_LIBRARY_PATH."""
        if self.name == "A":
            return [self.cuda_dir if gpu else self.cpu_dir]
        if self.name in ("C", "D1", "D2"):
            if self.name == "D2" and not gpu:
                return [LIB_OLLAMA]
            return [self.cuda_dir if gpu else self.cpu_dir, LIB_OLLAMA]
        if self.name == "E":
            return [self.cuda_dir, LIB_OLLAMA] if gpu else [LIB_OLLAMA]
        return [LIB_OLLAMA, self.cuda_dir] if gpu else [LIB_OLLAMA]

    def runner_env(self, root: str, base: dict[str, str], *, gpu: bool,
                   gpu_uuid: str) -> dict[str, str]:
        """The runner's environment: the server's own plus what Ollama sets
        (docs/ollama.md#environment-variables)."""
        env = dict(base)
        dirs = [os.path.join(root, d) for d in self.runner_lib_dirs(gpu)]
        inherited = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = ":".join(dirs + ([inherited] if inherited else []))
        if self.at_least("0.6.7"):  # 0.30+ still sets it; llama-server does not read it
            env["OLLAMA_LIBRARY_PATH"] = ":".join(
                os.path.join(root, d) for d in ([LIB_OLLAMA, self.cuda_dir] if gpu
                                                else [LIB_OLLAMA]))
        if self.name == "G" and gpu:
            env["GGML_BACKEND_PATH"] = os.path.join(root, self.cuda_dir, "libggml-cuda.so")
        if gpu and gpu_uuid and self.sets_visible_devices:
            env["CUDA_VISIBLE_DEVICES"] = gpu_uuid
        return env

    @property
    def sets_visible_devices(self) -> bool:
        """Model runners get CUDA_VISIBLE_DEVICES=GPU-<uuid>: 0.1.33-0.12.3 and 0.30+ (one
        device); not from 0.12.4 to 0.24 (there only the device probes get it)."""
        return self.name == "G" or (self.name != "F" and self.at_least("0.1.33"))
