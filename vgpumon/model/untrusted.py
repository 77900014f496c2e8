"""Text another process handed us, made bounded and inert before a human or a log sees it.

vgpumon often runs as root and shows what other, possibly hostile, local processes chose:
their command lines, environments, paths, log lines. These helpers keep that harmless
(docs/reliability.md#untrusted-text):

- `escape` turns every character that could move a terminal's cursor, end a log line or hide
  text into a visible backslash form (``\\n``, ``\\x1b``, ``\\u202e``), so one record stays
  one line and a report shows exactly what was there; `json_inert` does the same for JSON
  written with ``ensure_ascii=False``;
- `clip` keeps at most a given number of characters and says how much it left out
  (``…(+N chars)``); `clip_argv` does it to an argv, `clip_runs` to each long run of
  non-space characters in a text.

`InertFormatter` is the logging formatter the CLI installs: it escapes every log message, so
no call site can forget to.
"""

from __future__ import annotations

import logging
import re

# C0 controls (newline, carriage return, ESC, tab …), DEL, C1 controls (the 8-bit CSI
# \x9b among them), the Unicode line and paragraph separators, the bidirectional embedding,
# override and isolate marks (they reorder what a terminal shows), and lone surrogates (bytes
# that were not UTF-8, kept by surrogateescape; they cannot be printed as they are).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

CLIP_MARKER = "…(+{} chars)"


def _replacement(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): show the byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every control character in a visible backslash form: ``\\n``, ``\\r``,
    ``\\t``, ``\\xNN`` for the other C0 and C1 controls and DEL (and for a byte that was not
    UTF-8), ``\\uNNNN`` for line separators and bidirectional marks. Nothing else changes."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_replacement, text)


_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def json_inert(document: str) -> str:
    """JSON text written with ``ensure_ascii=False``, with what JSON may leave raw but a
    terminal acts on (DEL, C1 controls, line separators, bidirectional marks) or cannot print
    (lone surrogates) as ``\\uNNNN`` escapes: the same document, decoded."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", document)


def has_unsafe(text: str) -> bool:
    """Whether `escape` would change `text`."""
    return _UNSAFE.search(text) is not None


def clip(text: str, limit: int) -> str:
    """At most `limit` characters of `text`, then a marker ``…(+N chars)`` for the rest."""
    if len(text) <= limit:
        return text
    return text[:limit] + CLIP_MARKER.format(len(text) - limit)


def clip_runs(text: str, limit: int) -> str:
    """`text` with every run of more than `limit` non-space characters (an argument, a
    path, a variable's value) clipped to `limit` and `clip`'s marker."""
    if len(text) <= limit:
        return text
    # Tried only where a run starts (the lookbehind): linear in the text.
    return re.sub(rf"(?<!\S)\S{{{limit + 1},}}", lambda m: clip(m.group(), limit), text)


def clip_argv(argv: tuple[str, ...], limit: int) -> tuple[str, ...]:
    """The leading arguments of `argv` up to `limit` characters in all (counting one space
    between two), the one that crosses the limit clipped with `clip`'s marker, the rest left
    out and counted in that marker."""
    total = sum(len(arg) for arg in argv) + max(len(argv) - 1, 0)
    if total <= limit:
        return argv
    kept: list[str] = []
    used = 0  # characters kept so far, with the space after each
    for arg in argv:
        room = limit - used
        if len(arg) <= room:
            kept.append(arg)
            used += len(arg) + 1
            continue
        cut = max(room, 0)
        kept.append(arg[:cut] + CLIP_MARKER.format(total - used - cut))
        break
    return tuple(kept)


class InertFormatter(logging.Formatter):
    """A `logging.Formatter` that escapes the message (`escape`): a value with a newline
    cannot start a forged record, an escape sequence cannot reach the terminal. A traceback
    keeps its lines, each escaped and indented, so none of them reads as a record (formatted
    here, not taken from the record, where another handler may have left it unindented)."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if record.exc_info:
            text += "\n" + _indented(self.formatException(record.exc_info))
        elif record.exc_text:
            text += "\n" + _indented(record.exc_text)
        if record.stack_info:
            text += "\n" + _indented(self.formatStack(record.stack_info))
        return text


def _indented(text: str) -> str:
    return "\n".join("  " + escape(line) for line in text.split("\n"))
