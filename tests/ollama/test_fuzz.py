"""Property tests: the Ollama parsers take any input and raise only their documented error."""

from __future__ import annotations

import contextlib
import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ollama import test_interpret as samples
from vgpumon.model.events import Event
from vgpumon.ollama import exits
from vgpumon.ollama.api import ApiFormatError, parse_ps, parse_version
from vgpumon.ollama.interpret import KINDS, LogInterpreter
from vgpumon.ollama.journal import JournalFormatError, parse_journal_json
from vgpumon.ollama.logline import LogRecord, go_unquote, parse_line
from vgpumon.ollama.manifests import blob_digest_from_model_arg, model_blob_of_manifest
from vgpumon.ollama.replay import FORMATS, detect_format, format_timeline, replay

# Inputs up to a megabyte-ish make timing meaningless; no per-example deadline.
relaxed = settings(deadline=None)

lines = st.one_of(st.text(), st.binary())

# --- Go quoting as slog writes it (strconv.Quote), to round-trip through the parser ----------

_SIMPLE = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\t": "\\t",
    "\r": "\\r",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\v": "\\v",
}


def go_quote(text: str) -> str:
    out = []
    for ch in text:
        if ch in _SIMPLE:
            out.append(_SIMPLE[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def slog_value(text: str) -> str:
    needs_quoting = text == "" or any(
        ch.isspace() or ch in '="' or not ch.isprintable() for ch in text
    )
    return go_quote(text) if needs_quoting else text


@relaxed
@given(st.text())
def test_go_unquote_inverts_go_quote(text):
    assert go_unquote(go_quote(text)) == text


@relaxed
@given(st.text(), st.lists(st.tuples(st.text(min_size=1), st.text()), max_size=8))
def test_slog_line_round_trips(msg, pairs):
    line = "time=2025-06-10T08:15:02.114Z level=INFO source=x.go:1 msg=" + slog_value(msg)
    line += "".join(f" {slog_value(k)}={slog_value(v)}" for k, v in pairs)
    record = parse_line(line)
    assert record.structured
    assert record.msg == msg
    assert dict(record.attrs) == dict(pairs)


# --- nothing but the documented error --------------------------------------------------------


@relaxed
@given(lines)
def test_parse_line_never_raises(line):
    record = parse_line(line)
    assert isinstance(record.msg, str)
    assert record.ts is None or math.isfinite(record.ts)


@relaxed
@given(lines)
def test_parse_line_after_a_journal_prefix_never_raises(line):
    prefix = "Jun 10 08:15:02 gpu-node-3 ollama[4100]: "
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    assert parse_line(prefix + text).transport_pid == 4100


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
journal_like = st.dictionaries(
    st.sampled_from(
        [
            "MESSAGE",
            "_PID",
            "PRIORITY",
            "__REALTIME_TIMESTAMP",
            "__CURSOR",
            "_SYSTEMD_UNIT",
            "SYSLOG_IDENTIFIER",
        ]
    ),
    json_values | st.lists(st.integers(-5, 300)),
)


@relaxed
@given(lines | json_values.map(json.dumps) | journal_like.map(json.dumps))
def test_parse_journal_json_raises_only_its_error(line):
    try:
        entry = parse_journal_json(line)
    except JournalFormatError:
        return
    assert entry.message is None or isinstance(entry.message, bytes | str)


ps_like = st.fixed_dictionaries(
    {
        "models": st.none()
        | st.lists(
            st.dictionaries(
                st.sampled_from(
                    [
                        "name",
                        "model",
                        "size",
                        "size_vram",
                        "digest",
                        "expires_at",
                        "context_length",
                        "details",
                    ]
                ),
                json_values,
            ),
            max_size=3,
        )
    }
)


@relaxed
@given(
    st.binary()
    | json_values.map(lambda v: json.dumps(v).encode())
    | ps_like.map(lambda v: json.dumps(v).encode())
)
def test_api_parsers_raise_only_their_error(body):
    for parse in (parse_ps, parse_version):
        with contextlib.suppress(ApiFormatError):
            parse(body)


@relaxed
@given(st.binary() | json_values.map(lambda v: json.dumps(v).encode()))
def test_manifest_parser_raises_only_value_error(data):
    with contextlib.suppress(ValueError):
        model_blob_of_manifest(data)


@relaxed
@given(st.text())
def test_small_text_helpers_never_raise(text):
    assert exits.classify_exit_text(text).reason in {
        "clean",
        "stopped",
        "error",
        "crash",
        "unknown",
    }
    digest = blob_digest_from_model_arg(text)
    assert digest is None or len(digest) == 64


# --- the interpreter and replay over real lines mixed with noise ------------------------------

KNOWN_LINES = [
    *(line for line, *_ in samples.INFERENCE_COMPUTE),
    *(line for line, *_ in samples.RUNNER_STARTS),
    *(line for line, *_ in samples.ACTUAL_OFFLOADS),
    *(line for line, *_ in samples.ESTIMATES),
    *(line for line, *_ in samples.EXITS),
    *(line for line, *_ in samples.PROBLEMS),
    *(line for trace, _ in samples.GO_CRASHES for line in trace),
    samples.LOADING_MODEL,
    samples.load_request("commit", "[]"),
    samples.EXIT_2,
]
KNOWN_MSGS = sorted({parse_line(line).msg for line in KNOWN_LINES})
KNOWN_KEYS = [
    "cmd",
    "error",
    "request",
    "model layers",
    "sys",
    "string",
    "exit",
    "library",
    "id",
    "name",
    "total",
    "available",
    "variant",
    "layers.offload",
    "layers.model",
    "layers.real",
    "layers.estimate",
    "layers.requested",
    "description",
]
FRAGMENTS = [
    "--model /b/sha256-" + "a" * 64,
    "--port 99999999",
    "exit status 2",
    "signal: killed",
    "GPULayers:[",
    "GPULayers:9[ID:x Layers:",
    "Operation:commit",
    "12.5 GiB",
    "-1",
    "99999999999999999999",
    "process has terminated: ",
    "process no longer running: -1 ",
    "",
]

records = st.builds(
    LogRecord,
    ts=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    level=st.none() | st.sampled_from(["INFO", "WARN", "ERROR", "TRACE"]),
    source=st.none() | st.text(max_size=10),
    msg=st.sampled_from(KNOWN_MSGS) | st.text(),
    attrs=st.dictionaries(
        st.sampled_from(KNOWN_KEYS) | st.text(max_size=5),
        st.sampled_from(FRAGMENTS) | st.text(),
        max_size=5,
    ),
    structured=st.booleans(),
    transport_pid=st.none() | st.integers(0, 2**22),
    raw=st.text(max_size=5),
    transport_ts=st.none() | st.floats(allow_nan=False),
)


def check(events: list[Event]) -> None:
    for event in events:
        assert event.kind in KINDS
        event.to_json()


@relaxed
@given(st.lists(records, max_size=30), st.floats(allow_nan=False, allow_infinity=False))
def test_interpreter_never_raises_on_records(batch, now):
    interpreter = LogInterpreter()
    for record in batch:
        check(interpreter.feed(record, now))
    check(interpreter.flush(now))


@relaxed
@given(st.lists(st.sampled_from(KNOWN_LINES) | lines, max_size=40))
def test_replay_never_raises(batch):
    events = list(replay(line.encode() if isinstance(line, str) else line for line in batch))
    check(events)
    assert len(list(format_timeline(events))) == len(events)
    assert detect_format(batch) in FORMATS


@relaxed
@given(st.lists(st.sampled_from(KNOWN_LINES), min_size=1, max_size=40))
def test_replay_of_journal_json_never_raises(batch):
    wrapped = [json.dumps({"MESSAGE": line, "__REALTIME_TIMESTAMP": "1"}) for line in batch]
    check(list(replay(wrapped)))
