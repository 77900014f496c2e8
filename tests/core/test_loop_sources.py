"""The loop drives event sources through one protocol and records their health itself: a
handler that raises is counted and marks its collector failing, visible in the exposition; a
source's own failure is a failure, not a bug; a metric section that raises is left out alone.

A real `Daemon` with a real descriptor (a socket pair) per source; the exposition is what
`/metrics` serves (the daemon's registry), without the HTTP server.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vgpumon.config.schema import Config, EventsSpec
from vgpumon.daemon.loop import Daemon
from vgpumon.daemon.source import Loop, SourceFailure
from vgpumon.http import collector as collector_module
from vgpumon.linux.loader import ldso
from vgpumon.model.events import Event


class ScriptedSource:
    """A source with one descriptor whose handler does what `behaviour` says next."""

    collector = "scripted"

    def __init__(self) -> None:
        self.behaviour = "ok"
        self.duration: float | None = None
        self.calls: list[str] = []
        self.problem: str | None = None  # what after_refresh reports, as a real source does
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)

    def start(self, loop: Loop) -> None:
        self.calls.append("start")
        loop.watch(self.reader.fileno(), self.collector, self.on_readable)

    def poke(self) -> None:
        self.writer.send(b"x")

    def on_readable(self, now: float) -> float | None:
        self.reader.recv(64)
        self.calls.append("handler")
        if self.behaviour == "bug":
            raise KeyError("a bug in the handler")
        if self.behaviour == "failure":
            self.problem = "the source cannot read"
            raise SourceFailure(self.problem)
        self.problem = None
        return self.duration

    def after_refresh(self, now: float) -> None:
        self.calls.append("after_refresh")
        if self.problem is not None:
            raise SourceFailure(self.problem)

    def on_events(self, events: Sequence[Event]) -> None:
        self.calls.append(f"events:{len(events)}")

    def reconfigure(self, config: Config) -> None:
        self.calls.append("reconfigure")

    def close(self) -> None:
        self.calls.append("close")
        self.reader.close()
        self.writer.close()


@pytest.fixture
def daemon(tmp_path) -> Iterator[Daemon]:
    # An empty /proc: the host's own processes (an Ollama that another test simulates, say)
    # must not add events between the test's steps.
    (tmp_path / "proc").mkdir()
    config = Config(interval=3600.0, events=EventsSpec(file=str(tmp_path / "events.jsonl")),
                    nvml="off", procfs=str(tmp_path / "proc"))
    daemon = Daemon(config, reload_config=lambda: config)
    daemon.start()
    yield daemon
    daemon.close()


def scrape(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(daemon.registry(with_process_metrics=False)).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


def turn(daemon: Daemon, source: ScriptedSource) -> None:
    """One readable event through the loop, then a full refresh (which publishes health)."""
    before = source.calls.count("handler")
    source.poke()
    while source.calls.count("handler") == before:
        daemon.step()
    daemon.refresh_now()


def test_a_raising_handler_is_counted_and_fails_its_collector_until_it_recovers(daemon):
    source = ScriptedSource()
    daemon.add_source(source)
    source.behaviour = "bug"
    turn(daemon, source)
    turn(daemon, source)
    metrics = scrape(daemon)
    assert value(metrics, "vgpumon_event_handler_errors_total", source="scripted") == 2
    assert value(metrics, "vgpumon_collector_success", collector="scripted") == 0
    status = daemon.health.status("scripted")
    assert status is not None and "KeyError" in (status.error or "")

    source.behaviour = "ok"
    turn(daemon, source)
    metrics = scrape(daemon)
    assert value(metrics, "vgpumon_collector_success", collector="scripted") == 1
    assert value(metrics, "vgpumon_event_handler_errors_total", source="scripted") == 2


def test_a_source_failure_fails_the_collector_without_counting_a_bug(daemon):
    source = ScriptedSource()
    daemon.add_source(source)
    source.behaviour = "failure"
    turn(daemon, source)
    metrics = scrape(daemon)
    assert value(metrics, "vgpumon_collector_success", collector="scripted") == 0
    assert value(metrics, "vgpumon_event_handler_errors_total", source="scripted") == 0
    assert daemon.health.status("scripted").error == "the source cannot read"
    source.behaviour = "ok"
    turn(daemon, source)
    assert value(scrape(daemon), "vgpumon_collector_success", collector="scripted") == 1


def test_a_bug_stays_visible_through_refreshes_until_a_handler_works(daemon):
    """A handler that raises on every batch must not look healthy after each refresh."""
    source = ScriptedSource()
    daemon.add_source(source)
    source.behaviour = "bug"
    turn(daemon, source)
    daemon.refresh_now()
    daemon.refresh_now()
    assert value(scrape(daemon), "vgpumon_collector_success", collector="scripted") == 0


def test_the_loop_times_the_handler_or_takes_the_duration_it_reports(daemon):
    source = ScriptedSource()
    daemon.add_source(source)
    source.duration = 0.25  # work done in another thread, reported by the handler
    source.poke()
    while "handler" not in source.calls:
        daemon.step()
    assert daemon.health.status("scripted").duration == 0.25
    source.duration = None
    before = source.calls.count("handler")
    source.poke()
    while source.calls.count("handler") == before:
        daemon.step()
    measured = daemon.health.status("scripted").duration
    assert 0 < measured < 0.25


def test_the_loop_drives_every_hook_of_the_protocol(daemon):
    source = ScriptedSource()
    daemon.add_source(source)
    daemon.refresh_now()
    daemon.record([Event(kind="process_started", ts=1.0, fields={"pid": 1, "group": "x"})], 1.0)
    daemon.reload()
    daemon.close()
    assert source.calls[0] == "start"
    assert "after_refresh" in source.calls
    assert "events:1" in source.calls
    assert "reconfigure" in source.calls
    assert source.calls[-1] == "close"


def test_a_raising_hook_is_charged_to_its_source(daemon):
    source = ScriptedSource()

    def broken(events: Sequence[Event]) -> None:
        raise RuntimeError("on_events bug")

    source.on_events = broken  # type: ignore[method-assign]
    daemon.add_source(source)
    daemon.record([Event(kind="process_started", ts=1.0, fields={"pid": 1, "group": "x"})], 1.0)
    daemon.refresh_now()
    metrics = scrape(daemon)
    assert value(metrics, "vgpumon_event_handler_errors_total", source="scripted") == 1
    assert value(metrics, "vgpumon_collector_success", collector="scripted") == 0


def test_a_degraded_collector_stays_failed_whatever_its_handlers_do(daemon):
    source = ScriptedSource()
    daemon.add_source(source)
    daemon.degraded("scripted", 1.0, "forced mechanism unavailable")
    turn(daemon, source)
    status = daemon.health.status("scripted")
    assert not status.success and status.error == "forced mechanism unavailable"


def test_a_metric_section_that_raises_is_left_out_alone_and_counted(daemon, monkeypatch):
    def broken(published):
        raise ValueError("a bug in one family")
        yield  # a generator, like the real sections

    sections = tuple((name, broken if name == "links" else build)
                     for name, build in collector_module.SECTIONS)
    monkeypatch.setattr(collector_module, "SECTIONS", sections)
    daemon.publisher.publish(replace(daemon.publisher.current))  # a fresh build
    metrics = scrape(daemon)
    assert value(metrics, "vgpumon_exposition_errors_total", section="links") == 1
    assert value(metrics, "vgpumon_exposition_errors_total", section="processes") == 0
    names = {name for name, _ in metrics}
    assert "vgpumon_shim_link_state" not in names
    assert {"vgpumon_processes", "vgpumon_collector_success", "vgpumon_build_info"} <= names


def test_the_machines_loader_is_asked_before_the_loop_runs(tmp_path, monkeypatch):
    """``ld.so --list-diagnostics`` (a child that may take seconds) runs in `start`, before
    the loop: what landings ask of the loader later is answered without running it."""
    ldso.diagnostics.cache_clear()
    ldso.loader_platform.cache_clear()
    ran: list[str] = []
    real_run = ldso._run_diagnostics
    monkeypatch.setattr(ldso, "_run_diagnostics", lambda path: ran.append(path) or real_run(path))
    (tmp_path / "proc").mkdir()
    config = Config(interval=3600.0, events=EventsSpec(file=str(tmp_path / "events.jsonl")),
                    nvml="off", procfs=str(tmp_path / "proc"))
    daemon = Daemon(config, reload_config=lambda: config)
    try:
        daemon.start()
        own = ldso.own_arch()
        assert own is not None and ldso.diagnostics.cache_info().currsize >= 1
        asked = list(ran)

        def on_the_loop(path: str) -> None:
            raise AssertionError(f"ran {path} after start")

        monkeypatch.setattr(ldso, "_run_diagnostics", on_the_loop)
        for arch in ldso.SYSTEM_LOADERS:
            ldso.loader_platform(arch)
            ldso.diagnostics(arch)
        assert ran == asked
    finally:
        daemon.close()
