"""The names of vgpumon's collectors: the ``collector`` label of
``vgpumon_collector_{success,duration_seconds,last_success_timestamp_seconds}`` and the
``source`` label of ``vgpumon_event_handler_errors_total``. Part of the metric contract
(docs/metrics.md): alerts and dashboards select on them.
"""

from __future__ import annotations

# Polled by every refresh (vgpumon.snapshot.observer).
PROCESSES = "processes"
MAPS = "maps"
LIBRARIES = "libraries"
LINKS = "links"
NVML = "nvml"
# Event sources driven by the daemon's loop (vgpumon.daemon).
EXITS = "exits"
KMSG = "kmsg"
INOTIFY = "inotify"
OLLAMA_API = "ollama_api"
OLLAMA_LOG = "ollama_log"
EVENT_LOG = "event_log"
# Not a collector: the loop's own work (signals, refresh, reload, settling timers); it can
# only appear as a handler-error source.
LOOP = "loop"

ALL = (PROCESSES, MAPS, LIBRARIES, LINKS, NVML, EXITS, KMSG, INOTIFY, OLLAMA_API, OLLAMA_LOG,
       EVENT_LOG)
