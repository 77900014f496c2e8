"""The JSON-lines event log: whole lines, rotation, repair, and failures that are counted."""

from __future__ import annotations

import json

from vgpumon.daemon.eventlog import EventLog, parse_event_line, read_event_log
from vgpumon.model.events import Event


def make(n):
    return [Event(float(i), "process_started", {"group": "runner", "pid": i}) for i in range(n)]


def test_events_are_appended_as_json_lines(tmp_path):
    path = tmp_path / "state/events.jsonl"
    log = EventLog(str(path), 1 << 20)
    log.append(make(3))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["pid"] for line in lines] == [0, 1, 2]
    assert json.loads(lines[0]) == {"ts": 0.0, "kind": "process_started", "group": "runner",
                                    "pid": 0}
    assert [e.get("pid") for e in read_event_log(str(path))] == [0, 1, 2]


def test_rotation_keeps_one_predecessor_and_loses_nothing_recent(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path), 4096)
    log.append(make(200))
    assert path.stat().st_size <= 4096
    assert (tmp_path / "events.jsonl.1").exists()
    pids = [e.get("pid") for e in read_event_log(str(path))]
    assert pids == sorted(pids) and pids[-1] == 199
    assert log.dropped == 0


def test_partial_last_line_is_cut_when_the_log_is_opened(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"ts":1,"kind":"a"}\n{"ts":2,"ki')
    log = EventLog(str(path), 1 << 20)
    log.append(make(1))
    lines = path.read_bytes().splitlines()
    assert [parse_event_line(line).ts for line in lines] == [1.0, 0.0]


def test_unwritable_log_counts_drops_and_recovers(tmp_path):
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the directory should be")
    log = EventLog(str(blocker / "events.jsonl"), 1 << 20)
    log.append(make(2))
    assert log.dropped == 2
    blocker.unlink()
    log.append(make(1))
    assert log.dropped == 2
    assert len((blocker / "events.jsonl").read_text().splitlines()) == 1


def test_disabled_log_writes_nothing(tmp_path):
    log = EventLog(None, 4096)
    log.append(make(2))
    assert log.dropped == 0


def test_garbage_lines_are_skipped_when_reading(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"ts":1,"kind":"a"}\nnot json\n{"kind":"no ts"}\n[1]\n{"ts":2,"kind":"b"}\n')
    assert [e.kind for e in read_event_log(str(path))] == ["a", "b"]
