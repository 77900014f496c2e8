"""The web config file: parsed into frozen dataclasses; every error names the key and line."""

from __future__ import annotations

import dataclasses
import ssl
import textwrap
from pathlib import Path

import pytest

from vgpumon.config.loading import ConfigError
from vgpumon.http.webconfig import (
    WebConfig,
    build_access,
    load_web_config,
    parse_web_config,
    web_access_for,
)

from .conftest import libcrypt_bcrypt, tls_config

HASH = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG"  # the toolkit's example


def parse(text: str) -> WebConfig:
    return parse_web_config(textwrap.dedent(text), source="web.yml", base_dir="/etc/vgpumon")


def test_a_full_web_config_is_read_into_frozen_dataclasses():
    config = parse(f"""
        tls_server_config:
          cert_file: tls/server.crt
          key_file: /etc/vgpumon/tls/server.key
          client_auth_type: RequireAndVerifyClientCert
          client_ca_file: ca.crt
          client_allowed_sans: [prometheus.example, "10.0.0.5"]
          min_version: TLS13
          max_version: TLS13
          cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
          prefer_server_cipher_suites: false
          curve_preferences: [CurveP384]
        http_server_config:
          http2: false
          headers:
            X-Frame-Options: deny
            X-Content-Type-Options: nosniff
            X-XSS-Protection: 0
            Strict-Transport-Security: ""
        basic_auth_users:
          prometheus: {HASH}
        rate_limit: {{interval: 100ms, burst: 20}}
    """)
    tls = config.tls
    assert tls is not None
    # Relative file names are relative to the web config file, as in the toolkit.
    assert tls.cert_file == "/etc/vgpumon/tls/server.crt"
    assert tls.client_ca_file == "/etc/vgpumon/ca.crt"
    assert tls.client_auth_type == "RequireAndVerifyClientCert"
    assert tls.client_allowed_sans == ("prometheus.example", "10.0.0.5")
    assert tls.min_version == tls.max_version == ssl.TLSVersion.TLSv1_3
    assert tls.ciphers == ("ECDHE-RSA-AES128-GCM-SHA256",)  # TLS 1.3 names: ignored, as in Go
    assert tls.prefer_server_cipher_suites is False
    assert tls.curve == "secp384r1"
    assert config.http.http2 is False
    # Blank values unset the header, as in the toolkit; numbers are header text.
    assert config.http.headers == (("X-Frame-Options", "deny"),
                                   ("X-Content-Type-Options", "nosniff"),
                                   ("X-XSS-Protection", "0"))
    [(user, hashed)] = config.basic_auth_users
    assert (user, hashed.variant, hashed.cost, hashed.text) == ("prometheus", "2y", 10, HASH)
    assert config.rate_limit is not None
    assert (config.rate_limit.interval, config.rate_limit.burst) == (0.1, 20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.tls = None  # type: ignore[misc]
    assert HASH not in repr(config)  # hashes and keys stay out of logs


@pytest.mark.parametrize("text", ["", "{}", "tls_server_config:\nhttp_server_config: {}\n",
                                  "basic_auth_users: {}\nrate_limit: {interval: 0}\n"])
def test_an_empty_web_config_means_plain_http_and_no_auth(text):
    config = parse(text)
    assert config.tls is None and config.basic_auth_users == () and config.rate_limit is None
    access = build_access(config)
    assert access.ssl_context is None and access.basic_auth is None
    assert access.authenticate(None) and access.admit()


CERT = "tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n"

# (web config text, the key path named, its line, a phrase of the message)
ERRORS = [
    ("tls_server_config: {}\nbasic_auth: {}\n", "basic_auth", 2, "unknown key"),
    (CERT + "  client_auth: RequireAndVerifyClientCert\n",
     "tls_server_config.client_auth", 4, "unknown key"),
    ("http_server_config:\n  http3: true\n", "http_server_config.http3", 2, "unknown key"),
    ("tls_server_config: [a]\n", "tls_server_config", 1, "expected a mapping"),
    (CERT + "  client_auth_type: VerifyAlways\n",
     "tls_server_config.client_auth_type", 4, "expected one of NoClientCert"),
    (CERT + "  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.crt\n",
     "tls_server_config.client_auth_type", 4, "not supported"),
    (CERT + "  client_auth_type: RequireClientCert\n",
     "tls_server_config.client_auth_type", 4, "not supported"),
    (CERT + "  client_auth_type: RequireAndVerifyClientCert\n",
     "tls_server_config.client_auth_type", 4, "needs client_ca_file"),
    (CERT + "  client_auth_type: VerifyClientCertIfGiven\n",
     "tls_server_config.client_auth_type", 4, "needs client_ca_file"),
    (CERT + "  client_ca_file: ca.crt\n",
     "tls_server_config.client_ca_file", 4, "NoClientCert"),
    (CERT + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n"
            "  client_allowed_sans: [a.example]\n",
     "tls_server_config.client_allowed_sans", 6, "RequireAndVerifyClientCert"),
    (CERT + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
            "  client_allowed_sans: a.example\n",
     "tls_server_config.client_allowed_sans", 6, "expected a list"),
    # A section's line is where its content starts (the config's rule).
    ("tls_server_config:\n  key_file: s.key\n", "tls_server_config", 2, "no certificate"),
    ("tls_server_config:\n  cert_file: s.crt\n", "tls_server_config", 2, "missing key_file"),
    ("tls_server_config: {min_version: TLS13}\n", "tls_server_config", 1, "no certificate"),
    (CERT + "  cert: |\n    -----BEGIN CERTIFICATE-----\n",
     "tls_server_config.cert", 4, "not both"),
    ("tls_server_config:\n  cert: not pem\n  key_file: s.key\n",
     "tls_server_config.cert", 2, "expected PEM"),
    (CERT + "  cert_file: 7\n", "tls_server_config.cert_file", 4, "duplicate key"),
    (CERT + "  min_version: TLS1.2\n", "tls_server_config.min_version", 4, "TLS10, TLS11"),
    (CERT + "  max_version: 13\n", "tls_server_config.max_version", 4, "expected one of"),
    (CERT + "  min_version: TLS13\n  max_version: TLS12\n",
     "tls_server_config.max_version", 5, "lower than min_version"),
    (CERT + "  cipher_suites:\n    - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n"
            "    - ECDHE-RSA-AES256-GCM-SHA384\n",
     "tls_server_config.cipher_suites[1]", 6, "unknown cipher suite"),
    (CERT + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
     "tls_server_config.cipher_suites[0]", 4, "insecure"),
    (CERT + "  curve_preferences: [P256]\n",
     "tls_server_config.curve_preferences[0]", 4, "unknown curve"),
    (CERT + "  curve_preferences: [X25519MLKEM768]\n",
     "tls_server_config.curve_preferences[0]", 4, "not available"),
    (CERT + "  curve_preferences:\n    - X25519\n    - CurveP256\n",
     "tls_server_config.curve_preferences[1]", 6, "one curve only"),
    (CERT + "  prefer_server_cipher_suites: yes please\n",
     "tls_server_config.prefer_server_cipher_suites", 4, "true or false"),
    ("http_server_config:\n  http2: 1\n", "http_server_config.http2", 2, "true or false"),
    ("http_server_config:\n  headers:\n    Content-Type: text/html\n",
     "http_server_config.headers.Content-Type", 3, "unknown key"),
    ("http_server_config:\n  headers:\n    WWW-Authenticate: Basic\n",
     "http_server_config.headers.WWW-Authenticate", 3, "unknown key"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
     "http_server_config.headers.X-Frame-Options", 3, "deny, sameorigin"),
    ("http_server_config:\n  headers:\n    Content-Security-Policy: \"a\\r\\nSet-Cookie: x\"\n",
     "http_server_config.headers.Content-Security-Policy", 3, "line breaks"),
    ("basic_auth_users: [alice]\n", "basic_auth_users", 1, "expected a mapping"),
    ("basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice", 2, "bcrypt hash"),
    ("basic_auth_users:\n  alice: $6$saltsalt$" + "x" * 86 + "\n",
     "basic_auth_users.alice", 2, "bcrypt hash"),
    ("basic_auth_users:\n  alice: " + HASH.replace("$2y$", "$2x$") + "\n",
     "basic_auth_users.alice", 2, "variant $2x$"),
    ("basic_auth_users:\n  alice: " + HASH.replace("$10$", "$03$") + "\n",
     "basic_auth_users.alice", 2, "cost must be 4 to 31"),
    ("basic_auth_users:\n  bob: x\n  'a:b': " + HASH + "\n",
     "basic_auth_users.bob", 2, "bcrypt hash"),
    ("basic_auth_users:\n  'a:b': " + HASH + "\n", "basic_auth_users.a:b", 2, "without ':'"),
    ("basic_auth_users:\n  alice:\n", "basic_auth_users.alice", 2, "non-empty string"),
    ("rate_limit: {interval: 1s}\n", "rate_limit", 1, "missing burst"),
    ("rate_limit: {interval: 1s, burst: 0}\n", "rate_limit.burst", 1, "at least 1"),
    ("rate_limit:\n  interval: often\n  burst: 1\n", "rate_limit.interval", 2,
     "not a duration"),
]


@pytest.mark.parametrize(("text", "key", "line", "phrase"), ERRORS,
                         ids=[f"{key}@{line}:{phrase}" for _, key, line, phrase in ERRORS])
def test_errors_name_the_file_line_and_key(text, key, line, phrase):
    with pytest.raises(ConfigError) as caught:
        parse_web_config(text, source="web.yml", base_dir="/etc/vgpumon")
    error = caught.value
    assert (error.key, error.line) == (key, line), str(error)
    assert str(error).startswith(f"web.yml:{line}: {key}: "), str(error)
    assert phrase in error.message, str(error)


def test_invalid_yaml_names_the_line():
    with pytest.raises(ConfigError, match=r"^web\.yml:2: invalid YAML"):
        parse_web_config("tls_server_config:\n\tcert_file: a\n", source="web.yml")


def test_a_missing_web_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read web config file: No such file"):
        load_web_config(str(tmp_path / "web.yml"))


# -- errors found while reading the files it names -------------------------------------------


def load_error(tmp_path, text: str) -> ConfigError:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        web_access_for(str(path))
    assert str(caught.value).startswith(f"{path}:"), str(caught.value)
    return caught.value


def test_a_missing_certificate_file_names_cert_file(tmp_path, pki):
    error = load_error(tmp_path, f"tls_server_config:\n  cert_file: nowhere.crt\n"
                                 f"  key_file: {pki.server_key}\n")
    assert (error.key, error.line) == ("tls_server_config.cert_file", 2)
    assert f"cannot read {tmp_path}/nowhere.crt: No such file" in error.message


def test_a_key_of_another_certificate_names_key_file(tmp_path, pki):
    error = load_error(tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                                 f"  key_file: {pki.client_key}\n")
    assert (error.key, error.line) == ("tls_server_config.key_file", 3)
    assert "does not belong to the certificate" in error.message


def test_a_file_that_is_no_certificate_names_cert_file(tmp_path, pki):
    (tmp_path / "bad.crt").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n"
                                      "-----END CERTIFICATE-----\n")
    error = load_error(tmp_path, f"tls_server_config:\n  cert_file: bad.crt\n"
                                 f"  key_file: {pki.server_key}\n")
    assert error.key == "tls_server_config.cert_file"
    assert "not a valid PEM certificate" in error.message
    error = load_error(tmp_path, f"tls_server_config:\n  cert_file: {pki.server_key}\n"
                                 f"  key_file: {pki.server_key}\n")
    assert error.key == "tls_server_config.cert_file"
    assert "no PEM certificate" in error.message


