"""Many datagrams per system call: ``recvmmsg(2)`` into one preallocated buffer.

Python's socket module reads one datagram per call, and ends a non-blocking drain in an
exception. `DatagramBatch` reads up to `count` datagrams of at most `slot` bytes each in one
call and reports how the call ended by its return value and errno, without an exception; a
call that returns fewer than asked found the socket empty (``MSG_DONTWAIT`` stops there). A
datagram longer than `slot` is cut there. The busy host's proc connector is the reason
(docs/performance.md#process-events).
"""

from __future__ import annotations

import ctypes
import errno

MSG_DONTWAIT = 0x40


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_IoVec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("length", ctypes.c_uint)]


class DatagramBatch:
    """Reads datagrams of one socket (by descriptor) in batches."""

    def __init__(self, fd: int, *, slot: int, count: int):
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            self._recvmmsg = libc.recvmmsg
        except AttributeError:
            raise OSError(errno.ENOSYS, "recvmmsg is not in the C library") from None
        self._recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                                   ctypes.c_void_p]
        self._recvmmsg.restype = ctypes.c_int
        self.fd, self.slot, self.count = fd, slot, count
        self._buffer = ctypes.create_string_buffer(slot * count)
        self._iovecs = (_IoVec * count)()
        self._entries = (_MMsgHdr * count)()
        base = ctypes.addressof(self._buffer)
        for index in range(count):
            self._iovecs[index].base = base + index * slot
            self._iovecs[index].length = slot
            self._entries[index].hdr.iov = ctypes.pointer(self._iovecs[index])
            self._entries[index].hdr.iovlen = 1
        self._entries_address = ctypes.addressof(self._entries)
        self.data = memoryview(self._buffer).cast("B")  # datagram i at i * slot

    def receive(self) -> tuple[int, int]:
        """(datagrams read, 0), or (0, errno) when the call failed (EAGAIN: none queued)."""
        received = self._recvmmsg(self.fd, self._entries_address, self.count, MSG_DONTWAIT,
                                  None)
        if received < 0:
            return 0, ctypes.get_errno()
        return received, 0
