"""One line of Ollama's log → `LogRecord`.

A line may carry a transport prefix (journalctl ``short``/``short-iso``/``short-precise``/
``short-monotonic``, a syslog file, a container viewer's timestamp), then one of Ollama's own
shapes (docs/ollama.md#log-format):

- slog TextHandler: ``time=… level=… source=… msg=… key=value …`` (0.1.25+);
- Go ``log``: ``YYYY/MM/DD HH:MM:SS file.go:LINE: message`` (≤ 0.1.20);
- slog bridged to ``log``: ``YYYY/MM/DD HH:MM:SS file.go:LINE: LEVEL message key=value``;
- anything else (llama.cpp, Go crash traces, the loader, ``[GIN]`` lines) is *unprefixed*: its
  text is the message.

`parse_line` accepts any str or bytes and always returns a record; only the strict helpers
(`parse_slog`, `go_unquote` with ``strict=True``) raise `LogFormatError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from types import MappingProxyType

FORM_SLOG = "slog"
FORM_GOLOG = "golog"
FORM_BRIDGED = "bridged"
FORM_UNPREFIXED = "unprefixed"

LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")


class LogFormatError(ValueError):
    """Text is not in the log shape a strict parser was asked to read."""


@dataclass(frozen=True)
class Transport:
    """What a log transport (journalctl, syslog, a container viewer) put before the record.

    `ts` is set only where the prefix names an instant on its own (ISO forms with an offset);
    ``short`` lacks the year and zone, ``short-monotonic`` counts from boot.
    """

    style: str
    pid: int | None = None
    ts: float | None = None
    host: str | None = None
    ident: str | None = None


@dataclass(frozen=True)
class LogRecord:
    """One log record.

    `ts` is the record's own time (unix seconds), `transport_ts` the transport's where it is
    unambiguous; naive times (Go ``log``, ``[GIN]``) are read in the caller's `local_tz`.
    `attrs` holds the slog attributes after ``msg`` in line order; a repeated key keeps its
    last value. `structured` is true for slog, Go-log and bridged records.
    """

    ts: float | None
    level: str | None
    source: str | None
    msg: str
    attrs: Mapping[str, str] = field(default_factory=dict)
    structured: bool = False
    transport_pid: int | None = None
    raw: str = ""
    transport_ts: float | None = None
    form: str = FORM_UNPREFIXED

    def __post_init__(self) -> None:
        object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))


# --- decoding ---------------------------------------------------------------------------------


def decode_line(line: str | bytes | bytearray | memoryview) -> str:
    """The text of one line without its line terminator; invalid UTF-8 becomes U+FFFD."""
    if isinstance(line, str):
        text = line
    elif isinstance(line, bytes | bytearray | memoryview):
        text = bytes(line).decode("utf-8", errors="replace")
    else:
        raise LogFormatError(f"a log line is str or bytes, not {type(line).__name__}")
    return text.rstrip("\r\n")


# --- timestamps -------------------------------------------------------------------------------

_ISO_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?"
    r"(Z|[+-]\d\d(?::?\d\d)?)?"
)


def _offset(text: str | None, local_tz: tzinfo) -> tzinfo:
    if not text:
        return local_tz
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + int(digits[2:4] or "0")
    return timezone(sign * timedelta(minutes=minutes))


def _instant(fields: tuple[str | None, ...], fraction: str | None, zone: tzinfo) -> float | None:
    """Unix seconds of a broken-down local time; None when the fields name no real time."""
    try:
        year, month, day, hour, minute, second = (int(f or "0") for f in fields)
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=zone).timestamp()
    except (ValueError, OverflowError):
        return None


def parse_timestamp(text: str, local_tz: tzinfo = UTC) -> float | None:
    """Unix seconds of an RFC 3339 / slog time (``2025-06-10T08:15:02.114+02:00``), else None.

    Without an offset the time is read in `local_tz`. Sub-microsecond digits are dropped.
    """
    m = _ISO_TIME.fullmatch(text)
    if m is None:
        return None
    try:
        zone = _offset(m.group(8), local_tz)
    except ValueError:
        return None
    return _instant(m.groups()[:6], m.group(7), zone)


# --- Go quoting -------------------------------------------------------------------------------

_QUOTED = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_ESCAPE = re.compile(
    r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([0-7]{3})|(.))", re.DOTALL
)
_SIMPLE_ESCAPES = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
    '"': b'"',
    "'": b"'",
}
_REPLACEMENT = "\ufffd".encode()


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")


def _escape_bytes(m: re.Match[str], strict: bool) -> bytes:
    hex_byte, u4, u8, octal, simple = m.groups()
    if hex_byte is not None:
        return bytes([int(hex_byte, 16)])
    if octal is not None:
        value = int(octal, 8)
        return bytes([value]) if value < 256 else _REPLACEMENT
    if u4 is not None or u8 is not None:
        point = int(u4 or u8, 16)
        if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
            return _REPLACEMENT
        return chr(point).encode()
    if simple in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[simple]
    if strict:
        raise LogFormatError(f"unknown escape \\{simple}")
    return _utf8("\\" + simple)


def go_unquote(quoted: str, *, strict: bool = False) -> str:
    """The value of a Go ``strconv.Quote`` string literal, quotes included in `quoted`.

    ``\\xNN`` escapes are bytes (Go quotes invalid UTF-8 that way); the result is decoded as
    UTF-8 with U+FFFD for what is not. Unknown escapes are kept literally unless `strict`.
    """
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
        raise LogFormatError("not a quoted string")
    body = quoted[1:-1]
    if "\\" not in body:
        return body
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(body):
        out += _utf8(body[pos : m.start()])
        out += _escape_bytes(m, strict)
        pos = m.end()
    out += _utf8(body[pos:])
    return out.decode("utf-8", errors="replace")


# --- slog TextHandler -------------------------------------------------------------------------

_BARE_KEY = re.compile(r'[^\s="]+')
_BARE_VALUE = re.compile(r"\S*")
_SPACES = re.compile(r" +")
_KEY_START = re.compile(r'(?:[^\s="]+|"[^"\\]*(?:\\.[^"\\]*)*")=', re.DOTALL)
_BUILTIN_KEYS = ("time", "level", "source", "msg")


def _scan_key(text: str, pos: int) -> tuple[str, int]:
    if text.startswith('"', pos):
        m = _QUOTED.match(text, pos)
        if m is None:
            raise LogFormatError(f"unterminated quoted key at column {pos}")
        return go_unquote(m.group()), m.end()
    m = _BARE_KEY.match(text, pos)
    if m is None:
        raise LogFormatError(f"expected a key at column {pos}")
    return m.group(), m.end()


def _scan_value(text: str, pos: int) -> tuple[str, int]:
    if text.startswith('"', pos):
        m = _QUOTED.match(text, pos)
        if m is None:
            raise LogFormatError(f"unterminated quoted value at column {pos}")
        return go_unquote(m.group()), m.end()
    m = _BARE_VALUE.match(text, pos)
    assert m is not None  # \S* always matches
    return m.group(), m.end()


def scan_pairs(text: str, pos: int = 0, starts: list[int] | None = None) -> list[tuple[str, str]]:
    """Every ``key=value`` pair of `text` from `pos` on, in order; `LogFormatError` otherwise.

    If `starts` is given, the position where each pair starts is appended to it.
    """
    pairs: list[tuple[str, str]] = []
    end = len(text)
    while True:
        gap = _SPACES.match(text, pos)
        if gap is not None:
            pos = gap.end()
        if pos >= end:
            return pairs
        if gap is None and pairs:
            raise LogFormatError(f"expected a space at column {pos}")
        if starts is not None:
            starts.append(pos)
        key, pos = _scan_key(text, pos)
        if not text.startswith("=", pos):
            raise LogFormatError(f"expected '=' after key {key!r} at column {pos}")
        value, pos = _scan_value(text, pos + 1)
        pairs.append((key, value))


@dataclass(frozen=True)
class SlogRecord:
    """The parts of one slog TextHandler line."""

    time: str | None
    level: str | None
    source: str | None
    msg: str
    attrs: tuple[tuple[str, str], ...]


def parse_slog(text: str) -> SlogRecord:
    """Read a slog TextHandler line (``time=… level=… source=… msg=… k=v …``).

    The built-in keys are taken from the head of the line in slog's order (each may be absent);
    everything after them is an attribute. Raises `LogFormatError` if `text` is not such a line.
    """
    if not text.startswith("time="):
        raise LogFormatError("a slog line starts with time=")
    pairs = scan_pairs(text)
    builtins: dict[str, str] = {}
    rest = 0
    for name in _BUILTIN_KEYS:
        if rest < len(pairs) and pairs[rest][0] == name:
            builtins[name] = pairs[rest][1]
            rest += 1
    return SlogRecord(
        time=builtins.get("time"),
        level=builtins.get("level"),
        source=builtins.get("source"),
        msg=builtins.get("msg", ""),
        attrs=tuple(pairs[rest:]),
    )


# --- Go log and the bridged form ---------------------------------------------------------------

_GOLOG = re.compile(
    r"(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? (?:(\S+?\.go:\d{1,9}): )?"
)
_BRIDGED_LEVEL = re.compile(r"(TRACE|DEBUG|INFO|WARN|ERROR)(?:[+-]\d{1,3})? ")
# Bridged records print the message bare, then " key=value" pairs: the boundary is guessed by
# trying the first few " key=" positions. Real messages are a few words long.
_MAX_BOUNDARY_TRIES = 8


def split_bridged_message(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Split ``message key=value …`` (slog's default handler) into message and attributes."""
    tries = 0
    doomed: set[int] = set()  # pair starts a failed scan went through: they fail again
    pos = text.find(" ")
    while pos != -1 and tries < _MAX_BOUNDARY_TRIES:
        if pos + 1 not in doomed and _KEY_START.match(text, pos + 1):
            tries += 1
            starts: list[int] = []
            try:
                return text[:pos], tuple(scan_pairs(text, pos + 1, starts))
            except LogFormatError:
                doomed.update(starts)
        pos = text.find(" ", pos + 1)
    return text, ()


