"""Ollama's eras (docs/ollama.md#eras): what a version maps where, and how its runners find
their libraries. Pure data and functions; the one place the doctor asks "what does this
version do".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vgpumon.config.schema import RUNNER, SERVER
from vgpumon.ollama.versions import version_tuple


@dataclass(frozen=True)
class Era:
    name: str
    first: str
    last: str
    cuda_holder: str  # which process maps the CUDA backend: "runner" or "server"
    cuda_library: str  # the file that holds ggml's CUDA code in this era
    cuda_globs: tuple[str, ...]  # where it lives; {lib} = <prefix>/lib/ollama, {tmp} = $TMPDIR
    server_gpu: str  # what `ollama serve` itself maps
    discovery: str  # who discovers GPUs

    @property
    def versions(self) -> str:
        last = self.last.replace(".99", ".x")
        return f"up to {last}" if self.name == "A" else f"{self.first} to {last}"

    @property
    def title(self) -> str:
        return f"era {self.name} ({self.versions})"


ERAS = (
    Era("A", "0.0.0", "0.1.17", RUNNER, "libcudart.so.11.0",
        ("{tmp}/ollama*/llama.cpp/*/build/cuda/bin/libcudart.so*",),
        "nothing GPU", "the server (nvidia-smi)"),
    Era("B", "0.1.18", "0.1.31", SERVER, "libext_server.so",
        ("{tmp}/ollama*/cuda_v*/libext_server.so",),
        "libext_server.so, cudart, cublas and libcuda.so.1 after the first load",
        "the server"),
    Era("C", "0.1.32", "0.3.14", RUNNER, "libggml.so",
        ("{tmp}/ollama*/runners/cuda_v*/libggml.so",),
        "libcuda.so.* briefly during discovery", "the server (dlopen/dlclose)"),
    Era("D1", "0.4.0", "0.5.1", RUNNER, "libggml_cuda_v12.so",
        ("{tmp}/ollama*/runners/cuda_v*/libggml_cuda_v1*.so",),
        "libcuda.so.* during discovery and before loads", "the server (dlopen/dlclose)"),
    Era("D2", "0.5.2", "0.5.7", RUNNER, "libggml_cuda_v12.so",
        ("{lib}/runners/cuda_v*/libggml_cuda_v1*.so",),
        "libcuda.so.* during discovery and before loads", "the server (dlopen/dlclose)"),
    Era("E", "0.5.8", "0.12.3", RUNNER, "libggml-cuda.so",
        ("{lib}/cuda_v*/libggml-cuda.so",),
        "libcuda.so.* during discovery and before each load", "the server (dlopen/dlclose)"),
    Era("F", "0.12.4", "0.24.99", RUNNER, "libggml-cuda.so",
        ("{lib}/cuda_v*/libggml-cuda.so",),
        "nothing GPU", "probe runners (`ollama runner` without --model)"),
    Era("G", "0.30.0", "0.33.99", RUNNER, "libggml-cuda.so",
        ("{lib}/cuda_v*/libggml-cuda.so",),
        "nothing GPU", "probes (`llama-server`, `ollama gpu-discover`)"),
)
LATEST = ERAS[-1]


def era_of(version: str | None) -> Era | None:
    """The era of a release version; None for unparseable versions and source builds
    (``0.0.0``), whose behaviour the version does not tell."""
    if not version:
        return None
    parsed = version_tuple(version)
    if parsed is None or parsed == (0, 0, 0):
        return None
    for era in reversed(ERAS):
        # Versions between two eras and newer than the facts behave like the era before.
        first = version_tuple(era.first)
        if first is not None and parsed >= first:
            return era
    return None


def at_least(version: str | None, minimum: str) -> bool:
    parsed, floor = version_tuple(version or ""), version_tuple(minimum)
    return parsed is not None and floor is not None and parsed >= floor


def runner_environment(era: Era, version: str | None, server_env: Mapping[str, str],
                       lib_dir: str | None, cuda_dir: str | None) -> dict[str, str]:
    """The relevant variables a model runner of `era` gets from the server
    (docs/ollama.md#environment-variables, docs/ollama.md#bundled-and-system-libraries): the
    server's own, with the era's library dirs in front of ``LD_LIBRARY_PATH`` (the server's
    own value after them) and ``OLLAMA_LIBRARY_PATH``/``GGML_BACKEND_PATH`` as Ollama sets
    them. `lib_dir` is ``<prefix>/lib/ollama`` (None: not known, left out), `cuda_dir` the
    dir of the CUDA backend the runner loads (the extracted runner dir before 0.5.2)."""
    env = dict(server_env)
    inherited = env.get("LD_LIBRARY_PATH")
    after = [inherited] if inherited else []
    name = era.name
    if name == "B":
        return env  # the server loads the backend itself: its own environment is the one
    if name == "E":
        dirs = [d for d in (cuda_dir, lib_dir) if d]
    elif name in ("F", "G"):
        dirs = [d for d in (lib_dir, cuda_dir) if d]
    elif name == "C" and not at_least(version, "0.3.0"):
        dirs, after = [], after + ([cuda_dir] if cuda_dir else [])  # 0.1.32: the user's first
    elif name in ("C", "D1", "D2"):
        dirs = [d for d in (lib_dir, cuda_dir) if d]  # lib/ollama (0.3.7+) holds cudart
    else:
        dirs = [cuda_dir] if cuda_dir else []
    if dirs or after:
        env["LD_LIBRARY_PATH"] = ":".join(dirs + after)
    if name in ("E", "F", "G") and lib_dir and at_least(version or LATEST.first, "0.6.7"):
        # The server's own value is overwritten: the runner scans exactly these.
        env["OLLAMA_LIBRARY_PATH"] = ":".join(d for d in (lib_dir, cuda_dir) if d)
    if name == "G" and cuda_dir and "GGML_BACKEND_PATH" not in env:
        env["GGML_BACKEND_PATH"] = f"{cuda_dir}/libggml-cuda.so"
    return env
