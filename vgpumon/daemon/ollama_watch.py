"""Ollama's API and log as event sources of the daemon.

`OllamaApi`: the poller runs in a thread and wakes the loop when it has a result.
`OllamaLog`: the follower's descriptor is polled by the loop; its lines go through the same
parser and interpreter as `vgpumon replay`, become events (counted and logged like every
other), feed `OllamaFacts` (GPUs, offload per model) and give the exit classifier its evidence
(Go crash traces, the runner exits Ollama reported). Both publish through `OllamaKnowledge`:
what the API said last, what the log said, and which blob is which model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from vgpumon.config.schema import Config, OllamaLogSpec
from vgpumon.daemon.exitclassifier import GO_CRASH, LOG_EXIT, Evidence
from vgpumon.daemon.source import Loop, SourceFailure
from vgpumon.model import collectors
from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.ollama.container_log import LineJoiner
from vgpumon.ollama.interpret import LogInterpreter
from vgpumon.ollama.logline import LogRecord
from vgpumon.ollama.manifests import BlobNames, model_names_by_blob
from vgpumon.ollama.replay import flush_records, local_timezone, records_of_line
from vgpumon.snapshot.ollama import OllamaFacts
from vgpumon.sources.container_logs import ContainerLog, ContainerLogNotFound, find_container_log
from vgpumon.sources.ollama_api import OllamaApiPoller, OllamaApiState, poll
from vgpumon.sources.ollama_log import FileFollower, JournalFollower

log = logging.getLogger(__name__)

# Events after which /api/ps is likely to have changed.
API_CHANGING_EVENTS = frozenset({ev.RUNNER_STARTED, ev.RUNNER_READY, ev.RUNNER_EXITED,
                                 ev.OFFLOAD, ev.PROCESS_STARTED, ev.PROCESS_EXITED})
# Periodic re-read of the manifests (a model vgpumon cannot name, in /api/ps or a runner
# start, has them re-read within MANIFEST_RESCAN_MIN_GAP): for removed and re-tagged models.
MANIFEST_RESCAN_SECONDS = 300.0
MANIFEST_RESCAN_MIN_GAP = 5.0  # when a model vgpumon cannot name shows up


class OllamaKnowledge:
    """What vgpumon knows of Ollama, from both sources, published as one `OllamaState`."""

    def __init__(self) -> None:
        self.facts = OllamaFacts()
        self.api: OllamaApiState | None = None
        self.names = BlobNames({}, 0)
        self._names_at = 0.0

    def refresh_names(self, loop: Loop, now: float, *,
                      min_gap: float = MANIFEST_RESCAN_SECONDS) -> None:
        """Re-read which blob is which model; the models live in the server's filesystem."""
        if now - self._names_at < min_gap:
            return
        observer = loop.observer
        view = observer.view("server") or observer.host_view
        self.names = model_names_by_blob(view, loop.config.ollama.models_dir)
        self._names_at = now

    def forget_names(self) -> None:
        self._names_at = 0.0  # models_dir may have changed

    def known_names(self) -> set[str]:
        return {name for names in self.names.values() for name in names}

    def publish(self, loop: Loop) -> None:
        loop.set_ollama(self.facts.state(self.api, self.names))


