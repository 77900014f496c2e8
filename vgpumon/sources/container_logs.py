"""Where the log of the container a process runs in is kept (``ollama.log: {container: auto}``).

The container comes from the process's cgroup (`vgpumon.linux.containers`); its log is the
file its runtime writes, in the host's view (docs/configuration.md#ollama):

- Docker's ``json-file`` driver: ``<docker_root>/containers/<id>/<id>-json.log``;
- Kubernetes (any CRI runtime): ``<pods_dir>/<ns>_<pod>_<uid>/<container>/<n>.log``, found
  through kubelet's ``/var/log/containers/<pod>_<ns>_<container>-<id>.log`` symlink, which
  names the container's ID; without that link, the one container directory of the pod whose
  UID the cgroup names, its newest ``<n>.log``.

Both are followed by `FileFollower` (rotation included) under the path found here.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from dataclasses import dataclass

from vgpumon.linux.containers import SHORT_ID, container_id_of, pod_uid_of
from vgpumon.linux.paths import FileView
from vgpumon.linux.procfs import ProcFS

CONTAINERS_DIR = "/var/log/containers"  # kubelet's links, one per container (a fixed path)
_RESTART_LOG = re.compile(r"(\d{1,9})\.log")


class ContainerLogNotFound(LookupError):
    """The process runs in no container, or its container's log file is not where it should
    be; the message says which and what was looked at."""


@dataclass(frozen=True)
class ContainerLog:
    """The log file of one container: `path` as vgpumon opens it, `shown` in the host's view."""

    path: str
    shown: str
    container: str  # runtime://<12 digits>
    kind: str  # "docker json-file", "cri"


def find_container_log(procfs: ProcFS, pid: int, host: FileView, *,
                       docker_root: str, pods_dir: str) -> ContainerLog:
    """The log file of the container process `pid` runs in; `ContainerLogNotFound` if none."""
    try:
        cgroup = procfs.read(pid, "cgroup")
    except OSError as err:
        raise ContainerLogNotFound(
            f"cannot read {procfs.path(pid, 'cgroup')}: {err.strerror}") from None
    found = container_id_of(cgroup)
    if found is None:
        raise ContainerLogNotFound(
            f"the Ollama server (pid {pid}) runs in no container (its cgroup names none); "
            "ollama.log: {container: auto} needs one")
    runtime, cid = found
    label = f"{runtime}://{cid[:SHORT_ID]}"
    docker = posixpath.join(docker_root, "containers", cid, f"{cid}-json.log")
    if _is_file(host, docker):
        return ContainerLog(host.outside(host.realpath(docker)), docker, label,
                            "docker json-file")
    cri = _cri_log(host, cid, cgroup, pods_dir)
    if cri is not None:
        return ContainerLog(host.outside(cri), cri, label, "cri")
    raise ContainerLogNotFound(
        f"no log file of {label} (pid {pid}) in the {host.label} view: neither {docker} "
        f"(Docker's json-file driver; docker_root) nor a {CONTAINERS_DIR}/*-{cid[:SHORT_ID]}…"
        f".log link or a pod directory under {pods_dir} (pods_dir)")


def _cri_log(host: FileView, cid: str, cgroup: bytes, pods_dir: str) -> str | None:
    """The CRI log of container `cid`: through kubelet's link, else through the pod's UID."""
    suffix = f"-{cid}.log"
    for name in _listing(host, CONTAINERS_DIR):
        if name.endswith(suffix):
            try:
                target = host.realpath(posixpath.join(CONTAINERS_DIR, name), strict=True)
            except OSError:
                continue  # a dangling link: the container's log is gone
            if _is_file(host, target):
                return target
    uid = pod_uid_of(cgroup)
    if uid is None:
        return None
    pods = [n for n in _listing(host, pods_dir) if n.endswith(f"_{uid}")]
    if len(pods) != 1:
        return None
    pod = posixpath.join(pods_dir, pods[0])
    containers = [n for n in _listing(host, pod) if _is_dir(host, posixpath.join(pod, n))]
    if len(containers) != 1:
        return None  # which of them is the server's, only the link says
    directory = posixpath.join(pod, containers[0])
    logs = [(int(m[1]), n) for n in _listing(host, directory)
            if (m := _RESTART_LOG.fullmatch(n))]
    for _, name in sorted(logs, reverse=True):
        path = posixpath.join(directory, name)
        if _is_file(host, path):
            return path
    return None


def _listing(view: FileView, path: str) -> list[str]:
    try:
        return sorted(os.listdir(view.outside(view.realpath(path, strict=True))))
    except OSError:
        return []


def _is_file(view: FileView, path: str) -> bool:
    try:
        return stat.S_ISREG(view.stat(path).st_mode)
    except OSError:
        return False


def _is_dir(view: FileView, path: str) -> bool:
    try:
        return stat.S_ISDIR(view.stat(path).st_mode)
    except OSError:
        return False
