"""vgpumon.ollama.container_log and replay of container logs: Docker's json-file, Kubernetes' CRI
files, ``docker logs -t`` and Docker Desktop, each wrapped around real Ollama lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from vgpumon.model.timeline import format_timeline
from vgpumon.ollama.container_log import (
    CRI,
    DOCKER_DESKTOP,
    DOCKER_JSON,
    DOCKER_TIMESTAMPS,
    FORMATS,
    LineJoiner,
    Piece,
    parse_cri,
    parse_docker_desktop,
    parse_docker_json,
    parse_docker_timestamps,
    unwrap,
)
from vgpumon.ollama.logline import parse_line
from vgpumon.ollama.replay import (
    ReplayStats,
    detect_format,
    flush_records,
    records_of_line,
    replay,
)

DATA = Path(__file__).parent / "data"
PLAIN_LOG = (DATA / "multi_era.log").read_text().splitlines()
GOLDEN = (DATA / "multi_era.timeline").read_text().splitlines()
DOCKER_CHUNK = 16 * 1024  # Docker and containerd split lines longer than this

LISTENING = ('time=2025-03-05T09:00:48.120Z level=INFO source=routes.go:1554 '
             'msg="Listening on [::]:11434 (version 0.13.1)"')
OFFLOADED = "load_tensors: offloaded 37/37 layers to GPU"
CUDA_ERROR = "CUDA error: an illegal memory access was encountered"
GOLOG = "2024/01/27 08:14:50 gpu.go:99: INFO Nvidia GPU detected"
T = datetime(2025, 3, 5, 9, 0, 48, 123456, tzinfo=UTC).timestamp()


# --- wrapping lines the way each runtime does ---------------------------------------------------


def rfc3339_nano(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "789Z"


def docker_json(log: str, ts: float, stream: str = "stderr") -> str:
    """One json-file entry as Docker's Go encoder writes it (compact, <>& escaped)."""
    text = json.dumps({"log": log, "stream": stream, "time": rfc3339_nano(ts)},
                      separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def docker_json_lines(line: str, ts: float, stream: str = "stderr") -> list[str]:
    """A line as json-file stores it: pieces of at most 16 KiB, the last ending in \\n."""
    data = line.encode()
    chunks = [data[i:i + DOCKER_CHUNK] for i in range(0, len(data), DOCKER_CHUNK)] or [b""]
    out = [docker_json(c.decode("utf-8", "ignore"), ts, stream) for c in chunks[:-1]]
    return [*out, docker_json(chunks[-1].decode("utf-8", "ignore") + "\n", ts, stream)]


def cri_lines(line: str, ts: float, stream: str = "stderr") -> list[str]:
    """A line as a CRI runtime writes it: P pieces of at most 16 KiB, then an F piece."""
    chunks = [line[i:i + DOCKER_CHUNK] for i in range(0, len(line), DOCKER_CHUNK)] or [""]
    stamp = rfc3339_nano(ts)
    return ([f"{stamp} {stream} P {c}" for c in chunks[:-1]]
            + [f"{stamp} {stream} F {chunks[-1]}"])


def timestamped(line: str, ts: float) -> str:
    return f"{rfc3339_nano(ts)} {line}"


def desktop(line: str, ts: float) -> str:
    return f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M:%S} {line}"


def wrap(lines: list[str], log_format: str) -> list[str]:
    """`lines` of a plain log in `log_format`, each stamped with the time a plain replay gives
    it (its own, else the last seen), so that the events must come out the same."""
    clock, out = 0.0, []
    for line in lines:
        record = parse_line(line)
        clock = record.ts if record.ts is not None else clock
        if log_format == DOCKER_JSON:
            out += docker_json_lines(line, clock)
        elif log_format == CRI:
            out += cri_lines(line, clock)
        elif log_format == DOCKER_TIMESTAMPS:
            out.append(timestamped(line, clock))
        else:
            out.append(desktop(line, clock))
    return out


# --- one line of each format ------------------------------------------------------------------


