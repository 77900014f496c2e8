"""The HTTP endpoints: /metrics, /healthz, / (landing page), /state and /events.

Handlers only read `Publisher.current` and never block on the loop; the only /proc read on
the scrape path is prometheus-client's process collector of vgpumon's own `process_*` metrics
(/proc/self/stat and friends), as in every exporter.

With a web config (`vgpumon.http.webconfig.WebAccess`) every connection is TLS, handshaken in its
own thread under a deadline, and every request, /healthz included (as in the exporter
toolkit), passes the rate limit and basic auth before it is routed.
"""

from __future__ import annotations

import dataclasses
import gzip
import html
import json
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry

from vgpumon import __version__
from vgpumon.http.auth import CHALLENGE
from vgpumon.http.exposition import ExpositionCache
from vgpumon.http.webconfig import WebAccess
from vgpumon.model.untrusted import clip
from vgpumon.snapshot.host import ProcessState
from vgpumon.snapshot.publication import Published, Publisher

log = logging.getLogger(__name__)

# A loop that has not ticked for this many intervals (plus slack) is reported unhealthy.
HEALTHY_INTERVALS = 3
HEALTHY_SLACK_SECONDS = 10.0

# A client must finish the TLS handshake within this time, or its connection is closed.
HANDSHAKE_TIMEOUT_SECONDS = 10.0
# A connection that sends nothing for this long is closed (longer than a 1m scrape interval,
# so Prometheus keeps reusing its connection).
IDLE_TIMEOUT_SECONDS = 120.0


class ExporterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    handshake_timeout = HANDSHAKE_TIMEOUT_SECONDS

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 publisher: Publisher, access: WebAccess | None = None):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        self.registry = registry
        self.exposition = ExpositionCache()
        self.state_cache = StateCache()
        self.publisher = publisher
        self.access = access or WebAccess.plain()
        super().__init__(address, ExporterHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def scheme(self) -> str:
        return "https" if self.access.ssl_context is not None else "http"

    def set_web_config(self, access: WebAccess) -> None:
        """Apply a new web config to the connections and requests that come from now on."""
        self.access = access  # one reference swap: each reader sees the old or the new one

    # -- connections (TLS) ---------------------------------------------------------------------

    def get_request(self) -> tuple[socket.socket, Any]:
        # Runs in the accepting thread: only wrap here (no I/O); the handshake happens in the
        # connection's own thread (finish_request), so a slow or broken client stalls nobody.
        sock, address = super().get_request()
        context = self.access.ssl_context
        if context is None:
            return sock, address
        try:
            return context.wrap_socket(sock, server_side=True,
                                       do_handshake_on_connect=False), address
        except OSError:
            sock.close()
            raise

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
            return
        super().finish_request(request, client_address)

    def _handshake(self, sock: ssl.SSLSocket, client_address: Any) -> bool:
        client = client_address[0]
        sock.settimeout(self.handshake_timeout)
        try:
            sock.do_handshake()
        except (OSError, ValueError) as err:  # SSLError, timeout, reset: this connection's
            log.debug("tls handshake failed client=%s error=%r", client, str(err))
            return False
        if not self.access.client_allowed(sock.getpeercert()):
            log.warning("tls client rejected: no allowed SAN in its certificate client=%s",
                        client)
            return False
        sock.settimeout(None)
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-request is its own problem; anything else is ours.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("http connection error client=%s error=%r", client_address[0], str(error))
        else:
            log.error("http request failed client=%s", client_address[0], exc_info=True)

    # -- requests ------------------------------------------------------------------------------

    def authorize(self, handler: ExporterHandler) -> bool:
        """Admit the request, or answer it (429, 401) and return False."""
        access = self.access
        if not access.admit():
            handler.send_plain(429, "too many requests\n")
            return False
        if not access.authenticate(handler.headers.get("Authorization")):
            handler.send_plain(401, "unauthorized\n", {"WWW-Authenticate": CHALLENGE})
            return False
        return True

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        thread.start()
        return thread


class ExporterHandler(BaseHTTPRequestHandler):
    server: ExporterServer
    server_version = f"vgpumon/{__version__}"
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_SECONDS
    # Headers and body go out in two writes. With Nagle on, the body waits for the ACK of the
    # headers, which a keep-alive client (Prometheus) delays by up to 40 ms: every scrape took
    # 40 ms longer than its work (tests/bench/RESULTS.md).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if not self.server.authorize(self):
            return
        url = urlsplit(self.path)
        routes: dict[str, Callable[[Published, dict[str, list[str]]], None]] = {
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/state": self._state,
            "/events": self._events,
            "/": self._landing,
        }
        route = routes.get(url.path)
        if route is None:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
            return
        route(self.server.publisher.current, parse_qs(url.query))

    def do_HEAD(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http client=%s request=%r", self.client_address[0], format % args)

    def end_headers(self) -> None:
        # Every response, errors and 401s included, carries the web config's extra headers.
        for name, value in self.server.access.headers:
            self.send_header(name, value)
        super().end_headers()

    # -- routes --------------------------------------------------------------------------------

    def _metrics(self, _published: Published, query: dict[str, list[str]]) -> None:
        body, content_type = self.server.exposition.render(self.server.registry,
                                                           self.headers.get("Accept", ""))
        self._send(200, content_type, body, compressible=True)

    def _healthz(self, published: Published, _query: dict[str, list[str]]) -> None:
        age = time.time() - published.runtime.heartbeat
        limit = HEALTHY_INTERVALS * published.config.interval + HEALTHY_SLACK_SECONDS
        if age <= limit:
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
        else:
            self._send(503, "text/plain; charset=utf-8",
                       f"loop stalled: last tick {age:.1f}s ago\n".encode())

    def _state(self, published: Published, _query: dict[str, list[str]]) -> None:
        body, gzipped = self.server.state_cache.get(published)
        self._send(200, "application/json", body, compressible=True, gzipped=gzipped)

    def _events(self, published: Published, query: dict[str, list[str]]) -> None:
        events = published.recent_events
        kinds = set(query.get("kind", []))
        if kinds:
            events = tuple(e for e in events if e.kind in kinds)
        try:
            since = float(query["since"][0]) if "since" in query else None
            limit = int(query["limit"][0]) if "limit" in query else None
        except ValueError:
            self._send(400, "text/plain; charset=utf-8", b"since and limit must be numbers\n")
            return
        if since is not None:
            events = tuple(e for e in events if e.ts > since)
        if limit is not None:
            events = events[-limit:] if limit > 0 else ()
        self._send_json({"events": [e.to_dict() for e in events]})

    def _landing(self, published: Published, _query: dict[str, list[str]]) -> None:
        self._send(200, "text/html; charset=utf-8", landing_page(published).encode(),
                   compressible=True)

    # -- plumbing ------------------------------------------------------------------------------

    def _send_json(self, document: Any) -> None:
        body = json.dumps(document, indent=1, default=str).encode()
        self._send(200, "application/json", body, compressible=True)

    def send_plain(self, status: int, text: str,
                   headers: dict[str, str] | None = None) -> None:
        self._send(status, "text/plain; charset=utf-8", text.encode(), headers=headers)

    def _send(self, status: int, content_type: str, body: bytes, *,
              compressible: bool = False, headers: dict[str, str] | None = None,
              gzipped: Callable[[], bytes] | None = None) -> None:
        headers = {"Content-Type": content_type, **(headers or {})}
        if compressible and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzipped() if gzipped is not None else gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class StateCache:
    """/state's body, built once per `Published` and served to every request while that
    object is current: what a process hands vgpumon is encoded once, not once per request
    (docs/reliability.md#untrusted-text). Readers race harmlessly: two threads may both build
    the body of a new snapshot; each swaps in a complete entry (one reference)."""

    def __init__(self) -> None:
        self._entry: _StateEntry | None = None

    def get(self, published: Published) -> tuple[bytes, Callable[[], bytes]]:
        """The JSON body, and a function that returns it gzipped (compressed once too)."""
        entry = self._entry
        if entry is None or entry.published is not published:
            body = json.dumps(state_document(published), indent=1, default=str).encode()
            entry = _StateEntry(published, body)
            self._entry = entry
        return entry.body, entry.gzipped


class _StateEntry:
    def __init__(self, published: Published, body: bytes):
        self.published = published
        self.body = body
        self._gzipped: bytes | None = None

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=5)
        return self._gzipped


# What /state shows of one process's library mappings: a process chooses how many files it
# maps (any that match a configured glob count), and their paths.
STATE_MAPPINGS = 32
STATE_PATH_CHARS = 1024


def _process_document(state: ProcessState) -> dict[str, Any]:
    libraries = state.libraries
    shown = tuple(dataclasses.replace(m, path=clip(m.path, STATE_PATH_CHARS))
                  for m in libraries.mappings[:STATE_MAPPINGS])
    document = {**dataclasses.asdict(state.process),
                "libraries": dataclasses.asdict(dataclasses.replace(libraries, mappings=shown))}
    if len(libraries.mappings) > STATE_MAPPINGS:
        document["libraries"]["mappings_omitted"] = len(libraries.mappings) - STATE_MAPPINGS
    return document


def state_document(published: Published) -> dict[str, Any]:
    """The snapshot as plain JSON-able data (for /state). Per process it is bounded: the
    command line and --model value as kept (`vgpumon.sources.processes.CMDLINE_KEEP`), at
    most `STATE_MAPPINGS` library mappings with paths clipped to `STATE_PATH_CHARS`."""
    state = published.state
    return {
        "taken_at": state.taken_at,
        "processes": [_process_document(p) for p in state.processes],
        "links": [dataclasses.asdict(link) for link in state.links],
        "library_files": [dataclasses.asdict(f) for f in state.library_files],
        "collectors": [dataclasses.asdict(c) for c in state.collectors],
        "runtime": dataclasses.asdict(published.runtime),
    }


def _process_row(state: ProcessState) -> str:
    process = state.process
    libraries = ", ".join(sorted({m.library for m in state.libraries.mappings})) or "-"
    notes = [f"bypasses {b.shim or 'the shim'}: {b.why}" for b in state.bypasses]
    notes += [f"preload of {library} failed" for library in state.preload_failed]
    return (f"<tr><td>{process.pid}</td><td>{_e(process.group)}</td>"
            f"<td>{_e(' '.join(process.cmdline)[:200])}</td>"
            f"<td>{_e('; '.join([libraries, *notes]))}</td></tr>")


def landing_page(published: Published) -> str:
    config, state = published.config, published.state
    rows = []
    for group in config.groups:
        members = state.in_group(group.name)
        readable = [m for m in members if m.libraries.readable]
        cells = []
        for spec in config.libraries:
            mapped = sum(1 for m in readable if m.libraries.mapped(spec.name))
            stale = sum(1 for m in readable if m.libraries.stale(spec.name))
            expecting = [m for m in readable if any(e.library == spec.name for e in m.expected)]
            lacking = sum(1 for m in expecting if not m.libraries.mapped(spec.name))
            because = sorted({e.because for m in expecting for e in m.expected
                              if e.library == spec.name})
            css = "bad" if lacking else "ok" if mapped else ""
            text = f"{mapped}/{len(readable)}" + (f" ({stale} stale)" if stale else "")
            mark = f"* ({_e(', '.join(because))})" if because else ""
            cells.append(f'<td class="{css}">{text}{mark}</td>')
        unreadable = len(members) - len(readable)
        rows.append(
            f"<tr><th>{_e(group.name)}</th><td>{len(members)}</td><td>{unreadable}</td>"
            + "".join(cells) + "</tr>"
        )
    library_heads = "".join(f"<th>{_e(spec.name)}</th>" for spec in config.libraries)
    link_rows = "".join(
        f'<tr><td>{_e(link.path)}</td><td class="{"ok" if link.state == "ok" else "bad"}">'
        f"{_e(link.state or 'unknown: ' + (link.error or ''))}</td>"
        f"<td>{_e(link.target or '')}</td><td>{_e(link.expected)}</td></tr>"
        for link in state.links
    )
    process_rows = "".join(_process_row(p) for p in state.processes)
    collector_rows = "".join(
        f'<tr><td>{_e(c.name)}</td><td class="{"ok" if c.success else "bad"}">'
        f"{'ok' if c.success else _e(c.error or 'failed')}</td>"
        f"<td>{c.duration * 1000:.2f} ms</td></tr>"
        for c in state.collectors
    )
    return _PAGE.format(
        version=_e(__version__),
        taken=_e(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.taken_at))),
        library_heads=library_heads,
        group_rows="".join(rows),
        link_rows=link_rows,
        process_rows=process_rows,
        collector_rows=collector_rows,
        mechanism=_e(published.runtime.exit_mechanism),
    )


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>vgpumon</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
.ok {{ background: #e6f4e6; }} .bad {{ background: #f8dada; }}
</style></head><body>
<h1>vgpumon {version}</h1>
<p>Snapshot of {taken}. <a href="/metrics">/metrics</a> · <a href="/state">/state</a> ·
<a href="/events">/events</a> · <a href="/healthz">/healthz</a>.
Process exits observed through: {mechanism}.</p>
<h2>Groups and libraries</h2>
<p>Cells: processes mapping the library / readable processes; * = expected, and why
(config, preload, ld_so_preload, link, backend).</p>
<table><tr><th>group</th><th>processes</th><th>unreadable</th>{library_heads}</tr>
{group_rows}</table>
<h2>Shim links</h2>
<table><tr><th>link</th><th>state</th><th>points to</th><th>should point to</th></tr>
{link_rows}</table>
<h2>Processes</h2>
<table><tr><th>pid</th><th>group</th><th>command</th><th>libraries</th></tr>
{process_rows}</table>
<h2>Collectors</h2>
<table><tr><th>collector</th><th>state</th><th>last refresh</th></tr>
{collector_rows}</table>
</body></html>
"""
