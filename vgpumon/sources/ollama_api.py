"""Ollama's HTTP API (``/api/version``, ``/api/ps``), polled from a thread of its own.

The loop must never wait on the network, so a small thread polls every interval with the
configured timeout as a deadline for the whole exchange (a server that trickles bytes is cut
off too), reads at most `MAX_BODY` bytes, and wakes the loop through a pipe when a result is
ready. The loop reads `latest`, an immutable `OllamaApiState`.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
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

    A socket timeout bounds each recv() only: a server that sends a byte now and then (in its
    headers or its body) would hold the poller forever. At the deadline a timer shuts the
    socket down, which ends any recv() at once.
    """
    parts = urlsplit(url)
    if not parts.hostname:  # the config accepts no URL without a host
        raise ApiUnavailable(f"no host in {url!r}")
    deadline = time.monotonic() + timeout
    connection_class = (http.client.HTTPSConnection if parts.scheme == "https"
                        else http.client.HTTPConnection)
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    expired = threading.Event()
    timer = threading.Timer(timeout, _cut_off, (connection, expired))
    timer.daemon = True
    timer.start()
    try:
        connection.request("GET", (parts.path or "") + path,
                           headers={"Accept": "application/json", "User-Agent": "vgpumon"})
        _check_deadline(deadline, connection)
        response = connection.getresponse()
        if response.status != 200:
            raise HttpStatus(path, response.status, response.reason)
        chunks, size = [], 0
        while True:
            _check_deadline(deadline, connection)
            chunk = response.read(READ_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_BODY:
                raise ApiFormatError(f"GET {path}: body larger than {MAX_BODY} bytes")
            chunks.append(chunk)
        if expired.is_set():  # cut off: what was read is not the whole body
            raise ApiUnavailable(f"GET {path}: timed out")
        return b"".join(chunks)
    except (OSError, http.client.HTTPException) as err:
        reason = "timed out" if expired.is_set() else _describe(err)
        raise ApiUnavailable(f"GET {path}: {reason}") from None
    finally:
        timer.cancel()
        connection.close()


def _cut_off(connection: http.client.HTTPConnection, expired: threading.Event) -> None:
    expired.set()
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _check_deadline(deadline: float, connection: http.client.HTTPConnection) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ApiUnavailable("timed out")
    if connection.sock is not None:
        connection.sock.settimeout(left)


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
