"""The exporter over fixture snapshots: GPU-context evidence from maps, NVML memory, and the
always-present series."""

from __future__ import annotations

import time
from dataclasses import replace

from prometheus_client import CollectorRegistry, generate_latest

from tests.core.fakeproc import FakeProc, maps_line
from tests.harness import parse_metrics
from vgpumon.config.loading import parse_config
from vgpumon.http.collector import VgpumonCollector
from vgpumon.snapshot.counters import Counters
from vgpumon.snapshot.observer import HostObserver
from vgpumon.snapshot.ollama import Offload, OllamaState
from vgpumon.snapshot.publication import Published, RuntimeInfo
from vgpumon.sources.nvml import GpuMemory

RUNNER = ["/usr/lib/ollama/llama-server", "--model", "/m/blobs/sha256-" + "b" * 64,
          "--port", "4000"]


def scrape(config, state):
    published = Published(config, state, Counters(), RuntimeInfo(started_at=0.0))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VgpumonCollector(lambda: published))
    return parse_metrics(generate_latest(registry).decode())


def observe(tmp_path, runner_maps: str):
    proc = FakeProc(tmp_path / "proc")
    proc.add(4100, "ollama", ["/usr/bin/ollama", "serve"])
    proc.add(4242, "llama-server", RUNNER, ppid=4100, maps=runner_maps, root="/")
    config = parse_config(f"procfs: {proc.root}\nlinks: []\n")
    return config, HostObserver(config).refresh(time.time())


def test_a_process_with_an_nvidia_device_mapping_holds_a_gpu_context(tmp_path):
    config, state = observe(tmp_path, maps_line("/dev/nvidia0", (0, 5), 1055)
                            + maps_line("/dev/nvidiactl", (0, 5), 1056, 0x7F0000100000))
    metrics = scrape(config, state)
    assert metrics[("vgpumon_processes_with_gpu_device", (("group", "runner"),))] == 1
    assert metrics[("vgpumon_processes_with_gpu_device", (("group", "server"),))] == 0


def test_cuda_libraries_alone_are_no_gpu_context(tmp_path):
    config, state = observe(tmp_path, maps_line("/usr/lib/libcuda.so.580.1", (8, 1), 7))
    metrics = scrape(config, state)
    assert metrics[("vgpumon_processes_with_library",
                    (("group", "runner"), ("library", "cuda-driver")))] == 1
    assert metrics[("vgpumon_processes_with_gpu_device", (("group", "runner"),))] == 0


def test_nvml_memory_is_summed_per_group_and_absent_without_nvml(tmp_path):
    config, state = observe(tmp_path, "")
    assert not any(name.startswith("vgpumon_process_gpu_memory")
                   for name, _ in scrape(config, state))
    with_nvml = replace(state, gpu_memory=GpuMemory(1, {4242: 3 << 30, 999: 1 << 30}))
    metrics = scrape(config, with_nvml)
    assert metrics[("vgpumon_nvml_gpus", ())] == 1
    assert metrics[("vgpumon_process_gpu_memory_bytes", (("group", "runner"),))] == 3 << 30
    assert metrics[("vgpumon_process_gpu_memory_bytes", (("group", "server"),))] == 0


def test_a_model_blob_mapped_by_the_server_is_a_loaded_model(tmp_path):
    """Before 0.1.32 llama.cpp runs inside `ollama serve`: no runner, no --model."""
    blob = "d" * 64
    proc = FakeProc(tmp_path / "proc")
    proc.add(4100, "ollama", ["/usr/bin/ollama", "serve"], root="/",
             maps=maps_line(f"/m/blobs/sha256-{blob}", (8, 1), 30))
    config = parse_config(f"procfs: {proc.root}\nlinks: []\n")
    state = HostObserver(config).refresh(time.time())
    offload = {blob: Offload(29, 29, False, 0.0)}
    names = {blob: ("llama3.2:latest",)}
    metrics = scrape(config, replace(state, ollama=OllamaState(offload=offload, names=names)))
    model = (("model", "llama3.2:latest"),)
    assert metrics[("vgpumon_ollama_model_gpu_layers", model)] == 29
    assert metrics[("vgpumon_ollama_model_layers", model)] == 29
    unmapped = scrape(config, replace(state, processes=(), ollama=OllamaState(
        offload=offload, names=names)))
    assert ("vgpumon_ollama_model_gpu_layers", model) not in unmapped


def test_every_group_library_and_link_is_exported_at_zero(tmp_path):
    proc = FakeProc(tmp_path / "proc")
    config = parse_config(f"procfs: {proc.root}\n")
    metrics = scrape(config, HostObserver(config).refresh(time.time()))
    for group in ("server", "runner", "discovery"):
        assert metrics[("vgpumon_processes", (("group", group),))] == 0
        for library in ("vgpu-exec", "vgpu-cuda", "ggml-cuda", "cuda-driver"):
            assert metrics[("vgpumon_processes_with_library",
                            (("group", group), ("library", library)))] == 0
        for reason in ("clean", "stopped", "error", "crash", "oom", "unknown"):
            assert metrics[("vgpumon_process_exits_total",
                            (("group", group), ("reason", reason)))] == 0
    assert metrics[("vgpumon_processes_missing_library",
                    (("group", "runner"), ("library", "ggml-cuda")))] == 0
    assert ("vgpumon_processes_missing_library",
            (("group", "discovery"), ("library", "ggml-cuda"))) not in metrics  # not expected
    for link in config.links:
        states = [metrics[("vgpumon_shim_link_state",
                           (("path", link.path), ("state", s), ("view", "host")))]
                  for s in ("ok", "missing", "not_symlink", "wrong_target", "dangling")]
        assert sum(states) == 1


def test_a_section_is_built_again_exactly_when_what_it_is_built_from_changed(tmp_path):
    """A refresh that changes only the collectors' timings leaves the process families the
    very objects of the last build (the exposition then reuses their text); a changed process
    list rebuilds them, with the new values."""
    config, state = observe(tmp_path, maps_line("/dev/nvidia0", (0, 5), 1055))
    published = Published(config, state, Counters(), RuntimeInfo(started_at=0.0))
    current = [published]
    collector = VgpumonCollector(lambda: current[0])

    def family(name: str):
        return next(f for f in collector.collect() if f.name == name)

    first = family("vgpumon_processes")
    current[0] = replace(published, state=replace(state, taken_at=state.taken_at + 5,
                                                  collectors=()))
    assert family("vgpumon_processes") is first
    server_only = tuple(p for p in state.processes if p.process.group == "server")
    current[0] = replace(published, state=replace(state, processes=server_only))
    rebuilt = family("vgpumon_processes")
    assert rebuilt is not first
    assert {s.labels["group"]: s.value for s in rebuilt.samples}["runner"] == 0
