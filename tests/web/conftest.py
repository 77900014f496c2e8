"""Fixtures for the web config tests: a throw-away PKI, bcrypt hashes made by libcrypt, and a
real `ExporterServer` serving a real collector on 127.0.0.1.

Certificates are made with `cryptography` (a test-only dependency); hashes with the host's
crypt(3) called directly, not through vgpumon, so the code under test checks hashes it did
not make.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import ipaddress
import secrets
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry

from vgpumon.config.schema import Config, EventsSpec
from vgpumon.daemon.counters import Tracker
from vgpumon.http.collector import VgpumonCollector
from vgpumon.http.server import ExporterServer
from vgpumon.http.webconfig import WebAccess, web_access_for
from vgpumon.snapshot.host import HostState
from vgpumon.snapshot.publication import Published, Publisher, RuntimeInfo

CLIENT_SANS = ("prometheus.example", "::1", "prometheus@example.org",
               "spiffe://example.org/prometheus")


# -- PKI --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    encrypted_key: Path

    @property
    def client(self) -> tuple[str, str]:
        return str(self.client_cert), str(self.client_key)

    @property
    def rogue_client(self) -> tuple[str, str]:
        return str(self.rogue_client_cert), str(self.rogue_client_key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=1))


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_validity(x509.CertificateBuilder())
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _make_leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str,
               sans: list[x509.GeneralName], usage: x509.ObjectIdentifier
               ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_validity(x509.CertificateBuilder())
            .subject_name(_name(common_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def _write(directory: Path, name: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey | None = None) -> tuple[Path, Path | None]:
    cert_path = directory / f"{name}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is None:
        return cert_path, None
    key_path = directory / f"{name}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _client_sans() -> list[x509.GeneralName]:
    dns, ip, email, uri = CLIENT_SANS
    return [x509.DNSName(dns), x509.IPAddress(ipaddress.ip_address(ip)),
            x509.RFC822Name(email), x509.UniformResourceIdentifier(uri)]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key = _make_ca("vgpumon test CA")
    server, server_key = _make_leaf(
        ca, ca_key, "vgpumon", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                x509.DNSName("localhost")], ExtendedKeyUsageOID.SERVER_AUTH)
    client, client_key = _make_leaf(ca, ca_key, "prometheus", _client_sans(),
                                    ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue_ca, rogue_ca_key = _make_ca("someone else's CA")
    rogue, rogue_key = _make_leaf(rogue_ca, rogue_ca_key, "prometheus", _client_sans(),
                                  ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_path, _ = _write(directory, "ca", ca)
    server_cert, server_key_path = _write(directory, "server", server, server_key)
    client_cert, client_key_path = _write(directory, "client", client, client_key)
    rogue_ca_path, _ = _write(directory, "rogue-ca", rogue_ca)
    rogue_cert, rogue_key_path = _write(directory, "rogue-client", rogue, rogue_key)
    encrypted = directory / "encrypted.key"
    encrypted.write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    assert server_key_path and client_key_path and rogue_key_path
    return Pki(directory, ca_path, server_cert, server_key_path, client_cert, client_key_path,
               rogue_ca_path, rogue_cert, rogue_key_path, encrypted)


# -- bcrypt hashes from libcrypt itself ----------------------------------------------------------

_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def libcrypt_bcrypt(password: bytes, *, variant: str = "2b", cost: int = 4) -> str:
    """A bcrypt hash made by the host's crypt(3) (libxcrypt) with a fresh random salt."""
    library = ctypes.CDLL("libcrypt.so.1")
    library.crypt.restype = ctypes.c_char_p
    library.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    # 22 salt characters carry 128 bits: the last one only its top 2 (., O, e, u).
    salt = "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(21)) + secrets.choice(".Oeu")
    result = library.crypt(password, f"${variant}${cost:02d}${salt}".encode())
    assert result and result.startswith(f"${variant}$".encode()), result
    return result.decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- a real server -----------------------------------------------------------------------------


def published() -> Published:
    now = time.time()
    config = Config(events=EventsSpec(file=None))
    return Published(config=config, state=HostState(now),
                     counters=Tracker(config.crash_loop).counters(now),
                     runtime=RuntimeInfo(started_at=now, heartbeat=now))


@contextlib.contextmanager
def running_server(access: WebAccess | None = None) -> Iterator[ExporterServer]:
    publisher = Publisher(published())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VgpumonCollector(lambda: publisher.current))
    server = ExporterServer(("127.0.0.1", 0), registry, publisher, access)
    server.serve_in_thread()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def access_from(tmp_path: Path, text: str) -> WebAccess:
    """Write `text` as web.yml next to the test's files and load it the way `run` does."""
    path = tmp_path / "web.yml"
    path.write_text(text)
    return web_access_for(str(path))


def tls_config(pki: Pki, extra: str = "") -> str:
    return (f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
            f"  key_file: {pki.server_key}\n{extra}")


def client_context(pki: Pki, *, cert: tuple[str, str] | None = None,
                   maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(*cert)
    if maximum is not None:
        context.maximum_version = maximum
    return context


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(url: str, *, context: ssl.SSLContext | None = None, authorization: str | None = None,
          timeout: float = 10.0) -> Reply:
    """GET `url`; any HTTP status is a `Reply`, a transport failure raises (OSError)."""
    request = urllib.request.Request(url)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as err:
        with err:
            return Reply(err.code, dict(err.headers.items()), err.read())


def url(server: ExporterServer, path: str = "/metrics") -> str:
    return f"{server.scheme}://127.0.0.1:{server.port}{path}"
