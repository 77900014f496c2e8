"""Real Prometheus against real vgpumon watching the simulated Ollama host.

One module-scoped run drives the scenarios one after another (a healthy host first, vgpumon
and its scrape job going away last). Prometheus scrapes vgpumon every second and evaluates a
copy of `dashboards/vgpumon-alerts.yml` whose `for:` durations are cut to seconds. After each
scenario the run records which alerts fired and which Grafana dashboard queries returned
data; the tests below then check that

- a healthy host fires nothing,
- every alert fires in the scenario it is for (and the suppressions hold),
- every query of the dashboard returns data in at least one scenario,
- no rule or query fails to evaluate (a many-to-many join, say) on two hosts at once.

Every alert of the shipped rule file fires here for real. The only other change to the
copy Prometheus evaluates is VgpumonDataStale's threshold: 300 s of staleness become
STALE_AFTER seconds. An alert that cannot be provoked would be listed in PROMTOOL_ONLY with
the reason (its cases would be in `dashboards/vgpumon-alerts.test.yml` only); none is today.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import Vgpumon, as_nobody, host_config, unprivileged_command, wait_for
from tests.kernel import StoppedThread
from tests.prometheus import (
    ALERT_RULES,
    GRAFANA_DASHBOARD,
    Prometheus,
    PrometheusError,
    alert_rules_with_short_for,
    scrape_config,
)
from tests.simhost.host import DEFAULT_GPU

MODEL = "llama3.2:latest"  # healthy, then crashed, then on the CPU
PARTIAL = "qwen2.5:7b"  # split between GPU and CPU
NOSHIM = "mistral:7b"  # its runner bypasses LD_PRELOAD and libcuda.so.1 (scenario bypass)
CUDA_FAIL = "phi3:mini"  # CUDA init fails in its runner
LAYERS = 29
SECOND_GPU = dataclasses.replace(DEFAULT_GPU, uuid="GPU-5d3c1a7e-2b8f-4c61-9e0a-7f4b2d6c8e13",
                                 pci_id="0000:3c:00.0")

# Grafana's variables: the scrape interval is 1 s, so $__rate_interval is Grafana's minimum
# of four scrapes; $__range covers the whole run.
RATE_INTERVAL, INTERVAL, RANGE = "4s", "1s", "10m"

# Alerts this test cannot provoke, and why. Every alert of the rule file is either here or
# fired by a scenario below (test_every_alert_is_accounted_for).
PROMTOOL_ONLY: dict[str, str] = {}

# VgpumonDataStale fires after 300 s without a refresh; this run waits STALE_AFTER seconds.
# Far above a refresh (every second here) on a loaded machine, far below WAIT_FIRING.
STALE_AFTER = 10

WAIT_FIRING = 40.0  # scrape manager reloads (up to 5 s) + scrape + evaluation + for:
WAIT_RESOLVED = 20.0


# -- the setup ------------------------------------------------------------------------------


@dataclass
class Expect:
    """An alert with (a subset of) its labels. Placeholders in label values: {main},
    {second} and {third} (the vgpumon targets), {link} (the link the scenario breaks). The instance
    is the main vgpumon unless the labels say otherwise (None: any, or none)."""

    alert: str
    labels: dict[str, str | None] = field(default_factory=dict)


@dataclass
class Phase:
    name: str
    drive: Callable[[Stack], None]
    fires: list[Expect] = field(default_factory=list)
    quiet: list[Expect] = field(default_factory=list)  # neither pending nor firing
    undo: Callable[[Stack], None] | None = None


@dataclass(frozen=True)
class Failure:
    phase: str
    kind: str  # not fired, firing before, not suppressed, error
    alert: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.phase}: {self.message}"


@dataclass
class Record:
    fired: dict[str, list[str]] = field(default_factory=dict)  # alert -> phases
    failures: list[Failure] = field(default_factory=list)
    baseline_alerts: list[str] = field(default_factory=list)
    data: dict[str, list[str]] = field(default_factory=dict)  # query -> phases with data
    query_errors: dict[str, str] = field(default_factory=dict)
    rule_errors: dict[str, str] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds it took
    seconds: float = 0.0


@dataclass
class Stack:
    host: Any
    server: Any
    vgpumon: Vgpumon
    prometheus: Prometheus
    rules: Path
    file_sd: Path
    workdir: Path
    make_host: Callable[..., Any]
    extra: list[Vgpumon] = field(default_factory=list)
    second_host: Any = None
    second_target: str | None = None
    third_target: str | None = None
    fourth_target: str | None = None
    stopped_loop: StoppedThread | None = None

    @property
    def target(self) -> str:
        return self.vgpumon.url.removeprefix("http://")


def vgpumon_config(host: Any) -> dict[str, Any]:
    return host_config(
        host, interval="1s", crash_loop={"crashes": 3, "window": "1m"},
        ollama={"expected_gpus": 2, "timeout": "1s"}, events={"max_bytes": 4096})


@pytest.fixture(scope="module")
def stack(simhost_module, tmp_path_factory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("prom-e2e")
    host = simhost_module(era="F", gpus=[DEFAULT_GPU, SECOND_GPU])
    for model in (MODEL, PARTIAL, NOSHIM, CUDA_FAIL):
        host.add_model(model, layers=LAYERS)
    server = host.start_server()
    server.load_model(MODEL)
    (workdir / "vgpumon").mkdir()
    daemon = Vgpumon(vgpumon_config(host), workdir / "vgpumon")
    extra: list[Vgpumon] = []
    try:
        rules = workdir / "vgpumon-alerts.yml"
        write_rules(rules)
        file_sd = workdir / "targets"
        file_sd.mkdir()
        target = daemon.url.removeprefix("http://")
        prometheus = Prometheus(scrape_config([target], [rules], file_sd_dir=file_sd),
                                workdir / "prometheus")
        stack = Stack(host, server, daemon, prometheus, rules, file_sd, workdir,
                      simhost_module, extra)
        try:
            yield stack
        finally:
            unwedge_vgpumon_loop(stack)
            prometheus.stop()
    finally:
        for running in (daemon, *extra):
            running.stop()


def write_rules(dest: Path) -> None:
    """The shipped rules with short `for:`s, and VgpumonDataStale's 300 s cut to STALE_AFTER."""
    alert_rules_with_short_for(dest)
    doc = yaml.safe_load(dest.read_text())
    (stale,) = [rule for group in doc["groups"] for rule in group["rules"]
                if rule.get("alert") == "VgpumonDataStale"]
    stale["expr"], replaced = re.subn(r"> 300\b", f"> {STALE_AFTER}", stale["expr"])
    assert replaced == 1, f"VgpumonDataStale no longer reads '> 300': {stale['expr']}"
    dest.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))


