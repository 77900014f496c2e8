"""A simulated Ollama host for vgpumon's tests: real processes, real libraries, real logs.

See README.md in this directory. The public API:

    from tests.simhost import SimHost
    host = SimHost.create(tmp_path, era="F")
    host.add_model("llama3.2:latest", layers=29)
    server = host.start_server()
    runner = server.load_model("llama3.2:latest")
    server.crash_runner("llama3.2:latest", mode="sigsegv", library="libvgpu-cuda.so")
    host.close()

Names are imported lazily: every simulated process imports this package too (its code lives
in `tests.simhost.entry` and what that imports, stdlib only), and should not pay for the
harness side.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SimHost": "host", "SimServer": "host", "SimRunner": "host", "SimHostError": "host",
    "SCENARIOS": "host", "CRASH_MODES": "host", "wait_until": "host", "Gpu": "simproc",
    "Era": "eras", "ERAS": "eras",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    return getattr(module, "DEFAULT_VERSIONS" if name == "ERAS" else name)