def test_an_encrypted_key_is_refused_without_prompting(tmp_path, pki):
    error = load_error(tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                                 f"  key_file: {pki.encrypted_key}\n")
    assert error.key == "tls_server_config.key_file"
    assert "encrypted" in error.message


def test_a_client_ca_that_is_no_ca_names_client_ca_file(tmp_path, pki):
    error = load_error(tmp_path, tls_config(
        pki, f"  client_auth_type: RequireAndVerifyClientCert\n"
             f"  client_ca_file: {pki.client_cert}\n"))
    assert (error.key, error.line) == ("tls_server_config.client_ca_file", 5)
    assert "CA certificate" in error.message


def test_inline_certificate_key_and_client_ca_are_accepted(tmp_path, pki):
    def block(path) -> str:
        return "|\n" + textwrap.indent(path.read_text(), "    ")

    access = build_access(parse_web_config(
        f"tls_server_config:\n"
        f"  cert: {block(pki.server_cert)}"
        f"  key: {block(pki.server_key)}"
        f"  client_ca: {block(pki.ca)}"
        f"  client_auth_type: RequireAndVerifyClientCert\n", source="web.yml"))
    assert access.ssl_context is not None
    assert access.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert access.ssl_context.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize(("auth_type", "mode"), [
    ("NoClientCert", ssl.CERT_NONE),
    ("RequestClientCert", ssl.CERT_NONE),
    ("VerifyClientCertIfGiven", ssl.CERT_OPTIONAL),
    ("RequireAndVerifyClientCert", ssl.CERT_REQUIRED),
])
def test_each_client_auth_type_gets_its_verify_mode(tmp_path, pki, auth_type, mode):
    ca = f"  client_ca_file: {pki.ca}\n" if mode != ssl.CERT_NONE else ""
    access = web_access_for(_write(tmp_path, tls_config(
        pki, f"  client_auth_type: {auth_type}\n{ca}")))
    assert access.ssl_context is not None
    assert access.ssl_context.verify_mode == mode
    assert access.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert access.ssl_context.maximum_version == ssl.TLSVersion.TLSv1_3


