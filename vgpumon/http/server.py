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
        self._send_json(state_document(published))

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
              compressible: bool = False, headers: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": content_type, **(headers or {})}
        if compressible and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def state_document(published: Published) -> dict[str, Any]:
    """The snapshot as plain JSON-able data (for /state)."""
    state = published.state
    return {
        "taken_at": state.taken_at,
        "processes": [
            {**dataclasses.asdict(p.process), **{"libraries": dataclasses.asdict(p.libraries)}}
            for p in state.processes
        ],
        "links": [dataclasses.asdict(link) for link in state.links],
        "library_files": [dataclasses.asdict(f) for f in state.library_files],
        "collectors": [dataclasses.asdict(c) for c in state.collectors],
        "runtime": dataclasses.asdict(published.runtime),
    }


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
            expected = spec.name in group.expect
            css = "bad" if expected and mapped < len(readable) else "ok" if mapped else ""
            text = f"{mapped}/{len(readable)}" + (f" ({stale} stale)" if stale else "")
            cells.append(f'<td class="{css}">{text}{"*" if expected else ""}</td>')
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
    process_rows = "".join(
        f"<tr><td>{p.process.pid}</td><td>{_e(p.process.group)}</td>"
        f"<td>{_e(' '.join(p.process.cmdline)[:200])}</td>"
        f"<td>{_e(', '.join(sorted({m.library for m in p.libraries.mappings})) or '-')}</td></tr>"
        for p in state.processes
    )
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
<p>Cells: processes mapping the library / readable processes; * = expected (expect:).</p>
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
