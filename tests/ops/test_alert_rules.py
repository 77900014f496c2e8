"""The Prometheus alerting rules: promtool's checks and unit tests, and their conventions."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.ops.conftest import CONTRACT_METRICS, DASHBOARDS, describe, metric_names, run_tool

RULES = DASHBOARDS / "vgpumon-alerts.yml"
RULE_TESTS = DASHBOARDS / "vgpumon-alerts.test.yml"
SEVERITIES = {"critical", "warning", "info"}


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _rule_tests() -> list[dict[str, Any]]:
    return [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]


ALERTS = _alerts()


def test_promtool_check_rules() -> None:
    result = run_tool("promtool", "check", "rules", RULES)
    assert result.returncode == 0, describe(result)
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout, describe(result)


def test_promtool_unit_tests_pass() -> None:
    result = run_tool("promtool", "test", "rules", RULE_TESTS)
    assert result.returncode == 0, describe(result)
    assert "SUCCESS" in result.stdout, describe(result)


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path) -> None:
    # The unit tests are worth something only if a wrong rule fails them: make the crash-loop
    # alert event-based again and it stops firing while the loop lasts.
    broken = RULES.read_text().replace(
        "max_over_time(vgpumon_crash_loop[5m]) == 1", "vgpumon_crash_loop == 1"
    )
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = run_tool("promtool", "test", "rules", tmp_path / RULE_TESTS.name)
    assert result.returncode != 0, describe(result)
    assert "OllamaCrashLooping" in result.stdout + result.stderr, describe(result)


@pytest.mark.parametrize("rule", ALERTS, ids=[rule["alert"] for rule in ALERTS])
def test_alert_conventions(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    assert "for" in rule, "say the pending time explicitly (0m included)"
    annotations = rule["annotations"]
    assert set(annotations) >= {"summary", "description"}
    if not rule["expr"].startswith("absent("):
        assert "{{ $labels.instance }}" in annotations["summary"], "say which host"
    # What to do: at least one concrete command, quoted as code.
    assert "`" in annotations["description"], "the description must name a command"


@pytest.mark.parametrize("rule", ALERTS, ids=[rule["alert"] for rule in ALERTS])
def test_alerts_use_only_contract_metrics(rule: dict[str, Any]) -> None:
    used = metric_names(rule["expr"]) | metric_names(rule["annotations"]["description"])
    if 'up{job="vgpumon"}' not in rule["expr"]:  # Prometheus's own series, not vgpumon's
        assert used, "no vgpumon metric in the expression"
    assert used - CONTRACT_METRICS == set()


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _rule_tests():
        (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in ALERTS}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"
    assert firing | quiet <= names, "tests for alerts that do not exist"


def test_firing_cases_check_annotations() -> None:
    for case in _rule_tests():
        for alert in case.get("exp_alerts") or []:
            assert set(alert["exp_annotations"]) == {"summary", "description"}, case
            assert "severity" in alert["exp_labels"], case
