"""End to end: the real daemon against a simulated Ollama host, scraped over HTTP."""

from __future__ import annotations

import shutil
import signal
import subprocess

import psutil
import pytest
import yaml

from tests.harness import (
    REPO,
    Vgpumon,
    as_nobody,
    host_config,
    parse_metrics,
    run_cli,
    unprivileged_command,
    wait_for,
    write_config,
)


def quiet(config: dict) -> dict:
    """Only the event paths may pass a test with this config: the timer is far away."""
    return {**config, "interval": "60s"}


def test_shipped_config_serves_all_groups_at_zero_on_a_host_without_ollama(tmp_path):
    config = yaml.safe_load((REPO / "config" / "vgpumon.yaml").read_text())
    config["events"]["file"] = str(tmp_path / "events.jsonl")
    config["ollama"]["log"] = {}
    daemon = Vgpumon(config, tmp_path)
    try:
        servers = [p for p in psutil.process_iter(["name", "cmdline"])
                   if p.info["name"] == "ollama" and "serve" in (p.info["cmdline"] or [])]
        # 0 on a host without Ollama; other test runs on this machine may have simulated ones
        assert daemon.value("vgpumon_processes", group="server") == len(servers)
        for group in ("runner", "discovery"):
            assert daemon.value("vgpumon_processes", group=group) is not None
        assert daemon.value("vgpumon_processes_missing_library", group="runner",
                            library="ggml-cuda") is not None
        states = [daemon.value("vgpumon_shim_link_state", path="/usr/lib64/libcuda.so.1",
                               state=state, view="host")
                  for state in ("ok", "missing", "not_symlink", "wrong_target", "dangling")]
        assert sorted(states) == [0, 0, 0, 0, 1]
        assert daemon.get("/healthz") == b"ok\n"
        assert b"vgpumon" in daemon.get("/")
    finally:
        assert daemon.stop() == 0


def test_server_and_runner_are_found_with_their_libraries(simhost, tmp_path):
    host = simhost(era="F")
    host.add_model("llama3.2:latest")
    server = host.start_server()
    runner = server.load_model("llama3.2:latest")
    daemon = Vgpumon(quiet(host_config(host)), tmp_path)
    try:
        metrics = daemon.metrics()

        def value(name, **labels):
            return metrics.get((name, tuple(sorted(labels.items()))))

        assert value("vgpumon_processes", group="server") == 1
        assert value("vgpumon_processes", group="runner") == 1
        assert value("vgpumon_processes_with_library", group="runner", library="ggml-cuda") == 1
        assert value("vgpumon_processes_with_library", group="server", library="ggml-cuda") == 0
        for shim in ("vgpu-exec", "vgpu-cuda", "vgpu-nvml", "vgpu-cudart"):
            assert value("vgpumon_processes_with_library", group="server", library=shim) == 1
            assert value("vgpumon_processes_missing_library", group="server", library=shim) == 0
        assert value("vgpumon_processes_missing_library", group="runner", library="ggml-cuda") == 0
        assert value("vgpumon_processes_bypassing_shim", group="runner") == 0
        assert value("vgpumon_library_present", library="vgpu-cuda") == 1
        for link, _target in host.links():
            assert value("vgpumon_shim_link_state", path=str(link), state="ok", view="host") == 1
        state = daemon.state()
        (tracked,) = [p for p in state["processes"] if p["group"] == "runner"]
        assert tracked["pid"] == runner.pid and tracked["ppid"] == server.pid
        assert tracked["model_arg"] == host.model("llama3.2:latest").blob
    finally:
        daemon.stop()


def test_once_reports_the_runner_and_its_ggml_cuda(simhost, tmp_path):
    host = simhost(era="F")
    host.add_model("llama3.2:latest")
    host.start_server().load_model("llama3.2:latest")
    config = tmp_path / "vgpumon.yaml"
    write_config(config, host_config(host))
    result = run_cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    metrics = parse_metrics(result.stdout)
    assert metrics[("vgpumon_processes", (("group", "runner"),))] == 1
    assert metrics[("vgpumon_processes_with_library",
                    (("group", "runner"), ("library", "ggml-cuda")))] == 1
    textfile = tmp_path / "vgpumon.prom"
    assert run_cli("once", "--config", str(config), "--textfile", str(textfile)).returncode == 0
    assert "vgpumon_processes{group=\"runner\"} 1.0" in textfile.read_text()


