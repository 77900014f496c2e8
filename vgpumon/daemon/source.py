"""The seam between the daemon's loop and its event sources.

An event source (`Source`) is one collector: the proc connector or pidfds for exits, the
kernel log, inotify, Ollama's API, Ollama's log. The loop hands it a `Loop` in `start`; the
source opens what it reads there and registers each descriptor with `Loop.watch`. From then on
the loop drives it: a readable descriptor calls its handler, a full refresh calls
`after_refresh`, recorded events go to `on_events`, a reload to `reconfigure`, shutdown to
`close`. What a source finds goes back through the `Loop`: snapshots (`apply`), events
(`record`), Ollama state (`set_ollama`), lost events (`events_lost`).

A source never records its own health. The loop times every call into it and records the
collector's success and duration: a normal return of a handler, a timer, `start` or
`after_refresh` is a success, `SourceFailure` a failure with that message (a condition the
source expected: no privilege, a closed pipe), and any other exception a failure that is also
counted in ``vgpumon_event_handler_errors_total{source}`` and logged with its traceback (a
bug). Either way the loop and the other sources go on. `after_refresh` runs after every full
refresh, so it is where a source states how it stands: one that cannot work raises
`SourceFailure` there each time, one that is fine returns, which also keeps a quiet source's
last success fresh. `on_events`, `reconfigure` and `close` are notifications: their normal
return records nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from vgpumon.config.schema import Config
from vgpumon.daemon.exitclassifier import ExitClassifier
from vgpumon.model.events import Event
from vgpumon.snapshot.host import HostState
from vgpumon.snapshot.observer import HostObserver
from vgpumon.snapshot.ollama import OllamaState

# Called with the wall-clock time of the wake-up. It may return the seconds of work the
# wake-up stands for when that work ran outside the loop (an API request in its thread);
# the loop records that as the collector's duration instead of the handler's own time.
Handler = Callable[[float], float | None]


class SourceFailure(Exception):
    """A source's expected failure (a read refused, a pipe closed): its collector is marked
    failed with this message; it is not counted as a handler error. `duration`: the seconds
    the failed work took, when it ran outside the loop."""

    def __init__(self, message: str, *, duration: float | None = None):
        super().__init__(message)
        self.duration = duration


class Loop(Protocol):
    """What an event source may ask of the daemon's loop."""

    @property
    def config(self) -> Config: ...

    @property
    def observer(self) -> HostObserver: ...

    @property
    def classifier(self) -> ExitClassifier: ...

    def watch(self, fd: int, collector: str, handler: Handler) -> None:
        """Call `handler(now)` whenever `fd` is readable, timed and guarded as `collector`'s."""

    def unwatch(self, fd: int) -> None: ...

    def call_later(self, delay: float, collector: str, action: Callable[[], None]) -> None:
        """Run `action()` after `delay` seconds, guarded as `collector`'s."""

    def apply(self, state: HostState, extra: Iterable[Event] = ()) -> None:
        """Adopt a new snapshot (events come from its difference to the last one)."""

    def record(self, events: Iterable[Event], now: float) -> None:
        """Count, log and keep events."""

    def refresh_now(self) -> None:
        """A full refresh (events were lost)."""

    def set_exit_mechanism(self, mechanism: str) -> None:
        """How exits are watched: proc_connector, pidfd or poll."""

    def events_lost(self, source: str, *, total: int | None = None) -> None:
        """Count events `source` lost: one more overflow, or the source's own running total."""

    def set_ollama(self, state: OllamaState) -> None: ...

    def failed(self, collector: str, now: float, error: str) -> None:
        """Mark `collector` failed outside a call the loop made (work done for another)."""

    def succeeded(self, collector: str, now: float, duration: float) -> None:
        """Record a success of `collector` outside a call the loop made."""

    def degraded(self, collector: str, now: float, error: str) -> None:
        """Mark `collector` failed until it is set up again, whatever its handlers do."""

    def set_absent(self, collector: str, absent: bool) -> None:
        """`collector` is not configured (absent True): export nothing for it and record no
        outcome of its calls until it is configured again."""


class Source(Protocol):
    """An event source driven by the loop (see the module's description)."""

    @property
    def collector(self) -> str:
        """The collector this source's health, errors and hooks are charged to."""

    def start(self, loop: Loop) -> None: ...

    def after_refresh(self, now: float) -> None: ...

    def on_events(self, events: Sequence[Event]) -> None: ...

    def reconfigure(self, config: Config) -> None: ...

    def close(self) -> None: ...
