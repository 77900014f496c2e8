"""The HTTP endpoints: /metrics, /healthz, / (landing page), /state and /events.

Handlers only read `Publisher.current` and never block on the loop; the only /proc read on
the scrape path is prometheus-client's process collector of vgpumon's own `process_*` metrics
(/proc/self/stat and friends), as in every exporter. They run on the server's one thread
(`vgpumon.http.serving`): a bcrypt check, the one thing that may take long, runs on its
worker thread.

With a web config (`vgpumon.http.webconfig.WebAccess`) every connection is TLS, handshaken
without blocking under a deadline, and every request, /healthz included (as in the exporter
toolkit), passes the rate limit and basic auth before it is routed.
"""

from __future__ import annotations

import dataclasses
import gzip
import html
import json
import logging
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry

from vgpumon import __version__
from vgpumon.http.auth import CHALLENGE
from vgpumon.http.exposition import ExpositionCache
from vgpumon.http.request import Request
from vgpumon.http.serving import Deferred, Reply, Response, SelectorServer
from vgpumon.http.webconfig import WebAccess
from vgpumon.model.untrusted import clip
from vgpumon.snapshot.host import ProcessState
from vgpumon.snapshot.publication import Published, Publisher

log = logging.getLogger(__name__)

# A loop that has not ticked for this many intervals (plus slack) is reported unhealthy.
HEALTHY_INTERVALS = 3
HEALTHY_SLACK_SECONDS = 10.0

TEXT = "text/plain; charset=utf-8"
Query = dict[str, list[str]]


class ExporterServer(SelectorServer):
    server_version = f"vgpumon/{__version__}"

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 publisher: Publisher, access: WebAccess | None = None):
        super().__init__(address)
        self.registry = registry
        self.exposition = ExpositionCache()
        self.state_cache = StateCache()
        self.publisher = publisher
        self.access = access or WebAccess.plain()

    @property
    def scheme(self) -> str:
        return "https" if self.access.ssl_context is not None else "http"

    def set_web_config(self, access: WebAccess) -> None:
        """Apply a new web config to the connections and requests that come from now on."""
        self.access = access  # one reference swap: each reader sees the old or the new one

    # -- SelectorServer --------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        return self.access.ssl_context

    def client_allowed(self, peer_certificate: Any) -> bool:
        return self.access.client_allowed(peer_certificate)

    def extra_headers(self) -> tuple[tuple[str, str], ...]:
        # Every response, errors and 401s included, carries the web config's extra headers.
        return self.access.headers

    def respond(self, request: Request, client: str) -> Reply:
        if request.method not in ("GET", "HEAD"):
            return _plain(405, "method not allowed\n", ("Allow", "GET, HEAD"))
        access = self.access
        if not access.admit():
            return _plain(429, "too many requests\n")
        authorization = request.headers.get("authorization")
        verdict = access.authenticate_cached(authorization)
        if verdict is None:  # a bcrypt check: on the worker thread
            return Deferred(partial(access.authenticate, authorization),
                            partial(self._admitted, request))
        return self._admitted(request, verdict)

    # -- routes --------------------------------------------------------------------------------

    def _admitted(self, request: Request, authenticated: bool) -> Response:
        if not authenticated:
            return _plain(401, "unauthorized\n", ("WWW-Authenticate", CHALLENGE))
        url = urlsplit(request.target)
        route = _ROUTES.get(url.path)
        if route is None:
            return _plain(404, "not found\n")
        return route(self, request, self.publisher.current, parse_qs(url.query))

    def _metrics(self, request: Request, _published: Published, _query: Query) -> Response:
        body = self.exposition.body(self.registry, request.header("Accept"),
                                    gzipped=_accepts_gzip(request))
        headers = [("Content-Type", body.content_type)]
        if body.gzipped:
            headers.append(("Content-Encoding", "gzip"))
        return Response(200, tuple(headers), body.parts)

    def _healthz(self, _request: Request, published: Published, _query: Query) -> Response:
        age = time.time() - published.runtime.heartbeat
        limit = HEALTHY_INTERVALS * published.config.interval + HEALTHY_SLACK_SECONDS
        if age <= limit:
            return _plain(200, "ok\n")
        return _plain(503, f"loop stalled: last tick {age:.1f}s ago\n")

    def _state(self, request: Request, published: Published, _query: Query) -> Response:
        body, gzipped = self.state_cache.get(published)
        return _document(request, "application/json", body, gzipped)

    def _events(self, request: Request, published: Published, query: Query) -> Response:
        events = published.recent_events
        kinds = set(query.get("kind", []))
        if kinds:
            events = tuple(e for e in events if e.kind in kinds)
        try:
            since = float(query["since"][0]) if "since" in query else None
            limit = int(query["limit"][0]) if "limit" in query else None
        except ValueError:
            return _plain(400, "since and limit must be numbers\n")
        if since is not None:
            events = tuple(e for e in events if e.ts > since)
        if limit is not None:
            events = events[-limit:] if limit > 0 else ()
        body = json.dumps({"events": [e.to_dict() for e in events]}, indent=1, default=str)
        return _document(request, "application/json", body.encode())

    def _landing(self, request: Request, published: Published, _query: Query) -> Response:
        return _document(request, "text/html; charset=utf-8", landing_page(published).encode())


_ROUTES: dict[str, Callable[[ExporterServer, Request, Published, Query], Response]] = {
    "/metrics": ExporterServer._metrics,
    "/healthz": ExporterServer._healthz,
    "/state": ExporterServer._state,
    "/events": ExporterServer._events,
    "/": ExporterServer._landing,
}


def _accepts_gzip(request: Request) -> bool:
    return "gzip" in request.header("Accept-Encoding")


def _plain(status: int, text: str, *headers: tuple[str, str]) -> Response:
    return Response(status, (("Content-Type", TEXT), *headers), (text.encode(),))


def _document(request: Request, content_type: str, body: bytes,
              gzipped: Callable[[], bytes] | None = None) -> Response:
    """A compressible answer: gzipped if the client takes it (`gzipped` gives it cached)."""
    if not _accepts_gzip(request):
        return Response(200, (("Content-Type", content_type),), (body,))
    compressed = gzipped() if gzipped is not None else gzip.compress(body, compresslevel=5)
    return Response(200, (("Content-Type", content_type), ("Content-Encoding", "gzip")),
                    (compressed,))


class StateCache:
    """/state's body, built once per `Published` and served to every request while that
    object is current: what a process hands vgpumon is encoded once, not once per request
    (docs/reliability.md#untrusted-text)."""

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
