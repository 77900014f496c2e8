"""`ollama_api.fetch` keeps its deadline against servers that trickle, stall or never end,
without a thread of its own: real sockets, a raw server in a test thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from unittest import mock

import pytest

from vgpumon.ollama.api import ApiFormatError
from vgpumon.sources import ollama_api
from vgpumon.sources.ollama_api import ApiUnavailable, fetch

BODY = b'{"version":"0.13.5"}'
Serve = Callable[[socket.socket], None]


@contextlib.contextmanager
def raw_server(serve: Serve) -> Iterator[str]:
    """A server that reads one request head and hands the connection to `serve`."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                with contextlib.suppress(OSError):
                    serve(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(10)


def fetch_alone(url: str, path: str, timeout: float) -> bytes:
    """`fetch`, failing the test if it starts a thread (a timer, as it once did)."""
    def start(self: threading.Thread) -> None:
        raise AssertionError(f"fetch started a thread: {self.name}")

    with mock.patch.object(threading.Thread, "start", start):
        return fetch(url, path, timeout)


def answer(head: bytes, body: bytes = BODY) -> Serve:
    return lambda connection: connection.sendall(head + body)


def trickle(head: bytes, byte: bytes) -> Serve:
    def serve(connection: socket.socket) -> None:
        connection.sendall(head)
        for _ in range(400):  # 20 s, far past any deadline here
            connection.sendall(byte)
            time.sleep(0.05)
    return serve


def stall(connection: socket.socket) -> None:
    connection.recv(1)  # waits for the client to give up


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY),
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY),
    b"HTTP/1.0 200 OK\r\n\r\n",  # the body ends with the connection
])
def test_a_whole_answer_is_read(head):
    with raw_server(answer(head)) as url:
        assert fetch_alone(url, "/api/version", 5.0) == BODY


def test_a_chunked_answer_is_read():
    chunked = answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                     b"5\r\n" + BODY[:5] + b"\r\n%x\r\n" % (len(BODY) - 5) + BODY[5:]
                     + b"\r\n0\r\n\r\n")
    with raw_server(chunked) as url:
        assert fetch_alone(url, "/api/version", 5.0) == BODY


@pytest.mark.parametrize("serve", [
    stall,
    trickle(b"HTTP/1.1 200 OK\r\n", b"X"),  # an endless header line, a byte at a time
    trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n{", b" "),
], ids=["stall", "trickled headers", "trickled body"])
def test_the_deadline_holds_for_the_whole_exchange(serve):
    with raw_server(serve) as url:
        started = time.monotonic()
        with pytest.raises(ApiUnavailable, match="GET /api/version: timed out"):
            fetch_alone(url, "/api/version", 0.5)
        assert time.monotonic() - started < 5  # each byte in time, the whole never


def test_a_tls_server_that_never_answers_the_handshake_is_cut_off():
    # The server reads the ClientHello as a "request" and answers nothing.
    with raw_server(stall) as url, pytest.raises(ApiUnavailable, match="timed out"):
        fetch_alone(url.replace("http://", "https://"), "/api/version", 0.5)


def test_a_body_past_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(ollama_api, "MAX_BODY", 1000)
    endless = trickle(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                      b"%x\r\n%s\r\n" % (4096, b" " * 4096))
    with raw_server(endless) as url, pytest.raises(ApiFormatError, match="larger than 1000"):
        fetch_alone(url, "/api/ps", 10.0)


def test_http_errors_and_refusals_are_unavailable():
    with raw_server(answer(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
                           b"")) as url, pytest.raises(ApiUnavailable, match="HTTP 500"):
        fetch_alone(url, "/api/version", 5.0)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(ApiUnavailable, match="refused"):
        fetch_alone(f"http://127.0.0.1:{port}", "/api/version", 5.0)
