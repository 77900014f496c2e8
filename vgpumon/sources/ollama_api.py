"""Ollama's HTTP API (``/api/version``, ``/api/ps``), polled from a thread of its own.

The loop must never wait on the network, so one thread polls every interval over one
kept-alive connection, with the configured timeout as a deadline for each exchange (a server
that trickles bytes is cut off too, by socket timeouts: no thread per request), reads at most
`MAX_BODY` bytes, and wakes the loop through a pipe when a result is ready. The loop reads
`latest`, an immutable `OllamaApiState`.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from vgpumon.ollama.api import ApiFormatError, LoadedModel, parse_ps, parse_version

log = logging.getLogger(__name__)

MAX_BODY = 4 << 20  # /api/ps of a busy server is a few KB; anything near this is not Ollama
READ_CHUNK = 65536
# /api/version is asked on each new connection and at least this often on a kept one.
VERSION_RECHECK_SECONDS = 60.0


class ApiUnavailable(Exception):
    """Ollama did not answer in time, refused, or answered with an HTTP error."""


class HttpStatus(ApiUnavailable):
    """Ollama answered with an HTTP status other than 200."""

    def __init__(self, path: str, status: int, reason: str):
        super().__init__(f"GET {path}: HTTP {status} {reason}")
        self.status = status


@dataclass(frozen=True)
class OllamaApiState:
    """The API as of `checked_at`. `up` means both endpoints answered with valid JSON."""

    checked_at: float
    up: bool
    version: str | None = None
    models: tuple[LoadedModel, ...] | None = ()  # None: no /api/ps (before 0.1.38)
    error: str | None = None
    garbled: bool = False  # it answered, but not in a form vgpumon understands
    duration: float = 0.0


def fetch(url: str, path: str, timeout: float) -> bytes:
    """GET `url` + `path` on a connection of its own, with `timeout` as a deadline for the
    whole exchange (see `ApiClient.get`)."""
    client = ApiClient(url)
    try:
        return client.get(path, timeout)[0]
    finally:
        client.close()


class ApiClient:
    """GETs to one Ollama over one kept-alive connection.

    Each exchange has the timeout as a deadline for the whole of it: a socket timeout alone
    bounds each recv(), and a server that sends a byte now and then (in its headers or its
    body) would hold the poller for ever. So every socket call gets the time left until the
    deadline as its timeout, and none starts after it (`_DeadlineSocket`): no thread is
    needed to cut a hung exchange off. (Resolving the host name is not bounded: the C
    library's resolver takes no timeout; it runs on the poller's thread, never the loop's.)

    The connection is kept between exchanges, as a browser keeps it: a poll then costs no
    connect, no resolving and no new socket (a fresh connection per request was most of
    the poller's CPU). A kept connection that the server closed in the meantime (a restart,
    an idle timeout) fails before any answer: the GET is tried once more on a new one. Any
    other failure, an answer other than 200 or a body cut off drops the connection.
    """

    def __init__(self, url: str):
        self.url = url
        parts = urlsplit(url)
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path or ""
        self._connection: _Connection | None = None

    def connected(self) -> bool:
        """Whether the next exchange goes over a kept connection."""
        return self._connection is not None and self._connection.sock is not None

    def get(self, path: str, timeout: float) -> tuple[bytes, bool]:
        """(body, whether a new connection carried it); raises `ApiUnavailable` or
        `ApiFormatError`."""
        if not self._host:  # the config accepts no URL without a host
            raise ApiUnavailable(f"no host in {self.url!r}")
        deadline = time.monotonic() + timeout
        kept = self.connected()
        try:
            return self._exchange(path, deadline, kept), not kept
        except _ClosedMeanwhile:
            return self._exchange(path, deadline, False), True

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _exchange(self, path: str, deadline: float, kept: bool) -> bytes:
        if self._connection is None:
            self._connection = _Connection(self._host or "", self._port,
                                           _client_context() if self._tls else None)
        connection = self._connection
        connection.set_deadline(deadline)
        response = None
        done = False
        try:
            connection.request("GET", self._prefix + path,
                               headers={"Accept": "application/json", "User-Agent": "vgpumon"})
            response = connection.getresponse()
            if response.status != 200:
                raise HttpStatus(path, response.status, response.reason)
            chunks, size = [], 0
            while chunk := response.read(READ_CHUNK):
                size += len(chunk)
                if size > MAX_BODY:
                    raise ApiFormatError(f"GET {path}: body larger than {MAX_BODY} bytes")
                chunks.append(chunk)
            done = True
            return b"".join(chunks)
        except (OSError, http.client.HTTPException) as err:
            if kept and response is None and isinstance(err, _CLOSED_BEFORE_ANSWER):
                raise _ClosedMeanwhile from err
            raise ApiUnavailable(f"GET {path}: {_describe(err)}") from None
        finally:
            if response is not None:
                response.close()
            if not done:
                self.close()


class _ClosedMeanwhile(Exception):
    """A kept connection turned out closed by the server before it answered."""


# What a kept connection the server has closed raises when it is used: on the send, or as
# no status line at all (http.client's RemoteDisconnected is a ConnectionResetError; over TLS
# a close without close_notify is an SSLEOFError).
_CLOSED_BEFORE_ANSWER = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                         ssl.SSLEOFError)


def _client_context() -> ssl.SSLContext:
    """What http.client's HTTPS connections use by default."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Connection(http.client.HTTPConnection):
    """http.client's connection over a `_DeadlineSocket` (TLS when given a context); each
    exchange sets its deadline first (`set_deadline`)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None):
        super().__init__(host, port)
        self._deadline = 0.0
        self._context = context

    def set_deadline(self, deadline: float) -> None:
        self._deadline = deadline
        if isinstance(self.sock, _DeadlineSocket):
            self.sock.deadline = deadline

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), _time_left(self._deadline))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                # The ssl module times a handshake as a whole: this is the time left, too.
                sock.settimeout(_time_left(self._deadline))
                sock = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = _DeadlineSocket(sock, self._deadline)


class _DeadlineSocket:
    """The part of a socket http.client uses, each call timed out at `deadline`.

    Like a socket, it stays open while a reader made by `makefile` is: http.client closes
    the connection once a response that ends it has begun, and reads the body after."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock = sock
        self.deadline = deadline
        self._readers = 0
        self._closing = False

    def _arm(self) -> socket.socket:
        self._sock.settimeout(_time_left(self.deadline))
        return self._sock

    def sendall(self, data: bytes) -> None:
        self._arm().sendall(data)  # the timeout bounds the whole sendall, not each send

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        return self._arm().recv_into(buffer, nbytes)

    def makefile(self, mode: str) -> io.BufferedReader:
        self._readers += 1
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        self._closing = True
        if self._readers == 0:
            self._sock.close()

    def reader_closed(self) -> None:
        self._readers -= 1
        if self._closing:
            self.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket):
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock.reader_closed()
        super().close()


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def poll(url: str, timeout: float, now: float) -> OllamaApiState:
    """One look at the API on a connection of its own; never raises."""
    client = ApiClient(url)
    try:
        return ApiPolls(client, timeout).poll(now)
    finally:
        client.close()