# -- observing Prometheus -------------------------------------------------------------------


def _matches(expect: Expect, alert: dict[str, Any]) -> bool:
    labels = alert["labels"]
    return labels.get("alertname") == expect.alert and all(
        labels.get(k) == v for k, v in expect.labels.items() if v is not None)


def _active(stack: Stack, expect: Expect, states: tuple[str, ...] = ("firing",)) -> bool:
    return any(_matches(expect, a) for a in stack.prometheus.alerts(None)
               if a["state"] in states)


def _describe(expect: Expect) -> str:
    labels = {k: v for k, v in expect.labels.items() if v is not None and k != "instance"}
    return f"{expect.alert}{labels or ''}"


def _firing_summary(stack: Stack) -> str:
    return ", ".join(sorted(
        f"{a['labels']['alertname']}({a['state']})"
        + json.dumps({k: v for k, v in a["labels"].items()
                      if k not in ("alertname", "job", "severity", "site")}, sort_keys=True)
        for a in stack.prometheus.alerts(None))) or "none"


def _evaluated_after(stack: Stack, moment: float, rounds: int = 2) -> None:
    """Wait until every rule group was evaluated `rounds` intervals after `moment`."""
    wait_for(lambda: stack.prometheus.last_evaluation() > moment + rounds, 20, 0.2,
             message=f"rule evaluations {rounds}s after {moment}")


def _substitute(expr: str, target: str) -> str:
    values = {"job": "vgpumon", "instance": re.escape(target).replace("\\", "\\\\"),
              "__rate_interval": RATE_INTERVAL, "__interval": INTERVAL, "__range": RANGE,
              "datasource": "prometheus"}
    for name, value in values.items():
        expr = re.sub(r"\$\{" + name + r"(?::[a-z]+)?\}|\$" + name + r"\b",
                      lambda _, value=value: value, expr)
    return expr


