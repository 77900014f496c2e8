"""The metric contract in three places agrees: what the exporter declares, what docs/metrics.md
documents, and what the alerts and dashboard may use (tests/ops/conftest.py)."""

from __future__ import annotations

import re

from tests.harness import REPO
from tests.ops.conftest import CONTRACT_METRICS

COUNTER = re.compile(r'CounterMetricFamily\(\s*"(vgpumon_[a-z0-9_]+)"')
GAUGE = re.compile(r'GaugeMetricFamily\(\s*"(vgpumon_[a-z0-9_]+)"')
DOCUMENTED = re.compile(r"^\| `(vgpumon_[a-z0-9_]+)`(?:, `(vgpumon_[a-z0-9_]+)`)?", re.M)


def exported() -> set[str]:
    # The snapshot's families, and vgpumon_threads next to the process_* metrics.
    source = "".join((REPO / "vgpumon" / "http" / name).read_text()
                     for name in ("collector.py", "selfstats.py"))
    return ({name + "_total" for name in COUNTER.findall(source)}
            | set(GAUGE.findall(source)))


def documented() -> set[str]:
    reference = (REPO / "docs" / "metrics.md").read_text()
    names = set()
    for first, second in DOCUMENTED.findall(reference):
        names |= {first, second} - {""}
    return names


def test_every_exported_metric_is_documented():
    assert exported() - documented() == set()


def test_the_docs_document_no_metric_that_is_not_exported():
    assert documented() - exported() == set()


def test_the_alert_and_dashboard_contract_lists_exactly_the_exported_metrics():
    assert exported() == CONTRACT_METRICS
