"""Shared helpers for the ops tests: the repository paths and the external tools they run.

These tests check files that are only meaningful to real tools (promtool, systemd-analyze,
systemd-sysusers). CI installs them (Debian packages `prometheus` and `systemd`); a missing
tool is a failure with a clear message, never a silent skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
SYSTEMD = REPO / "systemd"

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
