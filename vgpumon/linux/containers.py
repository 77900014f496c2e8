"""Which container a process runs in, from ``/proc/PID/cgroup`` (pure).

Runtimes name a container's cgroup after its ID: Docker ``docker-<id>.scope`` (systemd
driver) or ``/docker/<id>`` (cgroupfs), containerd/CRI ``cri-containerd-<id>.scope`` or
``/kubepods/…/<id>``, CRI-O ``crio-<id>.scope``, Podman ``libpod-<id>.scope``. The label is
``<runtime>://<first 12 hex digits>``, like ``docker ps`` shows it; host processes have none.
"""

from __future__ import annotations

import re

_SCOPE = re.compile(
    r"(?P<runtime>docker|cri-containerd|crio|libpod)-(?:conmon-)?(?P<id>[0-9a-f]{64})\.scope"
)
_PATH = re.compile(r"/(?P<runtime>docker|libpod|podman|containerd)/(?P<id>[0-9a-f]{64})(?:/|$)")
_KUBEPODS = re.compile(r"/kubepods[^ ]*/(?P<id>[0-9a-f]{64})(?:/|$)")
_RUNTIME_NAMES = {"libpod": "podman", "cri-containerd": "containerd", "crio": "cri-o"}
SHORT_ID = 12


def container_of(cgroup: bytes) -> str | None:
    """``docker://0123456789ab`` for a containerised process, None on the host."""
    text = cgroup.decode("utf-8", "replace")
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        for pattern in (_SCOPE, _PATH):
            match = pattern.search(path)
            if match:
                runtime = _RUNTIME_NAMES.get(match["runtime"], match["runtime"])
                return f"{runtime}://{match['id'][:SHORT_ID]}"
        match = _KUBEPODS.search(path)
        if match:
            return f"containerd://{match['id'][:SHORT_ID]}"
    return None
