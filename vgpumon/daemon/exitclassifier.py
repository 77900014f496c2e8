"""Turning process exits into `process_exited` events with a reason (pure: time is passed in).

An exit's wait status alone is ambiguous in two common cases, so such exits wait a short
grace period for evidence from the other sources before they are final:
- SIGKILL is how Ollama unloads a runner and also how the OOM killer ends one: an OOM-kill
  record in the kernel log makes it `oom`;
- exit status 2 is any error of a Go program and also a Go runtime crash (a fatal signal in cgo
  code): a Go crash trace in the Ollama log makes it `crash`.
A process that vanished from a scan without an exit event waits for its status the same way.
A crash is attributed to a library from the kernel's segfault record, or by finding the
crash PC of a Go trace in the maps cached while the process lived.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass, replace

from vgpumon.linux.procfs import MappedFile
from vgpumon.linux.waitstatus import WaitStatus, decode
from vgpumon.model import events as ev
from vgpumon.model import exits
from vgpumon.model.events import Event
from vgpumon.model.exits import reason_for
from vgpumon.sources.processes import TrackedProcess

GRACE_SECONDS = 0.5
EVIDENCE_KEEP_SECONDS = 30.0
# A Go trace or runner exit in the log and a process exit within this distance belong together.
LOG_MATCH_SECONDS = 5.0

SEGFAULT = "segfault"
OOM_KILL = "oom_kill"
GO_CRASH = "go_crash"
LOG_EXIT = "log_exit"


@dataclass(frozen=True)
class Evidence:
    """Something another source saw about an exit.

    `pid` is known for kernel records; log evidence has none and is matched by time and group.
    """

    kind: str
    seen_at: float
    pid: int | None = None
    library: str | None = None
    address: int | None = None
    reason: str | None = None
    crash_signal: str | None = None
    message: str | None = None
    # For evidence without a PID that reports an exit after the fact (Ollama's "runner
    # terminated" lines come when Ollama next talks to the runner, maybe seconds later): the
    # exits waiting when it arrived, the only ones it may explain.
    candidates: frozenset[int] | None = None


@dataclass
class _Pending:
    process: TrackedProcess
    seen_at: float
    deadline: float
    status: WaitStatus | None = None
    source: str = "poll"
    maps: Sequence[MappedFile] = ()


class ExitClassifier:
    """Holds exits until their reason is known, then emits `process_exited`."""

    def __init__(self, *, status_source: str | None, kernel_log: bool, ollama_log: bool,
                 grace: float = GRACE_SECONDS):
        self.status_source = status_source  # proc_connector, pidfd or None (polling only)
        self.kernel_log = kernel_log
        self.ollama_log = ollama_log
        self.grace = grace
        self._pending: dict[int, _Pending] = {}
        self._evidence: list[Evidence] = []

    def exited(self, process: TrackedProcess, now: float, status: int | None, source: str,
               maps: Sequence[MappedFile] = ()) -> None:
        """An exit source reported the exit (`status` is the wait status, None if unknown)."""
        pending = self._pending_for(process, now, maps)
        pending.source = source
        if status is not None:
            pending.status = decode(status)

    def status_of_pending(self, pid: int, status: int | None, source: str) -> bool:
        """The exit status of a process that already left the snapshot; False if not pending."""
        pending = self._pending.get(pid)
        if pending is None:
            return False
        pending.source = source
        if status is not None:
            pending.status = decode(status)
        return True

    def vanished(self, process: TrackedProcess, now: float,
                 maps: Sequence[MappedFile] = ()) -> None:
        """A scan no longer found the process; its status may still come from an exit source."""
        self._pending_for(process, now, maps)

    def add_evidence(self, evidence: Evidence) -> None:
        if evidence.kind == LOG_EXIT:
            evidence = replace(evidence, candidates=frozenset(self._pending))
        self._evidence.append(evidence)

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def is_pending(self, pid: int) -> bool:
        return pid in self._pending

    def ready(self, now: float) -> list[Event]:
        """The exits whose reason is settled now, as events (oldest first)."""
        self._evidence = [e for e in self._evidence
                          if now - e.seen_at <= EVIDENCE_KEEP_SECONDS]
        done = []
        for pid, pending in sorted(self._pending.items(), key=lambda item: item[1].seen_at):
            event = self._settle(pending, now)
            if event is not None:
                done.append(event)
                del self._pending[pid]
        return done

    # -- internals -----------------------------------------------------------------------------

    def _pending_for(self, process: TrackedProcess, now: float,
                     maps: Sequence[MappedFile]) -> _Pending:
        pending = self._pending.get(process.pid)
        if pending is None or pending.process.key != process.key:
            pending = _Pending(process, now, now + self.grace, maps=maps)
            self._pending[process.pid] = pending
        elif maps and not pending.maps:
            pending.maps = maps
        return pending

    def _settle(self, pending: _Pending, now: float) -> Event | None:
        waiting = now < pending.deadline
        status = pending.status
        if status is None:
            if waiting and (self.status_source is not None or self.kernel_log
                            or self.ollama_log):
                return None  # the status, or the logs' word on this exit, may still come
            return self._event(pending, self._reason_without_status(pending), None)
        oom = self._take(pending, OOM_KILL)
        if status.signal == signal.SIGKILL and oom is None and waiting and self.kernel_log:
            return None
        go_crash = None
        if status.exit_code == exits.GO_CRASH_EXIT_CODE:
            go_crash = self._take(pending, GO_CRASH)
            if go_crash is None and waiting and self.ollama_log:
                return None
        reason = reason_for(status, oom_killed=oom is not None)
        if go_crash is not None:
            reason = exits.CRASH
        self._take(pending, LOG_EXIT)  # Ollama's report of this exit: it explains no other
        return self._event(pending, reason, go_crash)

    def _reason_without_status(self, pending: _Pending) -> str:
        logged = self._take(pending, LOG_EXIT)
        if self._take(pending, OOM_KILL) is not None:
            return exits.OOM
        if self._find(pending, SEGFAULT) is not None:
            return exits.CRASH
        if logged is not None and logged.reason in exits.REASONS:
            return logged.reason
        return exits.UNKNOWN

    def _event(self, pending: _Pending, reason: str, go_crash: Evidence | None) -> Event:
        process, status = pending.process, pending.status
        fields: dict[str, object] = {"group": process.group, "pid": process.pid,
                                     "ppid": process.ppid, "reason": reason}
        if status is not None and status.exit_code is not None:
            fields["exit_code"] = status.exit_code
        if status is not None and status.signal is not None:
            fields["signal"] = status.signal_name
            if status.core_dumped:
                fields["core_dumped"] = True
        if process.model_arg:
            fields["model"] = process.model_arg
        if process.container:
            fields["container"] = process.container
        if reason in exits.CRASH_REASONS and reason != exits.OOM:
            library = self._crash_library(pending, go_crash)
            if library:
                fields["library"] = library
        if go_crash is not None and go_crash.crash_signal:
            fields["crash_signal"] = go_crash.crash_signal
        fields["source"] = pending.source
        fields["lifetime_seconds"] = round(max(0.0, pending.seen_at - process.start_time), 3)
        return Event(pending.seen_at, ev.PROCESS_EXITED, fields)

    def _crash_library(self, pending: _Pending, go_crash: Evidence | None) -> str | None:
        fault = self._find(pending, SEGFAULT)
        if fault is not None and fault.library:
            return fault.library
        for evidence in (fault, go_crash):
            if evidence is not None and evidence.address is not None:
                for mapped in pending.maps:
                    if mapped.contains(evidence.address):
                        return mapped.basename
        return None

    def _find(self, pending: _Pending, kind: str) -> Evidence | None:
        for evidence in self._evidence:
            if evidence.kind != kind:
                continue
            if evidence.pid is not None:
                if evidence.pid == pending.process.pid:
                    return evidence
            elif evidence.candidates is not None:
                if pending.process.pid in evidence.candidates:
                    return evidence
            elif abs(evidence.seen_at - pending.seen_at) <= LOG_MATCH_SECONDS:
                return evidence
        return None

    def _take(self, pending: _Pending, kind: str) -> Evidence | None:
        """Like `_find`, but log evidence (no PID) can explain only one exit."""
        evidence = self._find(pending, kind)
        if evidence is not None and evidence.pid is None:
            self._evidence.remove(evidence)
        return evidence
