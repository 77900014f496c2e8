"""Load and ground truth for the fault and soak tests: runner processes the test owns, a
daemon config that tracks only them, and readings of the daemon's own resources.

Runners are `vgrunner` (plain C, `vgrunner.c`) started from a path unique to the test run,
so a vgpumon of another test or session never counts them and ours counts nothing else.
Every process started here is killed and reaped at teardown, even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Vgpumon, wait_for

SOURCE = Path(__file__).with_name("vgrunner.c")


def build_runner(directory: Path) -> Path:
    """Compile vgrunner into `directory`; its path is what the runner group matches."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    binary = directory / "bin" / "vgrunner"
    binary.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([gcc, "-O1", "-o", str(binary), str(SOURCE)], check=True,
                   capture_output=True)
    return binary


@dataclass
class Runner:
    process: subprocess.Popen[bytes]
    mode: str

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Runners:
    """Starts runners and keeps the ground truth of how each one ended.

    `exits` counts, by the reason vgpumon should give (docs/metrics.md: clean, stopped, error,
    crash), every runner that ended and was reaped through `reap`.
    """

    binary: Path
    live: dict[int, Runner] = field(default_factory=dict)
    exits: Counter[str] = field(default_factory=Counter)
    started: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, mode: str = "sleep", ms: int = 0, model: str = "m") -> Runner:
        process = subprocess.Popen(
            [str(self.binary), "--model", model, "--mode", mode, "--ms", str(ms)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        runner = Runner(process, mode)
        with self._lock:
            self.live[runner.pid] = runner
            self.started += 1
        return runner

    def wait_exited(self, runner: Runner) -> None:
        """Block until `runner` has exited, without reaping it (it stays a zombie)."""
        os.waitid(os.P_PID, runner.pid, os.WEXITED | os.WNOWAIT)

    def reap(self, runner: Runner) -> str:
        """Reap `runner` and record the reason vgpumon should report for its wait status."""
        status = runner.process.wait()
        reason = expected_reason(status)
        with self._lock:
            self.live.pop(runner.pid, None)
            self.exits[reason] += 1
        return reason

    def kill(self, runner: Runner, sig: int = signal.SIGKILL) -> str:
        with contextlib.suppress(ProcessLookupError):
            runner.process.send_signal(sig)
        return self.reap(runner)

    def close(self) -> None:
        for runner in list(self.live.values()):
            with contextlib.suppress(ProcessLookupError):
                runner.process.kill()
            runner.process.wait()
        self.live.clear()


def expected_reason(returncode: int) -> str:
    """vgpumon's reason for a Popen returncode (negative: killed by that signal)."""
    if returncode == 0:
        return "clean"
    if returncode < 0:
        sig = -returncode
        if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
            return "stopped"
        return "crash"
    return "error"


def runner_config(tmp_path: Path, binary: Path, **overrides: Any) -> dict[str, Any]:
    """A config that tracks only this test's runners, with one shim link under `tmp_path`."""
    lib = tmp_path / "lib64"
    lib.mkdir(exist_ok=True)
    shim = lib / "libvgpu-cuda.so"
    shim.write_bytes(b"\x7fELF not really")
    real = lib / "libcuda.so.575.51.03"
    real.write_bytes(b"\x7fELF not really either")
    link = lib / "libcuda.so.1"
    if not link.is_symlink():
        link.symlink_to(shim.name)
    config: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "interval": "5s",
        "libraries": {
            "vgpu-cuda": {"path": str(shim)},
            "cuda-driver": {"name": "libcuda.so.*", "driver": True},
        },
        "shims": ["vgpu-cuda"],
        "links": [{"path": str(link), "target": str(shim)}],
        "groups": {"runner": {"cmdline": f"^{re.escape(str(binary))} .*--model"}},
        "ollama": {"url": "http://127.0.0.1:1", "timeout": "500ms", "log": {}},
        "events": {"file": str(tmp_path / "events.jsonl")},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def exits_by_reason(daemon: Vgpumon, group: str = "runner") -> Counter[str]:
    counts: Counter[str] = Counter()
    for (name, labels), value in daemon.metrics().items():
        label = dict(labels)
        if name == "vgpumon_process_exits_total" and label.get("group") == group and value:
            counts[label["reason"]] += int(value)
    return counts


def wait_exits(daemon: Vgpumon, expected: Counter[str], timeout: float = 20.0) -> None:
    """Wait until vgpumon's exit counters of the runner group equal `expected` exactly."""
    wanted = +expected
    wait_for(lambda: exits_by_reason(daemon) == wanted, timeout,
             message=f"exit counts {dict(wanted)}")


@dataclass(frozen=True)
class Resources:
    fds: int
    threads: int
    rss_bytes: int


def resources(pid: int) -> Resources:
    """Open descriptors, threads and resident memory of a process, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return Resources(len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"][0]),
                     int(fields["VmRSS"][0]) * 1024)


# --- fixtures (exposed by tests/faults/conftest.py and tests/soak/conftest.py) ---------------

@pytest.fixture(scope="session")
def runner_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_runner(tmp_path_factory.mktemp("vgrunner"))


@pytest.fixture
def runners(runner_binary: Path):
    started = Runners(runner_binary)
    yield started
    started.close()


@pytest.fixture
def daemons():
    """Factory of `Vgpumon`s; each is resumed (if a test stopped it) and stopped at teardown."""
    running: list[Vgpumon] = []

    def start(config: dict[str, Any], workdir: Path, **kw: Any) -> Vgpumon:
        daemon = Vgpumon(config, workdir, **kw)
        running.append(daemon)
        return daemon

    yield start
    for daemon in running:
        with contextlib.suppress(ProcessLookupError):
            daemon.process.send_signal(signal.SIGCONT)
        daemon.stop()