FALLBACK = re.compile(r"\s*\bor\s+vector\(0\)")


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) for every panel target, annotation and variable of the dashboard."""
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    found = []
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['id']} {panel['title']!r} {target['refId']}",
                          target["expr"]))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            found.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.*), (\w+)\)", query)
            assert match, query
            found.append((f"variable {variable['name']}",
                           f"count by ({match.group(2)}) ({match.group(1)})"))
    # `or vector(0)` makes a stat show 0 instead of "No data": the part before it must still
    # return data somewhere, or the panel shows a constant 0 for a broken query.
    fallbacks = [(f"{where} without its `or vector(0)`", FALLBACK.sub("", expr))
                 for where, expr in found if FALLBACK.search(expr)]
    return found + fallbacks


def _record_queries(stack: Stack, phase: str, record: Record) -> None:
    for where, expr in dashboard_queries():
        query = _substitute(expr, stack.target)
        if "$" in query:
            record.query_errors.setdefault(where, f"a variable was not substituted: {query}")
            continue
        try:
            result = stack.prometheus.query(query)
        except PrometheusError as err:
            record.query_errors.setdefault(where, f"{phase}: {err}")
            continue
        if result:
            record.data.setdefault(where, []).append(phase)
        else:
            record.data.setdefault(where, [])


def _record_rule_health(stack: Stack, phase: str, record: Record) -> None:
    for rule in stack.prometheus.alert_rules():
        if rule.get("health") not in ("ok", "unknown") or rule.get("lastError"):
            record.rule_errors.setdefault(rule["name"], f"{phase}: {rule.get('lastError')}")


# -- the scenarios --------------------------------------------------------------------------


def _link(stack: Stack) -> Path:
    return stack.host.lib64 / "libcuda.so.1"


def break_link(stack: Stack) -> None:
    link = _link(stack)
    stack.workdir.joinpath("link-target").write_text(os.readlink(link))
    stack.host.set_link(link, stack.host.real_driver)  # a driver reinstall, say


def restore_link(stack: Stack) -> None:
    stack.host.set_link(_link(stack), stack.workdir.joinpath("link-target").read_text())


def _nvml_away(stack: Stack) -> Path:
    return stack.host.shim("nvml").with_name(".libvgpu-nvml.so.away")


def remove_shim_file(stack: Stack) -> None:
    os.rename(stack.host.shim("nvml"), _nvml_away(stack))  # same inode when it comes back


def restore_shim_file(stack: Stack) -> None:
    os.rename(_nvml_away(stack), stack.host.shim("nvml"))


def replace_shim_file(stack: Stack) -> None:
    stack.host.replace_file(stack.host.shim("cuda"))  # a package upgrade: old inode deleted


def load_bypassing_runner(stack: Stack) -> None:
    stack.server.load_model(NOSHIM, scenario="bypass")


def unload_bypassing_runner(stack: Stack) -> None:
    stack.server.unload(NOSHIM)


def second_host_without_shims(stack: Stack) -> None:
    """A second host where libcuda.so.1 is the real driver and nothing preloads a shim: its
    own vgpumon, added to the job through file_sd as a fleet would be."""
    host = stack.make_host(era="F", shim_links=False)
    host.add_model(MODEL, layers=LAYERS)
    host.start_server(preload_shims=False).load_model(MODEL)
    workdir = stack.workdir / "vgpumon-2"
    workdir.mkdir()
    daemon = Vgpumon(host_config(host, interval="5s"), workdir)
    stack.extra.append(daemon)
    stack.second_host = host
    stack.second_target = daemon.url.removeprefix("http://")
    targets = [{"targets": [stack.second_target], "labels": {"site": "lab"}}]
    (stack.file_sd / "second.yml").write_text(yaml.safe_dump(targets))


def unprivileged_vgpumon(stack: Stack) -> None:
    """A third vgpumon on the second host, deployed without its privileges: as nobody, with
    no capability to read the maps of Ollama's processes, and with the exit watch fallen
    back to polling (forced: this kernel would give nobody the proc connector)."""
    workdir = stack.workdir / "vgpumon-3"
    workdir.mkdir()
    command, env = unprivileged_command(workdir)
    config = host_config(stack.second_host, interval="5s", exit_watch="poll",
                         events={"file": ""})
    daemon = Vgpumon(config, workdir, command=command, env=env, preexec=as_nobody)
    stack.extra.append(daemon)
    stack.third_target = daemon.url.removeprefix("http://")
    targets = [{"targets": [stack.third_target], "labels": {"site": "lab"}}]
    (stack.file_sd / "third.yml").write_text(yaml.safe_dump(targets))


def host_with_a_failed_preload(stack: Stack) -> None:
    """A fourth host (era G) whose service names the exec shim in LD_PRELOAD at a path that
    does not exist: the loader prints one line and runs on without it. Its vgpumon uses the
    built-in `expect: auto`, which expects a shim where a preload names it."""
    host = stack.make_host(era="G")
    wrong = host.shim("exec").parent / "missing" / "libvgpu-exec.so"
    host.start_server(preload_shims=False, env={"LD_PRELOAD": str(wrong)})
    workdir = stack.workdir / "vgpumon-4"
    workdir.mkdir()
    config = host_config(host, interval="5s")
    for group in config["groups"].values():
        group["expect"] = "auto"
    daemon = Vgpumon(config, workdir)
    stack.extra.append(daemon)
    stack.fourth_target = daemon.url.removeprefix("http://")
    targets = [{"targets": [stack.fourth_target], "labels": {"site": "lab"}}]
    (stack.file_sd / "fourth.yml").write_text(yaml.safe_dump(targets))


def crash_runner(stack: Stack) -> None:
    stack.server.load_model(MODEL)
    stack.server.crash_runner(MODEL, mode="kill_segv")


def crash_loop(stack: Stack) -> None:
    for _ in range(2):  # with the crash before: 3 inside the crash_loop window
        crash_runner(stack)


def cuda_init_failure(stack: Stack) -> None:
    stack.server.load_model(CUDA_FAIL, scenario="cuda_init_failure")


def unload_cuda_failure(stack: Stack) -> None:
    stack.server.unload(CUDA_FAIL)


def garbage_api(stack: Stack) -> None:
    stack.server.fault("garbage", paths=["/api/ps"])


def clear_fault(stack: Stack) -> None:
    stack.server.clear_fault()


def stop_ollama(stack: Stack) -> None:
    stack.server.stop()


def cpu_only_server(stack: Stack) -> None:
    stack.server = stack.host.start_server(gpus=0)
    stack.server.load_model(MODEL, scenario="cpu_fallback")


def one_gpu_server(stack: Stack) -> None:
    stack.server.stop()
    stack.server = stack.host.start_server(gpus=1)


def restart_ollama(stack: Stack) -> None:
    stack.server.stop()  # the third start inside the crash_loop window
    stack.server = stack.host.start_server()


def reload_bad_config(stack: Stack) -> None:
    path = stack.vgpumon.config_path
    stack.workdir.joinpath("vgpumon.yaml.good").write_text(path.read_text())
    path.write_text(path.read_text() + "\nintervall: 5s\n")
    stack.vgpumon.signal(signal.SIGHUP)


def reload_good_config(stack: Stack) -> None:
    stack.vgpumon.config_path.write_text(stack.workdir.joinpath("vgpumon.yaml.good").read_text())
    stack.vgpumon.signal(signal.SIGHUP)


def _rotated_event_log(stack: Stack) -> Path:
    config = yaml.safe_load(stack.vgpumon.config_path.read_text())
    return Path(config["events"]["file"] + ".1")


def block_event_log_rotation(stack: Stack) -> None:
    """A directory where the rotated event log goes: the next rotation fails."""
    rotated = _rotated_event_log(stack)
    if rotated.is_file():
        rotated.unlink()
    (rotated / "in-the-way").mkdir(parents=True)

    def dropped() -> bool:
        stack.server.load_model(MODEL)  # events: process, libraries, runner, offload
        stack.server.unload(MODEL)
        return bool(stack.vgpumon.value("vgpumon_event_log_dropped_total"))

    wait_for(dropped, 60, 0, message="an event log write to fail")


def unblock_event_log_rotation(stack: Stack) -> None:
    shutil.rmtree(_rotated_event_log(stack))


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return handle.read().rsplit(b")", 1)[1].split()[0].decode()


def overflow_inotify_queue(stack: Stack) -> None:
    """vgpumon starved of CPU (SIGSTOP) while a package manager churns the shim directory:
    more events than the inotify queue holds. vgpumon counts the overflow and rescans."""
    with open("/proc/sys/fs/inotify/max_queued_events") as handle:
        files = int(handle.read()) // 2 + 1000  # each file queues IN_CREATE, OPEN, CLOSE
    process = stack.vgpumon.process
    process.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: _process_state(process.pid) == "T", message="vgpumon stopped")
        for index in range(files):
            os.close(os.open(stack.host.lib64 / f"flood-{index}", os.O_CREAT | os.O_WRONLY))
    finally:
        process.send_signal(signal.SIGCONT)
        for path in stack.host.lib64.glob("flood-*"):  # the overflow is queued by now
            path.unlink()


def wedge_vgpumon_loop(stack: Stack) -> None:
    """vgpumon's main loop stuck in a system call for good (a `stat` on a hung NFS mount)
    while its HTTP thread goes on serving the last snapshot. A stop that catches the loop
    holding Python's GIL would stop the HTTP thread too: then it is tried again."""
    def stopped_while_serving() -> bool:
        loop = StoppedThread(stack.vgpumon.process.pid)  # the main thread's tid is the pid
        try:
            stack.vgpumon.get("/metrics", timeout=2)
        except OSError:
            loop.release()
            return False
        except BaseException:
            loop.release()
            raise
        stack.stopped_loop = loop
        return True

    wait_for(stopped_while_serving, 30, 0.1, message="vgpumon's loop stopped, HTTP serving")


