"""A simulated Ollama host for vgpumon's tests: real processes, real libraries, real logs.

See README.md in this directory. The public API:

    from tests.simhost import SimHost
    host = SimHost.create(tmp_path, era="F")
    host.add_model("llama3.2:latest", layers=29)
    server = host.start_server()
    runner = server.load_model("llama3.2:latest")
    server.crash_runner("llama3.2:latest", mode="sigsegv", library="libvgpu-cuda.so")
    host.close()

Only `host.py` and what it imports run in the test process; the modules for the simulated
processes (entry, server, runner, simproc) are stdlib-only.
"""

from .eras import DEFAULT_VERSIONS as ERAS
from .host import CRASH_MODES, SCENARIOS, SimHost, SimHostError, SimRunner, SimServer, wait_until
from .simproc import Gpu

__all__ = ["CRASH_MODES", "ERAS", "SCENARIOS", "Gpu", "SimHost", "SimHostError", "SimRunner",
           "SimServer", "wait_until"]
