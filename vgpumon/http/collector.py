"""Prometheus metrics: families built from the published snapshot, nothing else.

Where a metric comes from: each family below names the snapshot or counter field it reads;
the snapshot fields are filled by the sources in `vgpumon.sources`. Every configured group,
library and link is exported even when nothing matches, so alerts can fire on absence.
"""

from __future__ import annotations

import functools
import logging
import platform
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vgpumon import __version__
from vgpumon.config.schema import RUNNER
from vgpumon.model.events import ALL_KINDS, LOG_ERROR_KINDS
from vgpumon.model.exits import AMENDMENTS, REASONS
from vgpumon.snapshot.counters import link_key
from vgpumon.snapshot.expectations import BACKEND_LIBRARY
from vgpumon.snapshot.models import MAX_LABEL, MAX_MODELS, loaded_models
from vgpumon.snapshot.ollama import OllamaState
from vgpumon.snapshot.publication import Published
from vgpumon.sources.identity import REASONS as IDENTITY_REASONS
from vgpumon.sources.identity import has_identity_rules
from vgpumon.sources.links import LINK_STATES

log = logging.getLogger(__name__)

EXIT_MECHANISMS = ("proc_connector", "pidfd", "poll")
# The model label is bounded by the locally pulled models; this caps it even so.
OVERFLOW_SOURCES = ("proc_connector", "inotify", "kmsg")


class VgpumonCollector(Collector):
    """A prometheus-client collector over whatever `current()` returns at scrape time.

    Each section of families is built on its own: one that raises (a bug) is left out of
    that scrape and counted in ``vgpumon_exposition_errors_total{section}``, and the rest is
    served, never an HTTP 500.
    """

    def __init__(self, current: Callable[[], Published]):
        self._current = current
        self._last: tuple[Published, list[Metric]] | None = None
        # Per section: what it was built from (`SECTION_INPUTS`) and by whom, and what it gave.
        self._sections: dict[str, tuple[object, tuple[object, ...], list[Metric]]] = {}
        self._errors: Counter[str] = Counter({name: 0 for name, _ in SECTIONS})
        self._lock = threading.Lock()  # scrapes run in concurrent threads

    def describe(self) -> list[Metric]:
        return []  # registering must not trigger a collection

    def collect(self) -> Iterator[Metric]:
        published = self._current()
        last = self._last
        if last is not None and same_metrics(last[0], published):
            yield from last[1]  # the loop re-published (a heartbeat), nothing new
            return
        metrics = self._build(published)
        self._last = (published, metrics)
        yield from metrics

    def _build(self, published: Published) -> list[Metric]:
        metrics = [self._build_info]
        for name, section in SECTIONS:
            try:
                metrics += self._section(name, section, published)
            except Exception:  # a bug here must not take the other sections with it
                with self._lock:
                    self._errors[name] += 1
                    first = self._errors[name] == 1
                if first:
                    log.exception("building metrics failed section=%s (logged once)", name)
        with self._lock:
            counts = dict(self._errors)
        errors = CounterMetricFamily("vgpumon_exposition_errors",
                                     "Times a section of metrics failed to build and was left "
                                     "out of the scrape (a bug: see the log).",
                                     labels=["section"])
        for name in sorted(counts):
            errors.add_metric([name], counts[name])
        metrics.append(errors)
        return metrics


    def _section(self, name: str, section: Callable[[Published], Iterable[Metric]],
                 published: Published) -> list[Metric]:
        """The section's families: the very objects of the last build when what it is built
        from did not change (a refresh changes the collectors' timings, seldom the rest), so
        the exposition reuses their text too."""
        inputs_of = SECTION_INPUTS.get(name)
        if inputs_of is None:
            return list(section(published))
        inputs = inputs_of(published)
        kept = self._sections.get(name)
        if kept is not None and kept[0] is section and kept[1] == inputs:
            return kept[2]
        built = list(section(published))
        self._sections[name] = (section, inputs, built)
        return built

    @functools.cached_property
    def _build_info(self) -> Metric:
        return build_info()


def same_metrics(old: Published, new: Published) -> bool:
    """Whether `families()` gives the same for both: the same snapshot, counters and config
    objects (all immutable), and the same runtime facts but for the loop's heartbeat."""
    if old is new:  # the usual case between two publications: no runtime comparison
        return True
    return (old.state is new.state and old.counters is new.counters
            and old.config is new.config
            and old.runtime == replace(new.runtime, heartbeat=old.runtime.heartbeat))


