"""End to end: exits, crash loops, link swaps and late library loads are seen through
the event sources. The refresh interval is 60 s, so only the event paths can pass."""

from __future__ import annotations

import os
import signal

import pytest

from tests.harness import Vgpumon, host_config

MODEL = "llama3.2:latest"


@pytest.fixture
def host(simhost):
    host = simhost(era="F")
    host.add_model(MODEL)
    return host


def start(host, tmp_path, **overrides) -> Vgpumon:
    config = host_config(host, **{"interval": "60s", **overrides})
    return Vgpumon(config, tmp_path)


def exited(daemon: Vgpumon, pid: int) -> dict:
    return daemon.wait_event("process_exited", match=lambda e: e["pid"] == pid)


def final_reason(daemon: Vgpumon, exit: dict, expected: str) -> str:
    """The reason of an exit now: its last amendment's, else its own; waits for an amendment
    while the reason is not `expected` yet (docs/events.md#amended-exits)."""
    def of_exit(event: dict) -> bool:
        return event["pid"] == exit["pid"] and event["exit_ts"] == exit["ts"]

    if exit["reason"] != expected:
        daemon.wait_event("exit_reason_amended", match=of_exit)
    amendments = [e for e in daemon.events("exit_reason_amended") if of_exit(e)]
    return amendments[-1]["reason"] if amendments else exit["reason"]


def test_runner_segfault_in_the_shim_is_a_crash_attributed_to_the_shim(host, tmp_path):
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        runner = server.load_model(MODEL)
        daemon.wait_event("process_started", match=lambda e: e["pid"] == runner.pid)
        server.crash_runner(MODEL, mode="sigsegv", library="libvgpu-cuda.so")
        event = exited(daemon, runner.pid)
        assert event["reason"] == "crash" and event["signal"] == "SIGSEGV"
        assert event["library"] == "libvgpu-cuda.so"
        assert event["source"] == "proc_connector"
        daemon.wait_value("vgpumon_process_crashes_total", 1, group="runner")
        assert daemon.value("vgpumon_process_exits_total", group="runner", reason="crash") == 1
        assert daemon.value("vgpumon_process_last_crash_timestamp_seconds",
                            group="runner") == pytest.approx(event["ts"])
    finally:
        daemon.stop()


def test_go_runner_crash_is_exit_2_refined_by_the_trace_in_the_log(host, tmp_path):
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        runner = server.load_model(MODEL)
        server.crash_runner(MODEL, mode="go_crash", library="libggml-cuda.so")
        event = exited(daemon, runner.pid)
        assert (event["reason"], event["exit_code"]) == ("crash", 2)
        assert event["crash_signal"] == "SIGSEGV"
        assert event["library"] == "libggml-cuda.so"  # the trace's PC, in the cached maps
    finally:
        daemon.stop()


def test_exit_2_without_a_trace_is_an_error(host, tmp_path):
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        runner = server.load_model(MODEL)
        server.crash_runner(MODEL, mode="exit:2")
        event = exited(daemon, runner.pid)
        assert (event["reason"], event["exit_code"]) == ("error", 2)
        daemon.wait_value("vgpumon_process_crashes_total", 1, group="runner")
    finally:
        daemon.stop()


def test_unload_sigkill_is_stopped_and_not_a_crash(host, tmp_path):
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        runner = server.load_model(MODEL)
        server.unload(MODEL)
        event = exited(daemon, runner.pid)
        assert (event["reason"], event["signal"]) == ("stopped", "SIGKILL")
        daemon.wait_value("vgpumon_process_exits_total", 1, group="runner", reason="stopped")
        assert daemon.value("vgpumon_process_crashes_total", group="runner") == 0
    finally:
        daemon.stop()


def test_runner_killed_with_sigkill_is_published_at_once(host, tmp_path):
    """No OOM-kill record was in the kernel log when the exit came: it is published as
    `stopped` without waiting for one, in /events and /metrics in the same publication."""
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        runner = server.load_model(MODEL)
        daemon.wait_event("process_started", match=lambda e: e["pid"] == runner.pid)
        os.kill(runner.pid, signal.SIGKILL)
        event = exited(daemon, runner.pid)
        assert (event["reason"], event["signal"], event["source"]) == (
            "stopped", "SIGKILL", "proc_connector")
        metrics = daemon.metrics()  # published with the event: nothing to wait for
        assert metrics[("vgpumon_process_exits_total",
                        (("group", "runner"), ("reason", "stopped")))] == 1
        assert metrics[("vgpumon_process_crashes_total", (("group", "runner"),))] == 0
        assert daemon.events("exit_reason_amended") == []
    finally:
        daemon.stop()


def test_clean_exit(host, tmp_path):
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        runner = server.load_model(MODEL)
        server.crash_runner(MODEL, mode="exit:0")
        assert exited(daemon, runner.pid)["reason"] == "clean"
    finally:
        daemon.stop()


def test_real_oom_kill_is_oom(host, tmp_path):
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        runner = server.load_model(MODEL)
        server.crash_runner(MODEL, mode="oom", memory_limit=64 << 20)
        event = exited(daemon, runner.pid)
        assert event["signal"] == "SIGKILL"
        # The OOM killer logs before its victim dies, so the record is normally in hand when
        # the exit is published; if the victim won that race, the record amends the exit.
        assert final_reason(daemon, event, "oom") == "oom"
        daemon.wait_value("vgpumon_process_crashes_total", 1, group="runner")
        first = "oom" if event["reason"] == "oom" else "stopped"
        assert daemon.value("vgpumon_process_exits_total", group="runner", reason=first) == 1
    finally:
        daemon.stop()


