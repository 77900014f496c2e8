"""The Prometheus exporter-toolkit web configuration file (``web_config_file:``).

The format is the toolkit's (docs/web-configuration.md in prometheus/exporter-toolkit): TLS
with optional client certificates, extra response headers, basic auth over bcrypt hashes and
a rate limit. It is parsed into frozen dataclasses, checked the way the toolkit checks it
(unknown keys are errors), and built into a `WebAccess`: the SSL context and the admission
rules the exporter's HTTP server applies to every connection and request.

Where Python's ssl module cannot do what Go's crypto/tls does, the file is refused with a
message saying so rather than served with a weaker meaning:

- ``client_auth_type: RequireAnyClientCert`` (a certificate that is never verified) cannot be
  had from OpenSSL through the ssl module; ``RequestClientCert`` asks for a certificate that
  is never verified either, so vgpumon does not ask for one (the same clients get in).
- The verifying modes need ``client_ca_file``/``client_ca``: Go falls back to the system
  roots, which would let anyone with a public certificate in.
- ``curve_preferences`` may name one curve (the ssl module sets a single ECDH group).
- TLS settings without a certificate are an error, not silently plain HTTP.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vgpumon.config.loading import ConfigError, Validator, read_yaml, type_name
from vgpumon.http.auth import BasicAuth, RateLimiter
from vgpumon.http.passwords import BcryptHash, bcrypt_problem

CLIENT_AUTH_TYPES = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                     "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
_VERIFY_MODES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,  # Go would ask but never check: nobody is kept out
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's tls.CipherSuites() (the toolkit accepts no others) -> OpenSSL's name. TLS 1.3 suites
# map to None: Go ignores them in this setting ("for TLS versions up to TLS 1.2"), so do we.
CIPHER_SUITES: Mapping[str, str | None] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# Go's tls.InsecureCipherSuites(): named so the error can say why, never accepted.
_INSECURE_CIPHER_SUITES = frozenset({
    "TLS_RSA_WITH_RC4_128_SHA", "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256", "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA", "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
})

# Go's curve names (tls.CurveID) -> OpenSSL's; None: known to Go, not settable here.
CURVES: Mapping[str, str | None] = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
    "X25519MLKEM768": None,
    "SecP256r1MLKEM768": None,
    "SecP384r1MLKEM1024": None,
}

# The toolkit's extraHTTPHeaders: the only headers it lets a web config set, and for some
# the only values. Anything else could break the exporter (Content-Type, Content-Length) or
# its authentication (WWW-Authenticate), so it is refused, as there.
HEADERS: Mapping[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS = ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type",
             "client_ca_file", "client_allowed_sans", "min_version", "max_version",
             "cipher_suites", "prefer_server_cipher_suites", "curve_preferences")


@dataclass(frozen=True)
class TLSServerConfig:
    """``tls_server_config``, validated; paths absolute, names in OpenSSL's spelling."""

    cert_file: str | None = None
    cert: str | None = field(default=None, repr=False)
    key_file: str | None = None
    key: str | None = field(default=None, repr=False)
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    client_ca: str | None = field(default=None, repr=False)
    client_allowed_sans: tuple[str, ...] = ()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve: str | None = None


@dataclass(frozen=True)
class HTTPServerConfig:
    http2: bool = True  # accepted for compatibility; the stdlib server speaks HTTP/1.1
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RateLimit:
    interval: float
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """The whole file. `lines` maps key paths to lines, for errors found while building."""

    tls: TLSServerConfig | None = None
    http: HTTPServerConfig = field(default_factory=HTTPServerConfig)
    basic_auth_users: tuple[tuple[str, BcryptHash], ...] = ()
    rate_limit: RateLimit | None = None
    source: str = ""
    lines: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(key, message, source=self.source, line=self.lines.get(key))


# -- reading and validating ------------------------------------------------------------------


