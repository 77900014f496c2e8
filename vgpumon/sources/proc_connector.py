"""The netlink process connector: EXEC and EXIT events of every process, from the kernel.

`parse_datagram` is pure. `ProcConnector` owns the socket: it subscribes (with the kernel-side
event filter on Linux 6.6+, and a socket filter that drops thread exits and every other event
kind before they are queued), proves the subscription works with a self-test (the kernel
silently ignores subscribers outside the initial user and PID namespaces), and drains
datagrams without blocking into one preallocated buffer. ``ENOBUFS`` means events were lost;
the caller rescans /proc.

`TrackedWatch` is a second subscription whose socket filter passes only the forks and exits
of the tracked processes: it wakes the loop at once when one of them starts a child or ends,
while the busy host's other events wait to be read in batches.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import select
import socket
import struct
import time
from collections.abc import Iterable
from typing import NamedTuple

from vgpumon.linux.datagrams import DatagramBatch
from vgpumon.linux.socket_filter import ACCEPT, DROP, Program, attach, word

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
# A whole datagram of one event (the event data as an exit's, the longest layout).
_WHOLE = struct.Struct("=IHHIIIIIIHHIIQiiIiii")
_LAYOUTS = {EV_EXEC: _EXEC, EV_EXIT: _EXIT, EV_FORK: _FORK, EV_COREDUMP: _COREDUMP}
_KINDS = {EV_EXEC: "exec", EV_EXIT: "exit", EV_FORK: "fork", EV_COREDUMP: "coredump"}

# Where a proc_event's fields are in a datagram (nlmsghdr 16 bytes, cn_msg 20, then `what`,
# `cpu`, `timestamp_ns` and the event's data), for the socket filters.
_WHAT = _NLMSGHDR.size + _CN_MSG.size
_DATA = _WHAT + _PROC_EVENT.size
EXEC_PID, EXEC_TGID = _DATA, _DATA + 4
EXIT_PID, EXIT_TGID = _DATA, _DATA + 4
FORK_PARENT_TGID, FORK_CHILD_PID, FORK_CHILD_TGID = _DATA + 4, _DATA + 8, _DATA + 12

RECEIVE_BUFFER = 4 << 20
# One datagram is one event of 76 bytes; a larger buffer costs nothing.
DATAGRAM_BUFFER = 4096
# recvmmsg: datagrams per call, and the room for each (a longer one falls back to the
# general parser, truncated: the kernel sends none).
BATCH_DATAGRAMS = 256
BATCH_SLOT = 128
# Datagrams read in one call at most, so that a flood cannot hold the loop (the rest is read
# at the next turn).
DRAIN_LIMIT = 4096
# A socket filter compares with this many tracked processes at most; with more, every
# process fork and exit passes.
TRACKED_WATCH_LIMIT = 2000


class ConnectorError(OSError):
    """The connector cannot be used here (privilege, namespace, kernel)."""


class EventsLost(Exception):
    """The receive buffer overflowed: some events were dropped by the kernel. `events` are
    those read before the overflow was reported (the ones still queued come next)."""

    def __init__(self, events: Iterable[ProcEvent] = ()):
        super().__init__("events lost")
        self.events = list(events)


class ProcEvent(NamedTuple):
    """One process event. For exits `status` is the wait(2) status; exits and forks name
    the parent process (`parent_tgid`)."""

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


def parse_datagram(data: bytes | bytearray, size: int | None = None) -> list[ProcEvent]:
    """All process events in one netlink datagram (its first `size` bytes); anything
    malformed is skipped."""
    found: list[ProcEvent] = []
    _parse_into(data, len(data) if size is None else size, found)
    return found


def _append_whole(fields: tuple[int, ...], found: list[ProcEvent]) -> bool:
    """Decode a datagram of one event unpacked with `_WHOLE`; False if it is not one."""
    (length, msg_type, _flags, _seq, _port, idx, val, _cn_seq, _ack, _cn_length, _cn_flags,
     what, _cpu, timestamp, a, b, c, d, _e, f) = fields
    if (length != _WHOLE.size or msg_type != NLMSG_DONE or idx != CN_IDX_PROC
            or val != CN_VAL_PROC):
        return False
    if what == EV_EXEC:
        found.append(ProcEvent("exec", a, b, timestamp))
    elif what == EV_EXIT:
        found.append(ProcEvent("exit", a, b, timestamp, c, f))
    elif what == EV_FORK:
        found.append(ProcEvent("fork", c, d, timestamp, None, b))
    elif what == EV_COREDUMP:
        found.append(ProcEvent("coredump", a, b, timestamp))
    return True


def _parse_into(data: bytes | bytearray | memoryview, end: int,
                found: list[ProcEvent]) -> None:
    # One message, as the kernel sends each event: one unpack.
    if end == _WHOLE.size and _append_whole(_WHOLE.unpack_from(data), found):
        return
    offset = 0
    while offset + _NLMSGHDR.size <= end:
        length, msg_type, _flags, _seq, _port = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > end:
            break
        if msg_type == NLMSG_DONE:
            event = _parse_cn_msg(data, offset + _NLMSGHDR.size, offset + length)
            if event is not None:
                found.append(event)
        offset += (length + 3) & ~3


def _parse_first(data: memoryview, start: int, room: int, found: list[ProcEvent]) -> None:
    """The first message of the datagram at `start` (at most `room` bytes)."""
    length, msg_type, _flags, _seq, _port = _NLMSGHDR.unpack_from(data, start)
    if msg_type == NLMSG_DONE and _NLMSGHDR.size <= length <= room:
        event = _parse_cn_msg(data, start + _NLMSGHDR.size, start + length)
        if event is not None:
            found.append(event)


def _parse_cn_msg(data: bytes | bytearray | memoryview, start: int,
                  end: int) -> ProcEvent | None:
    if start + _CN_MSG.size + _PROC_EVENT.size > end:
        return None
    idx, val, _seq, _ack, _length, _flags = _CN_MSG.unpack_from(data, start)
    if idx != CN_IDX_PROC or val != CN_VAL_PROC:
        return None
    what, _cpu, timestamp = _PROC_EVENT.unpack_from(data, start + _CN_MSG.size)
    body = start + _CN_MSG.size + _PROC_EVENT.size
    layout = _LAYOUTS.get(what)
    if layout is None or body + layout.size > end:
        return None
    fields = layout.unpack_from(data, body)
    if what == EV_EXIT:
        pid, tgid, exit_code, _exit_signal, _ppid, ptgid = fields
        return ProcEvent("exit", pid, tgid, timestamp, exit_code, ptgid)
    if what == EV_FORK:
        _ppid, ptgid, child_pid, child_tgid = fields
        return ProcEvent("fork", child_pid, child_tgid, timestamp, None, ptgid)
    return ProcEvent(_KINDS[what], fields[0], fields[1], timestamp)


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


def event_filter() -> Program:
    """Execs, and exits of whole processes; no thread exits, forks or other event kinds."""
    return (Program()
            .load_word(_WHAT)
            .skip_unless(word(EV_EXEC)).ret(ACCEPT)
            .skip_if(word(EV_EXIT)).ret(DROP)
            .load_word(EXIT_PID).a_to_x().load_word(EXIT_TGID)
            .skip_if_x().ret(DROP)
            .ret(ACCEPT))


def tracked_filter(tracked: Iterable[int]) -> Program:
    """Forks of a new process (not a thread) by one of `tracked` (thread-group ids), and
    exits of those processes themselves."""
    chosen = sorted(set(tracked))
    program = (Program()
               .load_word(_WHAT)
               .skip_unless(word(EV_FORK), 7)
               .load_word(FORK_CHILD_PID).a_to_x().load_word(FORK_CHILD_TGID)
               .skip_if_x().ret(DROP)
               .load_word(FORK_PARENT_TGID).jump(7)  # to the comparisons, with the parent
               .skip_if(word(EV_EXIT)).ret(DROP)
               .load_word(EXIT_PID).a_to_x().load_word(EXIT_TGID)
               .skip_if_x().ret(DROP))  # then the comparisons, with the exiting process
    if len(chosen) > TRACKED_WATCH_LIMIT:
        return program.ret(ACCEPT)
    for pid in chosen:
        program.skip_unless(word(pid)).ret(ACCEPT)
    return program.ret(DROP)


def _subscribed(event_mask: int) -> socket.socket:
    """A netlink socket listening to the proc connector (only to `event_mask` where the
    kernel filters); raises ConnectorError."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                             NETLINK_CONNECTOR)
    except OSError as err:
        raise ConnectorError(err.errno, f"netlink socket: {err.strerror}") from None
    try:
        _set_receive_buffer(sock)
        sock.bind((0, 1 << (CN_IDX_PROC - 1)))
        sock.send(subscribe_message(event_mask if kernel_supports_filter() else None))
    except OSError as err:
        sock.close()
        raise ConnectorError(err.errno, f"subscribe: {err.strerror}") from None
    return sock