class ApiPolls:
    """Successive looks at the API over one `ApiClient`.

    `/api/ps` is asked every poll; `/api/version` on every new connection (a restarted or
    upgraded Ollama is a new connection), after a failed poll, and at least every
    `VERSION_RECHECK_SECONDS` (a proxy may keep the connection across a restart behind it).
    """

    def __init__(self, client: ApiClient, timeout: float):
        self.client = client
        self.timeout = timeout
        self._version: str | None = None
        self._version_at = 0.0
        self._ps_body: bytes | None = None  # the last /api/ps body parsed, and what it gave
        self._ps_models: tuple[LoadedModel, ...] | None = ()

    def poll(self, now: float) -> OllamaApiState:
        """One look; never raises (a bug aside)."""
        started = time.monotonic()
        try:
            asked = self._version_due(started)
            if asked:
                self._ask_version()
            models, fresh = self._loaded_models()
            if fresh and not asked:
                self._ask_version()
        except ApiUnavailable as err:
            self._version = None
            return OllamaApiState(now, False, error=str(err),
                                  duration=time.monotonic() - started)
        except ApiFormatError as err:
            self._version = None
            return OllamaApiState(now, False, error=f"unexpected answer: {err}", garbled=True,
                                  duration=time.monotonic() - started)
        return OllamaApiState(now, True, self._version, models,
                              duration=time.monotonic() - started)

    def _version_due(self, now: float) -> bool:
        return (self._version is None or not self.client.connected()
                or now - self._version_at >= VERSION_RECHECK_SECONDS)

    def _ask_version(self) -> None:
        body, _fresh = self.client.get("/api/version", self.timeout)
        self._version = parse_version(body)
        self._version_at = time.monotonic()

    def _loaded_models(self) -> tuple[tuple[LoadedModel, ...] | None, bool]:
        try:
            body, fresh = self.client.get("/api/ps", self.timeout)
        except HttpStatus as err:
            if err.status == 404:
                # Ollama before 0.1.38 has no /api/ps: up, models unknown. The 404 dropped
                # the connection, so the version is asked again each poll.
                return None, False
            raise
        if body != self._ps_body:  # a quiet server answers the same bytes poll after poll
            self._ps_models = parse_ps(body)
            self._ps_body = body
        return self._ps_models, fresh


