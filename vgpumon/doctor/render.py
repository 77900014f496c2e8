"""The report for humans (sections, then a summary) and as one JSON document."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime

from vgpumon.doctor.report import Check, Report, Status
from vgpumon.model.untrusted import clip_runs, escape, json_inert

WIDTH = 100
_LABELS = {Status.OK: " ok ", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.SKIP: "skip"}
_INDENT = " " * 9
# The longest run of non-space characters the text report prints whole; longer ones (a
# hostile argv, an environment value) end in a marker "…(+N chars)".
RUN_CHARS = 1024


def render_json(report: Report) -> str:
    return json_inert(json.dumps(report.to_dict(), indent=2, ensure_ascii=False)) + "\n"


def render_text(report: Report, *, verbose_ok: bool = True) -> str:
    """Sections of ``[status] id  finding`` lines, each with its evidence and next step,
    ending with a summary that names what failed."""
    lines = [_headline(report), ""]
    for section in report.sections:
        lines.append(section.title)
        for check in section.checks:
            lines += _check_lines(check, verbose_ok)
        lines.append("")
    lines += _summary(report)
    # Findings and evidence quote what processes, files and logs hold: escape each line, so
    # that nothing in them can move the cursor or forge a line of the report (_check_lines
    # escapes before wrapping, so a newline shows as \n instead of vanishing).
    return "\n".join(escape(line) for line in lines) + "\n"


def _headline(report: Report) -> str:
    when = datetime.fromtimestamp(report.generated_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [f"vgpumon doctor {report.version}".rstrip(), report.hostname, when,
             f"config: {report.config or 'built-in defaults'}"]
    return " | ".join(p for p in parts if p)


def _shown(text: str) -> str:
    """A finding, evidence or next step as printed: each long run of non-space characters
    (an argument, a variable's value, a path) clipped, control characters escaped."""
    return escape(clip_runs(text, RUN_CHARS))


def _check_lines(check: Check, verbose_ok: bool) -> list[str]:
    first = f"  [{_LABELS[check.status]}] {_shown(check.id)}: {_shown(check.finding)}"
    out = textwrap.wrap(first, WIDTH, subsequent_indent=_INDENT) or [first]
    show_evidence = verbose_ok or check.status in (Status.WARN, Status.FAIL)
    if show_evidence:
        for item in check.evidence:
            out += textwrap.wrap(_shown(item), WIDTH, initial_indent=_INDENT + "- ",
                                 subsequent_indent=_INDENT + "  ") or [_INDENT + "-"]
    if check.action:
        out += textwrap.wrap(_shown(check.action), WIDTH, initial_indent=_INDENT + "next: ",
                             subsequent_indent=_INDENT + "      ")
    return out


def _summary(report: Report) -> list[str]:
    counts = report.counts
    line = ", ".join(f"{counts[str(s)]} {s}" for s in (Status.OK, Status.WARN, Status.FAIL,
                                                        Status.SKIP))
    out = [f"Summary: {line}."]
    failed = report.failures  # those that explain the others first
    warned = report.with_status(Status.WARN)
    if failed and failed[0].id in report.lead:
        out.append(f"Most likely cause: {failed[0].id}: {_shown(failed[0].finding)}")
    if failed:
        out.append("Failed:")
        out += [f"  {c.id}: {_shown(c.finding)}" for c in failed]
    if warned:
        out.append("Warnings:")
        out += [f"  {c.id}: {_shown(c.finding)}" for c in warned]
    if not failed:
        out.append("Nothing failed." if not warned else "Nothing failed; see the warnings.")
    return out
