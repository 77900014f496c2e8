"""The exporter's connections: a constant thread count, deadlines for every state, a cap on
open connections, and HTTP/1.1 as scrapers speak it. Real sockets against the real server."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import re
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.harness import REPO, wait_for
from vgpumon.http.auth import BasicAuth
from vgpumon.http.passwords import BcryptHash
from vgpumon.http.request import MAX_HEAD
from vgpumon.http.webconfig import WebAccess, WebConfig

from .conftest import basic, fetch, libcrypt_bcrypt, running_server, url

HALF_OPEN = 2000
PARTIAL_HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow"


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(needed, soft), max(needed, hard)))
    except (ValueError, OSError) as err:
        pytest.fail(f"this test needs {needed} file descriptors (RLIMIT_NOFILE is "
                    f"{soft}/{hard} and cannot be raised: {err})", pytrace=False)


@contextlib.contextmanager
def half_open(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that each sent part of a request head and then nothing."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(PARTIAL_HEAD)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server ends the connection within `timeout` (EOF or a reset)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass  # an answer (408/431) may come before the end
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_two_thousand_half_open_requests_leave_metrics_answering_on_constant_threads():
    raise_fd_limit(HALF_OPEN + 1024)
    with running_server() as server:
        wait_for(lambda: "http-worker" in {t.name for t in threading.enumerate()},
                 message="the server's worker thread")
        threads = threading.active_count()
        with half_open(server.port, HALF_OPEN):
            assert threading.active_count() <= threads
            assert server.open_connections <= server.max_connections
            reply = fetch(url(server), timeout=10)  # a scrape on a fresh connection
            assert reply.status == 200 and b"vgpumon_build_info" in reply.body
            assert fetch(url(server, "/healthz"), timeout=10).body == b"ok\n"
            assert threading.active_count() <= threads
        assert fetch(url(server), timeout=10).status == 200


def test_a_half_open_request_is_closed_at_the_header_deadline():
    with running_server() as server:
        server.header_timeout = 0.3
        with half_open(server.port, 1) as (sock,):
            assert closed_by_server(sock, timeout=5)  # the default deadline is 10 s
        assert fetch(url(server)).status == 200


def test_a_trickled_head_is_cut_at_the_deadline_for_the_whole_head():
    with running_server() as server:
        server.header_timeout = 0.5
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 5:  # each byte is progress, the head is not
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable:
                    closed = closed_by_server(sock, timeout=1)
                    break
                try:
                    sock.sendall(b"X")
                except OSError:
                    closed = True
                    break
            assert closed


def test_a_silent_connection_is_closed_at_the_header_deadline():
    with running_server() as server:
        server.header_timeout = 0.3
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            assert closed_by_server(sock, timeout=5)


def test_keep_alive_is_reused_and_an_idle_connection_closed_at_the_idle_deadline():
    with running_server() as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for _ in range(3):
            connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            response = connection.getresponse()
            assert response.status == 200 and response.getheader("Connection") is None
            assert b"vgpumon_build_info" in gzip.decompress(response.read())
        assert server.open_connections == 1  # one connection served all three
        server.idle_timeout = 0.3
        connection.request("GET", "/healthz")  # enters the idle state under the new timeout
        assert connection.getresponse().read() == b"ok\n"
        assert closed_by_server(connection.sock, timeout=5)
        connection.close()


def test_the_cap_closes_the_longest_waiting_connection_and_lets_a_scraper_in():
    with running_server() as server:
        server.max_connections = 4
        with half_open(server.port, 4) as sockets:
            wait_for(lambda: server.open_connections == 4, message="4 connections open")
            assert fetch(url(server)).status == 200  # the fifth connection
            assert closed_by_server(sockets[0], timeout=5)  # the oldest half-open one
            assert not closed_by_server(sockets[3], timeout=0.2)
            assert server.open_connections <= 4


def test_pipelined_requests_are_answered_in_order():
    with running_server() as server, socket.create_connection(("127.0.0.1", server.port),
                                                              timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert re.findall(rb"HTTP/1\.1 (\d+) ", received) == [b"200", b"200", b"404"]
    assert b"ok\n" in received and b"not found\n" in received
    assert b"vgpumon_build_info" not in received  # HEAD: headers only


def test_http_1_0_and_errors_close_the_connection():
    with running_server() as server:
        for head, status in [(b"GET /healthz HTTP/1.0\r\n\r\n", b"200"),
                             (b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", b"405"),
                             (b"BREW /pot HTCPCP/1.0\r\n\r\n", b"400"),
                             (b"GET /" + b"x" * (20 << 10) + b" HTTP/1.1\r\n\r\n", b"431")]:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(head)
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
                assert received.startswith(b"HTTP/1.1 " + status), received[:80]
                assert b"\r\nConnection: close\r\n" in received


def test_a_bcrypt_check_does_not_hold_scrapes_with_remembered_credentials():
    checking = threading.Event()
    release = threading.Event()
    real = libcrypt_bcrypt(b"pw")

    def slow_check(password: bytes, hashed: BcryptHash) -> bool:
        if password != b"pw":
            checking.set()
            release.wait(10)  # a bcrypt that takes as long as the test wants
            return False
        return True

    access = WebAccess(WebConfig(), basic_auth=BasicAuth({"prom": BcryptHash.parse(real)},
                                                         check=slow_check))
    with running_server(access) as server:
        good = basic("prom", "pw")
        assert fetch(url(server), authorization=good).status == 200  # now remembered
        threads = threading.active_count()
        statuses: list[int] = []
        bad = threading.Thread(target=lambda: statuses.append(
            fetch(url(server), authorization=basic("prom", "wrong")).status))
        bad.start()
        try:
            assert checking.wait(10)
            # The server thread is free while the worker checks the wrong password.
            assert fetch(url(server), authorization=good, timeout=5).status == 200
            assert fetch(url(server, "/healthz"), authorization=good, timeout=5).body == b"ok\n"
        finally:
            release.set()
            bad.join(10)
        assert statuses == [401]
        assert threading.active_count() <= threads  # the client thread has ended


SMALL_LIMIT_SERVER = """
import resource, sys
from tests.web.conftest import running_server
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
with running_server() as server:
    server.max_connections = 10_000  # never reached: the descriptors run out first
    print(server.port, flush=True)
    sys.stdin.read()
