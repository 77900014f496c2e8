"""Half-open HTTP requests against a daemon, and /metrics while they are held open.

N clients connect and send the start of a request (the request line and one header, never the
blank line that ends the headers), then wait: a slow or stuck client, or a cheap attack. While
they are open, /metrics is scraped over a new connection each time (a scraper that comes
later) and over one keep-alive connection made before them (Prometheus's), 20 times each; the
daemon's thread count is sampled. Then all are closed (as a client that gives up does: a FIN,
not a reset), the first /metrics after them is timed, and so is the daemon's recovery: until
its thread count is back and /metrics answers (both within 20 s). A server that reads the
headers in a thread per connection takes the end of the stream for the end of the headers and
answers every one of them then. A daemon may close half-open requests itself (a header
timeout, a cap on connections): how many were still open when the scrapes began and ended is
part of the result.

The benchmark needs an fd per connection (its soft RLIMIT_NOFILE is raised for that) and so
does a daemon that holds them: `nofile_limit` is the preexec that gives a daemon its limit.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.bench.client import Scraper
from tests.bench.measure import Summary, summarize
from tests.bench.window import settled_thread_count, thread_count

# The daemon's RLIMIT_NOFILE in this row: room for 2,000 connections and its own files.
DAEMON_NOFILE = 8192
PARTIAL_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: half-open\r\n"
BATCH = 64  # connections opened at once (a listen backlog's worth)
CONNECT_SECONDS = 30.0  # for all of them
SCRAPES = 20  # of each kind while they are open
SCRAPE_TIMEOUT = 10.0
AFTER_TIMEOUT = 20.0  # for the first scrape once they closed, and for the daemon to recover


def nofile_limit(limit: int = DAEMON_NOFILE) -> Callable[[], None]:
    """A preexec_fn that sets the child's RLIMIT_NOFILE (soft and hard) to `limit` (the soft
    one up to the hard limit where that cannot be raised)."""

    def preexec() -> None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        except (ValueError, OSError):  # not allowed to raise the hard limit: up to it
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))

    return preexec


def open_files_limit(pid: int) -> int:
    """A process's soft RLIMIT_NOFILE, from /proc/PID/limits (0 if unknown)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/limits") as handle:
        for line in handle:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return 0


def raise_own_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `needed`; the connections it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if soft < want:
        limit = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        soft = limit
    return min(needed, soft - 256)


@dataclass(frozen=True)
class HalfOpen:
    requested: int
    opened: int  # connected, partial request sent
    open_at_scrapes: int  # of those, not closed by the daemon when the scrapes began
    open_after_scrapes: int
    threads_before: int
    threads_held: int  # the most seen while they were open
    fresh: Summary  # /metrics, a new connection each (failures count their time to fail)
    keepalive: Summary  # /metrics over a connection made before them
    failures: int  # of those scrapes (timed out after 10 s, reset, an error)
    first_after: float  # the first /metrics over a new connection once they were closed
    first_after_ok: bool  # False: it failed or timed out (after 20 s)
    threads_after: int  # right after that scrape
    recovery: float  # from the close until the threads were back and /metrics answered
    open_seconds: float  # to open them all
    daemon_nofile: int

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k not in ("fresh", "keepalive")},
                "fresh": self.fresh.as_dict(), "keepalive": self.keepalive.as_dict()}


def measure_half_open(address: str, pid: int, count: int) -> HalfOpen:
    count = raise_own_limit(count)
    host, _, port = address.rpartition(":")
    keepalive = Scraper(address, timeout=SCRAPE_TIMEOUT)
    keepalive.get()
    threads_before = thread_count(pid)
    started = time.monotonic()
    sockets = _open(host, int(port), count)
    try:
        open_seconds = time.monotonic() - started
        threads_held = settled_thread_count(pid)[1]
        open_at_scrapes = _still_open(sockets)
        fresh, kept, failures = [], [], 0
        for _ in range(SCRAPES):
            latency, ok = _timed(lambda: _fresh_scrape(address))
            fresh.append(latency)
            failures += not ok
            latency, ok = _timed(keepalive.get)
            kept.append(latency)
            failures += not ok
            if not ok:  # the next request reconnects
                keepalive.close()
            threads_held = max(threads_held, thread_count(pid))
        open_after_scrapes = _still_open(sockets)
    finally:
        for sock in sockets:
            sock.close()
        keepalive.close()
    closed = time.monotonic()
    first_after, first_after_ok = _timed(lambda: _fresh_scrape(address, AFTER_TIMEOUT))
    recovered = _recovered(address, pid, threads_before, closed + AFTER_TIMEOUT)
    return HalfOpen(count, len(sockets), open_at_scrapes, open_after_scrapes, threads_before,
                    threads_held, summarize(fresh), summarize(kept), failures, first_after,
                    first_after_ok, thread_count(pid), recovered - closed, open_seconds,
                    open_files_limit(pid))


def _recovered(address: str, pid: int, threads: int, deadline: float) -> float:
    """When the daemon is back to `threads` threads (or fewer) and answers /metrics: a thread
    per connection lingers after the connections closed, and slows the rows after this one."""
    while time.monotonic() < deadline and thread_count(pid) > threads:
        time.sleep(0.05)
    _timed(lambda: _fresh_scrape(address, max(1.0, deadline - time.monotonic())))
    return time.monotonic()


def _open(host: str, port: int, count: int) -> list[socket.socket]:
    """Connect `count` sockets in batches and send each the partial request."""
    opened: list[socket.socket] = []
    deadline = time.monotonic() + CONNECT_SECONDS
    with selectors.DefaultSelector() as selector:
        while len(opened) < count and time.monotonic() < deadline:
            batch = []
            for _ in range(min(BATCH, count - len(opened))):
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                sock.setblocking(False)
                sock.connect_ex((host.strip("[]"), port))
                selector.register(sock, selectors.EVENT_WRITE, sock)
                batch.append(sock)
            waiting = set(batch)
            while waiting and time.monotonic() < deadline:
                for key, _mask in selector.select(max(0.0, deadline - time.monotonic())):
                    sock = key.data
                    selector.unregister(sock)
                    waiting.discard(sock)
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        try:
                            sock.send(PARTIAL_REQUEST)
                            opened.append(sock)
                            continue
                        except OSError:
                            pass
                    sock.close()
            for sock in waiting:
                selector.unregister(sock)
                sock.close()
    return opened


def _still_open(sockets: list[socket.socket]) -> int:
    """Sockets the daemon has not closed or answered (nothing to read on them)."""
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        readable = len(selector.select(0))
    return len(sockets) - readable


def _fresh_scrape(address: str, timeout: float = SCRAPE_TIMEOUT) -> bytes:
    scraper = Scraper(address, timeout=timeout)
    try:
        return scraper.get()
    finally:
        scraper.close()


def _timed(call: Callable[[], object]) -> tuple[float, bool]:
    started = time.perf_counter()
    try:
        call()
        ok = True
    except Exception:  # a timeout, a reset, an HTTP error: counted, timed to the failure
        ok = False
    return time.perf_counter() - started, ok
