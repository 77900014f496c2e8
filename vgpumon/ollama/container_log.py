"""What container runtimes and their log viewers wrap around each line Ollama writes (pure).

An Ollama in a container writes its log to stderr; what vgpumon then reads is one of
(docs/ollama.md#container-logs):

- Docker's ``json-file`` driver (``/var/lib/docker/containers/<id>/<id>-json.log``): one JSON
  object per line, ``{"log":"<line>\\n","stream":"stderr","time":"<RFC 3339 nano>"}``. A line
  longer than 16 KiB is split into several objects; all but the last lack the ``\\n``.
- Kubernetes' CRI log files (``/var/log/pods/<ns>_<pod>_<uid>/<container>/<n>.log``):
  ``<RFC 3339 nano> <stream> <tag> <line>``, the tag ``F`` for a full line and ``P`` for a
  partial one, continued by the next pieces of the same stream up to an ``F``.
- ``docker logs -t`` (and ``kubectl logs --timestamps``): ``<RFC 3339 nano> <line>``.
- Docker Desktop's log view: ``YYYY-MM-DD HH:MM:SS <line>`` in local time.

`unwrap` turns one line of such a log into a `Piece` (the text, the runtime's time, the
stream, whether the line goes on in the next piece); a `LineJoiner` puts the pieces of a split
line back together. None of this raises on any str or bytes: what is not in the format is
reported as such (None) and left to the caller.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, tzinfo

from vgpumon.ollama.logline import decode_line, parse_timestamp

DOCKER_JSON = "docker-json"
CRI = "cri"
DOCKER_TIMESTAMPS = "docker-timestamps"
DOCKER_DESKTOP = "docker-desktop"
FORMATS = (DOCKER_JSON, CRI, DOCKER_TIMESTAMPS, DOCKER_DESKTOP)

MAX_JOINED = 1 << 20  # characters of one joined line; the rest of a longer one is dropped
STREAMS = ("stdout", "stderr")

_RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)"
_CRI = re.compile(
    rf"(?P<ts>{_RFC3339}) (?P<stream>stdout|stderr) (?P<tags>[A-Z](?::[A-Z])*)(?: (?P<text>.*))?",
    re.DOTALL,
)
_TIMESTAMPED = re.compile(rf"(?P<ts>{_RFC3339}) ")
_NANOSECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7,9}(?:Z|[+-]\d\d:\d\d) ")
_SURROGATE = re.compile("[\ud800-\udfff]")
_DESKTOP = re.compile(
    r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?) "
)


@dataclass(frozen=True)
class Piece:
    """One line of a container log, unwrapped.

    `text` is what the container wrote (without its line end); `ts` the runtime's time of it
    (unix seconds); `stream` ``stdout``, ``stderr`` or ``""`` where the format does not say;
    `partial` true when the line goes on in the next piece of the same stream.
    """

    text: str
    ts: float | None
    stream: str = ""
    partial: bool = False


# --- one line of each format --------------------------------------------------------------------


def parse_docker_json(line: str | bytes) -> Piece | None:
    """A ``json-file`` line; None if `line` is not one (not JSON, no ``log`` string)."""
    text = _text(line)
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("log"), str):
        return None
    log = _valid(value["log"])
    stream = value.get("stream")
    when = value.get("time")
    partial = not log.endswith("\n")
    return Piece(
        text=log[:-1] if not partial else log,
        ts=parse_timestamp(when) if isinstance(when, str) else None,
        stream=stream if stream in STREAMS else "",
        partial=partial,
    )


def parse_cri(line: str | bytes) -> Piece | None:
    """A CRI log line (``<time> <stream> <P|F> <text>``); None if `line` is not one."""
    m = _CRI.fullmatch(_text(line))
    if m is None:
        return None
    ts = parse_timestamp(m["ts"])
    if ts is None:
        return None
    return Piece(m["text"] or "", ts, m["stream"], m["tags"].split(":")[0] == "P")


def parse_docker_timestamps(line: str | bytes) -> Piece | None:
    """A ``docker logs -t`` line (``<RFC 3339 nano> <text>``); None without that prefix."""
    text = _text(line)
    m = _TIMESTAMPED.match(text)
    if m is None:
        return None
    ts = parse_timestamp(m["ts"])
    return None if ts is None else Piece(text[m.end() :], ts)


def parse_docker_desktop(line: str | bytes, local_tz: tzinfo = UTC) -> Piece | None:
    """A Docker Desktop line (``YYYY-MM-DD HH:MM:SS <text>``, local time unless it says)."""
    text = _text(line)
    m = _DESKTOP.match(text)
    if m is None:
        return None
    ts = parse_timestamp(m["ts"], local_tz)
    return None if ts is None else Piece(text[m.end() :], ts)


def unwrap(line: str | bytes, log_format: str, local_tz: tzinfo = UTC) -> Piece | None:
    """`line` of a log in `log_format` (one of `FORMATS`); None if it is not in that format."""
    if log_format == DOCKER_JSON:
        return parse_docker_json(line)
    if log_format == CRI:
        return parse_cri(line)
    if log_format == DOCKER_TIMESTAMPS:
        return parse_docker_timestamps(line)
    if log_format == DOCKER_DESKTOP:
        return parse_docker_desktop(line, local_tz)
    return None


def is_nanosecond_timestamped(text: str) -> bool:
    """The line starts with a time of 7 to 9 fractional digits and a zone, then a space: what
    ``docker logs -t`` writes, and no syslog or journalctl format does (``short-iso-precise``
    stops at microseconds)."""
    return _NANOSECONDS.match(text) is not None


def _valid(text: str) -> str:
    """`text` with lone surrogates (JSON's ``\\ud800``) as U+FFFD, so that it encodes."""
    return _SURROGATE.sub("\ufffd", text)


def _text(line: str | bytes) -> str:
    try:
        return decode_line(line)
    except ValueError:  # neither str nor bytes
        return ""


# --- joining split lines ----------------------------------------------------------------------


@dataclass
class _Pending:
    parts: list[str]
    size: int
    ts: float | None


class LineJoiner:
    """Pieces in, whole lines out: the partial pieces of a stream are held and joined with the
    piece that ends them. A joined line is cut at `limit` characters.

    The time of a joined line is the time of its first piece (when the line began).
    """

    def __init__(self, limit: int = MAX_JOINED):
        self._limit = limit
        self._pending: dict[str, _Pending] = {}

    def feed(self, piece: Piece) -> list[Piece]:
        """The whole lines `piece` completes: none while it is partial, else one."""
        pending = self._pending.pop(piece.stream, None)
        if pending is None:
            pending = _Pending([], 0, piece.ts)
        room = self._limit - pending.size
        if room > 0:
            part = piece.text[:room]
            pending.parts.append(part)
            pending.size += len(part)
        if piece.partial:
            self._pending[piece.stream] = pending
            return []
        return [Piece("".join(pending.parts), pending.ts, piece.stream)]

    def flush(self) -> list[Piece]:
        """The lines still waiting for their end (the log ended in the middle of one)."""
        lines = [Piece("".join(p.parts), p.ts, stream) for stream, p in self._pending.items()]
        self._pending.clear()
        return lines

    @property
    def pending(self) -> bool:
        return bool(self._pending)
