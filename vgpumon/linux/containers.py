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
_POD = re.compile(
    r"kubepods[^\n]*?[-/]pod(?P<uid>[0-9a-f]{8}[-_](?:[0-9a-f]{4}[-_]){3}[0-9a-f]{12})"
    r"(?:\.slice)?(?:/|$)",
    re.MULTILINE,
)
_RUNTIME_NAMES = {"libpod": "podman", "cri-containerd": "containerd", "crio": "cri-o"}
SHORT_ID = 12


def container_of(cgroup: bytes) -> str | None:
    """``docker://0123456789ab`` for a containerised process, None on the host."""
    found = container_id_of(cgroup)
    return f"{found[0]}://{found[1][:SHORT_ID]}" if found else None


def container_id_of(cgroup: bytes) -> tuple[str, str] | None:
    """(runtime, full 64-digit ID) of a containerised process, None on the host."""
    text = cgroup.decode("utf-8", "replace")
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        for pattern in (_SCOPE, _PATH):
            match = pattern.search(path)
            if match:
                return _RUNTIME_NAMES.get(match["runtime"], match["runtime"]), match["id"]
        match = _KUBEPODS.search(path)
        if match:
            return "containerd", match["id"]
    return None


def pod_uid_of(cgroup: bytes) -> str | None:
    """The UID of the Kubernetes pod a process runs in (``kubepods…-pod<uid>.slice`` with
    the systemd driver, ``/kubepods/<class>/pod<uid>/`` with cgroupfs), None outside a pod."""
    text = cgroup.decode("utf-8", "replace")
    match = _POD.search(text)
    return match["uid"].replace("_", "-") if match else None
