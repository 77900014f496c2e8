"""Run Debian's real `prometheus` on 127.0.0.1 against vgpumon, and read it through its API.

Used by the end-to-end test (tests/ops/test_prometheus_e2e.py) and the demo (tests/demo.py).
The configuration is the shipped `dashboards/prometheus-scrape.yml` with its targets, rule
file and intervals replaced, so the file operators copy is the file that is exercised.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.harness import REPO, stop_process, wait_for

DASHBOARDS = REPO / "dashboards"
SCRAPE_CONFIG = DASHBOARDS / "prometheus-scrape.yml"
ALERT_RULES = DASHBOARDS / "vgpumon-alerts.yml"
GRAFANA_DASHBOARD = DASHBOARDS / "vgpumon-grafana.json"
JOB = "vgpumon"

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                 "y": 31536000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def prometheus_seconds(text: str) -> float:
    """Seconds in a Prometheus duration (`1m`, `15m`, `1h30m`, `0m`)."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a Prometheus duration")
    return sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def shortened_for(seconds: float, longest: int = 3) -> str:
    """A `for:` that keeps the pending step but takes seconds: 0 stays 0, 1m -> 1s, 2m -> 2s,
    anything from 3m up -> `longest` s."""
    if seconds == 0:
        return "0s"
    return f"{min(longest, max(1, round(seconds / 60)))}s"


def alert_rules_with_short_for(dest: Path, longest: int = 3) -> dict[str, str]:
    """Write a copy of the shipped alert rules to `dest` with every `for:` shortened (the
    shipped file is never touched). Returns alert name -> the `for:` written."""
    doc = yaml.safe_load(ALERT_RULES.read_text())
    written = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = shortened_for(prometheus_seconds(rule.get("for", "0s")), longest)
                written[rule["alert"]] = rule["for"]
    dest.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    return written


def scrape_config(targets: list[str], rule_files: list[Path], *, interval: str = "1s",
                  file_sd_dir: Path | None = None) -> dict[str, Any]:
    """The shipped example configuration, pointed at `targets` (and, for targets that come
    and go, at `file_sd_dir/*.yml`), with `rule_files` and every interval set to `interval`."""
    doc = yaml.safe_load(SCRAPE_CONFIG.read_text())
    doc["global"] = {**doc.get("global", {}), "scrape_interval": interval,
                     "evaluation_interval": interval}
    doc["rule_files"] = [str(path) for path in rule_files]
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == JOB]
    job["scrape_timeout"] = interval  # may not exceed the scrape interval
    # An empty list, not an empty `static_configs`: Prometheus 2.42 keeps the targets of a
    # static config that disappears on reload.
    job["static_configs"][0]["targets"] = targets
    if file_sd_dir is not None:
        job["file_sd_configs"] = [{"files": [f"{file_sd_dir}/*.yml"], "refresh_interval": "5s"}]
    else:
        job.pop("file_sd_configs", None)
    return doc


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    """A `prometheus` process with its own storage under `workdir`, on 127.0.0.1.

    `port=None` takes a free port. The lifecycle API is on, so `reload()` returns only once
    the new configuration is in force."""

    def __init__(self, config: dict[str, Any], workdir: Path, *, port: int | None = None,
                 binary: str = "prometheus", start_timeout: float = 30.0):
        path = shutil.which(binary)
        if path is None:
            raise PrometheusError(f"{binary} not found on PATH: install the Debian package "
                                  "'prometheus'")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self.write_config(config)
        for attempt in range(3):  # a free port may be taken between the check and the bind
            self.port = port or free_port()
            self.process = self._start(path)
            try:
                wait_for(self._ready, start_timeout, interval=0.05,
                         message="prometheus to be ready")
                return
            except AssertionError:
                self.stop()
                log = self.log_text()
                if port is None and "address already in use" in log and attempt < 2:
                    continue
                raise PrometheusError(f"prometheus did not start:\n{log[-3000:]}") from None

    def _start(self, binary: str) -> subprocess.Popen:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [binary, f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--web.enable-lifecycle", "--log.level=info"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.workdir)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError("prometheus exited")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False, width=1000))

    def reload(self, config: dict[str, Any]) -> None:
        """Switch to `config`; raises if Prometheus rejects it."""
        self.write_config(config)
        request = urllib.request.Request(self.url + "/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
        except urllib.error.HTTPError as err:
            raise PrometheusError(f"reload failed: {err.read().decode(errors='replace')}") \
                from None

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                document = json.load(response)
        except urllib.error.HTTPError as err:
            raise PrometheusError(f"{path} {params}: {err.read().decode(errors='replace')}") \
                from None
        if document.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {document}")
        return document["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now: the series (or the scalar, as one item) it returns."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def alerts(self, state: str | None = "firing") -> list[dict[str, Any]]:
        """Active alerts (labels include alertname), of `state` (None: pending too)."""
        return [a for a in self.api("alerts")["alerts"] if state is None or a["state"] == state]

    def alert_rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules", type="alert")["groups"]
                for rule in group["rules"]]

    def last_evaluation(self) -> float:
        """Unix time of the oldest of the rule groups' last evaluations (0: not yet)."""
        groups = self.api("rules")["groups"]
        stamps = [_rfc3339(g.get("lastEvaluation", "")) for g in groups]
        return min(stamps, default=0.0)

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets", state="active")["activeTargets"]

    def stop(self) -> int:
        return stop_process(self.process, timeout=15)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _rfc3339(text: str) -> float:
    """Seconds since the epoch of Prometheus's RFC 3339 timestamps (nanoseconds, `Z` or an
    offset); 0.0 for Go's zero time."""
    from datetime import datetime

    if not text or text.startswith("0001-"):
        return 0.0
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base, fraction, zone = match.groups()
    stamp = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone)).timestamp()
    return stamp + float(f"0.{fraction}") if fraction else stamp
