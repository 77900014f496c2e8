"""The real `ExporterServer` behind a web config, scraped with Python's ssl and urllib."""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading

import pytest

from vgpumon.http.auth import CHALLENGE

from .conftest import (
    CLIENT_SANS,
    access_from,
    basic,
    client_context,
    fetch,
    libcrypt_bcrypt,
    running_server,
    tls_config,
    url,
)

MTLS = ("  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: {ca}\n")


def mtls_config(pki, extra: str = "") -> str:
    return tls_config(pki, MTLS.format(ca=pki.ca) + extra)


def test_tls_scrape_succeeds_with_the_right_ca(tmp_path, pki):
    with running_server(access_from(tmp_path, tls_config(pki))) as server:
        assert server.scheme == "https"
        reply = fetch(url(server), context=client_context(pki))
        assert reply.status == 200
        assert b"vgpumon_build_info" in reply.body
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch(url(server), context=ssl.create_default_context(cafile=str(pki.rogue_ca)))


def test_require_and_verify_client_cert(tmp_path, pki):
    with running_server(access_from(tmp_path, mtls_config(pki))) as server:
        assert fetch(url(server), context=client_context(pki, cert=pki.client)).status == 200
        with pytest.raises(OSError):  # no certificate: the handshake is refused
            fetch(url(server), context=client_context(pki))
        with pytest.raises(OSError):  # a certificate from another CA: refused
            fetch(url(server), context=client_context(pki, cert=pki.rogue_client))
        # The server thread survived all of that.
        assert fetch(url(server), context=client_context(pki, cert=pki.client)).status == 200


def test_verify_client_cert_if_given(tmp_path, pki):
    config = tls_config(pki, f"  client_auth_type: VerifyClientCertIfGiven\n"
                             f"  client_ca_file: {pki.ca}\n")
    with running_server(access_from(tmp_path, config)) as server:
        assert fetch(url(server), context=client_context(pki)).status == 200
        assert fetch(url(server), context=client_context(pki, cert=pki.client)).status == 200
        with pytest.raises(OSError):
            fetch(url(server), context=client_context(pki, cert=pki.rogue_client))


@pytest.mark.parametrize("allowed", [CLIENT_SANS[0], CLIENT_SANS[1], CLIENT_SANS[2],
                                     CLIENT_SANS[3]])
def test_client_allowed_sans_match_any_san_kind(tmp_path, pki, allowed):
    config = mtls_config(pki, f"  client_allowed_sans: [other.example, {allowed!r}]\n")
    with running_server(access_from(tmp_path, config)) as server:
        assert fetch(url(server), context=client_context(pki, cert=pki.client)).status == 200


def test_a_client_without_an_allowed_san_is_cut_off(tmp_path, pki):
    config = mtls_config(pki, "  client_allowed_sans: [grafana.example, '10.0.0.1']\n")
    with running_server(access_from(tmp_path, config)) as server:
        context = client_context(pki, cert=pki.client)
        with pytest.raises(OSError):
            fetch(url(server), context=context)


def test_basic_auth_over_tls(tmp_path, pki):
    config = tls_config(pki) + f"basic_auth_users:\n  prometheus: {libcrypt_bcrypt(b's3cret')}\n"
    with running_server(access_from(tmp_path, config)) as server:
        context = client_context(pki)
        ok = fetch(url(server), context=context, authorization=basic("prometheus", "s3cret"))
        assert ok.status == 200 and b"vgpumon_build_info" in ok.body
        for authorization in (None, basic("prometheus", "wrong"), basic("grafana", "s3cret")):
            denied = fetch(url(server), context=context, authorization=authorization)
            assert denied.status == 401
            assert denied.headers["WWW-Authenticate"] == CHALLENGE == 'Basic realm="vgpumon"'
            assert b"vgpumon_" not in denied.body


def test_every_endpoint_is_behind_auth_healthz_included(tmp_path):
    config = f"basic_auth_users:\n  prometheus: {libcrypt_bcrypt(b's3cret')}\n"
    with running_server(access_from(tmp_path, config)) as server:
        assert server.scheme == "http"  # basic auth works without TLS too, as in the toolkit
        for path in ("/metrics", "/healthz", "/", "/state", "/events", "/nothing"):
            assert fetch(url(server, path)).status == 401, path
        assert fetch(url(server, "/healthz"), authorization=basic("prometheus", "s3cret")).body \
            == b"ok\n"
        assert fetch(url(server, "/nothing"),
                     authorization=basic("prometheus", "s3cret")).status == 404


