"""Model names for weight blobs, from Ollama's manifest store.

A runner's ``--model`` names a weight blob (``<models>/blobs/sha256-<hex>``); people know the
model by name (``llama3.2:latest``). Manifests under
``<models>/manifests/<host>/<namespace>/<model>/<tag>`` map one to the other: the layer with
mediaType ``application/vnd.ollama.image.model`` is the weight blob. One blob can serve several
names. The models directory is a path in Ollama's mount namespace, so it is read through a
`FileView`.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vgpumon.linux.paths import FileView

MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
# Manifests are a few hundred bytes; anything much larger is not one.
MAX_MANIFEST_BYTES = 1 << 20

_BLOB_ARG = re.compile(r"(?:^|[/\\])sha256[-:]([0-9a-fA-F]{64})\Z")
_LAYER_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_LABEL_DIGITS = 12


@dataclass(frozen=True)
class BlobNames(Mapping[str, tuple[str, ...]]):
    """Blob hex digest → the sorted model names that use it, plus how many manifests (or
    manifest directories) could not be read or parsed and were skipped."""

    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    errors: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", MappingProxyType(dict(self.names)))

    def __getitem__(self, digest: str) -> tuple[str, ...]:
        return self.names[digest]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def blob_digest_from_model_arg(arg: str) -> str | None:
    """The hex digest of a runner's ``--model`` value (``…/blobs/sha256-<hex>`` or
    ``sha256:<hex>``), lower-case; None if it names no blob (an MLX model name, a GGUF path)."""
    m = _BLOB_ARG.search(arg)
    return m.group(1).lower() if m else None


UNNAMED = "unnamed"


def model_label(digest: str, names: Mapping[str, tuple[str, ...]]) -> str:
    """What to call a blob: its first model name, else the first 12 hex digits."""
    known = names.get(digest)
    if known:
        return known[0]
    if re.fullmatch(r"[0-9a-fA-F]{12,128}", digest):
        return digest[:_LABEL_DIGITS].lower()
    return UNNAMED  # not a digest: never put what an API or a file said into a label


def model_name(host: str, namespace: str, model: str, tag: str) -> str:
    """The name Ollama shows for a manifest path (default registry and namespace omitted)."""
    if host == DEFAULT_REGISTRY and namespace == DEFAULT_NAMESPACE:
        return f"{model}:{tag}"
    if host == DEFAULT_REGISTRY:
        return f"{namespace}/{model}:{tag}"
    return f"{host}/{namespace}/{model}:{tag}"


def model_blob_of_manifest(data: bytes) -> str | None:
    """The weight blob's hex digest named by a manifest; None if it has no model layer.

    Raises ValueError if `data` is not a manifest (not JSON, no ``layers`` list).
    """
    try:
        document = json.loads(data)
    except RecursionError:
        raise ValueError("manifest nested too deeply") from None
    layers = document.get("layers") if isinstance(document, dict) else None
    if not isinstance(layers, list):
        raise ValueError("manifest has no layers list")
    for layer in layers:
        digest = _model_layer_digest(layer)
        if digest is not None:
            return digest
    return None


def _model_layer_digest(layer: Any) -> str | None:
    if not isinstance(layer, dict) or layer.get("mediaType") != MODEL_MEDIA_TYPE:
        return None
    digest = layer.get("digest")
    if not isinstance(digest, str):
        return None
    m = _LAYER_DIGEST.fullmatch(digest)
    return m.group(1).lower() if m else None


def model_names_by_blob(view: FileView, models_dir: str) -> BlobNames:
    """Index the manifests under `models_dir` (a path in `view`) by weight blob.

    A missing manifest store is an empty index, not an error. Unreadable directories and
    unreadable or malformed manifest files are skipped and counted in ``errors``.
    """
    walk = _ManifestWalk(view)
    found: dict[str, set[str]] = {}
    for parts, data in walk.manifests(models_dir.rstrip("/") + "/manifests"):
        try:
            digest = model_blob_of_manifest(data)
        except ValueError:
            walk.errors += 1
            continue
        if digest is not None:
            found.setdefault(digest, set()).add(model_name(*parts))
    names = {digest: tuple(sorted(found[digest])) for digest in sorted(found)}
    return BlobNames(names, walk.errors)


class _ManifestWalk:
    """Walks ``manifests/<host>/<namespace>/<model>/<tag>`` in one view, counting failures."""

    _DEPTH = 4

    def __init__(self, view: FileView) -> None:
        self.view = view
        self.errors = 0

    def manifests(self, root: str) -> Iterator[tuple[tuple[str, str, str, str], bytes]]:
        try:
            self.view.stat(root)
        except OSError:
            return  # no manifest store: no models pulled (or a wrong models_dir)
        yield from self._walk(root, ())

    def _walk(
        self, directory: str, parts: tuple[str, ...]
    ) -> Iterator[tuple[tuple[str, str, str, str], bytes]]:
        for name in self._list(directory):
            path = f"{directory}/{name}"
            kind = self._kind(path)
            if kind == "unreadable":
                self.errors += 1
                continue
            if len(parts) < self._DEPTH - 1:
                if kind == "dir":
                    yield from self._walk(path, (*parts, name))
                continue
            if kind == "dir":
                continue
            data = self._read(path) if kind == "file" else None
            if data is None:
                self.errors += 1
                continue
            host, namespace, model = parts
            yield (host, namespace, model, name), data

    def _list(self, directory: str) -> list[str]:
        try:
            return sorted(os.listdir(self.view.outside(self.view.realpath(directory, strict=True))))
        except OSError:
            self.errors += 1
            return []

    def _kind(self, path: str) -> str:
        try:
            mode = self.view.stat(path).st_mode
        except OSError:
            return "unreadable"
        if stat.S_ISDIR(mode):
            return "dir"
        return "file" if stat.S_ISREG(mode) else "other"

    def _read(self, path: str) -> bytes | None:
        try:
            real = self.view.outside(self.view.realpath(path, strict=True))
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return _read_capped(fd, MAX_MANIFEST_BYTES)
        except OSError:
            return None
        finally:
            os.close(fd)


def _read_capped(fd: int, limit: int) -> bytes | None:
    """The file's content, or None if it is longer than `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None
