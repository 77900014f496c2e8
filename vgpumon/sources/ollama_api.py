"""Ollama's HTTP API (``/api/version``, ``/api/ps``), polled from a thread of its own.

The loop must never wait on the network, so one thread polls every interval with the
configured timeout as a deadline for the whole exchange (a server that trickles bytes is cut
off too, by socket timeouts: no thread per request), reads at most `MAX_BODY` bytes, and
wakes the loop through a pipe when a result is ready. The loop reads `latest`, an immutable
`OllamaApiState`.
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
    """GET `url` + `path` with `timeout` as a deadline for the whole exchange.

    A socket timeout alone bounds each recv(): a server that sends a byte now and then (in
    its headers or its body) would hold the poller for ever. So every socket call gets the
    time left until the deadline as its timeout, and none starts after it (`_DeadlineSocket`):
    no thread is needed to cut a hung exchange off. (Resolving the host name is not bounded:
    the C library's resolver takes no timeout; it runs on the poller's thread, never the
    loop's.)
    """
    parts = urlsplit(url)
    if not parts.hostname:  # the config accepts no URL without a host
        raise ApiUnavailable(f"no host in {url!r}")
    deadline = time.monotonic() + timeout
    tls = parts.scheme == "https"
    connection = _Connection(parts.hostname, parts.port or (443 if tls else 80), deadline,
                             _client_context() if tls else None)
    response = None
    try:
        connection.request("GET", (parts.path or "") + path,
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
        return b"".join(chunks)
    except (OSError, http.client.HTTPException) as err:
        raise ApiUnavailable(f"GET {path}: {_describe(err)}") from None
    finally:
        if response is not None:
            response.close()
        connection.close()


def _client_context() -> ssl.SSLContext:
    """What http.client's HTTPS connections use by default."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Connection(http.client.HTTPConnection):
    """http.client's connection over a `_DeadlineSocket` (TLS when given a context)."""

    def __init__(self, host: str, port: int, deadline: float,
                 context: ssl.SSLContext | None):
        super().__init__(host, port)
        self._deadline = deadline
        self._context = context

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
    """The part of a socket http.client uses, each call timed out at a fixed deadline.

    Like a socket, it stays open while a reader made by `makefile` is: http.client closes
    the connection once a response that ends it has begun, and reads the body after."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock = sock
        self._deadline = deadline
        self._readers = 0
        self._closing = False

    def _arm(self) -> socket.socket:
        self._sock.settimeout(_time_left(self._deadline))
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
    """One look at the API; never raises."""
    started = time.monotonic()
    try:
        version = parse_version(fetch(url, "/api/version", timeout))
        models = _loaded_models(url, timeout)
    except ApiUnavailable as err:
        return OllamaApiState(now, False, error=str(err), duration=time.monotonic() - started)
    except ApiFormatError as err:
        return OllamaApiState(now, False, error=f"unexpected answer: {err}", garbled=True,
                              duration=time.monotonic() - started)
    return OllamaApiState(now, True, version, models, duration=time.monotonic() - started)


def _loaded_models(url: str, timeout: float) -> tuple[LoadedModel, ...] | None:
    try:
        return parse_ps(fetch(url, "/api/ps", timeout))
    except HttpStatus as err:
        if err.status == 404:
            return None  # Ollama before 0.1.38 has no /api/ps: up, models unknown
        raise


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
            with self._pipe_lock:
                if self._pipe_left_to_thread:
                    self._close_pipe()

    def _poll_once(self) -> None:
        try:
            state = poll(self.url, self.timeout, time.time())
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
