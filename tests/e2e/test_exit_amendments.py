"""Exits published at once and amended by evidence that comes later
(docs/events.md#amended-exits): a real runner on a simulated host killed with a real
SIGKILL, seen through the real proc connector by a real daemon loop, scraped over HTTP.
Only the kernel log is a stand-in: the kernel alone writes kernel-facility records, so the
test hands the daemon's `KernelLog` its records, one per read as `/dev/kmsg` gives them, over
a socket, at the moment it chooses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.harness import host_config, parse_metrics, wait_for
from vgpumon.config.loading import parse_config
from vgpumon.daemon.exit_watch import PROC_CONNECTOR, ExitWatch
from vgpumon.daemon.kernel_log import KernelLog
from vgpumon.daemon.loop import Daemon
from vgpumon.model import collectors
from vgpumon.sources.kmsg import KmsgReader

MODEL = "llama3.2:latest"
KERNEL_ERR = 3  # facility 0 (kernel), priority 3 (err): how the OOM killer's line is logged


class Running:
    """A daemon with the kernel log and exit sources, its loop in a thread, its HTTP port."""

    def __init__(self, config: dict[str, Any]):
        self.kmsg, kernel_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        kernel_end.setblocking(False)
        fd = kernel_end.detach()
        self.daemon = Daemon(parse_config(yaml.safe_dump(config, sort_keys=False)))
        self.daemon.start()
        kernel_log = KernelLog("kmsg-stand-in",
                               opener=lambda path: KmsgReader(path, fd=fd))
        exits = ExitWatch(kernel_log)
        self.daemon.add_source(kernel_log)
        self.daemon.add_source(exits)
        self.mechanism = exits.mechanism
        self._wake_read, self._wake = socket.socketpair()
        self._wake_read.setblocking(False)
        self.daemon.watch(self._wake_read.fileno(), collectors.LOOP,
                          lambda now: self._wake_read.recv(64) and None)
        server = self.daemon.bind()
        self.url = f"http://127.0.0.1:{server.port}"
        server.serve_in_thread()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._sequence = 0

    def _run(self) -> None:
        while not self._stopping:
            self.daemon.step()

    def stop(self) -> None:
        self._stopping = True
        self._wake.send(b"x")
        self._thread.join(timeout=10)
        self.daemon.close()
        for sock in (self.kmsg, self._wake, self._wake_read):
            sock.close()

    def kernel_logs(self, message: str, facility: int = 0) -> None:
        self._sequence += 1
        self.kmsg.send(f"{facility << 3 | KERNEL_ERR},{self._sequence},1000000,-;"
                       f"{message}\n".encode())

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return response.read()

    def events(self, kind: str) -> list[dict[str, Any]]:
        return json.loads(self.get(f"/events?kind={kind}"))["events"]

    def wait_event(self, kind: str, pid: int) -> dict[str, Any]:
        return wait_for(lambda: next((e for e in self.events(kind) if e["pid"] == pid), None),
                        10, message=f"a {kind} event of {pid}")

    def value(self, name: str, **labels: str) -> float | None:
        metrics = parse_metrics(self.get("/metrics").decode())
        return metrics.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def host(simhost):
    host = simhost(era="F")
    host.add_model(MODEL)
    return host


@pytest.fixture
def running(host, tmp_path) -> Iterator[Any]:
    started: list[Running] = []

    def start(**overrides: Any) -> Running:
        config = host_config(host, interval="60s",
                             events={"file": str(tmp_path / "events.jsonl")}, **overrides)
        daemon = Running(config)
        started.append(daemon)
        if daemon.mechanism != PROC_CONNECTOR:
            pytest.skip("the proc connector cannot be opened here")
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def oom_record(pid: int) -> str:
    return (f"Memory cgroup out of memory: Killed process {pid} (ollama) total-vm:1048576kB, "
            "anon-rss:65536kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:256kB "
            "oom_score_adj:0")


def killed_runner(server, daemon: Running) -> int:
    """A runner the daemon saw start, killed with SIGKILL as Ollama and the OOM killer do."""
    runner = server.load_model(MODEL)
    daemon.wait_event("process_started", runner.pid)
    os.kill(runner.pid, signal.SIGKILL)
    return runner.pid


def test_an_oom_record_after_the_exit_amends_the_published_exit(host, running, tmp_path):
    server = host.start_server()
    daemon = running()
    pid = killed_runner(server, daemon)

    exited = daemon.wait_event("process_exited", pid)
    assert (exited["reason"], exited["signal"]) == ("stopped", "SIGKILL")
    assert daemon.value("vgpumon_process_exits_total", group="runner", reason="stopped") == 1
    assert daemon.value("vgpumon_process_crashes_total", group="runner") == 0

    daemon.kernel_logs(oom_record(pid))
    amended = daemon.wait_event("exit_reason_amended", pid)
    assert (amended["exit_ts"], amended["old_reason"], amended["reason"], amended["because"],
            amended["signal"]) == (exited["ts"], "stopped", "oom", "oom_kill", "SIGKILL")
    # Counted under its first reason, the amendment apart, and the crash it turned out to be.
    assert daemon.value("vgpumon_process_exits_total", group="runner", reason="stopped") == 1
    assert daemon.value("vgpumon_process_exits_total", group="runner", reason="oom") == 0
    assert daemon.value("vgpumon_process_exit_reasons_amended_total", group="runner",
                        **{"from": "stopped", "to": "oom"}) == 1
    assert daemon.value("vgpumon_process_crashes_total", group="runner") == 1
    assert daemon.value("vgpumon_process_last_crash_timestamp_seconds",
                        group="runner") == pytest.approx(exited["ts"])
    # The event log file is append-only: the exit, then its amendment.
    logged = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in logged if e.get("pid") == pid][-2:] == [
        "process_exited", "exit_reason_amended"]


def test_an_oom_record_in_hand_at_the_exit_makes_it_oom_from_the_start(host, running):
    """The OOM killer logs before its victim dies."""
    server = host.start_server()
    daemon = running()
    runner = server.load_model(MODEL)
    daemon.wait_event("process_started", runner.pid)
    daemon.kernel_logs(oom_record(runner.pid))
    os.kill(runner.pid, signal.SIGKILL)
    assert daemon.wait_event("process_exited", runner.pid)["reason"] == "oom"
    assert daemon.value("vgpumon_process_exits_total", group="runner", reason="oom") == 1
    assert daemon.events("exit_reason_amended") == []


def test_a_record_anyone_could_write_amends_nothing(host, running):
    """Root can write the OOM killer's text into /dev/kmsg, with the user facility only."""
    server = host.start_server()
    daemon = running()
    forged = killed_runner(server, daemon)
    assert daemon.wait_event("process_exited", forged)["reason"] == "stopped"
    daemon.kernel_logs(oom_record(forged), facility=1)
    real = killed_runner(server, daemon)  # a real one after it: the forged one was read
    daemon.wait_event("process_exited", real)
    daemon.kernel_logs(oom_record(real))
    daemon.wait_event("exit_reason_amended", real)
    assert [e["pid"] for e in daemon.events("exit_reason_amended")] == [real]


def test_sigkills_amended_to_oom_kills_make_a_crash_loop(host, running):
    """Each exit reads as an unload until its OOM-kill record comes; the crash loop still sees
    every crash."""
    server = host.start_server()
    daemon = running(crash_loop={"crashes": 3, "window": "1m"})
    for _ in range(3):
        pid = killed_runner(server, daemon)
        assert daemon.wait_event("process_exited", pid)["reason"] == "stopped"
        assert daemon.value("vgpumon_crash_loop", group="runner") == 0
        daemon.kernel_logs(oom_record(pid))
        daemon.wait_event("exit_reason_amended", pid)
    started = wait_for(lambda: next(iter(daemon.events("crash_loop_started")), None), 10,
                       message="a crash_loop_started event")
    assert (started["group"], started["crashes"]) == ("runner", 3)
    assert daemon.value("vgpumon_crash_loop", group="runner") == 1
    assert daemon.value("vgpumon_crash_loop_crashes", group="runner") == 3
