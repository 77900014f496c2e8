"""Pure parsers of the event sources: netlink datagrams, kmsg records, inotify meanings."""

from __future__ import annotations

import socket
import struct

import pytest
from inotify_simple import flags

from vgpumon.linux.socket_filter import ACCEPT, BPF_MAXINSNS, Program, word
from vgpumon.sources.fswatch import interpret, plan_watches
from vgpumon.sources.kmsg import KmsgFormatError, parse_oom_kill, parse_record, parse_segfault
from vgpumon.sources.proc_connector import (
    EV_EXEC,
    EV_EXIT,
    EV_FORK,
    TRACKED_WATCH_LIMIT,
    ProcConnector,
    kernel_supports_filter,
    parse_datagram,
    subscribe_message,
    tracked_filter,
)


def datagram(what: int, body: bytes) -> bytes:
    event = struct.pack("=IIQ", what, 3, 123456789) + body
    cn = struct.pack("=IIIIHH", 1, 1, 7, 0, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 7, 0) + cn


def test_exit_datagram_gives_the_wait_status():
    data = datagram(EV_EXIT, struct.pack("=iiIiii", 4242, 4242, 0xB, 17, 4100, 4100))
    assert len(data) == 76  # as the kernel sends it
    (event,) = parse_datagram(data)
    assert (event.kind, event.pid, event.status, event.parent_tgid) == ("exit", 4242, 11, 4100)
    assert event.is_process


def test_thread_exit_is_not_a_process_exit():
    (event,) = parse_datagram(datagram(EV_EXIT, struct.pack("=iiIiii", 4243, 4242, 0, -1, 0, 0)))
    assert not event.is_process


@pytest.mark.parametrize(("what", "body", "expected"), [
    (EV_EXEC, struct.pack("=ii", 10, 10), ("exec", 10, 10, None, None)),
    (EV_FORK, struct.pack("=iiii", 1, 1, 11, 12), ("fork", 11, 12, None, 1)),
    (EV_EXIT, struct.pack("=iiIiii", 4243, 4242, 9, 17, 4100, 4101), ("exit", 4243, 4242, 9, 4101)),
])
def test_one_event_datagram_reads_as_the_general_parse(what, body, expected):
    data = datagram(what, body.ljust(24, b"\0"))  # the kernel pads every event's data
    assert len(data) == 76
    (fast,) = parse_datagram(data)
    (general,) = parse_datagram(data + datagram(EV_EXEC, struct.pack("=ii", 1, 1)))[:1]
    assert fast == general
    assert (fast.kind, fast.pid, fast.tgid, fast.status, fast.parent_tgid) == expected


def test_exec_and_fork_and_several_messages_in_one_datagram():
    data = (datagram(EV_EXEC, struct.pack("=ii", 10, 10))
            + datagram(EV_FORK, struct.pack("=iiii", 1, 1, 11, 11)))
    assert [(e.kind, e.pid) for e in parse_datagram(data)] == [("exec", 10), ("fork", 11)]


@pytest.mark.parametrize("data", [b"", b"\x00" * 15, b"\xff" * 40,
                                  datagram(EV_EXIT, b"short")[:50],
                                  struct.pack("=IHHII", 8, 3, 0, 0, 0)])
def test_malformed_datagrams_are_skipped(data):
    assert parse_datagram(data) == []


def test_a_word_is_compared_as_an_absolute_load_reads_it():
    host_order = struct.pack("=I", 0x80000000)
    assert word(0x80000000) == int.from_bytes(host_order, "big")


def test_the_tracked_filter_fits_the_kernel_limit_and_lets_all_through_beyond_it():
    assert len(tracked_filter(range(1, TRACKED_WATCH_LIMIT + 1)).code) <= BPF_MAXINSNS
    beyond = tracked_filter(range(1, TRACKED_WATCH_LIMIT + 2)).code
    assert beyond[-1][-1] == ACCEPT and len(beyond) < 20
    with pytest.raises(ValueError):
        Program([(6, 0, 0, 0)] * (BPF_MAXINSNS + 1)).encoded()