@pytest.mark.parametrize(("line", "expected"), [
    (f'{{"log":"{LISTENING.replace(chr(34), chr(92) + chr(34))}\\n","stream":"stderr",'
     f'"time":"2025-03-05T09:00:48.123456789Z"}}', Piece(LISTENING, T, "stderr")),
    (docker_json(OFFLOADED + "\n", T, "stdout"), Piece(OFFLOADED, T, "stdout")),
    (docker_json(GOLOG + "\n", T).encode(), Piece(GOLOG, T, "stderr")),
    (docker_json("x" * 10, T), Piece("x" * 10, T, "stderr", partial=True)),  # a 16 KiB piece
    (docker_json("\n", T), Piece("", T, "stderr")),
    ('{"log":"a <b> \\u0026 c\\n","stream":"stderr","time":"2025-03-05T09:00:48.123456789Z"}',
     Piece("a <b> & c", T, "stderr")),
    ('{"log":"x\\ud800\\n","time":"bad"}', Piece("x\ufffd", None, "")),
    ('{"log":"x\\n","stream":["odd"]}', Piece("x", None, "")),
    ('{"log":"x\\r\\n","stream":"stderr","time":"2025-03-05T09:00:48.123456789+01:00"}',
     Piece("x\r", T - 3600, "stderr")),
])
def test_docker_json(line, expected):
    assert parse_docker_json(line) == expected
    assert unwrap(line, DOCKER_JSON) == expected


@pytest.mark.parametrize("line", [
    LISTENING, "", "{", "{}", "[1]", '{"log": 5}', '{"MESSAGE":"x"}', "{" * 100000,
    '{"timestamp":1701424805,"level":"INFO","function":"main","message":"x"}',  # era A
    b"\xff\xfe{", OFFLOADED,
])
def test_not_docker_json(line):
    assert parse_docker_json(line) is None


@pytest.mark.parametrize(("line", "expected"), [
    (f"2025-03-05T09:00:48.123456789Z stderr F {LISTENING}", Piece(LISTENING, T, "stderr")),
    (f"2025-03-05T09:00:48.123456789Z stdout P {OFFLOADED[:10]}",
     Piece(OFFLOADED[:10], T, "stdout", partial=True)),
    (f"2025-03-05T10:00:48.123456789+01:00 stderr F {CUDA_ERROR}".encode(),
     Piece(CUDA_ERROR, T, "stderr")),  # CRI-O writes local time with its offset
    ("2025-03-05T09:00:48.123456Z stderr F ", Piece("", T, "stderr")),
    ("2025-03-05T09:00:48.123456Z stderr F", Piece("", T, "stderr")),
    ("2025-03-05T09:00:48.123456Z stderr F:X two  spaces ", Piece("two  spaces ", T, "stderr")),
])
def test_cri(line, expected):
    assert parse_cri(line) == expected
    assert unwrap(line, CRI) == expected


@pytest.mark.parametrize("line", [
    LISTENING, GOLOG, "", f"2025-03-05T09:00:48.123Z stdin F {OFFLOADED}",
    f"2025-03-05T09:00:48.123Z stderr f {OFFLOADED}", "2025-13-45T09:00:48Z stderr F x",
    f"2025-03-05 09:00:48 stderr F {OFFLOADED}", f"2025-03-05T09:00:48.123Z {OFFLOADED}",
])
def test_not_cri(line):
    assert parse_cri(line) is None


@pytest.mark.parametrize(("line", "expected"), [
    (f"2025-03-05T09:00:48.123456789Z {LISTENING}", Piece(LISTENING, T)),
    (f"2025-03-05T09:00:48.123456789Z {CUDA_ERROR}", Piece(CUDA_ERROR, T)),
    ("2025-03-05T09:00:48.123456789Z ", Piece("", T)),
])
def test_docker_timestamps(line, expected):
    assert parse_docker_timestamps(line) == expected
    assert unwrap(line, DOCKER_TIMESTAMPS) == expected


@pytest.mark.parametrize("line", [LISTENING, GOLOG, "2025-03-05 09:00:48 x",
                                  "2025-03-05T09:00:48.123 x", "2025-02-30T09:00:48Z x"])
def test_not_docker_timestamps(line):
    assert parse_docker_timestamps(line) is None


