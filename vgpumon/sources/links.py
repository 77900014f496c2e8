"""Shim links: does each configured symlink still lead to its shim?"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from vgpumon.config.schema import LinkSpec
from vgpumon.linux.paths import FileView

OK = "ok"
MISSING = "missing"
NOT_SYMLINK = "not_symlink"
WRONG_TARGET = "wrong_target"
DANGLING = "dangling"
LINK_STATES = (OK, MISSING, NOT_SYMLINK, WRONG_TARGET, DANGLING)


@dataclass(frozen=True)
class ShimLinkState:
    """One configured link as found at the last check.

    `state` is None when the link could not be checked (its view is unavailable, e.g. the
    server whose filesystem it lives in is not running, or a permission problem: `error`).
    `target` is the link's text (``readlink``); `resolved` the file it finally leads to.
    """

    path: str
    expected: str
    view: str
    state: str | None
    target: str | None = None
    resolved: str | None = None
    error: str | None = None


def check_link(view: FileView | None, spec: LinkSpec) -> ShimLinkState:
    """Classify `spec.path` as ok, missing, not_symlink, wrong_target or dangling."""
    if view is None:
        return ShimLinkState(spec.path, spec.target, spec.view, None,
                             error=f"no {spec.view} view (is the Ollama server running?)")

    def result(state: str | None, **fields: str | None) -> ShimLinkState:
        return ShimLinkState(spec.path, spec.target, spec.view, state, **fields)

    try:
        mode = view.lstat(spec.path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return result(MISSING)
    except OSError as err:
        return result(None, error=err.strerror or str(err))
    if not stat.S_ISLNK(mode):
        return result(NOT_SYMLINK)
    try:
        target = view.readlink(spec.path)
    except OSError as err:
        return result(None, error=err.strerror or str(err))
    try:
        resolved = view.realpath(spec.path, strict=True)
        actual = os.stat(view.outside(resolved))
    except OSError:
        return result(DANGLING, target=target, resolved=_best_effort_realpath(view, spec.path))
    try:
        expected = view.stat(spec.target)
    except OSError:
        return result(WRONG_TARGET, target=target, resolved=resolved)
    same = (actual.st_dev, actual.st_ino) == (expected.st_dev, expected.st_ino)
    return result(OK if same else WRONG_TARGET, target=target, resolved=resolved)


def _best_effort_realpath(view: FileView, path: str) -> str | None:
    try:
        return view.realpath(path)
    except OSError:
        return None  # a symlink loop
