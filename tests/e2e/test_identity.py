"""Membership by what a process cannot set for itself (docs/configuration.md#membership), with
the shipped config and real processes: look-alikes started by an unprivileged user are seen
and counted apart, never believed, and their crashes move nothing; a root-owned `ollama`
that starts a root-owned `llama-server` is the server and its runner, and its crashes still
raise the crash loop.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness import NOBODY, REPO, Vgpumon, nobody_dir, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
BLOB = "/x/blobs/sha256-" + "ab" * 32
RUNNER_ARGV0 = f"ollama runner --model {BLOB} --port 1"


@pytest.fixture
def daemon(tmp_path) -> Iterator[Vgpumon]:
    """vgpumon with the shipped config (its groups, identity rules and expectations)."""
    config = yaml.safe_load((REPO / "config" / "vgpumon.yaml").read_text())
    config["events"]["file"] = str(tmp_path / "events.jsonl")
    config["ollama"]["log"] = {}
    config["interval"] = "1s"
    config["crash_loop"] = {"crashes": 3, "window": "5m"}
    running = Vgpumon(config, tmp_path)
    yield running
    running.stop()


@pytest.fixture
def user_dir() -> Iterator[Path]:
    with nobody_dir("vgpumon-identity-") as own:
        yield own


def as_nobody(argv: list[str], executable: str | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, executable=executable, user=NOBODY, group=NOBODY,
                            extra_groups=[], cwd="/", stdin=subprocess.DEVNULL,
                            env={"PATH": "/usr/bin:/bin"})


def rejected(daemon: Vgpumon, group: str, reason: str) -> float:
    return daemon.value("vgpumon_processes_rejected", group=group, reason=reason) or 0


def stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_look_alikes_of_an_unprivileged_user_are_rejected_and_move_nothing(daemon, user_dir):
    impostor = user_dir / "ollama"  # a copy of a system binary, named ollama, owned by nobody
    shutil.copy("/bin/sleep", impostor)
    os.chown(impostor, NOBODY, NOBODY)
    runners = [as_nobody([RUNNER_ARGV0, "600"], "/bin/sleep") for _ in range(3)]
    server = as_nobody(["ollama serve", "600"], str(impostor))
    renamed = as_nobody(["/usr/bin/python3", "-c",  # comm "ollama", executable python3
                         "import ctypes,time; ctypes.CDLL(None).prctl(15, b'ollama', 0, 0, 0);"
                         "time.sleep(600)", "serve"])
    try:
        wait_for(lambda: rejected(daemon, "runner", "parent") == 3, 10,
                 message="the runner look-alikes to be rejected")
        wait_for(lambda: rejected(daemon, "server", "executable_owner") == 1, 10,
                 message="the server look-alike to be rejected")
        wait_for(lambda: rejected(daemon, "server", "executable_name") == 1, 10,
                 message="the renamed python to be rejected")
        for runner in runners:
            runner.send_signal(signal.SIGSEGV)
            runner.wait()
        events = daemon.wait_event("process_rejected", match=lambda e: e["pid"] == server.pid)
        assert events["uid"] == NOBODY and events["reason"] == "executable_owner"
        # nothing a look-alike does moves a group's series or raises an alert
        metrics = daemon.metrics()
        for group in ("server", "runner", "discovery"):
            assert metrics[("vgpumon_processes", (("group", group),))] == 0
            assert metrics[("vgpumon_crash_loop", (("group", group),))] == 0
        assert not any(name == "vgpumon_process_crashes_total" and value
                       for (name, _), value in metrics.items())
        assert not daemon.events("process_exited")
        assert not daemon.events("process_started")
    finally:
        stop(*runners, server, renamed)


def test_a_world_writable_ollama_binary_is_not_trusted(daemon, user_dir):
    writable = user_dir.parent / "ollama"
    shutil.copy("/bin/sleep", writable)
    writable.chmod(0o777)
    server = subprocess.Popen(["ollama serve", "600"], executable=str(writable),
                              stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: rejected(daemon, "server", "executable_writable") == 1, 10,
                 message="the writable server binary to be rejected")
        assert daemon.value("vgpumon_processes", group="server") == 0
    finally:
        stop(server)


def test_a_root_owned_ollama_and_its_llama_server_child_are_members_and_crash_loop(
        daemon, tmp_path):
    install = Path(tempfile.mkdtemp(prefix="vgpumon-install-"))
    try:
        shutil.copy("/bin/bash", install / "ollama")
        shutil.copy("/bin/sleep", install / "llama-server")
        runner_argv0 = f"{install}/llama-server --model {BLOB} --port 1"
        script = (f'while true; do (exec -a "{runner_argv0}" {install}/llama-server 600); '
                  "sleep 0.1; done")
        server = subprocess.Popen([str(install / "ollama"), "-c", script, "serve"],
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            daemon.wait_value("vgpumon_processes", 1, group="server")
            for crash in range(1, 4):
                daemon.wait_value("vgpumon_processes", 1, group="runner")
                (runner,) = [e for e in daemon.state()["processes"] if e["group"] == "runner"]
                os.kill(runner["pid"], signal.SIGSEGV)
                daemon.wait_value("vgpumon_process_crashes_total", crash, group="runner")
            daemon.wait_value("vgpumon_crash_loop", 1, group="runner")
            assert rejected(daemon, "runner", "parent") == 0
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    finally:
        shutil.rmtree(install, ignore_errors=True)
