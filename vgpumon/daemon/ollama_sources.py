"""Ollama's API and log as event sources of the daemon.

The API poller runs in a thread and wakes the loop when it has a result. The log follower's
descriptor is polled by the loop; its lines go through the same parser and interpreter as
`vgpumon replay`, become events (counted and logged like every other), feed `OllamaFacts`
(GPUs, offload per model) and give the exit classifier its evidence (Go crash traces, the
runner exits Ollama reported).
"""

from __future__ import annotations

import logging
import time

from vgpumon.config.schema import Config
from vgpumon.daemon.exitclassifier import GO_CRASH, LOG_EXIT, Evidence
from vgpumon.daemon.loop import Daemon
from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.ollama.interpret import LogInterpreter
from vgpumon.ollama.manifests import BlobNames, model_names_by_blob
from vgpumon.ollama.replay import local_timezone, records_of_line
from vgpumon.snapshot.ollama import OllamaFacts
from vgpumon.sources.ollama_api import OllamaApiPoller, poll
from vgpumon.sources.ollama_log import FileFollower, JournalFollower

log = logging.getLogger(__name__)

# Events after which /api/ps is likely to have changed.
API_CHANGING_EVENTS = frozenset({ev.RUNNER_STARTED, ev.RUNNER_READY, ev.RUNNER_EXITED,
                                 ev.OFFLOAD, ev.PROCESS_STARTED, ev.PROCESS_EXITED})
MANIFEST_RESCAN_SECONDS = 60.0  # periodic re-read of the manifests
MANIFEST_RESCAN_MIN_GAP = 5.0  # when a model vgpumon cannot name shows up


