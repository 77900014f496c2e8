"""CPU time of a whole process, precise enough for windows of a few seconds.

utime + stime in /proc/PID/stat come in clock ticks (10 ms), each truncated: two readings of a
daemon that uses 60 ms in a 30 s window are off by up to a third. A cgroup of the process's
own counts every thread it ever had (those that already exited too: the old HTTP server's
thread per request) in microseconds (cgroup v2 ``cpu.stat``, also on a hybrid host's
``unified`` mount) or nanoseconds (cgroup v1 ``cpuacct.usage``). The cgroup is made under
the benchmark's own, holds only that process and is removed by `close()`; where none can be
made (no permission, controllers in the way) the meter falls back to /proc/PID/stat.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

from tests.bench.measure import cpu_seconds

_NAMES = itertools.count()


class ProcessCpu:
    """CPU seconds used by process `pid` since it was attached (all its threads)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.kind = "proc-stat"
        self._cgroup: Path | None = None
        self._parent_procs: Path | None = None
        for kind, base, counter in _cgroup_bases():
            directory = base / f"vgpumon-bench-{os.getpid()}-{next(_NAMES)}"
            try:
                directory.mkdir()
            except OSError:
                continue
            try:
                (directory / "cgroup.procs").write_text(f"{pid}\n")
                self._counter = directory / counter
                self._read_counter()
            except OSError:
                with contextlib.suppress(OSError):
                    directory.rmdir()
                continue
            self.kind, self._cgroup = kind, directory
            self._parent_procs = base / "cgroup.procs"
            break
        self._start = self._read()

    def seconds(self) -> float:
        return self._read() - self._start

    def _read(self) -> float:
        if self._cgroup is None:
            return cpu_seconds(self.pid)
        return self._read_counter()

    def _read_counter(self) -> float:
        text = self._counter.read_text()
        if self._counter.name == "cpu.stat":
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name == "usage_usec":
                    return int(value) / 1e6
            raise OSError(f"no usage_usec in {self._counter}")
        return int(text) / 1e9

    def close(self) -> None:
        """Remove the cgroup (a process still in it goes back to the parent first)."""
        if self._cgroup is None:
            return
        with contextlib.suppress(OSError):
            for line in (self._cgroup / "cgroup.procs").read_text().split():
                assert self._parent_procs is not None
                self._parent_procs.write_text(f"{line}\n")
        with contextlib.suppress(OSError):
            self._cgroup.rmdir()
        self._cgroup = None


def _cgroup_bases() -> list[tuple[str, Path, str]]:
    """Where this process's own cgroups are: (kind, directory, counter file), v2 first."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    found: list[tuple[str, Path, str]] = []
    paths = {}
    for line in own:
        _id, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    for line in mounts:
        fields = line.split()
        dash = fields.index("-")
        root, mountpoint, fstype, options = fields[3], fields[4], fields[dash + 1], \
            fields[dash + 3]
        if fstype == "cgroup2" and "" in paths:
            relative = _relative(paths[""], root)
            if relative is not None:
                found.insert(0, ("cgroup2", Path(mountpoint + relative), "cpu.stat"))
        elif fstype == "cgroup" and "cpuacct" in options.split(",") and "cpuacct" in paths:
            relative = _relative(paths["cpuacct"], root)
            if relative is not None:
                found.append(("cpuacct", Path(mountpoint + relative), "cpuacct.usage"))
    return found


def _relative(path: str, root: str) -> str | None:
    """The cgroup `path` inside a mount of `root` (None when the mount does not show it)."""
    if root == "/":
        return path.rstrip("/")
    if path == root or path.startswith(root + "/"):
        return path[len(root):].rstrip("/")
    return None
