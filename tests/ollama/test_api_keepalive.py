"""The API poller keeps one connection: real sockets, a raw HTTP/1.1 server in a test thread
that answers several requests per connection and can drop a connection between them."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vgpumon.sources import ollama_api
from vgpumon.sources.ollama_api import ApiClient, ApiPolls

PS = b'{"models":[]}'


@dataclass
class KeepAliveServer:
    """Answers /api/version and /api/ps over kept connections. `version` is what it says;
    `drop_after` requests on a connection it closes that connection (as a restart does)."""

    version: str = "0.13.5"
    drop_after: int | None = None
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    on_request: Callable[[str], None] | None = None

    def serve(self, connection: socket.socket) -> None:
        served = 0
        pending = b""
        while self.drop_after is None or served < self.drop_after:
            while b"\r\n\r\n" not in pending:
                chunk = connection.recv(4096)
                if not chunk:
                    return
                pending += chunk
            head, pending = pending.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1].decode()
            self.requests.append(path)
            if self.on_request is not None:
                self.on_request(path)
            body = (b'{"version":"%s"}' % self.version.encode()) if path == "/api/version" \
                else PS
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            served += 1


@contextlib.contextmanager
def running(server: KeepAliveServer) -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            server.connections += 1
            with connection, contextlib.suppress(OSError):
                server.serve(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(10)


def polls_of(url: str) -> ApiPolls:
    return ApiPolls(ApiClient(url), 5.0)


def test_polls_share_one_connection_and_ask_the_version_once():
    server = KeepAliveServer()
    with running(server) as url:
        polls = polls_of(url)
        try:
            states = [polls.poll(float(n)) for n in range(3)]
        finally:
            polls.client.close()
    assert all(s.up and s.version == "0.13.5" and s.models == () for s in states)
    assert server.connections == 1
    assert server.requests == ["/api/version", "/api/ps", "/api/ps", "/api/ps"]


def test_a_connection_closed_between_polls_is_replaced_and_the_version_asked_again():
    """A restarted (here: upgraded) Ollama closes the kept connection: the next poll
    succeeds on a new one and reports the new version."""
    server = KeepAliveServer(drop_after=2)
    with running(server) as url:
        polls = polls_of(url)
        try:
            first = polls.poll(0.0)
            server.version = "0.14.0"
            second = polls.poll(1.0)
        finally:
            polls.client.close()
    assert first.up and first.version == "0.13.5"
    assert second.up and second.version == "0.14.0", second
    assert server.connections == 2
    assert server.requests == ["/api/version", "/api/ps", "/api/ps", "/api/version"]


def test_the_version_is_asked_again_after_the_recheck_period(monkeypatch):
    monkeypatch.setattr(ollama_api, "VERSION_RECHECK_SECONDS", 0.0)
    server = KeepAliveServer()
    with running(server) as url:
        polls = polls_of(url)
        try:
            polls.poll(0.0)
            server.version = "0.14.0"  # behind a proxy that keeps the connection
            state = polls.poll(1.0)
        finally:
            polls.client.close()
    assert state.version == "0.14.0"
    assert server.connections == 1
    assert server.requests == ["/api/version", "/api/ps", "/api/version", "/api/ps"]


def hang_up(_path: str) -> None:
    raise OSError("hang up")  # the server thread closes the connection without an answer


def test_a_failed_poll_drops_the_connection_and_the_next_asks_the_version():
    server = KeepAliveServer()
    with running(server) as url:
        polls = polls_of(url)
        try:
            polls.poll(0.0)
            server.on_request = hang_up
            failed = polls.poll(1.0)
            server.on_request = None
            recovered = polls.poll(2.0)
        finally:
            polls.client.close()
    assert not failed.up and failed.version is None
    assert recovered.up and recovered.version == "0.13.5"
    assert server.requests[-2:] == ["/api/version", "/api/ps"]
    assert server.connections >= 2


def test_a_kept_connection_still_keeps_each_exchange_to_its_deadline():
    """The second exchange on a kept connection stalls: it is cut off at its own deadline,
    not at the first's, and the connection is dropped."""
    stalled = threading.Event()
    release = threading.Event()
    server = KeepAliveServer()

    def stall_second_ps(path: str) -> None:
        if path == "/api/ps" and server.requests.count("/api/ps") == 2:
            stalled.set()
            release.wait(10)

    server.on_request = stall_second_ps
    with running(server) as url:
        client = ApiClient(url)
        try:
            assert client.get("/api/ps", 5.0) == (PS, True)
            try:
                client.get("/api/ps", 0.3)
            except ollama_api.ApiUnavailable as err:
                failure = str(err)
            else:
                failure = ""
            assert not client.connected()
        finally:
            release.set()
            client.close()
    assert stalled.is_set()
    assert failure == "GET /api/ps: timed out"