"""


def test_running_out_of_descriptors_closes_connections_instead_of_failing_scrapes():
    raise_fd_limit(1024)
    server = subprocess.Popen([sys.executable, "-c", SMALL_LIMIT_SERVER], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with half_open(port, 200):  # three times what the server may have open
            reply = fetch(f"http://127.0.0.1:{port}/metrics", timeout=10)
            assert reply.status == 200 and b"vgpumon_build_info" in reply.body
        assert server.poll() is None
    finally:
        _, errors = server.communicate("", timeout=30)
    assert "http accept failed" not in errors  # each time, there was a connection to close
    assert "out of file descriptors" in errors


def read_answers(sock: socket.socket) -> list[tuple[int, str]]:
    """(status, Content-Type) of each answer on `sock` until the server closes it."""
    received = bytearray()
    while chunk := sock.recv(1 << 20):
        received += chunk
    answers = []
    while received:
        end = received.index(b"\r\n\r\n") + 4
        head = received[:end].decode("latin-1")
        length = int(re.search(r"\r\nContent-Length: (\d+)\r\n", head)[1])
        kind = re.search(r"\r\nContent-Type: ([^\r]*)\r\n", head)[1]
        answers.append((int(head.split(" ", 2)[1]), kind))
        del received[:end + length]
    return answers


def test_pipelined_requests_of_a_client_that_does_not_read_stay_bounded_in_the_server():
    pad = b"X-Pad: " + b"p" * 1000 + b"\r\n"
    one = [b"GET / HTTP/1.1\r\nHost: x\r\n" + pad + b"\r\n",
           b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + pad + b"\r\n"]
    count = 4000
    requests = b"".join(one[n % 2] for n in range(count - 1))
    requests += b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with running_server() as server, socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # answers back up soon
        sock.connect(("127.0.0.1", server.port))
        sender = threading.Thread(target=sock.sendall, args=(requests,), daemon=True)
        sender.start()
        (connection,) = wait_for(lambda: list(server._connections), message="the connection")
        buffered = [0]

        def stuck() -> bool:
            buffered[0] = max(buffered[0], len(connection.inbuf))
            # Writing waits for the client, so nothing is read from it any more.
            return connection.state == "write" and bool(connection.out)

        wait_for(stuck, timeout=30, message="the server to wait for the client")
        assert buffered[0] <= MAX_HEAD + 1
        sock.settimeout(30)
        answers = read_answers(sock)
        sender.join(30)
    assert not sender.is_alive()
    assert len(answers) == count
    assert answers == [(200, "text/html; charset=utf-8" if n % 2 == 0 else
                        "text/plain; charset=utf-8") for n in range(count - 1)] + \
        [(200, "text/plain; charset=utf-8")]