def test_prefer_server_cipher_suites_sets_the_openssl_option(tmp_path, pki):
    preferred = web_access_for(_write(tmp_path, tls_config(pki)))
    assert preferred.ssl_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    client_order = web_access_for(_write(tmp_path, tls_config(
        pki, "  prefer_server_cipher_suites: false\n")))
    assert not client_order.ssl_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE


def test_basic_auth_users_are_checked_against_their_hashes(tmp_path):
    access = web_access_for(_write(tmp_path, "basic_auth_users:\n"
                                             f"  alice: {libcrypt_bcrypt(b'wonderland')}\n"))
    assert access.basic_auth is not None
    assert access.basic_auth.users == ("alice",)
    assert access.describe() == "plain HTTP; basic auth users: alice"


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


def test_the_documented_example_is_valid():
    # docs/secure-exposure.md's example must keep parsing (its files do not exist here).
    text = (Path(__file__).resolve().parents[2] / "docs" / "secure-exposure.md").read_text()
    examples = [block.split("```")[0] for block in text.split("```yaml\n")[1:]]
    [example] = [block for block in examples if block.startswith("tls_server_config:")]
    config = parse_web_config(example, source="secure-exposure.md", base_dir="/etc/vgpumon")
    assert config.tls is not None
    assert config.tls.client_ca_file == "/etc/vgpumon/tls/scrapers-ca.crt"
    assert [user for user, _ in config.basic_auth_users] == ["prometheus"]