def load_web_config(path: str) -> WebConfig:
    """The web config in `path`, validated (files it names are read by `build_access`)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise ConfigError("", f"cannot read web config file: {err.strerror}",
                          source=path) from err
    except UnicodeDecodeError as err:
        raise ConfigError("", f"web config file is not UTF-8: {err}", source=path) from err
    return parse_web_config(text, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def parse_web_config(text: str, *, source: str = "web config", base_dir: str = "/") -> WebConfig:
    """Parse and check `text`; relative file names are taken from `base_dir` (the toolkit's
    rule: relative to the web config file)."""
    data, lines = read_yaml(text, source=source)
    return _WebValidator(lines, source, base_dir).web_config(data)


class _WebValidator(Validator):
    def __init__(self, lines: Mapping[str, int], source: str, base_dir: str):
        super().__init__(lines, source)
        self._base_dir = base_dir

    def web_config(self, data: Any) -> WebConfig:
        top = self.mapping(data, "", _TOP_KEYS)
        return WebConfig(
            tls=self.tls(top.get("tls_server_config")),
            http=self.http(top.get("http_server_config")),
            basic_auth_users=self.users(top.get("basic_auth_users")),
            rate_limit=self.rate_limit(top.get("rate_limit")),
            source=self._source,
            lines=dict(self._lines),
        )

    # -- tls_server_config ----------------------------------------------------------------

    def tls(self, value: Any) -> TLSServerConfig | None:
        prefix = "tls_server_config"
        section = self.mapping(value, prefix, _TLS_KEYS)
        given = {key: item for key, item in section.items() if item not in (None, "", [])}
        if not given:
            return None
        cert_file, cert = self.file_or_inline(given, "cert_file", "cert")
        key_file, key = self.file_or_inline(given, "key_file", "key")
        if cert_file is None and cert is None:
            raise self.error(prefix, "TLS settings are given but no certificate: add "
                                     "cert_file (or cert) and key_file (or key) to serve "
                                     "HTTPS, or remove tls_server_config for plain HTTP")
        if key_file is None and key is None:
            raise self.error(prefix, "missing key_file (or key) for the certificate")
        auth = self.client_auth_type(given.get("client_auth_type"))
        ca_file, ca = self.file_or_inline(given, "client_ca_file", "client_ca")
        has_ca = ca_file is not None or ca is not None
        ca_key = f"{prefix}.{'client_ca_file' if ca_file else 'client_ca'}"
        if has_ca and auth == "NoClientCert":
            raise self.error(ca_key, "a client CA is configured but client_auth_type is "
                                     "NoClientCert: set client_auth_type: "
                                     "RequireAndVerifyClientCert")
        if not has_ca and _VERIFY_MODES[auth] != ssl.CERT_NONE:
            raise self.error(f"{prefix}.client_auth_type",
                             f"{auth} needs client_ca_file (or client_ca): the CA that signs "
                             f"the scrapers' certificates (the system CAs are not trusted "
                             f"for client certificates)")
        sans = self.string_list(given.get("client_allowed_sans"),
                                f"{prefix}.client_allowed_sans")
        if sans and auth != "RequireAndVerifyClientCert":
            raise self.error(f"{prefix}.client_allowed_sans",
                             "client_allowed_sans needs client_auth_type: "
                             "RequireAndVerifyClientCert (otherwise a client may send no "
                             "certificate, leaving no SAN to check)")
        minimum = self.tls_version(given.get("min_version", "TLS12"), f"{prefix}.min_version")
        maximum = self.tls_version(given.get("max_version", "TLS13"), f"{prefix}.max_version")
        if minimum > maximum:
            key_path = f"{prefix}.max_version" if "max_version" in given else \
                f"{prefix}.min_version"
            raise self.error(key_path, "max_version is lower than min_version")
        return TLSServerConfig(
            cert_file=cert_file, cert=cert, key_file=key_file, key=key,
            client_auth_type=auth, client_ca_file=ca_file, client_ca=ca,
            client_allowed_sans=sans, min_version=minimum, max_version=maximum,
            ciphers=self.cipher_suites(given.get("cipher_suites"), f"{prefix}.cipher_suites"),
            prefer_server_cipher_suites=self.get(section, "prefer_server_cipher_suites", True,
                                                 self.boolean, f"{prefix}."),
            curve=self.curve(given.get("curve_preferences"), f"{prefix}.curve_preferences"),
        )

    def file_or_inline(self, section: Mapping[str, Any], file_key: str,
                       inline_key: str) -> tuple[str | None, str | None]:
        prefix = "tls_server_config."
        if file_key in section and inline_key in section:
            raise self.error(f"{prefix}{inline_key}",
                             f"give {file_key} or {inline_key} (inline PEM), not both")
        if file_key in section:
            path = self.string(section[file_key], f"{prefix}{file_key}")
            return os.path.normpath(os.path.join(self._base_dir, path)), None
        if inline_key in section:
            pem = self.string(section[inline_key], f"{prefix}{inline_key}")
            if "-----BEGIN " not in pem:
                raise self.error(f"{prefix}{inline_key}", "expected PEM text (-----BEGIN …)")
            return None, pem
        return None, None

    def client_auth_type(self, value: Any) -> str:
        path = "tls_server_config.client_auth_type"
        if value is None:
            return "NoClientCert"
        text = self.string(value, path)
        if text in ("RequireAnyClientCert", "RequireClientCert"):
            raise self.error(path, f"{text} (a client certificate that is never verified) "
                                   f"is not supported: Python's ssl module can only accept "
                                   f"client certificates it verifies; use "
                                   f"RequireAndVerifyClientCert with client_ca_file")
        if text not in _VERIFY_MODES:
            raise self.error(path, f"expected one of {', '.join(CLIENT_AUTH_TYPES)}, "
                                   f"got {text!r}")
        return text

    def tls_version(self, value: Any, path: str) -> ssl.TLSVersion:
        if value not in TLS_VERSIONS:
            raise self.error(path, f"expected one of {', '.join(TLS_VERSIONS)}, "
                                   f"got {type_name(value)}")
        return TLS_VERSIONS[value]

    def string_list(self, value: Any, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(path, f"expected a list of strings, got {type_name(value)}")
        return tuple(self.string(item, f"{path}[{i}]") for i, item in enumerate(value))

    def cipher_suites(self, value: Any, path: str) -> tuple[str, ...]:
        names = []
        for index, name in enumerate(self.string_list(value, path)):
            item = f"{path}[{index}]"
            if name in _INSECURE_CIPHER_SUITES:
                raise self.error(item, f"{name} is an insecure cipher suite (Go's "
                                       f"InsecureCipherSuites); the exporter toolkit refuses "
                                       f"it too")
            if name not in CIPHER_SUITES:
                raise self.error(item, f"unknown cipher suite {name!r} (use Go's names, e.g. "
                                       f"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)")
            openssl = CIPHER_SUITES[name]
            if openssl is not None:
                names.append(openssl)
        return tuple(dict.fromkeys(names))

    def curve(self, value: Any, path: str) -> str | None:
        names = self.string_list(value, path)
        for index, name in enumerate(names):
            if name not in CURVES:
                raise self.error(f"{path}[{index}]", f"unknown curve {name!r} (expected one "
                                                     f"of {', '.join(CURVES)})")
            if CURVES[name] is None:
                raise self.error(f"{path}[{index}]", f"{name} is not available through "
                                                     f"Python's ssl module")
        if len(names) > 1:
            raise self.error(f"{path}[1]", "vgpumon can restrict the handshake to one curve "
                                           "only (Python's ssl module sets a single ECDH "
                                           "group): list one, e.g. [X25519]")
        return CURVES[names[0]] if names else None

    # -- http_server_config, basic_auth_users, rate_limit ------------------------------------

    def http(self, value: Any) -> HTTPServerConfig:
        prefix = "http_server_config"
        section = self.mapping(value, prefix, ("http2", "headers"))
        http2 = self.get(section, "http2", True, self.boolean, f"{prefix}.")
        headers_path = f"{prefix}.headers"
        raw = self.mapping(section.get("headers"), headers_path, tuple(HEADERS))
        headers = []
        for name, item in raw.items():
            path = f"{headers_path}.{name}"
            if item is None or item == "":
                continue  # "Unset if blank", as in the toolkit
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise self.error(path, f"expected a string, got {type_name(item)}")
            text = str(item)
            if "\r" in text or "\n" in text:
                raise self.error(path, "header values may not contain line breaks")
            allowed = HEADERS[name]
            if allowed and text not in allowed:
                raise self.error(path, f"expected one of {', '.join(allowed)}, got {text!r}")
            headers.append((name, text))
        return HTTPServerConfig(http2=http2, headers=tuple(headers))

    def users(self, value: Any) -> tuple[tuple[str, BcryptHash], ...]:
        path = "basic_auth_users"
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping of user names to bcrypt hashes, "
                                   f"got {type_name(value)}")
        users = []
        for name, hashed in value.items():
            user_path = f"{path}.{name}"
            if not name or ":" in name:
                raise self.error(user_path, "user names must be non-empty and without ':' "
                                            "(basic auth splits user and password there)")
            try:
                users.append((name, BcryptHash.parse(self.string(hashed, user_path))))
            except ValueError as err:
                raise self.error(user_path, str(err)) from None
        return tuple(users)

    def rate_limit(self, value: Any) -> RateLimit | None:
        prefix = "rate_limit"
        section = self.mapping(value, prefix, ("interval", "burst"))
        interval_value = section.get("interval", 0)
        if interval_value in (0, "0"):
            return None  # the toolkit's "set to 0 to disable"
        interval = self.duration(interval_value, f"{prefix}.interval", 0.001)
        if "burst" not in section:
            raise self.error(prefix, "missing burst (requests allowed at once)")
        burst = self.integer(section["burst"], f"{prefix}.burst", 1)
        return RateLimit(interval=interval, burst=burst)


# -- building ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebAccess:
    """What the exporter applies to connections and requests: built from a `WebConfig`."""

    config: WebConfig
    ssl_context: ssl.SSLContext | None = None
    basic_auth: BasicAuth | None = None
    rate_limiter: RateLimiter | None = None

    @classmethod
    def plain(cls) -> WebAccess:
        """No web config: plain HTTP, no authentication, no extra headers."""
        return cls(WebConfig())

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self.config.http.headers

    def client_allowed(self, peer_certificate: Mapping[str, Any] | None) -> bool:
        """Whether a verified client certificate passes ``client_allowed_sans``."""
        tls = self.config.tls
        if tls is None or not tls.client_allowed_sans:
            return True
        if not peer_certificate:
            return False
        allowed = set(tls.client_allowed_sans)
        return any(name in allowed for name in certificate_sans(peer_certificate))

    def authenticate(self, authorization: str | None) -> bool:
        """May take a bcrypt computation (tens of milliseconds): not on the server thread."""
        return self.basic_auth is None or self.basic_auth.check(authorization)

    def authenticate_cached(self, authorization: str | None) -> bool | None:
        """`authenticate` where it is instant; None where it needs `authenticate`."""
        return True if self.basic_auth is None else self.basic_auth.check_cached(authorization)

    def admit(self) -> bool:
        """False when the rate limit is exhausted (answer 429)."""
        return self.rate_limiter is None or self.rate_limiter.allow()

    def describe(self) -> str:
        tls = self.config.tls
        parts = []
        if tls is None:
            parts.append("plain HTTP")
        else:
            versions = f"{_version_name(tls.min_version)}-{_version_name(tls.max_version)}"
            parts.append(f"TLS {versions}, client certificates: {tls.client_auth_type}"
                         + (f" (allowed SANs: {len(tls.client_allowed_sans)})"
                            if tls.client_allowed_sans else ""))
        if self.basic_auth is not None:
            parts.append(f"basic auth users: {', '.join(self.basic_auth.users)}")
        if self.config.rate_limit is not None:
            limit = self.config.rate_limit
            parts.append(f"rate limit: burst {limit.burst}, 1 per {limit.interval:g}s")
        if self.headers:
            parts.append(f"headers: {', '.join(name for name, _ in self.headers)}")
        return "; ".join(parts)


def certificate_sans(peer_certificate: Mapping[str, Any]) -> list[str]:
    """The DNS, IP, e-mail and URI SANs of a certificate, spelled as Go spells them."""
    names = []
    for kind, value in peer_certificate.get("subjectAltName", ()):
        if kind == "IP Address":
            try:
                value = str(ipaddress.ip_address(value.strip()))
            except ValueError:
                continue
        elif kind not in ("DNS", "email", "URI"):
            continue
        names.append(value)
    return names


def web_access_for(web_config_file: str | None) -> WebAccess:
    """The `WebAccess` for a config's ``web_config_file:`` (plain HTTP when None)."""
    if web_config_file is None:
        return WebAccess.plain()
    return build_access(load_web_config(web_config_file))


