"""Events as one line of text each, for humans (`vgpumon events`, `vgpumon replay`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.model.untrusted import escape, has_unsafe

# The fields worth a human's attention, per kind.

_KEY_FIELDS: dict[str, tuple[str, ...]] = {
    ev.PROCESS_STARTED: ("group", "pid", "model"),
    ev.PROCESS_EXITED: ("group", "pid", "reason", "exit_code", "signal", "crash_signal",
                        "library", "model", "source"),
    ev.EXIT_REASON_AMENDED: ("group", "pid", "old_reason", "reason", "because", "exit_code",
                             "signal", "crash_signal", "library", "model"),
    ev.LIBRARY_LOADED: ("group", "pid", "library", "path"),
    ev.LIBRARY_UNLOADED: ("group", "pid", "library", "path"),
    ev.LIBRARY_STALE: ("group", "pid", "library", "path"),
    ev.SHIM_LINK_CHANGED: ("path", "state", "old_target", "new_target"),
    ev.PROCESS_REJECTED: ("group", "pid", "uid", "reason", "comm"),
    ev.PRELOAD_FAILED: ("group", "pid", "library", "because"),
    ev.SHIM_BYPASSED: ("group", "pid", "shim", "real", "why"),
    ev.CRASH_LOOP_STARTED: ("group", "crashes", "window_seconds"),
    ev.CRASH_LOOP_ENDED: ("group", "crashes", "window_seconds"),
    ev.OLLAMA_VERSION: ("version",),
    ev.GPU_DISCOVERED: ("id", "library", "name", "description", "total_bytes", "available_bytes"),
    ev.CPU_ONLY: ("variant", "message"),
    ev.DISCOVERY_FAILED: ("error",),
    ev.RUNNER_STARTED: ("model", "discovery", "port"),
    ev.RUNNER_READY: ("model", "seconds"),
    ev.OFFLOAD: ("model", "gpu_layers", "total_layers", "estimate"),
    ev.RUNNER_EXITED: (
        "model",
        "reason",
        "exit_code",
        "signal",
        "crash_signal",
        "pc",
        "repeat",
        "message",
    ),
    ev.GO_CRASH: ("model", "signal", "pc", "cgo", "message"),
    ev.BACKEND_LOADED: ("name", "path"),
    ev.BACKEND_LOAD_FAILED: ("path", "message"),
}
_PROBLEM_FIELDS = ("model", "message")
_VALUE_LIMIT = 200
_BARE = re.compile(r"[^\s\"=\\]{1,200}")


def format_timeline(events: Iterable[Event]) -> Iterator[str]:
    """One line per event: UTC time, kind, then its key fields as ``key=value``."""
    for event in events:
        names = _KEY_FIELDS.get(event.kind, _PROBLEM_FIELDS)
        fields = " ".join(
            f"{name}={_show(name, event.fields[name])}"
            for name in names
            if event.fields.get(name) is not None
        )
        # Values are quoted and escaped where needed (_show); the kind and anything else
        # in the line go through `escape` too: nothing from a log can move the cursor.
        yield escape(f"{_iso(event.ts)}  {event.kind:<19} {fields}".rstrip())


def _iso(ts: float) -> str:
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ts:.3f}"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _show(name: str, value: Any) -> str:
    if name == "model" and isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return value[:12]
    if name == "pc" and isinstance(value, int):
        return hex(value)
    if name.endswith("_bytes") and isinstance(value, int):
        return f"{value / 1024**3:.1f}GiB"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if len(text) > _VALUE_LIMIT:
        text = text[:_VALUE_LIMIT] + "…"
    return text if _BARE.fullmatch(text) and not has_unsafe(text) else json.dumps(text)


def format_event(event: Event) -> str:
    return next(format_timeline([event]))
