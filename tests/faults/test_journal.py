"""`journalctl` missing, then exiting at once, then working: the daemon keeps running with
`vgpumon_collector_success{collector="ollama_log"}` 0, retries with a growing backoff (it
never hammers), and recovers when a working journalctl appears.

The daemon's PATH holds only a directory of the test's own: first empty, then a fake
`journalctl` that exits at once, then one that prints an Ollama journal entry and stays.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

from tests.faults.workload import runner_config
from tests.harness import wait_for

FAKE = """#!{python}
import json, os, sys, time
with open({starts!r}, "a") as log:
    log.write(f"{{time.monotonic()}} {mode}\\n")
if {mode!r} == "exits" or "-f" not in sys.argv:
    sys.exit(1 if {mode!r} == "exits" else 0)
line = ('time=2025-06-10T08:15:02.114Z level=INFO source=routes.go:1 '
        'msg="Listening on 127.0.0.1:11434 (version 0.13.5)"')
print(json.dumps({{"MESSAGE": line, "__REALTIME_TIMESTAMP": "1749543302114000",
                  "_PID": "4100", "_SYSTEMD_UNIT": "ollama.service",
                  "__CURSOR": "s=1;i=1"}}), flush=True)
parent = os.getppid()
while os.getppid() == parent:  # follow until vgpumon stops us (or is gone)
    time.sleep(0.1)
"""


def install(bin_dir: Path, starts: Path, mode: str) -> None:
    """Put a fake journalctl in place atomically (write, then rename)."""
    script = bin_dir / ".journalctl.new"
    script.write_text(FAKE.format(python=sys.executable, starts=str(starts), mode=mode))
    script.chmod(0o755)
    os.replace(script, bin_dir / "journalctl")


def start_times(starts: Path, mode: str) -> list[float]:
    if not starts.exists():
        return []
    return [float(t) for t, m in (line.split() for line in starts.read_text().splitlines())
            if m == mode]


def test_missing_then_exiting_then_working_journalctl(tmp_path, runner_binary, daemons):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    starts = tmp_path / "starts"
    config = runner_config(tmp_path, runner_binary, interval="500ms",
                           ollama={"log": {"journal_unit": "ollama.service"}})
    daemon = daemons(config, tmp_path, env={"PATH": str(bin_dir)})

    daemon.wait_value("vgpumon_collector_success", 0, collector="ollama_log")
    assert "journalctl not found" in daemon.log_text()
    assert daemon.value("vgpumon_processes", group="runner") == 0  # the rest still works

    install(bin_dir, starts, "exits")
    wait_for(lambda: len(start_times(starts, "exits")) >= 3, timeout=30,
             message="three attempts with the exiting journalctl")
    assert daemon.value("vgpumon_collector_success", collector="ollama_log") == 0
    times = start_times(starts, "exits")
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= 0.9 for gap in gaps), gaps  # backoff: never a tight restart loop
    assert gaps == sorted(gaps) and gaps[-1] >= 1.5 * gaps[0], gaps  # and it grows

    install(bin_dir, starts, "works")
    daemon.wait_value("vgpumon_collector_success", 1, collector="ollama_log", timeout=40)
    event = daemon.wait_event("ollama_version")
    assert event["version"] == "0.13.5"
    assert len(start_times(starts, "works")) == 1
    assert daemon.process.poll() is None
    assert daemon.get("/healthz") == b"ok\n"


def test_journalctl_that_dies_while_followed_is_restarted(tmp_path, runner_binary, daemons):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    starts = tmp_path / "starts"
    install(bin_dir, starts, "works")
    config = runner_config(tmp_path, runner_binary, interval="500ms",
                           ollama={"log": {"journal_unit": "ollama.service"}})
    daemon = daemons(config, tmp_path, env={"PATH": str(bin_dir)})
    daemon.wait_event("ollama_version")
    daemon.wait_value("vgpumon_collector_success", 1, collector="ollama_log")
    (pid,) = wait_for(lambda: [int(p) for p in os.listdir("/proc") if p.isdigit()
                               and _is_fake(int(p), bin_dir)], message="the fake journalctl")
    killed_at = time.monotonic()
    os.kill(pid, 9)
    wait_for(lambda: len(start_times(starts, "works")) == 2, timeout=20,
             message="journalctl started again")
    assert start_times(starts, "works")[1] - killed_at >= 0.9  # after the first backoff
    wait_for(lambda: len(daemon.events("ollama_version")) == 2, message="its entry read again")
    daemon.wait_value("vgpumon_collector_success", 1, collector="ollama_log")


def _is_fake(pid: int, bin_dir: Path) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return str(bin_dir / "journalctl").encode() in handle.read()
    except OSError:
        return False
