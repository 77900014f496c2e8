"""Ollama's log line shapes, byte for byte (docs/ollama.md#log-format): slog TextHandler, the
slog-to-log bridge, Go `log`, Gin access lines, and the Go value formats they embed (quoting,
durations, sizes, exit texts)."""

from __future__ import annotations

import datetime as dt
import os
import signal

Attrs = list[tuple[str, object]]

# Go's syscall signal names (what exec.ExitError prints after "signal: ").
SIGNAL_TEXT = {
    signal.SIGHUP: "hangup", signal.SIGINT: "interrupt", signal.SIGQUIT: "quit",
    signal.SIGILL: "illegal instruction", signal.SIGTRAP: "trace/breakpoint trap",
    signal.SIGABRT: "aborted", signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating point exception", signal.SIGKILL: "killed",
    signal.SIGUSR1: "user defined signal 1", signal.SIGSEGV: "segmentation fault",
    signal.SIGUSR2: "user defined signal 2", signal.SIGPIPE: "broken pipe",
    signal.SIGALRM: "alarm clock", signal.SIGTERM: "terminated", signal.SIGSYS: "bad system call",
}

_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
            "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def go_quote(s: str) -> str:
    """strconv.Quote: double quotes, Go escapes, printable non-ASCII kept as is."""
    out = ['"']
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def needs_quoting(s: str) -> bool:
    """log/slog's rule: empty, or a space, '=', '"', control or non-printable character."""
    if not s:
        return True
    for ch in s:
        if ch < "\x80":
            if ch != "\\" and (ch in ' ="' or ch < " " or ch == "\x7f"):
                return True
        elif ch.isspace() or not ch.isprintable():
            return True
    return False


def go_float(f: float) -> str:
    """strconv.FormatFloat(f, 'g', -1, 64), what slog prints for a float64."""
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "0"
    sign = "-" if f < 0 else ""
    # repr() gives the shortest round-trip digits; re-lay them out by Go's 'g' rule.
    m, _, e = f"{abs(f)!r}".lower().partition("e")
    int_part, _, frac = m.partition(".")
    digits = int_part + frac
    stripped = digits.lstrip("0")
    dp = len(int_part) + int(e or 0) - (len(digits) - len(stripped))
    ds = stripped.rstrip("0") or "0"
    x = dp - 1
    if x < -4 or x >= 6:  # shortest precision decides with eprec = 6
        body = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{sign}{body}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{ds}"
    if dp >= len(ds):
        return f"{sign}{ds}{'0' * (dp - len(ds))}"
    return f"{sign}{ds[:dp]}.{ds[dp:]}"


def go_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if v is None:
        return "<nil>"
    return str(v)


def _text(s: str) -> str:
    return go_quote(s) if needs_quoting(s) else s


def fmt_attrs(attrs: Attrs) -> str:
    return " ".join(f"{_text(k)}={_text(go_value(v))}" for k, v in attrs)


def now() -> dt.datetime:
    return dt.datetime.now().astimezone()


def slog_time(t: dt.datetime) -> str:
    """2006-01-02T15:04:05.000Z07:00"""
    off = t.utcoffset() or dt.timedelta(0)
    if off == dt.timedelta(0):
        zone = "Z"
    else:
        mins = int(off.total_seconds()) // 60
        zone = f"{'+' if mins >= 0 else '-'}{abs(mins) // 60:02d}:{abs(mins) % 60:02d}"
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}{zone}"


def slog_line(t: dt.datetime, level: str, source: str, msg: str, attrs: Attrs = ()) -> str:
    """One slog TextHandler record (level TRACE is Ollama's -8)."""
    head = f"time={slog_time(t)} level={level} source={source} msg={_text(msg)}"
    rest = fmt_attrs(list(attrs))
    return f"{head} {rest}" if rest else head


def bridged_line(t: dt.datetime, level: str, source: str, msg: str, attrs: Attrs = ()) -> str:
    """slog through the default `log` handler: `2006/01/02 15:04:05 file.go:N: LEVEL msg k=v`."""
    rest = fmt_attrs(list(attrs))
    return f"{golog_prefix(t)} {source}: {level} {msg}" + (f" {rest}" if rest else "")


def golog_prefix(t: dt.datetime) -> str:
    return t.strftime("%Y/%m/%d %H:%M:%S")


def golog_line(t: dt.datetime, source: str, msg: str) -> str:
    """Go `log` with Lshortfile: `2006/01/02 15:04:05 file.go:N: message`."""
    return f"{golog_prefix(t)} {source}: {msg}"


def go_duration(seconds: float) -> str:
    """time.Duration.String()."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def frac(value: int, unit: int, suffix: str) -> str:
        whole, rem = divmod(value, unit)
        digits = len(str(unit)) - 1
        tail = f"{rem:0{digits}d}".rstrip("0")
        return f"{whole}{'.' + tail if tail else ''}{suffix}"

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return sign + frac(ns, 1_000, "µs")
    if ns < 1_000_000_000:
        return sign + frac(ns, 1_000_000, "ms")
    hours, rem = divmod(ns, 3_600_000_000_000)
    mins, rem = divmod(rem, 60_000_000_000)
    out = (f"{hours}h" if hours else "") + (f"{mins}m" if hours or mins else "")
    return sign + out + frac(rem, 1_000_000_000, "s")


def gin_line(t: dt.datetime, status: int, latency: float, client: str, method: str,
             path: str) -> str:
    """Gin's default access log line, colours off (as in a journal)."""
    return (f"[GIN] {t.strftime('%Y/%m/%d - %H:%M:%S')} | {status:3d} | "
            f"{go_duration(latency):>13} | {client:>15} | {method:<7}  {go_quote(path)}")


def human_bytes(n: int) -> str:
    """format.HumanBytes2: `%.1f GiB|MiB|KiB` or `%d B`."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def exit_text(status: int) -> str:
    """os.ProcessState.String() for a raw wait status: `exit status N`, `signal: <name>`."""
    if os.WIFEXITED(status):
        res = f"exit status {os.WEXITSTATUS(status)}"
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        res = "signal: " + SIGNAL_TEXT.get(sig, f"signal {sig}")
    else:
        res = f"status {status}"
    if os.WIFSIGNALED(status) and os.WCOREDUMP(status):
        res += " (core dumped)"
    return res


def exit_code(status: int) -> int:
    """os.ProcessState.ExitCode(): the exit status, -1 when killed by a signal."""
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
