"""A quiet healthy host in every era and preload layout, through real Prometheus.

Each era of the simulated Ollama host (tests/simhost) runs in each preload layout real vGPU
hosts use, with vgpumon's shipped default configuration (config/vgpumon.yaml, its paths
pointed into the simulated root, its groups narrowed to that root, a 1 s refresh so the test
waits less). One Prometheus scrapes every vgpumon and evaluates the shipped rule file
(dashboards/vgpumon-alerts.yml) unchanged. The layouts (docs/configuration.md#expectations):

- `soname`: all four shims preloaded; the CUDA shim carries the driver's SONAME
  `libcuda.so.1` and loads the real driver when it is loaded (as the seed host's shim does);
- `all four`: all four preloaded, the shims load the real libraries when first called;
- `exec only`: only `libvgpu-exec.so` preloaded, the rest reached through the links;
- `links only`: nothing preloaded;
- `shadowed` (eras E, F, G): all four preloaded, the CUDA shim loads the real driver when it
  is loaded and does not carry `libcuda.so.1`, so glibc hands the runtime the real driver.

An era's layouts run at once, each with its own host, vgpumon and scrape target, in two
phases: healthy (links right), then both `libcuda.so.1` links pointed at the real driver and
the model loaded again. After each phase, once vgpumon has judged the runner past the settling
time of its preloads and Prometheus has scraped that and evaluated its rules again, the test
records for each target the alerts Prometheus holds (pending or firing) and which rules'
expressions are true; in the healthy phase also `vgpumon doctor`'s failed checks. A true
expression makes the alert pending at that evaluation: that is what "fires" means here, so
no `for:` has to be waited out or shortened. The tests then check that

- a healthy host of every era in every layout (`shadowed` aside) has no alert and no
  expression true, and the doctor fails nothing;
- links at the real driver make `VgpuShimBypassed` true for the runner in every layout but
  `soname`, where only the link alert (`VgpuShimLinkBroken`) is: glibc hands out the
  preloaded shim for `libcuda.so.1` whatever the links say (era B has no runner: it loads
  models inside the server);
- the `shadowed` layout makes `VgpuShimBypassed` true with every link right (only where the
  default `ggml-cuda` names the era's CUDA backend, `libggml-cuda.so`, E to G: the real
  driver counts as loaded at start when it was mapped before that backend).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.doctor.simdoctor import doctor
from tests.harness import Vgpumon, wait_for
from tests.prometheus import ALERT_RULES, Prometheus, port_is_free, scrape_config
from tests.simhost import SimHost
from vgpumon.snapshot.expectations import PRELOAD_SETTLE_SECONDS

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "vgpumon.yaml"
MODEL = "llama3.2:latest"
ERAS = ("A", "B", "C", "D1", "D2", "E", "F", "G")
# layout -> (preload_shims, server environment, SimHost.create keywords)
LAYOUTS: dict[str, tuple[bool | list[str], dict[str, str], dict[str, str]]] = {
    "soname": (True, {"SIMLIB_FORWARD_AT_START": "cuda"}, {"cuda_shim_soname": "libcuda.so.1"}),
    "all four": (True, {}, {}),
    "exec only": (["exec"], {}, {}),
    "links only": (False, {}, {}),
    "shadowed": (True, {"SIMLIB_FORWARD_AT_START": "cuda"}, {}),
}
HEALTHY = ("soname", "all four", "exec only", "links only")
SHADOW_ERAS = ("E", "F", "G")  # the default ggml-cuda (libggml-cuda.so*) is their backend
NO_TRACKED_RUNNER = ("B",)
INTERVAL = "1s"  # Prometheus's scrape and evaluation interval (and scrape timeout)
WAIT = 30.0
BYPASS, LINK_ALERT = "VgpuShimBypassed", "VgpuShimLinkBroken"


def layouts_of(era: str) -> tuple[str, ...]:
    return HEALTHY + (("shadowed",) if era in SHADOW_ERAS else ())


def default_config(host: SimHost, port: int) -> dict[str, Any]:
    """config/vgpumon.yaml for this simulated host: every path into its root, the links
    this era's tree has, each group's cmdline anchored at the root (other hosts may run on
    this machine at the same time), the Ollama URL, log file and model store of the host."""
    config = yaml.safe_load(SHIPPED.read_text())
    root = str(host.root)
    for spec in config["libraries"].values():
        if "path" in spec:
            spec["path"] = root + spec["path"]
    present = {str(link) for link, _shim in host.links()}
    config["links"] = [{"path": root + link["path"], "target": root + link["target"]}
                       for link in config["links"] if root + link["path"] in present]
    anchor = re.escape(root) + "/"
    for group in config["groups"].values():
        pattern = group["cmdline"]
        head = "(?s)\\A"
        group["cmdline"] = (head + anchor + pattern[len(head):] if pattern.startswith(head)
                            else f"^{anchor}.*?(?:{pattern})")
    config["ollama"].update(url=f"http://127.0.0.1:{host.port}",
                            log={"file": str(host.log_file)}, models_dir=str(host.models_dir))
    config["events"]["file"] = f"{root}/var/lib/vgpumon/events.jsonl"
    config["listen"] = f"127.0.0.1:{port}"
    config["interval"] = "1s"
    return config


def fixed_ports(count: int) -> list[int]:
    """Free ports below the kernel's ephemeral range, so that no outgoing connection (of
    Prometheus, say) takes one while the target that will listen there is not up yet."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    start = random.randrange(20000, max(20001, low - 4 * count))
    ports = [port for port in range(start, low) if port_is_free(port)][:count]
    assert len(ports) == count, "not enough free ports below the ephemeral range"
    return ports


