"""vgpumon.ollama.replay: saved logs (plain, journalctl short*, journalctl json) → timeline."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from vgpumon.model.events import Event
from vgpumon.ollama.replay import ReplayStats, detect_format, format_timeline, replay

DATA = Path(__file__).parent / "data"
GEMMA = "d10904b4e8c455d5650c2061af4d2be591e09b50be7788fed3b88646a0bd6d17"


def lines_of(name: str) -> list[bytes]:
    return (DATA / name).read_bytes().splitlines(keepends=True)


def test_multi_era_plain_log_matches_the_golden_timeline():
    stats = ReplayStats()
    events = list(replay(lines_of("multi_era.log"), stats=stats))
    expected = (DATA / "multi_era.timeline").read_text().splitlines()
    assert list(format_timeline(events)) == expected
    assert (stats.format, stats.lines, stats.records, stats.skipped, stats.events) == (
        "plain",
        67,
        67,
        0,
        len(events),
    )


def test_multi_era_plain_log_events():
    events = list(replay(lines_of("multi_era.log")))
    versions = [e.get("version") for e in events if e.kind == "ollama_version"]
    assert versions == ["0.1.17", "0.1.22", "0.3.9", "0.6.5", "0.13.1", "0.30.2"]
    exits = [
        (e.get("reason"), e.get("signal"), e.get("crash_signal"))
        for e in events
        if e.kind == "runner_exited"
    ]
    assert exits == [("crash", "SIGABRT", None), ("crash", None, "SIGSEGV"),
                     ("stopped", "SIGKILL", None)]
    assert [e.kind for e in events].count("go_crash") == 1


def test_journal_short_log():
    stats = ReplayStats()
    events = list(replay(lines_of("journal_short.log"), stats=stats))
    assert stats.format == "short"
    assert stats.skipped == 2  # the "-- Logs begin" and "-- Boot" markers
    assert [e.kind for e in events] == [
        "ollama_version",
        "cpu_only",
        "runner_started",
        "backend_load_failed",
        "offload",
        "offload",
        "ollama_version",
    ]
    backend = events[3]
    assert backend.get("path") == "/usr/local/lib/ollama/cuda_v13/libggml-cuda.so"
    assert backend.get("model") == GEMMA
    # an unprefixed record in `short` output takes the last time seen
    assert backend.ts == events[2].ts
    assert [(e.get("gpu_layers"), e.get("total_layers")) for e in events[4:6]] == [(0, 37)] * 2


def journal_line(message: object, realtime_us: int, pid: int = 4100) -> bytes:
    return json.dumps(
        {
            "__CURSOR": f"s=abc;i={realtime_us:x}",
            "__REALTIME_TIMESTAMP": str(realtime_us),
            "_PID": str(pid),
            "PRIORITY": "6",
            "_SYSTEMD_UNIT": "ollama.service",
            "SYSLOG_IDENTIFIER": "ollama",
            "MESSAGE": message,
        }
    ).encode()


JOURNAL_JSON = [
    journal_line(
        "time=2025-12-09T13:40:00.000Z level=INFO source=routes.go:1550 "
        'msg="Listening on 127.0.0.1:11434 (version 0.13.1)"',
        1765287600000000,
    ),
    journal_line(
        'time=2025-12-09T13:40:20.000Z level=INFO source=server.go:392 msg="starting runner" '
        'cmd="/usr/local/bin/ollama runner --ollama-engine --model '
        f'/usr/share/ollama/.ollama/models/blobs/sha256-{GEMMA} --port 40199"',
        1765287620000000,
    ),
    # an unprefixed line with a byte that is not UTF-8: journald exports a byte array
    journal_line(list(b"load_tensors: offloaded 23/63 layers to GPU \xff"), 1765287621000000),
    journal_line(None, 1765287621500000),  # over 4096 bytes, exported without --all
    b"this is not JSON",
    b"",
    journal_line(
        ["SIGSEGV: segmentation violation", "PC=0x7f3a1c02b1e4 m=5 sigcode=1 addr=0x18"],
        1765287622000000,
    ),
    journal_line("goroutine 7 gp=0xc000102a80 m=5 mp=0xc000100008 [syscall]:", 1765287622000100),
    journal_line(
        'time=2025-12-09T13:40:23.000Z level=ERROR source=server.go:1 msg="llama runner '
        'terminated" error="exit status 2"',
        1765287623000000,
    ),
]


def test_journal_json_log():
    stats = ReplayStats()
    events = list(replay(JOURNAL_JSON, stats=stats))
    assert stats.format == "json"
    assert stats.skipped == 3  # null MESSAGE, not JSON, blank
    assert [e.kind for e in events] == [
        "ollama_version",
        "runner_started",
        "offload",
        "go_crash",
        "runner_exited",
    ]
    offload = events[2]
    assert (offload.get("gpu_layers"), offload.get("total_layers"), offload.get("model")) == (
        23,
        63,
        GEMMA,
    )
    assert offload.ts == 1765287621.0  # the journal's time: the line has none of its own
    assert events[3].get("pc") == 0x7F3A1C02B1E4
    assert events[4].get("reason") == "crash"


def test_str_lines_are_accepted():
    text = (DATA / "multi_era.log").read_text()
    assert len(list(replay(text.splitlines()))) == len(list(replay(lines_of("multi_era.log"))))


def test_forced_format():
    stats = ReplayStats()
    list(replay(JOURNAL_JSON, stats=stats, log_format="plain"))
    assert (stats.format, stats.skipped) == ("plain", 0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("multi_era.log", "plain"), ("journal_short.log", "short")],
)
def test_detect_format_of_files(name, expected):
    assert detect_format(lines_of(name)[:20]) == expected


def test_detect_format_json():
    assert detect_format(JOURNAL_JSON) == "json"


@pytest.mark.parametrize(
    "first_lines",
    [
        [],
        [b""],
        ["-- No entries --"],
        ['{"timestamp":1701424805,"level":"INFO","function":"main","message":"x"}'],  # era A
    ],
)
def test_detect_format_defaults_to_plain(first_lines):
    assert detect_format(first_lines) == "plain"


def test_format_timeline():
    ts = datetime.fromisoformat("2025-06-10T08:15:02.114+00:00").timestamp()
    events = [
        Event(ts, "runner_started", {"model": GEMMA, "discovery": False, "port": 40199}),
        Event(
            ts,
            "gpu_discovered",
            {
                "id": "GPU-1",
                "library": "CUDA",
                "name": "CUDA0",
                "description": "NVIDIA L4",
                "total_bytes": 24159191040,
            },
        ),
        Event(
            ts,
            "runner_exited",
            {"reason": "crash", "exit_code": 2, "pc": 255, "message": 'x "quoted"\nnext'},
        ),
        Event(ts, "cuda_error", {"message": "CUDA error: out of memory", "level": "ERROR"}),
        Event(ts, "something_new", {"message": "m"}),
    ]
    assert list(format_timeline(events)) == [
        "2025-06-10T08:15:02.114Z  runner_started      model=d10904b4e8c4 discovery=false "
        "port=40199",
        "2025-06-10T08:15:02.114Z  gpu_discovered      id=GPU-1 library=CUDA name=CUDA0 "
        'description="NVIDIA L4" total_bytes=22.5GiB',
        "2025-06-10T08:15:02.114Z  runner_exited       reason=crash exit_code=2 pc=0xff "
        'message="x \\"quoted\\"\\nnext"',
        '2025-06-10T08:15:02.114Z  cuda_error          message="CUDA error: out of memory"',
        "2025-06-10T08:15:02.114Z  something_new       message=m",
    ]


def test_format_timeline_survives_absurd_times():
    assert next(format_timeline([Event(1e300, "cpu_only")])).startswith("1000000000")
