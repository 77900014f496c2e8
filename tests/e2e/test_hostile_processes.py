"""A local process cannot freeze the daemon, forge its log or blow up /state with the argv it
chooses: the running daemon classifies it quickly, keeps answering scrapes, logs one escaped
line per event and serves a bounded /state."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.harness import Vgpumon, stop_process, wait_for
from vgpumon.config.loading import parse_config
from vgpumon.config.patterns import RUNNER
from vgpumon.linux.procfs import CMDLINE_LIMIT, ProcFS
from vgpumon.sources.processes import CMDLINE_KEEP, ProcessScanner

FORGED = "time=2000-01-01T00:00:00 level=ERROR logger=vgpumon.forged forged=yes"
# The kernel takes arguments of up to 128 KiB each and about 2 MiB in all. This argv made a
# /metrics request take 90 s: the earlier runner pattern backtracked quadratically over a
# cmdline full of "ollama runner " with no --model after it. The \x01 arguments cost 6 bytes
# each in JSON, and /state was built afresh per request.
ARGV = [sys.executable, "-c", "import time; time.sleep(120)", "--model", f"blob\n{FORGED}",
        *["ollama runner " * 9000] * 8, *["\x01" * 120_000] * 6]


def config(tmp_path) -> dict:
    return {
        "interval": "1s",
        "ollama": {"log": {}, "url": "http://127.0.0.1:9"},
        "events": {"file": str(tmp_path / "events.jsonl")},
        "groups": {
            "server": {"comm": "^ollama$", "cmdline": r"\bserve\b"},
            "runner": {"cmdline": RUNNER},
            "discovery": {"cmdline": "(ollama runner|llama-server|ollama gpu-discover)"},
        },
    }


def test_a_real_hostile_process_is_read_capped_and_classified(tmp_path):
    hostile = subprocess.Popen(ARGV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        procfs = ProcFS()
        argv = wait_for(lambda: (a := procfs.cmdline(hostile.pid)) and "--model" in a and a,
                        timeout=5, message="the exec")
        assert len("\0".join(argv).encode()) <= CMDLINE_LIMIT  # of about 1.7 MiB
        groups = parse_config(json.dumps(config(tmp_path))).groups
        scanner = ProcessScanner(procfs, groups)
        # Each exec on the host comes here; the earlier code spent minutes in this call.
        process = scanner.rescan_pid(hostile.pid, time.time())
        assert process is not None and process.group == "discovery"
        assert len(" ".join(process.cmdline)) < CMDLINE_KEEP + 64
    finally:
        stop_process(hostile)


def test_a_hostile_argv_neither_freezes_nor_forges_nor_floods(tmp_path):
    daemon = Vgpumon(config(tmp_path), tmp_path)
    hostile = subprocess.Popen(ARGV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = time.monotonic()

        def classified() -> dict | None:
            daemon.get("/metrics", timeout=5)  # answers while the process is being looked at
            processes = json.loads(daemon.get("/state", timeout=5))["processes"]
            return next((p for p in processes if p["pid"] == hostile.pid), None)

        # Seen at its exec (or by the next 1 s refresh); the earlier code took minutes.
        process = wait_for(classified, timeout=5, interval=0.1, message="the hostile process")
        assert time.monotonic() - started < 5
        assert process["group"] == "discovery"  # "ollama runner" without --model after it
        assert len(json.dumps(process)) < 100 * 1024
        assert len(" ".join(process["cmdline"])) < 4096 + 64
        assert process["model_arg"] == f"blob\n{FORGED}"  # kept as it is, shown escaped
        assert len(daemon.get("/state")) < 200 * 1024
        for _ in range(5):  # scrapes keep answering while it lives
            daemon.get("/metrics", timeout=5)

        wait_for(lambda: any("process_started" in line and f"pid={hostile.pid}" in line
                             for line in daemon.log_lines), timeout=5,
                 message="the process_started log line")
    finally:
        stop_process(hostile)
        assert daemon.stop() == 0
    lines = daemon.log_lines
    assert not any(line.startswith("time=2000-01-01") for line in lines)
    [logged] = [line for line in lines if "process_started" in line
                and f"pid={hostile.pid}" in line]
    assert f'model="blob\\n{FORGED}"' in logged
    assert all(c == " " or c.isprintable() for line in lines for c in line)
