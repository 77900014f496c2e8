"""`vgpumon run` and `vgpumon config check` with a web config, as real subprocesses."""

from __future__ import annotations

import signal

import yaml

from tests.harness import Vgpumon, run_cli, wait_for

from .conftest import basic, client_context, fetch, libcrypt_bcrypt, tls_config

MTLS = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {ca}\n"


def write_config(tmp_path, web_config: str) -> str:
    (tmp_path / "web.yml").write_text(web_config)
    path = tmp_path / "vgpumon.yaml"
    path.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "events": {"file": ""},
                                    "web_config_file": str(tmp_path / "web.yml")}))
    return str(path)


def users(**passwords: bytes) -> str:
    return "basic_auth_users:\n" + "".join(f"  {user}: {libcrypt_bcrypt(password)}\n"
                                           for user, password in passwords.items())


def test_config_check_validates_the_web_config(tmp_path, pki):
    config = write_config(tmp_path, tls_config(pki, MTLS.format(ca=pki.ca))
                          + users(prometheus=b"pw"))
    result = run_cli("config", "check", "--config", config)
    assert result.returncode == 0, result.stderr
    assert "web: " in result.stdout
    assert "client certificates: RequireAndVerifyClientCert" in result.stdout
    assert "basic auth users: prometheus" in result.stdout


def test_config_check_exits_2_naming_the_key(tmp_path, pki):
    config = write_config(tmp_path, tls_config(pki, "  client_auth_type: Sometimes\n"))
    result = run_cli("config", "check", "--config", config)
    assert result.returncode == 2
    assert (f"vgpumon: {tmp_path}/web.yml:4: tls_server_config.client_auth_type: "
            f"expected one of") in result.stderr


def test_run_exits_2_before_binding_on_a_bad_web_config(tmp_path, pki):
    config = write_config(tmp_path, tls_config(pki).replace(str(pki.server_key), "gone.key"))
    result = run_cli("run", "--config", config)
    assert result.returncode == 2
    assert f"{tmp_path}/web.yml:3: tls_server_config.key_file: cannot read" in result.stderr
    assert "listening" not in result.stderr


def test_run_serves_tls_with_client_certs_and_basic_auth(tmp_path, pki):
    (tmp_path / "web.yml").write_text(tls_config(pki, MTLS.format(ca=pki.ca))
                                      + users(prometheus=b"pw"))
    daemon = Vgpumon({"events": {"file": ""}, "web_config_file": str(tmp_path / "web.yml")},
                     tmp_path)
    try:
        assert "scheme=https" in daemon.log_text()
        https = daemon.url.replace("http://", "https://")
        context = client_context(pki, cert=pki.client)
        reply = fetch(https + "/metrics", context=context, authorization=basic("prometheus", "pw"))
        assert reply.status == 200 and b"vgpumon_build_info" in reply.body
        assert fetch(https + "/healthz", context=context).status == 401
    finally:
        assert daemon.stop() == 0


def test_sighup_rereads_the_web_config_and_a_bad_one_keeps_the_old(tmp_path, pki):
    web = tmp_path / "web.yml"
    web.write_text(tls_config(pki) + users(alice=b"first"))
    daemon = Vgpumon({"events": {"file": ""}, "web_config_file": str(web)}, tmp_path)
    https = daemon.url.replace("http://", "https://") + "/metrics"
    context = client_context(pki)

    def status(user: str, password: str) -> int:
        return fetch(https, context=context, authorization=basic(user, password)).status

    try:
        assert status("alice", "first") == 200
        web.write_text(tls_config(pki) + users(bob=b"second"))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: status("bob", "second") == 200, message="bob's password to work")
        assert status("alice", "first") == 401

        web.write_text(tls_config(pki) + "basic_auth_users:\n  carol: plaintext\n")
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "config reload failed" in daemon.log_text(), message="reload failure")
        assert "web.yml:5: basic_auth_users.carol: expected a bcrypt hash" in daemon.log_text()
        assert status("bob", "second") == 200  # the old web config is still in force
        assert status("carol", "plaintext") == 401
    finally:
        assert daemon.stop() == 0
