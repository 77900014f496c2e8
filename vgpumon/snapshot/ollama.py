"""What vgpumon knows about Ollama: its API answers plus the facts its log reported.

`OllamaFacts` folds the interpreter's events into the current picture (GPUs of the last
discovery, the last offload per model, the version); `OllamaState` is the immutable result
that goes into the snapshot. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.sources.ollama_api import OllamaApiState


@dataclass(frozen=True)
class Gpu:
    id: str
    library: str
    name: str
    total_bytes: int | None = None
    available_bytes: int | None = None


@dataclass(frozen=True)
class Offload:
    """How many of a model's layers are on a GPU, as last reported."""

    gpu_layers: int
    total_layers: int | None
    estimate: bool
    ts: float


@dataclass(frozen=True)
class OllamaState:
    api: OllamaApiState | None = None
    version: str | None = None  # from the log ("Listening on … (version X)")
    gpus: tuple[Gpu, ...] | None = None  # None: no discovery seen yet
    offload: Mapping[str, Offload] = field(default_factory=dict)  # blob digest -> offload
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # blob -> model names

    @property
    def up(self) -> bool:
        return self.api is not None and self.api.up

    @property
    def known_version(self) -> str | None:
        """The server's version: the API's answer, else the log's."""
        if self.api is not None and self.api.up and self.api.version:
            return self.api.version
        return self.version


class OllamaFacts:
    """Accumulates log events into an `OllamaState`."""

    def __init__(self) -> None:
        self.version: str | None = None
        self._gpus: list[Gpu] | None = None
        self._round: object = None
        self._actual: dict[str, Offload] = {}
        self._estimate: dict[str, Offload] = {}
        self._current_model: str | None = None

    def apply(self, events: Iterable[Event]) -> bool:
        """Fold `events` in; True if anything an exporter shows changed."""
        changed = False
        for event in events:
            changed = self._apply(event) or changed
        return changed

    def offload(self) -> dict[str, Offload]:
        """Per blob: the runner's actual report where there is one, else the estimate."""
        merged = dict(self._estimate)
        merged.update(self._actual)
        return merged

    def state(self, api: OllamaApiState | None,
              names: Mapping[str, tuple[str, ...]]) -> OllamaState:
        return OllamaState(
            api=api,
            version=self.version,
            gpus=None if self._gpus is None else tuple(self._gpus),
            offload=MappingProxyType(self.offload()),
            names=MappingProxyType(dict(names)),
        )

    def _apply(self, event: Event) -> bool:
        kind = event.kind
        if kind == ev.OLLAMA_VERSION:
            self.version = event.get("version")
            return True
        if kind == ev.GPU_DISCOVERED:
            self._new_round_if(event.get("discovery_round"))
            assert self._gpus is not None
            self._gpus = [g for g in self._gpus if g.id != str(event.get("id"))]
            self._gpus.append(Gpu(str(event.get("id")), str(event.get("library", "")),
                                  str(event.get("name", "")), event.get("total_bytes"),
                                  event.get("available_bytes")))
            return True
        if kind == ev.CPU_ONLY:
            self._new_round_if(event.get("discovery_round"))
            self._gpus = []
            return True
        if kind == ev.RUNNER_STARTED and not event.get("discovery"):
            self._current_model = event.get("model")
            # A new load: the last runner's report no longer describes this model (the
            # server's estimate for this load was logged just before the start).
            return self._actual.pop(self._current_model, None) is not None
        if kind == ev.OFFLOAD:
            model = event.get("model") or self._current_model
            if model is None:
                return False
            offload = Offload(int(event.get("gpu_layers", 0)), event.get("total_layers"),
                              bool(event.get("estimate")), event.ts)
            target = self._estimate if offload.estimate else self._actual
            previous = target.get(model)
            if offload.total_layers is None and previous is not None:
                offload = Offload(offload.gpu_layers, previous.total_layers, offload.estimate,
                                  offload.ts)
            if not offload.estimate:
                self._estimate.pop(model, None)  # an older estimate must not outlive this
            target[model] = offload
            return True
        return False

    def _new_round_if(self, round_id: object) -> None:
        if self._gpus is None or round_id is None or round_id != self._round:
            self._gpus = []
            self._round = round_id
