"""vgpumon.ollama.journal: one line of `journalctl -o json` → JournalEntry."""

from __future__ import annotations

import json

import pytest

from vgpumon.ollama.journal import (
    JournalFormatError,
    looks_like_journal_json,
    parse_journal_json,
)

SLOG = (
    "time=2025-06-10T08:15:02.114Z level=INFO source=routes.go:1301 "
    'msg="Listening on 127.0.0.1:11434 (version 0.9.6)"'
)


def entry_json(**fields: object) -> str:
    base = {
        "__CURSOR": "s=0123abcd;i=1f2;b=77aa;m=5f5e100;t=61e5b3a0b8f90;x=9c1",
        "__REALTIME_TIMESTAMP": "1749543302114532",
        "__MONOTONIC_TIMESTAMP": "100000000",
        "_BOOT_ID": "77aa",
        "PRIORITY": "6",
        "SYSLOG_FACILITY": "3",
        "SYSLOG_IDENTIFIER": "ollama",
        "_PID": "4100",
        "_UID": "998",
        "_COMM": "ollama",
        "_EXE": "/usr/local/bin/ollama",
        "_CMDLINE": "/usr/local/bin/ollama serve",
        "_SYSTEMD_UNIT": "ollama.service",
        "_TRANSPORT": "stdout",
        "MESSAGE": SLOG,
    }
    base.update(fields)
    return json.dumps(base)


def test_text_message_and_fields():
    entry = parse_journal_json(entry_json())
    assert entry.message == SLOG
    assert entry.realtime_ts == 1749543302.114532
    assert entry.pid == 4100
    assert entry.priority == 6
    assert entry.unit == "ollama.service"
    assert entry.cursor.startswith("s=0123abcd")
    assert entry.identifier == "ollama"


def test_bytes_input_is_accepted():
    assert parse_journal_json(entry_json().encode()).pid == 4100


def test_byte_array_message_for_invalid_utf8():
    raw = b"load_tensors: \xff offloaded 23/63 layers to GPU"
    entry = parse_journal_json(entry_json(MESSAGE=list(raw)))
    assert entry.message == raw


def test_byte_array_message_for_control_characters():
    raw = b"\x1b[0mggml_cuda_init: found 1 CUDA devices:"
    assert parse_journal_json(entry_json(MESSAGE=list(raw))).message == raw


def test_null_message_over_4096_bytes_without_all():
    assert parse_journal_json(entry_json(MESSAGE=None)).message is None


def test_repeated_message_strings_are_joined():
    entry = parse_journal_json(entry_json(MESSAGE=["first", "second"]))
    assert entry.message == "first\nsecond"


def test_repeated_message_with_a_byte_array_is_bytes():
    entry = parse_journal_json(entry_json(MESSAGE=["first", list(b"\xff")]))
    assert entry.message == b"first\n\xff"


def test_missing_fields_are_none():
    entry = parse_journal_json('{"MESSAGE": "x"}')
    assert entry == type(entry)("x", None, None, None, None, None, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [("_PID", "not a pid"), ("_PID", "1" * 5000), ("PRIORITY", ""), ("_PID", 7)],
)
def test_bad_numeric_fields_are_none(field, value):
    entry = parse_journal_json(entry_json(**{field: value}))
    assert (entry.pid if field == "_PID" else entry.priority) is None


def test_user_unit_when_no_system_unit():
    line = entry_json(_SYSTEMD_UNIT=None, _SYSTEMD_USER_UNIT="ollama.service")
    assert parse_journal_json(line).unit == "ollama.service"


@pytest.mark.parametrize(
    "line",
    [
        "",
        "not json",
        "Jun 10 08:15:02 host ollama[1]: hi",
        "[1, 2]",
        '"string"',
        '{"MESSAGE": 5}',
        '{"MESSAGE": [300]}',
        '{"MESSAGE": [{"a": 1}]}',
        b"\xff\xfe{",
        "[" * 100_000,
    ],
)
def test_not_a_journal_entry(line):
    with pytest.raises(JournalFormatError):
        parse_journal_json(line)


def test_looks_like_journal_json():
    assert looks_like_journal_json(entry_json())
    assert not looks_like_journal_json('{"timestamp":1701424805,"level":"INFO","message":"x"}')
    assert not looks_like_journal_json("plain text")
