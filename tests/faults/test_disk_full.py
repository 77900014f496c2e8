"""A full disk under the event log (a 16 KiB tmpfs as `events.file`'s directory): vgpumon
keeps serving, every event it records is either a whole line in the file or counted in
`vgpumon_event_log_dropped_total` (a write cut short at the page boundary included), and
writing resumes when space returns."""

from __future__ import annotations

import errno
import json
import subprocess

import pytest

from tests.faults.workload import runner_config
from tests.harness import wait_for


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0755", "tmpfs",
                              str(mountpoint)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(path) -> None:
    """Take every free byte of the file system `path` is on."""
    with open(path, "wb", buffering=0) as handle:
        while True:
            try:
                handle.write(b"\0" * 512)
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    return
                raise


def recorded(daemon) -> int:
    return int(sum(value for (name, _), value in daemon.metrics().items()
                   if name == "vgpumon_events_total"))


def lines_in(path) -> list[dict]:
    data = path.read_bytes() if path.exists() else b""
    assert not data or data.endswith(b"\n"), f"partial last line: {data[-80:]!r}"
    return [json.loads(line) for line in data.splitlines()]


def test_full_disk_under_the_event_log(tmp_path, runner_binary, runners, tiny_tmpfs, daemons):
    events = tiny_tmpfs / "events.jsonl"
    daemon = daemons(runner_config(tmp_path, runner_binary, interval="60s",
                                   events={"file": str(events)}), tmp_path)

    def account() -> tuple[int, int, int]:
        """(events recorded, lines in the file, writes dropped), once they add up."""
        def settled():
            total, dropped = recorded(daemon), daemon.value("vgpumon_event_log_dropped_total")
            written = len(lines_in(events))
            return (total, written, int(dropped)) if total == written + dropped else None
        return wait_for(settled, message="recorded == written + dropped")

    def one_more_event() -> None:
        before = recorded(daemon)
        runners.start()
        wait_for(lambda: recorded(daemon) > before, message="an event recorded")

    for _ in range(3):
        one_more_event()
    assert account()[2] == 0

    filler = tiny_tmpfs / "filler"
    fill(filler)
    while account()[2] < 3:  # the first may be a write cut short at the page boundary
        one_more_event()
    daemon.wait_value("vgpumon_collector_success", 0, collector="event_log")
    assert daemon.value("vgpumon_processes", group="runner") == runners.started
    assert daemon.get("/healthz") == b"ok\n"
    dropped = account()[2]

    filler.unlink()
    for _ in range(3):
        one_more_event()
    daemon.wait_value("vgpumon_collector_success", 1, collector="event_log")
    still_dropped = account()[2]
    assert still_dropped == dropped
    pids = [line["pid"] for line in lines_in(events) if line["kind"] == "process_started"]
    assert pids[-3:] == list(runners.live)[-3:]
    assert daemon.process.poll() is None
    assert "event log writable again" in daemon.log_text()
