"""Container identity from /proc/PID/cgroup, for each runtime's cgroup naming."""

from __future__ import annotations

import pytest

from vgpumon.linux.containers import container_of

ID = "0123456789abcdef" * 4


@pytest.mark.parametrize(("cgroup", "container"), [
    (f"0::/system.slice/docker-{ID}.scope\n", "docker://0123456789ab"),
    (f"12:pids:/docker/{ID}\n1:name=systemd:/docker/{ID}\n", "docker://0123456789ab"),
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/"
     f"cri-containerd-{ID}.scope\n", "containerd://0123456789ab"),
    (f"0::/kubepods/burstable/pod5a8d-11/{ID}\n", "containerd://0123456789ab"),
    (f"0::/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope\n", "cri-o://0123456789ab"),
    (f"0::/machine.slice/libpod-{ID}.scope/container\n", "podman://0123456789ab"),
    (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n",
     "podman://0123456789ab"),
    ("0::/system.slice/ollama.service\n", None),
    ("0::/\n", None),
    ("", None),
    (b"\xff\xfe garbage".decode("latin-1"), None),
])
def test_container_of(cgroup, container):
    assert container_of(cgroup.encode("utf-8", "surrogateescape")) == container

