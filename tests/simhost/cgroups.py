"""A memory cgroup with a small limit, so the REAL OOM killer can kill a simulated runner.

cgroup v2 is used where its memory controller is available (a pure v2 mount, or the unified
hierarchy of a hybrid one); otherwise the v1 memory hierarchy at /sys/fs/cgroup/memory.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

CGROUP = "/sys/fs/cgroup"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _v2_base() -> str | None:
    for base in (CGROUP, f"{CGROUP}/unified"):
        if "memory" in _read(f"{base}/cgroup.controllers").split():
            return base
    return None


@dataclass
class MemoryCgroup:
    path: str
    version: int

    @classmethod
    def available(cls) -> bool:
        return _v2_base() is not None or os.path.exists(f"{CGROUP}/memory/memory.limit_in_bytes")

    @classmethod
    def create(cls, name: str, limit: int) -> MemoryCgroup:
        """A new cgroup `name` limited to `limit` bytes (no swap); OSError if impossible."""
        base = _v2_base()
        if base is not None:
            with contextlib.suppress(OSError):
                _write(f"{base}/cgroup.subtree_control", "+memory")
            path = f"{base}/{name}"
            os.mkdir(path)
            _write(f"{path}/memory.max", str(limit))
            with contextlib.suppress(OSError):
                _write(f"{path}/memory.swap.max", "0")
            return cls(path, 2)
        path = f"{CGROUP}/memory/{name}"
        if not os.path.isdir(os.path.dirname(path)):
            raise OSError(f"no memory cgroup controller under {CGROUP}")
        os.mkdir(path)
        _write(f"{path}/memory.limit_in_bytes", str(limit))
        with contextlib.suppress(OSError):
            _write(f"{path}/memory.memsw.limit_in_bytes", str(limit))
        return cls(path, 1)

    def add(self, pid: int) -> None:
        _write(f"{self.path}/cgroup.procs", str(pid))

    def oom_kills(self) -> int:
        """How many OOM kills the kernel counted in this cgroup."""
        if self.version == 2:
            for line in _read(f"{self.path}/memory.events").splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
            return 0
        for line in _read(f"{self.path}/memory.oom_control").splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def remove(self, timeout: float = 5) -> None:
        """rmdir once the cgroup is empty (its processes must be dead)."""
        deadline = time.monotonic() + timeout
        while os.path.isdir(self.path):
            try:
                os.rmdir(self.path)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
