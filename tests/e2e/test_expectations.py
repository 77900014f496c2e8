"""`expect: auto` against real processes of the simulated host in the preload layouts vGPU
hosts use (docs/configuration.md#expectations): a healthy host reports nothing missing, no
failed preload and no bypass (only libvgpu-exec.so preloaded; links only), in eras where the
server maps a GPU library and where it maps none; the seed host's layout (all four shims
preloaded, a forwarding CUDA shim that loads the real driver and does not carry its SONAME)
is a bypass with every link right; a link pointed at the real driver is a bypass in the
runner; a preload of a wrong path is a failed preload. `vgpumon once` is the real CLI: one
refresh, the real exposition.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.harness import Vgpumon, host_config, parse_metrics, run_cli, write_config

MODEL = "llama3.2:latest"
LAYOUTS = {
    "all four preloaded": True,  # the simulated shim forwards when called (cuInit)
    "only libvgpu-exec.so preloaded": ["exec"],
    "links only": False,
}
HEALTHY = list(LAYOUTS)


def auto_config(host) -> dict:
    """The simulated host's config with the built-in rules: `expect: auto` and each shim
    naming the real library it stands for."""
    config = host_config(host)
    libraries = config["libraries"]
    libraries["vgpu-cuda"]["stands_for"] = "cuda-driver"
    libraries["vgpu-nvml"]["stands_for"] = "nvml"
    libraries["vgpu-cudart"]["stands_for"] = "cudart"
    libraries["nvml"] = {"name": "libnvidia-ml.so.*"}
    libraries["cudart"] = {"name": "libcudart.so.*"}
    for group in config["groups"].values():
        group["expect"] = "auto"
    return config


def once(host, tmp_path) -> dict:
    path = write_config(tmp_path / "vgpumon.yaml", auto_config(host))
    result = run_cli("once", "--config", str(path))
    assert result.returncode == 0, result.stderr
    return parse_metrics(result.stdout)


def total(metrics: dict, name: str, **labels: str) -> float:
    return sum(value for (metric, sample), value in metrics.items()
               if metric == name and labels.items() <= dict(sample).items())


@pytest.mark.parametrize("era", ["A", "B", "C", "D1", "D2", "E", "F", "G"])
@pytest.mark.parametrize("layout", HEALTHY)
def test_a_healthy_host_has_nothing_missing_failed_or_bypassed(simhost, tmp_path, era, layout):
    host = simhost(era=era)
    host.add_model(MODEL)
    server = host.start_server(preload_shims=LAYOUTS[layout])
    server.load_model(MODEL)
    metrics = once(host, tmp_path)
    # era B loads the model inside the server: no runner
    assert total(metrics, "vgpumon_processes", group="runner") == (0 if era == "B" else 1)
    assert total(metrics, "vgpumon_processes_missing_library") == 0, {
        k: v for k, v in metrics.items() if k[0] == "vgpumon_processes_missing_library" and v}
    assert total(metrics, "vgpumon_processes_preload_failed") == 0
    assert total(metrics, "vgpumon_processes_bypassing_shim") == 0
    # the runner reaches the CUDA shim, by its preload or by the link
    expected = {dict(sample)["because"] for (name, sample), value in metrics.items()
                if name == "vgpumon_library_expected" and value
                and dict(sample)["group"] == "runner" and dict(sample)["library"] == "vgpu-cuda"}
    if era != "B":
        assert expected == ({"preload"} if LAYOUTS[layout] is True else {"link"})


@pytest.mark.parametrize("era", ["E", "G"])
def test_the_seed_layout_is_shadowed_by_the_real_drivers_soname(simhost, tmp_path, era):
    """All four preloaded, every link right, and a forwarding shim that loads the real driver
    when it is loaded (SIMLIB_FORWARD_AT_START): the runtime's dlopen("libcuda.so.1") then
    gets the real driver, which answers to that SONAME; the shim does not. The daemon sees the
    runner from its exec on, so it sees the real driver mapped before the CUDA backend."""
    host = simhost(era=era)
    host.add_model(MODEL)
    server = host.start_server(preload_shims=True, env={"SIMLIB_FORWARD_AT_START": "1"})
    daemon = Vgpumon({**auto_config(host), "interval": "60s"}, tmp_path)
    try:
        runner = server.load_model(MODEL)
        assert runner.maps_library("libvgpu-cuda.so")
        assert runner.maps_library(str(host.real_driver))
        daemon.wait_value("vgpumon_processes_bypassing_shim", 1, group="runner")
        event = daemon.wait_event("shim_bypassed", match=lambda e: e["pid"] == runner.pid)
        assert event["shim"] == "vgpu-cuda" and "SONAME" in event["why"]
        assert total(daemon.metrics(), "vgpumon_processes_missing_library") == 0
    finally:
        daemon.stop()


@pytest.mark.parametrize("era", ["F", "G"])
@pytest.mark.parametrize("forward_at_start", [True, False])
def test_a_shadowed_runner_is_told_by_the_server_without_seeing_its_start(simhost, tmp_path,
                                                                          era,
                                                                          forward_at_start):
    """A runner whose start nobody saw (`vgpumon once`, or a daemon started later; a real
    llama-server dlopens its backend milliseconds after exec): from 0.12.4 the server maps no
    GPU library of its own, so a real driver in the server beside the preloaded shim was put
    there by the shim at start, and the runner's copy did the same before its backend asked
    for libcuda.so.1. A shim that forwards only when called leaves the server without the
    real driver: no bypass."""
    host = simhost(era=era)
    host.add_model(MODEL)
    env = {"SIMLIB_FORWARD_AT_START": "cuda"} if forward_at_start else {}
    server = host.start_server(preload_shims=True, env=env)
    runner = server.load_model(MODEL)
    assert runner.maps_library("libvgpu-cuda.so")
    server_maps = Path(f"/proc/{server.pid}/maps").read_text()
    assert (str(host.real_driver) in server_maps) == forward_at_start
    metrics = once(host, tmp_path)
    assert total(metrics, "vgpumon_processes_bypassing_shim", group="runner") == (
        1 if forward_at_start else 0)
    assert total(metrics, "vgpumon_processes_bypassing_shim", group="server") == 0
    assert total(metrics, "vgpumon_processes_missing_library") == 0


@pytest.mark.parametrize("links_right", [True, False])
def test_a_preloaded_shim_with_the_drivers_soname_is_what_glibc_hands_out(simhost, tmp_path,
                                                                          links_right):
    """All four preloaded, the CUDA shim carries libcuda.so.1 and forwards at start: glibc
    hands out the shim for libcuda.so.1, so even links at the real driver are no bypass (the
    link alert is the finding there). Only the CUDA shim forwards at start: an NVML shim that
    did so without carrying libnvidia-ml.so.1 would be shadowed, a bypass of its own."""
    host = simhost(era="G", cuda_shim_soname="libcuda.so.1")
    host.add_model(MODEL)
    server = host.start_server(preload_shims=True, env={"SIMLIB_FORWARD_AT_START": "cuda"})
    broken = [link for link, _shim in host.links()
              if link.name == "libcuda.so.1" and not links_right]
    for link in broken:
        host.set_link(link, host.real_driver)
    daemon = Vgpumon({**auto_config(host), "interval": "60s"}, tmp_path)
    try:
        runner = server.load_model(MODEL)
        assert runner.maps_library("libvgpu-cuda.so")
        assert runner.maps_library(str(host.real_driver))
        daemon.wait_value("vgpumon_processes", 1, group="runner")
        daemon.signal(signal.SIGHUP)  # a reload ends with a full refresh: all judged by now
        daemon.wait_value("vgpumon_config_last_reload_success", 1)
        metrics = daemon.metrics()
        assert total(metrics, "vgpumon_processes_bypassing_shim") == 0
        assert total(metrics, "vgpumon_processes_missing_library") == 0
        assert total(metrics, "vgpumon_shim_link_state", state="wrong_target") == len(broken)
    finally:
        daemon.stop()


def test_a_preloaded_shim_that_forwards_when_called_is_no_bypass(simhost, tmp_path):
    """The same maps, but the shim loads the real driver only in its cuInit: by then the
    runtime's dlopen("libcuda.so.1") has returned the shim itself."""
    host = simhost(era="F")
    host.add_model(MODEL)
    server = host.start_server(preload_shims=True)
    runner = server.load_model(MODEL)
    assert runner.maps_library("libvgpu-cuda.so") and runner.maps_library(str(host.real_driver))
    metrics = once(host, tmp_path)
    assert total(metrics, "vgpumon_processes_bypassing_shim") == 0
    assert total(metrics, "vgpumon_processes_missing_library") == 0
    assert total(metrics, "vgpumon_processes_preload_failed") == 0