def build_info() -> Metric:
    family = GaugeMetricFamily("vgpumon_build_info", "vgpumon version and Python version.",
                               labels=["version", "python_version"])
    family.add_metric([__version__, platform.python_version()], 1)
    return family


def collector_families(published: Published) -> Iterator[Metric]:
    success = GaugeMetricFamily("vgpumon_collector_success",
                                "Whether the last refresh of this source worked.",
                                labels=["collector"])
    duration = GaugeMetricFamily("vgpumon_collector_duration_seconds",
                                 "How long the last refresh of this source took.",
                                 labels=["collector"])
    last = GaugeMetricFamily("vgpumon_collector_last_success_timestamp_seconds",
                             "When this source last refreshed successfully.",
                             labels=["collector"])
    for status in published.state.collectors:
        success.add_metric([status.name], 1 if status.success else 0)
        duration.add_metric([status.name], status.duration)
        if status.last_success is not None:
            last.add_metric([status.name], status.last_success)
    yield from (success, duration, last)


def process_families(published: Published) -> Iterator[Metric]:
    config, state = published.config, published.state
    count = GaugeMetricFamily("vgpumon_processes", "Processes in the group now.",
                              labels=["group"])
    oldest = GaugeMetricFamily("vgpumon_process_oldest_start_time_seconds",
                               "Start time of the group's oldest process.", labels=["group"])
    unreadable = GaugeMetricFamily("vgpumon_processes_unreadable",
                                   "Processes whose maps could not be read (permission).",
                                   labels=["group"])
    bypass = GaugeMetricFamily("vgpumon_processes_bypassing_shim",
                               "Processes that expect a shim and get the real library it "
                               "stands for instead (docs/configuration.md#expectations).",
                               labels=["group"])
    containers = GaugeMetricFamily("vgpumon_process_container_info",
                                   "Containers the group's processes run in (runtime://id; "
                                   "host processes are not listed).",
                                   labels=["group", "container"])
    gpu = GaugeMetricFamily("vgpumon_processes_with_gpu_device",
                            "Processes mapping an NVIDIA device file (they hold a CUDA context).",
                            labels=["group"])
    for group in config.groups:
        members = state.in_group(group.name)
        readable = [m for m in members if m.libraries.readable]
        count.add_metric([group.name], len(members))
        if members:
            oldest.add_metric([group.name], min(m.process.start_time for m in members))
        unreadable.add_metric([group.name], len(members) - len(readable))
        bypass.add_metric([group.name], sum(1 for m in readable if m.bypasses))
        gpu.add_metric([group.name], sum(1 for m in readable if m.libraries.gpu_device))
        for container in sorted({m.process.container for m in members if m.process.container}):
            containers.add_metric([group.name, container], 1)
    rejected = GaugeMetricFamily("vgpumon_processes_rejected",
                                 "Processes that match the group's patterns but not its "
                                 "identity rules (look-alikes; docs/configuration.md#membership).",
                                 labels=["group", "reason"])
    by_reason = Counter((r.group, r.reason) for r in state.rejected)
    for group in config.groups:
        if has_identity_rules(group):
            for reason in IDENTITY_REASONS:
                rejected.add_metric([group.name, reason], by_reason.get((group.name, reason), 0))
    yield from (count, oldest, unreadable, bypass, gpu, containers, rejected)
    yield from gpu_memory_families(published)


def gpu_memory_families(published: Published) -> Iterator[Metric]:
    """From NVML, where it is available (the optional nvml collector)."""
    memory = published.state.gpu_memory
    if memory is None:
        return
    devices = GaugeMetricFamily("vgpumon_nvml_gpus", "GPUs the NVIDIA driver reports.")
    devices.add_metric([], memory.devices)
    used = GaugeMetricFamily("vgpumon_process_gpu_memory_bytes",
                             "GPU memory held by the group's processes (NVML).",
                             labels=["group"])
    for group in published.config.groups:
        used.add_metric([group.name], sum(memory.by_pid.get(m.process.pid, 0)
                                          for m in published.state.in_group(group.name)))
    yield from (devices, used)