def test_docker_desktop_reads_local_time():
    cet = timezone(timedelta(hours=1))
    whole = datetime(2025, 3, 5, 9, 0, 48, tzinfo=UTC).timestamp()
    line = f"2025-03-05 10:00:48 {LISTENING}"
    assert parse_docker_desktop(line, cet) == Piece(LISTENING, whole)
    assert unwrap(line, DOCKER_DESKTOP, cet) == Piece(LISTENING, whole)
    assert parse_docker_desktop(f"2025-03-05 09:00:48 {OFFLOADED}") == Piece(OFFLOADED, whole)
    for line in (LISTENING, GOLOG, "2025/03/05 09:00:48 x", "2025-03-05 25:00:48 x", ""):
        assert parse_docker_desktop(line) is None


def test_unwrap_of_an_unknown_format_is_none():
    assert unwrap(LISTENING, "plain") is None


# --- joining split lines ----------------------------------------------------------------------


def test_joiner_joins_partials_per_stream_and_keeps_the_first_time():
    joiner = LineJoiner()
    assert joiner.feed(Piece("time=2025 ", 1.0, "stderr", partial=True)) == []
    assert joiner.feed(Piece("out", 2.0, "stdout")) == [Piece("out", 2.0, "stdout")]
    assert joiner.feed(Piece("level=INFO ", 3.0, "stderr", partial=True)) == []
    assert joiner.pending
    assert joiner.feed(Piece('msg="x"', 4.0, "stderr")) == [
        Piece('time=2025 level=INFO msg="x"', 1.0, "stderr")]
    assert not joiner.pending
    assert joiner.feed(Piece("cut", 5.0, "stderr", partial=True)) == []
    assert joiner.flush() == [Piece("cut", 5.0, "stderr")]
    assert joiner.flush() == []


def test_joiner_bounds_a_line_that_never_ends():
    joiner = LineJoiner(limit=100)
    for _ in range(1000):
        joiner.feed(Piece("x" * 16384, 1.0, "stderr", partial=True))
    (line,) = joiner.feed(Piece("end", 1.0, "stderr"))
    assert line.text == "x" * 100


def records(lines: list[str], log_format: str) -> list:
    joiner = LineJoiner()
    out = []
    for line in lines:
        out += records_of_line(line, log_format, UTC, joiner=joiner) or []
    return out + flush_records(joiner, UTC)


LONG = ('time=2025-04-22T07:33:50.020Z level=INFO source=server.go:405 msg="starting llama '
        'server" cmd="/usr/local/bin/ollama runner --model /usr/share/ollama/.ollama/models/'
        'blobs/sha256-4a65eed368b0 ' + "--lora /adapters/a" * 2500 + ' --port 45123"')


@pytest.mark.parametrize("log_format", [DOCKER_JSON, CRI])
def test_a_line_over_16_kib_is_joined(log_format):
    assert len(LONG) > 2 * DOCKER_CHUNK
    split = (docker_json_lines if log_format == DOCKER_JSON else cri_lines)(LONG, T)
    assert len(split) == 3
    interleaved = [split[0], *(docker_json_lines(OFFLOADED, T + 1, "stdout")
                               if log_format == DOCKER_JSON else
                               cri_lines(OFFLOADED, T + 1, "stdout")), *split[1:]]
    got = records(interleaved, log_format)
    assert [r.msg for r in got] == [OFFLOADED, "starting llama server"]
    assert got[1].attrs["cmd"].endswith("--port 45123")
    assert got[1].transport_ts == T  # the time of its first piece
    assert got[1].raw == LONG


@pytest.mark.parametrize("log_format", [DOCKER_JSON, CRI])
def test_a_log_that_ends_inside_a_line_gives_that_line(log_format):
    split = (docker_json_lines if log_format == DOCKER_JSON else cri_lines)(LONG, T)
    assert [r.raw for r in records(split[:2], log_format)] == [LONG[:2 * DOCKER_CHUNK]]


def test_without_a_joiner_each_piece_is_a_line():
    split = cri_lines(LONG, T)
    assert len([r for line in split for r in records_of_line(line, CRI, UTC) or ()]) == 3


