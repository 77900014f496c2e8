"""Run the real `vgpumon` command against a config and read it through its HTTP endpoints."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"listening address=(\S+)")


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class Vgpumon:
    """A `vgpumon run` subprocess with its own config file. `command` is the prefix that runs
    vgpumon (default: this interpreter with `-m vgpumon`; see `unprivileged_command`)."""

    def __init__(self, config: dict[str, Any], workdir: Path, *, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None,
                 command: list[str] | None = None):
        config = {"listen": "127.0.0.1:0", **config}
        self.config_path = workdir / "vgpumon.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_lines: list[str] = []
        self._address: str | None = None
        prefix = command or [sys.executable, "-m", "vgpumon"]
        self.process = subprocess.Popen(
            [*prefix, *args, "run", "--config", str(self.config_path)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, preexec_fn=preexec,
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        wait_for(lambda: self._address or self.process.poll() is not None, 30,
                 message="vgpumon to listen")
        if self._address is None:
            raise AssertionError("vgpumon exited early:\n" + "\n".join(self.log_lines))

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log_lines.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match:
                self._address = match.group(1)

    @property
    def url(self) -> str:
        return f"http://{self._address}"

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return parse_metrics(self.get("/metrics").decode())

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def wait_value(self, name: str, expected: float, timeout: float = 10.0,
                   **labels: str) -> None:
        wait_for(lambda: self.value(name, **labels) == expected, timeout,
                 message=f"{name}{labels} == {expected}")

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = "/events" + (f"?kind={kind}" if kind else "")
        return json.loads(self.get(path))["events"]

    def wait_event(self, kind: str, timeout: float = 10.0,
                   match: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        return wait_for(lambda: next((e for e in self.events(kind) if match(e)), None), timeout,
                        message=f"a {kind} event")

    def state(self) -> dict[str, Any]:
        return json.loads(self.get("/state"))

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> int:
        returncode = stop_process(self.process)
        self._reader.join(timeout=5)
        return returncode

    def log_text(self) -> str:
        return "\n".join(self.log_lines)


def run_cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`python -m vgpumon ARGS` from this checkout, to completion (60 s at most)."""
    return subprocess.run([sys.executable, "-m", "vgpumon", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
                          **kw)


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def host_config(host: Any, **overrides: Any) -> dict[str, Any]:
    """`host.vgpumon_config()` with every group narrowed to this simulated host's processes,
    so that other simulated hosts running on the same machine are not counted."""
    config = host.vgpumon_config(**overrides)
    root = re.escape(str(host.root))
    for group in config["groups"].values():
        group["cmdline"] = f"^{root}/.*?(?:{group['cmdline']})"
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write a config file; key order matters (groups: first match wins), so never sort."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


NOBODY = 65534


@contextlib.contextmanager
def nobody_dir(prefix: str) -> Iterator[Path]:
    """A dir of nobody's own, reachable by everyone, inside a root-owned 0755 dir (its
    parent, removed afterwards): pytest's tmp dirs are 0700, closed to other users."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    own = base / "nobody"
    own.mkdir()
    os.chown(own, NOBODY, NOBODY)
    try:
        yield own
    finally:
        shutil.rmtree(base, ignore_errors=True)


def world_executable(path: str) -> bool:
    """Whether a user with no relation to the file's owner may execute `path`."""
    real = os.path.realpath(path)
    parts = real.split("/")
    for depth in range(1, len(parts)):
        directory = "/".join(parts[:depth]) or "/"
        if not os.stat(directory).st_mode & 0o001:
            return False
    return bool(os.stat(real).st_mode & 0o001)


def unprivileged_command(workdir: Path) -> tuple[list[str], dict[str, str]]:
    """A command prefix and environment that run vgpumon as user nobody.

    The test interpreter may live under /root (pyenv), out of nobody's reach: then the
    system's python3 runs a copy of vgpumon and its dependencies from `workdir`.
    """
    import importlib

    site = workdir / "site"
    site.mkdir(exist_ok=True)
    for name in ("vgpumon", "prometheus_client", "yaml", "inotify_simple"):
        module = importlib.import_module(name)
        source = Path(module.__file__)
        if source.name == "__init__.py":
            shutil.copytree(source.parent, site / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, site / source.name)
    for path in [workdir, *workdir.parents]:
        if path == Path("/"):
            break
        os.chmod(path, os.stat(path).st_mode | 0o005)
    for root, dirs, files in os.walk(site):
        for name in dirs + files:
            target = os.path.join(root, name)
            os.chmod(target, os.stat(target).st_mode | 0o005)
    python = sys.executable if world_executable(sys.executable) else "/usr/bin/python3"
    return [python, "-m", "vgpumon"], {"PYTHONPATH": str(site), "PATH": os.environ["PATH"]}


def as_nobody() -> None:
    """preexec_fn: become nobody (no supplementary groups, no capabilities)."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