def build_access(config: WebConfig) -> WebAccess:
    """Read the certificates and keys `config` names and build the SSL context and the
    admission rules; every problem is a `ConfigError` naming the key."""
    users = dict(config.basic_auth_users)
    if users:
        problem = bcrypt_problem()
        if problem is not None:
            raise config.error("basic_auth_users", problem)
    limit = config.rate_limit
    return WebAccess(
        config=config,
        ssl_context=ssl_context(config) if config.tls is not None else None,
        basic_auth=BasicAuth(users) if users else None,
        rate_limiter=RateLimiter(limit.interval, limit.burst) if limit else None,
    )


def ssl_context(config: WebConfig) -> ssl.SSLContext:
    """The server-side context for ``tls_server_config``."""
    tls = config.tls
    assert tls is not None
    prefix = "tls_server_config."
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS10/TLS11, if asked for
        context.minimum_version = tls.min_version
        context.maximum_version = tls.max_version
    if not tls.prefer_server_cipher_suites:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.ciphers:
        _set_ciphers(config, context, tls.ciphers)
    if tls.curve is not None:
        try:
            context.set_ecdh_curve(tls.curve)
        except (ValueError, ssl.SSLError) as err:
            raise config.error(f"{prefix}curve_preferences[0]",
                               f"this OpenSSL cannot use that curve: {err}") from None
    _load_certificate(config, context, tls)
    context.verify_mode = _VERIFY_MODES[tls.client_auth_type]
    if tls.client_auth_type != "RequestClientCert":
        _load_client_ca(config, context, tls)
    return context


