"""End to end: GPUs, per-model offload, CPU fallback and crashes from the simulated
host's API and log, for each era; replay of the same log; a hung or broken API."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.harness import (
    Vgpumon,
    host_config,
    parse_metrics,
    run_cli,
    wait_for,
    write_config,
)

MODEL = "llama3.2:latest"
LAYERS = 29
ERAS = ["A", "B", "C", "D1", "D2", "E", "F", "G"]
NO_API_PS = ("A", "B")  # /api/ps came with 0.1.38: which models are loaded is unknown there


def start(host, tmp_path, **overrides) -> Vgpumon:
    return Vgpumon(host_config(host, **{"interval": "60s", **overrides}), tmp_path)


@pytest.fixture(params=ERAS)
def era_host(request, simhost):
    host = simhost(era=request.param)
    host.add_model(MODEL, layers=LAYERS)
    return host


def model_metrics(daemon: Vgpumon) -> tuple[float | None, float | None]:
    return (daemon.value("vgpumon_ollama_model_gpu_layers", model=MODEL),
            daemon.value("vgpumon_ollama_model_layers", model=MODEL))


def test_full_offload(era_host, tmp_path):
    host = era_host
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        server.load_model(MODEL, scenario="full_offload")
        wait_for(lambda: model_metrics(daemon) == (LAYERS, LAYERS),
                 message="29/29 layers on the GPU")
        daemon.wait_value("vgpumon_ollama_gpus", 1)
        assert daemon.value("vgpumon_ollama_up") == 1
        assert daemon.value("vgpumon_ollama_model_offload_estimated", model=MODEL) == 0
        if host.era.name in NO_API_PS:  # the layers came from the log alone
            assert daemon.value("vgpumon_ollama_models_loaded") is None
        else:
            daemon.wait_value("vgpumon_ollama_models_loaded", 1)
            assert daemon.value("vgpumon_ollama_model_size_bytes", model=MODEL) > 0
        assert daemon.value("vgpumon_ollama_info", version=host.era.version) == 1
    finally:
        daemon.stop()


def test_cpu_fallback_no_gpu_found(era_host, tmp_path):
    host = era_host
    server = host.start_server(gpus=0)
    daemon = start(host, tmp_path)
    try:
        server.load_model(MODEL, scenario="cpu_fallback")
        wait_for(lambda: model_metrics(daemon)[0] == 0, message="0 layers on the GPU")
        if host.era.name == "A":
            # <= 0.1.17 logs no GPU discovery, and its CPU runner no CUDA device list: the
            # number of GPUs is unknown, not 0 (OllamaModelOnCPU still fires on the layers).
            assert daemon.value("vgpumon_ollama_gpus") is None
        else:
            daemon.wait_value("vgpumon_ollama_gpus", 0)
        assert daemon.value("vgpumon_ollama_gpus_expected") == 1
        # The CPU variant of the backend has the CUDA one's file name in eras B and C.
        holder = "server" if host.era.name == "B" else "runner"
        assert daemon.value("vgpumon_processes_with_library", group=holder,
                            library="ggml-cuda") == 0
    finally:
        daemon.stop()


def replay(log_file) -> list[dict]:
    result = run_cli("replay", "--json", str(log_file))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


LOAD_KINDS = ("gpu_discovered", "runner_started", "offload", "runner_ready")


def test_partial_offload_and_its_replay(era_host, tmp_path):
    """10 of 29 layers on the GPU, and `vgpumon replay` of the log finds the load's events."""
    host = era_host
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        server.load_model(MODEL, scenario="partial_offload", gpu_layers=10)
        wait_for(lambda: model_metrics(daemon) == (10, LAYERS), message="10/29 layers")
        live = [e for e in daemon.events() if e["kind"] in LOAD_KINDS]
    finally:
        daemon.stop()
    summary = [(e["kind"], e.get("gpu_layers"), e.get("estimate"), e.get("model"))
               for e in live]
    replayed = [(e["kind"], e.get("gpu_layers"), e.get("estimate"), e.get("model"))
                for e in replay(host.log_file) if e["kind"] in LOAD_KINDS]
    assert ("offload", 10, False, host.model(MODEL).blob_digest.split(":")[1]) in summary
    # The daemon files a held-back server estimate at its own time, replay where it is
    # released: compare the load's events, not their order.
    assert summary and sorted(replayed[-len(summary):], key=repr) == sorted(summary, key=repr)


def test_once_reports_ollama(simhost, tmp_path):
    host = simhost(era="F")
    host.add_model(MODEL, layers=LAYERS)
    host.start_server().load_model(MODEL, scenario="partial_offload", gpu_layers=10)
    config = write_config(tmp_path / "vgpumon.yaml", host_config(host, events={"file": ""}))
    result = run_cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    metrics = parse_metrics(result.stdout)
    assert metrics[("vgpumon_ollama_up", ())] == 1
    assert metrics[("vgpumon_ollama_gpus", ())] == 1
    assert metrics[("vgpumon_ollama_model_gpu_layers", (("model", MODEL),))] == 10
    assert metrics[("vgpumon_collector_success", (("collector", "ollama_api"),))] == 1
    assert metrics[("vgpumon_collector_success", (("collector", "ollama_log"),))] == 1


def test_model_loaded_inside_the_server_comes_and_goes(simhost, tmp_path):
    """0.1.18-0.1.31 load the model in `ollama serve` itself and have no /api/ps: the model
    blob mapped in the server says which model is loaded, and until when."""
    host = simhost(era="B")
    host.add_model(MODEL, layers=LAYERS)
    server = host.start_server()
    daemon = start(host, tmp_path, interval="1s")
    try:
        server.load_model(MODEL, scenario="full_offload")
        wait_for(lambda: model_metrics(daemon) == (LAYERS, LAYERS), message="29/29 layers")
        server.unload(MODEL)
        wait_for(lambda: model_metrics(daemon) == (None, None), message="the model gone")
        assert daemon.value("vgpumon_processes", group="server") == 1
    finally:
        daemon.stop()


