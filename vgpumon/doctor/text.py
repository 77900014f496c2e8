"""Small wording helpers shared by the checks: times, durations, counts, sizes."""

from __future__ import annotations

from datetime import UTC, datetime

from vgpumon.model.untrusted import clip

# How much of an environment variable's value the report shows: a process sets its own
# environment, and a report of 128 KiB values helps nobody; real values (LD_LIBRARY_PATH
# with a few dirs) fit (docs/reliability.md).
VALUE_CHARS = 1024


def when(ts: float) -> str:
    """``2025-06-10 08:15:02 UTC``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def ago(ts: float, now: float) -> str:
    return f"{duration(now - ts)} ago" if now >= ts else "just now"


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"


def listing(items: list[str], limit: int = 4) -> str:
    """``a, b and c`` (or ``a, b, c and 3 more``)."""
    if not items:
        return "none"
    if len(items) > limit:
        items = [*items[:limit], f"{len(items) - limit} more"]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def variable(name: str, value: str) -> str:
    """``NAME=value`` as the report shows it: the value clipped to `VALUE_CHARS`."""
    return f"{name}={clip(value, VALUE_CHARS)}"
