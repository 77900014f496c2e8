"""A small HTTP/1.1 server on one thread: a selector, non-blocking sockets, fixed deadlines.

Every connection is a state machine driven by readiness events: (TLS handshake) -> reading a
request head -> answering it -> reading the next (keep-alive) or closing. Answering is cheap
(the exporter only reads the published snapshot), so it runs on the server thread too; what
may block (a bcrypt check, `Deferred`) goes to one worker thread and comes back through a
wake-up socket. The thread count is therefore constant: the server thread and the worker,
however many clients connect.

No client can hold the server: each state has a deadline (TLS handshake, request head,
keep-alive idle, writing the answer, the lingering close), a connection past it is closed,
and at most `max_connections` are open. A connection beyond the cap closes the open one
that has waited longest in its state (silent since it connected, a head half sent, idle
between requests, a reader that stopped reading) instead of being refused. Refusing would
let anyone who keeps the cap full of half-open connections lock Prometheus out; evicting the
longest waiting one lets a scraper's fresh connection in, and it would be closed only after
every connection opened after it, in the moment between its connect and its request (sent at
once). A scraper's idle keep-alive connection may be closed in a flood; the scraper then
reconnects (Go's HTTP client retries a GET when a reused connection was closed).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import resource
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from itertools import islice
from typing import Any

from vgpumon.http.request import (
    MAX_HEAD,
    HttpError,
    Request,
    head_end,
    parse_request,
    response_head,
)

log = logging.getLogger(__name__)

# A client must finish the TLS handshake within this time, or its connection is closed.
HANDSHAKE_TIMEOUT_SECONDS = 10.0
# ... and send a whole request head within this time of its first byte (or of connecting).
HEADER_TIMEOUT_SECONDS = 10.0
# A kept-alive connection that sends nothing for this long is closed (longer than a 1m
# scrape interval, so Prometheus keeps reusing its connection).
IDLE_TIMEOUT_SECONDS = 120.0
# An answer must be taken by the client within this time.
WRITE_TIMEOUT_SECONDS = 30.0
# After an answer with `Connection: close`, what the client still sends is read and dropped
# for at most this long, so that closing does not reset the connection under the answer.
LINGER_SECONDS = 2.0
# Open connections at most (and never more than half the descriptor limit); see the module's
# docstring for what happens beyond.
MAX_CONNECTIONS = 512

_READ_SIZE = 65536
_ACCEPT_BURST = 64  # accepts per wake-up, so a connect flood cannot starve the clients
_IOV_MAX = 64
_BACKLOG = 1024
_ACCEPT_PAUSE_SECONDS = 0.1  # out of descriptors with nothing to close: stop accepting

_HANDSHAKE, _READ, _WAIT, _WRITE, _LINGER = "handshake", "read", "wait", "write", "linger"
# Deadline queues: a connection is in exactly one, by what it is waiting for.
_Q_HANDSHAKE, _Q_HEAD, _Q_IDLE, _Q_WRITE, _Q_LINGER = range(5)


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: Sequence[bytes] = ()  # parts, sent as they are (no copy into one buffer)
    close: bool = False


@dataclass(frozen=True)
class Deferred:
    """An answer that needs blocking work first: `work()` runs on the worker thread, then
    `then(result)` on the server thread builds the response."""

    work: Callable[[], Any]
    then: Callable[[Any], Response]


Reply = Response | Deferred


class _Connection:
    __slots__ = ("client", "close_after", "closed", "deadline", "inbuf", "mask", "out",
                 "pending", "queue", "serial", "since", "sock", "state", "tls")

    def __init__(self, sock: socket.socket, client: str, tls: bool):
        self.sock = sock
        self.client = client
        self.tls = tls
        self.state = _HANDSHAKE if tls else _READ
        self.inbuf = bytearray()
        self.out: deque[memoryview] = deque()
        self.close_after = False
        self.queue = -1
        self.since = 0.0  # when it entered its current state
        self.deadline = 0.0
        self.mask = 0
        self.serial = 0  # which request a worker result belongs to
        self.pending: Request | None = None  # the request the worker is busy with
        self.closed = False


class SelectorServer:
    """Accepts and serves connections on `address` from `serve_forever()`'s thread.

    Subclasses answer requests (`respond`) and may serve TLS (`ssl_context`,
    `client_allowed`) and add headers to every response (`extra_headers`).
    """

    server_version = "vgpumon"
    handshake_timeout = HANDSHAKE_TIMEOUT_SECONDS
    header_timeout = HEADER_TIMEOUT_SECONDS
    idle_timeout = IDLE_TIMEOUT_SECONDS
    write_timeout = WRITE_TIMEOUT_SECONDS
    linger_timeout = LINGER_SECONDS

    def __init__(self, address: tuple[str, int]):
        self.max_connections = _connection_cap(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(_BACKLOG)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.server_address = listener.getsockname()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._connections: set[_Connection] = set()
        self._queues: list[dict[_Connection, float]] = [{} for _ in range(5)]
        self._jobs: queue.SimpleQueue[tuple[_Connection, int, Deferred] | None] = \
            queue.SimpleQueue()
        self._results: deque[tuple[_Connection, int, Deferred, Any, BaseException | None]] = \
            deque()
        self._ready: deque[_Connection] = deque()  # answered, with a request buffered
        self._accepting = False
        self._accept_resume = 0.0
        self._stop = False
        self._running = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._date = (0, "")
        self._evicted = 0
        self._evicted_logged_at = -1e9

    # -- what subclasses provide --------------------------------------------------------------

    def respond(self, request: Request, client: str) -> Reply:
        raise NotImplementedError

    def ssl_context(self) -> ssl.SSLContext | None:
        return None

    def client_allowed(self, peer_certificate: Any) -> bool:
        return True

    def extra_headers(self) -> tuple[tuple[str, str], ...]:
        return ()

    # -- running ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def serve_in_thread(self) -> threading.Thread:
        self._starting()  # a shutdown() right after this waits for the thread
        thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until `shutdown()`. (`poll_interval` is accepted for socketserver's
        signature; nothing polls.)"""
        self._starting()
        worker = threading.Thread(target=self._work, name="http-worker", daemon=True)
        worker.start()
        self._selector.register(self._wake_read, selectors.EVENT_READ, self._on_wake)
        self._selector.register(self._listener, selectors.EVENT_READ, self._on_accept)
        self._accepting = True
        try:
            while not self._stop:
                try:
                    self._turn()
                except Exception:  # a bug; the server must go on serving the others
                    log.error("http server turn failed", exc_info=True)
                    time.sleep(0.1)  # and a bug that repeats must not spin a core
        finally:
            self._jobs.put(None)
            worker.join()
            if self._accepting:
                self._selector.unregister(self._listener)
                self._accepting = False
            self._selector.unregister(self._wake_read)
            self._running = False
            self._stop = False
            self._stopped.set()

    def _starting(self) -> None:
        self._stopped.clear()
        self._running = True

    def _turn(self) -> None:
        for key, _mask in self._selector.select(self._timeout(time.monotonic())):
            if isinstance(key.data, _Connection):
                self._guarded(key.data, self._advance)
            else:
                key.data()
        for _ in range(len(self._ready)):  # each once per turn: pipelining is fair
            self._guarded(self._ready.popleft(), self._continue)
        self._expire(time.monotonic())

    def shutdown(self) -> None:
        """Stop `serve_forever()` and wait until it has returned (at once if not running)."""
        if not self._running:
            return
        self._stop = True
        self._wake()
        self._stopped.wait()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # gone when this returns: thread counts are exact

    def server_close(self) -> None:
        """Close the listening socket and every connection."""
        self.shutdown()
        if self._closed:
            return
        self._closed = True
        for connection in list(self._connections):
            self._close(connection)
        self._listener.close()
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()

    # -- the worker thread ----------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            connection, serial, deferred = job
            if connection.closed or connection.serial != serial:
                continue  # timed out or evicted while queued: nobody waits for it
            try:
                result, error = deferred.work(), None
            except Exception as err:
                result, error = None, err
            self._results.append((connection, serial, deferred, result, error))
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._wake_write.send(b"\0")

    def _on_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_read.recv(4096):
                pass
        while self._results:
            connection, serial, deferred, result, error = self._results.popleft()
            if connection.closed or connection.serial != serial:
                continue
            if error is not None:
                log.error("http request failed client=%s", connection.client,
                          exc_info=error)
                self._guarded(connection, partial(self._send_built, build=_failed))
            else:
                then = partial(deferred.then, result)
                self._guarded(connection, partial(self._send_built, build=then))

    # -- connections ------------------------------------------------------------------------

    def _on_accept(self) -> None:
        for _ in range(_ACCEPT_BURST):
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the client gave up (or a firewall said no) before accept
                if err.errno in (errno.EMFILE, errno.ENFILE) and self._evict_one(
                        "out of file descriptors"):
                    continue
                # Nothing to close, or out of memory: the listener would stay readable, so
                # stop accepting for a moment rather than spin.
                log.warning("http accept failed error=%r", str(err))
                self._pause_accepting()
                return
            if len(self._connections) >= max(1, self.max_connections):
                self._evict_one("connection cap reached")
            self._open(sock, str(address[0]))

    def _open(self, sock: socket.socket, client: str) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            # Headers and body may go out in two writes: with Nagle on, the second waits for
            # the ACK of the first, which a keep-alive client delays by up to 40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = self.ssl_context()
        if context is not None:
            try:
                sock = context.wrap_socket(sock, server_side=True,
                                           do_handshake_on_connect=False)
            except (OSError, ValueError) as err:
                log.debug("tls wrap failed client=%s error=%r", client, str(err))
                sock.close()
                return
        connection = _Connection(sock, client, context is not None)
        self._connections.add(connection)
        if connection.tls:
            self._deadline(connection, _Q_HANDSHAKE, self.handshake_timeout)
        else:
            self._deadline(connection, _Q_HEAD, self.header_timeout)
        self._set_mask(connection, selectors.EVENT_READ)

    def _guarded(self, connection: _Connection,
                 step: Callable[[_Connection], None]) -> None:
        """Run one step of a connection; a bug costs that connection, never the server."""
        try:
            step(connection)
        except Exception:
            log.error("http connection failed client=%s", connection.client, exc_info=True)
            self._close(connection)

    def _advance(self, connection: _Connection) -> None:
        state = connection.state
        if state == _HANDSHAKE:
            self._handshake(connection)
        elif state == _READ:
            self._read(connection)
        elif state == _WRITE:
            self._write(connection)
        elif state == _LINGER:
            self._linger(connection)

    def _handshake(self, connection: _Connection) -> None:
        sock = connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_mask(connection, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._set_mask(connection, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError) as err:  # SSLError, reset: this connection's
            log.debug("tls handshake failed client=%s error=%r", connection.client, str(err))
            self._start_linger(connection)  # the alert is out; a reset could overtake it
            return
        if not self.client_allowed(sock.getpeercert()):
            log.warning("tls client rejected: no allowed SAN in its certificate client=%s",
                        connection.client)
            self._start_linger(connection)
            return
        connection.state = _READ
        self._deadline(connection, _Q_HEAD, self.header_timeout)
        self._read(connection)

    def _read(self, connection: _Connection) -> None:
        sock = connection.sock
        while not _holds_head(connection.inbuf):
            # At most one head (or one byte too many) is buffered: what a client pipelines
            # beyond waits in its socket until the requests before are answered.
            size = min(_READ_SIZE, MAX_HEAD + 1 - len(connection.inbuf))
            try:
                data = sock.recv(size)
            except (BlockingIOError, ssl.SSLWantReadError):
                self._set_mask(connection, selectors.EVENT_READ)
                break
            except ssl.SSLWantWriteError:
                self._set_mask(connection, selectors.EVENT_WRITE)
                break
            except (OSError, ValueError) as err:
                log.debug("http connection error client=%s error=%r", connection.client,
                          str(err))
                self._close(connection)
                return
            if not data:
                self._close(connection)  # the client closed (mid-request or between them)
                return
            connection.inbuf += data
            if len(data) < size and not connection.tls:
                self._set_mask(connection, selectors.EVENT_READ)
                break
        self._serve_buffered(connection)

    def _serve_buffered(self, connection: _Connection) -> None:
        buffer = connection.inbuf
        end = head_end(buffer)
        if end < 0 or end > MAX_HEAD:
            if len(buffer) > MAX_HEAD or end > MAX_HEAD:
                self._send(connection, None, _error(431))
            elif buffer and connection.queue == _Q_IDLE:
                # The next request began: its head has the header deadline from now on.
                self._deadline(connection, _Q_HEAD, self.header_timeout)
            return
        head = bytes(buffer[:end])
        del buffer[:end]
        try:
            request = parse_request(head)
        except HttpError as err:
            log.debug("http bad request client=%s status=%d error=%r", connection.client,
                      err.status, err.message)
            self._send(connection, None, _error(err.status, err.message))
            return
        self._send_built(connection, lambda: self.respond(request, connection.client),
                         request)

    def _send_built(self, connection: _Connection, build: Callable[[], Reply],
                    request: Request | None = None) -> None:
        if request is None:
            request = connection.pending
        try:
            reply = build()
        except Exception:
            log.error("http request failed client=%s", connection.client, exc_info=True)
            reply = _error(500)
        if isinstance(reply, Deferred):
            connection.state = _WAIT
            connection.serial += 1
            connection.pending = request
            self._deadline(connection, _Q_HEAD, self.header_timeout)
            self._set_mask(connection, 0)  # nothing more is read until it is answered
            self._jobs.put((connection, connection.serial, reply))
            return
        self._send(connection, request, reply)

    def _send(self, connection: _Connection, request: Request | None,
              response: Response) -> None:
        """Queue `response` (to `request`; None: a request that could not be parsed)."""
        size = sum(len(part) for part in response.body)
        close = response.close or request is None or not request.keep_alive
        headers = [("Server", self.server_version), ("Date", self._http_date()),
                   *response.headers, ("Content-Length", str(size)), *self.extra_headers()]
        if close:
            headers.append(("Connection", "close"))
        elif request is not None and request.version == "HTTP/1.0":
            headers.append(("Connection", "keep-alive"))
        connection.out.append(memoryview(response_head(response.status, headers)))
        if request is None or request.method != "HEAD":
            connection.out.extend(memoryview(part) for part in response.body if part)
        if request is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("http client=%s request=%r status=%d", connection.client,
                      f"{request.method} {request.target} {request.version}",
                      response.status)
        connection.close_after = close
        connection.state = _WRITE
        self._deadline(connection, _Q_WRITE, self.write_timeout)
        self._write(connection)

    def _write(self, connection: _Connection) -> None:
        sock, out = connection.sock, connection.out
        while out:
            try:
                # SSLSocket has no sendmsg; a plain socket takes every part in one call.
                sent = (sock.send(out[0]) if connection.tls
                        else sock.sendmsg(islice(out, _IOV_MAX)))
            except (BlockingIOError, ssl.SSLWantWriteError):
                self._set_mask(connection, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._set_mask(connection, selectors.EVENT_READ)
                return
            except (OSError, ValueError) as err:
                log.debug("http connection error client=%s error=%r", connection.client,
                          str(err))
                self._close(connection)
                return
            while sent and out:
                first = out[0]
                if sent >= len(first):
                    sent -= len(first)
                    out.popleft()
                else:
                    out[0] = first[sent:]
                    sent = 0
        if connection.close_after:
            self._start_linger(connection)
            return
        connection.state = _READ
        self._deadline(connection, _Q_IDLE, self.idle_timeout)
        # Reading stops while a whole request head waits (see `_read`).
        held = _holds_head(connection.inbuf)
        self._set_mask(connection, 0 if held else selectors.EVENT_READ)
        if connection.inbuf or connection.tls:
            self._ready.append(connection)  # a pipelined request, or one TLS decrypted already

    def _continue(self, connection: _Connection) -> None:
        if connection.closed or connection.state != _READ:
            return
        if _holds_head(connection.inbuf):
            self._serve_buffered(connection)
        elif connection.inbuf or (isinstance(connection.sock, ssl.SSLSocket)
                                  and connection.sock.pending()):
            # The rest of a head, from the socket or from what OpenSSL holds (the selector
            # cannot tell of those bytes).
            self._read(connection)

    def _start_linger(self, connection: _Connection) -> None:
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(connection)
            return
        connection.state = _LINGER
        connection.inbuf.clear()
        self._deadline(connection, _Q_LINGER, self.linger_timeout)
        self._set_mask(connection, selectors.EVENT_READ)
        self._linger(connection)

    def _linger(self, connection: _Connection) -> None:
        for _ in range(16):
            try:
                data = connection.sock.recv(_READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (OSError, ValueError):
                break
            if not data:
                break
        self._close(connection)

    def _close(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        if connection.queue >= 0:
            del self._queues[connection.queue][connection]
            connection.queue = -1
        if connection.mask:
            self._selector.unregister(connection.sock)
            connection.mask = 0
        connection.out.clear()
        connection.sock.close()
        self._connections.discard(connection)

    def _set_mask(self, connection: _Connection, mask: int) -> None:
        if mask == connection.mask or connection.closed:
            return
        if connection.mask == 0:
            self._selector.register(connection.sock, mask, connection)
        elif mask == 0:
            self._selector.unregister(connection.sock)
        else:
            self._selector.modify(connection.sock, mask, connection)
        connection.mask = mask

    # -- deadlines and the cap --------------------------------------------------------------

    def _deadline(self, connection: _Connection, which: int, seconds: float) -> None:
        """Enter a state: its queue, and its deadline from now. Each queue is in order of
        entry and, having one timeout, of deadline (a timeout changed on the server object
        applies to states entered from then on)."""
        if connection.queue >= 0:
            del self._queues[connection.queue][connection]
        connection.queue = which
        connection.since = time.monotonic()
        connection.deadline = connection.since + seconds
        self._queues[which][connection] = connection.deadline

    def _heads(self) -> list[_Connection]:
        return [next(iter(q)) for q in self._queues if q]

    def _timeout(self, now: float) -> float | None:
        if self._ready:
            return 0.0
        soonest = min(self._heads(), key=lambda c: c.deadline, default=None)
        wake = soonest.deadline if soonest is not None else None
        if not self._accepting and not self._stop:
            wake = self._accept_resume if wake is None else min(wake, self._accept_resume)
        return None if wake is None else max(0.0, wake - now)

    def _expire(self, now: float) -> None:
        for entries in self._queues:
            while entries:
                connection, deadline = next(iter(entries.items()))
                if deadline > now:
                    break
                log.debug("http connection timed out client=%s state=%s", connection.client,
                          connection.state)
                self._close(connection)
        if not self._accepting and not self._stop and now >= self._accept_resume:
            self._selector.register(self._listener, selectors.EVENT_READ, self._on_accept)
            self._accepting = True

    def _evict_one(self, why: str) -> bool:
        """Close the connection that has waited longest in its state (see the module's
        docstring)."""
        victim = min(self._heads(), key=lambda c: c.since, default=None)
        if victim is None:
            return False
        self._close(victim)
        self._evicted += 1
        now = time.monotonic()
        if now - self._evicted_logged_at >= 60.0:
            log.warning("http connections closed early reason=%r closed=%d open=%d cap=%d",
                        why, self._evicted, len(self._connections), self.max_connections)
            self._evicted_logged_at = now
            self._evicted = 0
        return True

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._selector.unregister(self._listener)
            self._accepting = False
        self._accept_resume = time.monotonic() + _ACCEPT_PAUSE_SECONDS

    def _http_date(self) -> str:
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, formatdate(second, usegmt=True))
        return self._date[1]


def _holds_head(buffer: bytearray) -> bool:
    """Whether `buffer` holds a whole request head, or more than one may be (a 431)."""
    return len(buffer) > MAX_HEAD or head_end(buffer) >= 0


def _connection_cap(descriptors: int) -> int:
    if descriptors == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return min(MAX_CONNECTIONS, max(16, descriptors // 2))


def _failed() -> Response:
    return _error(500)


def _error(status: int, message: str = "") -> Response:
    text = (message or HTTPStatus(status).phrase.lower()) + "\n"
    return Response(status, (("Content-Type", "text/plain; charset=utf-8"),),
                    (text.encode(),), close=True)