# --- transport prefixes ------------------------------------------------------------------------

_SYSLOG_TAIL = r" (?P<host>\S+) (?P<ident>[^\s\[\]]+?)(?:\[(?P<pid>\d{1,10})\])?: "
_ISO_PREFIX = r"(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d(?::?\d\d)?))"
_SHORT = re.compile(
    r"(?P<month>\S{1,16}) {1,2}(?P<day>\d{1,2}) (?P<clock>\d\d:\d\d:\d\d)(?P<frac>\.\d{1,9})?"
    + _SYSLOG_TAIL
)
_SHORT_ISO = re.compile(_ISO_PREFIX + _SYSLOG_TAIL)
_SHORT_MONOTONIC = re.compile(r"\[ *(?P<mono>\d{1,12}\.\d{1,9})\]" + _SYSLOG_TAIL)
_CONTAINER = re.compile(_ISO_PREFIX + " ")


def split_transport(text: str) -> tuple[Transport | None, str]:
    """Remove a transport prefix; returns it (or None) and the record text."""
    for style, pattern in (
        ("short-iso", _SHORT_ISO),
        ("short-monotonic", _SHORT_MONOTONIC),
        ("short", _SHORT),
    ):
        m = pattern.match(text)
        if m is not None:
            return _syslog_transport(style, m), text[m.end() :]
    m = _CONTAINER.match(text)
    if m is not None:
        return Transport("container", ts=parse_timestamp(m.group("iso"))), text[m.end() :]
    return None, text