def test_three_crashes_make_a_crash_loop_that_ends_after_the_window(host, tmp_path):
    server = host.start_server()
    daemon = start(host, tmp_path, crash_loop={"crashes": 3, "window": "4s"})
    try:
        for _ in range(3):
            runner = server.load_model(MODEL)
            server.crash_runner(MODEL, mode="kill_segv")
            exited(daemon, runner.pid)
        started = daemon.wait_event("crash_loop_started")
        assert started["group"] == "runner" and started["crashes"] == 3
        daemon.wait_value("vgpumon_crash_loop", 1, group="runner")
        daemon.wait_value("vgpumon_crash_loop", 0, group="runner", timeout=15)
        assert daemon.wait_event("crash_loop_ended")["group"] == "runner"
    finally:
        daemon.stop()


def test_link_swap_is_seen_at_once(host, tmp_path):
    daemon = start(host, tmp_path)
    link = host.lib64 / "libcuda.so.1"
    try:
        assert daemon.value("vgpumon_shim_link_state", path=str(link), state="ok", view="host") == 1
        host.set_link(link, host.real_driver)  # ln -sf
        daemon.wait_value("vgpumon_shim_link_state", 1, path=str(link), state="wrong_target",
                            view="host")
        event = daemon.wait_event("shim_link_changed")
        assert event["path"] == str(link)
        assert (event["old_target"], event["new_target"]) == ("libvgpu-cuda.so",
                                                              str(host.real_driver))
        assert daemon.value("vgpumon_shim_link_changes_total", path=str(link),
                            view="host") == 1
        host.set_link(link, "libvgpu-cuda.so")
        daemon.wait_value("vgpumon_shim_link_state", 1, path=str(link), state="ok", view="host")
        daemon.wait_value("vgpumon_shim_link_changes_total", 2, path=str(link),
                          view="host")
    finally:
        daemon.stop()


def test_library_loaded_after_start_is_seen_before_the_interval(host, tmp_path):
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        runner = server.load_model(MODEL, scenario="late_load", delay=1.0)
        daemon.wait_event("process_started", match=lambda e: e["pid"] == runner.pid)
        assert daemon.value("vgpumon_processes_with_library", group="runner",
                            library="ggml-cuda") == 0
        daemon.wait_value("vgpumon_processes_with_library", 1, group="runner",
                          library="ggml-cuda")
        loaded = daemon.wait_event("library_loaded", match=lambda e: e["pid"] == runner.pid
                                   and e["library"] == "ggml-cuda")
        assert loaded["path"] == str(host.ggml_cuda)
    finally:
        daemon.stop()


def test_server_restart_is_a_new_start_of_the_server_group(host, tmp_path):
    server = host.start_server()
    daemon = start(host, tmp_path)
    try:
        old = server.pid
        server.stop()
        exited(daemon, old)
        new = host.start_server()
        started = daemon.wait_event("process_started", match=lambda e: e["pid"] == new.pid)
        assert started["group"] == "server"
        daemon.wait_value("vgpumon_process_window_starts", 1, group="server")
    finally:
        daemon.stop()


def test_events_are_written_to_the_event_log(host, tmp_path):
    daemon = start(host, tmp_path)
    events_file = host.root / "var/lib/vgpumon/events.jsonl"
    try:
        host.set_link(host.lib64 / "libcuda.so.1", host.real_driver)
        daemon.wait_event("shim_link_changed")
    finally:
        daemon.stop()
    lines = events_file.read_text().splitlines()
    assert any('"kind":"shim_link_changed"' in line for line in lines)


def test_libraries_of_a_new_process_are_read_again_soon_without_any_watch(host, tmp_path):
    """No link, path library or watch_dirs entry covers the runner's library directory: the
    reads that follow a process start still see what it loads in its first seconds."""
    server = host.start_server()
    config = host_config(host, interval="60s", links=[], watch_dirs=[])
    config["libraries"] = {"ggml-cuda": {"name": "libggml-cuda.so*"}}
    config["shims"] = []
    for group in config["groups"].values():
        group["expect"] = []
    daemon = Vgpumon(config, tmp_path)
    try:
        runner = server.load_model(MODEL, scenario="late_load", delay=0.5)
        daemon.wait_event("process_started", match=lambda e: e["pid"] == runner.pid)
        daemon.wait_value("vgpumon_processes_with_library", 1, timeout=10, group="runner",
                          library="ggml-cuda")
    finally:
        daemon.stop()


@pytest.mark.parametrize("mechanism", ["pidfd", "poll"])
def test_exits_without_the_proc_connector(host, tmp_path, mechanism):
    """pidfds give the status (Linux 6.15+); polling only sees the process gone, and the
    kernel log still tells a segfault."""
    server = host.start_server()
    daemon = start(host, tmp_path, exit_watch=mechanism, **(
        {"interval": "1s"} if mechanism == "poll" else {}))
    try:
        assert daemon.value("vgpumon_exit_watch_info", mechanism=mechanism) == 1
        runner = server.load_model(MODEL)
        daemon.wait_event("process_started", match=lambda e: e["pid"] == runner.pid)
        server.crash_runner(MODEL, mode="sigsegv", library="libvgpu-cuda.so")
        event = exited(daemon, runner.pid)
        assert event["source"] == mechanism
        assert event["reason"] == "crash"
        if mechanism == "pidfd":
            assert event["signal"] == "SIGSEGV"
        runner = server.load_model(MODEL)
        daemon.wait_event("process_started", match=lambda e: e["pid"] == runner.pid)
        server.unload(MODEL)
        expected = "stopped" if mechanism == "pidfd" else "unknown"
        event = exited(daemon, runner.pid)
        assert event["reason"] == expected, daemon.events()
    finally:
        daemon.stop()
