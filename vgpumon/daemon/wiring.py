"""Which event sources the daemon runs, and how they depend on each other."""

from __future__ import annotations

from vgpumon.daemon.exit_watch import ExitWatch
from vgpumon.daemon.file_watch import FileWatch
from vgpumon.daemon.kernel_log import KernelLog
from vgpumon.daemon.ollama_watch import OllamaApi, OllamaKnowledge, OllamaLog
from vgpumon.daemon.source import Source


def event_sources(*, kmsg: str = "/dev/kmsg", journalctl: str = "journalctl") -> list[Source]:
    """The kernel log (evidence for exits), exits and execs, inotify (which needs to know
    whether execs are reported), Ollama's API and log (which share what they know)."""
    kernel_log = KernelLog(kmsg)
    exits = ExitWatch(kernel_log)
    knowledge = OllamaKnowledge()
    return [kernel_log, exits, FileWatch(exits), OllamaApi(knowledge),
            OllamaLog(knowledge, journalctl=journalctl)]
