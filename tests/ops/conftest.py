"""Shared helpers for the ops tests: the repository paths and the external tools they run.

These tests check files that are only meaningful to real tools (promtool, systemd-analyze,
systemd-sysusers). CI installs them (Debian packages `prometheus` and `systemd`); a missing
tool is a failure with a clear message, never a silent skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
SYSTEMD = REPO / "systemd"

# Every metric vgpumon exports (the table of docs/metrics.md). Alerts and
# dashboard may use only these: a typo would otherwise give an alert that can never fire.
CONTRACT_METRICS = frozenset({
    "vgpumon_build_info",
    "vgpumon_collector_success",
    "vgpumon_collector_duration_seconds",
    "vgpumon_collector_last_success_timestamp_seconds",
    "vgpumon_processes",
    "vgpumon_process_oldest_start_time_seconds",
    "vgpumon_processes_unreadable",
    "vgpumon_processes_with_library",
    "vgpumon_processes_missing_library",
    "vgpumon_processes_bypassing_shim",
    "vgpumon_processes_stale_library",
    "vgpumon_processes_with_gpu_device",
    "vgpumon_library_present",
    "vgpumon_library_info",
    "vgpumon_shim_link_state",
    "vgpumon_shim_link_changes_total",
    "vgpumon_shim_link_last_change_timestamp_seconds",
    "vgpumon_process_starts_total",
    "vgpumon_process_exits_total",
    "vgpumon_process_exit_reasons_amended_total",
    "vgpumon_process_crashes_total",
    "vgpumon_process_last_crash_timestamp_seconds",
    "vgpumon_process_window_starts",
    "vgpumon_crash_loop",
    "vgpumon_crash_loop_crashes",
    "vgpumon_ollama_up",
    "vgpumon_ollama_info",
    "vgpumon_ollama_gpus",
    "vgpumon_ollama_gpus_expected",
    "vgpumon_ollama_gpu_info",
    "vgpumon_ollama_models_loaded",
    "vgpumon_ollama_model_size_bytes",
    "vgpumon_ollama_model_vram_bytes",
    "vgpumon_ollama_model_layers",
    "vgpumon_ollama_model_gpu_layers",
    "vgpumon_ollama_log_errors_total",
    "vgpumon_events_total",
    "vgpumon_exit_watch_info",
    "vgpumon_event_source_overflows_total",
    "vgpumon_event_handler_errors_total",
    "vgpumon_exposition_errors_total",
    "vgpumon_library_expected",
    "vgpumon_processes_preload_failed",
    "vgpumon_processes_rejected",
    "vgpumon_event_log_dropped_total",
    "vgpumon_config_last_reload_success",
    "vgpumon_config_last_reload_timestamp_seconds",
    "vgpumon_crash_loop_threshold",
    "vgpumon_crash_loop_window_seconds",
    "vgpumon_ollama_model_offload_estimated",
    "vgpumon_process_container_info",
    "vgpumon_nvml_gpus",
    "vgpumon_process_gpu_memory_bytes",
    "vgpumon_threads",
})

_METRIC = re.compile(r"\bvgpumon_[a-z0-9_]+")


def metric_names(expr: str) -> set[str]:
    """vgpumon metric names an expression (or a template in an annotation) refers to."""
    return set(_METRIC.findall(expr))


_PACKAGES = {
    "promtool": "prometheus",
    "systemd-analyze": "systemd",
    "systemd-sysusers": "systemd",
}


def require_tool(name: str) -> str:
    """The path of `name`; fails the test (not skips) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        package = _PACKAGES.get(name, name)
        pytest.fail(
            f"{name} not found on PATH: install the Debian package '{package}' "
            f"(CI must provide it; these tests do not skip)",
            pytrace=False,
        )
    return path


def run_tool(
    *argv: str | Path, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a required tool and capture its output (never raises on a non-zero status)."""
    tool = require_tool(str(argv[0]))
    return subprocess.run(
        [tool, *map(str, argv[1:])],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A failure message showing the command and everything it printed."""
    return (
        f"$ {' '.join(result.args)}\nrc={result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
