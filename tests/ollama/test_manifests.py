"""vgpumon.ollama.manifests: blob digests ↔ model names from the manifest store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vgpumon.linux.paths import HOST, FileView
from vgpumon.ollama.manifests import (
    MAX_MANIFEST_BYTES,
    BlobNames,
    blob_digest_from_model_arg,
    model_label,
    model_name,
    model_names_by_blob,
)

LLAMA = "45b1c9806e74e0494dd9a08d54a93258ffe5b6ed6468a2c6c274a21bddd7d380"
QWEN = "4a65eed368b066945e57bb625e89d33190ea4863abb1c53422d4f9118a6d5e81"
PHI = "7f754d3dbef2f9c8be86a085d505d9bf943e8a9d0c2d84c5015e92e97c53040d"
CONFIG = "d10904b4e8c455d5650c2061af4d2be591e09b50be7788fed3b88646a0bd6d17"


def manifest(model_digest: str | None) -> bytes:
    layers = [
        {
            "mediaType": "application/vnd.ollama.image.license",
            "digest": f"sha256:{CONFIG}",
            "size": 7711,
        }
    ]
    if model_digest is not None:
        layers.insert(
            0,
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": f"sha256:{model_digest}",
                "size": 2019377376,
            },
        )
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": f"sha256:{CONFIG}",
                "size": 561,
            },
            "layers": layers,
        }
    ).encode()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A models directory with manifests of every naming kind and some garbage."""
    models = tmp_path / "models"
    m = models / "manifests"
    write(m / "registry.ollama.ai/library/llama3.2/latest", manifest(LLAMA))
    write(m / "registry.ollama.ai/library/llama3.2/3b", manifest(LLAMA))
    write(m / "registry.ollama.ai/library/qwen2.5/7b", manifest(QWEN.upper()))
    write(m / "registry.ollama.ai/jmorgan/phi/q4", manifest(PHI))
    write(m / "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF/Q4_K_M", manifest(QWEN))
    write(m / "registry.ollama.ai/library/broken/latest", b"{not json")  # error
    write(m / "registry.ollama.ai/library/nolayers/latest", b'{"schemaVersion":2}')  # error
    write(m / "registry.ollama.ai/library/huge/latest", b" " * (MAX_MANIFEST_BYTES + 1))  # error
    write(m / "registry.ollama.ai/library/adapter/latest", manifest(None))  # no model layer
    write(m / "stray-file-at-host-level", b"x")  # ignored
    os.mkfifo(m / "registry.ollama.ai/library/llama3.2/fifo")  # error, and must not block
    (m / "registry.ollama.ai/library/llama3.2/dangling").symlink_to("/nonexistent")  # error
    return models


def test_names_by_blob(store: Path):
    result = model_names_by_blob(HOST, str(store))
    assert dict(result) == {
        LLAMA: ("llama3.2:3b", "llama3.2:latest"),
        PHI: ("jmorgan/phi:q4",),
        QWEN: ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "qwen2.5:7b"),
    }
    assert result.errors == 5


def test_result_is_a_mapping(store: Path):
    result = model_names_by_blob(HOST, str(store) + "/")
    assert isinstance(result, BlobNames)
    assert result[PHI] == ("jmorgan/phi:q4",)
    assert len(result) == 3
    assert LLAMA in result


def test_models_dir_is_resolved_inside_the_process_view(tmp_path: Path, store: Path):
    # A container whose /root/.ollama/models is an absolute symlink to /data/models: the link
    # must be followed inside the container's root, not on the host.
    root = tmp_path / "container-root"
    (root / "data").mkdir(parents=True)
    store.rename(root / "data/models")
    (root / "root/.ollama").mkdir(parents=True)
    (root / "root/.ollama/models").symlink_to("/data/models")
    result = model_names_by_blob(FileView(str(root), "pid 4100"), "/root/.ollama/models")
    assert result[PHI] == ("jmorgan/phi:q4",)


def test_missing_store_is_empty_not_an_error(tmp_path: Path):
    result = model_names_by_blob(HOST, str(tmp_path / "nothing"))
    assert (dict(result), result.errors) == ({}, 0)


def test_unreadable_directory_is_counted(store: Path, monkeypatch: pytest.MonkeyPatch):
    # Tests may run as root, which chmod cannot lock out: make one listing fail instead.
    real_listdir = os.listdir

    def listdir(path: str) -> list[str]:
        if path.endswith("/jmorgan"):
            raise PermissionError(13, "Permission denied", path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    result = model_names_by_blob(HOST, str(store))
    assert PHI not in result
    assert result.errors == 6


@pytest.mark.parametrize(
    ("arg", "digest"),
    [
        (f"/usr/share/ollama/.ollama/models/blobs/sha256-{LLAMA}", LLAMA),
        (f"/root/.ollama/models/blobs/sha256:{LLAMA}", LLAMA),
        (f"sha256:{LLAMA.upper()}", LLAMA),
        (f"sha256-{LLAMA}", LLAMA),
        (f"C:\\Users\\me\\.ollama\\models\\blobs\\sha256-{LLAMA}", LLAMA),
        ("llama3.2:3b", None),
        ("/models/llama.gguf", None),
        (f"/blobs/sha256-{LLAMA}x", None),
        (f"/blobs/sha256-{LLAMA[:63]}", None),
        (f"/blobs/xsha256-{LLAMA}", None),
        (f"/m/sha256-{QWEN}/blobs/sha256-{LLAMA}", LLAMA),
        (f"/blobs/sha256-{LLAMA}\n", None),
        ("", None),
    ],
)
def test_blob_digest_from_model_arg(arg, digest):
    assert blob_digest_from_model_arg(arg) == digest


@pytest.mark.parametrize(
    ("parts", "name"),
    [
        (("registry.ollama.ai", "library", "llama3.2", "latest"), "llama3.2:latest"),
        (("registry.ollama.ai", "jmorgan", "phi", "q4"), "jmorgan/phi:q4"),
        (
            ("hf.co", "bartowski", "Llama-3.2-1B-GGUF", "Q4_K_M"),
            "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M",
        ),
        (("localhost:5000", "library", "m", "v1"), "localhost:5000/library/m:v1"),
    ],
)
def test_model_name(parts, name):
    assert model_name(*parts) == name


def test_model_label():
    names = {LLAMA: ("llama3.2:3b", "llama3.2:latest")}
    assert model_label(LLAMA, names) == "llama3.2:3b"
    assert model_label(QWEN, names) == QWEN[:12]
    assert model_label(QWEN, BlobNames({QWEN: ()})) == QWEN[:12]
