"""Running `vgpumon doctor` against a simulated Ollama host (tests/simhost).

Other test sessions may run simulated hosts on the same machine at the same time, so the
config's process groups are narrowed to this host's executables (argv[0] under its root).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.simhost import SimHost
from vgpumon import cli
from vgpumon.doctor.report import Check, Report, Status

REPO = Path(__file__).resolve().parents[2]
MODEL = "llama3.2:latest"


def host_config(host: SimHost, **overrides: object) -> dict:
    """The simhost's vgpumon config with groups that only match this host's processes."""
    root = re.escape(str(host.root))
    base = host.vgpumon_config()
    groups = base["groups"]
    groups["server"]["cmdline"] = rf"^{root}/\S*\bollama serve\b"
    groups["runner"]["cmdline"] = (rf"^{root}/\S*(ollama runner|ollama_llama_server|"
                                   rf"llama-server|ollama-runner).*--model")
    groups["discovery"]["cmdline"] = rf"^{root}/\S*(ollama runner|llama-server|ollama gpu-discover)"
    libraries = base["libraries"]  # each shim names what it stands for, as the defaults do
    libraries["vgpu-cuda"]["stands_for"] = "cuda-driver"
    libraries["vgpu-nvml"]["stands_for"] = "nvml"
    libraries["vgpu-cudart"]["stands_for"] = "cudart"
    libraries["nvml"] = {"name": "libnvidia-ml.so.*"}
    libraries["cudart"] = {"name": "libcudart.so.*"}
    for key, value in overrides.items():
        base[key] = value
    return base


def write_config(host: SimHost, directory: Path | None = None, **overrides: object) -> Path:
    path = (directory or host.root.parent) / f"vgpumon-{host.root.name}.yaml"
    path.write_text(yaml.safe_dump(host_config(host, **overrides), sort_keys=False))
    return path


@dataclass
class DoctorRun:
    rc: int
    stdout: str
    stderr: str

    @property
    def report(self) -> Report:
        return Report.from_dict(json.loads(self.stdout))

    def check(self, check_id: str) -> Check:
        found = self.report.check(check_id)
        assert found is not None, f"no check {check_id} in {[c.id for c in self.report.checks]}"
        return found

    def status(self, check_id: str) -> Status:
        return self.check(check_id).status

    def failed(self) -> list[str]:
        return [c.id for c in self.report.with_status(Status.FAIL)]

    def describe(self) -> str:
        """The report as text, for assertion messages."""
        from vgpumon.doctor.render import render_text

        return render_text(self.report)


def doctor(config: Path | str, *args: str) -> DoctorRun:
    """`vgpumon doctor --json --config CONFIG ARGS` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main(["doctor", "--config", str(config), "--json", *args])
    return DoctorRun(rc, out.getvalue(), err.getvalue())


def doctor_process(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m vgpumon doctor ARGS` as a separate process (the real CLI)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "vgpumon", "doctor", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)
