"""The Grafana dashboard: importable and provisionable as is, every query valid and filtered."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.conftest import CONTRACT_METRICS, DASHBOARDS, describe, metric_names, run_tool

DASHBOARD_FILE = DASHBOARDS / "vgpumon-grafana.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB_FILTER = 'job=~"$job"'
INSTANCE_FILTER = 'instance=~"$instance"'

# Grafana's variables, replaced by a plausible value so that promtool can parse the query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$job": "vgpumon",
    "$instance": "gpu1:9842",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows keep theirs inside


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel target and every Prometheus annotation."""
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in dashboard["templating"]["list"]}


def test_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "vgpumon-overview"
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["title"]
    assert dashboard.get("id") is None  # provisioning and import assign their own


def test_no_import_only_placeholders(dashboard: dict[str, Any]) -> None:
    # __inputs/${DS_...} work only through the import UI; provisioning would keep them literal.
    assert "__inputs" not in dashboard
    assert "${DS_" not in DASHBOARD_FILE.read_text()


def test_datasource_variable(dashboard: dict[str, Any]) -> None:
    var = _variables(dashboard)["datasource"]
    assert var["type"] == "datasource"
    assert var["query"] == "prometheus"


@pytest.mark.parametrize("name", ["job", "instance"])
def test_job_and_instance_variables(dashboard: dict[str, Any], name: str) -> None:
    var = _variables(dashboard)[name]
    assert var["type"] == "query"
    assert var["datasource"] == DATASOURCE
    query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
    assert re.fullmatch(rf"label_values\(vgpumon_build_info(\{{.*\}})?, {name}\)", query), query
    assert var["definition"] == query
    if name == "instance":
        assert JOB_FILTER in query, "hosts of the selected job only"


def test_every_panel_and_target_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    queried = [p for p in _panels(dashboard["panels"]) if p["type"] != "row"]
    assert queried
    for panel in queried:
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, (panel["title"], target["refId"])
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == DATASOURCE, annotation["name"]


def test_every_query_filters_every_selector_by_job_and_instance(
    dashboard: dict[str, Any],
) -> None:
    unfiltered = []
    for where, expr in _queries(dashboard):
        for match in re.finditer(r"\bvgpumon_[a-z0-9_]+", expr):
            selector = re.match(r"\s*\{([^}]*)\}", expr[match.end():])
            matchers = selector.group(1) if selector else ""
            if JOB_FILTER not in matchers or INSTANCE_FILTER not in matchers:
                unfiltered.append(f"{where}: {match.group(0)}{{{matchers}}}")
    assert not unfiltered, "\n".join(unfiltered)


def test_queries_use_only_contract_metrics(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for _, expr in _queries(dashboard):
        used |= metric_names(expr)
    assert used - CONTRACT_METRICS == set()


def test_the_panels_the_dashboard_promises(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == [
        "Host health at a glance",
        "Library state per group",
        "Shim links",
        "Process starts, exits and crashes",
        "Models and GPUs",
        "vgpumon health",
    ]
    exprs = "\n".join(expr for _, expr in _queries(dashboard))
    for metric in ("vgpumon_processes_with_library", "vgpumon_processes_missing_library",
                   "vgpumon_processes_stale_library", "vgpumon_processes_bypassing_shim",
                   "vgpumon_shim_link_state", "vgpumon_process_exits_total",
                   "vgpumon_ollama_model_gpu_layers", "vgpumon_ollama_model_vram_bytes",
                   "vgpumon_collector_duration_seconds",
                   "vgpumon_collector_last_success_timestamp_seconds"):
        assert metric in exprs, metric
    annotations = {a["name"]: a.get("expr", "") for a in dashboard["annotations"]["list"]}
    assert "vgpumon_process_crashes_total" in annotations["Crashes"]
    assert "vgpumon_shim_link_changes_total" in annotations["Shim link changes"]


def test_panel_ids_unique_and_layout_without_overlap(dashboard: dict[str, Any]) -> None:
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def _as_rule_file(queries: list[tuple[str, str]], path: Path) -> Path:
    rules = []
    for index, (_, expr) in enumerate(queries):
        for name, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(name, value)
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return path


def test_every_query_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    queries = list(_queries(dashboard))
    rule_file = _as_rule_file(queries, tmp_path / "dashboard-queries.yml")
    assert "$" not in rule_file.read_text(), "a Grafana variable was not substituted"
    result = run_tool("promtool", "check", "rules", rule_file)
    index = {f"dashboard:query_{i}": where for i, (where, _) in enumerate(queries)}
    assert result.returncode == 0, describe(result) + f"\nqueries: {index}"
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout, describe(result)


def test_promql_check_rejects_a_bad_query(tmp_path: Path) -> None:
    # The check above would pass vacuously if promtool did not parse the expressions.
    rule_file = _as_rule_file([("bad", "sum by (group (vgpumon_processes)")], tmp_path / "x.yml")
    result = run_tool("promtool", "check", "rules", rule_file)
    assert result.returncode != 0, describe(result)
