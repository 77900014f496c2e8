"""vgpumon.ollama.logline: one log line of any era and transport → LogRecord."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from vgpumon.ollama.logline import (
    FORM_BRIDGED,
    FORM_GOLOG,
    FORM_SLOG,
    FORM_UNPREFIXED,
    LogFormatError,
    go_unquote,
    parse_line,
    parse_slog,
    parse_timestamp,
    split_bridged_message,
    split_transport,
)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


LISTENING = (
    "time=2025-06-10T08:15:02.114Z level=INFO source=routes.go:1301 "
    'msg="Listening on 127.0.0.1:11434 (version 0.9.6)"'
)

# --- transport prefixes ----------------------------------------------------------------------

TRANSPORTS = [
    # (line, style, pid, transport ts)
    (f"Jun 10 08:15:02 gpu-node-3 ollama[4100]: {LISTENING}", "short", 4100, None),
    (f"Jun  1 08:15:02 gpu-node-3 ollama[4100]: {LISTENING}", "short", 4100, None),
    (f"Jun 10 08:15:02 gpu-node-3 ollama: {LISTENING}", "short", None, None),  # syslog file
    (f"juin 10 08:15:02 gpu-node-3 ollama[7]: {LISTENING}", "short", 7, None),  # fr_FR locale
    (f"Jun 10 08:15:02.114532 gpu-node-3 ollama[4100]: {LISTENING}", "short-precise", 4100, None),
    (
        f"2025-06-10T08:15:02+0000 gpu-node-3 ollama[4100]: {LISTENING}",
        "short-iso",
        4100,
        ts("2025-06-10T08:15:02+00:00"),
    ),
    (
        f"2025-06-10T10:15:02+02:00 gpu-node-3 ollama[4100]: {LISTENING}",
        "short-iso",
        4100,
        ts("2025-06-10T08:15:02+00:00"),
    ),
    (
        f"2025-06-10T08:15:02.114532+0000 gpu-node-3 ollama[4100]: {LISTENING}",
        "short-iso-precise",
        4100,
        ts("2025-06-10T08:15:02.114532+00:00"),
    ),
    (f"[  1234.567890] gpu-node-3 ollama[4100]: {LISTENING}", "short-monotonic", 4100, None),
    (f"[987654.000001] gpu-node-3 ollama[4100]: {LISTENING}", "short-monotonic", 4100, None),
    (
        f"2025-06-10T08:15:02.114532123Z {LISTENING}",  # docker logs -t
        "container",
        None,
        ts("2025-06-10T08:15:02.114532+00:00"),
    ),
]


@pytest.mark.parametrize(("line", "style", "pid", "transport_ts"), TRANSPORTS)
def test_transport_prefix_is_removed_and_recorded(line, style, pid, transport_ts):
    transport, rest = split_transport(line)
    assert transport is not None
    assert transport.style == style
    assert rest == LISTENING
    record = parse_line(line)
    assert record.transport_pid == pid
    assert record.transport_ts == transport_ts
    assert record.structured
    assert record.msg == "Listening on 127.0.0.1:11434 (version 0.9.6)"
    assert record.ts == ts("2025-06-10T08:15:02.114+00:00")
    assert record.raw == line


def test_journal_prefix_host_and_ident():
    transport, _ = split_transport("Jun 10 08:15:02 gpu-node-3 ollama[4100]: x")
    assert (transport.host, transport.ident, transport.pid) == ("gpu-node-3", "ollama", 4100)


@pytest.mark.parametrize(
    "line",
    [
        "load_tensors: offloaded 23/63 layers to GPU",
        "llama_model_load: error loading model: foo: bar",
        "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected",
        "  Device 0: NVIDIA A10, compute capability 8.6, VMM: yes",
        "2024/01/27 08:14:55 dyn_ext_server.go:87: INFO Loading Dynamic llm server: /tmp/x.so",
        "goroutine 7 gp=0xc000102a80 m=5 mp=0xc000100008 [syscall]:",
        LISTENING,
    ],
)
def test_record_text_is_not_mistaken_for_a_transport_prefix(line):
    transport, rest = split_transport(line)
    assert transport is None
    assert rest == line


def test_strip_transport_false_keeps_the_text():
    line = "Jun 10 08:15:02 host ident[1]: hello"
    record = parse_line(line, strip_transport=False)
    assert record.msg == line
    assert record.transport_pid is None


# --- slog TextHandler ------------------------------------------------------------------------

SLOG_LINES = [
    # (line, level, source, msg, attrs)
    (LISTENING, "INFO", "routes.go:1301", "Listening on 127.0.0.1:11434 (version 0.9.6)", {}),
    (
        'time=2025-11-20T09:01:44.870+01:00 level=INFO source=types.go:42 msg="inference '
        'compute" id=GPU-076afa50-fc31-49ca-be1d-f9e53480fe75 filter_id="" library=CUDA '
        'compute=8.6 name=CUDA0 description="NVIDIA A10" libdirs=ollama,cuda_v12 driver=12.8 '
        'pci_id=0000:3b:00.0 type=discrete total="22.1 GiB" available="21.7 GiB"',
        "INFO",
        "types.go:42",
        "inference compute",
        {
            "id": "GPU-076afa50-fc31-49ca-be1d-f9e53480fe75",
            "filter_id": "",
            "library": "CUDA",
            "compute": "8.6",
            "name": "CUDA0",
            "description": "NVIDIA A10",
            "libdirs": "ollama,cuda_v12",
            "driver": "12.8",
            "pci_id": "0000:3b:00.0",
            "type": "discrete",
            "total": "22.1 GiB",
            "available": "21.7 GiB",
        },
    ),
    (  # quoted key
        'time=2025-12-09T13:40:20.500Z level=INFO source=server.go:678 msg="loading model" '
        '"model layers"=37 requested=-1',
        "INFO",
        "server.go:678",
        "loading model",
        {"model layers": "37", "requested": "-1"},
    ),
    (  # bare msg, then an attribute (slog.Info("load", "request", req))
        "time=2025-12-09T13:40:20.912Z level=INFO source=runner.go:1284 msg=load "
        'request="{Operation:commit LoraPath:[] GPULayers:[] ProjectorPath: MainGPU:0}"',
        "INFO",
        "runner.go:1284",
        "load",
        {"request": "{Operation:commit LoraPath:[] GPULayers:[] ProjectorPath: MainGPU:0}"},
    ),
    (  # empty-key group inlined; dotted group keys
        "time=2025-04-22T07:33:50.010Z level=INFO source=server.go:138 msg=offload "
        'library=cuda layers.requested=-1 layers.model=29 layers.offload=29 layers.split="" '
        'memory.available="[21.8 GiB]" memory.required.full="3.4 GiB"',
        "INFO",
        "server.go:138",
        "offload",
        {
            "library": "cuda",
            "layers.requested": "-1",
            "layers.model": "29",
            "layers.offload": "29",
            "layers.split": "",
            "memory.available": "[21.8 GiB]",
            "memory.required.full": "3.4 GiB",
        },
    ),
    (  # escapes: \" \\ \n \t \xNN \uNNNN; printable non-ASCII stays bare
        'time=2025-01-01T00:00:00.000Z level=WARN source=x.go:1 msg="say \\"hi\\"" '
        'path="C:\\\\Users\\\\ollama" text="a\\nb\\tc" ctl="\\x1b[0m" nbsp="\\u00a0" '
        "name=Müller",
        "WARN",
        "x.go:1",
        'say "hi"',
        {
            "path": "C:\\Users\\ollama",
            "text": "a\nb\tc",
            "ctl": "\x1b[0m",
            "nbsp": "\u00a0",
            "name": "Müller",
        },
    ),
    (  # repeated key keeps the last value
        "time=2025-01-01T00:00:00.000Z level=DEBUG source=x.go:1 msg=m a=1 b=2 a=3",
        "DEBUG",
        "x.go:1",
        "m",
        {"a": "3", "b": "2"},
    ),
    (  # Ollama's TRACE level; no source
        "time=2025-01-01T00:00:00.000Z level=TRACE msg=tick",
        "TRACE",
        None,
        "tick",
        {},
    ),
    (  # an empty (unquoted) value is tolerated
        "time=2025-01-01T00:00:00.000Z level=INFO source=x.go:1 msg=m a= b=2",
        "INFO",
        "x.go:1",
        "m",
        {"a": "", "b": "2"},
    ),
]


@pytest.mark.parametrize(("line", "level", "source", "msg", "attrs"), SLOG_LINES)
def test_slog_line(line, level, source, msg, attrs):
    record = parse_line(line)
    assert record.form == FORM_SLOG
    assert record.structured
    assert (record.level, record.source, record.msg) == (level, source, msg)
    assert dict(record.attrs) == attrs
    assert record.ts is not None


def test_slog_attrs_keep_line_order():
    record = parse_line(SLOG_LINES[1][0])
    assert list(record.attrs)[:3] == ["id", "filter_id", "library"]


def test_slog_time_with_offset():
    record = parse_line(SLOG_LINES[1][0])
    assert record.ts == ts("2025-11-20T08:01:44.870+00:00")


def test_invalid_utf8_in_a_quoted_value_becomes_replacement_char():
    record = parse_line('time=2025-01-01T00:00:00.000Z level=INFO msg=m v="a\\xffb"')
    assert record.attrs["v"] == "a\ufffdb"


@pytest.mark.parametrize(
    "text",
    [
        'time=2025-01-01T00:00:00.000Z level=INFO msg="unterminated',
        "time=2025-01-01T00:00:00.000Z level=INFO msg=m lonely",
        'time=2025-01-01T00:00:00.000Z level=INFO msg="a"b',
        "level=INFO msg=m",
    ],
)
def test_parse_slog_rejects_malformed_lines(text):
    with pytest.raises(LogFormatError):
        parse_slog(text)


def test_malformed_slog_line_falls_back_to_unprefixed():
    line = 'time=2025-01-01T00:00:00.000Z level=INFO msg="truncated by the transport'
    record = parse_line(line)
    assert record.form == FORM_UNPREFIXED
    assert not record.structured
    assert record.msg == line


@pytest.mark.parametrize(
    ("quoted", "value"),
    [
        ('""', ""),
        ('"plain"', "plain"),
        ('"\\"q\\""', '"q"'),
        ('"\\\\"', "\\"),
        ('"\\a\\b\\f\\n\\r\\t\\v"', "\a\b\f\n\r\t\v"),
        ('"\\x41\\x42"', "AB"),
        ('"\\xc3\\xa9"', "é"),  # bytes of one UTF-8 sequence
        ('"\\u00e9\\U0001F600"', "é\U0001f600"),
        ('"\\ud800"', "\ufffd"),  # a surrogate is not a character
        ('"\\101"', "A"),
        ('"\\q"', "\\q"),  # unknown escape kept as written
    ],
)
def test_go_unquote(quoted, value):
    assert go_unquote(quoted) == value


def test_go_unquote_strict_rejects_unknown_escape():
    with pytest.raises(LogFormatError):
        go_unquote('"\\q"', strict=True)


# --- Go log and bridged ------------------------------------------------------------------------


def test_go_log_line_reads_local_time():
    line = "2023/12/01 10:00:05 llama.go:300: 22563 MB VRAM available, loading up to 43 GPU layers"
    record = parse_line(line)
    assert record.form == FORM_GOLOG
    assert record.structured
    assert record.level is None
    assert record.source == "llama.go:300"
    assert record.msg == "22563 MB VRAM available, loading up to 43 GPU layers"
    assert record.ts == ts("2023-12-01T10:00:05+00:00")
    cest = timezone(timedelta(hours=2))
    assert parse_line(line, local_tz=cest).ts == ts("2023-12-01T08:00:05+00:00")


def test_go_log_line_without_file():
    record = parse_line("2023/12/01 10:00:05 something happened")
    assert (record.form, record.source, record.msg) == (FORM_GOLOG, None, "something happened")


def test_bridged_line():
    line = (
        "2024/01/27 08:14:55 dyn_ext_server.go:87: INFO Loading Dynamic llm server: "
        "/tmp/ollama2750113406/cuda_v11/libext_server.so"
    )
    record = parse_line(line)
    assert record.form == FORM_BRIDGED
    assert record.level == "INFO"
    assert record.source == "dyn_ext_server.go:87"
    assert record.msg == (
        "Loading Dynamic llm server: /tmp/ollama2750113406/cuda_v11/libext_server.so"
    )
    assert dict(record.attrs) == {}


def test_bridged_server_config_line_has_attributes():
    line = (
        '2024/05/20 10:00:00 routes.go:1008: INFO server config env="map[CUDA_VISIBLE_DEVICES: '
        'OLLAMA_DEBUG:false OLLAMA_HOST:http://0.0.0.0:11434]"'
    )
    record = parse_line(line)
    assert record.msg == "server config"
    assert record.attrs["env"].startswith("map[CUDA_VISIBLE_DEVICES: ")


@pytest.mark.parametrize(
    ("text", "msg", "attrs"),
    [
        ("Listening on [::]:11434 (version 0.1.22)",) * 2 + ({},),
        ('loaded a=1 b="x y"', "loaded", {"a": "1", "b": "x y"}),
        ("text with a=b inside", "text with a=b inside", {}),
    ],
)
def test_split_bridged_message(text, msg, attrs):
    assert split_bridged_message(text)[0] == msg
    assert dict(split_bridged_message(text)[1]) == attrs


# --- unprefixed --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "load_tensors: offloaded 23/63 layers to GPU",
        "SIGSEGV: segmentation violation",
        "\t/usr/local/go/src/runtime/cgocall.go:167 +0x4b fp=0xc00004fb58 sp=0xc00004fb20",
        'INFO [main] build info | build=1 commit="1e6f655" tid="140169148559360"',
        '{"timestamp":1701424805,"level":"INFO","function":"main","message":"HTTP server"}',
        "/usr/local/bin/ollama: error while loading shared libraries: libcudart.so.12: cannot "
        "open shared object file: No such file or directory",
        "0.00.123.456 I llama-server discovery line",
        "",
    ],
)
def test_unprefixed_line_keeps_its_text(line):
    record = parse_line(line)
    assert record.form == FORM_UNPREFIXED
    assert not record.structured
    assert record.msg == line
    assert (record.ts, record.level, record.source) == (None, None, None)
    assert dict(record.attrs) == {}


def test_gin_line_has_its_time():
    line = '[GIN] 2024/01/27 - 08:14:55 | 200 |  4.1s |       127.0.0.1 | POST     "/api/chat"'
    record = parse_line(line)
    assert record.msg == line
    assert record.ts == ts("2024-01-27T08:14:55+00:00")


# --- bytes, line ends, size --------------------------------------------------------------------


def test_bytes_with_invalid_utf8_are_accepted():
    record = parse_line(b"Jun 10 08:15:02 h ollama[9]: load_tensors: \xff\xfe offloaded\r\n")
    assert record.msg == "load_tensors: \ufffd\ufffd offloaded"
    assert record.transport_pid == 9


def test_line_terminator_is_removed_but_other_whitespace_kept():
    assert parse_line("  Device 0: x  \n").msg == "  Device 0: x  "


def test_one_megabyte_slog_line():
    big = "x" * (1 << 20)
    record = parse_line(f'time=2025-01-01T00:00:00.000Z level=INFO msg=m blob="{big} y"'.encode())
    assert record.structured
    assert record.attrs["blob"] == big + " y"


def test_one_megabyte_unprefixed_line():
    line = "llama: " + "é" * (1 << 19)
    assert parse_line(line.encode()).msg == line


def test_parse_line_rejects_other_types():
    with pytest.raises(LogFormatError):
        parse_line(42)  # type: ignore[arg-type]


# --- timestamps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-06-10T08:15:02.114Z", ts("2025-06-10T08:15:02.114+00:00")),
        ("2025-06-10T08:15:02.114+02:00", ts("2025-06-10T06:15:02.114+00:00")),
        ("2025-06-10T08:15:02+0000", ts("2025-06-10T08:15:02+00:00")),
        ("2025-07-01T10:45:12.381952123+02:00", ts("2025-07-01T08:45:12.381952+00:00")),
        ("2025-06-10T08:15:02", ts("2025-06-10T08:15:02+00:00")),  # naive: local_tz (UTC)
        ("2025-13-10T08:15:02Z", None),
        ("2025-06-10T08:15:02+99:00", None),
        ("yesterday", None),
    ],
)
def test_parse_timestamp(text, expected):
    assert parse_timestamp(text, UTC) == expected
