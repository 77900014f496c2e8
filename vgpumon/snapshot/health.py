"""The small framework that times every source and records whether it worked.

Like node_exporter, the framework, not the source, produces
``vgpumon_collector_{success,duration_seconds,last_success_timestamp_seconds}``: `run` around
each polled source of a refresh, and the daemon's loop around each event handler
(`vgpumon.daemon.loop`). A source that raises is marked failed and logged once per failure
streak; the rest goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from vgpumon.snapshot.host import CollectorStatus

log = logging.getLogger(__name__)
T = TypeVar("T")


class CollectorHealth:
    def __init__(self) -> None:
        self._status: dict[str, CollectorStatus] = {}
        self._held: dict[str, str] = {}

    def run(self, name: str, now: float, action: Callable[[], T]) -> T | None:
        """Run one source's refresh; None if it failed."""
        started = time.perf_counter()
        try:
            result = action()
        except Exception as err:  # sources are isolated: any failure is that source's alone
            self.record(name, now, False, time.perf_counter() - started, describe_error(err))
            return None
        self.record(name, now, True, time.perf_counter() - started)
        return result

    def record(self, name: str, now: float, success: bool, duration: float,
               error: str | None = None) -> None:
        """Record one outcome of a source (a success of a held source stays a failure)."""
        if success and name in self._held:
            success, error = False, self._held[name]
        previous = self._status.get(name)
        last_success = now if success else (previous.last_success if previous else None)
        if not success and (previous is None or previous.success):
            log.error("collector failed collector=%s error=%r", name, error)
        elif success and previous is not None and not previous.success:
            log.info("collector recovered collector=%s", name)
        self._status[name] = CollectorStatus(name, success, duration, last_success,
                                             None if success else error)

    def renew(self, name: str, now: float) -> None:
        """An event-driven source with nothing to report is fine: move its last success on,
        unless its last outcome was a failure (or it has none yet)."""
        status = self._status.get(name)
        if status is not None and status.success:
            self.record(name, now, True, 0.0)

    def hold(self, name: str, now: float, error: str) -> None:
        """A standing failure: the source works in a degraded way (a forced mechanism that is
        unavailable, with another standing in), so its successes do not clear it until the
        source is set up again (`forget`)."""
        self._held[name] = error
        self.record(name, now, False, 0.0, error)

    def status(self, name: str) -> CollectorStatus | None:
        return self._status.get(name)

    def forget(self, name: str) -> None:
        self._status.pop(name, None)
        self._held.pop(name, None)

    def statuses(self) -> tuple[CollectorStatus, ...]:
        return tuple(self._status[name] for name in sorted(self._status))


def describe_error(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
