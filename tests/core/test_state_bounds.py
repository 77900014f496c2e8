"""What a process chooses is kept bounded: its cmdline is read up to a cap and kept shorter
still, its --model value is clipped, and /state is bounded per process and built once per
published snapshot."""

from __future__ import annotations

import json
import threading
import urllib.request
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from tests.core.fakeproc import FakeProc
from vgpumon.config.loading import parse_config
from vgpumon.http import server as http_server
from vgpumon.http.server import STATE_MAPPINGS, ExporterServer, StateCache
from vgpumon.linux.procfs import CMDLINE_LIMIT, ProcFS, read_whole_record
from vgpumon.snapshot.counters import Counters
from vgpumon.snapshot.host import HostState, ProcessState
from vgpumon.snapshot.publication import Published, Publisher, RuntimeInfo
from vgpumon.sources.libraries import LibraryMapping, ProcessLibraries
from vgpumon.sources.processes import CMDLINE_KEEP, MODEL_ARG_KEEP, ProcessScanner

CONFIG = parse_config("groups:\n  hostile: {cmdline: '^hostile '}\n")
# Look-alikes: a --model value of 128 KiB with a forged log line in it, then 14 arguments
# of 128 KiB of \x01 (JSON escapes each as 6 bytes); and the \x01 arguments alone.
ARGV = ["hostile", "--model", "blob\ntime=x level=ERROR msg=forged" + "m" * 131000,
        *["\x01" * 131000] * 14]
CONTROLS = ["hostile", *["\x01" * 131000] * 14]


def scanned(tmp_path, argv):
    proc = FakeProc(tmp_path / "proc")
    proc.add(4242, "hostile", argv)
    scanner = ProcessScanner(ProcFS(str(proc.root)), CONFIG.groups)
    [process] = scanner.scan(proc.start_time(100) + 1)
    return process


@pytest.fixture
def hostile(tmp_path):
    return scanned(tmp_path, ARGV)


def test_read_whole_record_stops_at_its_limit(tmp_path):
    path = tmp_path / "cmdline"
    path.write_bytes(b"a\0" * 100_000)
    assert len(read_whole_record(str(path), limit=CMDLINE_LIMIT)) == CMDLINE_LIMIT
    assert len(read_whole_record(str(path), limit=10)) == 10
    assert len(read_whole_record(str(path))) == 200_000
    path.write_bytes(b"short\0")
    assert read_whole_record(str(path), limit=CMDLINE_LIMIT) == b"short\0"


def test_a_huge_cmdline_is_read_up_to_the_cap_and_kept_shorter(hostile):
    joined = " ".join(hostile.cmdline)
    assert len(joined) <= CMDLINE_KEEP + 32 and joined.endswith("chars)")
    assert hostile.cmdline[:2] == ("hostile", "--model")
    assert len(hostile.model_arg) <= MODEL_ARG_KEEP + 32
    assert hostile.model_arg.startswith("blob\ntime=x") and hostile.model_arg.endswith("chars)")


def published_with(process, mappings=(), ts=1.0) -> Published:
    libraries = ProcessLibraries(True, mappings=mappings)
    state = HostState(ts, processes=(ProcessState(process, libraries),))
    return Published(CONFIG, state, Counters(), RuntimeInfo(started_at=0.0))


def test_state_stays_small_for_a_hostile_process(hostile, tmp_path):
    mappings = tuple(LibraryMapping("ggml-cuda", f"/tmp/{i}/" + "\x01" * 4000 + "libggml-cuda.so",
                                    False, False) for i in range(500))
    body, _ = StateCache().get(published_with(hostile, mappings))
    assert len(body) < 512 * 1024  # 32 mappings of 1 KiB paths, escaped x6, at most
    [process] = json.loads(body)["processes"]
    assert len(process["libraries"]["mappings"]) == STATE_MAPPINGS
    assert process["libraries"]["mappings_omitted"] == 500 - STATE_MAPPINGS
    for process in (hostile, scanned(tmp_path / "controls", CONTROLS)):
        small, _ = StateCache().get(published_with(process))
        assert len(small) < 100 * 1024  # the cmdline (4 KiB) and --model (4 KiB), escaped x6
    assert len(small) > 6 * CMDLINE_KEEP  # the \x01 were kept (up to the cap) and escaped


def test_state_is_built_once_per_published_snapshot(hostile, monkeypatch):
    calls = []
    original = http_server.state_document
    monkeypatch.setattr(http_server, "state_document",
                        lambda published: calls.append(published) or original(published))
    cache = StateCache()
    first = published_with(hostile)
    body, gzipped = cache.get(first)
    again, gzipped_again = cache.get(first)
    assert again is body and gzipped() is gzipped_again()
    assert len(calls) == 1
    newer = replace(first, runtime=RuntimeInfo(started_at=0.0, heartbeat=5.0))
    assert cache.get(newer)[0] is not body and len(calls) == 2


def test_state_over_http_is_the_same_bytes_for_the_same_snapshot(hostile, monkeypatch):
    calls = []
    original = http_server.state_document
    monkeypatch.setattr(http_server, "state_document",
                        lambda published: calls.append(published) or original(published))
    publisher = Publisher(published_with(hostile))
    server = ExporterServer(("127.0.0.1", 0), CollectorRegistry(), publisher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.port}/state"
        bodies = [urllib.request.urlopen(url, timeout=5).read() for _ in range(3)]
        gzip_request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(gzip_request, timeout=5) as response:
            assert response.headers["Content-Encoding"] == "gzip"
        assert bodies[0] == bodies[1] == bodies[2] and len(bodies[0]) < 100 * 1024
        assert len(calls) == 1
        publisher.publish(published_with(hostile, ts=2.0))
        assert json.loads(urllib.request.urlopen(url, timeout=5).read())["taken_at"] == 2.0
        assert len(calls) == 2
    finally:
        server.shutdown()
        server.server_close()