def test_only_the_real_driver_mapped_is_a_bypass(simhost, tmp_path):
    host = simhost(era="F", shim_links=False)  # libcuda.so.1 -> the real driver, no shims
    host.add_model("llama3.2:latest")
    host.start_server(preload_shims=False).load_model("llama3.2:latest")
    daemon = Vgpumon(quiet(host_config(host)), tmp_path)
    try:
        assert daemon.value("vgpumon_processes_bypassing_shim", group="runner") == 1
        assert daemon.value("vgpumon_processes_with_library", group="runner",
                            library="cuda-driver") == 1
        assert daemon.value("vgpumon_processes_missing_library", group="runner",
                            library="vgpu-cuda") == 1
        assert daemon.value("vgpumon_processes_bypassing_shim", group="server") == 0
    finally:
        daemon.stop()


def test_a_link_to_the_real_driver_is_wrong_target(simhost, tmp_path):
    host = simhost(era="F")
    link = host.lib64 / "libcuda.so.1"
    host.set_link(link, host.real_driver)
    daemon = Vgpumon(quiet(host_config(host)), tmp_path)
    try:
        assert daemon.value("vgpumon_shim_link_state", path=str(link), state="wrong_target",
                            view="host") == 1
        (state,) = [x for x in daemon.state()["links"] if x["path"] == str(link)]
        assert state["target"] == str(host.real_driver)
    finally:
        daemon.stop()


def test_replaced_shim_file_shows_a_stale_mapping(simhost, tmp_path):
    host = simhost(era="F")
    host.add_model("llama3.2:latest")
    host.start_server().load_model("llama3.2:latest")
    daemon = Vgpumon(host_config(host, interval="1s"), tmp_path)
    try:
        assert daemon.value("vgpumon_processes_stale_library", group="runner",
                            library="vgpu-cuda") == 0
        host.replace_file(host.shim("cuda"))
        daemon.wait_value("vgpumon_processes_stale_library", 1, group="runner",
                          library="vgpu-cuda")
        daemon.wait_value("vgpumon_processes_stale_library", 1, group="server",
                          library="vgpu-cuda")
        assert daemon.value("vgpumon_processes_with_library", group="runner",
                            library="vgpu-cuda") == 1  # still loaded, just stale
        event = daemon.wait_event("library_stale", match=lambda e: e["group"] == "runner")
        assert event["path"].endswith("libvgpu-cuda.so")
    finally:
        daemon.stop()


@pytest.mark.parametrize("state", ["missing", "not_symlink", "wrong_target", "dangling"])
def test_each_link_state(simhost, tmp_path, state):
    host = simhost(era="F")
    link = host.lib64 / "libcuda.so.1"
    if state == "missing":
        link.unlink()
    elif state == "not_symlink":
        link.unlink()
        shutil.copy(host.shim("cuda"), link)
    elif state == "wrong_target":
        host.set_link(link, host.real_driver)
    elif state == "dangling":
        host.set_link(link, host.lib64 / "libvgpu-cuda.so.gone")
    config = tmp_path / "vgpumon.yaml"
    write_config(config, host_config(host))
    result = run_cli("once", "--config", str(config))
    metrics = parse_metrics(result.stdout)
    for name in ("ok", "missing", "not_symlink", "wrong_target", "dangling"):
        key = ("vgpumon_shim_link_state", (("path", str(link)), ("state", name), ("view", "host")))
        assert metrics[key] == (1 if name == state else 0), name


def test_config_typo_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("listen: 127.0.0.1:0\nintervall: 5s\n")
    for command in (["config", "check"], ["run"], ["once"]):
        result = run_cli(*command, "--config", str(config))
        assert result.returncode == 2, command
        assert "intervall" in result.stderr and ":2:" in result.stderr
        assert "listening" not in result.stderr


def test_config_check_accepts_the_shipped_config():
    result = run_cli("config", "check", "--config", str(REPO / "config" / "vgpumon.yaml"))
    assert result.returncode == 0 and "config ok" in result.stdout


