"""Turns of a real daemon's loop in a test, none of them waiting for its hour-long refresh."""

from __future__ import annotations

from vgpumon.daemon.loop import Daemon


def turn(daemon: Daemon, at_most: float = 0.05) -> None:
    """One turn of the loop, waiting `at_most` seconds for an event or timer."""
    daemon.call_later(at_most, "loop", lambda: None)
    daemon.step()
