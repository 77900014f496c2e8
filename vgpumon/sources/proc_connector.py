"""The netlink process connector: EXEC and EXIT events of every process, from the kernel.

`parse_datagram` is pure. `ProcConnector` owns the socket: it subscribes (with the kernel-side
event filter on Linux 6.6+), proves the subscription works with a self-test (the kernel
silently ignores subscribers outside the initial user and PID namespaces), and drains
datagrams without blocking. ``ENOBUFS`` means events were lost; the caller rescans /proc.
"""

from __future__ import annotations

import errno
import os
import platform
import select
import socket
import struct
import time
from dataclasses import dataclass

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
SO_RCVBUFFORCE = 33

EV_FORK = 0x00000001
EV_EXEC = 0x00000002
EV_COREDUMP = 0x40000000
EV_EXIT = 0x80000000

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_PROC_EVENT = struct.Struct("=IIQ")
_EXEC = struct.Struct("=ii")
_EXIT = struct.Struct("=iiIiii")
_FORK = struct.Struct("=iiii")
_COREDUMP = struct.Struct("=ii")

RECEIVE_BUFFER = 4 << 20


class ConnectorError(OSError):
    """The connector cannot be used here (privilege, namespace, kernel)."""


class EventsLost(Exception):
    """The receive buffer overflowed: some events were dropped by the kernel."""


@dataclass(frozen=True)
class ProcEvent:
    """One process event. For exits `status` is the wait(2) status."""

    kind: str  # exec, exit, fork, coredump
    pid: int
    tgid: int
    timestamp_ns: int
    status: int | None = None
    parent_tgid: int | None = None

    @property
    def is_process(self) -> bool:
        """True for the whole process (thread-group leader), not one of its threads."""
        return self.pid == self.tgid


def parse_datagram(data: bytes) -> list[ProcEvent]:
    """All process events in one netlink datagram; anything malformed is skipped."""
    found: list[ProcEvent] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, _flags, _seq, _port = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        if msg_type == NLMSG_DONE:
            event = _parse_cn_msg(data, offset + _NLMSGHDR.size, offset + length)
            if event is not None:
                found.append(event)
        offset += (length + 3) & ~3
    return found


def _parse_cn_msg(data: bytes, start: int, end: int) -> ProcEvent | None:
    if start + _CN_MSG.size + _PROC_EVENT.size > end:
        return None
    idx, val, _seq, _ack, _length, _flags = _CN_MSG.unpack_from(data, start)
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
        return None
    what, _cpu, timestamp = _PROC_EVENT.unpack_from(data, start + _CN_MSG.size)
    body = start + _CN_MSG.size + _PROC_EVENT.size
    layouts = {EV_EXEC: _EXEC, EV_EXIT: _EXIT, EV_FORK: _FORK, EV_COREDUMP: _COREDUMP}
    layout = layouts.get(what)
    if layout is None or body + layout.size > end:
        return None
    fields = layout.unpack_from(data, body)
    if what == EV_EXEC:
        return ProcEvent("exec", fields[0], fields[1], timestamp)
    if what == EV_EXIT:
        pid, tgid, exit_code, _exit_signal, _ppid, ptgid = fields
        return ProcEvent("exit", pid, tgid, timestamp, status=exit_code, parent_tgid=ptgid)
    if what == EV_FORK:
        _ppid, ptgid, child_pid, child_tgid = fields
        return ProcEvent("fork", child_pid, child_tgid, timestamp, parent_tgid=ptgid)
    return ProcEvent("coredump", fields[0], fields[1], timestamp)


def kernel_supports_filter(release: str | None = None) -> bool:
    """The kernel-side event filter exists from Linux 6.6; older kernels drop the request."""
    release = release or platform.release()
    try:
        major, minor = (int(part) for part in release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 6)


def subscribe_message(event_mask: int | None) -> bytes:
    payload = (struct.pack("=I", PROC_CN_MCAST_LISTEN) if event_mask is None
               else struct.pack("=II", PROC_CN_MCAST_LISTEN, event_mask))
    cn_msg = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn_msg), NLMSG_DONE, 0, 0, 0) + cn_msg


class ProcConnector:
    """A subscribed, non-blocking proc-connector socket."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    @classmethod
    def open(cls, self_test_timeout: float = 2.0) -> ProcConnector:
        """Subscribe and prove that events arrive; raises ConnectorError otherwise."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                 NETLINK_CONNECTOR)
        except OSError as err:
            raise ConnectorError(err.errno, f"netlink socket: {err.strerror}") from None
        try:
            _set_receive_buffer(sock)
            sock.bind((0, 1 << (CN_IDX_PROC - 1)))
            mask = EV_EXEC | EV_EXIT if kernel_supports_filter() else None
            sock.send(subscribe_message(mask))
        except OSError as err:
            sock.close()
            raise ConnectorError(err.errno, f"subscribe: {err.strerror}") from None
        connector = cls(sock)
        try:
            connector._self_test(self_test_timeout)
        except ConnectorError:
            sock.close()
            raise
        sock.setblocking(False)
        return connector

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self) -> list[ProcEvent]:
        """Every event queued now. Raises EventsLost after a buffer overrun."""
        found: list[ProcEvent] = []
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return found
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    raise EventsLost() from None
                raise
            found.extend(parse_datagram(data))

    def close(self) -> None:
        self._sock.close()

    def _self_test(self, timeout: float) -> None:
        """Fork a child that exits at once and wait for its EXIT event."""
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self._sock], [], [], left)
            if not ready:
                break
            try:
                data = self._sock.recv(65536)
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    continue
                raise ConnectorError(err.errno, f"receive: {err.strerror}") from None
            if any(e.kind == "exit" and e.tgid == child for e in parse_datagram(data)):
                return
        raise ConnectorError(errno.ETIMEDOUT, "subscribed, but no events arrive (not in the "
                                              "initial user and PID namespace?)")


def _set_receive_buffer(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
