"""One line of ``journalctl -o json`` → `JournalEntry`.

journald's JSON export gives every field as a string, except that a value which is not valid
UTF-8 or holds control characters is an array of byte values, a field that occurs more than
once is an array of its values, and a value over 4096 bytes is ``null`` unless journalctl ran
with ``--all``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class JournalFormatError(ValueError):
    """The line is not a journald JSON object, or its ``MESSAGE`` has an impossible shape."""


@dataclass(frozen=True)
class JournalEntry:
    """The fields of one journal entry that vgpumon reads.

    `message` is str when journald exported text, bytes when it exported a byte array, and
    None when journalctl left it out (over 4096 bytes without ``--all``) or it was absent.
    A repeated ``MESSAGE`` is joined with newlines.
    """

    message: bytes | str | None
    realtime_ts: float | None
    pid: int | None
    priority: int | None
    unit: str | None
    cursor: str | None
    identifier: str | None = None


_DECIMAL = re.compile(r"\d{1,20}")


def parse_journal_json(line: bytes | str) -> JournalEntry:
    """Parse one line of ``journalctl -o json``; `JournalFormatError` if it is not one."""
    fields = _load_object(line)
    return JournalEntry(
        message=_message(fields.get("MESSAGE")),
        realtime_ts=_microseconds(fields.get("__REALTIME_TIMESTAMP")),
        pid=_integer(fields.get("_PID")),
        priority=_integer(fields.get("PRIORITY")),
        unit=_text(fields.get("_SYSTEMD_UNIT")) or _text(fields.get("_SYSTEMD_USER_UNIT")),
        cursor=_text(fields.get("__CURSOR")),
        identifier=_text(fields.get("SYSLOG_IDENTIFIER")),
    )


def looks_like_journal_json(line: bytes | str) -> bool:
    """True if `line` is a JSON object with journald's fields (not some other JSON log)."""
    try:
        fields = _load_object(line)
    except JournalFormatError:
        return False
    return "MESSAGE" in fields or "__CURSOR" in fields or "__REALTIME_TIMESTAMP" in fields


def _load_object(line: bytes | str) -> Mapping[str, Any]:
    if not isinstance(line, bytes | str):
        raise JournalFormatError(f"a journal line is str or bytes, not {type(line).__name__}")
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise JournalFormatError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise JournalFormatError("a journal entry is a JSON object")
    return value


def _byte_array(value: list[Any]) -> bytes:
    if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
        raise JournalFormatError("MESSAGE array holds something other than byte values")
    return bytes(value)


def _message(value: Any) -> bytes | str | None:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise JournalFormatError(f"MESSAGE is a {type(value).__name__}")
    if all(isinstance(v, int) for v in value) and value:
        return _byte_array(value)
    parts = [_message_part(v) for v in value]
    if all(isinstance(p, str) for p in parts):
        return "\n".join(p for p in parts if isinstance(p, str))
    return b"\n".join(_as_bytes(p) for p in parts)


def _as_bytes(part: bytes | str) -> bytes:
    return part.encode("utf-8", errors="replace") if isinstance(part, str) else part


def _message_part(value: Any) -> bytes | str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _byte_array(value)
    raise JournalFormatError(f"repeated MESSAGE holds a {type(value).__name__}")


def _text(value: Any) -> str | None:
    """A field's text; the first value of a repeated field; bytes decoded leniently."""
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        try:
            return _byte_array(value).decode("utf-8", errors="replace")
        except JournalFormatError:
            return None
    return None


def _integer(value: Any) -> int | None:
    text = _text(value)
    if text is None or not _DECIMAL.fullmatch(text):
        return None
    return int(text)


def _microseconds(value: Any) -> float | None:
    micros = _integer(value)
    return None if micros is None else micros / 1_000_000
