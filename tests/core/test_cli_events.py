"""`vgpumon events`: the event log for a human, as JSON, and followed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from tests.harness import REPO, run_cli, wait_for
from vgpumon.daemon.eventlog import EventLog
from vgpumon.model.events import Event

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def write(path, events):
    log = EventLog(str(path), 1 << 20)
    log.append(events)
    log.close()


def sample():
    return [
        Event(1795690000.0, "process_exited", {"group": "runner", "pid": 4242, "reason": "crash",
                                               "signal": "SIGSEGV",
                                               "library": "libvgpu-cuda.so"}),
        Event(1795690001.5, "shim_link_changed", {"path": "/usr/lib64/libcuda.so.1",
                                                  "old_target": "libvgpu-cuda.so",
                                                  "new_target": "libcuda.so.575",
                                                  "state": "wrong_target"}),
    ]


def test_events_prints_one_line_per_event(tmp_path):
    path = tmp_path / "events.jsonl"
    write(path, sample())
    result = run_cli("events", "--file", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2026-11-26T") and "process_exited" in lines[0]
    assert "reason=crash" in lines[0] and "library=libvgpu-cuda.so" in lines[0]
    assert "state=wrong_target" in lines[1] and "new_target=libcuda.so.575" in lines[1]


def test_events_json_is_the_event_log(tmp_path):
    path = tmp_path / "events.jsonl"
    write(path, sample())
    result = run_cli("events", "--json", "--file", str(path))
    assert [json.loads(line)["kind"] for line in result.stdout.splitlines()] == [
        "process_exited", "shim_link_changed"]


def test_events_follow_prints_new_events_across_rotation(tmp_path):
    path = tmp_path / "events.jsonl"
    write(path, sample()[:1])
    follower = subprocess.Popen([sys.executable, "-m", "vgpumon", "events", "--follow",
                                 "--json", "--file", str(path)], stdout=subprocess.PIPE,
                                text=True, env=ENV)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(follower.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(lines) >= 1, 20, message="the existing event")
        write(path, sample()[1:])
        wait_for(lambda: len(lines) >= 2, 20, message="the appended event")
        os.replace(path, str(path) + ".1")  # rotated
        write(path, [Event(1795690009.0, "crash_loop_started", {"group": "runner",
                                                                "crashes": 3,
                                                                "window_seconds": 600})])
        wait_for(lambda: len(lines) >= 3, 20, message="the event after rotation")
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    assert [json.loads(line)["kind"] for line in lines[:3]] == [
        "process_exited", "shim_link_changed", "crash_loop_started"]


def test_events_without_a_log_configured_exits_2(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("events: {file: ''}\n")
    result = run_cli("events", "--config", str(config))
    assert result.returncode == 2 and "no event log" in result.stderr
