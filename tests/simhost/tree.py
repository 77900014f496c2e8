"""The simulated host's file tree: executables, libraries and shim symlinks of one era.

Every library is a build of simlib.c with the real library's SONAME, DT_NEEDED entries and
RUNPATH (build.LibSpec), installed under the real file name, so the real dynamic loader
resolves `libcuda.so.1`, follows the shim symlinks and maps the files processes would map.
Symlink targets written as "/usr/..." are inside the simulated root.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .build import LibSpec, Toolchain
from .eras import BIN, DEFAULT_VERSIONS, DRIVER_VERSION, LIB64, LIB_OLLAMA, Era

SHIMS = ("libvgpu-exec.so", "libvgpu-cuda.so", "libvgpu-nvml.so", "libvgpu-cudart.so")
REAL_DRIVER = f"{LIB64}/libcuda.so.{DRIVER_VERSION}"
REAL_NVML = f"{LIB64}/libnvidia-ml.so.{DRIVER_VERSION}"
CUDA_NEEDED = ("libcudart.so.12", "libcublas.so.12", "libcuda.so.1")


@dataclass(frozen=True)
class Lib:
    path: str
    spec: LibSpec


@dataclass(frozen=True)
class Exe:
    path: str


@dataclass(frozen=True)
class Link:
    path: str
    target: str  # relative, or "/..." meaning inside the simulated root

    @property
    def is_shim_link(self) -> bool:
        return os.path.basename(self.target).startswith("libvgpu-")


Entry = Lib | Exe | Link


def _versioned(directory: str, name: str, version: str, spec: LibSpec) -> list[Entry]:
    """A library file `name.version` with the usual `name -> name.version` link."""
    return [Lib(f"{directory}/{name}.{version}", spec),
            Link(f"{directory}/{name}", f"{name}.{version}")]


def _common(shim_links: bool, cuda_shim_soname: str | None = None) -> list[Entry]:
    out: list[Entry] = [Exe(BIN)]
    out += [Lib(f"{LIB64}/{s}", LibSpec(cuda_shim_soname if s == "libvgpu-cuda.so"
                                         and cuda_shim_soname else s)) for s in SHIMS]
    out += [Lib(REAL_DRIVER, LibSpec("libcuda.so.1")), Lib(REAL_NVML, LibSpec("libnvidia-ml.so.1"))]
    if shim_links:
        out += [Link(f"{LIB64}/libcuda.so.1", "libvgpu-cuda.so"),
                Link(f"{LIB64}/libcudart.so.12", "libvgpu-cudart.so"),
                Link(f"{LIB64}/libnvidia-ml.so.1", "libvgpu-nvml.so")]
    else:
        out += [Link(f"{LIB64}/libcuda.so.1", os.path.basename(REAL_DRIVER)),
                Link(f"{LIB64}/libnvidia-ml.so.1", os.path.basename(REAL_NVML))]
    return out


def _bundled_cuda_12(directory: str, cudart: str, cublas: str, shim_links: bool) -> list[Entry]:
    """cudart + cublas + cublasLt as Ollama bundles them; cudart may be a link to the shim."""
    out: list[Entry] = []
    if shim_links and directory.endswith("cuda_v12"):
        out += [Link(f"{directory}/libcudart.so.12.{cudart}", f"/{LIB64}/libvgpu-cudart.so"),
                Link(f"{directory}/libcudart.so.12", f"libcudart.so.12.{cudart}"),
                Link(f"{directory}/libcuda.so.1", f"/{LIB64}/libvgpu-cuda.so")]
    else:
        out += _versioned(directory, "libcudart.so.12", cudart, LibSpec("libcudart.so.12"))
    out += _versioned(directory, "libcublas.so.12", cublas,
                      LibSpec("libcublas.so.12", ("libcublasLt.so.12",), "$ORIGIN"))
    out += _versioned(directory, "libcublasLt.so.12", cublas, LibSpec("libcublasLt.so.12"))
    return out


def entries(era: Era, shim_links: bool = True,
            cuda_shim_soname: str | None = None) -> list[Entry]:
    """Everything the era's install consists of (on top of the model store).
    `cuda_shim_soname`: the CUDA shim carries this SONAME (``libcuda.so.1``: glibc hands it
    out for the driver's name) instead of its own file name."""
    out = _common(shim_links, cuda_shim_soname)
    cuda, cpu = era.cuda_dir, era.cpu_dir
    if era.name == "A":
        out += [Exe(f"{cuda}/ollama-runner"), Exe(f"{cpu}/ollama-runner"),
                Lib(f"{cuda}/libcudart.so.11.0", LibSpec("libcudart.so.11.0"))]
    elif era.name == "B":
        out += [Lib(f"{cuda}/libext_server.so",
                    LibSpec("libext_server.so", ("libcudart.so.11.0", "libcublas.so.11",
                                                 "libcuda.so.1"), "$ORIGIN")),
                Lib(f"{cuda}/libcudart.so.11.0", LibSpec("libcudart.so.11.0")),
                Lib(f"{cuda}/libcublas.so.11", LibSpec("libcublas.so.11")),
                Lib(f"{cpu}/libext_server.so", LibSpec("libext_server.so"))]
    elif era.name == "C":
        out += _bundled_cuda_12(LIB_OLLAMA, "4.127", "4.5.8", shim_links)
        for d, ggml in ((cuda, LibSpec("libggml.so", CUDA_NEEDED, "$ORIGIN")),
                        (cpu, LibSpec("libggml.so"))):
            out += [Exe(f"{d}/ollama_llama_server"), Lib(f"{d}/libggml.so", ggml),
                    Lib(f"{d}/libllama.so", LibSpec("libllama.so", ("libggml.so",), "$ORIGIN"))]
    elif era.name in ("D1", "D2"):
        out += _bundled_cuda_12(LIB_OLLAMA, "4.127", "4.5.8", shim_links)
        out += [Exe(f"{cuda}/ollama_llama_server"),
                Lib(f"{cuda}/libggml_cuda_v12.so",
                    LibSpec("libggml_cuda_v12.so", CUDA_NEEDED, "$ORIGIN"))]
        if era.name == "D1":
            out.append(Exe(f"{cpu}/ollama_llama_server"))
    else:
        base = "libggml-base.so.0" if era.name == "G" else "libggml-base.so"
        out += [Lib(f"{LIB_OLLAMA}/{base}", LibSpec(base))]
        for variant in ("x64", "haswell"):
            out.append(Lib(f"{LIB_OLLAMA}/libggml-cpu-{variant}.so",
                           LibSpec(f"libggml-cpu-{variant}.so", (base,), "$ORIGIN")))
        out += _bundled_cuda_12(cuda, "8.90", "8.4.1", shim_links)
        out.append(Lib(f"{cuda}/libggml-cuda.so",
                       LibSpec("libggml-cuda.so", (base, "libcudart.so.12", "libcublas.so.12",
                                                   "libcublasLt.so.12", "libcuda.so.1"),
                               "$ORIGIN")))
        if era.name == "G":
            out += [Exe(f"{LIB_OLLAMA}/llama-server"),
                    Lib(f"{LIB_OLLAMA}/libggml.so.0",
                        LibSpec("libggml.so.0", (base,), "$ORIGIN")),
                    Lib(f"{LIB_OLLAMA}/libllama.so.0",
                        LibSpec("libllama.so.0", ("libggml.so.0", base), "$ORIGIN"))]
    return out


def lib_specs() -> list[LibSpec]:
    """Every simlib build any era's tree needs (one build serves all eras)."""
    return [e.spec for name in DEFAULT_VERSIONS for links in (True, False)
            for soname in (None, "libcuda.so.1")
            for e in entries(Era.get(name), links, soname) if isinstance(e, Lib)]


def install(root: Path, era: Era, toolchain: Toolchain, shim_links: bool = True,
            cuda_shim_soname: str | None = None) -> list[Entry]:
    """Create the era's tree under `root`; return its entries."""
    made = entries(era, shim_links, cuda_shim_soname)
    for e in made:
        dest = root / e.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(e, Link):
            target = str(root) + e.target if e.target.startswith("/") else e.target
            os.symlink(target, dest)
        else:
            src = toolchain.launcher if isinstance(e, Exe) else toolchain.library(e.spec)
            shutil.copyfile(src, dest)
            os.chmod(dest, 0o755)
    return made
