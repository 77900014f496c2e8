"""Events: the timeline vgpumon keeps (event log, `/events`, `vgpumon replay --json`).

An event is one JSON object: ``{"ts": <unix seconds>, "kind": "...", ...fields}``. The kinds
and their fields are a contract (docs/events.md); add fields freely, never rename them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

PROCESS_STARTED = "process_started"
PROCESS_EXITED = "process_exited"
# Evidence that came after a `process_exited` changed its reason (docs/events.md).
EXIT_REASON_AMENDED = "exit_reason_amended"
LIBRARY_LOADED = "library_loaded"
LIBRARY_UNLOADED = "library_unloaded"
LIBRARY_STALE = "library_stale"
SHIM_LINK_CHANGED = "shim_link_changed"
PROCESS_REJECTED = "process_rejected"  # matched a group's patterns, not its identity rules
PRELOAD_FAILED = "preload_failed"  # a shim named in LD_PRELOAD or ld.so.preload is not mapped
SHIM_BYPASSED = "shim_bypassed"  # a process that expects a shim got the real library
CRASH_LOOP_STARTED = "crash_loop_started"
CRASH_LOOP_ENDED = "crash_loop_ended"
OLLAMA_VERSION = "ollama_version"
GPU_DISCOVERED = "gpu_discovered"
CPU_ONLY = "cpu_only"
DISCOVERY_FAILED = "discovery_failed"
RUNNER_STARTED = "runner_started"
RUNNER_READY = "runner_ready"
OFFLOAD = "offload"
RUNNER_EXITED = "runner_exited"
CUDA_INIT_FAILED = "cuda_init_failed"
CUDA_ERROR = "cuda_error"
OUT_OF_MEMORY = "out_of_memory"
LOAD_FAILED = "load_failed"
BACKEND_LOAD_FAILED = "backend_load_failed"
BACKEND_LOADED = "backend_loaded"
# One Go runtime crash trace in the Ollama log (signal, pc, message).
GO_CRASH = "go_crash"

# Ollama log problems that are also counted in vgpumon_ollama_log_errors_total{kind}.
LOG_ERROR_KINDS = (
    CUDA_INIT_FAILED,
    CUDA_ERROR,
    OUT_OF_MEMORY,
    LOAD_FAILED,
    BACKEND_LOAD_FAILED,
    DISCOVERY_FAILED,
)

ALL_KINDS = (
    PROCESS_STARTED,
    PROCESS_EXITED,
    EXIT_REASON_AMENDED,
    LIBRARY_LOADED,
    LIBRARY_UNLOADED,
    LIBRARY_STALE,
    SHIM_LINK_CHANGED,
    PROCESS_REJECTED,
    PRELOAD_FAILED,
    SHIM_BYPASSED,
    CRASH_LOOP_STARTED,
    CRASH_LOOP_ENDED,
    OLLAMA_VERSION,
    GPU_DISCOVERED,
    CPU_ONLY,
    DISCOVERY_FAILED,
    RUNNER_STARTED,
    RUNNER_READY,
    OFFLOAD,
    RUNNER_EXITED,
    CUDA_INIT_FAILED,
    CUDA_ERROR,
    OUT_OF_MEMORY,
    LOAD_FAILED,
    BACKEND_LOAD_FAILED,
    BACKEND_LOADED,
    GO_CRASH,
)

_RESERVED = frozenset({"ts", "kind"})


@dataclass(frozen=True)
class Event:
    """One entry of the timeline. `fields` holds JSON-compatible values only."""

    ts: float
    kind: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = _RESERVED.intersection(self.fields)
        if clash:
            raise ValueError(f"event field names reserved: {sorted(clash)}")
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    def to_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "kind": self.kind, **self.fields}

    def to_json(self) -> str:
        """One line of JSON, without the newline; non-ASCII is escaped so a line is plain ASCII."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        fields = {k: v for k, v in data.items() if k not in _RESERVED}
        return cls(ts=float(data["ts"]), kind=str(data["kind"]), fields=fields)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)
