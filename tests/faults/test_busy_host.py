"""A busy host: hundreds of unrelated processes started every second, so that vgpumon reads the
proc connector in coalescing windows. A runner its tracked server starts is still read at its
exec, before it can vanish: runners that crash 5 ms after their exec are each counted with
their exit status, and raise the crash loop."""

from __future__ import annotations

import re
import subprocess
from collections import Counter

from tests.faults.workload import exits_by_reason, runner_config, wait_exits

RUNNERS = 12


def test_runners_that_crash_5ms_after_exec_are_all_counted_on_a_busy_host(
        tmp_path, runner_binary, daemons):
    binary = re.escape(str(runner_binary))
    marker = f"vgpumon-busy-server-{tmp_path.name}"
    config = runner_config(tmp_path, runner_binary, interval="60s", groups={
        "server": {"cmdline": f"^bash -c .* {re.escape(marker)}$"},
        "runner": {"cmdline": f"^{binary} .*--model", "parent": "server"},
    }, crash_loop={"crashes": 3, "window": "10m"})
    daemon = daemons(config, tmp_path)
    # The busy host: /bin/true as fast as a shell starts it, for as long as the test runs.
    busy = subprocess.Popen(["bash", "-c", "while :; do /bin/true; done"],
                            stdin=subprocess.DEVNULL)
    gate = tmp_path / "go"
    # The server: waits for the gate, then starts runners that crash 5 ms after their exec.
    script = (f"while [ ! -e {gate} ]; do sleep 0.05; done; "
              f"for i in $(seq {RUNNERS}); do {runner_binary} --model m --mode crash --ms 5; "
              "sleep 0.2; done; sleep 600")
    server = subprocess.Popen(["bash", "-c", script, marker], stdin=subprocess.DEVNULL)
    try:
        daemon.wait_value("vgpumon_processes", 1, group="server")
        gate.touch()
        wait_exits(daemon, Counter(crash=RUNNERS), timeout=60)
        assert daemon.value("vgpumon_process_starts_total", group="runner") == RUNNERS
        assert daemon.value("vgpumon_process_crashes_total", group="runner") == RUNNERS
        assert daemon.value("vgpumon_crash_loop", group="runner") == 1
        assert exits_by_reason(daemon) == Counter(crash=RUNNERS)
        assert sum(1 for e in daemon.events("process_exited")
                   if e["group"] == "runner" and e["signal"] == "SIGSEGV") == RUNNERS
    finally:
        for process in (server, busy):
            process.kill()
            process.wait()
