"""Replay a saved Ollama server log into events, for post-mortems (``vgpumon replay``).

Input is a plain log file (``ollama serve 2> log``, ``docker logs``), ``journalctl -o short*``
output or a syslog file, ``journalctl -o json`` output, or a container's log as its runtime
keeps it (Docker's ``json-file``, Kubernetes' CRI files, ``docker logs -t``, Docker Desktop;
`vgpumon.ollama.container_log`). All feed one `LogInterpreter`, the one the daemon uses on the
live log.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo

from vgpumon.model.events import Event
from vgpumon.model.timeline import format_timeline  # noqa: F401 - re-exported for callers
from vgpumon.ollama import container_log
from vgpumon.ollama.container_log import (
    CRI,
    DOCKER_DESKTOP,
    DOCKER_JSON,
    DOCKER_TIMESTAMPS,
    LineJoiner,
)
from vgpumon.ollama.interpret import LogInterpreter
from vgpumon.ollama.journal import JournalFormatError, looks_like_journal_json, parse_journal_json
from vgpumon.ollama.logline import LogRecord, decode_line, parse_line, split_transport

PLAIN = "plain"
SHORT = "short"
JSON = "json"
CONTAINER_FORMATS = container_log.FORMATS
FORMATS = (PLAIN, SHORT, JSON, *CONTAINER_FORMATS)

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
    """One of `FORMATS`: what at least half of the non-blank lines look like, else ``plain``.

    Ollama's own lines (every era) are plain: none of them looks like a journal entry, a
    container runtime's line or a syslog prefix, so a plain log stays plain.
    """
    votes = dict.fromkeys(FORMATS, 0)
    for line in first_lines:
        text = decode_line(line)
        if not text.strip() or _JOURNAL_MARKER.fullmatch(text):
            continue
        votes[_line_format(line, text)] += 1
    best = max((JSON, SHORT, *CONTAINER_FORMATS), key=lambda name: votes[name])
    if votes[best] and votes[best] * 2 >= sum(votes.values()):
        return best
    return PLAIN


def _line_format(line: bytes | str, text: str) -> str:
    if text.startswith("{"):
        if looks_like_journal_json(line):
            return JSON
        return DOCKER_JSON if container_log.parse_docker_json(text) is not None else PLAIN
    if container_log.parse_cri(text) is not None:
        return CRI
    if container_log.is_nanosecond_timestamped(text):
        return DOCKER_TIMESTAMPS  # before the syslog forms: "<ts> CUDA error: …" fits those
    transport, _ = split_transport(text)
    if transport is not None and transport.style in _SYSLOG_STYLES:
        return SHORT
    if container_log.parse_docker_timestamps(text) is not None:
        return DOCKER_TIMESTAMPS
    if container_log.parse_docker_desktop(text) is not None:
        return DOCKER_DESKTOP
    return PLAIN


def local_timezone() -> tzinfo:
    """Ollama's Go-log era writes local time without a zone: read it in this host's zone, as
    it is now (a fixed offset taken at start would be an hour off after a DST change)."""
    return datetime.now().astimezone().tzinfo or UTC


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
    joiner = LineJoiner()
    clock = 0.0
    for line in itertools.chain(head, source):
        stats.lines += 1
        records = records_of_line(line, stats.format, local_tz, joiner=joiner)
        if records is None:
            stats.skipped += 1
            continue
        for record in records:
            stats.records += 1
            clock = _time_of(record, clock)
            for event in interpreter.feed(record, clock):
                stats.events += 1
                yield event
    for record in flush_records(joiner, local_tz):  # a split line the log ended in
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


def records_of_line(
    line: bytes | str,
    log_format: str,
    local_tz: tzinfo,
    *,
    joiner: LineJoiner | None = None,
) -> list[LogRecord] | None:
    """The records of one input line; None if the line is not part of the log.

    In a container format, `joiner` holds the pieces of a line the runtime split (Docker's
    16 KiB pieces, CRI's ``P`` lines) until the piece that ends it: such a piece gives no
    record yet (``[]``). Without a joiner every piece is a line of its own.
    """
    if log_format == JSON:
        return _journal_records(line, local_tz)
    if log_format in CONTAINER_FORMATS:
        return _container_records(line, log_format, local_tz, joiner)
    text = decode_line(line)
    if log_format == SHORT and _JOURNAL_MARKER.fullmatch(text):
        return None
    return [parse_line(text, local_tz=local_tz)]


def flush_records(joiner: LineJoiner, local_tz: tzinfo) -> list[LogRecord]:
    """The records of the split lines `joiner` still holds (the log ended inside them)."""
    return [_container_record(piece, local_tz) for piece in joiner.flush()]


def _container_records(
    line: bytes | str, log_format: str, local_tz: tzinfo, joiner: LineJoiner | None
) -> list[LogRecord] | None:
    piece = container_log.unwrap(line, log_format, local_tz)
    if piece is None:
        if log_format == DOCKER_JSON:
            return None  # not an entry of the json-file log (a cut or damaged line)
        return [parse_line(line, local_tz=local_tz)]  # no prefix: a line as Ollama wrote it
    pieces = joiner.feed(piece) if joiner is not None else [piece]
    return [_container_record(whole, local_tz) for whole in pieces]


def _container_record(piece: container_log.Piece, local_tz: tzinfo) -> LogRecord:
    """The record of a container's line; the runtime's time is its transport time."""
    record = parse_line(piece.text, local_tz=local_tz, strip_transport=False)
    return replace(record, transport_ts=piece.ts)


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
