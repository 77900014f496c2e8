"""Events as one line of text each, for humans (`vgpumon events`, `vgpumon replay`)."""

from __future__ import annotations

import time

from vgpumon.events import Event


def format_event(event: Event) -> str:
    """``2026-11-26T10:58:09.123Z process_exited group=runner pid=4242 reason=crash``"""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.ts))
    millis = int((event.ts % 1) * 1000)
    fields = " ".join(f"{key}={_value(value)}" for key, value in event.fields.items()
                      if value is not None)
    return f"{stamp}.{millis:03d}Z {event.kind:<20} {fields}".rstrip()


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if not text or any(ch.isspace() or ch in '="' for ch in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text
