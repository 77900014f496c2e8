"""`python -m tests.bench --quick` runs end to end and reports every row (no timing asserted).

It runs with ``--baseline`` set to this checkout, so that every row's baseline half (the same
daemon run next to itself) is exercised too.
"""

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
    "daemon CPU per /metrics scrape, unchanged snapshot",
    "idle CPU, defaults, 500 idle processes, all scraped every 15 s: vgpumon / process-exporter",
    "idle CPU, defaults, 2000 idle processes, all scraped every 15 s",
    "idle CPU, defaults, 5000 idle processes, all scraped every 15 s",
    "idle CPU, interval 1s, 500 idle processes, all scraped every 1 s",
    "churn, 100 execs/s of /bin/true: vgpumon CPU per exec+exit",
    "churn, 300 execs/s of /bin/true",
    "churn, 1000 execs/s of /bin/true",
    "daemon threads under 1000 execs/s",
    "runner killed with SIGKILL, until process_exited is visible at /events",
    "/metrics latency while 200 half-open requests are held open",
    "daemon threads while 200 half-open requests are held open",
    "scale: refresh CPU, 2000 idle processes, 8 runners x 5000 maps lines",
    "scale: vgpumon run RSS",
)
# Keys of results.json (the rows' sections) where the baseline daemon's figures must be.
BASELINE_SECTIONS = ("churn_100", "churn_1000", "exit_sigkill", "half_open", "scale")


def test_quick_run_prints_every_row_and_writes_json(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "tests.bench", "--quick", "--out", str(out),
                           "--baseline", str(REPO)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout.splitlines()
    missing = [row for row in ROWS if not any(line.startswith(row) for line in table)]
    assert not missing, proc.stdout
    results = json.loads(out.read_text())
    labels = [row["label"] for row in results["rows"]]
    assert all(any(label.startswith(row) for label in labels) for row in ROWS), labels
    assert results["machine"]["cpu"] and results["machine"]["kernel"]
    rows = {row["key"]: row for row in results["rows"]}
    for key in ("churn_100", "churn_300", "churn_1000", "side_idle_500", "side_idle_500_fast",
                "exit_sigkill", "half_open", "scrape_cpu", "scale_refresh", "scale_rss"):
        assert rows[key]["median"] is not None and rows[key]["median"] >= 0, rows[key]
    assert rows["threads_churn"]["median"] >= 1 and rows["half_open_threads"]["median"] >= 1
    side = results["sidebyside"]
    for section in BASELINE_SECTIONS:
        assert "baseline" in str(side[section]), (section, side[section])
    assert results["baseline"]["scrape"]["unchanged"]["cpu_per_scrape"] >= 0
    assert side["half_open"]["vgpumon"]["opened"] > 0
    assert side["churn_1000"]["load"]["started"] > 0
