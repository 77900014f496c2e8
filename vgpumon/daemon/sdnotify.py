"""The systemd notification protocol (sd_notify) and watchdog, with the standard library only.

One ``AF_UNIX``/``SOCK_DGRAM`` datagram of newline-separated ``KEY=value`` lines goes to
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Outside systemd the
variable is unset and every call is a cheap no-op, so the daemon calls these unconditionally.

The watchdog is driven by the daemon's own loop: it asks ``due(now)`` on every turn and calls
``kick(now)``, so a wedged loop stops the pings and systemd restarts the service. A thread
that pinged on a timer would keep a dead daemon alive.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Addresses already reported as unusable: a missing socket is logged once, not every ping.
_reported: set[str] = set()


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. ``"READY=1\\nSTATUS=watching"``) to systemd.

    Returns True when the datagram was sent, False when there is no usable notification
    socket (unset, unsupported address form, missing or closed). Never raises for those.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    target = _socket_address(address)
    if target is None:
        _report_once(address, "unsupported address form")
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), target)
    except OSError as err:
        _report_once(address, err.strerror or str(err))
        return False
    _reported.discard(address)
    return True


def _socket_address(address: str) -> str | bytes | None:
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    if address.startswith("/"):
        return address
    return None  # e.g. "vsock:CID:PORT" (systemd 254+): not used for host services


def _report_once(address: str, reason: str) -> None:
    if address in _reported:
        return
    _reported.add(address)
    log.warning("sd_notify failed socket=%r reason=%r (further failures not logged)",
                address, reason)


@dataclass(frozen=True)
class WatchdogTimeout:
    """systemd's watchdog timeout for this process (``WatchdogSec=``), in seconds."""

    seconds: float

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, pid: int | None = None
    ) -> WatchdogTimeout | None:
        """The timeout from ``WATCHDOG_USEC``, or None when the watchdog is off for us.

        ``WATCHDOG_PID``, when set, names the process the timeout is meant for; any other
        process (a child that inherited the environment) must not ping.
        """
        env = os.environ if environ is None else environ
        usec = env.get("WATCHDOG_USEC")
        if not usec:
            return None
        owner = env.get("WATCHDOG_PID")
        me = os.getpid() if pid is None else pid
        if owner and owner != str(me):
            log.debug("watchdog off reason=not_our_pid watchdog_pid=%s pid=%d", owner, me)
            return None
        try:
            value = int(usec)
        except ValueError:
            value = 0
        if value <= 0:
            log.warning("watchdog off reason=invalid_timeout watchdog_usec=%r", usec)
            return None
        return cls(seconds=value / 1_000_000)


class Watchdog:
    """Pings systemd's watchdog from the caller's loop at half the timeout.

    Times are the caller's monotonic clock (``time.monotonic()``). A disabled watchdog
    (no timeout) is never due and its `interval` is None.
    """

    def __init__(
        self,
        timeout: WatchdogTimeout | None,
        send: Callable[[str], bool] = notify,
    ) -> None:
        self.timeout = timeout
        self._send = send
        self._last_kick: float | None = None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, pid: int | None = None
    ) -> Watchdog:
        return cls(WatchdogTimeout.from_env(environ, pid))

    @property
    def enabled(self) -> bool:
        return self.timeout is not None

    @property
    def interval(self) -> float | None:
        """Seconds between pings: half the timeout, as sd_watchdog_enabled(3) advises."""
        return None if self.timeout is None else self.timeout.seconds / 2

    def due(self, now: float) -> bool:
        """True when a ping should be sent at `now` (always true before the first one)."""
        interval = self.interval
        if interval is None:
            return False
        return self._last_kick is None or now - self._last_kick >= interval

    def seconds_until_due(self, now: float) -> float | None:
        """How long the caller's loop may sleep before the next ping (0 = now, None = never)."""
        interval = self.interval
        if interval is None:
            return None
        if self._last_kick is None:
            return 0.0
        return max(0.0, self._last_kick + interval - now)

    def kick(self, now: float) -> bool:
        """Send ``WATCHDOG=1`` and record `now`; returns whether it was sent."""
        if self.timeout is None:
            return False
        self._last_kick = now
        return self._send("WATCHDOG=1")
