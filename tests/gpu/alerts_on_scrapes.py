"""Which shipped alerts a saved scrape of a real host fires, by promtool (no Prometheus there).

    python3 tests/gpu/alerts_on_scrapes.py SCRAPE.txt [...]

Each scrape (`/metrics` as the GPU cases saved it) becomes a promtool rule test: every sample
held constant for 20 minutes, then every alert of dashboards/vgpumon-alerts.yml expected to be
silent at minute 15 (longer than any `for:` of the shim and Ollama alerts). promtool reports
each alert that fires instead; this prints them per scrape. Timestamps in the samples are real
epoch seconds while promtool's clock starts at 0, so rules that compare a metric with `time()`
are not judged here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "dashboards" / "vgpumon-alerts.yml"
_FIRED = re.compile(r"alertname: (\w+)")


def alert_names() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]


def series_of(scrape: str) -> list[dict[str, str]]:
    found = [{"series": 'up{instance="gpu",job="vgpumon"}', "values": "1x20"}]  # it was scraped
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = {**sample.labels, "job": "vgpumon", "instance": "gpu"}
            selector = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
            found.append({"series": f"{sample.name}{{{selector}}}",
                          "values": f"{sample.value:g}x20"})
    return found


def fired(scrape_path: Path) -> list[str]:
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series_of(scrape_path.read_text()),
            "alert_rule_test": [{"eval_time": "15m", "alertname": name, "exp_alerts": []}
                                for name in alert_names()],
        }],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as handle:
        yaml.safe_dump(test, handle)
        handle.flush()
        result = subprocess.run(["promtool", "test", "rules", handle.name],
                                capture_output=True, text=True, timeout=120)
    if result.returncode == 0:
        return []
    names = sorted(set(_FIRED.findall(result.stdout + result.stderr)))
    return names or [f"promtool failed: {(result.stdout + result.stderr)[-400:]}"]


def main() -> int:
    for path in sys.argv[1:]:
        print(f"{path}: {', '.join(fired(Path(path))) or 'no alert fires'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