def _set_ciphers(config: WebConfig, context: ssl.SSLContext, ciphers: tuple[str, ...]) -> None:
    for name in ciphers:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(name)
        except ssl.SSLError:
            go = next(g for g, o in CIPHER_SUITES.items() if o == name)
            raise config.error("tls_server_config.cipher_suites",
                               f"{go} ({name}) is not available in this OpenSSL "
                               f"({ssl.OPENSSL_VERSION})") from None
    context.set_ciphers(":".join(ciphers))


def _no_passphrase() -> bytes:
    raise _EncryptedKey


class _EncryptedKey(Exception):
    pass


def _load_certificate(config: WebConfig, context: ssl.SSLContext,
                      tls: TLSServerConfig) -> None:
    cert_key = "tls_server_config." + ("cert_file" if tls.cert_file else "cert")
    key_key = "tls_server_config." + ("key_file" if tls.key_file else "key")
    cert_pem = _read_pem(config, cert_key, tls.cert_file, tls.cert)
    key_pem = _read_pem(config, key_key, tls.key_file, tls.key)
    if "CERTIFICATE-----" not in cert_pem:
        raise config.error(cert_key, "no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
    if "PRIVATE KEY-----" not in key_pem:
        raise config.error(key_key, "no PEM private key (-----BEGIN … PRIVATE KEY-----) in it")
    try:  # parses every certificate in the text: a broken one is the cert's fault
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=cert_pem)
    except (ssl.SSLError, ValueError) as err:
        raise config.error(cert_key, f"not a valid PEM certificate: "
                                     f"{getattr(err, 'reason', None) or err}") from None
    # load_cert_chain reads files only; memfds keep inline keys off the disk.
    with _MemoryFile(cert_pem) as cert_path, _MemoryFile(key_pem) as key_path:
        try:
            context.load_cert_chain(cert_path, key_path, password=_no_passphrase)
        except _EncryptedKey:
            raise config.error(key_key, "the private key is encrypted; vgpumon needs it "
                                        "unencrypted (protect it with file permissions)"
                               ) from None
        except ssl.SSLError as err:
            if err.reason == "KEY_VALUES_MISMATCH":
                message = "this private key does not belong to the certificate"
            else:
                message = f"cannot load the private key: {err.reason or err}"
            raise config.error(key_key, message) from None


