"""Ollama version strings as comparable tuples."""

from __future__ import annotations

import re

_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+].*)?")


def version_tuple(text: str) -> tuple[int, int, int] | None:
    """``0.12.3`` -> (0, 12, 3); pre-releases and builds compare as their release
    (``0.13.0-rc1`` -> (0, 13, 0)); None when `text` is no version."""
    m = _VERSION.fullmatch(text.strip())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
