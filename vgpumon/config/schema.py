"""The configuration as frozen dataclasses, with the built-in defaults.

Every key is optional and the defaults describe the reference host of docs/configuration.md
(shims under ``/usr/lib64``, Ollama's libraries under ``/usr/local/lib/ollama/cuda_v12``).
`vgpumon.config.loading` turns YAML into these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vgpumon.config.patterns import RUNNER as RUNNER_PATTERN

VIEWS = ("host", "server")
# The built-in groups. The group named SERVER is the Ollama server: its filesystem is the
# "server" view, and its oldest member is the server the doctor and the log source follow.
SERVER, RUNNER, DISCOVERY = "server", "runner", "discovery"
# The programs Ollama runs as its runners and probes, in every era (docs/ollama.md#eras).
RUNNER_EXECUTABLES = ("ollama", "ollama-runner", "ollama_llama_server", "llama-server")
ROOT_UID = 0
EXIT_WATCH_MECHANISMS = ("auto", "proc_connector", "pidfd", "poll")


@dataclass(frozen=True)
class LibrarySpec:
    """How to recognise one library in ``/proc/PID/maps``: by file (`path`) or basename glob."""

    name: str
    path: str | None = None
    glob: str | None = None
    driver: bool = False
    view: str = "host"
    stands_for: str | None = None  # a shim: the library it stands in for (a library's name)


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
    expect_auto: bool = False  # `expect: auto`: derived per process (docs/configuration.md)
    # Identity (docs/configuration.md#membership): what a member cannot set for itself.
    executables: tuple[str, ...] = ()  # globs of the executable's file name
    owners: tuple[int, ...] = ()  # uids that may own that file (empty: root)
    parent: str | None = None  # the group its parent process must belong to


@dataclass(frozen=True)
class CrashLoopSpec:
    crashes: int = 3
    window: float = 600.0


@dataclass(frozen=True)
class OllamaLogSpec:
    """Where Ollama's server log is: a journal unit, a file, or (`container` ``auto``) the log
    file of the container the server runs in, looked for under `docker_root` (Docker's
    json-file driver) and `pods_dir` (Kubernetes), both in the host's view."""

    journal_unit: str | None = "ollama.service"
    file: str | None = None
    container: str | None = None
    docker_root: str = "/var/lib/docker"
    pods_dir: str = "/var/log/pods"

    @property
    def enabled(self) -> bool:
        return bool(self.journal_unit or self.file or self.container)


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
        LibrarySpec("vgpu-cuda", path="/usr/lib64/libvgpu-cuda.so", stands_for="cuda-driver"),
        LibrarySpec("vgpu-nvml", path="/usr/lib64/libvgpu-nvml.so", stands_for="nvml"),
        LibrarySpec("vgpu-cudart", path="/usr/lib64/libvgpu-cudart.so", stands_for="cudart"),
        LibrarySpec("ggml-cuda", glob="libggml-cuda.so*"),
        LibrarySpec("cuda-driver", glob="libcuda.so.*", driver=True),
        LibrarySpec("nvml", glob="libnvidia-ml.so.*"),
        LibrarySpec("cudart", glob="libcudart.so.*"),
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
            SERVER,
            comm=re.compile(r"^ollama$"),
            cmdline=re.compile(r"\bserve\b"),
            expect_auto=True,
            executables=("ollama",),
            owners=(ROOT_UID,),
        ),
        GroupSpec(
            RUNNER,
            cmdline=re.compile(RUNNER_PATTERN),
            expect_auto=True,
            executables=RUNNER_EXECUTABLES,
            owners=(ROOT_UID,),
            parent=SERVER,
        ),
        GroupSpec(
            DISCOVERY,
            cmdline=re.compile(r"(ollama runner|llama-server|ollama gpu-discover)"),
            expect_auto=True,
            executables=RUNNER_EXECUTABLES,
            owners=(ROOT_UID,),
            parent=SERVER,
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


