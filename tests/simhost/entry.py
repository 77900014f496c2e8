"""What the launcher runs: dispatch on the simulated program's own argv.

`ollama serve` -> server; `ollama runner ...`, `ollama_llama_server ...`, `llama-server ...`,
`ollama-runner ...`, `ollama gpu-discover ...` -> runner module. sys.orig_argv is the argv the
process was exec'd with (the kernel's /proc/PID/cmdline).
"""

from __future__ import annotations

import os
import sys

from .simproc import HostConfig, emit, find_root


def main() -> int:
    argv = list(sys.orig_argv)
    root = find_root(os.path.realpath("/proc/self/exe"))
    host = HostConfig.load(root)
    name = os.path.basename(argv[0])
    if name == "ollama" and argv[1:2] == ["serve"]:
        from . import server
        return server.main(host, argv)
    if name in ("ollama", "ollama_llama_server", "llama-server", "ollama-runner"):
        from . import runner
        runner.main(host, argv)
        return 0
    emit(f"Error: unknown command {' '.join(argv[1:2])!r} for {name!r}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
