"""The whole exposition of `vgpumon once` over a fixture /proc tree, compared with a golden
file (node_exporter's practice) and checked by `promtool check metrics`.

Regenerate on purpose with: VGPUMON_UPDATE_GOLDEN=1 python3 -m pytest tests/core/test_golden.py
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.core.fakeproc import FakeProc, maps_line, maps_line_for
from tests.harness import run_cli, write_config

GOLDEN = Path(__file__).parent / "golden" / "fixture.prom"
VOLATILE = (
    re.compile(r'^(vgpumon_build_info\{python_version=)"[^"]*",version="[^"]*"'),
    re.compile(r"^(vgpumon_collector_(?:duration_seconds|last_success_timestamp_seconds)"
               r"\{[^}]*\}) .*$"),
    re.compile(r"^(vgpumon_config_last_reload_timestamp_seconds) .*$"),
)


def normalise(text: str, tmp: Path) -> str:
    lines = []
    for line in text.replace(str(tmp), "<tmp>").splitlines():
        for pattern in VOLATILE:
            line = pattern.sub(lambda m: m.group(1) + " <volatile>", line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def build_host(tmp: Path) -> Path:
    lib64 = tmp / "usr/lib64"
    lib64.mkdir(parents=True)
    for name in ("libvgpu-cuda.so", "libvgpu-exec.so", "libcuda.so.575.51.03"):
        (lib64 / name).write_bytes(name.encode())
    os.symlink("libvgpu-cuda.so", lib64 / "libcuda.so.1")
    os.symlink("libcuda.so.575.51.03", lib64 / "libcuda-wrong.so.1")
    proc = FakeProc(tmp / "proc")
    shim = maps_line_for(str(lib64 / "libvgpu-cuda.so"), 0x7F0000000000)
    proc.add(4100, "ollama", ["/usr/local/bin/ollama", "serve"], start_ticks=1000,
             maps=shim + maps_line_for(str(lib64 / "libvgpu-exec.so"), 0x7F0000100000),
             root="/")
    # The runner maps a libggml-cuda.so that is gone from disk (not even "(deleted)"): stale.
    proc.add(4242, "ollama", ["/usr/local/bin/ollama", "runner", "--model",
                              "/m/blobs/sha256-" + "c" * 64, "--port", "40000"],
             ppid=4100, start_ticks=2000, root="/",
             maps=maps_line("/usr/local/lib/ollama/cuda_v12/libggml-cuda.so", (8, 1), 77,
                            0x7F0000200000)
             + maps_line(str(lib64 / "libcuda.so.575.51.03"), (8, 1), 78, 0x7F0000300000)
             + maps_line("/dev/nvidia0", (0, 5), 1055, 0x7F0000400000))
    proc.add(4300, "ollama", ["/usr/local/bin/ollama", "runner", "--ollama-engine", "--port",
                              "40001"], ppid=4100, start_ticks=2100, root="/")
    proc.make_unreadable(4300)
    return write_config(tmp / "vgpumon.yaml", {
        "procfs": str(proc.root),
        "libraries": {
            "vgpu-cuda": {"path": str(lib64 / "libcuda.so.1")},
            "vgpu-exec": {"path": str(lib64 / "libvgpu-exec.so")},
            "ggml-cuda": {"name": "libggml-cuda.so*"},
            "cuda-driver": {"name": "libcuda.so.*", "driver": True},
        },
        "shims": ["vgpu-cuda", "vgpu-exec"],
        "links": [{"path": str(lib64 / "libcuda.so.1"), "target": str(lib64 / "libvgpu-cuda.so")},
                  {"path": str(lib64 / "libcuda-wrong.so.1"),
                   "target": str(lib64 / "libvgpu-cuda.so")},
                  {"path": str(lib64 / "missing.so"), "target": str(lib64 / "libvgpu-cuda.so")}],
        "groups": {
            "server": {"comm": "^ollama$", "cmdline": r"\bserve\b",
                       "expect": ["vgpu-cuda", "vgpu-exec"]},
            "runner": {"cmdline": "ollama runner.*--model",
                       "expect": ["vgpu-cuda", "ggml-cuda"]},
            "discovery": {"cmdline": "ollama runner"},
        },
        "ollama": {"url": "http://127.0.0.1:9", "timeout": "200ms", "log": {},
                   "models_dir": str(tmp / "models")},
        "events": {"file": ""},
        "nvml": "off",
    })


def test_exposition_matches_the_golden_file(tmp_path):
    config = build_host(tmp_path)
    result = run_cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    check = subprocess.run(["promtool", "check", "metrics"], input=result.stdout.encode(),
                           capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    got = normalise(result.stdout, tmp_path)
    if os.environ.get("VGPUMON_UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), "exposition changed; regenerate on purpose if intended"
