"""Helpers that make the kernel produce real cases: OOM kills in a memory cgroup, segfaults,
one thread of a process stopped while the others run."""

from __future__ import annotations

import contextlib
import ctypes
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

CGROUP_V1_MEMORY = "/sys/fs/cgroup/memory"
CGROUP_V2 = "/sys/fs/cgroup"

# A child that faults inside libc (NULL read): an unhandled SIGSEGV the kernel logs.
SEGFAULT_CODE = "import ctypes; ctypes.string_at(0)"
# A child that allocates until the memory cgroup's OOM killer ends it.
ALLOCATE_CODE = "x = []\nwhile True: x.append(bytearray(8 << 20))"


def _v2_available() -> bool:
    try:
        with open(os.path.join(CGROUP_V2, "cgroup.controllers")) as handle:
            return "memory" in handle.read().split()
    except OSError:
        return False


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int = 64 << 20) -> Iterator[Callable[[int], None]]:
    """A fresh memory cgroup with a small limit; yields `add(pid)`. Removed afterwards."""
    name = f"vgpumon-test-{uuid.uuid4().hex[:8]}"
    if os.path.isdir(CGROUP_V1_MEMORY):
        path = os.path.join(CGROUP_V1_MEMORY, name)
        limit_file, swap_file = "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"
    elif _v2_available():
        path = os.path.join(CGROUP_V2, name)
        limit_file, swap_file = "memory.max", "memory.swap.max"
    else:
        pytest.skip("this kernel offers no memory cgroup to produce a real OOM kill")
    os.mkdir(path)
    try:
        with open(os.path.join(path, limit_file), "w") as handle:
            handle.write(str(limit_bytes))
        with contextlib.suppress(OSError), open(os.path.join(path, swap_file), "w") as handle:
            handle.write(str(limit_bytes) if swap_file.startswith("memory.memsw") else "0")

        def add(pid: int) -> None:
            with open(os.path.join(path, "cgroup.procs"), "w") as handle:
                handle.write(str(pid))

        yield add
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(path)


def preexec_join(add: Callable[[int], None]) -> Callable[[], None]:
    """A `preexec_fn` that moves the child into the cgroup before it execs."""
    return lambda: add(os.getpid())


PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WAIT_ALL_THREADS = 0x40000000  # __WALL: wait for a thread, not only a process


class StoppedThread:
    """One thread of another process held in a ptrace stop while its other threads run on,
    as a thread blocked for good in a system call (a `stat` on a hung NFS mount) would be.

    ptrace is per thread: only the thread that created this object may release it. The
    stop is reaped here, so a `Popen.poll()` of the process never mistakes it for an exit.
    """

    def __init__(self, tid: int) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.ptrace.restype = ctypes.c_long
        self._libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p,
                                      ctypes.c_void_p]
        self.tid = tid
        self._call(PTRACE_SEIZE)
        try:
            self._call(PTRACE_INTERRUPT)
            _, status = os.waitpid(tid, WAIT_ALL_THREADS)
            if not os.WIFSTOPPED(status):
                raise OSError(f"thread {tid} did not stop: wait status {status:#x}")
        except BaseException:
            self.release()
            raise

    def _call(self, request: int) -> None:
        if self._libc.ptrace(request, self.tid, None, None) == -1:
            error = ctypes.get_errno()
            raise OSError(error, f"ptrace({request:#x}, {self.tid}): {os.strerror(error)}")

    def release(self) -> None:
        """Detach: the thread goes on from where it stopped."""
        with contextlib.suppress(ProcessLookupError):
            self._call(PTRACE_DETACH)