class OllamaSources:
    def __init__(self, daemon: Daemon, *, journalctl: str = "journalctl"):
        self.daemon = daemon
        self._journalctl = journalctl
        self.facts = OllamaFacts()
        self._interpreter = LogInterpreter()
        self._settings = (daemon.config.ollama, daemon.config.interval)
        self._poller = OllamaApiPoller(daemon.config.ollama.url, daemon.config.ollama.timeout,
                                       daemon.config.interval)
        self._follower = self._make_follower()
        self._follower_fd: int | None = None
        self._names = BlobNames({}, 0)
        self._names_at = 0.0
        self._clock = 0.0  # the time of the last log line that had one

    def start(self) -> None:
        now = time.time()
        self.daemon.classifier.ollama_log = self._follower is not None
        self._poller.start()
        self.daemon.watch(self._poller.fileno(), self._on_api)
        if self._follower is not None:
            self._catch_up(now)
            self._keep_following(now)
        self._refresh_names(now, min_gap=0.0)
        self.daemon.after_refresh(self._after_refresh)
        self.daemon.on_events(self._on_events)
        self.daemon.on_reload(self._reconfigure)
        self._publish(now)

    def _make_follower(self) -> JournalFollower | FileFollower | None:
        log_spec = self.daemon.config.ollama.log
        if log_spec.journal_unit:
            return JournalFollower(log_spec.journal_unit, self._journalctl)
        if log_spec.file:
            try:
                return FileFollower(log_spec.file)
            except OSError as err:  # no inotify instance left (fs.inotify.max_user_instances)
                self.daemon.health.record("ollama_log", time.time(), False, 0.0,
                                          f"cannot follow {log_spec.file}: {err.strerror}")
                return None
        self.daemon.health.forget("ollama_log")  # no log configured: no such collector
        return None

    def _reconfigure(self, config: Config) -> None:
        """After a reload: a new URL, timeout, interval or log source takes effect now."""
        if (config.ollama, config.interval) == self._settings:
            return
        self.close()
        self._settings = (config.ollama, config.interval)
        self._poller = OllamaApiPoller(config.ollama.url, config.ollama.timeout,
                                       config.interval)
        self._follower, self._follower_fd = self._make_follower(), None
        self._names_at = 0.0  # models_dir may have changed
        self._poller.start()
        self.daemon.watch(self._poller.fileno(), self._on_api)
        self.daemon.classifier.ollama_log = self._follower is not None
        if self._follower is not None:
            self._keep_following(time.time())
        log.info("ollama sources reconfigured url=%s log=%s", config.ollama.url,
                 config.ollama.log.journal_unit or config.ollama.log.file or "none")

    def look_once(self) -> None:
        """For `vgpumon once`: one API poll and the log's state, without following anything."""
        now = time.time()
        if self._follower is not None:
            self._catch_up(now)
            self._record_health(now)
        self._refresh_names(now, min_gap=0.0)
        config = self.daemon.config.ollama
        api = poll(config.url, config.timeout, now)
        self.daemon.health.record("ollama_api", now, not api.garbled, api.duration,
                                  api.error if api.garbled else None)
        self.daemon.set_ollama(self.facts.state(api, self._names))

    def close(self) -> None:
        self.daemon.unwatch(self._poller.fileno())
        self._poller.close()
        if self._follower is not None:
            if self._follower_fd is not None:
                self.daemon.unwatch(self._follower_fd)
            self._follower.close()

    # -- API -----------------------------------------------------------------------------------

    def _on_api(self, now: float) -> None:
        state = self._poller.take()
        if state is None:
            return
        self.daemon.health.record("ollama_api", now, not state.garbled, state.duration,
                                  state.error if state.garbled else None)
        if state.up and any(m.name not in self._known_names() for m in state.models or ()):
            self._refresh_names(now, min_gap=MANIFEST_RESCAN_MIN_GAP)
        self._publish(now)

    def _on_events(self, events: list[Event]) -> None:
        """Ask the API again when models may have come or gone, not only every interval."""
        if any(e.kind in API_CHANGING_EVENTS for e in events):
            self._poller.poll_now()

    # -- log -----------------------------------------------------------------------------------

    def _on_log(self, now: float) -> None:
        assert self._follower is not None
        events = []
        for line in self._follower.read_lines():
            events += self._interpret(line, now)
        if self._follower_fd is not None and self._follower.fileno() != self._follower_fd:
            self._keep_following(now)  # journalctl exited: its pipe is gone
        self._record_health(now)
        if not events:
            return
        self._evidence(events, now)
        self.facts.apply(events)
        if any(e.kind == ev.RUNNER_STARTED for e in events):
            self._refresh_names(now, min_gap=MANIFEST_RESCAN_MIN_GAP)
        self._publish(now)
        if any(e.kind == ev.OFFLOAD and not e.get("estimate") for e in events):
            # llama.cpp has mapped the model by the time it reports the offload; before
            # 0.1.32 it does so inside the server, which no new-process re-read covers.
            self.daemon.apply(self.daemon.observer.refresh_maps(now))
        self.daemon.record(events, now)

    def _interpret(self, line: bytes, now: float) -> list[Event]:
        records = records_of_line(line, self._follower.format, local_timezone())
        events: list[Event] = []
        for record in records or ():
            events += self._interpreter.feed(record, self._time_of(record, now))
        return events

    def _time_of(self, record: object, now: float) -> float:
        ts = getattr(record, "ts", None) or getattr(record, "transport_ts", None)
        return ts if ts is not None else now

    def _evidence(self, events: list[Event], now: float) -> None:
        classifier = self.daemon.classifier
        for event in events:
            if event.kind == ev.GO_CRASH:
                classifier.add_evidence(Evidence(GO_CRASH, now, address=event.get("pc"),
                                                 crash_signal=event.get("signal"),
                                                 message=event.get("message")))
            elif event.kind == ev.RUNNER_EXITED and not event.get("repeat"):
                classifier.add_evidence(Evidence(LOG_EXIT, now, reason=event.get("reason"),
                                                 message=event.get("message")))

    def _catch_up(self, now: float) -> None:
        """Rebuild what the log said since the running server started (no events emitted)."""
        assert self._follower is not None
        server = self.daemon.observer.server()
        if server is None:
            return
        fed = 0
        for line in self._follower.catch_up(server.start_time):
            for record in records_of_line(line, self._follower.format, local_timezone()) or ():
                self.facts.apply(self._interpreter.feed(record, self._time_of(record, now)))
                fed += 1
        self.facts.apply(self._interpreter.flush(now))
        log.info("ollama log catch-up records=%d gpus=%s", fed,
                 "unknown" if self.facts.state(None, {}).gpus is None
                 else len(self.facts.state(None, {}).gpus or ()))

    def _keep_following(self, now: float) -> None:
        assert self._follower is not None
        if self._follower_fd is not None:
            self.daemon.unwatch(self._follower_fd)
            self._follower_fd = None
        if self._follower.ensure_running():
            fd = self._follower.fileno()
            if fd is not None:
                self.daemon.watch(fd, self._on_log)
                self._follower_fd = fd
        self._record_health(now)

    def _record_health(self, now: float) -> None:
        assert self._follower is not None
        error = self._follower.error
        self.daemon.health.record("ollama_log", now, error is None, 0.0, error)

    # -- periodic ------------------------------------------------------------------------------

    def _after_refresh(self, now: float) -> None:
        if self._follower is not None and self._follower_fd is None:
            self._keep_following(now)
        elif self._follower is not None:
            self._record_health(now)
        self._refresh_names(now)
        self._publish(now)

    def _refresh_names(self, now: float, *, min_gap: float = MANIFEST_RESCAN_SECONDS) -> None:
        """Re-read which blob is which model; the models live in the server's filesystem."""
        if now - self._names_at < min_gap:
            return
        observer = self.daemon.observer
        view = observer.view("server") or observer.host_view
        self._names = model_names_by_blob(view, self.daemon.config.ollama.models_dir)
        self._names_at = now

    def _known_names(self) -> set[str]:
        return {name for names in self._names.values() for name in names}

    def _publish(self, now: float) -> None:
        self.daemon.set_ollama(self.facts.state(self._poller.latest, self._names))
