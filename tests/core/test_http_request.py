"""The exporter's HTTP request parser: what a head is, what it says, and what is refused."""

from __future__ import annotations

import pytest

from vgpumon.http.request import (
    MAX_HEADERS,
    HttpError,
    head_end,
    parse_request,
    response_head,
)

PROMETHEUS = (b"GET /metrics HTTP/1.1\r\nHost: 10.0.0.5:9835\r\nUser-Agent: Prometheus/3.1.0\r\n"
              b"Accept: application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1\r\n"
              b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n")


def test_a_prometheus_scrape():
    assert head_end(PROMETHEUS) == len(PROMETHEUS)
    request = parse_request(PROMETHEUS)
    assert (request.method, request.target, request.version) == ("GET", "/metrics", "HTTP/1.1")
    assert request.header("accept-encoding") == "gzip"
    assert request.header("ACCEPT").startswith("application/openmetrics-text")
    assert request.header("Authorization") == ""
    assert request.keep_alive


@pytest.mark.parametrize("partial", [b"", b"GET /metrics HTTP/1.1\r\n",
                                     b"GET / HTTP/1.1\r\nHost: x\r\n",
                                     b"GET / HTTP/1.1\r\nHost: x\r\n\r"])
def test_an_unfinished_head_is_not_a_request(partial):
    assert head_end(partial) == -1


def test_head_end_leaves_the_next_pipelined_request():
    two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
    end = head_end(two)
    assert parse_request(two[:end]).target == "/a"
    assert parse_request(two[end:]).target == "/b"


def test_bare_line_feeds_and_leading_empty_lines_are_accepted():
    text = b"\r\n\nGET /healthz HTTP/1.1\nHost: x\n\n"
    assert head_end(text) == len(text)
    assert parse_request(text).target == "/healthz"


@pytest.mark.parametrize(("version", "connection", "keep_alive"), [
    ("1.1", None, True),
    ("1.1", "close", False),
    ("1.1", "Keep-Alive, Close", False),
    ("1.0", None, False),
    ("1.0", "keep-alive", True),
])
def test_keep_alive_follows_the_version_and_the_connection_header(version, connection,
                                                                  keep_alive):
    head = f"GET / HTTP/{version}\r\n" + (f"Connection: {connection}\r\n" if connection else "")
    assert parse_request((head + "\r\n").encode()).keep_alive is keep_alive


@pytest.mark.parametrize("body", ["Content-Length: 3", "Transfer-Encoding: chunked"])
def test_a_request_with_a_body_ends_its_connection(body):
    request = parse_request(f"GET / HTTP/1.1\r\n{body}\r\n\r\n".encode())
    assert not request.keep_alive  # the body is never read, so nothing after it can be


def test_the_first_of_repeated_headers_counts():
    request = parse_request(b"GET / HTTP/1.1\r\nAccept: text/plain\r\nAccept: */*\r\n\r\n")
    assert request.header("Accept") == "text/plain"


@pytest.mark.parametrize(("head", "status"), [
    (b"\r\n\r\n", 400),
    (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9
    (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1 extra\r\n\r\n", 400),
    (b"G(T /metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTX/1.1\r\n\r\n", 400),
    (b"PRI * HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n", 431),
])
def test_malformed_heads_are_refused_with_a_status(head, status):
    with pytest.raises(HttpError) as raised:
        parse_request(head)
    assert raised.value.status == status


def test_header_values_are_latin1_text_not_code():
    request = parse_request(b"GET /\xff HTTP/1.1\r\nX-Name: caf\xe9\r\n\r\n")
    assert request.target == "/\xff" and request.header("X-Name") == "caf\xe9"


def test_response_head():
    head = response_head(404, [("Content-Length", "0")])
    assert head == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