def test_unreadable_maps_count_as_unreadable_not_missing(simhost, tmp_path):
    """vgpumon without CAP_SYS_PTRACE reading root's processes: unreadable, never missing."""
    host = simhost(era="F")
    host.add_model("llama3.2:latest")
    host.start_server().load_model("llama3.2:latest")
    config = write_config(tmp_path / "vgpumon.yaml",
                          host_config(host, events={"file": ""}, ollama={"log": {}}))
    command, env = unprivileged_command(tmp_path)
    result = subprocess.run([*command, "once", "--config", str(config)], capture_output=True,
                            text=True, timeout=60, env=env, preexec_fn=as_nobody)
    assert result.returncode == 0, result.stderr
    metrics = parse_metrics(result.stdout)
    assert metrics[("vgpumon_processes", (("group", "runner"),))] == 1
    assert metrics[("vgpumon_processes_unreadable", (("group", "runner"),))] == 1
    assert metrics[("vgpumon_processes_missing_library",
                    (("group", "runner"), ("library", "ggml-cuda")))] == 0
    assert metrics[("vgpumon_processes_with_library",
                    (("group", "runner"), ("library", "ggml-cuda")))] == 0


def test_every_healthy_collector_keeps_refreshing_on_a_quiet_host(simhost, tmp_path):
    """VgpumonDataStale fires on a last success that stops moving while success is 1: an
    event-driven source with nothing to report must still renew it."""
    host = simhost(era="F")
    host.add_model("llama3.2:latest")
    server = host.start_server()
    daemon = Vgpumon(host_config(host, interval="1s"), tmp_path)
    try:
        server.load_model("llama3.2:latest")  # events written: the event log has a status
        def last_successes() -> dict[str, float]:
            metrics = daemon.metrics()
            return {dict(labels)["collector"]: value for (name, labels), value in metrics.items()
                    if name == "vgpumon_collector_last_success_timestamp_seconds"
                    and metrics[("vgpumon_collector_success", labels)] == 1}

        first = wait_for(lambda: (found := last_successes()) and "event_log" in found and found,
                         message="the event log's first write")
        wait_for(lambda: all(last_successes().get(name, 0) > at + 1 for name, at in first.items()),
                 message=f"every collector of {sorted(first)} to refresh again")
    finally:
        daemon.stop()


def test_sighup_reloads_and_keeps_the_old_config_when_the_new_one_is_bad(simhost, tmp_path):
    host = simhost(era="F")
    config = host_config(host)
    daemon = Vgpumon(config, tmp_path)
    try:
        assert daemon.value("vgpumon_crash_loop_threshold") == 3
        daemon.config_path.write_text("intervall: 5s\n")
        daemon.signal(signal.SIGHUP)
        daemon.wait_value("vgpumon_config_last_reload_success", 0)
        assert daemon.value("vgpumon_processes", group="server") == 0  # still serving
        config["crash_loop"] = {"crashes": 7, "window": "10m"}
        config["listen"] = daemon.url.removeprefix("http://")
        write_config(daemon.config_path, config)
        daemon.signal(signal.SIGHUP)
        daemon.wait_value("vgpumon_config_last_reload_success", 1)
        daemon.wait_value("vgpumon_crash_loop_threshold", 7)
        assert "config reload failed" in daemon.log_text()
    finally:
        assert daemon.stop() == 0


def test_endpoints(simhost, tmp_path):
    host = simhost(era="F")
    daemon = Vgpumon(host_config(host), tmp_path)
    try:
        assert b"Shim links" in daemon.get("/")
        assert "processes" in daemon.state()
        assert isinstance(daemon.events(), list)
        with pytest.raises(Exception) as caught:
            daemon.get("/nope")
        assert "404" in str(caught.value)
        wait_for(lambda: daemon.get("/healthz") == b"ok\n")
    finally:
        daemon.stop()


def test_exposition_passes_promtool_check_metrics(simhost, tmp_path):
    host = simhost(era="F")
    host.add_model("llama3.2:latest")
    host.start_server().load_model("llama3.2:latest")
    daemon = Vgpumon(host_config(host), tmp_path)
    try:
        daemon.wait_value("vgpumon_ollama_up", 1)
        text = daemon.get("/metrics")
    finally:
        daemon.stop()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
