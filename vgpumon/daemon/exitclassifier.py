"""Turning process exits into `process_exited` events with a reason (pure: time is passed in).

An exit is published as soon as its reason is known from what is in hand, and amended
(`exit_reason_amended`, docs/events.md) when evidence that comes later changes it:
- SIGKILL is how Ollama unloads a runner and also how the OOM killer ends one. The OOM killer
  logs before its victim dies and the exit source reads the kernel log before it hands an
  exit over, so the OOM-kill record is normally in hand: `oom`, else `stopped` at once,
  amended to `oom` if the record comes after all;
- exit status 2 is any error of a Go program and also a Go runtime crash (a fatal signal in cgo
  code). The Go trace reaches Ollama's log through the server only after the runner died, so
  while that log is followed such an exit waits a short grace for it (`crash`); without it,
  it is `error`, amended to `crash` if the trace comes later;
- a process that vanished from a scan without an exit event waits the same grace for its
  status (or the logs' word on it); published as `unknown` without, it is amended when its
  status or a kernel record about it comes.
A crash is attributed to a library from the kernel's segfault record, or by finding the
crash PC of a Go trace in the maps cached while the process lived.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from vgpumon.linux.procfs import MappedFile
from vgpumon.linux.waitstatus import WaitStatus, decode
from vgpumon.model import events as ev
from vgpumon.model import exits
from vgpumon.model.events import Event
from vgpumon.model.exits import reason_for
from vgpumon.sources.processes import TrackedProcess

GRACE_SECONDS = 0.5
# How much later than the exit was seen a reported exit may be and still be that one's
# (clocks and the order of the reads).
REUSE_SLACK_SECONDS = 0.05
EVIDENCE_KEEP_SECONDS = 30.0
# A Go trace or runner exit in the log and a process exit within this distance belong together.
LOG_MATCH_SECONDS = 5.0
# How long after it was published an exit may still be amended.
AMEND_SECONDS = LOG_MATCH_SECONDS

SEGFAULT = "segfault"
OOM_KILL = "oom_kill"
GO_CRASH = "go_crash"
LOG_EXIT = "log_exit"
STATUS = "status"  # what decided a reason: the wait status alone


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
class _Exit:
    process: TrackedProcess
    seen_at: float
    deadline: float
    status: WaitStatus | None = None
    source: str = "poll"
    maps: Sequence[MappedFile] = ()
    # Evidence without a PID this exit took (it explains no other exit), by kind.
    taken: dict[str, Evidence] = field(default_factory=dict)


@dataclass(frozen=True)
class _Verdict:
    reason: str
    because: str  # STATUS or the kind of evidence that decided the reason
    go_crash: Evidence | None = None


@dataclass
class _Published:
    """An exit out as `process_exited`, which late evidence may amend until `until`."""

    exit: _Exit
    reason: str
    until: float


class ExitClassifier:
    """Holds an exit only while the evidence that decides its reason is yet to come, emits
    `process_exited`, and amends it with `exit_reason_amended` when evidence comes late."""

    def __init__(self, *, status_source: str | None, kernel_log: bool, ollama_log: bool,
                 grace: float = GRACE_SECONDS):
        self.status_source = status_source  # proc_connector, pidfd or None (polling only)
        self.kernel_log = kernel_log
        self.ollama_log = ollama_log
        self.grace = grace
        self._pending: dict[int, _Exit] = {}
        self._published: dict[int, _Published] = {}
        self._evidence: list[Evidence] = []

    def exited(self, process: TrackedProcess, now: float, status: int | None, source: str,
               maps: Sequence[MappedFile] = ()) -> None:
        """An exit source reported the exit (`status` is the wait status, None if unknown)."""
        pending = self._pending_for(process, now, maps)
        pending.source = source
        if status is not None:
            pending.status = decode(status)

    def status_of_pending(self, pid: int, status: int | None, source: str, *,
                          exited_at: float | None = None) -> bool:
        """The exit status of a process that already left the snapshot, or of an exit that
        was published without one; False if no exit of `pid` awaits it. `exited_at` (wall
        time; None from a source tied to the process, a pidfd) says when the reported process
        exited: an exit after the awaited one was seen is another process's, one that reused
        the PID (busy hosts, where exits go unseen, are where PIDs wrap)."""
        pending = self._pending.get(pid)
        if pending is not None:
            if exited_at is not None and exited_at > pending.seen_at + REUSE_SLACK_SECONDS:
                return False
            pending.source = source
            if status is not None:
                pending.status = decode(status)
            return True
        published = self._published.get(pid)
        if published is None or published.exit.status is not None or status is None:
            return False
        if exited_at is not None and exited_at > published.exit.seen_at + REUSE_SLACK_SECONDS:
            return False
        published.exit.status = decode(status)
        published.exit.source = source
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
        """Whether an exit of `pid` awaits its status: held, or published without it."""
        published = self._published.get(pid)
        return pid in self._pending or (published is not None
                                        and published.exit.status is None)

    def concerns(self, pid: int) -> bool:
        """Whether evidence about `pid` may settle or amend an exit (held, or published
        lately)."""
        return pid in self._pending or pid in self._published

    def ready(self, now: float) -> list[Event]:
        """The exits whose reason is settled now (`process_exited`, oldest first), then the
        amendments of exits published before (`exit_reason_amended`)."""
        self._evidence = [e for e in self._evidence
                          if now - e.seen_at <= EVIDENCE_KEEP_SECONDS]
        self._published = {pid: p for pid, p in self._published.items() if now <= p.until}
        # Held exits first: a Go trace that comes now belongs rather to an exit 2 waiting for
        # one than to one that waited in vain before.
        settled = []
        for pid, pending in sorted(self._pending.items(), key=lambda item: item[1].seen_at):
            event = self._settle(pending, now)
            if event is not None:
                settled.append((pending, event))
                del self._pending[pid]
        amended = [amendment for published in sorted(self._published.values(),
                                                     key=lambda p: p.exit.seen_at)
                   if (amendment := self._amend(published, now)) is not None]
        for pending, event in settled:
            self._published[pending.process.pid] = _Published(pending, event.get("reason"),
                                                              now + AMEND_SECONDS)
        return [event for _pending, event in settled] + amended

    # -- internals -----------------------------------------------------------------------------

    def _pending_for(self, process: TrackedProcess, now: float,
                     maps: Sequence[MappedFile]) -> _Exit:
        pending = self._pending.get(process.pid)
        if pending is None or pending.process.key != process.key:
            pending = _Exit(process, now, now + self.grace, maps=maps)
            self._pending[process.pid] = pending
        elif maps and not pending.maps:
            pending.maps = maps
        return pending

    def _settle(self, pending: _Exit, now: float) -> Event | None:
        verdict = self._verdict(pending, waiting=now < pending.deadline)
        if verdict is None:
            return None
        fields = self._fields(pending, verdict)
        fields["lifetime_seconds"] = round(max(0.0, pending.seen_at - pending.process.start_time),
                                           3)
        return Event(pending.seen_at, ev.PROCESS_EXITED, fields)

    def _amend(self, published: _Published, now: float) -> Event | None:
        verdict = self._verdict(published.exit, waiting=False)
        assert verdict is not None
        if (published.reason, verdict.reason) not in exits.AMENDMENTS:
            return None
        process = published.exit.process
        fields: dict[str, object] = {"group": process.group, "pid": process.pid,
                                     "ppid": process.ppid, "exit_ts": published.exit.seen_at,
                                     "old_reason": published.reason}
        fields.update(self._fields(published.exit, verdict))
        fields["because"] = verdict.because
        published.reason = verdict.reason
        return Event(now, ev.EXIT_REASON_AMENDED, fields)

    def _verdict(self, pending: _Exit, *, waiting: bool) -> _Verdict | None:
        """The reason of an exit from the evidence in hand; None while it should wait."""
        status = pending.status
        if status is None:
            if waiting and (self.status_source is not None or self.kernel_log
                            or self.ollama_log):
                return None  # the status, or the logs' word on this exit, may still come
            return self._verdict_without_status(pending)
        go_crash = None
        if status.exit_code == exits.GO_CRASH_EXIT_CODE:
            go_crash = self._take(pending, GO_CRASH)
            if go_crash is None and waiting and self.ollama_log:
                return None  # the trace comes through Ollama's log, after the exit
        self._take(pending, LOG_EXIT)  # Ollama's report of this exit: it explains no other
        if go_crash is not None:
            return _Verdict(exits.CRASH, GO_CRASH, go_crash)
        oom = self._find(pending, OOM_KILL)
        if status.signal == signal.SIGKILL and oom is not None:
            return _Verdict(reason_for(status, oom_killed=True), OOM_KILL)
        return _Verdict(reason_for(status), STATUS)

    def _verdict_without_status(self, pending: _Exit) -> _Verdict:
        logged = self._take(pending, LOG_EXIT)
        if self._find(pending, OOM_KILL) is not None:
            return _Verdict(exits.OOM, OOM_KILL)
        if self._find(pending, SEGFAULT) is not None:
            return _Verdict(exits.CRASH, SEGFAULT)
        if logged is not None and logged.reason in exits.REASONS:
            return _Verdict(logged.reason, LOG_EXIT)
        return _Verdict(exits.UNKNOWN, STATUS)

    def _fields(self, pending: _Exit, verdict: _Verdict) -> dict[str, object]:
        process, status, reason = pending.process, pending.status, verdict.reason
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
            library = self._crash_library(pending, verdict.go_crash)
            if library:
                fields["library"] = library
        if verdict.go_crash is not None and verdict.go_crash.crash_signal:
            fields["crash_signal"] = verdict.go_crash.crash_signal
        fields["source"] = pending.source
        return fields

    def _crash_library(self, pending: _Exit, go_crash: Evidence | None) -> str | None:
        fault = self._find(pending, SEGFAULT)
        if fault is not None and fault.library:
            return fault.library
        for evidence in (fault, go_crash):
            if evidence is not None and evidence.address is not None:
                for mapped in pending.maps:
                    if mapped.contains(evidence.address):
                        return mapped.basename
        return None

    def _find(self, pending: _Exit, kind: str) -> Evidence | None:
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

    def _take(self, pending: _Exit, kind: str) -> Evidence | None:
        """Like `_find`, but log evidence (no PID) explains only one exit, and an exit takes
        one piece of each kind at most (it is asked again while it may be amended)."""
        if kind in pending.taken:
            return pending.taken[kind]
        evidence = self._find(pending, kind)
        if evidence is not None and evidence.pid is None:
            self._evidence.remove(evidence)
            pending.taken[kind] = evidence
        return evidence
