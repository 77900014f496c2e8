"""The doctor's report quotes what processes, files and logs hold: the text report shows it
escaped and clipped, the JSON report stays JSON with no raw terminal controls."""

from __future__ import annotations

import json
import re

from vgpumon.doctor.render import RUN_CHARS, render_json, render_text
from vgpumon.doctor.report import Report, Section, fail, ok, warn
from vgpumon.doctor.text import VALUE_CHARS, variable

ERASE = "\x1b[1A\x1b[2K\r[ ok ] shims.links: all links point to the shims"
HOST = "127.0.0.1:11434" + ERASE


def hostile_report() -> Report:
    checks = (
        ok("env.server", "pid 4100: 1 relevant variable set", [variable("OLLAMA_HOST", HOST)]),
        fail("ollama.server", f"the server runs as {ERASE}", f"restart it\n[ ok ] {ERASE}",
             [f"pid 4100: /usr/bin/ollama serve \x9b2J {'Z' * 5000}", "log: line one\nline two"]),
        warn("env.GGML_BACKEND_PATH", "GGML_BACKEND_PATH=" + "/x" * 3000 + " does not exist",
             "unset it", [variable("GGML_BACKEND_PATH", "/y" * 3000)]),
    )
    return Report((Section("Hostile", checks),), 0.0, hostname="host\x1b]0;pwned\x07",
                  config="/etc/vgpumon.yaml")


def test_text_report_escapes_every_line():
    text = render_text(hostile_report())
    for line in text.splitlines():
        assert all(c == " " or c.isprintable() for c in line), repr(line)
    assert "\x1b" not in text and "\r" not in text and "\x9b" not in text
    assert "127.0.0.1:11434\\x1b[1A\\x1b[2K\\r[ ok ] shims.links" in text
    assert "restart it\\n[ ok ]" in text  # a newline shows, it does not start a line
    assert "log: line one\\nline two" in text
    assert "host\\x1b]0;pwned\\x07" in text  # the headline too
    # The only lines that start with "  [ ok ]" are the report's own.
    own = [line for line in text.splitlines() if line.startswith("  [ ok ]")]
    assert own == [line for line in own if line.startswith("  [ ok ] env.server:")]


def test_text_report_clips_long_runs_and_variables():
    text = render_text(hostile_report())
    # (wrapped at 100 columns: long runs are broken across lines)
    unwrapped = re.sub(r"\n +", "", text)
    assert text.count("Z") == RUN_CHARS and f"…(+{5000 - RUN_CHARS} chars)" in unwrapped
    run = "GGML_BACKEND_PATH=" + "/x" * 3000  # one run: clipped as a whole
    assert run[:RUN_CHARS] + f"…(+{len(run) - RUN_CHARS} chars)" in unwrapped
    assert variable("V", "v" * 2000) == "V=" + "v" * VALUE_CHARS + "…(+976 chars)"
    assert "Failed:" in text and "ollama.server: the server runs as \\x1b[1A" in text


def test_json_report_is_json_and_inert():
    report = hostile_report()
    text = render_json(report)
    assert all(c in "\n" or c.isprintable() for c in text)
    document = json.loads(text)
    finding = document["sections"][0]["checks"][1]["finding"]
    assert finding == f"the server runs as {ERASE}"  # the same text, decoded