def test_subscribe_message_with_and_without_filter():
    plain, filtered = subscribe_message(None), subscribe_message(EV_EXEC | EV_EXIT)
    assert len(plain) == 16 + 20 + 4 and len(filtered) == 16 + 20 + 8
    assert struct.unpack_from("=II", filtered, 36) == (1, EV_EXEC | EV_EXIT)


@pytest.mark.parametrize(("release", "supported"), [
    ("6.6.0", True), ("6.18.44-fc", True), ("7.0", True), ("6.5.13", False), ("5.15.0-91", False),
    ("garbage", False),
])
def test_filter_support_by_kernel_release(release, supported):
    assert kernel_supports_filter(release) is supported


def test_kmsg_record():
    record = parse_record(b"6,912,88231004,-;ollama_llama_se[51207]: segfault at 18\n"
                          b" SUBSYSTEM=x\n")
    assert (record.priority, record.facility, record.sequence) == (6, 0, 912)
    assert record.timestamp_us == 88231004
    assert record.message == "ollama_llama_se[51207]: segfault at 18"
    assert parse_record(b"14,5,1,-;user text").facility == 1


@pytest.mark.parametrize("data", [b"", b"no header", b"a,b,c;x", b"6,1;x"])
def test_kmsg_garbage(data):
    with pytest.raises(KmsgFormatError):
        parse_record(data)


@pytest.mark.parametrize(("message", "pid", "library", "kind"), [
    ("ollama_llama_se[51207]: segfault at 18 ip 00007f2c8e1d4119 sp 00007ffc0a9b7e30 error 4 "
     "in libggml-cuda.so[4d4119,7f2c8dd00000+2a10000] likely on CPU 3 (core 3, socket 0)",
     51207, "libggml-cuda.so", "segfault"),
    ("llama-server[9]: segfault at 0 ip 00007f12 sp 00007ffd error 6 in "
     "libvgpu-cuda.so[7f0000+1000]", 9, "libvgpu-cuda.so", "segfault"),
    ("my prog[77]: segfault at 0 ip 0000000000401136 sp 00007ffd error 6", 77, None, "segfault"),
    ("traps: python3[1234] general protection fault ip:7f12 sp:7ffd error:0 in "
     "libc.so.6[7f00+1000]", 1234, "libc.so.6", "general protection fault"),
    ("traps: prog[123] trap invalid opcode ip:401136 sp:7ffd error:0 in prog[401000+1000]",
     123, "prog", "invalid opcode"),
])
def test_segfault_records(message, pid, library, kind):
    fault = parse_segfault(message)
    assert (fault.pid, fault.library, fault.kind) == (pid, library, kind)


@pytest.mark.parametrize(("message", "pid"), [
    ("Out of memory: Killed process 4242 (ollama) total-vm:1kB, anon-rss:1kB, file-rss:0kB, "
     "shmem-rss:0kB, UID:997 pgtables:4kB oom_score_adj:0", 4242),
    ("Memory cgroup out of memory: Killed process 3119 (python3) total-vm:67784kB", 3119),
    ("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
     "oom_memcg=/vgtest,task_memcg=/vgtest,task=python3,pid=3119,uid=0", 3119),
])
def test_oom_records(message, pid):
    assert parse_oom_kill(message).pid == pid


@pytest.mark.parametrize("message", ["ollama invoked oom-killer: gfp_mask=0x140cca, order=0",
                                     "random line", "oom-kill:constraint=X"])
def test_not_oom_records(message):
    assert parse_oom_kill(message) is None


PLAN = plan_watches(
    link_paths=["/usr/lib64/libcuda.so.1"],
    link_related=["/usr/lib64/libvgpu-cuda.so"],
    library_dirs=["/usr/local/lib/ollama/cuda_v12"],
    library_patterns=["libggml-cuda.so*", "libvgpu-cuda.so"],
)


