"""An Ollama API that misbehaves below HTTP: resets the connection, closes it without an
answer, trickles its headers or body byte by byte, streams an endless body, or is gone.
(Hangs, HTTP 500, garbage and a 32 MiB body are in tests/e2e/test_ollama.py.)

vgpumon must keep serving its metrics at full speed, report Ollama down within its timeout,
count only answers it cannot understand against its own `ollama_api` collector, and come
back when Ollama does."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time

import pytest

from tests.faults.workload import runner_config

VERSION = b'{"version":"0.13.5"}'
PS = json.dumps({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest",
                             "size": 3 << 30, "size_vram": 3 << 30,
                             "digest": "a" * 64}]}).encode()


class FakeOllama:
    """A raw-socket HTTP server whose behaviour (`mode`) the test switches at will."""

    def __init__(self) -> None:
        self.mode = "ok"
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepting.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = connection.recv(4096)
                if not chunk:
                    return
                request += chunk
            path = request.split(b" ", 2)[1]
            body = VERSION if path == b"/api/version" else PS
            with contextlib.suppress(OSError):
                getattr(self, "_" + self.mode)(connection, body)

    def _ok(self, connection: socket.socket, body: bytes) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    def _reset(self, connection: socket.socket, body: bytes) -> None:
        # SO_LINGER 0: close() sends RST, the client's recv() fails with ECONNRESET.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _close(self, connection: socket.socket, body: bytes) -> None:
        connection.shutdown(socket.SHUT_RDWR)

    def _trickle_headers(self, connection: socket.socket, body: bytes) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\n")
        while not self._stop.is_set() and self.mode == "trickle_headers":
            connection.sendall(b"X")  # one endless header line, a byte at a time
            time.sleep(0.05)

    def _trickle_body(self, connection: socket.socket, body: bytes) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 1000000\r\n\r\n{")
        while not self._stop.is_set() and self.mode == "trickle_body":
            connection.sendall(b" ")
            time.sleep(0.05)

    def _endless(self, connection: socket.socket, body: bytes) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        while not self._stop.is_set() and self.mode == "endless":
            connection.sendall(chunk)


@pytest.fixture
def fake_ollama():
    server = FakeOllama()
    yield server
    server.close()


# mode -> vgpumon_collector_success{collector="ollama_api"} while it lasts: a connection
# problem is Ollama's, an answer vgpumon cannot read is counted against vgpumon's collector.
MODES = {"reset": 1, "close": 1, "trickle_headers": 1, "trickle_body": 1, "endless": 0,
         "refused": 1}


@pytest.mark.parametrize("mode", list(MODES))
def test_broken_connections(tmp_path, runner_binary, fake_ollama, daemons, mode):
    config = runner_config(tmp_path, runner_binary, interval="1s",
                           ollama={"url": fake_ollama.url, "timeout": "500ms"})
    daemon = daemons(config, tmp_path)
    daemon.wait_value("vgpumon_ollama_up", 1)
    assert daemon.value("vgpumon_ollama_models_loaded") == 1
    if mode == "refused":
        config["ollama"]["url"] = fake_ollama.url
        fake_ollama.close()
    else:
        fake_ollama.mode = mode
    # Down within a poll interval plus the timeout, with some slack for a loaded machine.
    daemon.wait_value("vgpumon_ollama_up", 0, timeout=6)
    daemon.wait_value("vgpumon_collector_success", MODES[mode], collector="ollama_api")
    started = time.monotonic()
    for _ in range(10):
        daemon.get("/metrics", timeout=2)
    assert time.monotonic() - started < 5  # the loop never waits on Ollama
    if mode == "refused":
        return
    fake_ollama.mode = "ok"
    daemon.wait_value("vgpumon_ollama_up", 1, timeout=10)
    daemon.wait_value("vgpumon_collector_success", 1, collector="ollama_api")
    assert daemon.process.poll() is None