def test_extra_headers_are_on_every_response(tmp_path, pki):
    config = tls_config(pki) + (
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        "    Strict-Transport-Security: max-age=31536000\n"
        f"basic_auth_users:\n  prometheus: {libcrypt_bcrypt(b's3cret')}\n")
    with running_server(access_from(tmp_path, config)) as server:
        context = client_context(pki)
        good = basic("prometheus", "s3cret")
        replies = [fetch(url(server), context=context, authorization=good),
                   fetch(url(server, "/nothing"), context=context, authorization=good),
                   fetch(url(server), context=context)]
        assert [r.status for r in replies] == [200, 404, 401]
        for reply in replies:
            assert reply.headers["X-Frame-Options"] == "deny"
            assert reply.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_a_silent_client_does_not_block_scrapes_and_is_dropped(tmp_path, pki):
    with running_server(access_from(tmp_path, tls_config(pki))) as server:
        server.handshake_timeout = 1.0
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        try:
            # The silent connections sit in their handshakes; scrapes go on meanwhile.
            for _ in range(3):
                assert fetch(url(server), context=client_context(pki)).status == 200
            for sock in silent:
                sock.settimeout(10)
                assert sock.recv(1) == b""  # closed by the server at the handshake deadline
        finally:
            for sock in silent:
                sock.close()


def test_a_trickling_handshake_is_cut_at_the_deadline(tmp_path, pki):
    # One byte of a ClientHello every 0.2 s: each read makes progress, but the handshake
    # deadline is for the whole handshake, so the server still gives up.
    with running_server(access_from(tmp_path, tls_config(pki))) as server:
        server.handshake_timeout = 1.0
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01\x02\x00")  # a handshake record of 512 bytes...
            closed = False
            for _ in range(100):  # ...sent so slowly that it would take 20 s
                readable, _, _ = select.select([sock], [], [], 0.2)
                if readable and sock.recv(1024) == b"":  # (an alert may come first)
                    closed = True
                    break
                try:
                    sock.send(b"\x01")
                except OSError:
                    closed = True
                    break
            assert closed
        assert fetch(url(server), context=client_context(pki)).status == 200


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


@pytest.mark.parametrize("garbage", [
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP to the TLS port
    b"\x16\x03\x01\x00\x05garbage",  # a broken ClientHello
])
def test_a_broken_handshake_only_ends_its_own_connection(tmp_path, pki, garbage):
    with running_server(access_from(tmp_path, tls_config(pki))) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(garbage)
            assert b"vgpumon" not in read_until_closed(sock)  # at most a TLS alert, then EOF
        assert fetch(url(server), context=client_context(pki)).status == 200


def test_a_tls13_only_server_refuses_a_tls12_client(tmp_path, pki):
    config = tls_config(pki, "  min_version: TLS13\n")
    with running_server(access_from(tmp_path, config)) as server:
        with pytest.raises(OSError, match="PROTOCOL_VERSION"):
            fetch(url(server), context=client_context(pki, maximum=ssl.TLSVersion.TLSv1_2))
        assert fetch(url(server), context=client_context(pki)).status == 200


def tls_connection(server, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context,
                                             timeout=10)
    connection.request("GET", "/metrics")
    assert connection.getresponse().read()
    return connection


def test_cipher_suites_and_max_version_are_honoured(tmp_path, pki):
    config = tls_config(pki, "  max_version: TLS12\n"
                             "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n")
    with running_server(access_from(tmp_path, config)) as server:
        connection = tls_connection(server, client_context(pki))
        assert connection.sock.version() == "TLSv1.2"
        assert connection.sock.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
        connection.close()
        only_other = client_context(pki)
        only_other.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        with pytest.raises(OSError):
            fetch(url(server), context=only_other)


def test_curve_preferences_restrict_the_key_exchange(tmp_path, pki):
    config = tls_config(pki, "  curve_preferences: [CurveP384]\n")
    with running_server(access_from(tmp_path, config)) as server:
        p384 = client_context(pki)
        p384.set_ecdh_curve("secp384r1")
        assert fetch(url(server), context=p384).status == 200
        x25519 = client_context(pki)
        x25519.set_ecdh_curve("X25519")
        with pytest.raises(OSError):
            fetch(url(server), context=x25519)


def test_rate_limit_answers_429(tmp_path):
    with running_server(access_from(tmp_path, "rate_limit: {interval: 1h, burst: 2}\n")) as server:
        assert [fetch(url(server)).status for _ in range(3)] == [200, 200, 429]


def test_set_web_config_switches_new_connections(tmp_path, pki):
    with running_server() as server:
        assert server.scheme == "http" and fetch(url(server)).status == 200
        server.set_web_config(access_from(tmp_path, mtls_config(pki)))
        assert server.scheme == "https"
        reply = fetch(url(server), context=client_context(pki, cert=pki.client))
        assert reply.status == 200
        with pytest.raises(OSError):
            fetch(f"http://127.0.0.1:{server.port}/metrics")


def test_concurrent_authenticated_scrapes(tmp_path, pki):
    config = mtls_config(pki) + f"basic_auth_users:\n  prometheus: {libcrypt_bcrypt(b'pw')}\n"
    with running_server(access_from(tmp_path, config)) as server:
        context = client_context(pki, cert=pki.client)
        statuses: list[int] = []

        def scrape(password: str) -> None:
            statuses.append(fetch(url(server), context=context,
                                  authorization=basic("prometheus", password)).status)

        threads = [threading.Thread(target=scrape, args=(p,)) for p in ["pw", "bad"] * 5]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(statuses) == [200] * 5 + [401] * 5
