"""The configuration as frozen dataclasses, with the built-in defaults.

Every key is optional and the defaults describe the reference host of docs/configuration.md
(shims under ``/usr/lib64``, Ollama's libraries under ``/usr/local/lib/ollama/cuda_v12``).
`vgpumon.config.loading` turns YAML into these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

VIEWS = ("host", "server")
EXIT_WATCH_MECHANISMS = ("auto", "proc_connector", "pidfd", "poll")


@dataclass(frozen=True)
class LibrarySpec:
    """How to recognise one library in ``/proc/PID/maps``: by file (`path`) or basename glob."""

    name: str
    path: str | None = None
    glob: str | None = None
    driver: bool = False
    view: str = "host"


@dataclass(frozen=True)
class LinkSpec:
    """A symlink that must resolve to `target` (both paths in `view`)."""

    path: str
    target: str
    view: str = "host"


@dataclass(frozen=True)
class GroupSpec:
    """A named class of processes; every given pattern must match (``re.search``)."""

    name: str
    comm: re.Pattern[str] | None = None
    exe: re.Pattern[str] | None = None
    cmdline: re.Pattern[str] | None = None
    expect: tuple[str, ...] = ()


@dataclass(frozen=True)
class CrashLoopSpec:
    crashes: int = 3
    window: float = 600.0


@dataclass(frozen=True)
class OllamaLogSpec:
    journal_unit: str | None = "ollama.service"
    file: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.journal_unit or self.file)


@dataclass(frozen=True)
class OllamaSpec:
    url: str = "http://127.0.0.1:11434"
    timeout: float = 2.0
    log: OllamaLogSpec = field(default_factory=OllamaLogSpec)
    models_dir: str = "/usr/share/ollama/.ollama/models"
    expected_gpus: int = 1


@dataclass(frozen=True)
class EventsSpec:
    file: str | None = "/var/lib/vgpumon/events.jsonl"
    max_bytes: int = 10 * 1024 * 1024
    memory: int = 1000


def _default_libraries() -> tuple[LibrarySpec, ...]:
    return (
        LibrarySpec("vgpu-exec", path="/usr/lib64/libvgpu-exec.so"),
        LibrarySpec("vgpu-cuda", path="/usr/lib64/libvgpu-cuda.so"),
        LibrarySpec("vgpu-nvml", path="/usr/lib64/libvgpu-nvml.so"),
        LibrarySpec("vgpu-cudart", path="/usr/lib64/libvgpu-cudart.so"),
        LibrarySpec("ggml-cuda", glob="libggml-cuda.so*"),
        LibrarySpec("cuda-driver", glob="libcuda.so.*", driver=True),
    )


def _default_links() -> tuple[LinkSpec, ...]:
    return (
        LinkSpec("/usr/lib64/libcuda.so.1", "/usr/lib64/libvgpu-cuda.so"),
        LinkSpec("/usr/lib64/libcudart.so.12", "/usr/lib64/libvgpu-cudart.so"),
        LinkSpec("/usr/local/lib/ollama/cuda_v12/libcuda.so.1", "/usr/lib64/libvgpu-cuda.so"),
        LinkSpec(
            "/usr/local/lib/ollama/cuda_v12/libcudart.so.12.8.90", "/usr/lib64/libvgpu-cudart.so"
        ),
    )


def _default_groups() -> tuple[GroupSpec, ...]:
    return (
        GroupSpec(
            "server",
            comm=re.compile(r"^ollama$"),
            cmdline=re.compile(r"\bserve\b"),
            expect=("vgpu-exec", "vgpu-cuda", "vgpu-nvml", "vgpu-cudart"),
        ),
        GroupSpec(
            "runner",
            cmdline=re.compile(r"(ollama runner|ollama_llama_server|llama-server).*--model"),
            expect=("vgpu-exec", "vgpu-cuda", "ggml-cuda"),
        ),
        GroupSpec(
            "discovery",
            cmdline=re.compile(r"(ollama runner|llama-server|ollama gpu-discover)"),
        ),
    )


@dataclass(frozen=True)
class Config:
    listen_host: str = "0.0.0.0"
    listen_port: int = 9842
    interval: float = 5.0
    procfs: str = "/proc"
    rootfs: str = "/"
    libraries: tuple[LibrarySpec, ...] = field(default_factory=_default_libraries)
    shims: tuple[str, ...] = ("vgpu-exec", "vgpu-cuda", "vgpu-nvml", "vgpu-cudart")
    links: tuple[LinkSpec, ...] = field(default_factory=_default_links)
    groups: tuple[GroupSpec, ...] = field(default_factory=_default_groups)
    crash_loop: CrashLoopSpec = field(default_factory=CrashLoopSpec)
    ollama: OllamaSpec = field(default_factory=OllamaSpec)
    events: EventsSpec = field(default_factory=EventsSpec)
    watch_dirs: tuple[str, ...] = ()
    nvml: str = "auto"
    exit_watch: str = "auto"
    web_config_file: str | None = None
    source: str = ""

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    def library(self, name: str) -> LibrarySpec:
        for spec in self.libraries:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def group(self, name: str) -> GroupSpec:
        for spec in self.groups:
            if spec.name == name:
                return spec
        raise KeyError(name)


