"""The report for humans (sections, then a summary) and as one JSON document."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime

from vgpumon.doctor.report import Check, Report, Status

WIDTH = 100
_LABELS = {Status.OK: " ok ", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.SKIP: "skip"}
_INDENT = " " * 9


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"


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
    return "\n".join(lines) + "\n"


def _headline(report: Report) -> str:
    when = datetime.fromtimestamp(report.generated_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [f"vgpumon doctor {report.version}".rstrip(), report.hostname, when,
             f"config: {report.config or 'built-in defaults'}"]
    return " | ".join(p for p in parts if p)


def _check_lines(check: Check, verbose_ok: bool) -> list[str]:
    first = f"  [{_LABELS[check.status]}] {check.id}: {check.finding}"
    out = textwrap.wrap(first, WIDTH, subsequent_indent=_INDENT) or [first]
    show_evidence = verbose_ok or check.status in (Status.WARN, Status.FAIL)
    if show_evidence:
        for item in check.evidence:
            out += textwrap.wrap(item, WIDTH, initial_indent=_INDENT + "- ",
                                 subsequent_indent=_INDENT + "  ") or [_INDENT + "-"]
    if check.action:
        out += textwrap.wrap(check.action, WIDTH, initial_indent=_INDENT + "next: ",
                             subsequent_indent=_INDENT + "      ")
    return out


def _summary(report: Report) -> list[str]:
    counts = report.counts
    line = ", ".join(f"{counts[str(s)]} {s}" for s in (Status.OK, Status.WARN, Status.FAIL,
                                                        Status.SKIP))
    out = [f"Summary: {line}."]
    failed = report.with_status(Status.FAIL)
    warned = report.with_status(Status.WARN)
    if failed:
        out.append("Failed:")
        out += [f"  {c.id}: {c.finding}" for c in failed]
    if warned:
        out.append("Warnings:")
        out += [f"  {c.id}: {c.finding}" for c in warned]
    if not failed:
        out.append("Nothing failed." if not warned else "Nothing failed; see the warnings.")
    return out