@pytest.mark.parametrize("layout", ["all four preloaded", "only libvgpu-exec.so preloaded",
                                    "links only"])
def test_a_link_at_the_real_driver_is_a_bypass_in_the_runner(simhost, tmp_path, layout):
    """With the CUDA shim preloaded too: it does not carry libcuda.so.1, so the backend's
    libcuda.so.1 is searched for, and the link hands it the real driver."""
    host = simhost(era="F")
    host.add_model(MODEL)
    server = host.start_server(preload_shims=LAYOUTS[layout])
    for link, _shim in host.links():  # both libcuda.so.1 links, as an upgrade might do
        if link.name == "libcuda.so.1":
            host.set_link(link, host.real_driver)
    server.load_model(MODEL)
    metrics = once(host, tmp_path)
    assert total(metrics, "vgpumon_processes_bypassing_shim", group="runner") == 1
    assert total(metrics, "vgpumon_processes_missing_library", group="runner",
                 library="vgpu-cuda") == (0 if LAYOUTS[layout] is True else 1)
    assert total(metrics, "vgpumon_processes_bypassing_shim", group="server") == 0


def test_a_preload_of_a_wrong_path_is_a_failed_preload_not_a_missing_link(simhost, tmp_path):
    host = simhost(era="G")
    wrong = host.shim("exec").parent / "missing" / "libvgpu-exec.so"
    host.start_server(preload_shims=False, env={"LD_PRELOAD": str(wrong)})
    metrics = once(host, tmp_path)
    assert total(metrics, "vgpumon_processes_preload_failed", group="server",
                 library="vgpu-exec") == 1
    assert total(metrics, "vgpumon_library_expected", group="server", library="vgpu-exec",
                 because="preload") == 1