@pytest.mark.parametrize(("directory", "mask", "name", "links", "libraries"), [
    ("/usr/lib64", flags.MOVED_TO, "libcuda.so.1", True, False),       # ln -sf
    ("/usr/lib64", flags.CREATE, ".libcuda.so.1.tmp", False, False),
    ("/usr/lib64", flags.DELETE, "libvgpu-cuda.so", True, True),
    ("/usr/lib64", flags.OPEN, "libvgpu-cuda.so", False, True),       # a process loads it
    ("/usr/lib64", flags.OPEN, "libc.so.6", False, False),            # noise
    ("/usr/local/lib/ollama/cuda_v12", flags.OPEN, "libggml-cuda.so", False, True),
    ("/usr/local/lib/ollama/cuda_v12", flags.CLOSE_NOWRITE, "libggml-cuda.so", False, True),
])
def test_inotify_meanings(directory, mask, name, links, libraries):
    change = interpret(PLAN, directory, mask, name)
    assert (change.links, change.libraries) == (links, libraries)


def test_overflow_and_vanished_directory():
    assert interpret(PLAN, None, flags.Q_OVERFLOW, "").overflow
    gone = interpret(PLAN, "/usr/lib64", flags.DELETE_SELF, "")
    assert gone.rearm and gone.links


def test_an_exit_event_older_than_the_process_start_is_not_its_exit():
    from vgpumon.daemon.exit_watch import started_after

    # Exit event at 100.000 s since boot; a process started at 100.5 s (tick 10050 at 100 Hz)
    # is a successor that reused the PID; one started at 99 s is the one that exited.
    assert started_after(10050, 100_000_000_000, 100)
    assert not started_after(9900, 100_000_000_000, 100)
    assert not started_after(10001, 100_000_000_000, 100)  # within a tick: same process


def test_a_batch_read_gives_what_one_read_a_datagram_gives():
    datagrams = [
        datagram(EV_EXIT, struct.pack("=iiIiii", 4242, 4242, 0xB, 17, 4100, 4100)),
        datagram(EV_EXEC, struct.pack("=ii", 10, 10).ljust(24, b"\0")),
        b"\x07" * 200,  # longer than a batch slot, and no message
        datagram(EV_FORK, struct.pack("=iiii", 1, 1, 11, 11)),  # shorter than an event
        b"short",
        datagram(EV_EXEC, struct.pack("=ii", 12, 12).ljust(24, b"\0")),
    ]
    got = {}
    for batched in (True, False):
        reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        reader.setblocking(False)
        connector = ProcConnector(reader)
        if not batched:
            connector._batch = None
        for data in datagrams:
            writer.send(data)
        got[batched] = connector.receive()
        assert connector.drained
        connector.close()
        writer.close()
    assert got[True] == got[False]
    assert [(e.kind, e.pid) for e in got[True]] == [("exit", 4242), ("exec", 10), ("fork", 11),
                                                    ("exec", 12)]


def test_an_opened_gpu_device_asks_for_every_maps():
    """The driver may map a device inside address space it reserved earlier (same size), so
    a device open is told apart from a library load: every maps is read then."""
    plan = plan_watches([], ["/usr/lib64/libvgpu-cuda.so"], ["/dev"],
                        ["libvgpu-cuda.so", "nvidia*"], ["/dev/nvidia0", "/dev/nvidiactl"],
                        busy=lambda d: d in ("/dev", "/usr/lib64"), device_patterns=["nvidia*"])
    assert plan.load_files >= {"/dev/nvidia0", "/dev/nvidiactl"}
    device = interpret(plan, "/dev", flags.OPEN, "nvidia0")
    assert device.libraries and device.devices
    shim = interpret(plan, "/usr/lib64", flags.OPEN, "libvgpu-cuda.so")
    assert shim.libraries and not shim.devices