CASES = [(era, layout) for era in ERAS for layout in layouts_of(era)]


@dataclass
class Phase:
    """What Prometheus held for one target after one phase."""

    alerts: list[str] = field(default_factory=list)  # name(state){labels}
    true: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # rule -> series


@dataclass
class Case:
    era: str
    layout: str
    port: int
    host: SimHost | None = None
    server: Any = None
    vgpumon: Vgpumon | None = None
    judged_after: float = 0.0  # vgpumon's full refresh must be later than this
    healthy: Phase | None = None
    broken: Phase | None = None
    doctor_failed: list[str] | None = None
    doctor_report: str = ""

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, dict]]:
    ports = dict(zip(CASES, fixed_ports(len(CASES)), strict=True))
    workdir = tmp_path_factory.mktemp("layouts-prometheus")
    config = scrape_config([f"127.0.0.1:{port}" for port in ports.values()], [ALERT_RULES],
                           interval=INTERVAL)
    server = Prometheus(config, workdir / "prometheus")
    try:
        yield server, ports
    finally:
        server.stop()


@pytest.fixture(scope="module")
def era_run(request, prometheus, tmp_path_factory) -> Iterator[dict[str, Case]]:
    """Every layout of one era (the tests' indirect parameter), driven through both phases;
    layout -> Case. Tests of one era share it: pytest runs them together."""
    era = request.param
    server, ports = prometheus
    base = tmp_path_factory.mktemp(f"era-{era}")
    cases = {layout: Case(era, layout, ports[(era, layout)]) for layout in layouts_of(era)}
    try:
        for case in cases.values():
            start(case, base)
        settle(server, cases.values())
        for case in cases.values():
            case.healthy = observe(server, case)
            run = doctor(write_config(case, base))
            case.doctor_failed = run.failed()
            case.doctor_report = run.describe() if case.doctor_failed else ""
        if era not in NO_TRACKED_RUNNER:
            for case in cases.values():
                point_links_at_the_real_driver(case)
            settle(server, cases.values())
            for case in cases.values():
                case.broken = observe(server, case)
        yield cases
    finally:
        for case in cases.values():
            if case.vgpumon is not None:
                case.vgpumon.stop()
            if case.host is not None:
                case.host.close()


def start(case: Case, base: Path) -> None:
    preload, env, create = LAYOUTS[case.layout]
    case.host = SimHost.create(base, era=case.era, name=case.layout.replace(" ", "-"),
                               **create)
    case.host.add_model(MODEL)
    case.server = case.host.start_server(preload_shims=preload, env=env)
    workdir = base / f"vgpumon-{case.layout.replace(' ', '-')}"
    workdir.mkdir()
    case.vgpumon = Vgpumon(default_config(case.host, case.port), workdir)
    case.server.load_model(MODEL)
    case.judged_after = time.time() + PRELOAD_SETTLE_SECONDS + 0.1


def point_links_at_the_real_driver(case: Case) -> None:
    """Both libcuda.so.1 links at the real driver (a driver reinstall), then a new runner."""
    assert case.host is not None
    for link, _shim in case.host.links():
        if link.name == "libcuda.so.1":
            case.host.set_link(link, case.host.real_driver)
    case.server.unload(MODEL)
    case.server.load_model(MODEL)
    case.judged_after = time.time() + PRELOAD_SETTLE_SECONDS + 0.1


