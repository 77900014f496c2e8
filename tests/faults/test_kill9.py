"""`kill -9` of vgpumon while it writes a flood of events, at random moments, again and again:
after every restart the event log (and its rotated predecessor) holds whole lines only.

The flood comes from the Ollama log: a thread appends "Listening on … (version N)" lines,
each of which the daemon turns into one event and one write(2). SIGKILL cannot interrupt a
write to a regular file halfway, so one round also leaves a torn line at the end of the log
on purpose (what a crash of the machine or a full disk mid-write leaves): the next start
must cut it off before it appends.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time

from tests.faults.workload import runner_config
from tests.harness import Vgpumon, wait_for

ROUNDS = 6
TORN_ROUND = 3


def version_line(n: int) -> bytes:
    return (b'time=2025-06-10T08:15:02.114Z level=INFO source=routes.go:1 '
            b'msg="Listening on 127.0.0.1:11434 (version 0.%d.0)"\n' % n)


class LogFlood:
    """Appends batches of version lines to the Ollama log until stopped."""

    def __init__(self, path) -> None:
        self.path = path
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LogFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with open(self.path, "ab", buffering=0) as handle:
            while not self._stop.is_set():
                handle.write(b"".join(version_line(self.lines + i) for i in range(50)))
                self.lines += 50
                self._stop.wait(0.005)


def whole_lines(*paths) -> int:
    """Check that every file holds complete JSON events only; returns the number of lines."""
    count = 0
    for path in paths:
        if not path.exists():
            continue
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path.name}: partial line {data[-60:]!r}"
        for line in data.splitlines():
            event = json.loads(line)
            assert event["kind"] == "ollama_version", line
            count += 1
    return count


def test_kill_9_while_writing_events(tmp_path, runner_binary, daemons):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    log = tmp_path / "ollama.log"
    log.touch()
    events = tmp_path / "events.jsonl"
    rotated = tmp_path / "events.jsonl.1"
    config = runner_config(tmp_path, runner_binary, interval="60s",
                           ollama={"log": {"file": str(log)}},
                           events={"file": str(events), "max_bytes": 262144})
    kills = 0
    with LogFlood(log):
        for round_ in range(ROUNDS):
            size_before = events.stat().st_size if events.exists() else 0
            daemon: Vgpumon = daemons(config, tmp_path)
            # The log it opened is whole (the torn line of the last round is gone) …
            wait_for(lambda size=size_before: events.exists() and events.stat().st_size != size,
                     message="the first events written after the start")
            whole_lines(events, rotated)
            if round_ == TORN_ROUND + 1:
                wait_for(lambda d=daemon: "partial last line, cut" in d.log_text(),
                         message="the torn line cut off")
            # … and it is writing a stream of events when it is killed.
            time.sleep(rng.uniform(0.05, 0.6))  # the random moment, not a synchronisation
            daemon.process.send_signal(signal.SIGKILL)
            daemon.process.wait()
            kills += 1
            if round_ == TORN_ROUND:
                with open(events, "ab") as handle:
                    handle.write(b'{"ts":1749543302.1,"kind":"ollama_ver')
    daemon = daemons(config, tmp_path)
    wait_for(lambda: whole_lines(events) > 0 and events.read_bytes().endswith(b"\n"),
             message="whole lines after the last restart")
    assert daemon.stop() == 0
    total = whole_lines(events, rotated)
    assert kills == ROUNDS and total > 0, f"seed {seed}"
