"""The example Prometheus configuration: valid for promtool, wired to the alerts."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.ops.conftest import DASHBOARDS, describe, run_tool

CONFIG = DASHBOARDS / "prometheus-scrape.yml"
RULES = DASHBOARDS / "vgpumon-alerts.yml"

# The file_sd example from the comments of the configuration.
TARGETS = """\
- targets: ["gpu-node-1.example.net:9842", "gpu-node-2.example.net:9842"]
  labels:
    site: rack-a
"""


def _installed(tmp_path: Path) -> Path:
    """The configuration as a user installs it: alerts beside it, one file_sd target file."""
    shutil.copy(CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(RULES, tmp_path / RULES.name)
    targets = tmp_path / "targets" / "vgpumon"
    targets.mkdir(parents=True)
    (targets / "rack-a.yml").write_text(TARGETS)
    return tmp_path / "prometheus.yml"


def test_promtool_check_config_is_clean(tmp_path: Path) -> None:
    result = run_tool("promtool", "check", "config", _installed(tmp_path))
    assert result.returncode == 0, describe(result)
    output = result.stdout + result.stderr
    assert "WARNING" not in output, describe(result)
    assert "SUCCESS: 1 rule files found" in output, describe(result)


def test_promtool_rejects_a_bad_target_file(tmp_path: Path) -> None:
    # Shows that the check above really reads the file_sd files.
    config = _installed(tmp_path)
    (tmp_path / "targets" / "vgpumon" / "rack-a.yml").write_text("- targets: gpu-node-1\n")
    result = run_tool("promtool", "check", "config", config)
    assert result.returncode != 0, describe(result)


def test_job_and_rules_are_the_ones_the_alerts_expect() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "vgpumon"]
    assert job["static_configs"][0]["targets"]
    assert job["file_sd_configs"][0]["files"]
    assert 'up{job="vgpumon"}' in RULES.read_text()