def _self_test(sock: socket.socket, timeout: float, kind: str) -> None:
    """Fork a child that exits at once and wait for its `kind` event on `sock`."""
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        try:
            data = sock.recv(DATAGRAM_BUFFER)
        except OSError as err:
            if err.errno == errno.ENOBUFS:
                continue
            raise ConnectorError(err.errno, f"receive: {err.strerror}") from None
        if any(e.kind == kind and e.tgid == child for e in parse_datagram(data)):
            return
    raise ConnectorError(errno.ETIMEDOUT, "subscribed, but no events arrive (not in the "
                                          "initial user and PID namespace?)")


class ProcConnector:
    """A subscribed, non-blocking proc-connector socket."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buffer = bytearray(DATAGRAM_BUFFER)
        self.drained = True  # the last `receive` read everything that was queued
        try:
            self._batch: DatagramBatch | None = DatagramBatch(
                sock.fileno(), slot=BATCH_SLOT, count=BATCH_DATAGRAMS)
        except OSError:
            self._batch = None  # one `recv_into` a datagram instead
        self._slots = struct.Struct(_WHOLE.format + f"{BATCH_SLOT - _WHOLE.size}x")

    @classmethod
    def open(cls, self_test_timeout: float = 2.0) -> ProcConnector:
        """Subscribe and prove that events arrive; raises ConnectorError otherwise."""
        sock = _subscribed(EV_EXEC | EV_EXIT)
        with contextlib.suppress(OSError):
            # Not essential: without it the caller skips what the filter would have dropped.
            attach(sock, event_filter())
        try:
            _self_test(sock, self_test_timeout, "exit")
        except ConnectorError:
            sock.close()
            raise
        sock.setblocking(False)
        return cls(sock)

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self, limit: int = DRAIN_LIMIT) -> list[ProcEvent]:
        """The events queued now, from about `limit` datagrams at most (`drained` tells
        whether that was all). Raises EventsLost after a buffer overrun.

        Datagrams are read `BATCH_DATAGRAMS` per system call (``recvmmsg``), which says how
        the drain ended without an exception; where the C library lacks it, one
        ``recv_into`` each, until the ``EAGAIN`` exception (docs/performance.md)."""
        if self._batch is None:
            return self._receive_each(limit)
        batch, slots = self._batch, self._slots
        found: list[ProcEvent] = []
        read = 0
        self.drained = False
        while read < limit:
            received, error = batch.receive()
            if error:
                if error == errno.EINTR:
                    continue
                if error in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.drained = True
                    return found
                if error == errno.ENOBUFS:
                    raise EventsLost(found)
                raise OSError(error, os.strerror(error))
            data = batch.data
            # A slot holds one datagram (its first `slot` bytes, then what an earlier one
            # left): its netlink header says how long its message is, and the kernel sends
            # one message a datagram.
            for index, fields in enumerate(slots.iter_unpack(data[:received * batch.slot])):
                if not _append_whole(fields, found):
                    _parse_first(data, index * batch.slot, batch.slot, found)
            read += received
            if received < batch.count:  # the call stopped where the socket was empty
                self.drained = True
                return found
        return found

    def _receive_each(self, limit: int) -> list[ProcEvent]:
        """`receive` with one ``recv_into`` a datagram: the drain ends where it raises
        ``BlockingIOError``, one exception per call, however many datagrams it reads."""
        found: list[ProcEvent] = []
        buffer = self._buffer
        receive_into = self._sock.recv_into
        self.drained = False
        for _ in range(limit):
            try:
                size = receive_into(buffer)
            except BlockingIOError:
                self.drained = True
                return found
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    raise EventsLost(found) from None
                raise
            _parse_into(buffer, size, found)
        return found

    def close(self) -> None:
        self._sock.close()


class TrackedWatch:
    """A proc-connector socket that receives only the forks and exits of the `tracked`
    processes: the kernel's socket filter drops every other event before it is queued."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buffer = bytearray(DATAGRAM_BUFFER)
        self.tracked: frozenset[int] = frozenset()

    @classmethod
    def open(cls, self_test_timeout: float = 2.0) -> TrackedWatch:
        """Subscribe, filter, and prove the filter passes a fork of ours; raises
        ConnectorError otherwise."""
        sock = _subscribed(EV_FORK | EV_EXIT)
        watch = cls(sock)
        try:
            watch.set_tracked({os.getpid()})
            _self_test(sock, self_test_timeout, "fork")
            watch.set_tracked(())
        except OSError as err:
            sock.close()
            raise ConnectorError(err.errno, f"socket filter: {err.strerror}") from None
        sock.setblocking(False)
        return watch

    def fileno(self) -> int:
        return self._sock.fileno()

    def set_tracked(self, tracked: Iterable[int]) -> None:
        """Pass the forks and exits of these processes from now on (raises OSError)."""
        wanted = frozenset(tracked)
        attach(self._sock, tracked_filter(wanted))
        self.tracked = wanted

    def receive(self) -> list[ProcEvent]:
        """The events queued now. An overrun loses only wake-ups: the same events come
        through the `ProcConnector` too."""
        found: list[ProcEvent] = []
        while True:
            try:
                size = self._sock.recv_into(self._buffer)
            except BlockingIOError:
                return found
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    continue
                raise
            _parse_into(self._buffer, size, found)

    def close(self) -> None:
        self._sock.close()


def _set_receive_buffer(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
