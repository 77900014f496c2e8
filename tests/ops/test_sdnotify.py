"""sd_notify and the watchdog against a real AF_UNIX datagram socket, as systemd would hold it."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vgpumon.daemon import sdnotify
from vgpumon.daemon.sdnotify import Watchdog, WatchdogTimeout, notify


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    address = str(tmp_path / "notify.sock")
    with _receiver(address) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        yield sock


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"vgpumon-test-{uuid.uuid4().hex}"
    with _receiver(b"\0" + name.encode()) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


@pytest.fixture(autouse=True)
def _forget_reported() -> Iterator[None]:
    sdnotify._reported.clear()
    yield
    sdnotify._reported.clear()


def test_path_socket_receives_each_state_as_one_datagram(path_socket: socket.socket) -> None:
    assert notify("READY=1\nSTATUS=watching 3 processes")
    assert notify("WATCHDOG=1")
    assert path_socket.recv(4096) == b"READY=1\nSTATUS=watching 3 processes"
    assert path_socket.recv(4096) == b"WATCHDOG=1"


def test_abstract_socket_receives_state(abstract_socket: socket.socket) -> None:
    assert notify("STATUS=starting")
    assert notify("READY=1")
    assert abstract_socket.recv(4096) == b"STATUS=starting"
    assert abstract_socket.recv(4096) == b"READY=1"


def test_explicit_environ_overrides_process_environment(tmp_path: Path) -> None:
    address = str(tmp_path / "other.sock")
    with _receiver(address) as sock:
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": address})
        assert sock.recv(4096) == b"STOPPING=1"


def test_unset_socket_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


@pytest.mark.parametrize("address", ["vsock:2:1234", "relative/notify.sock"])
def test_unsupported_address_is_false(address: str) -> None:
    assert notify("READY=1", environ={"NOTIFY_SOCKET": address}) is False


def test_missing_socket_is_false_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}
    with caplog.at_level(logging.WARNING, logger="vgpumon.daemon.sdnotify"):
        assert notify("READY=1", environ=env) is False
        assert notify("WATCHDOG=1", environ=env) is False
    assert len(caplog.records) == 1
    assert "sd_notify failed" in caplog.records[0].getMessage()


def test_closed_socket_is_false(tmp_path: Path) -> None:
    address = str(tmp_path / "closed.sock")
    _receiver(address).close()  # the name stays, nobody listens: ECONNREFUSED
    assert os.path.exists(address)
    assert notify("READY=1", environ={"NOTIFY_SOCKET": address}) is False


def test_abstract_socket_nobody_listens_is_false() -> None:
    env = {"NOTIFY_SOCKET": f"@vgpumon-test-absent-{uuid.uuid4().hex}"}
    assert notify("READY=1", environ=env) is False


# --- watchdog ---------------------------------------------------------------------------------


def test_timeout_from_env_for_this_pid() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}
    assert WatchdogTimeout.from_env(env, pid=4242) == WatchdogTimeout(seconds=30.0)


def test_timeout_without_pid_applies_to_anyone() -> None:
    assert WatchdogTimeout.from_env({"WATCHDOG_USEC": "500000"}, pid=1) == WatchdogTimeout(0.5)


def test_timeout_defaults_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert WatchdogTimeout.from_env() == WatchdogTimeout(2.0)


def test_timeout_for_another_pid_is_none() -> None:
    # A child that inherited the parent's environment must not ping on its behalf.
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}
    assert WatchdogTimeout.from_env(env, pid=4243) is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "30s", "1.5"])
def test_invalid_or_missing_timeout_is_none(usec: str) -> None:
    assert WatchdogTimeout.from_env({"WATCHDOG_USEC": usec}, pid=1) is None


def test_timeout_is_immutable() -> None:
    timeout = WatchdogTimeout(30.0)
    with pytest.raises(AttributeError):
        timeout.seconds = 1.0  # type: ignore[misc]


def test_interval_is_half_the_timeout() -> None:
    watchdog = Watchdog.from_env({"WATCHDOG_USEC": "30000000"}, pid=1)
    assert watchdog.enabled
    assert watchdog.interval == 15.0


def test_due_first_then_every_interval() -> None:
    sent: list[str] = []
    watchdog = Watchdog(WatchdogTimeout(10.0), send=lambda s: sent.append(s) is None)
    assert watchdog.due(100.0)
    assert watchdog.seconds_until_due(100.0) == 0.0
    assert watchdog.kick(100.0)
    assert not watchdog.due(104.9)
    assert watchdog.seconds_until_due(103.0) == pytest.approx(2.0)
    assert watchdog.due(105.0)
    watchdog.kick(105.0)
    assert sent == ["WATCHDOG=1", "WATCHDOG=1"]


def test_a_loop_that_stops_kicking_stays_due() -> None:
    # Nothing pings behind the caller's back: a wedged loop lets the deadline pass.
    sent: list[str] = []
    watchdog = Watchdog(WatchdogTimeout(10.0), send=lambda s: sent.append(s) is None)
    watchdog.kick(0.0)
    assert watchdog.due(5.0) and watchdog.due(60.0)
    assert sent == ["WATCHDOG=1"]


def test_disabled_watchdog_is_never_due_and_sends_nothing() -> None:
    sent: list[str] = []
    watchdog = Watchdog(None, send=lambda s: sent.append(s) is None)
    assert not watchdog.enabled
    assert watchdog.interval is None
    assert not watchdog.due(0.0)
    assert watchdog.seconds_until_due(0.0) is None
    assert watchdog.kick(0.0) is False
    assert sent == []


def test_kick_sends_watchdog_datagram(path_socket: socket.socket) -> None:
    watchdog = Watchdog.from_env({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert watchdog.interval == 2.0
    assert watchdog.kick(1.0)
    assert path_socket.recv(4096) == b"WATCHDOG=1"