def _syslog_transport(style: str, m: re.Match[str]) -> Transport:
    groups = m.groupdict()
    ts = parse_timestamp(groups["iso"]) if groups.get("iso") else None
    if style == "short" and groups.get("frac"):
        style = "short-precise"
    if style == "short-iso" and "." in groups["iso"]:
        style = "short-iso-precise"
    pid = int(groups["pid"]) if groups["pid"] else None
    return Transport(style, pid=pid, ts=ts, host=groups["host"], ident=groups["ident"])


# --- one line ----------------------------------------------------------------------------------

_GIN = re.compile(r"\[GIN\] (\d{4})/(\d\d)/(\d\d) - (\d\d):(\d\d):(\d\d) \|")


def parse_line(
    line: str | bytes,
    *,
    local_tz: tzinfo = UTC,
    strip_transport: bool = True,
) -> LogRecord:
    """Parse one log line of any Ollama era; never raises for str or bytes input.

    `strip_transport=False` is for text that is known to be a bare record (journald's
    ``MESSAGE``), so that no record text is mistaken for a prefix.
    """
    text = decode_line(line)
    transport, body = split_transport(text) if strip_transport else (None, text)
    record = _parse_body(body, local_tz)
    if transport is None:
        return replace(record, raw=text)
    return replace(record, raw=text, transport_pid=transport.pid, transport_ts=transport.ts)


def _parse_body(body: str, local_tz: tzinfo) -> LogRecord:
    if body.startswith("time="):
        try:
            return _slog_record(parse_slog(body), local_tz)
        except LogFormatError:
            pass
    m = _GOLOG.match(body)
    if m is not None:
        return _golog_record(m, body[m.end() :], local_tz)
    return _unprefixed_record(body, local_tz)


def _slog_record(slog: SlogRecord, local_tz: tzinfo) -> LogRecord:
    return LogRecord(
        ts=parse_timestamp(slog.time, local_tz) if slog.time is not None else None,
        level=slog.level,
        source=slog.source,
        msg=slog.msg,
        attrs=dict(slog.attrs),
        structured=True,
        form=FORM_SLOG,
    )


def _golog_record(m: re.Match[str], rest: str, local_tz: tzinfo) -> LogRecord:
    ts = _instant(m.groups()[:6], m.group(7), local_tz)
    source = m.group(8)
    level_match = _BRIDGED_LEVEL.match(rest) if source is not None else None
    if level_match is None:
        return LogRecord(ts, None, source, rest, structured=True, form=FORM_GOLOG)
    msg, attrs = split_bridged_message(rest[level_match.end() :])
    return LogRecord(
        ts, level_match.group(1), source, msg, dict(attrs), structured=True, form=FORM_BRIDGED
    )


def _unprefixed_record(body: str, local_tz: tzinfo) -> LogRecord:
    ts = None
    gin = _GIN.match(body)
    if gin is not None:
        ts = _instant(gin.groups(), None, local_tz)
    return LogRecord(ts, None, None, body)