class OllamaApi:
    collector = collectors.OLLAMA_API

    def __init__(self, knowledge: OllamaKnowledge):
        self._knowledge = knowledge
        self._loop: Loop | None = None
        self._poller: OllamaApiPoller | None = None
        self._settings: tuple[object, ...] = ()

    def start(self, loop: Loop) -> None:
        self._loop = loop
        self._open(loop.config)
        self._knowledge.refresh_names(loop, time.time(), min_gap=0.0)
        self._knowledge.publish(loop)

    def after_refresh(self, now: float) -> None:
        assert self._loop is not None
        self._knowledge.refresh_names(self._loop, now)
        self._knowledge.publish(self._loop)
        api = self._knowledge.api
        if api is not None and api.garbled:
            raise SourceFailure(api.error or "the API's answer was not understood")

    def on_events(self, events: Sequence[Event]) -> None:
        """Ask the API again when models may have come or gone, not only every interval."""
        if self._poller is not None and any(e.kind in API_CHANGING_EVENTS for e in events):
            self._poller.poll_now()

    def reconfigure(self, config: Config) -> None:
        """A new URL, timeout or interval takes effect now."""
        if self._settings == self._settings_of(config):
            return
        self.close()
        self._knowledge.forget_names()
        self._open(config)
        log.info("ollama api reconfigured url=%s", config.ollama.url)

    def close(self) -> None:
        if self._poller is not None and self._loop is not None:
            self._loop.unwatch(self._poller.fileno())
            self._poller.close()
            self._poller = None

    def _open(self, config: Config) -> None:
        assert self._loop is not None
        self._settings = self._settings_of(config)
        self._poller = OllamaApiPoller(config.ollama.url, config.ollama.timeout, config.interval)
        self._poller.start()
        self._loop.watch(self._poller.fileno(), self.collector, self._on_result)

    @staticmethod
    def _settings_of(config: Config) -> tuple[object, ...]:
        return (config.ollama.url, config.ollama.timeout, config.ollama.models_dir,
                config.interval)

    def _on_result(self, now: float) -> float | None:
        assert self._poller is not None and self._loop is not None
        state = self._poller.take()
        if state is None:
            return None
        knowledge = self._knowledge
        knowledge.api = state
        if state.up and any(m.name not in knowledge.known_names() for m in state.models or ()):
            knowledge.refresh_names(self._loop, now, min_gap=MANIFEST_RESCAN_MIN_GAP)
        knowledge.publish(self._loop)
        if state.garbled:
            raise SourceFailure(state.error or "the API's answer was not understood",
                                duration=state.duration)
        return state.duration


