"""End to end: Ollama in a mount namespace of its own (a "container": its own
/usr/lib64 with its own shim file and links, bind-mounted over the host's), and vgpumon
reading the host's /proc from another path, as in a DaemonSet.

A host-path-only implementation fails these: it would compare the container's mapping with
the host's file (and call it stale), and it would check the host's link, not the container's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.harness import REPO, Vgpumon, host_config, wait_for, write_config

MODEL = "llama3.2:latest"
PIDS_CGROUP = "/sys/fs/cgroup/pids"


def container(host, lib64: Path, cuda_dir: Path | None = None, cgroup: Path | None = None):
    """A `wrap` for `start_server`: a private mount namespace in which `lib64` (and
    `cuda_dir`) are bind-mounted over the host's directories, optionally in a cgroup."""
    mounts = [(lib64, host.lib64)] + ([(cuda_dir, host.cuda_dir)] if cuda_dir else [])
    script = "".join(f'mount --bind "{src}" "{dst}" && ' for src, dst in mounts)
    if cgroup is not None:
        script = f'echo $$ > "{cgroup}/cgroup.procs" && ' + script
    script += 'exec "$@"'

    def wrap(argv: list[str]) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
                "sh", *argv]

    return wrap


@pytest.fixture
def docker_cgroup():
    """A real cgroup named like Docker's (cgroupfs driver): /docker/<64 hex digits>."""
    container_id = uuid.uuid4().hex + uuid.uuid4().hex
    path = Path(PIDS_CGROUP) / "docker" / container_id
    if not Path(PIDS_CGROUP).is_dir():
        pytest.skip("no cgroup v1 pids hierarchy to name a container cgroup in")
    path.mkdir(parents=True)
    yield container_id, path
    wait_for(lambda: not (path / "cgroup.procs").read_text().strip(), 10,
             message="the container's processes to be gone")
    path.rmdir()
    with contextlib.suppress(OSError):
        path.parent.rmdir()


@pytest.fixture
def host(simhost):
    host = simhost(era="F")
    host.add_model(MODEL)
    return host


def own_copy(directory: Path, where: Path) -> Path:
    """A copy of `directory` with new inodes (symlinks kept as symlinks)."""
    shutil.copytree(directory, where, symlinks=True)
    return where


def mapped_inode(pid: int, basename: str) -> int:
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if line.endswith("/" + basename):
            return int(line.split()[4])
    raise AssertionError(f"{basename} not mapped in {pid}")


def test_shim_mapped_from_the_containers_own_file_is_neither_missing_nor_stale(
        docker_cgroup, host, tmp_path):  # this order: the host goes before its cgroup
    container_id, cgroup = docker_cgroup
    lib64 = own_copy(host.lib64, tmp_path / "ctr-lib64")
    server = host.start_server(wrap=container(host, lib64, cgroup=cgroup))
    runner = server.load_model(MODEL)
    host_inode = os.stat(host.shim("cuda")).st_ino
    assert mapped_inode(runner.pid, "libvgpu-cuda.so") == os.stat(lib64 / "libvgpu-cuda.so").st_ino
    assert mapped_inode(runner.pid, "libvgpu-cuda.so") != host_inode
    daemon = Vgpumon(host_config(host, interval="60s"), tmp_path)
    try:
        for group in ("server", "runner"):
            assert daemon.value("vgpumon_processes_with_library", group=group,
                                library="vgpu-cuda") == 1
            assert daemon.value("vgpumon_processes_stale_library", group=group,
                                library="vgpu-cuda") == 0
            assert daemon.value("vgpumon_process_container_info", group=group,
                                container=f"docker://{container_id[:12]}") == 1
        started = [p for p in daemon.state()["processes"] if p["pid"] == runner.pid]
        assert started[0]["container"] == f"docker://{container_id[:12]}"
    finally:
        daemon.stop()