def test_the_container_time_is_the_transport_time_and_the_own_time_wins():
    (own,) = records([timestamped(LISTENING, T)], DOCKER_TIMESTAMPS)
    assert own.transport_ts == T
    assert own.ts == datetime(2025, 3, 5, 9, 0, 48, 120000, tzinfo=UTC).timestamp()
    (bare,) = records(docker_json_lines(OFFLOADED, T), DOCKER_JSON)
    assert (bare.ts, bare.transport_ts, bare.msg) == (None, T, OFFLOADED)


def test_garbage_in_a_container_format_is_skipped_or_plain_text():
    assert records_of_line("not json at all", DOCKER_JSON, UTC) is None
    assert records_of_line(b"\xff{\"log\"", DOCKER_JSON, UTC) is None
    for log_format in (CRI, DOCKER_TIMESTAMPS, DOCKER_DESKTOP):
        (record,) = records_of_line(OFFLOADED, log_format, UTC, joiner=LineJoiner()) or []
        assert record.msg == OFFLOADED  # a line without the prefix: as Ollama wrote it
        (record,) = records_of_line(LISTENING, log_format, UTC) or []
        assert record.msg == "Listening on [::]:11434 (version 0.13.1)"


# --- replay: the same events as the plain log ---------------------------------------------------


@pytest.mark.parametrize("log_format", [DOCKER_JSON, CRI, DOCKER_TIMESTAMPS])
def test_replay_of_a_container_log_gives_the_plain_logs_timeline(log_format):
    stats = ReplayStats()
    wrapped = wrap(PLAIN_LOG, log_format)
    events = list(replay([line.encode() for line in wrapped], stats=stats))
    assert stats.format == log_format
    assert list(format_timeline(events)) == GOLDEN
    assert (stats.lines, stats.records, stats.skipped) == (len(wrapped), len(PLAIN_LOG), 0)


@pytest.mark.parametrize("log_format", FORMATS)
def test_replay_of_each_container_format_gives_the_plain_logs_events(log_format):
    """Docker Desktop shows whole seconds: the same events, at times cut to the second."""
    plain = list(replay(PLAIN_LOG))
    stats = ReplayStats()
    events = list(replay(wrap(PLAIN_LOG, log_format), stats=stats))
    assert stats.format == log_format
    assert [(e.kind, dict(e.fields)) for e in events] == [(e.kind, dict(e.fields)) for e in plain]


def test_replay_joins_split_lines():
    lines = [*wrap(PLAIN_LOG[:20], DOCKER_JSON), *docker_json_lines(LONG, T),
             *wrap(PLAIN_LOG[20:], DOCKER_JSON)]
    events = list(replay(lines))
    plain = list(replay([*PLAIN_LOG[:20], LONG, *PLAIN_LOG[20:]]))
    assert [(e.kind, dict(e.fields)) for e in events] == [(e.kind, dict(e.fields)) for e in plain]
    assert any(e.kind == "runner_started" and e.get("port") == 45123 for e in events)


# --- telling the format ------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", FORMATS)
def test_detect_format_of_each_container_format(log_format):
    wrapped = wrap(PLAIN_LOG, log_format)
    assert detect_format(wrapped[:50]) == log_format
    assert detect_format(wrapped[:1]) == log_format  # one line is enough
    assert detect_format(["", *wrapped[:3]]) == log_format


def test_docker_timestamps_with_syslog_like_text_are_told_apart():
    lines = [timestamped(CUDA_ERROR, T), timestamped("ggml_cuda_init: failed x: y", T),
             timestamped(LISTENING, T)]
    assert detect_format(lines) == DOCKER_TIMESTAMPS
    (record,) = records_of_line(lines[0], DOCKER_TIMESTAMPS, UTC) or []
    assert record.msg == CUDA_ERROR


@pytest.mark.parametrize("lines", [
    PLAIN_LOG,
    PLAIN_LOG[:1],
    [line for line in PLAIN_LOG if not line.startswith("time=")],  # old eras, unprefixed lines
    [*PLAIN_LOG[:10], *wrap(PLAIN_LOG[10:13], CRI)],  # a few odd lines stay a minority
    ['{"timestamp":1701424805,"level":"INFO","function":"main","line":2667,'
     '"message":"HTTP server listening","hostname":"127.0.0.1","port":62389}'],
])
def test_a_plain_log_stays_plain(lines):
    assert detect_format(lines) == "plain"
