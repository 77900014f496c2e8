"""Ollama's HTTP API bodies → values: ``GET /api/version`` and ``GET /api/ps``.

Pure functions over the response body; fetching (and capping its size) is the caller's job.
Every version's shape is accepted (docs/ollama.md#http-api): ``/api/ps`` exists from 0.1.38,
0.1.38-0.1.41 omit ``size_vram`` and ``expires_at`` when zero, ``context_length`` appears in
0.10.0, ``models`` may be ``null``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vgpumon.ollama.logline import parse_timestamp


class ApiFormatError(ValueError):
    """The body is not JSON, or not the shape this endpoint returns."""


@dataclass(frozen=True)
class LoadedModel:
    """One model in ``/api/ps``.

    `size_vram` is 0 when Ollama omitted it (it does so only when zero); None only when the
    body says ``null``. `expires_at` is unix seconds, None when omitted or Go's zero time.
    `context_length` is None before 0.10.0. The ``details`` strings are "" when absent.
    """

    name: str
    model: str
    size: int
    size_vram: int | None
    digest: str
    expires_at: float | None
    context_length: int | None
    family: str
    parameter_size: str
    quantization_level: str


def parse_version(body: bytes) -> str:
    """The version string of a ``/api/version`` body (``{"version":"0.12.3"}``)."""
    document = _load(body)
    if not isinstance(document, dict):
        raise ApiFormatError("/api/version: expected a JSON object")
    version = document.get("version")
    if not isinstance(version, str):
        raise ApiFormatError("/api/version: 'version' is not a string")
    return version


def parse_ps(body: bytes) -> tuple[LoadedModel, ...]:
    """The models of a ``/api/ps`` body, in the order Ollama listed them."""
    document = _load(body)
    if not isinstance(document, dict):
        raise ApiFormatError("/api/ps: expected a JSON object")
    if "models" not in document:
        raise ApiFormatError("/api/ps: no 'models' key")
    models = document["models"]
    if models is None:
        return ()
    if not isinstance(models, list):
        raise ApiFormatError("/api/ps: 'models' is not a list")
    return tuple(_loaded_model(entry, index) for index, entry in enumerate(models))


def _load(body: bytes) -> Any:
    if not isinstance(body, bytes | bytearray | str):
        raise ApiFormatError(f"a body is bytes, not {type(body).__name__}")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ApiFormatError(f"not JSON: {exc}") from None


def _loaded_model(entry: Any, index: int) -> LoadedModel:
    where = f"/api/ps models[{index}]"
    if not isinstance(entry, dict):
        raise ApiFormatError(f"{where}: expected an object")
    name = _string(entry, "name", where, required=True)
    details = entry.get("details")
    if details is None:
        details = {}
    if not isinstance(details, dict):
        raise ApiFormatError(f"{where}.details: expected an object")
    size_vram = _integer(entry, "size_vram", where, missing=0)
    return LoadedModel(
        name=name,
        model=_string(entry, "model", where) or name,
        size=_integer(entry, "size", where, missing=0) or 0,
        size_vram=size_vram,
        digest=_string(entry, "digest", where),
        expires_at=_expiry(entry, where),
        context_length=_integer(entry, "context_length", where, missing=None),
        family=_string(details, "family", f"{where}.details"),
        parameter_size=_string(details, "parameter_size", f"{where}.details"),
        quantization_level=_string(details, "quantization_level", f"{where}.details"),
    )


def _string(obj: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise ApiFormatError(f"{where}: no '{key}'")
        return ""
    if not isinstance(value, str):
        raise ApiFormatError(f"{where}.{key}: expected a string")
    return value


def _integer(obj: dict[str, Any], key: str, where: str, *, missing: int | None) -> int | None:
    if key not in obj:
        return missing
    value = obj[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiFormatError(f"{where}.{key}: expected an integer")
    return value


_GO_ZERO_TIME_YEAR = "0001-"


def _expiry(obj: dict[str, Any], where: str) -> float | None:
    value = obj.get("expires_at")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiFormatError(f"{where}.expires_at: expected a string")
    if value.startswith(_GO_ZERO_TIME_YEAR):
        return None
    ts = parse_timestamp(value)
    if ts is None:
        raise ApiFormatError(f"{where}.expires_at: not an RFC 3339 time: {value[:64]!r}")
    return ts
