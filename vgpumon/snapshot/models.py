"""Which models are loaded now and what to call them: the ``model`` label of the Ollama
metrics (docs/metrics.md#the-model-label).

Labels come from the local manifests (or a runner's model file name), never from what the
API or a process's arguments say, and are capped in length and number: label cardinality is
bounded by the models pulled on the host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from vgpumon.ollama.api import LoadedModel as OllamaModel
from vgpumon.ollama.manifests import blob_digest_from_model_arg, model_label
from vgpumon.snapshot.host import HostState, ProcessState

MAX_MODELS = 100
MAX_LABEL = 200


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded now, under the label it is exported with."""

    offload_key: str | None  # blob digest, or the model file of a bare llama-server
    api: OllamaModel | None  # its /api/ps entry, if listed there


def loaded_models(host: HostState) -> dict[str, LoadedModel]:
    """Model label -> what is known of it, for every model loaded now: listed by /api/ps, run
    by a tracked runner, or mapped by a tracked process (see `models_of_process`). Labels
    come from the local manifests (or the runner's model file name), never from what the API
    says."""
    ollama = host.ollama
    blob_of_name = {name: blob for blob, names in ollama.names.items() for name in names}
    models: dict[str, LoadedModel] = {}
    if ollama.api is not None and ollama.api.up:
        for model in ollama.api.models or ():
            blob = blob_of_name.get(model.name)
            label = model.name if blob is not None else model_label(model.digest, {})
            models.setdefault(label[:MAX_LABEL], LoadedModel(blob, model))
    listed = {loaded.offload_key for loaded in models.values()}
    for state in host.processes:
        for key, label in models_of_process(state, ollama.names):
            if key in listed:
                continue  # already there, perhaps under the name /api/ps gave it
            listed.add(key)
            models.setdefault(label[:MAX_LABEL], LoadedModel(key, None))
    return dict(sorted(models.items())[:MAX_MODELS])


def models_of_process(state: ProcessState,
                      names: Mapping[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """(offload key, label) of each model a process runs: the one its ``--model`` names, and
    the model blobs it maps (before 0.1.32 the model is loaded inside ``ollama serve``)."""
    found = []
    argument = state.process.model_arg
    if argument:
        blob = blob_digest_from_model_arg(argument)
        if blob is not None:
            found.append((blob, model_label(blob, names)))
        else:  # a model file given directly (llama-server -m FILE)
            found.append((argument, os.path.basename(argument)))
    found += [(blob, model_label(blob, names)) for blob in state.libraries.model_blobs]
    return found
