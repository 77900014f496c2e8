"""Exit watching through pidfds, where the proc connector cannot be used.

One pidfd per tracked process (no privilege needed). It becomes readable when the process
exits; the wait status comes from ``PIDFD_GET_INFO`` (Linux 6.15+) once the parent reaped it,
so a status that is not there yet is asked for again a few times before giving up.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

PIDFD_INFO_EXIT = 0x8
# struct pidfd_info: u64 mask, cgroupid; u32 pid, tgid, ppid, ruid, rgid, euid, egid, suid,
# sgid, fsuid, fsgid; s32 exit_code; u32 coredump_mask, coredump_signal
_PIDFD_INFO = struct.Struct("=QQ11IiII")
_PIDFD_GET_INFO = (3 << 30) | (_PIDFD_INFO.size << 16) | (0xFF << 8) | 11
_EXIT_CODE_INDEX = 13


class StatusNotYet(Exception):
    """The process exited but its parent has not reaped it: no status yet."""


def exit_status(pidfd: int) -> int | None:
    """The wait status through PIDFD_GET_INFO; None where the kernel lacks the ioctl.

    Raises StatusNotYet while the exited process is still a zombie.
    """
    buffer = bytearray(_PIDFD_INFO.size)
    struct.pack_into("=Q", buffer, 0, PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, _PIDFD_GET_INFO, buffer, True)
    except OSError as err:
        if err.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
            return None
        if err.errno == errno.ESRCH:
            raise StatusNotYet() from None
        raise
    fields = _PIDFD_INFO.unpack(buffer)
    if not fields[0] & PIDFD_INFO_EXIT:
        raise StatusNotYet()
    return fields[_EXIT_CODE_INDEX]


@dataclass
class _Watched:
    pid: int
    start_ticks: int
    fd: int


class PidfdWatcher:
    """Holds a pidfd for each watched (pid, start time)."""

    def __init__(self) -> None:
        self._by_fd: dict[int, _Watched] = {}
        self._by_key: dict[tuple[int, int], int] = {}

    def watch(self, pid: int, start_ticks: int,
              still_same: Callable[[], bool]) -> int | None:
        """Open a pidfd for `pid`; returns its fd (to poll), or None if it is already gone.

        `still_same()` re-checks the start time after opening: a pidfd refers to whichever
        process had the PID at open time, so this rules out PID reuse.
        """
        key = (pid, start_ticks)
        if key in self._by_key:
            return None
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone (ESRCH), or refused: no kernel support, seccomp, no fds left
            return None
        if not still_same():
            os.close(fd)
            return None
        self._by_fd[fd] = _Watched(pid, start_ticks, fd)
        self._by_key[key] = fd
        return fd

    def watched_keys(self) -> set[tuple[int, int]]:
        return set(self._by_key)

    def unwatch(self, pid: int, start_ticks: int) -> int | None:
        """Stop watching; returns the fd that was closed (to unregister it first)."""
        fd = self._by_key.pop((pid, start_ticks), None)
        if fd is not None:
            del self._by_fd[fd]
            os.close(fd)
        return fd

    def fd_of(self, pid: int, start_ticks: int) -> int | None:
        return self._by_key.get((pid, start_ticks))

    def target(self, fd: int) -> tuple[int, int] | None:
        watched = self._by_fd.get(fd)
        return (watched.pid, watched.start_ticks) if watched else None

    def close(self) -> None:
        for fd in list(self._by_fd):
            os.close(fd)
        self._by_fd.clear()
        self._by_key.clear()
