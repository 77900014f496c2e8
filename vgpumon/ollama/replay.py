"""Replay a saved Ollama server log into events, for post-mortems (``vgpumon replay``).

Input is a plain log file (``ollama serve 2> log``, ``docker logs``), ``journalctl -o short*``
output or a syslog file, or ``journalctl -o json`` output. All three feed one
`LogInterpreter`, the one the daemon uses on the live log.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo
from typing import Any

from vgpumon import events as ev
from vgpumon.events import Event
from vgpumon.ollama.interpret import GO_CRASH, LogInterpreter
from vgpumon.ollama.journal import JournalFormatError, looks_like_journal_json, parse_journal_json
from vgpumon.ollama.logline import LogRecord, decode_line, parse_line, split_transport

PLAIN = "plain"
SHORT = "short"
JSON = "json"

# How many leading lines `replay` looks at to tell the format.
SAMPLE_LINES = 50

_JOURNAL_MARKER = re.compile(r"-- .* --")  # "-- Boot … --", "-- No entries --"
_SYSLOG_STYLES = frozenset(
    {"short", "short-precise", "short-iso", "short-iso-precise", "short-monotonic"}
)


@dataclass
class ReplayStats:
    """Counts kept while a replay runs (filled in as the iterator is consumed)."""

    format: str = PLAIN
    lines: int = 0  # input lines read
    records: int = 0  # log records fed to the interpreter
    skipped: int = 0  # lines that were not log records (bad JSON, journalctl markers, …)
    events: int = 0


def detect_format(first_lines: Sequence[bytes | str]) -> str:
    """``"json"``, ``"short"`` or ``"plain"``: what most of the non-blank lines look like."""
    votes = {JSON: 0, SHORT: 0, PLAIN: 0}
    for line in first_lines:
        text = decode_line(line)
        if not text.strip() or _JOURNAL_MARKER.fullmatch(text):
            continue
        votes[_line_format(line, text)] += 1
    best = max((JSON, SHORT), key=lambda name: votes[name])
    if votes[best] and votes[best] * 2 >= sum(votes.values()):
        return best
    return PLAIN


def _line_format(line: bytes | str, text: str) -> str:
    if text.startswith("{") and looks_like_journal_json(line):
        return JSON
    transport, _ = split_transport(text)
    if transport is not None and transport.style in _SYSLOG_STYLES:
        return SHORT
    return PLAIN


def replay(
    lines: Iterable[bytes | str],
    *,
    stats: ReplayStats | None = None,
    local_tz: tzinfo = UTC,
    log_format: str | None = None,
) -> Iterator[Event]:
    """The events of a saved log, in log order. Never raises on the lines' content.

    `log_format` forces a format; by default the first lines decide. Naive timestamps (Go
    ``log`` era) are read in `local_tz`. Lines without a time of their own get the last time
    seen (0 before any).
    """
    stats = stats if stats is not None else ReplayStats()
    source = iter(lines)
    head = list(itertools.islice(source, SAMPLE_LINES))
    stats.format = log_format or detect_format(head)
    interpreter = LogInterpreter()
    clock = 0.0
    for line in itertools.chain(head, source):
        stats.lines += 1
        records = _records(line, stats.format, local_tz)
        if records is None:
            stats.skipped += 1
            continue
        for record in records:
            stats.records += 1
            clock = _time_of(record, clock)
            for event in interpreter.feed(record, clock):
                stats.events += 1
                yield event
    for event in interpreter.flush(clock):
        stats.events += 1
        yield event


def _time_of(record: LogRecord, clock: float) -> float:
    if record.ts is not None:
        return record.ts
    return record.transport_ts if record.transport_ts is not None else clock


def _records(line: bytes | str, log_format: str, local_tz: tzinfo) -> list[LogRecord] | None:
    """The records of one input line; None if the line is not part of the log."""
    if log_format == JSON:
        return _journal_records(line, local_tz)
    text = decode_line(line)
    if log_format == SHORT and _JOURNAL_MARKER.fullmatch(text):
        return None
    return [parse_line(text, local_tz=local_tz)]


def _journal_records(line: bytes | str, local_tz: tzinfo) -> list[LogRecord] | None:
    try:
        entry = parse_journal_json(line)
    except JournalFormatError:
        return None
    if entry.message is None:
        return None
    message = entry.message
    parts = message.split(b"\n") if isinstance(message, bytes) else message.split("\n")
    return [
        replace(
            parse_line(part, local_tz=local_tz, strip_transport=False),
            transport_ts=entry.realtime_ts,
            transport_pid=entry.pid,
        )
        for part in parts
    ]


# --- timeline for humans ----------------------------------------------------------------------

_KEY_FIELDS: dict[str, tuple[str, ...]] = {
    ev.OLLAMA_VERSION: ("version",),
    ev.GPU_DISCOVERED: ("id", "library", "name", "description", "total_bytes", "available_bytes"),
    ev.CPU_ONLY: ("variant", "message"),
    ev.DISCOVERY_FAILED: ("error",),
    ev.RUNNER_STARTED: ("model", "discovery", "port"),
    ev.RUNNER_READY: ("model", "seconds"),
    ev.OFFLOAD: ("model", "gpu_layers", "total_layers", "estimate"),
    ev.RUNNER_EXITED: (
        "model",
        "reason",
        "exit_code",
        "signal",
        "crash_signal",
        "pc",
        "repeat",
        "message",
    ),
    GO_CRASH: ("model", "signal", "pc", "cgo", "message"),
    ev.BACKEND_LOADED: ("name", "path"),
    ev.BACKEND_LOAD_FAILED: ("path", "message"),
}
_PROBLEM_FIELDS = ("model", "message")
_VALUE_LIMIT = 200
_BARE = re.compile(r"[^\s\"=\\]{1,200}")


def format_timeline(events: Iterable[Event]) -> Iterator[str]:
    """One line per event: UTC time, kind, then its key fields as ``key=value``."""
    for event in events:
        names = _KEY_FIELDS.get(event.kind, _PROBLEM_FIELDS)
        fields = " ".join(
            f"{name}={_show(name, event.fields[name])}"
            for name in names
            if event.fields.get(name) is not None
        )
        yield f"{_iso(event.ts)}  {event.kind:<19} {fields}".rstrip()


def _iso(ts: float) -> str:
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ts:.3f}"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _show(name: str, value: Any) -> str:
    if name == "model" and isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return value[:12]
    if name == "pc" and isinstance(value, int):
        return hex(value)
    if name.endswith("_bytes") and isinstance(value, int):
        return f"{value / 1024**3:.1f}GiB"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if len(text) > _VALUE_LIMIT:
        text = text[:_VALUE_LIMIT] + "…"
    return text if _BARE.fullmatch(text) else json.dumps(text)