def unwedge_vgpumon_loop(stack: Stack) -> None:
    if stack.stopped_loop is not None:
        stack.stopped_loop.release()
        stack.stopped_loop = None


def stop_vgpumon(stack: Stack) -> None:
    unwedge_vgpumon_loop(stack)  # a SIGTERM to a ptrace-stopped thread would be lost
    stack.vgpumon.stop()


def lose_every_target(stack: Stack) -> None:
    """The job stays, its targets go (an emptied targets file): the scrape loops end and
    mark their series stale. (Dropping the whole job stops them without stale markers:
    absent() would wait out the 5m lookback.)"""
    for targets in stack.file_sd.glob("*.yml"):
        targets.unlink()
    stack.prometheus.reload(scrape_config([], [stack.rules], file_sd_dir=stack.file_sd))


PHASES = [
    Phase("partial offload", lambda s: s.server.load_model(PARTIAL, scenario="partial_offload",
                                                           gpu_layers=10),
          fires=[Expect("OllamaPartialOffload", {"model": PARTIAL})],
          undo=lambda s: s.server.unload(PARTIAL)),
    Phase("shim link broken", break_link,
          fires=[Expect("VgpuShimLinkBroken", {"path": "{link}", "state": "wrong_target"})],
          undo=restore_link),
    Phase("shim library missing", remove_shim_file,
          fires=[Expect("VgpuShimLibraryMissing", {"library": "vgpu-nvml"})],
          undo=restore_shim_file),
    Phase("shim replaced on disk", replace_shim_file,
          fires=[Expect("VgpuShimStaleMapping", {"group": "runner", "library": "vgpu-cuda"}),
                 Expect("VgpuShimStaleMapping", {"group": "server", "library": "vgpu-cuda"})]),
    Phase("runner without the shim", load_bypassing_runner,
          fires=[Expect("VgpuShimNotLoaded", {"group": "runner", "library": "vgpu-cuda"}),
                 Expect("VgpuShimNotLoaded", {"group": "runner", "library": "vgpu-exec"})],
          undo=unload_bypassing_runner),
    Phase("second host bypassing the shim", second_host_without_shims,
          fires=[Expect("VgpuShimBypassed", {"instance": "{second}", "group": "runner"})]),
    Phase("vgpumon without its privileges", unprivileged_vgpumon,
          fires=[Expect("VgpumonProcessesUnreadable", {"instance": "{third}",
                                                       "group": "runner"}),
                 Expect("VgpumonExitWatchPolling", {"instance": "{third}"})]),
    Phase("a shim that cannot be preloaded", host_with_a_failed_preload,
          fires=[Expect("VgpuShimPreloadFailed", {"instance": "{fourth}", "group": "server",
                                                  "library": "vgpu-exec"})],
          quiet=[Expect("VgpuShimNotLoaded", {"instance": "{fourth}"})]),
    Phase("runner crash", crash_runner,
          fires=[Expect("OllamaProcessCrashed", {"group": "runner", "reason": "crash"})]),
    Phase("runner crash loop", crash_loop,
          fires=[Expect("OllamaCrashLooping", {"group": "runner"})],
          quiet=[Expect("OllamaProcessCrashed", {"group": "runner"})]),
    Phase("CUDA init failure", cuda_init_failure,
          fires=[Expect("OllamaLogErrors", {"kind": "cuda_init_failed"})],
          undo=unload_cuda_failure),
    Phase("Ollama API answers garbage", garbage_api,
          fires=[Expect("VgpumonCollectorFailing", {"collector": "ollama_api"})],
          undo=clear_fault),
    Phase("Ollama API down", stop_ollama,
          fires=[Expect("OllamaAPIDown")],
          quiet=[Expect("VgpumonCollectorFailing", {"collector": "ollama_api"})]),
    Phase("CPU fallback", cpu_only_server,
          fires=[Expect("OllamaNoGPU"), Expect("OllamaModelOnCPU", {"model": MODEL})]),
    Phase("fewer GPUs", one_gpu_server, fires=[Expect("OllamaFewerGPUsThanExpected")]),
    Phase("Ollama restarting", restart_ollama,
          fires=[Expect("OllamaServerRestarting", {"group": "server"})]),
    Phase("config reload failed", reload_bad_config,
          fires=[Expect("VgpumonConfigReloadFailed")], undo=reload_good_config),
    Phase("event log unwritable", block_event_log_rotation,
          fires=[Expect("VgpumonEventLogWriteFailing")], undo=unblock_event_log_rotation),
    Phase("inotify queue overflow", overflow_inotify_queue,
          fires=[Expect("VgpumonEventSourceOverflow", {"source": "inotify"})]),
    Phase("vgpumon loop wedged", wedge_vgpumon_loop,
          fires=[Expect("VgpumonDataStale")], undo=unwedge_vgpumon_loop),
    Phase("vgpumon down", stop_vgpumon, fires=[Expect("VgpumonDown")]),
    Phase("every target gone", lose_every_target,
          fires=[Expect("VgpumonAbsent", {"instance": None, "job": "vgpumon"})]),
]


