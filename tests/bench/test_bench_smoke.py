"""`python -m tests.bench --quick` runs end to end and reports every row (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import REPO

ROWS = (
    "refresh CPU, 100 idle processes, runner maps 5000 lines",
    "refresh CPU, 1000 idle processes, runner maps 5000 lines",
    "refresh CPU, 5000 idle processes, runner maps 5000 lines",
    "refresh CPU, 1000 idle processes, runner maps 1000 lines",
    "refresh CPU, 1000 idle processes, runner maps 20000 lines",
    "vgpumon run CPU, 1000 idle + 4 runners",
    "vgpumon run RSS",
    "vgpumon CPU per process started on the host",
    "detection latency, runner start",
    "detection latency, runner exit (SIGKILL)",
    "detection latency, library load (late ggml-cuda)",
    "detection latency, shim link swap (ln -sf)",
    "vgpumon CPU per full refresh (same host)",
    "process-exporter CPU per scrape (its defaults)",
    "ratio vgpumon refresh / process-exporter scrape (defaults)",
    "process-exporter CPU per scrape (-gather-smaps=false -threads=false)",
    "ratio vgpumon refresh / process-exporter scrape (lean)",
    "/metrics scrape latency, 8 runners, 20 models, 10 links",
)


def test_quick_run_prints_every_row_and_writes_json(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "tests.bench", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout.splitlines()
    missing = [row for row in ROWS if not any(line.startswith(row) for line in table)]
    assert not missing, proc.stdout
    results = json.loads(out.read_text())
    labels = [row["label"] for row in results["rows"]]
    assert all(any(label.startswith(row) for label in labels) for row in ROWS), labels
    assert results["machine"]["cpu"] and results["machine"]["kernel"]