def library_families(published: Published) -> Iterator[Metric]:
    config, state = published.config, published.state
    mapped = GaugeMetricFamily("vgpumon_processes_with_library",
                               "Processes in the group mapping the library.",
                               labels=["group", "library"])
    missing = GaugeMetricFamily("vgpumon_processes_missing_library",
                                "Processes in the group expected to map the library (expect:) "
                                "that do not.", labels=["group", "library"])
    stale = GaugeMetricFamily("vgpumon_processes_stale_library",
                              "Processes mapping a deleted or replaced copy of the library.",
                              labels=["group", "library"])
    expected = GaugeMetricFamily("vgpumon_library_expected",
                                 "Processes in the group expected to map the library, by why: "
                                 "config (expect:), preload (LD_PRELOAD), ld_so_preload, link, "
                                 "backend (docs/configuration.md#expectations).",
                                 labels=["group", "library", "because"])
    preload_failed = GaugeMetricFamily("vgpumon_processes_preload_failed",
                                       "Processes told to preload the shim (LD_PRELOAD or "
                                       "/etc/ld.so.preload) that do not map it.",
                                       labels=["group", "library"])
    for group in config.groups:
        members = [m for m in state.in_group(group.name) if m.libraries.readable]
        readable = [m.libraries for m in members]
        may_expect = set(group.expect) if not group.expect_auto else \
            set(config.shims) | ({BACKEND_LIBRARY} & {s.name for s in config.libraries}
                                 if group.name == RUNNER else set())
        for spec in config.libraries:
            labels = [group.name, spec.name]
            mapped.add_metric(labels, sum(1 for libs in readable if libs.mapped(spec.name)))
            stale.add_metric(labels, sum(1 for libs in readable if libs.stale(spec.name)))
            if spec.name in may_expect:
                missing.add_metric(labels, sum(
                    1 for m in members
                    if any(e.library == spec.name for e in m.expected)
                    and not m.libraries.mapped(spec.name)))
            if spec.name in config.shims:
                preload_failed.add_metric(labels, sum(
                    1 for m in members if spec.name in m.preload_failed))
        reasons = Counter((e.library, e.because) for m in members for e in m.expected)
        for (library, because), count in sorted(reasons.items()):
            expected.add_metric([group.name, library, because], count)
    present = GaugeMetricFamily("vgpumon_library_present",
                                "Whether a path: library exists on disk.", labels=["library"])
    for found in state.library_files:
        present.add_metric([found.library], 1 if found.present else 0)
    info = GaugeMetricFamily("vgpumon_library_info",
                             "Configured libraries and their kind (shim, driver or library).",
                             labels=["library", "kind"])
    for spec in config.libraries:
        kind = "shim" if spec.name in config.shims else "driver" if spec.driver else "library"
        info.add_metric([spec.name, kind], 1)
    yield from (mapped, missing, stale, present, info, expected, preload_failed)


def link_families(published: Published) -> Iterator[Metric]:
    state, counters = published.state, published.counters
    link_state = GaugeMetricFamily("vgpumon_shim_link_state",
                                   "State of each configured shim link (one state is 1; all 0 "
                                   "while it cannot be checked). view: host or server.",
                                   labels=["path", "state", "view"])
    changes = CounterMetricFamily("vgpumon_shim_link_changes",
                                  "Times the link's state or target changed.",
                                  labels=["path", "view"])
    last_change = GaugeMetricFamily("vgpumon_shim_link_last_change_timestamp_seconds",
                                    "When the link last changed.", labels=["path", "view"])
    for link in state.links:
        key = link_key(link.view, link.path)
        for name in LINK_STATES:
            link_state.add_metric([link.path, name, link.view], 1 if link.state == name else 0)
        changes.add_metric([link.path, link.view], counters.link_changes.get(key, 0))
        if key in counters.link_last_change:
            last_change.add_metric([link.path, link.view], counters.link_last_change[key])
    yield from (link_state, changes, last_change)


