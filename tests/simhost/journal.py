"""Render a plain Ollama log as the journal would show it (`journalctl -u ollama -o FMT`).

Every line of `ollama serve`'s stdout/stderr, runner output included (it passes through the
server's pipe), carries the server's PID. Timestamps come from the line itself where it has
one (slog `time=`, Go log and Gin prefixes), else from the line before it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re

_SLOG = re.compile(r"^time=(\S+) ")
_GOLOG = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) ")
_GIN = re.compile(r"^\[GIN\] (\d{4}/\d\d/\d\d - \d\d:\d\d:\d\d) ")
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def line_time(line: str) -> dt.datetime | None:
    """The timestamp a log line carries, if any (aware, local time when it has no zone)."""
    if m := _SLOG.match(line):
        try:
            return dt.datetime.fromisoformat(m.group(1))
        except ValueError:
            return None
    for rx, fmt in ((_GOLOG, "%Y/%m/%d %H:%M:%S"), (_GIN, "%Y/%m/%d - %H:%M:%S")):
        if m := rx.match(line):
            return dt.datetime.strptime(m.group(1), fmt).astimezone()
    return None


def _boot() -> tuple[str, float]:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip().replace("-", "")
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except OSError:
        return "0" * 32, 0.0
    return boot_id, dt.datetime.now().timestamp() - uptime


def _short_prefix(fmt: str, t: dt.datetime, hostname: str, pid: int) -> str:
    local = t.astimezone()
    if fmt == "short-iso":
        stamp = local.strftime("%Y-%m-%dT%H:%M:%S%z")
    else:
        stamp = f"{_MONTHS[local.month - 1]} {local.day:02d} {local.strftime('%H:%M:%S')}"
        if fmt == "short-precise":
            stamp += f".{local.microsecond:06d}"
    return f"{stamp} {hostname} ollama[{pid}]: "


def _message(raw: bytes) -> str | list[int] | None:
    """journalctl's MESSAGE: a string, a byte array when not printable UTF-8, null > 4096."""
    if len(raw) > 4096:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)
    if any((c < " " and c not in "\t\n") or "\x7f" <= c <= "\x9f" for c in text):
        return list(raw)
    return text


def render(chunks: list[tuple[int, bytes]], fmt: str = "short", *, hostname: str = "simhost",
           exe: str = "/usr/local/bin/ollama") -> str:
    """`chunks`: (server PID, log bytes it wrote), in order. Returns journalctl's output."""
    if fmt not in ("short", "short-iso", "short-precise", "json"):
        raise ValueError(f"unsupported journal format {fmt!r}")
    boot_id, boot_time = _boot()
    last = dt.datetime.now().astimezone()
    out, seq = [], 0
    for pid, data in chunks:
        for raw in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
            text = raw.decode("utf-8", "replace")
            last = line_time(text) or last
            seq += 1
            if fmt != "json":
                out.append(_short_prefix(fmt, last, hostname, pid) + text)
                continue
            usec = int(last.timestamp() * 1_000_000)
            mono = max(0, usec - int(boot_time * 1_000_000))
            cursor_hash = hashlib.sha256(f"{seq}{usec}".encode()).hexdigest()[:16]
            out.append(json.dumps({
                "__CURSOR": f"s={boot_id};i={seq:x};b={boot_id};m={mono:x};t={usec:x};"
                            f"x={cursor_hash}",
                "__REALTIME_TIMESTAMP": str(usec), "__MONOTONIC_TIMESTAMP": str(mono),
                "_BOOT_ID": boot_id, "PRIORITY": "6", "SYSLOG_FACILITY": "3",
                "SYSLOG_IDENTIFIER": "ollama", "_PID": str(pid), "_UID": "0", "_GID": "0",
                "_COMM": "ollama", "_EXE": exe, "_CMDLINE": f"{exe} serve",
                "_SYSTEMD_UNIT": "ollama.service", "_TRANSPORT": "stdout",
                "_HOSTNAME": hostname, "MESSAGE": _message(raw),
            }, ensure_ascii=False))
    return "\n".join(out) + ("\n" if out else "")