class OllamaLog:
    collector = collectors.OLLAMA_LOG

    def __init__(self, knowledge: OllamaKnowledge, *, journalctl: str = "journalctl"):
        self._knowledge = knowledge
        self._journalctl = journalctl
        self._interpreter = LogInterpreter()
        self._loop: Loop | None = None
        self._follower: JournalFollower | FileFollower | None = None
        self._follower_fd: int | None = None
        self._problem: str | None = None  # the follower could not even be made
        self._settings: object = None
        self._joiner = LineJoiner()  # the pieces of a line a container runtime split
        self._container: ContainerLog | None = None  # container: auto: the log followed
        self._server_key: tuple[int, float] | None = None  # the server it was found for

    def start(self, loop: Loop) -> None:
        self._loop = loop
        self._open(loop.config, catch_up=True, follow=True)
        self._check()

    def after_refresh(self, now: float) -> None:
        if isinstance(self._settings, OllamaLogSpec) and self._settings.container:
            self._follow_container(now)
        if self._follower is not None and self._follower_fd is None:
            self._keep_following()
        self._check()

    def on_events(self, events: Sequence[Event]) -> None:
        pass

    def reconfigure(self, config: Config) -> None:
        """A new log source takes effect now."""
        if config.ollama.log == self._settings:
            return
        self.close()
        self._open(config, catch_up=False, follow=True)
        spec = config.ollama.log
        log.info("ollama log reconfigured log=%s", spec.journal_unit or spec.file
                 or (f"container {spec.container}" if spec.container else "none"))
        self._check()

    def close(self) -> None:
        if self._follower is not None:
            if self._follower_fd is not None and self._loop is not None:
                self._loop.unwatch(self._follower_fd)
            self._follower.close()
        self._follower, self._follower_fd = None, None

    def look_once(self, loop: Loop) -> None:
        """For `vgpumon once`: what the log says since the server started, not followed."""
        self._loop = loop
        try:
            self._open(loop.config, catch_up=True, follow=False)
            self._check()
        finally:
            self.close()

    # -- set-up --------------------------------------------------------------------------------

    def _open(self, config: Config, *, catch_up: bool, follow: bool) -> None:
        assert self._loop is not None
        loop = self._loop
        spec = config.ollama.log
        self._settings, self._problem = spec, None
        self._joiner = LineJoiner()
        self._container, self._server_key = None, None
        loop.set_absent(self.collector, not spec.enabled)
        if spec.journal_unit:
            self._follower = JournalFollower(spec.journal_unit, self._journalctl)
        elif spec.file:
            self._follower = self._file_follower(spec.file)
        elif spec.container:
            found = self._find_container(spec)
            if found is not None:
                self._follower = self._file_follower(found.path)
                self._container = found if self._follower is not None else None
        loop.classifier.ollama_log = self._follower is not None
        if self._follower is None:
            return
        if catch_up:
            self._catch_up(time.time())
        if follow:
            self._keep_following()

    def _file_follower(self, path: str) -> FileFollower | None:
        try:
            return FileFollower(path)
        except OSError as err:  # no inotify instance left (fs.inotify.max_user_instances)
            self._problem = f"cannot follow {path}: {err.strerror}"
            return None

    def _find_container(self, spec: OllamaLogSpec) -> ContainerLog | None:
        """The log file of the running server's container; None, and why in `_problem`, when
        there is none (docs/configuration.md#ollama)."""
        assert self._loop is not None
        observer = self._loop.observer
        server = observer.server()
        if server is None:
            self._problem = ("no Ollama server runs, so the log of its container cannot be "
                             "found (ollama.log: {container: auto})")
            return None
        try:
            found = find_container_log(observer.procfs, server.pid, observer.host_view,
                                       docker_root=spec.docker_root, pods_dir=spec.pods_dir)
        except ContainerLogNotFound as err:
            self._problem = str(err)
            return None
        self._problem, self._server_key = None, (server.pid, server.start_time)
        return found

    def _follow_container(self, now: float) -> None:
        """``container: auto``: look for the log again until it is found, and again when
        another server runs (a restarted container logs to a new file). The old file is
        followed until the new one is found; the new one's lines written since its server
        started become events, older ones only rebuild what the log says."""
        assert self._loop is not None and isinstance(self._settings, OllamaLogSpec)
        server = self._loop.observer.server()
        key = (server.pid, server.start_time) if server is not None else None
        if self._follower is not None and self._problem is None and key in (None,
                                                                            self._server_key):
            return
        found = self._find_container(self._settings)
        if found is None or server is None:
            return
        if self._container is not None and found.path == self._container.path:
            self._container = found  # the same container again (docker restart)
            return
        self.close()
        self._joiner = LineJoiner()
        self._follower = self._file_follower(found.path)
        self._container = found if self._follower is not None else None
        self._loop.classifier.ollama_log = self._follower is not None
        if self._follower is None:
            return
        log.info("ollama log follows container=%s file=%s format=%s", found.container,
                 found.shown, self._follower.format)
        self._catch_up(now, emit_since=server.start_time)
        self._keep_following()

    def _check(self) -> None:
        """Fail while the log cannot be followed (the follower says why)."""
        error = self._problem or (self._follower.error if self._follower is not None else None)
        if error is not None:
            raise SourceFailure(error)

    def _keep_following(self) -> None:
        assert self._follower is not None and self._loop is not None
        if self._follower_fd is not None:
            self._loop.unwatch(self._follower_fd)
            self._follower_fd = None
        if self._follower.ensure_running():
            fd = self._follower.fileno()
            if fd is not None:
                self._loop.watch(fd, self.collector, self._on_readable)
                self._follower_fd = fd

    def _catch_up(self, now: float, *, emit_since: float | None = None) -> None:
        """Rebuild what the log said since the running server started (no events emitted).

        With `emit_since`, the events of lines from then on are handled as the live log's are
        (a log found after its server started, while vgpumon ran).
        """
        assert self._follower is not None and self._loop is not None
        server = self._loop.observer.server()
        if server is None:
            return
        facts = self._knowledge.facts
        fed = 0
        joiner, tz = LineJoiner(), local_timezone()
        new: list[Event] = []

        def feed(record: LogRecord) -> None:
            events = self._interpreter.feed(record, _time_of(record, now))
            if emit_since is None:
                facts.apply(events)
                return
            facts.apply([e for e in events if e.ts < emit_since])
            new.extend(e for e in events if e.ts >= emit_since)

        for line in self._follower.catch_up(server.start_time):
            for record in records_of_line(line, self._follower.format, tz, joiner=joiner) or ():
                feed(record)
                fed += 1
        for record in flush_records(joiner, tz):
            feed(record)
            fed += 1
        facts.apply(self._interpreter.flush(now))
        gpus = facts.state(None, {}).gpus
        log.info("ollama log catch-up records=%d gpus=%s", fed,
                 "unknown" if gpus is None else len(gpus))
        if new:
            self._handle(new, now)

    # -- the handler ---------------------------------------------------------------------------

    def _on_readable(self, now: float) -> None:
        assert self._follower is not None and self._loop is not None
        events: list[Event] = []
        for line in self._follower.read_lines():
            events += self._interpret(line, now)
        if self._follower_fd is not None and self._follower.fileno() != self._follower_fd:
            self._keep_following()  # journalctl exited: its pipe is gone
        if events:
            self._handle(events, now)
        self._check()

    def _handle(self, events: list[Event], now: float) -> None:
        """New events of the log: evidence for exits, Ollama facts, recorded."""
        assert self._loop is not None
        loop, knowledge = self._loop, self._knowledge
        self._evidence(events, now)
        knowledge.facts.apply(events)
        if any(e.kind == ev.RUNNER_STARTED for e in events):
            knowledge.refresh_names(loop, now, min_gap=MANIFEST_RESCAN_MIN_GAP)
        knowledge.publish(loop)
        if any(e.kind == ev.OFFLOAD and not e.get("estimate") for e in events):
            # llama.cpp has mapped the model by the time it reports the offload; before
            # 0.1.32 it does so inside the server, which no new-process re-read covers.
            loop.apply(loop.observer.refresh_maps(now))
        loop.record(events, now)

    def _interpret(self, line: bytes, now: float) -> list[Event]:
        assert self._follower is not None
        events: list[Event] = []
        for record in records_of_line(line, self._follower.format, local_timezone(),
                                      joiner=self._joiner) or ():
            events += self._interpreter.feed(record, _time_of(record, now))
        return events

    def _evidence(self, events: list[Event], now: float) -> None:
        assert self._loop is not None
        classifier = self._loop.classifier
        for event in events:
            if event.kind == ev.GO_CRASH:
                classifier.add_evidence(Evidence(GO_CRASH, now, address=event.get("pc"),
                                                 crash_signal=event.get("signal"),
                                                 message=event.get("message")))
            elif event.kind == ev.RUNNER_EXITED and not event.get("repeat"):
                classifier.add_evidence(Evidence(LOG_EXIT, now, reason=event.get("reason"),
                                                 message=event.get("message")))


def _time_of(record: object, now: float) -> float:
    ts = getattr(record, "ts", None) or getattr(record, "transport_ts", None)
    return ts if ts is not None else now


def look_once(loop: Loop, now: float) -> None:
    """For `vgpumon once`: the log since the server started and one API poll, without
    following anything; the outcomes go to the collectors' health as the daemon's would."""
    knowledge = OllamaKnowledge()
    try:
        OllamaLog(knowledge).look_once(loop)
    except SourceFailure as failure:
        loop.failed(OllamaLog.collector, now, str(failure))
    else:
        loop.succeeded(OllamaLog.collector, now, 0.0)
    knowledge.refresh_names(loop, now, min_gap=0.0)
    config = loop.config.ollama
    api = poll(config.url, config.timeout, now)
    knowledge.api = api
    if api.garbled:
        loop.failed(OllamaApi.collector, now, api.error or "the API's answer was not understood")
    else:
        loop.succeeded(OllamaApi.collector, now, api.duration)
    knowledge.publish(loop)
