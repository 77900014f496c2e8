"""prometheus-process-exporter on the same synthetic host, tracking the same groups.

process-exporter reads /proc when it is scraped, so its cost is CPU per scrape: scrape it N
times over one keep-alive connection and divide its CPU delta (/proc/PID/stat) by N. vgpumon
reads /proc on its own timer and serves scrapes from a snapshot, so its matching cost is the
CPU of one full refresh. Both are measured on the same host, one after the other.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench.client import Scraper
from tests.bench.measure import Summary, cpu_seconds, summarize
from tests.harness import stop_process, wait_for

BINARY = "prometheus-process-exporter"
# Its defaults (/etc/default/prometheus-process-exporter passes no flags), and the lean
# variant: no smaps (10x the maps cost per process) and no per-thread metrics.
VARIANTS = {"defaults": (), "lean": ("-gather-smaps=false", "-threads=false")}
_INSTANCES = itertools.count()


def binary() -> str | None:
    return shutil.which(BINARY)


def install() -> str | None:
    """Install Debian's package when it is missing (as root, where apt-get exists)."""
    if binary() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {BINARY} (apt-get install -y {BINARY}) ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", BINARY]
        if subprocess.run(command, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            subprocess.run(command, env=env, capture_output=True)
    return binary()


@dataclass(frozen=True)
class ExporterCost:
    variant: str
    args: tuple[str, ...]
    cpu_per_scrape: float
    latency: Summary
    samples: int
    groups: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "args": list(self.args),
                "cpu_per_scrape": self.cpu_per_scrape, "latency": self.latency.as_dict(),
                "samples": self.samples, "groups": self.groups}


def measure_process_exporter(config_text: str, workdir: Path, variant: str, scrapes: int,
                             expect: dict[str, int]) -> ExporterCost:
    """Its CPU per scrape; `expect` (group -> processes) proves it tracks what vgpumon does."""
    args = VARIANTS[variant]
    with running(config_text, workdir, args) as (proc, address):
        scraper = Scraper(address)
        try:
            body = scraper.get()
            for _ in range(5):
                scraper.get()
            before = cpu_seconds(proc.pid)
            latency = scraper.timed("/metrics", scrapes)
            cpu = (cpu_seconds(proc.pid) - before) / scrapes
        finally:
            scraper.close()
    groups = check_groups(body, expect)
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return ExporterCost(variant, args, cpu, summarize(latency), samples, groups)


@contextlib.contextmanager
def running(config_text: str, workdir: Path,
            args: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen, str]]:
    """process-exporter with this config, listening: (its process, host:port); stopped after.
    Each instance gets a config file of its own in `workdir`."""
    path = workdir / f"process-exporter-{next(_INSTANCES)}.yml"
    path.write_text(config_text)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen([binary() or BINARY, "-config.path", str(path),
                             "-web.listen-address", address, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(address) or proc.poll() is not None, 15,
                 message="process-exporter to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"{BINARY} exited with {proc.returncode}")
        yield proc, address
    finally:
        stop_process(proc)


def check_groups(body: bytes, expect: dict[str, int]) -> dict[str, float]:
    """The group counts of a scrape, checked against `expect` (group -> processes)."""
    groups = group_counts(body)
    if any(groups.get(name, 0) != count for name, count in expect.items()):
        raise RuntimeError(f"{BINARY} counts {groups}, expected {expect}")
    return groups


def group_counts(body: bytes) -> dict[str, float]:
    counts = {}
    for line in body.splitlines():
        if line.startswith(b"namedprocess_namegroup_num_procs{"):
            name = line.split(b'groupname="', 1)[1].split(b'"', 1)[0].decode()
            counts[name] = float(line.rsplit(b" ", 1)[1])
    return counts


def _answers(address: str) -> bool:
    with contextlib.suppress(OSError, RuntimeError):
        scraper = Scraper(address, timeout=1)
        try:
            scraper.get()
            return True
        finally:
            scraper.close()
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
