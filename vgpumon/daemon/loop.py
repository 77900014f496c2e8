"""The daemon: one loop that waits on every event source and a timer, refreshes, publishes.

Event sources (`vgpumon.daemon.source.Source`) are added with `Daemon.add_source`; the daemon
is the `Loop` they are handed. A source registers its descriptors with `watch`; the handler
runs in the loop thread when the descriptor is readable and asks for a targeted refresh.
Timers (`call_later`) serve retries and grace periods. The `interval` timer is the safety net
that re-reads everything. Every call into a source goes through one guard that times it and
records its collector's health; an exception is counted and the loop goes on. The HTTP server
runs in its own threads and only reads what the loop published.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import selectors
import signal
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial

from prometheus_client import CollectorRegistry

from vgpumon.config.loading import ConfigError
from vgpumon.config.schema import Config
from vgpumon.daemon.counters import Tracker
from vgpumon.daemon.eventlog import EventLog
from vgpumon.daemon.exitclassifier import ExitClassifier
from vgpumon.daemon.sdnotify import Watchdog, notify
from vgpumon.daemon.source import Handler, Source, SourceFailure
from vgpumon.http.collector import VgpumonCollector
from vgpumon.http.selfstats import SelfCollector
from vgpumon.http.server import ExporterServer
from vgpumon.http.webconfig import WebAccess, web_access_for
from vgpumon.linux.loader import ldso
from vgpumon.model import collectors
from vgpumon.model.events import Event
from vgpumon.model.untrusted import clip, escape, has_unsafe
from vgpumon.snapshot.health import CollectorHealth, describe_error
from vgpumon.snapshot.host import HostState, diff, process_started_event
from vgpumon.snapshot.observer import HostObserver
from vgpumon.snapshot.ollama import OllamaState
from vgpumon.snapshot.publication import Published, Publisher, RuntimeInfo

log = logging.getLogger(__name__)

# Kinds of call into a source, for what a normal return records (see `Daemon._guarded`).
HANDLER, STATUS, NOTICE = "handler", "status", "notice"
# A loop that only ticks (a busy host wakes it for every exec and exit) re-publishes its
# heartbeat at most this often; /healthz allows several intervals.
HEARTBEAT_SECONDS = 1.0


class Daemon:
    def __init__(self, config: Config, *, reload_config: Callable[[], Config] | None = None,
                 web_access: WebAccess | None = None):
        now = time.time()
        self.config = config
        self._reload_config = reload_config
        self.web_access = web_access or WebAccess.plain()
        self.health = CollectorHealth()
        self.observer = HostObserver(config, self.health)
        self.tracker = Tracker(config.crash_loop)
        self.classifier = ExitClassifier(status_source=None, kernel_log=False, ollama_log=False)
        self.event_log = EventLog(config.events.file, config.events.max_bytes)
        self._recent: deque[Event] = deque(maxlen=config.events.memory)
        self.runtime = RuntimeInfo(started_at=now, config_reload_timestamp=now, heartbeat=now)
        self._state = HostState(now)
        self._ollama = OllamaState()
        self.publisher = Publisher(self._published(now))
        self._published_at = now
        self._unpublished = False  # something changed that only the next publish shows
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, str, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self._stopping = False
        self._reload_requested = False
        self._next_refresh = 0.0
        self._sources: list[Source] = []
        self._handler_errors: Counter[str] = Counter({collectors.LOOP: 0})
        self._failing: set[str] = set()  # sources whose last call raised (logged once)
        self._absent: set[str] = set()  # collectors not configured: no outcome recorded
        self._wakeup_at: float | None = None
        self.watchdog = Watchdog.from_env()
        self._dropped_seen = 0
        self.server: ExporterServer | None = None

    # -- set-up ----------------------------------------------------------------------------

    def registry(self, *, with_process_metrics: bool = True) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(VgpumonCollector(lambda: self.publisher.current))
        if with_process_metrics:
            registry.register(SelfCollector())
        return registry

    def bind(self) -> ExporterServer:
        """Open the exporter's port (after the config was validated and the first refresh)."""
        self.server = ExporterServer((self.config.listen_host, self.config.listen_port),
                                     self.registry(), self.publisher, self.web_access)
        host = self.config.listen_host
        log.info("listening address=%s:%d scheme=%s", f"[{host}]" if ":" in host else host,
                 self.server.port, self.server.scheme)
        return self.server

    def add_source(self, source: Source) -> None:
        """Start `source` and drive it from now on (after `start`, before `run`)."""
        self._sources.append(source)
        self._handler_errors.setdefault(source.collector, 0)
        self._guarded(source.collector, _ignoring_now(partial(source.start, self)), STATUS)

    def watch(self, fd: int, collector: str, handler: Handler) -> None:
        """Call `handler(now)` in the loop whenever `fd` is readable, guarded as
        `collector`'s."""
        self._selector.register(fd, selectors.EVENT_READ, (collector, handler))

    def unwatch(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def call_later(self, delay: float, collector: str, action: Callable[[], None]) -> None:
        """Run `action()` in the loop after `delay` seconds, guarded as `collector`'s."""
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_ids),
                                      collector, action))

    def failed(self, collector: str, now: float, error: str) -> None:
        self._outcome(collector, now, False, 0.0, error)

    def succeeded(self, collector: str, now: float, duration: float) -> None:
        self._outcome(collector, now, True, duration)

    def degraded(self, collector: str, now: float, error: str) -> None:
        self.health.hold(collector, now, error)

    def set_absent(self, collector: str, absent: bool) -> None:
        if absent:
            self._absent.add(collector)
            self.health.forget(collector)
        else:
            self._absent.discard(collector)

    def set_exit_mechanism(self, mechanism: str) -> None:
        self._set_runtime(exit_mechanism=mechanism)

    def events_lost(self, source: str, *, total: int | None = None) -> None:
        """Count events `source` lost: one more overflow, or the source's own running total."""
        overflows = dict(self.runtime.overflows)
        overflows[source] = total if total is not None else overflows.get(source, 0) + 1
        self._set_runtime(overflows=overflows)
        if total is None:
            log.warning("events lost source=%s count=%d", source, overflows[source])

    def _set_runtime(self, **changes: object) -> None:
        self.runtime = replace(self.runtime, **changes)  # type: ignore[arg-type]
        self._unpublished = True

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """The first refresh: a baseline, so processes already running are not "started".
        Before it (once per process) the machine's loader is asked what landings need, so the
        loop never waits on ``ld.so --list-diagnostics``."""
        ldso.ask_ahead()
        now = time.time()
        self._state = replace(self.observer.refresh(now), ollama=self._ollama)
        self._next_refresh = time.monotonic() + self.config.interval
        self._run_refresh_hooks()
        self._publish(now)
        log.info("first refresh processes=%d links=%d", len(self._state.processes),
                 len(self._state.links))

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads the config."""
        wakeup_read, wakeup_write = socket.socketpair()
        wakeup_read.setblocking(False)
        wakeup_write.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wakeup_write.fileno(), warn_on_full_buffer=False)
        handlers = {
            signal.SIGTERM: self._on_stop_signal,
            signal.SIGINT: self._on_stop_signal,
            signal.SIGHUP: self._on_reload_signal,
        }
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        self.watch(wakeup_read.fileno(), collectors.LOOP,
                   _ignoring_now(partial(_drain, wakeup_read)))
        if self._unpublished:
            self._publish(time.time())  # what the sources set up: the first scrape sees it
        if self.server is not None:
            self.server.serve_in_thread()
        notify(f"READY=1\nSTATUS={self._status_line()}")
        try:
            while not self._stopping:
                self.step()
            notify("STOPPING=1")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            self.unwatch(wakeup_read.fileno())
            wakeup_read.close()
            wakeup_write.close()
            self.close()
        log.info("stopped")
        return 0

    def step(self) -> None:
        """One turn of the loop: wait for an event, a timer or the refresh, then handle it."""
        deadline = self._next_refresh
        if self._timers:
            deadline = min(deadline, self._timers[0][0])
        ping_in = self.watchdog.seconds_until_due(time.monotonic())
        if ping_in is not None:
            deadline = min(deadline, time.monotonic() + ping_in)
        for key, _mask in self._selector.select(max(0.0, deadline - time.monotonic())):
            collector, handler = key.data
            self._guarded(collector, handler)
        while self._timers and self._timers[0][0] <= time.monotonic():
            _due, _id, collector, action = heapq.heappop(self._timers)
            self._guarded(collector, _ignoring_now(action))
        if self._reload_requested:
            self._reload_requested = False
            self._guarded(collectors.LOOP, _ignoring_now(self.reload))
        if time.monotonic() >= self._next_refresh:
            self._guarded(collectors.LOOP, _ignoring_now(self.refresh_now))
        else:
            self.heartbeat()
        if self.watchdog.due(time.monotonic()):
            # Sent from the loop itself: a wedged loop stops pinging and systemd restarts it.
            self.watchdog.kick(time.monotonic())

    def _guarded(self, source: str, call: Handler, kind: str = HANDLER) -> None:
        """Call into `source`, timed; record its collector's outcome. A bug in one source
        must not stop the daemon: it is counted, logged once per failure streak, and shows
        as that collector failing until one of its handlers works again. What a normal
        return records depends on the `kind` of call: a handler's is a success, a status
        call's (`start`, `after_refresh`) a success unless a bug is outstanding, a notice's
        (`on_events`, `reconfigure`, `close`) nothing."""
        now = time.time()
        started = time.perf_counter()
        try:
            reported = call(now)
        except SourceFailure as failure:
            took = failure.duration if failure.duration is not None \
                else time.perf_counter() - started
            self._outcome(source, now, False, took, str(failure))
        except Exception as err:
            self._handler_errors[source] += 1
            self._unpublished = True
            if source not in self._failing:
                log.exception("handler failed source=%s error=%r (logged once until it "
                              "recovers)", source, describe_error(err))
                self._failing.add(source)
            self._outcome(source, now, False, time.perf_counter() - started,
                          f"handler raised {describe_error(err)}")
        else:
            if kind == HANDLER:
                self._failing.discard(source)
            if kind == HANDLER or (kind == STATUS and source not in self._failing):
                took = reported if reported is not None else time.perf_counter() - started
                self._outcome(source, now, True, took)

    def _outcome(self, source: str, now: float, success: bool, duration: float,
                 error: str | None = None) -> None:
        if source != collectors.LOOP and source not in self._absent:
            self.health.record(source, now, success, duration, error)

    def refresh_now(self) -> None:
        """The full refresh (timer, or after events were lost)."""
        self._next_refresh = time.monotonic() + self.config.interval
        now = time.time()
        self.health.renew(collectors.EVENT_LOG, now)  # a quiet host writes no events
        self.apply(self.observer.refresh(now))
        self._run_refresh_hooks()
        notify(f"STATUS={self._status_line()}")

    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        for source in reversed(self._sources):
            self._guarded(source.collector, _ignoring_now(source.close), NOTICE)
        self._sources.clear()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        self.event_log.close()
        self.observer.close()

    # -- state changes ---------------------------------------------------------------------

    def apply(self, new: HostState, extra: Iterable[Event] = ()) -> None:
        """Adopt a new snapshot: derive events from the difference, count, log, publish.

        Processes that left the snapshot go to the exit classifier, which may wait for their
        exit status and evidence before it emits `process_exited`.
        """
        now = new.taken_at
        new = replace(new, ollama=self._ollama)
        change = diff(self._state, new)
        for gone in change.vanished:
            self.classifier.vanished(gone.process, now,
                                     self.observer.last_maps(gone.process.key))
        found = [process_started_event(p, now) for p in change.started]
        found += change.events
        found += extra
        self._state = new
        self.record(found, now)

    def record(self, found: Iterable[Event], now: float) -> None:
        """Count, log and keep events, with the exits the classifier settled by now."""
        found = list(found) + self.classifier.ready(now)
        recorded = self.tracker.record(sorted(found, key=lambda e: e.ts))
        recorded += self.tracker.tick(now)
        for event in recorded:
            log.info("event kind=%s %s", event.kind, _fields(event))
        if recorded:
            self._write_event_log(recorded, now)
        self._recent.extend(recorded)
        if recorded:
            for source in self._sources:
                self._guarded(source.collector,
                              _ignoring_now(partial(source.on_events, recorded)), NOTICE)
        self._wake_for_classifier(now)
        self._publish(now)

    def _write_event_log(self, recorded: list[Event], now: float) -> None:
        started = time.perf_counter()
        self.event_log.append(recorded)
        ok = self.event_log.dropped == self._dropped_seen
        self._dropped_seen = self.event_log.dropped
        self.health.record(collectors.EVENT_LOG, now, ok, time.perf_counter() - started,
                           None if ok else "event log writes fail (see the log)")

    def _wake_for_classifier(self, now: float) -> None:
        """Come back when an exit's grace period or a crash-loop window ends."""
        deadlines = [d for d in (self.classifier.next_deadline(), self.tracker.next_change())
                     if d is not None]
        if not deadlines:
            return
        deadline = min(deadlines)
        if self._wakeup_at is not None and self._wakeup_at <= deadline:
            return
        self._wakeup_at = deadline

        def settle() -> None:
            self._wakeup_at = None
            self.record((), time.time())

        self.call_later(max(0.0, deadline - now) + 0.001, collectors.LOOP, settle)

    def set_ollama(self, state: OllamaState) -> None:
        """Adopt what the Ollama sources know now (API answer, log facts). A new server
        version judges the processes again (their expectations depend on it)."""
        self._ollama = state
        self._state = replace(self._state, ollama=state)
        self._unpublished = True
        if self.observer.set_ollama_version(state.known_version):
            self.apply(self.observer.snapshot(time.time()))

    def heartbeat(self) -> None:
        """Publish that the loop is alive (for /healthz), and what changed without a publish."""
        now = time.time()
        if self._unpublished or now - self._published_at >= HEARTBEAT_SECONDS:
            self._publish(now)

    def reload(self) -> None:
        """Re-read the config; keep the old one (and say why) if the new one is bad."""
        now = time.time()
        if self._reload_config is None:
            return
        notify("RELOADING=1")
        try:
            config = self._reload_config()
            web_access = web_access_for(config.web_config_file)
        except ConfigError as err:
            log.error("config reload failed, keeping the old config error=%r", str(err))
            self._set_runtime(config_reload_success=False, config_reload_timestamp=now)
            notify("READY=1")
            return
        for key in ("listen", "exit_watch"):
            if getattr(config, key) != getattr(self.config, key):
                log.warning("%s changed; restart vgpumon to apply it old=%s new=%s", key,
                            getattr(self.config, key), getattr(config, key))
        self.config = config
        self.web_access = web_access
        if self.server is not None:
            self.server.set_web_config(web_access)
        self.observer.close()
        events_complete = self.observer.events_complete  # the exit watch's, kept
        self.observer = HostObserver(config, self.health)
        self.observer.set_ollama_version(self._ollama.known_version)
        self.observer.events_complete = events_complete
        if config.nvml == "off":
            self.health.forget(collectors.NVML)
        self.tracker.reconfigure(config.crash_loop)
        if config.events.file != self.event_log.path:
            self.event_log.close()
            self.event_log = EventLog(config.events.file, config.events.max_bytes)
        self.event_log.max_bytes = config.events.max_bytes
        self._recent = deque(self._recent, maxlen=config.events.memory)
        self._set_runtime(config_reload_success=True, config_reload_timestamp=now)
        self.start()
        for source in self._sources:
            self._guarded(source.collector, _ignoring_now(partial(source.reconfigure, config)),
                          NOTICE)
        notify("READY=1")
        log.info("config reloaded source=%s", config.source or "defaults")

    # -- publication ---------------------------------------------------------------------------

    def _status_line(self) -> str:
        counts = ", ".join(f"{len(self._state.in_group(g.name))} {g.name}"
                           for g in self.config.groups)
        return f"watching {counts}; exits via {self.runtime.exit_mechanism}"

    def _run_refresh_hooks(self) -> None:
        for source in self._sources:
            self._guarded(source.collector, source.after_refresh, STATUS)

    def _published(self, now: float) -> Published:
        return Published(
            config=self.config,
            state=self._state,
            counters=self.tracker.counters(now),
            runtime=self.runtime,
            recent_events=tuple(self._recent),
        )

    def _publish(self, now: float) -> None:
        self.runtime = replace(self.runtime, heartbeat=now,
                               event_log_dropped=self.event_log.dropped,
                               handler_errors=dict(self._handler_errors))
        self.publisher.publish(self._published(now))
        self._published_at = now
        self._unpublished = False

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _on_reload_signal(self, _signum: int, _frame: object) -> None:
        self._reload_requested = True


def _ignoring_now(action: Callable[[], object]) -> Handler:
    """`action` as a handler: called with the time of the wake-up, which it does not need."""
    def handler(_now: float) -> None:
        action()
    return handler


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass


# A field of an event in the daemon's log shows at most this much (the event log and
# /events keep the whole value).
LOG_FIELD_CHARS = 1024


def _fields(event: Event) -> str:
    """The event's fields as logfmt: a value with a space, ``=``, a quote or a control
    character is quoted, with backslash escapes (``\\n``, ``\\x1b``), so a value another
    process chose can neither end the line nor pass for another field or record."""
    parts = []
    for key, value in event.fields.items():
        text = clip(str(value), LOG_FIELD_CHARS)
        if not text or any(c in text for c in ' ="') or has_unsafe(text):
            text = '"' + escape(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'
        parts.append(f"{escape(key)}={text}")
    return " ".join(parts)
