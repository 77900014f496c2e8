"""One report must not contradict itself: no check may say a file or dir is missing that
another check of the same report found.

`contradictions` reads what the checks claim from their findings and evidence (the JSON
report's plain strings): paths said to be missing, and paths said to exist (and so every dir
above them). `assert_consistent` is what scenario tests call.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator

from vgpumon.doctor.report import Check, Report

_PATH = r"(/[^\s,;()]+?)"
# A check that says this claims the path is not there.
MISSING = (
    re.compile(rf"\blooked for {_PATH}(?:$|[\s,;)])"),  # env.OLLAMA_LLM_LIBRARY
    re.compile(rf"^{_PATH} \([^)]*\): missing$"),  # libraries.ggml_cuda candidates
    re.compile(rf"^missing: {_PATH}$"),  # env.LD_LIBRARY_PATH, env.OLLAMA_LIBRARY_PATH
    re.compile(rf"(?:^|[\s=]){_PATH} does not exist"),  # env.GGML_BACKEND_PATH, shims.files
    re.compile(rf"^{_PATH}: No such file or directory$"),  # env.LD_PRELOAD
)
# A check that says this claims the path is there.
PRESENT = (
    re.compile(rf"\binstall dir: {_PATH}(?:$|[\s,;)])"),
    re.compile(rf"^{_PATH} \([^)]*\): found$"),
    re.compile(rf"^mapped (?:by the dlopen|at start-up \(preload\)): {_PATH}(?:$|\s)"),
    re.compile(rf"discovery uses only this dir \({_PATH}\)"),  # env.OLLAMA_LLM_LIBRARY ok
    re.compile(rf"this dir is tried first \({_PATH}\)"),
)
# libraries.dependencies / libraries.libcuda: `name -> path [-> path] (found through …)`.
_RESOLVED = re.compile(r"\((?:found through|already loaded|preloaded|opened by path)")
_ARROW = re.compile(rf"-> {_PATH}(?=$|[\s,;)])")


def _texts(check: Check) -> Iterator[str]:
    yield check.finding
    yield from check.evidence


def missing_claims(check: Check) -> set[str]:
    return {posixpath.normpath(m.group(1)) for text in _texts(check) for rx in MISSING
            for m in rx.finditer(text)}


def present_claims(check: Check) -> set[str]:
    found = {posixpath.normpath(m.group(1)) for text in _texts(check) for rx in PRESENT
             for m in rx.finditer(text)}
    for text in _texts(check):
        if _RESOLVED.search(text) and "NOT FOUND" not in text:
            found |= {posixpath.normpath(m.group(1)) for m in _ARROW.finditer(text)}
    return found


def _with_parents(paths: set[str]) -> dict[str, str]:
    """Each path and every dir above it -> the path whose presence implies it."""
    out: dict[str, str] = {}
    for path in paths:
        at = path
        while at not in ("/", ""):
            out.setdefault(at, path)
            at = posixpath.dirname(at)
    return out


def contradictions(report: Report) -> list[str]:
    """One line per (missing claim, presence claim) pair of two different checks."""
    present = {c.id: _with_parents(present_claims(c)) for c in report.checks}
    found = []
    for check in report.checks:
        for path in sorted(missing_claims(check)):
            for other, paths in present.items():
                if other != check.id and path in paths:
                    found.append(f"{check.id} says {path} is missing, but {other} found "
                                 f"{paths[path]}")
    return found


def assert_consistent(report: Report) -> None:
    problems = contradictions(report)
    assert not problems, "the report contradicts itself:\n" + "\n".join(problems)
