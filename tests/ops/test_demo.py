"""`make demo` smoke test: the demo starts vgpumon and Prometheus, both answer, and after
`--duration` it exits 0 leaving no process and no temporary directory behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from tests.harness import REPO, stop_process, wait_for
from tests.ops.conftest import require_tool


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def _processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line or executable mentions `text`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            exe = os.readlink(f"/proc/{pid}/exe")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (text in cmdline or text in exe):
            found.append(f"{pid} {cmdline}")
    return found


def test_demo_runs_answers_and_leaves_nothing_behind() -> None:
    require_tool("prometheus")
    demo = subprocess.Popen(
        [sys.executable, "-m", "tests.demo", "--duration", "10", "--every", "2",
         "--listen", "127.0.0.1:0", "--prometheus-listen", "127.0.0.1:0", "--interval", "1s"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(demo.stdout), daemon=True)
    reader.start()
    try:
        def printed(pattern: str) -> re.Match | None:
            return re.search(pattern, "".join(output), re.M)

        wait_for(lambda: printed(r"Ctrl-C stops everything") or demo.poll() is not None, 60,
                 message="the demo to print its URLs")
        workdir = printed(r"under (/\S+vgpumon-demo-\S+)")
        vgpumon = printed(r"^\s+(http://127\.0\.0\.1:\d+)/metrics")
        prometheus = printed(r"^\s+(http://127\.0\.0\.1:\d+)/alerts")
        assert workdir and vgpumon and prometheus, "".join(output)
        assert b"vgpumon_build_info" in _get(vgpumon.group(1) + "/metrics")
        assert b"<title>vgpumon</title>" in _get(vgpumon.group(1) + "/")
        assert _get(prometheus.group(1) + "/-/ready")
        rules = json.loads(_get(prometheus.group(1) + "/api/v1/rules?type=alert"))
        assert sum(len(g["rules"]) for g in rules["data"]["groups"]) > 20
        instance = vgpumon.group(1).removeprefix("http://")
        query = urllib.parse.quote(f'up{{job="vgpumon", instance="{instance}"}} == 1')

        def scraped() -> bool:
            answer = json.loads(_get(f"{prometheus.group(1)}/api/v1/query?query={query}"))
            return bool(answer["data"]["result"])

        wait_for(scraped, 9, 0.2, message="Prometheus to scrape vgpumon")  # --duration 10
        assert demo.wait(timeout=60) == 0, "".join(output)
    finally:
        stop_process(demo, timeout=60)  # a check failed: let the demo stop what it started
        reader.join(timeout=5)
    text = "".join(output)
    assert "crashed" in text, text  # at least one mishap happened
    assert f"{workdir.group(1)} removed" in text, text
    assert not Path(workdir.group(1)).exists()
    assert _processes_mentioning(workdir.group(1)) == []
