"""The event sources against the real kernel: netlink exits, pidfds, kmsg records, inotify."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

from tests.kernel import ALLOCATE_CODE, SEGFAULT_CODE, memory_cgroup, preexec_join
from vgpumon.sources.fswatch import FsWatcher, plan_watches
from vgpumon.sources.kmsg import KERNEL_FACILITY, KmsgReader, parse_oom_kill, parse_segfault
from vgpumon.sources.pidfds import StatusNotYet, exit_status
from vgpumon.sources.proc_connector import ProcConnector, TrackedWatch


def wait_readable(fd: int, timeout: float = 5.0) -> None:
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, "nothing arrived in time"


def collect_until(read, found, timeout: float = 5.0):
    """Read from a source until `found(items)` is true or the deadline passes."""
    deadline = time.monotonic() + timeout
    items = []
    while time.monotonic() < deadline:
        items += read()
        if found(items):
            return items
        time.sleep(0.005)
    raise AssertionError(f"not found within {timeout}s: {items[-5:]}")


def test_proc_connector_reports_exec_and_exit_status():
    connector = ProcConnector.open()
    try:
        child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        child.wait()
        events = collect_until(connector.receive,
                               lambda ev: any(e.kind == "exit" and e.pid == child.pid
                                              for e in ev))
        exit_event = next(e for e in events if e.kind == "exit" and e.pid == child.pid)
        assert exit_event.status == 3 << 8
        assert any(e.kind == "exec" and e.pid == child.pid for e in events)
    finally:
        connector.close()


def test_proc_connector_reports_a_fatal_signal():
    connector = ProcConnector.open()
    try:
        child = subprocess.Popen(["sleep", "30"])
        child.send_signal(signal.SIGKILL)
        child.wait()
        events = collect_until(connector.receive, lambda ev: any(
            e.kind == "exit" and e.pid == child.pid for e in ev))
        assert next(e for e in events if e.kind == "exit" and e.pid == child.pid).status == 9
    finally:
        connector.close()


def test_proc_connector_drops_thread_exits_in_the_kernel():
    connector = ProcConnector.open()
    try:
        threads = [threading.Thread(target=time.sleep, args=(0.001,)) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        child = subprocess.Popen(["true"])
        child.wait()
        events = collect_until(connector.receive, lambda ev: any(
            e.kind == "exit" and e.pid == child.pid for e in ev))
        assert all(e.is_process for e in events)
        assert {e.kind for e in events} <= {"exec", "exit"}
    finally:
        connector.close()


def test_tracked_watch_passes_only_forks_and_exits_of_the_tracked():
    watch = TrackedWatch.open()
    try:
        tracked = subprocess.Popen(["sleep", "30"])
        other = subprocess.Popen(["sleep", "30"])
        watch.set_tracked({os.getpid(), tracked.pid})
        thread = threading.Thread(target=time.sleep, args=(0.001,))
        thread.start()
        thread.join()
        child = subprocess.Popen(["sh", "-c", "true & wait"])  # a grandchild: sh's fork
        child.wait()
        for process in (other, tracked):
            process.kill()
            process.wait()
        events = collect_until(watch.receive, lambda ev: any(
            e.kind == "exit" and e.pid == tracked.pid for e in ev))
        assert [(e.kind, e.pid) for e in events] == [("fork", child.pid),
                                                     ("exit", tracked.pid)]
        assert events[0].parent_tgid == os.getpid()
    finally:
        watch.close()


def test_pidfd_gives_the_status_after_the_parent_reaped():
    child = subprocess.Popen(["sh", "-c", "exit 7"])
    fd = os.pidfd_open(child.pid)
    try:
        wait_readable(fd)
        child.wait()
        assert exit_status(fd) == 7 << 8
    finally:
        os.close(fd)


def test_pidfd_status_not_yet_while_a_zombie():
    read, write = os.pipe()
    child = subprocess.Popen(["sh", "-c", "exit 0"], stdout=write)
    os.close(write)
    fd = os.pidfd_open(child.pid)
    try:
        wait_readable(fd)
        try:
            exit_status(fd)
            raised = False
        except StatusNotYet:
            raised = True
        child.wait()
        assert raised
        assert exit_status(fd) == 0
    finally:
        os.close(fd)
        os.close(read)


def kernel_records(reader: KmsgReader):
    return [r for r in reader.read() if r.facility == KERNEL_FACILITY]


def test_kmsg_sees_a_real_segfault_naming_the_library():
    reader = KmsgReader()
    try:
        child = subprocess.run([sys.executable, "-c", SEGFAULT_CODE], check=False)
        assert child.returncode == -signal.SIGSEGV
        records = collect_until(lambda: kernel_records(reader), lambda rs: any(
            (f := parse_segfault(r.message)) and f.comm.startswith("python") for r in rs))
        fault = next(f for r in records if (f := parse_segfault(r.message)))
        assert fault.library and fault.library.startswith("libc")
    finally:
        reader.close()


def test_kmsg_sees_a_real_oom_kill_in_a_memory_cgroup():
    reader = KmsgReader()
    try:
        with memory_cgroup(48 << 20) as add:
            child = subprocess.Popen([sys.executable, "-c", ALLOCATE_CODE],
                                     preexec_fn=preexec_join(add))
            child.wait(timeout=60)
            assert child.returncode == -signal.SIGKILL
            records = collect_until(lambda: kernel_records(reader), lambda rs: any(
                (k := parse_oom_kill(r.message)) and k.pid == child.pid for r in rs))
        assert any(parse_oom_kill(r.message) for r in records)
    finally:
        reader.close()


def test_inotify_sees_ln_sf_on_the_parent_directory(tmp_path):
    (tmp_path / "libvgpu-cuda.so").write_bytes(b"shim")
    (tmp_path / "libcuda.so.999").write_bytes(b"driver")
    os.symlink("libvgpu-cuda.so", tmp_path / "libcuda.so.1")
    watcher = FsWatcher()
    try:
        watcher.set_plan(plan_watches([str(tmp_path / "libcuda.so.1")],
                                      [str(tmp_path / "libvgpu-cuda.so")], [],
                                      ["libvgpu-cuda.so"]))
        subprocess.run(["ln", "-sf", "libcuda.so.999", str(tmp_path / "libcuda.so.1")],
                       check=True)
        wait_readable(watcher.fileno())
        assert watcher.read().links
        with open(tmp_path / "libvgpu-cuda.so", "rb"):
            pass  # what a dlopen of the shim looks like to inotify
        wait_readable(watcher.fileno())
        assert watcher.read().libraries
    finally:
        watcher.close()


def _nothing_queued(fd: int) -> bool:
    """inotify queues an event before the system call that caused it returns: right after
    that call, an unreadable descriptor means no event."""
    return not select.select([fd], [], [], 0)[0]


def test_in_a_system_library_directory_only_the_configured_files_loads_are_watched(tmp_path):
    """Every program on a host opens its C library in the system's library directory: there
    an open of anything else wakes nothing, an open of a configured library (the shim) does,
    and a shim replaced under its name is watched again as its new file."""
    (tmp_path / "libvgpu-cuda.so").write_bytes(b"shim")
    (tmp_path / "libc.so.6").write_bytes(b"libc")
    os.symlink("libvgpu-cuda.so", tmp_path / "libcuda.so.1")
    plan = plan_watches([str(tmp_path / "libcuda.so.1")], [str(tmp_path / "libvgpu-cuda.so")],
                        [str(tmp_path)], ["libvgpu-cuda.so"],
                        busy=lambda directory: directory == str(tmp_path))
    assert plan.library_dirs == frozenset()
    assert plan.load_files == {str(tmp_path / "libvgpu-cuda.so")}
    watcher = FsWatcher()
    try:
        watcher.set_plan(plan)
        with open(tmp_path / "libc.so.6", "rb"):
            pass  # what every exec on the host does
        assert _nothing_queued(watcher.fileno())
        with open(tmp_path / "libvgpu-cuda.so", "rb"):
            pass
        wait_readable(watcher.fileno())
        assert watcher.read().libraries
        # Replaced the way package managers do it: a new file renamed over the old name.
        (tmp_path / "new.tmp").write_bytes(b"shim 2")
        os.rename(tmp_path / "new.tmp", tmp_path / "libvgpu-cuda.so")
        wait_readable(watcher.fileno())
        change = watcher.read()
        assert change.rearm and change.libraries
        watcher.arm()  # what the file watch does with `rearm`
        with open(tmp_path / "libvgpu-cuda.so", "rb"):
            pass
        wait_readable(watcher.fileno())
        assert watcher.read().libraries
    finally:
        watcher.close()


def test_system_library_directories():
    from vgpumon.sources.fswatch import system_library_dir

    for directory in ("/usr/lib64", "/lib64", "/usr/lib", "/lib", "/usr/lib/x86_64-linux-gnu",
                      "/lib/aarch64-linux-gnu", "/proc/4242/root/usr/lib64", "/usr/lib32"):
        assert system_library_dir(directory), directory
    for directory in ("/usr/local/lib", "/opt/vgpu/lib64", "/usr/lib64/vgpu",
                      "/usr/local/lib/ollama/cuda_v12", "/proc/4242/root/opt/lib"):
        assert not system_library_dir(directory), directory