class OllamaApiPoller:
    """Polls in a daemon thread; `fileno()` becomes readable when a new result is in."""

    def __init__(self, url: str, timeout: float, interval: float):
        self.url = url
        self.timeout = timeout
        self.interval = interval
        self.latest: OllamaApiState | None = None
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._polls = ApiPolls(ApiClient(url), timeout)  # used by the thread alone
        self._thread = threading.Thread(target=self._run, name="ollama-api", daemon=True)
        self._pipe_lock = threading.Lock()
        self._pipe_left_to_thread = False

    def start(self) -> None:
        self._thread.start()

    def fileno(self) -> int:
        return self._wake_read

    def take(self) -> OllamaApiState | None:
        """Clear the wake-up and return the latest result."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 512):
                pass
        return self.latest

    def poll_now(self) -> None:
        """Ask for a poll before the interval is up (e.g. after a runner started)."""
        self._poke.set()

    def close(self) -> None:
        """Stop polling. A poll in flight may outlive the wait (it can take two timeouts):
        then the thread closes the wake-up pipe itself when it ends."""
        self._stop.set()
        self._poke.set()
        self._thread.join(timeout=2 * self.timeout + 1)
        with self._pipe_lock:
            if self._thread.is_alive():
                self._pipe_left_to_thread = True
            else:
                self._close_pipe()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._poll_once()
                self._poke.wait(self.interval)
                self._poke.clear()
        finally:
            self._polls.client.close()
            with self._pipe_lock:
                if self._pipe_left_to_thread:
                    self._close_pipe()

    def _poll_once(self) -> None:
        try:
            state = self._polls.poll(time.time())
        except Exception as err:  # a bug must not freeze `latest` at its last value
            log.exception("ollama api poll failed url=%s", self.url)
            state = OllamaApiState(time.time(), False, error=f"poll failed: {err!r}",
                                   garbled=True)
        previous = self.latest
        if previous is None or previous.up != state.up:
            log.info("ollama api url=%s up=%s error=%r", self.url, state.up, state.error)
        self.latest = state
        with self._pipe_lock:
            if not self._stop.is_set():
                with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
                    os.write(self._wake_write, b"!")

    def _close_pipe(self) -> None:
        os.close(self._wake_read)
        os.close(self._wake_write)


def _describe(err: BaseException) -> str:
    if isinstance(err, socket.timeout | TimeoutError):
        return "timed out"
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return text
