"""Ollama's server log as events, read once: the followers' `catch_up` for the lines, the
daemon's parser and interpreter for the events."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace

from vgpumon.config.schema import OllamaLogSpec
from vgpumon.doctor.privileges import Privileges, is_permission_problem, needs
from vgpumon.model.events import Event
from vgpumon.ollama.replay import JSON, local_timezone, replay
from vgpumon.snapshot.observer import HostObserver
from vgpumon.sources.container_logs import ContainerLog, ContainerLogNotFound, find_container_log
from vgpumon.sources.ollama_log import FileFollower, JournalFollower

# For ``container: auto``: the log file of the server's container (ContainerLogNotFound if none).
Locate = Callable[[], ContainerLog]


@dataclass(frozen=True)
class LogReadout:
    """What the doctor got from the log: `events` in log order, or why not."""

    source: str  # "journal unit ollama.service", "file /var/log/ollama.log", "" (disabled)
    since: float
    lines: int = 0
    events: tuple[Event, ...] = ()
    error: str | None = None  # the log could not be read
    limited: str | None = None  # read, but possibly not all of it (privilege)

    @property
    def enabled(self) -> bool:
        return bool(self.source)

    def since_ts(self, ts: float) -> tuple[Event, ...]:
        return tuple(e for e in self.events if e.ts >= ts)


def read_log(spec: OllamaLogSpec, since: float, privileges: Privileges,
             journalctl: str = "journalctl", *, locate: Locate | None = None) -> LogReadout:
    if spec.journal_unit:
        return _read_journal(spec.journal_unit, since, privileges, journalctl)
    if spec.file:
        return _read_file(spec.file, since)
    if spec.container:
        try:
            if locate is None:
                raise ContainerLogNotFound("no Ollama server runs to find the container of")
            found = locate()
        except ContainerLogNotFound as err:
            return LogReadout("log of the server's container", since, error=str(err))
        return replace(_read_file(found.path, since),
                       source=f"{found.kind} log of {found.container} ({found.shown})")
    return LogReadout("", since)


def container_locator(observer: HostObserver, server_pid: int | None,
                      spec: OllamaLogSpec) -> Locate | None:
    """How `read_log` finds the log of the server's container; None without a server."""
    if server_pid is None:
        return None
    pid = server_pid

    def locate() -> ContainerLog:
        return find_container_log(observer.procfs, pid, observer.host_view,
                                  docker_root=spec.docker_root, pods_dir=spec.pods_dir)
    return locate


def _read_journal(unit: str, since: float, privileges: Privileges,
                  journalctl: str) -> LogReadout:
    source = f"journal unit {unit}"
    if shutil.which(journalctl) is None:
        return LogReadout(source, since, error=f"{journalctl} not found")
    limited = None
    if not privileges.can_read_journal:
        limited = (f"not root and not in group systemd-journal or adm: journalctl shows only "
                   f"this user's entries; {needs('journal')}")
    follower = JournalFollower(unit, journalctl)
    lines = list(follower.catch_up(since))
    if follower.error and not lines:
        return LogReadout(source, since, error=follower.error)
    events = interpret(lines, JSON)
    return LogReadout(source, since, len(lines), events, None, limited)


def _read_file(path: str, since: float) -> LogReadout:
    source = f"file {path}"
    follower = FileFollower(path)
    try:
        error = follower.error
        lines = [] if error else list(follower.catch_up(since))
    finally:
        with contextlib.suppress(OSError):
            follower.close()
    if error:
        if is_permission_problem(error):
            error += f"; {needs('file')}"
        return LogReadout(source, since, error=error)
    return LogReadout(source, since, len(lines), interpret(lines, follower.format))


def interpret(lines: list[bytes], log_format: str) -> tuple[Event, ...]:
    """The events of `lines` (one log, in order), with the daemon's interpreter."""
    return tuple(replay(lines, log_format=log_format, local_tz=local_timezone()))