def _load_client_ca(config: WebConfig, context: ssl.SSLContext,
                    tls: TLSServerConfig) -> None:
    if tls.client_ca_file is None and tls.client_ca is None:
        return
    key = "tls_server_config." + ("client_ca_file" if tls.client_ca_file else "client_ca")
    pem = _read_pem(config, key, tls.client_ca_file, tls.client_ca)
    if "CERTIFICATE-----" not in pem:
        raise config.error(key, "no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
    try:
        context.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as err:
        raise config.error(key, f"not a usable CA certificate: "
                                f"{getattr(err, 'reason', None) or err}") from None
    if not context.cert_store_stats().get("x509_ca"):
        raise config.error(key, "none of its certificates is a CA certificate "
                                "(basicConstraints CA:TRUE)")


def _read_pem(config: WebConfig, key: str, path: str | None, inline: str | None) -> str:
    if path is None:
        return inline or ""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except OSError as err:
        raise config.error(key, f"cannot read {path}: {err.strerror}") from None


class _MemoryFile:
    """Text in an anonymous memory file, reachable by a /proc/self/fd path while open."""

    def __init__(self, text: str):
        self._text = text
        self._fd = -1

    def __enter__(self) -> str:
        self._fd = os.memfd_create("vgpumon-tls", os.MFD_CLOEXEC)
        os.write(self._fd, self._text.encode())
        return f"/proc/self/fd/{self._fd}"

    def __exit__(self, *_exc: object) -> None:
        os.close(self._fd)


def _version_name(version: ssl.TLSVersion) -> str:
    return next(name for name, value in TLS_VERSIONS.items() if value == version)
