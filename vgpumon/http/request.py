"""HTTP/1.x requests and responses as bytes: a pure parser of a request head and a writer of a
response head, for the exporter's selector server (`vgpumon.http.serving`).

Only what an exporter needs: GET and HEAD without a body. The head is bounded
(`MAX_HEAD`, `MAX_HEADERS`); anything malformed is an `HttpError` with the status to answer,
after which the connection is closed. Every client is untrusted: a request head is parsed
once it is complete, never line by line as it trickles in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

MAX_HEAD = 16 << 10  # request line and headers; Prometheus sends about 300 bytes
MAX_HEADERS = 100  # as http.client allows

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")


class HttpError(Exception):
    """A request that cannot be served: answer `status` and close the connection."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Request:
    """A parsed request head. `headers` has lower-case names; the first of repeated ones."""

    method: str
    target: str
    version: str
    headers: Mapping[str, str]
    keep_alive: bool

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def head_end(buffer: bytes | bytearray) -> int:
    """The index just past the blank line that ends a request head; -1 while incomplete.
    Lines may end in CRLF or a bare LF (as http.server accepts)."""
    start = 0
    while buffer.startswith(b"\r\n", start) or buffer.startswith(b"\n", start):
        start += 2 if buffer.startswith(b"\r\n", start) else 1  # empty lines before a request
    crlf = buffer.find(b"\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    if crlf < 0 and lf < 0:
        return -1
    if lf < 0 or 0 <= crlf < lf:
        return crlf + 3
    return lf + 2


def parse_request(head: bytes) -> Request:
    """Parse a complete request head (what `head_end` delimits). Raises `HttpError`."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise HttpError(400, "empty request")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not all(parts):
        raise HttpError(400, "bad request line")
    method, target, version = parts
    match = _VERSION.fullmatch(version)
    if match is None or not _TOKEN.fullmatch(method):
        raise HttpError(400, "bad request line")
    if match.group(1) != b"1":
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are served")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, "too many headers")
    headers = _headers(lines[1:])
    keep_alive = _keep_alive(version == b"HTTP/1.1", headers.get("connection", ""))
    if headers.get("transfer-encoding") or headers.get("content-length", "0") != "0":
        # A body: not read (nothing here takes one), so the connection cannot be reused.
        length = headers.get("content-length", "0")
        if not length.isdigit():
            raise HttpError(400, "bad Content-Length")
        keep_alive = False
    return Request(method.decode("ascii"), target.decode("latin-1"), version.decode("ascii"),
                   headers, keep_alive)


def _headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "folded header lines are not accepted")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, "bad header line")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key == "content-length" and key in headers and headers[key] != text:
            raise HttpError(400, "conflicting Content-Length headers")
        headers.setdefault(key, text)
    return headers


def _keep_alive(http11: bool, connection: str) -> bool:
    tokens = {token.strip().lower() for token in connection.split(",")}
    if "close" in tokens:
        return False
    return http11 or "keep-alive" in tokens


def response_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """The status line and headers of a response, ending in the blank line."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