def test_bypass_inside_the_container_while_the_hosts_link_is_fine(host, simhost, tmp_path):
    plain = simhost(era="F", shim_links=False)  # its directories: no shim links at all
    server = host.start_server(preload_shims=False,
                               wrap=container(host, plain.lib64, plain.cuda_dir))
    server.load_model(MODEL)
    link = str(host.lib64 / "libcuda.so.1")
    target = str(host.shim("cuda"))
    config = host_config(host, interval="60s", links=[
        {"path": link, "target": target},
        {"path": link, "target": target, "view": "server"},
    ])
    daemon = Vgpumon(config, tmp_path)
    try:
        assert daemon.value("vgpumon_processes_bypassing_shim", group="runner") == 1
        assert daemon.value("vgpumon_processes_with_library", group="runner",
                            library="cuda-driver") == 1
        assert daemon.value("vgpumon_shim_link_state", path=link, state="ok", view="host") == 1
        assert daemon.value("vgpumon_shim_link_state", path=link, state="wrong_target",
                            view="server") == 1
    finally:
        daemon.stop()


def test_link_inside_the_container_is_watched(host, tmp_path):
    lib64 = own_copy(host.lib64, tmp_path / "ctr-lib64")
    host.start_server(wrap=container(host, lib64))
    link = str(host.lib64 / "libcuda.so.1")
    config = host_config(host, interval="60s", links=[
        {"path": link, "target": str(host.shim("cuda")), "view": "server"}])
    daemon = Vgpumon(config, tmp_path)
    try:
        assert daemon.value("vgpumon_shim_link_state", path=link, state="ok",
                            view="server") == 1
        os.symlink("libcuda.so.575.51.03", lib64 / "libcuda.so.1.new")
        os.replace(lib64 / "libcuda.so.1.new", lib64 / "libcuda.so.1")  # ln -sf, inside
        daemon.wait_value("vgpumon_shim_link_state", 1, path=link, state="wrong_target",
                          view="server")
        assert (host.lib64 / "libcuda.so.1").readlink().name == "libvgpu-cuda.so"  # host: ok
        event = daemon.wait_event("shim_link_changed")
        assert (event["view"], event["new_target"]) == ("server", "libcuda.so.575.51.03")
    finally:
        daemon.stop()


def test_replacing_the_file_inside_the_container_makes_the_mapping_stale(host, tmp_path):
    lib64 = own_copy(host.lib64, tmp_path / "ctr-lib64")
    server = host.start_server(wrap=container(host, lib64))
    server.load_model(MODEL)
    daemon = Vgpumon(host_config(host, interval="1s"), tmp_path)
    try:
        assert daemon.value("vgpumon_processes_stale_library", group="runner",
                            library="vgpu-cuda") == 0
        shutil.copy(lib64 / "libvgpu-cuda.so", lib64 / "libvgpu-cuda.so.tmp")
        os.replace(lib64 / "libvgpu-cuda.so.tmp", lib64 / "libvgpu-cuda.so")
        daemon.wait_value("vgpumon_processes_stale_library", 1, group="runner",
                          library="vgpu-cuda")
    finally:
        daemon.stop()


def test_procfs_at_another_path_as_in_a_daemonset(host, tmp_path):
    """vgpumon in its own mount namespace with the host's /proc bind-mounted elsewhere."""
    server = host.start_server()
    runner = server.load_model(MODEL)
    hostproc = tmp_path / "host" / "proc"
    hostproc.mkdir(parents=True)
    config = write_config(tmp_path / "vgpumon.yaml",
                          host_config(host, procfs=str(hostproc), events={"file": ""}))
    script = f'mount --bind /proc "{hostproc}" && exec "$@"'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
         sys.executable, "-m", "vgpumon", "once", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(hostproc)  # the bind mount lived in vgpumon's namespace only
    lines = result.stdout.splitlines()
    assert 'vgpumon_processes{group="runner"} 1.0' in lines
    assert 'vgpumon_processes_with_library{group="runner",library="ggml-cuda"} 1.0' in lines
    assert f"pid {runner.pid}" not in result.stderr
