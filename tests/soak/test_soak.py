"""Soak: the real daemon under process churn, runner crashes, shim-link flapping, an Ollama
log flood and steady scraping, for a bounded time.

It must not grow (open descriptors, threads, resident memory after warm-up) and must count
exactly what the test did: every runner start, every exit with the reason its wait status
gives, every link change, every "Listening on … (version N)" line of the log.

``VGPUMON_SOAK_SECONDS`` sets the duration (CI: 75 s; e.g. 3600 for the long run docs/reliability.md
describes). ``VGPUMON_SOAK_REPORT=path`` writes the measured figures as JSON.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import asdict

from tests.faults.workload import Resources, exits_by_reason, resources, runner_config
from tests.harness import wait_for

SOAK_SECONDS = float(os.environ.get("VGPUMON_SOAK_SECONDS", "75"))
WARM_UP = max(10.0, 0.2 * SOAK_SECONDS)
CONCURRENT_RUNNERS = 4
# How a runner ends, in turn: (mode it runs, signal the test sends, or None).
ENDINGS = [("crash", None), ("sleep", signal.SIGKILL), ("exit:0", None), ("crash", None),
           ("sleep", signal.SIGTERM), ("exit:3", None)]
FD_SLACK = 2  # a scrape's connection that is being closed
THREAD_SLACK = 0  # no thread per request or per API poll: the count is constant
RSS_SLACK = 8 << 20

NOISE = (b'[GIN] 2025/06/10 - 08:15:02 | 200 |      41.2\xc2\xb5s |       127.0.0.1 | GET      '
         b'"/api/ps"\n')


def version_line(n: int) -> bytes:
    return (b'time=2025-06-10T08:15:02.114Z level=INFO source=routes.go:1 '
            b'msg="Listening on 127.0.0.1:11434 (version 0.%d.0)"\n' % n)


class Load:
    """The workers; each keeps its own ground truth."""

    def __init__(self, daemon, runners, runner_binary, link, targets, log) -> None:
        self.daemon, self.runners, self.binary = daemon, runners, runner_binary
        self.link, self.targets, self.log = link, targets, log
        self.stop = threading.Event()
        self.flips = 0
        self.version_lines = 0
        self.churned = 0
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._guard, args=(work,), daemon=True)
                         for work in (self._runner_lives, self._churn, self._flap_link,
                                      self._flood_log)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not self.errors, self.errors

    def _guard(self, work) -> None:
        try:
            work()
        except BaseException as err:  # reported by __exit__
            self.errors.append(err)
            self.stop.set()

    def _runner_lives(self) -> None:
        """Keep a few runners alive; each ends its own way after 0.5 to 2 s."""
        live: list[tuple[object, signal.Signals | None, float]] = []
        turn = 0
        while not self.stop.is_set() or live:
            now = time.monotonic()
            for entry in list(live):
                runner, sig, deadline = entry
                if sig is None and runner.process.poll() is not None:
                    self.runners.reap(runner)
                    live.remove(entry)
                elif sig is not None and (now >= deadline or self.stop.is_set()):
                    self.runners.kill(runner, sig)
                    live.remove(entry)
            while not self.stop.is_set() and len(live) < CONCURRENT_RUNNERS:
                mode, sig = ENDINGS[turn % len(ENDINGS)]
                lifetime = 0.5 + (turn * 0.37) % 1.5
                ms = int(lifetime * 1000) if sig is None else 0
                live.append((self.runners.start(mode, ms=ms, model=f"m{turn % 3}"), sig,
                             now + lifetime))
                turn += 1
            time.sleep(0.02)  # pacing of the workload, not a synchronisation

    def _churn(self) -> None:
        """Short processes of another group: PIDs that vanish while vgpumon reads them."""
        while not self.stop.is_set():
            batch = [subprocess.Popen([str(self.binary), "--model", "churn", "--mode",
                                       "exit:0", "--ms", str(i % 3)]) for i in range(10)]
            for process in batch:
                process.wait()
            self.churned += len(batch)
            time.sleep(0.05)

    def _flap_link(self) -> None:
        """`ln -sf` back and forth; each state is waited for, so every change is countable."""
        while not self.stop.is_set():
            target, state = self.targets[self.flips % 2]
            temporary = self.link.with_name(self.link.name + ".tmp")
            temporary.symlink_to(target)
            os.replace(temporary, self.link)
            self.flips += 1
            wait_for(lambda state=state: self.daemon.value(
                "vgpumon_shim_link_state", path=str(self.link), state=state,
                view="host") == 1,
                message=f"link {state}")
            time.sleep(0.2)

    def _flood_log(self) -> None:
        """About 4,000 lines a second, one in a hundred an event."""
        with open(self.log, "ab", buffering=0) as handle:
            while not self.stop.is_set():
                handle.write(NOISE * 99 + version_line(self.version_lines))
                self.version_lines += 1
                time.sleep(0.025)


def count(daemon, name: str, **labels: str) -> int:
    return int(daemon.value(name, **labels) or 0)


def test_soak(tmp_path, runner_binary, runners, daemons):
    binary = re.escape(str(runner_binary))
    log = tmp_path / "ollama.log"
    log.touch()
    config = runner_config(
        tmp_path, runner_binary, interval="1s",
        groups={"runner": {"cmdline": f"^{binary} --model m"},
                "churn": {"cmdline": f"^{binary} --model churn"}},
        ollama={"log": {"file": str(log)}},
        events={"max_bytes": 1 << 20, "memory": 200},
    )
    daemon = daemons(config, tmp_path)
    pid = daemon.process.pid
    link = tmp_path / "lib64" / "libcuda.so.1"
    targets = [("libcuda.so.575.51.03", "wrong_target"), ("libvgpu-cuda.so", "ok")]
    samples: list[tuple[float, Resources]] = []
    started = time.monotonic()
    with Load(daemon, runners, runner_binary, link, targets, log) as load:
        baseline = None
        while time.monotonic() - started < SOAK_SECONDS and not load.stop.is_set():
            daemon.get("/metrics")
            daemon.get("/state")
            elapsed = time.monotonic() - started
            if not samples or elapsed - samples[-1][0] >= 5:
                samples.append((elapsed, resources(pid)))
            if baseline is None and elapsed >= WARM_UP:
                baseline = resources(pid)
            time.sleep(0.25)  # scrape pacing
    assert baseline is not None, "the soak ended before its warm-up"

    # Everything the workers did is counted, exactly.
    wait_for(lambda: count(daemon, "vgpumon_processes", group="runner") == 0, timeout=20,
             message="no runner left")
    lost = count(daemon, "vgpumon_event_source_overflows_total", source="proc_connector")
    truth = runners.exits
    if lost == 0:
        wait_for(lambda: exits_by_reason(daemon) == +truth, timeout=20,
                 message=f"exits {dict(truth)}")
    else:  # another test on this machine overran the connector: statuses may be unknown
        wait_for(lambda: sum(exits_by_reason(daemon).values()) == sum(truth.values()),
                 timeout=20, message="every exit counted")
    assert truth["crash"] >= 2 and truth["stopped"] >= 2 and truth["error"] >= 1
    assert count(daemon, "vgpumon_process_starts_total", group="runner") == runners.started
    assert count(daemon, "vgpumon_process_crashes_total", group="runner") == (
        exits_by_reason(daemon)["crash"] + exits_by_reason(daemon)["error"])
    wait_for(lambda: count(daemon, "vgpumon_events_total", kind="ollama_version")
             == load.version_lines, message=f"{load.version_lines} version events")
    assert count(daemon, "vgpumon_shim_link_changes_total", path=str(link),
                 view="host") == load.flips

    # Nothing grew.
    wait_for(lambda: resources(pid).fds <= baseline.fds + FD_SLACK, timeout=10,
             message=f"descriptors back to {baseline.fds} (+{FD_SLACK})")
    wait_for(lambda: resources(pid).threads <= baseline.threads + THREAD_SLACK, timeout=10,
             message=f"threads back to {baseline.threads} (+{THREAD_SLACK})")
    final = resources(pid)
    assert final.rss_bytes <= baseline.rss_bytes + RSS_SLACK, (baseline, final)
    log_text = daemon.log_text()
    assert "Traceback" not in log_text and "event handler failed" not in log_text
    assert daemon.process.poll() is None

    figures = {
        "seconds": round(time.monotonic() - started, 1), "warm_up_seconds": WARM_UP,
        "runners": runners.started, "exits": dict(truth), "churned": load.churned,
        "link_flips": load.flips, "version_lines": load.version_lines,
        "log_lines": load.version_lines * 100, "connector_overflows": lost,
        "baseline": asdict(baseline), "final": asdict(final),
        "rss_delta_bytes": final.rss_bytes - baseline.rss_bytes,
        "fd_delta": final.fds - baseline.fds, "thread_delta": final.threads - baseline.threads,
        "samples": [(round(t, 1), asdict(r)) for t, r in samples],
    }
    print("soak:", json.dumps({k: v for k, v in figures.items() if k != "samples"}))
    if os.environ.get("VGPUMON_SOAK_REPORT"):
        with open(os.environ["VGPUMON_SOAK_REPORT"], "w") as handle:
            json.dump(figures, handle, indent=1)
    assert daemon.stop() == 0
