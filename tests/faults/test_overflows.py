"""Event sources that lose events, provoked for real: the inotify queue overflows
(IN_Q_OVERFLOW) and the proc connector's socket buffer overruns (ENOBUFS). vgpumon counts
each in `vgpumon_event_source_overflows_total{source}`, rescans, and ends up with the state
and the exit counts the test knows to be true.

The daemon is frozen with SIGSTOP while the flood and the changes happen, so its queues fill
exactly as on a host where vgpumon was starved of CPU; the refresh interval is 60 s, so only
the rescan an overflow triggers can find what the lost events would have said.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections import Counter

import pytest

from tests.faults.workload import exits_by_reason, runner_config, wait_exits
from tests.harness import wait_for


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return handle.read().rsplit(b")", 1)[1].split()[0].decode()


@contextlib.contextmanager
def frozen(daemon):
    """SIGSTOP the daemon for the duration of the block (SIGCONT even if the block fails)."""
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: proc_state(daemon.process.pid) == "T", message="vgpumon stopped")
        yield
    finally:
        daemon.process.send_signal(signal.SIGCONT)


def set_link(link, target) -> None:
    """`ln -sf`: a new symlink under a temporary name renamed over the old one."""
    temporary = link.with_name(link.name + ".tmp")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, link)


def overflows(daemon, source: str) -> float | None:
    return daemon.value("vgpumon_event_source_overflows_total", source=source)


def test_inotify_queue_overflow_then_rescan(tmp_path, runner_binary, daemons):
    daemon = daemons(runner_config(tmp_path, runner_binary, interval="60s"), tmp_path)
    lib = tmp_path / "lib64"
    link = lib / "libcuda.so.1"
    state = {"path": str(link), "view": "host"}
    daemon.wait_value("vgpumon_shim_link_state", 1, state="ok", **state)
    assert overflows(daemon, "inotify") == 0

    with open("/proc/sys/fs/inotify/max_queued_events") as handle:
        queue = int(handle.read())
    files = queue // 2 + 1000  # each creation queues IN_CREATE, IN_OPEN and IN_CLOSE_WRITE
    with frozen(daemon):
        for index in range(files):
            os.close(os.open(lib / f"flood-{index}", os.O_CREAT | os.O_WRONLY, 0o644))
        set_link(link, "libcuda.so.575.51.03")  # its events are lost in the overflow
    daemon.wait_value("vgpumon_event_source_overflows_total", 1, source="inotify")
    daemon.wait_value("vgpumon_shim_link_state", 1, state="wrong_target", **state)
    assert daemon.value("vgpumon_shim_link_changes_total", **state) == 1

    # The watches still work afterwards: the link put back is seen at once, by inotify.
    set_link(link, "libvgpu-cuda.so")
    daemon.wait_value("vgpumon_shim_link_state", 1, state="ok", **state)
    assert daemon.value("vgpumon_shim_link_changes_total", **state) == 2
    assert overflows(daemon, "inotify") == 1
    assert daemon.value("vgpumon_collector_success", collector="inotify") == 1


def test_proc_connector_enobufs_loses_no_tracked_exit(tmp_path, runner_binary, runners,
                                                      daemons):
    daemon = daemons(runner_config(tmp_path, runner_binary, interval="60s"), tmp_path)
    if daemon.value("vgpumon_exit_watch_info", mechanism="proc_connector") != 1:
        pytest.skip("the proc connector is not available here")
    crashing = [runners.start() for _ in range(3)]
    stopping = [runners.start() for _ in range(3)]
    late = [runners.start() for _ in range(2)]
    daemon.wait_value("vgpumon_process_starts_total", 8, group="runner")

    with frozen(daemon):
        # Before the flood: their exit events are queued and must be read after the overrun.
        for runner in crashing:
            runner.process.send_signal(signal.SIGSEGV)
        for runner in stopping:
            runner.process.send_signal(signal.SIGTERM)
        for runner in crashing + stopping:
            runners.wait_exited(runner)
        born = [runners.start() for _ in range(2)]  # started while vgpumon was frozen
        # The burst: ~25,000 exits overrun the 8 MiB receive buffer (about 10,000 events).
        subprocess.run([str(runner_binary), "burst", "25000"], check=True, timeout=120)
        # After the flood: their exit events are dropped; only the rescan finds them.
        for runner in late:
            runner.process.send_signal(signal.SIGKILL)
            runners.wait_exited(runner)
    daemon.wait_value("vgpumon_event_source_overflows_total", 1, source="proc_connector",
                      timeout=20)
    for runner in crashing + stopping + late:
        runners.reap(runner)
    assert runners.exits == Counter(crash=3, stopped=5)
    # The late ones' statuses were lost with the events: their exits count, as "unknown".
    wait_exits(daemon, Counter(crash=3, stopped=3, unknown=2))
    daemon.wait_value("vgpumon_process_starts_total", 10, group="runner")
    assert daemon.value("vgpumon_processes", group="runner") == len(born)
    for runner in born:
        runners.kill(runner, signal.SIGTERM)
    wait_exits(daemon, Counter(crash=3, stopped=5, unknown=2))
    assert sum(exits_by_reason(daemon).values()) == runners.started