def settle(server: Prometheus, cases: Iterable[Case]) -> None:
    """Wait until every vgpumon ran a full refresh after its runner's preloads settled,
    Prometheus scraped that, and every rule group was evaluated after the scrape."""
    cases = list(cases)
    for case in cases:
        query = (f'vgpumon_collector_last_success_timestamp_seconds{{instance="{case.instance}",'
                 f'collector="processes"}} >= {case.judged_after:.3f}')
        wait_for(lambda query=query: server.query(query), WAIT, 0.1,
                 message=f"Prometheus to hold {case.instance}'s refresh after "
                         f"{case.judged_after:.3f} ({case.era} {case.layout})")
    seen = time.time()
    wait_for(lambda: server.last_evaluation() > seen, WAIT, 0.1,
             message="the rules to be evaluated again")


def observe(server: Prometheus, case: Case) -> Phase:
    phase = Phase()
    for alert in server.alerts(None):
        labels = alert["labels"]
        if labels.get("instance", case.instance) == case.instance:
            shown = {k: v for k, v in labels.items()
                     if k not in ("alertname", "instance", "job", "severity")}
            phase.alerts.append(f"{labels['alertname']}({alert['state']}){shown}")
    for rule in server.alert_rules():
        series = [sample["metric"] for sample in server.query(rule["query"])
                  if sample["metric"].get("instance", case.instance) == case.instance]
        if series:
            phase.true[rule["name"]] = series
    return phase


def write_config(case: Case, base: Path) -> Path:
    assert case.host is not None
    path = base / f"vgpumon-{case.layout.replace(' ', '-')}.yaml"
    path.write_text(yaml.safe_dump(default_config(case.host, case.port), sort_keys=False))
    return path


def case_of(era_run: dict[str, Case], layout: str) -> Case:
    return era_run[layout]


# -- the checks ---------------------------------------------------------------------------


def by_era(layouts: tuple[str, ...], eras: tuple[str, ...] = ERAS) -> Any:
    """Parametrize by era (era_run's indirect parameter, module-scoped: the tests of one era
    share its run) and layout."""
    def mark(test: Any) -> Any:
        test = pytest.mark.parametrize("layout", layouts,
                                       ids=[layout.replace(" ", "-") for layout in layouts])(test)
        return pytest.mark.parametrize("era_run", eras, indirect=True)(test)
    return mark


@by_era(HEALTHY)
def test_a_healthy_host_raises_no_alert(era_run, layout):
    case = case_of(era_run, layout)
    assert case.healthy is not None
    assert case.healthy.alerts == [] and case.healthy.true == {}, (
        f"{case.era} {layout}: {case.healthy.alerts} {case.healthy.true}")


@by_era(HEALTHY)
def test_the_doctor_fails_nothing_on_a_healthy_host(era_run, layout):
    case = case_of(era_run, layout)
    assert case.doctor_failed == [], case.doctor_report


@by_era(HEALTHY, tuple(e for e in ERAS if e not in NO_TRACKED_RUNNER))
def test_links_at_the_real_driver_are_a_bypass_unless_a_preloaded_shim_carries_the_soname(
        era_run, layout):
    case = case_of(era_run, layout)
    assert case.broken is not None
    runner_bypasses = [s for s in case.broken.true.get(BYPASS, []) if s.get("group") == "runner"]
    wrong_links = {s["path"] for s in case.broken.true.get(LINK_ALERT, [])
                   if s.get("state") == "wrong_target"}
    assert case.host is not None
    assert wrong_links == {str(link) for link, _ in case.host.links()
                           if link.name == "libcuda.so.1"}, case.broken.true
    if layout == "soname":
        assert runner_bypasses == [], case.broken.true
    else:
        assert runner_bypasses, case.broken.true
        assert any(a.startswith(f"{BYPASS}(pending)") and "'group': 'runner'" in a
                   for a in case.broken.alerts), case.broken.alerts


@by_era(("shadowed",), SHADOW_ERAS)
def test_a_preloaded_shim_shadowed_by_the_real_drivers_soname_is_a_bypass_with_links_right(
        era_run, layout):
    case = case_of(era_run, layout)
    assert case.healthy is not None
    runner_bypasses = [s for s in case.healthy.true.get(BYPASS, [])
                       if s.get("group") == "runner"]
    assert runner_bypasses, case.healthy.true
    assert LINK_ALERT not in case.healthy.true
    assert case.vgpumon is not None
    assert any(e["shim"] == "vgpu-cuda" and "SONAME" in e["why"]
               for e in case.vgpumon.events("shim_bypassed")), case.vgpumon.events()


def test_every_target_is_scraped(prometheus):
    """The fixed ports are the targets (a port taken by something else would show here)."""
    server, ports = prometheus
    assert {t["labels"]["instance"] for t in server.targets()} == {
        f"127.0.0.1:{port}" for port in ports.values()}