def _concrete(stack: Stack, expect: Expect) -> Expect:
    values = {"{main}": stack.target, "{second}": stack.second_target or "",
              "{third}": stack.third_target or "",
              "{fourth}": stack.fourth_target or "",
              "{link}": str(_link(stack))}
    labels: dict[str, str | None] = {"instance": "{main}", **expect.labels}
    for name, value in labels.items():
        if value in values:
            labels[name] = values[value]
    return dataclasses.replace(expect, labels=labels)


def _run_phase(stack: Stack, phase: Phase, record: Record) -> None:
    fires = [_concrete(stack, e) for e in phase.fires]
    for expect in fires:  # fired by this scenario, not left over from an earlier one
        try:
            wait_for(lambda e=expect: not _active(stack, e), WAIT_RESOLVED, 0.2)
        except AssertionError:
            record.failures.append(Failure(
                phase.name, "firing before", expect.alert,
                f"{_describe(expect)} was firing before the scenario "
                f"({_firing_summary(stack)})"))
    phase.drive(stack)
    fires = [_concrete(stack, e) for e in phase.fires]  # the scenario may add a target
    for expect in fires:
        try:
            wait_for(lambda e=expect: _active(stack, e), WAIT_FIRING, 0.2)
            record.fired.setdefault(expect.alert, []).append(phase.name)
        except AssertionError:
            record.failures.append(Failure(
                phase.name, "not fired", expect.alert,
                f"{_describe(expect)} did not fire (active: {_firing_summary(stack)})"))
    if phase.quiet:
        _evaluated_after(stack, time.time())
        for expect in (_concrete(stack, e) for e in phase.quiet):
            if _active(stack, expect, ("pending", "firing")):
                record.failures.append(Failure(
                    phase.name, "not suppressed", expect.alert,
                    f"{_describe(expect)} is active but should be suppressed "
                    f"({_firing_summary(stack)})"))
    _record_queries(stack, phase.name, record)
    _record_rule_health(stack, phase.name, record)