def lifecycle_families(published: Published) -> Iterator[Metric]:
    config, counters = published.config, published.counters
    starts = CounterMetricFamily("vgpumon_process_starts", "Processes seen starting.",
                                 labels=["group"])
    exits = CounterMetricFamily("vgpumon_process_exits", "Process exits by reason.",
                                labels=["group", "reason"])
    amended = CounterMetricFamily("vgpumon_process_exit_reasons_amended",
                                  "Exits whose reason later evidence changed, counted in "
                                  "vgpumon_process_exits_total under the first one.",
                                  labels=["group", "from", "to"])
    crashes = CounterMetricFamily("vgpumon_process_crashes",
                                  "Exits with reason error, crash or oom.", labels=["group"])
    last_crash = GaugeMetricFamily("vgpumon_process_last_crash_timestamp_seconds",
                                   "When the group last crashed.", labels=["group"])
    loop = GaugeMetricFamily("vgpumon_crash_loop",
                             "1 while the crashes inside the crash_loop window reach the "
                             "threshold.", labels=["group"])
    window_crashes = GaugeMetricFamily("vgpumon_crash_loop_crashes",
                                       "Crashes inside the current crash_loop window.",
                                       labels=["group"])
    window_starts = GaugeMetricFamily("vgpumon_process_window_starts",
                                      "Process starts inside the current crash_loop window.",
                                      labels=["group"])
    for group in (g.name for g in config.groups):
        starts.add_metric([group], counters.starts.get(group, 0))
        for reason in REASONS:
            exits.add_metric([group, reason], counters.exits.get((group, reason), 0))
        for old, new in AMENDMENTS:
            amended.add_metric([group, old, new], counters.amended.get((group, old, new), 0))
        crashes.add_metric([group], counters.crashes.get(group, 0))
        if group in counters.last_crash:
            last_crash.add_metric([group], counters.last_crash[group])
        loop.add_metric([group], 1 if counters.crash_loop.get(group) else 0)
        window_crashes.add_metric([group], counters.window_crashes.get(group, 0))
        window_starts.add_metric([group], counters.window_starts.get(group, 0))
    threshold = GaugeMetricFamily("vgpumon_crash_loop_threshold",
                                  "Crashes inside the window that make a crash loop "
                                  "(crash_loop.crashes).")
    threshold.add_metric([], config.crash_loop.crashes)
    window = GaugeMetricFamily("vgpumon_crash_loop_window_seconds",
                               "The crash_loop window.")
    window.add_metric([], config.crash_loop.window)
    yield from (starts, exits, amended, crashes, last_crash, loop, window_crashes,
                window_starts, threshold, window)


def ollama_families(published: Published) -> Iterator[Metric]:
    ollama: OllamaState = published.state.ollama
    api = ollama.api
    if api is not None:
        up = GaugeMetricFamily("vgpumon_ollama_up", "Whether Ollama's API answered.")
        up.add_metric([], 1 if api.up else 0)
        yield up
    version = (api.version if api is not None and api.up else None) or ollama.version
    if version:
        info = GaugeMetricFamily("vgpumon_ollama_info", "The Ollama version.",
                                 labels=["version"])
        info.add_metric([version[:MAX_LABEL]], 1)
        yield info
    expected = GaugeMetricFamily("vgpumon_ollama_gpus_expected",
                                 "GPUs this host should have (ollama.expected_gpus).")
    expected.add_metric([], published.config.ollama.expected_gpus)
    yield expected
    if ollama.gpus is not None:
        gpus = GaugeMetricFamily("vgpumon_ollama_gpus",
                                 "GPUs Ollama reported at its last discovery (0 = CPU only).")
        gpus.add_metric([], len(ollama.gpus))
        gpu_info = GaugeMetricFamily("vgpumon_ollama_gpu_info", "One per GPU Ollama reported.",
                                     labels=["id", "library", "name"])
        for gpu in ollama.gpus[:MAX_MODELS]:
            gpu_info.add_metric([gpu.id[:MAX_LABEL], gpu.library[:MAX_LABEL],
                                 gpu.name[:MAX_LABEL]], 1)
        yield from (gpus, gpu_info)
    if api is not None and api.up and api.models is not None:  # None: no /api/ps
        loaded = GaugeMetricFamily("vgpumon_ollama_models_loaded", "Models loaded (/api/ps).")
        loaded.add_metric([], len(api.models))
        yield loaded
    yield from model_families(published)
    errors = CounterMetricFamily("vgpumon_ollama_log_errors",
                                 "Problems reported in the Ollama log, by kind.",
                                 labels=["kind"])
    for kind in LOG_ERROR_KINDS:
        errors.add_metric([kind], published.counters.log_errors.get(kind, 0))
    yield errors