def test_go_runner_crash_counts_as_a_crash(simhost, tmp_path):
    host = simhost(era="F")
    host.add_model(MODEL)
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        runner = server.load_model(MODEL)
        server.crash_runner(MODEL, mode="go_crash")
        event = daemon.wait_event("process_exited", match=lambda e: e["pid"] == runner.pid)
        assert event["reason"] == "crash"
        assert daemon.wait_event("go_crash")["signal"] == "SIGSEGV"
        # 0.13 logs no "runner terminated" line for an idle runner's crash; the exit status
        # (proc connector) and the trace (log) are what tell it was a crash.
    finally:
        daemon.stop()


@pytest.mark.parametrize("era", ["C", "G"])
def test_cxx_runner_crash_is_a_signal_crash(simhost, tmp_path, era):
    host = simhost(era=era)
    host.add_model(MODEL)
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        runner = server.load_model(MODEL)
        server.crash_runner(MODEL, mode="sigsegv")
        event = daemon.wait_event("process_exited", match=lambda e: e["pid"] == runner.pid)
        assert (event["reason"], event["signal"]) == ("crash", "SIGSEGV")
    finally:
        daemon.stop()


def test_cuda_init_failure_is_counted(simhost, tmp_path):
    host = simhost(era="F")
    host.add_model(MODEL)
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        server.load_model(MODEL, scenario="cuda_init_failure")
        daemon.wait_value("vgpumon_ollama_log_errors_total", 1, kind="cuda_init_failed")
        assert "failed to initialize CUDA" in daemon.wait_event("cuda_init_failed")["message"]
    finally:
        daemon.stop()


def test_out_of_memory_is_counted(simhost, tmp_path):
    host = simhost(era="F")
    host.add_model(MODEL)
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        server.load_model(MODEL, scenario="oom")
        daemon.wait_value("vgpumon_ollama_log_errors_total", 1, kind="out_of_memory")
    finally:
        daemon.stop()


def test_replay_prints_the_events_the_daemon_saw(simhost, tmp_path):
    host = simhost(era="F")
    host.add_model(MODEL)
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        server.load_model(MODEL, scenario="partial_offload", gpu_layers=10)
        server.crash_runner(MODEL, mode="go_crash")
        daemon.wait_event("go_crash")
        live = [e for e in daemon.events() if e["kind"] in
                ("ollama_version", "gpu_discovered", "runner_started", "offload",
                 "runner_exited", "go_crash")]
    finally:
        daemon.stop()
    replayed = replay(host.log_file)
    # The daemon starts at the end of the log: it saw the events after its start.
    later = [(e["kind"], e.get("gpu_layers"), e.get("reason")) for e in live]
    tail = [(e["kind"], e.get("gpu_layers"), e.get("reason")) for e in replayed
            if e["kind"] in {kind for kind, _, _ in later}][-len(later):]
    assert later and tail == later
    for fmt in ("short", "json"):
        journal = tmp_path / f"journal.{fmt}"
        journal.write_text(host.journal(fmt))
        again = run_cli("replay", "--json", str(journal))
        kinds = [json.loads(line)["kind"] for line in again.stdout.splitlines()]
        assert kinds.count("offload") == [e["kind"] for e in replayed].count("offload"), fmt


def test_hung_api_never_stalls_metrics(simhost, tmp_path):
    host = simhost(era="F")
    server = host.start_server()
    daemon = start(host, tmp_path, interval="1s", ollama={"timeout": "500ms"})
    try:
        daemon.wait_value("vgpumon_ollama_up", 1)
        server.fault("hang", seconds=30)
        daemon.wait_value("vgpumon_ollama_up", 0, timeout=10)
        started = time.monotonic()
        for _ in range(5):
            daemon.get("/metrics", timeout=2)
        assert time.monotonic() - started < 5  # generous: a stalled loop would take 30 s
        server.clear_fault()
        daemon.wait_value("vgpumon_ollama_up", 1, timeout=40)
    finally:
        daemon.stop()


@pytest.mark.parametrize("fault", ["garbage", "huge", "error"])
def test_broken_api_answers(simhost, tmp_path, fault):
    host = simhost(era="F")
    server = host.start_server()
    daemon = start(host, tmp_path, interval="1s")
    try:
        daemon.wait_value("vgpumon_ollama_up", 1)
        server.fault(fault, paths=["/api/ps"])
        daemon.wait_value("vgpumon_ollama_up", 0)
        expected = 1 if fault == "error" else 0  # an HTTP 500 is Ollama's problem, not ours
        daemon.wait_value("vgpumon_collector_success", expected, collector="ollama_api")
        server.clear_fault()
        daemon.wait_value("vgpumon_ollama_up", 1)
        daemon.wait_value("vgpumon_collector_success", 1, collector="ollama_api")
    finally:
        daemon.stop()


def test_reload_applies_a_new_ollama_url(simhost, tmp_path):
    host = simhost(era="F")
    config = host_config(host, interval="1s", ollama={"url": "http://127.0.0.1:9"})
    daemon = Vgpumon(config, tmp_path)
    try:
        daemon.wait_value("vgpumon_ollama_up", 0)
        host.start_server()
        config["ollama"]["url"] = f"http://127.0.0.1:{host.port}"
        config["listen"] = daemon.url.removeprefix("http://")
        write_config(daemon.config_path, config)
        daemon.signal(signal.SIGHUP)
        daemon.wait_value("vgpumon_ollama_up", 1)
    finally:
        daemon.stop()