def _run_and_undo_phase(stack: Stack, phase: Phase, record: Record) -> None:
    try:
        _run_phase(stack, phase, record)
    finally:
        if phase.undo is not None:
            phase.undo(stack)


def _baseline(stack: Stack, record: Record) -> None:
    """A healthy host: wait for its data, then for enough evaluations that every shortened
    `for:` has passed; nothing may be pending or firing."""
    wait_for(lambda: stack.prometheus.query(
        f'vgpumon_ollama_model_gpu_layers{{instance="{stack.target}", model="{MODEL}"}} '
        f"== {LAYERS}"), 30, 0.2, message="Prometheus to have scraped the healthy host")
    _evaluated_after(stack, time.time(), rounds=4)
    record.baseline_alerts = [f"{a['labels']['alertname']} ({a['state']})"
                              for a in stack.prometheus.alerts(None)]
    _record_queries(stack, "healthy", record)
    _record_rule_health(stack, "healthy", record)


@pytest.fixture(scope="module")
def record(stack: Stack) -> Record:
    started = time.monotonic()
    result = Record()
    _baseline(stack, result)
    result.phases["healthy"] = time.monotonic() - started
    for phase in PHASES:
        phase_started = time.monotonic()
        try:
            _run_and_undo_phase(stack, phase, result)
        except Exception as err:  # record and go on: later scenarios still say something
            result.failures.append(Failure(phase.name, "error", None,
                                           f"{type(err).__name__}: {err}"))
        result.phases[phase.name] = time.monotonic() - phase_started
    result.seconds = time.monotonic() - started
    print("\nscenario: seconds, dashboard queries with data")
    for name, seconds in result.phases.items():
        with_data = sum(1 for phases in result.data.values() if name in phases)
        print(f"  {name}: {seconds:.1f} s, {with_data} of {len(result.data)}")
    for failure in result.failures:
        print(failure)
    return result


