"""The model store of the simulated host: real manifests and blobs, as Ollama lays them out.

`<models>/manifests/<host>/<namespace>/<model>/<tag>` is the manifest JSON; its layer of media
type `application/vnd.ollama.image.model` names the weights blob `<models>/blobs/sha256-<hex>`
(here a metadata-only GGUF, see gguf.py) and its config blob holds the `details` that /api/ps
shows. The /api/ps `digest` is the sha256 of the manifest file itself
(docs/ollama.md#models-and-blobs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass

from . import gguf

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
MODEL_MEDIA = "application/vnd.ollama.image.model"


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, name: str) -> ModelName:
        base, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "")
        parts = base.split("/")
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        if len(parts) == 3:
            host, namespace, model = parts
        elif len(parts) == 2:
            namespace, model = parts
        else:
            model = parts[0]
        return cls(host, namespace, model, tag or "latest")

    @property
    def short(self) -> str:
        """The name /api/ps shows: default host and namespace omitted, tag kept."""
        if self.host == DEFAULT_HOST and self.namespace == DEFAULT_NAMESPACE:
            return f"{self.model}:{self.tag}"
        if self.host == DEFAULT_HOST:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def manifest_path(self, models_dir: str) -> str:
        return os.path.join(models_dir, "manifests", self.host, self.namespace, self.model,
                            self.tag)


@dataclass(frozen=True)
class Model:
    """A model as the server resolves it from the store."""

    name: str                 # short name, e.g. "llama3.2:latest"
    blob: str                 # path of the weights blob (the runner's --model)
    blob_digest: str          # "sha256:<hex>" of the weights blob
    digest: str               # hex sha256 of the manifest (what /api/ps shows)
    layers: int               # M of "offloaded N/M": blocks + output
    weights_bytes: int
    context_length: int
    architecture: str
    display_name: str
    details: dict

    @property
    def n_layer(self) -> int:
        return self.layers - 1


def _blob_path(models_dir: str, digest: str) -> str:
    return os.path.join(models_dir, "blobs", digest.replace(":", "-"))


def _put_blob(models_dir: str, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = _blob_path(models_dir, digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return digest, len(data)


def add_model(models_dir: str, name: str, *, layers: int = 29, family: str = "llama",
              parameter_size: str = "3.2B", quantization: str = "Q4_K_M",
              weights_bytes: int | None = None, context_length: int = 131072,
              display_name: str | None = None) -> str:
    """Write manifest, config and weights blobs for `name`; return the weights blob digest."""
    if layers < 1:
        raise ValueError("a model has at least one layer")
    weights_bytes = weights_bytes if weights_bytes is not None else layers * 70 * (1 << 20)
    tmp = os.path.join(models_dir, "blobs", f".tmp-{os.getpid()}")
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    gguf.write(tmp, {
        "general.architecture": family,
        "general.name": display_name or f"{ModelName.parse(name).model} {parameter_size}",
        "general.size_label": parameter_size,
        "general.file_type": gguf.FILE_TYPES.get(quantization, 15),
        f"{family}.block_count": layers - 1,
        f"{family}.context_length": context_length,
        f"{family}.embedding_length": 3072,
        "simhost.weights_bytes": weights_bytes,
    })
    with open(tmp, "rb") as f:
        weights = f.read()
    os.unlink(tmp)
    blob_digest, blob_size = _put_blob(models_dir, weights)
    config = json.dumps({
        "model_format": "gguf", "model_family": family, "model_families": [family],
        "model_type": parameter_size, "file_type": quantization, "architecture": "amd64",
        "os": "linux", "rootfs": {"type": "layers", "diff_ids": [blob_digest]},
    }).encode()
    config_digest, config_size = _put_blob(models_dir, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": MODEL_MEDIA, "digest": blob_digest, "size": blob_size}],
    }
    path = ModelName.parse(name).manifest_path(models_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(manifest, f)
    return blob_digest


def from_blob(blob: str, name: str = "") -> Model:
    """A Model as far as its weights blob tells (what a runner knows from `--model`)."""
    meta = gguf.read(blob)
    arch = str(meta["general.architecture"])
    size_label = str(meta.get("general.size_label", ""))
    return Model(
        name=name, blob=blob, blob_digest="", digest="",
        layers=int(meta[f"{arch}.block_count"]) + 1,
        weights_bytes=int(meta.get("simhost.weights_bytes", 0)),
        context_length=int(meta.get(f"{arch}.context_length", 0)),
        architecture=arch,
        display_name=str(meta.get("general.name", name)),
        details={"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
                 "parameter_size": size_label, "quantization_level": ""},
    )


def resolve(models_dir: str, name: str) -> Model:
    """Read a model back from the store as the server does; FileNotFoundError if absent."""
    mname = ModelName.parse(name)
    with open(mname.manifest_path(models_dir), "rb") as f:
        raw = f.read()
    manifest = json.loads(raw)
    layer = next(x for x in manifest["layers"] if x["mediaType"] == MODEL_MEDIA)
    with open(_blob_path(models_dir, manifest["config"]["digest"])) as f:
        config = json.load(f)
    model = from_blob(_blob_path(models_dir, layer["digest"]), mname.short)
    return dataclasses.replace(
        model,
        blob_digest=layer["digest"],
        digest=hashlib.sha256(raw).hexdigest(),
        details={
            "parent_model": "",
            "format": config.get("model_format", "gguf"),
            "family": config.get("model_family", model.architecture),
            "families": config.get("model_families", [model.architecture]),
            "parameter_size": config.get("model_type", ""),
            "quantization_level": config.get("file_type", ""),
        },
    )


def list_models(models_dir: str) -> list[tuple[str, str]]:
    """(short name, manifest path) of every manifest in the store."""
    out = []
    base = os.path.join(models_dir, "manifests")
    for dirpath, _, files in os.walk(base):
        for tag in files:
            rel = os.path.relpath(os.path.join(dirpath, tag), base).split(os.sep)
            if len(rel) == 4:
                out.append((ModelName(*rel).short, os.path.join(dirpath, tag)))
    return sorted(out)


@dataclass(frozen=True)
class MemoryPlan:
    """How much memory a loaded model takes where (rough llama.cpp proportions)."""

    weights: int
    kv: int
    graph: int
    layers: int

    @classmethod
    def of(cls, model: Model, ctx: int) -> MemoryPlan:
        kv = ctx * model.n_layer * 4096
        graph = max(64 << 20, model.weights_bytes // 8)
        return cls(model.weights_bytes, kv, graph, model.layers)

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.graph

    @property
    def non_repeating(self) -> int:
        return self.weights * 12 // 100

    def gpu_weights(self, offloaded: int) -> int:
        """Weights on the GPU; the token embeddings (half the non-repeating part) stay on
        the CPU even at full offload, as in llama.cpp."""
        n_layer = self.layers - 1
        per_layer = (self.weights - self.non_repeating) // max(n_layer, 1)
        output = self.non_repeating - self.non_repeating // 2
        return per_layer * min(offloaded, n_layer) + (output if offloaded > n_layer else 0)

    def gpu_kv(self, offloaded: int) -> int:
        n_layer = self.layers - 1
        return self.kv * min(offloaded, n_layer) // max(n_layer, 1)

    def vram(self, offloaded: int) -> int:
        if offloaded <= 0:
            return 0
        if offloaded >= self.layers:
            return self.total
        return self.gpu_weights(offloaded) + self.gpu_kv(offloaded) + self.graph