def model_families(published: Published) -> Iterator[Metric]:
    ollama = published.state.ollama
    size = GaugeMetricFamily("vgpumon_ollama_model_size_bytes", "Model size (/api/ps).",
                             labels=["model"])
    vram = GaugeMetricFamily("vgpumon_ollama_model_vram_bytes",
                             "Model bytes in GPU memory (/api/ps; an estimate before 0.13).",
                             labels=["model"])
    layers = GaugeMetricFamily("vgpumon_ollama_model_layers",
                               "The model's layers (offloaded N/M: M), from the log.",
                               labels=["model"])
    gpu_layers = GaugeMetricFamily("vgpumon_ollama_model_gpu_layers",
                                   "The model's layers on a GPU (offloaded N/M: N), from the "
                                   "log: the runner's report where there is one.",
                                   labels=["model"])
    estimated = GaugeMetricFamily("vgpumon_ollama_model_offload_estimated",
                                  "1 when the GPU layers are only the server's estimate.",
                                  labels=["model"])
    for label, loaded in loaded_models(published.state).items():
        if loaded.api is not None:
            size.add_metric([label], loaded.api.size)
            if loaded.api.size_vram is not None:
                vram.add_metric([label], loaded.api.size_vram)
        offload = ollama.offload.get(loaded.offload_key) if loaded.offload_key else None
        if offload is not None:
            gpu_layers.add_metric([label], offload.gpu_layers)
            estimated.add_metric([label], 1 if offload.estimate else 0)
            if offload.total_layers is not None:
                layers.add_metric([label], offload.total_layers)
    yield from (size, vram, layers, gpu_layers, estimated)


def self_families(published: Published) -> Iterator[Metric]:
    counters, runtime = published.counters, published.runtime
    events = CounterMetricFamily("vgpumon_events", "Events recorded, by kind.", labels=["kind"])
    for kind in sorted(set(ALL_KINDS) | set(counters.events)):
        events.add_metric([kind], counters.events.get(kind, 0))
    mechanism = GaugeMetricFamily("vgpumon_exit_watch_info",
                                  "How process exits are observed (1 for the one in use).",
                                  labels=["mechanism"])
    for name in EXIT_MECHANISMS:
        mechanism.add_metric([name], 1 if runtime.exit_mechanism == name else 0)
    overflows = CounterMetricFamily("vgpumon_event_source_overflows",
                                    "Times an event source lost events and a full rescan ran.",
                                    labels=["source"])
    for name in OVERFLOW_SOURCES:
        overflows.add_metric([name], runtime.overflows.get(name, 0))
    dropped = CounterMetricFamily("vgpumon_event_log_dropped",
                                  "Events that could not be written to the event log.")
    dropped.add_metric([], runtime.event_log_dropped)
    reload_ok = GaugeMetricFamily("vgpumon_config_last_reload_success",
                                  "Whether the last configuration (re)load worked.")
    reload_ok.add_metric([], 1 if runtime.config_reload_success else 0)
    reload_ts = GaugeMetricFamily("vgpumon_config_last_reload_timestamp_seconds",
                                  "When the configuration was last (re)loaded.")
    reload_ts.add_metric([], runtime.config_reload_timestamp)
    handler_errors = CounterMetricFamily(
        "vgpumon_event_handler_errors",
        "Calls into an event source that raised (a bug: see the log); the source's collector "
        "is marked failing meanwhile.", labels=["source"])
    for name in sorted(runtime.handler_errors):
        handler_errors.add_metric([name], runtime.handler_errors[name])
    yield from (events, mechanism, overflows, dropped, reload_ok, reload_ts, handler_errors)


# The families by section, in exposition order (after build_info).
SECTIONS: tuple[tuple[str, Callable[[Published], Iterable[Metric]]], ...] = (
    ("collectors", collector_families), ("processes", process_families),
    ("libraries", library_families), ("links", link_families),
    ("lifecycle", lifecycle_families), ("ollama", ollama_families), ("self", self_families))


def _lifecycle_inputs(published: Published) -> tuple[object, ...]:
    counters = published.counters
    return (published.config, counters.starts, counters.exits, counters.amended,
            counters.crashes, counters.last_crash, counters.window_crashes,
            counters.window_starts, counters.crash_loop)


# What each section's families are built from (all of it: a section rebuilt only when these
# compare unequal must read nothing else). Sections without an entry are built every time.
SECTION_INPUTS: dict[str, Callable[[Published], tuple[object, ...]]] = {
    "processes": lambda p: (p.config, p.state.processes, p.state.rejected, p.state.gpu_memory),
    "libraries": lambda p: (p.config, p.state.processes, p.state.library_files),
    "links": lambda p: (p.state.links, p.counters.link_changes, p.counters.link_last_change),
    "lifecycle": _lifecycle_inputs,
    "ollama": lambda p: (p.config, p.state.ollama, p.state.processes, p.counters.log_errors),
}