# -- the tests --------------------------------------------------------------------------------


def _shipped_alerts() -> list[str]:
    doc = yaml.safe_load(ALERT_RULES.read_text())
    return [rule["alert"] for group in doc["groups"] for rule in group["rules"]
            if "alert" in rule]


E2E_ALERTS = sorted({e.alert for phase in PHASES for e in phase.fires})


def test_every_alert_is_accounted_for() -> None:
    shipped = set(_shipped_alerts())
    assert shipped == set(E2E_ALERTS) | set(PROMTOOL_ONLY), (
        "alerts neither provoked here nor listed as promtool-only: "
        f"{sorted(shipped - set(E2E_ALERTS) - set(PROMTOOL_ONLY))}; "
        f"unknown: {sorted((set(E2E_ALERTS) | set(PROMTOOL_ONLY)) - shipped)}")
    assert not set(E2E_ALERTS) & set(PROMTOOL_ONLY)


def test_prometheus_loaded_every_rule(stack: Stack) -> None:
    loaded = {rule["name"] for rule in stack.prometheus.alert_rules()}
    assert loaded == set(_shipped_alerts())


def test_healthy_host_fires_nothing(record: Record) -> None:
    assert record.baseline_alerts == []


def _listing(failures: list[Failure]) -> str:
    return "\n".join(map(str, failures))


@pytest.mark.parametrize("alert", E2E_ALERTS)
def test_alert_fires_in_its_scenario(record: Record, alert: str) -> None:
    phases = {p.name for p in PHASES if any(e.alert == alert for e in p.fires)}
    problems = [f for f in record.failures if f.phase in phases
                and (f.alert == alert or f.kind == "error")]
    assert not problems, _listing(problems)
    assert record.fired.get(alert), f"{alert} never fired"


def test_suppressed_alerts_stay_quiet(record: Record) -> None:
    problems = [f for f in record.failures if f.kind == "not suppressed"]
    assert not problems, _listing(problems)


def test_every_scenario_ran(record: Record) -> None:
    problems = [f for f in record.failures if f.kind == "error"]
    assert not problems, _listing(problems)


def test_every_dashboard_query_returns_data(record: Record) -> None:
    queries = dashboard_queries()
    never = [where for where, _ in queries if not record.data.get(where)]
    assert not never, (
        f"{len(never)} of {len(queries)} dashboard queries returned no data in any scenario "
        f"({', '.join(record.phases)}):\n" + "\n".join(never))


def test_dashboard_queries_evaluate(record: Record) -> None:
    assert not record.query_errors, "\n".join(f"{k}: {v}" for k, v in
                                              record.query_errors.items())


def test_rules_evaluate_without_errors(record: Record) -> None:
    assert not record.rule_errors, "\n".join(f"{k}: {v}" for k, v in record.rule_errors.items())
