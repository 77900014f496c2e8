"""What other processes hand vgpumon is shown bounded and inert: the escaper, the clippers,
the log formatter the CLI installs, the daemon's logfmt fields and the event timeline."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from vgpumon.cli import LOG_FORMAT
from vgpumon.daemon.loop import LOG_FIELD_CHARS, _fields
from vgpumon.model.events import Event
from vgpumon.model.timeline import format_event, format_timeline
from vgpumon.model.untrusted import (
    InertFormatter,
    clip,
    clip_argv,
    clip_runs,
    escape,
    has_unsafe,
    json_inert,
)

C0 = [chr(c) for c in range(0x20)]
C1 = [chr(c) for c in range(0x80, 0xA0)]
DEL = "\x7f"
FORGED = "blob\ntime=2025-01-01T00:00:00 level=ERROR logger=vgpumon msg=forged"
CURSOR = "\x1b[1A\x1b[2K\r[ ok ] shims.links: all good"


def visible(text: str) -> bool:
    """Nothing in `text` a terminal acts on: only printable characters and spaces."""
    return all(c == " " or c.isprintable() for c in text)


@pytest.mark.parametrize("char", [*C0, DEL, *C1], ids=lambda c: f"U+{ord(c):04X}")
def test_every_control_character_is_escaped_visibly(char):
    shown = escape(f"a{char}b")
    assert shown.startswith("a\\") and shown.endswith("b") and len(shown) > 3
    assert visible(shown)
    assert has_unsafe(f"a{char}b")


@pytest.mark.parametrize(("raw", "shown"), [
    ("line\nnext", "line\\nnext"),
    ("cr\rlf", "cr\\rlf"),
    ("tab\there", "tab\\there"),
    ("\x1b[2K", "\\x1b[2K"),
    ("\x00\x01\x1f", "\\x00\\x01\\x1f"),
    ("del\x7f", "del\\x7f"),
    ("csi\x9b2J", "csi\\x9b2J"),
    ("nel\x85", "nel\\x85"),
    ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
    ("rlo\u202eevil", "rlo\\u202eevil"),
    ("isolate\u2066x\u2069", "isolate\\u2066x\\u2069"),
    ("bad byte \udcff", "bad byte \\xff"),  # surrogateescape of a byte that is not UTF-8
])
def test_escape_forms(raw, shown):
    assert escape(raw) == shown


@pytest.mark.parametrize("text", ["", "plain ascii", "ünïcödé 中文 ✓", "C:\\path\\x", "a=b \"q\""])
def test_escape_leaves_printable_text_alone(text):
    assert escape(text) == text and not has_unsafe(text)


def test_clip_keeps_short_text_and_says_how_much_it_left_out():
    assert clip("short", 10) == "short"
    assert clip("x" * 300, 256) == "x" * 256 + "…(+44 chars)"


def test_clip_argv_bounds_the_joined_length():
    argv = ("ollama", "runner", "a" * 10_000, "b" * 10_000)
    kept = clip_argv(argv, 4096)
    assert kept[:2] == ("ollama", "runner")
    assert len(" ".join(kept)) < 4096 + 30 and kept[-1].endswith("chars)")
    assert len(kept) == 3  # what came after the clipped argument is counted, not kept
    total = len(" ".join(argv))
    cut = len(" ".join(kept)) - len(kept[-1][kept[-1].index("…"):])
    assert kept[-1].endswith(f"…(+{total - cut} chars)")
    assert clip_argv(("a", "b"), 3) == ("a", "b")


def test_clip_runs_clips_each_long_token_only():
    text = "GGML_BACKEND_PATH=" + "x" * 1000 + " is set, see " + "/p" * 10
    shown = clip_runs(text, 256)
    assert shown.startswith("GGML_BACKEND_PATH=" + "x" * 238 + "…(+762 chars) is set, see ")
    assert shown.endswith("/p" * 10)


def test_json_inert_is_the_same_document_without_raw_terminal_controls():
    document = {"finding": "x\x9b2J\x7f\u202e\udcff\n\x1b é"}
    text = json_inert(json.dumps(document, ensure_ascii=False))
    assert visible(text) and "é" in text
    assert json.loads(text) == document


def _formatted(message: str, *args: object, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(InertFormatter(LOG_FORMAT))
    logger = logging.getLogger("vgpumon.test_untrusted")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        if exc:
            try:
                raise ValueError(FORGED)
            except ValueError:
                logger.exception(message, *args)
        else:
            logger.warning(message, *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_a_log_record_with_a_newline_in_its_arguments_is_one_line():
    out = _formatted("process started model=%s path=%s", FORGED, CURSOR)
    assert out.count("\n") == 1 and out.endswith("\n")
    line = out.rstrip("\n")
    assert line.startswith("time=") and "level=WARNING" in line
    assert "model=blob\\ntime=2025" in line and "\\x1b[1A\\x1b[2K\\r[ ok ]" in line
    assert visible(line)


def test_a_traceback_keeps_its_lines_but_none_can_pass_for_a_record():
    out = _formatted("handler failed source=%s", "x\ny", exc=True)
    lines = out.rstrip("\n").split("\n")
    assert lines[0].startswith("time=") and "source=x\\ny" in lines[0]
    assert any("Traceback" in line for line in lines[1:])
    assert all(line.startswith("  ") for line in lines[1:])  # indented: not a record
    # The exception's own text keeps its newline, but its forged line is indented.
    assert "  ValueError: blob" in lines and any(
        line.startswith("  time=2025") for line in lines)


def test_daemon_event_fields_quote_and_escape_what_a_process_chose():
    event = Event(0.0, "process_started", {
        "group": "runner", "pid": 42, "model": FORGED, "path": CURSOR, "empty": "",
        "quoted": 'say "hi"', "bare": "C:\\dir", "long": "z" * (LOG_FIELD_CHARS * 3)})
    text = _fields(event)
    assert "\n" not in text and visible(text)
    assert "group=runner pid=42 " in text
    assert 'model="blob\\ntime=2025-01-01T00:00:00 level=ERROR' in text
    assert 'path="\\x1b[1A\\x1b[2K\\r[ ok ] shims.links: all good"' in text
    assert 'empty="" quoted="say \\"hi\\""' in text and "bare=C:\\dir" in text
    assert len(text) < LOG_FIELD_CHARS * 2  # the long value is clipped


def test_timeline_lines_are_single_and_visible():
    events = [
        Event(1.5, "runner_exited", {"model": "m\x1b[2K", "reason": "crash", "message": FORGED}),
        Event(2.0, "process_started", {"group": "runner", "pid": 7, "model": CURSOR}),
        Event(3.0, "odd\x1b]0;title\x07", {"message": "\x9b31m red \u202e"}),
        Event(4.0, "gpu_discovered", {"name": "H100\x85x", "id": "GPU-1"}),
    ]
    lines = list(format_timeline(events))
    assert len(lines) == len(events)
    for line in lines:
        assert "\n" not in line and visible(line), line
    assert 'model="m\\u001b[2K"' in lines[0] and 'message="blob\\ntime=' in lines[0]
    assert "odd\\x1b]0;title\\x07" in lines[2]
    assert 'name="H100\\u0085x"' in lines[3]
    assert format_event(events[1]) == lines[1]


def test_the_cli_installs_the_inert_formatter(monkeypatch):
    from vgpumon import cli

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        cli.setup_logging("info")
        logging.getLogger("vgpumon.test").info("value=%s", FORGED)
        assert stream.getvalue().count("\n") == 1 and "value=blob\\ntime=" in stream.getvalue()
    finally:
        root.handlers[:] = saved
