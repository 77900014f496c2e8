"""The Ollama log of a server in a container: finding the file its runtime writes (Docker's
json-file, Kubernetes' CRI files) from the server's cgroup, over fixture trees of /proc, the
Docker data root and /var/log/pods; following a json-file log as it is appended and rotated;
and the daemon's ``container: auto`` source, which fails while it finds nothing and follows the
new file of a restarted container."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.core.fakeproc import FakeProc
from vgpumon.config.loading import parse_config
from vgpumon.daemon.exitclassifier import ExitClassifier
from vgpumon.daemon.ollama_watch import OllamaKnowledge, OllamaLog
from vgpumon.daemon.source import SourceFailure
from vgpumon.linux.containers import container_id_of, pod_uid_of
from vgpumon.linux.paths import FileView
from vgpumon.linux.procfs import ProcFS
from vgpumon.model.events import Event
from vgpumon.ollama.container_log import DOCKER_JSON, LineJoiner
from vgpumon.ollama.replay import records_of_line
from vgpumon.snapshot.observer import HostObserver
from vgpumon.sources.container_logs import ContainerLogNotFound, find_container_log
from vgpumon.sources.ollama_log import FileFollower

ID = "4c01db0b339c" + "0123456789abcdef" * 3 + "0123"
OTHER = "9f" * 32
POD_UID = "5a8d1e2f-1111-2222-3333-444455556666"
DOCKER_CGROUP = f"0::/system.slice/docker-{ID}.scope\n"
CRI_CGROUP = (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
              f"{POD_UID.replace('-', '_')}.slice/cri-containerd-{ID}.scope\n")
HOST_CGROUP = "0::/system.slice/ollama.service\n"
POD_DIR = f"/var/log/pods/ai_ollama-0_{POD_UID}"


def version_line(version: str, when: float = 1741165248.12) -> str:
    ts = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return (f"time={ts} level=INFO source=routes.go:1554 "
            f'msg="Listening on [::]:11434 (version {version})"')


def json_entry(line: str, when: float, *, partial: bool = False) -> str:
    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"
    return json.dumps({"log": line + ("" if partial else "\n"), "stream": "stderr",
                       "time": stamp}, separators=(",", ":")) + "\n"


def append(path: Path, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[FakeProc, Path]:
    proc = FakeProc(tmp_path / "proc")
    root = tmp_path / "root"
    root.mkdir()
    return proc, root


def add_server(proc: FakeProc, pid: int, cgroup: str, start_ticks: int = 100) -> None:
    proc.add(pid, "ollama", ["/bin/ollama", "serve"], start_ticks=start_ticks)
    (proc.root / str(pid) / "cgroup").write_text(cgroup)


def docker_log(root: Path, cid: str = ID, docker_root: str = "var/lib/docker") -> Path:
    directory = root / docker_root / "containers" / cid
    directory.mkdir(parents=True)
    path = directory / f"{cid}-json.log"
    path.write_text("")
    return path


def cri_log(root: Path, *, link: bool = True, restarts: int = 0, cid: str = ID) -> Path:
    container = root / POD_DIR.lstrip("/") / "ollama"
    container.mkdir(parents=True, exist_ok=True)
    for n in range(restarts + 1):
        (container / f"{n}.log").write_text("")
    path = container / f"{restarts}.log"
    (root / POD_DIR.lstrip("/") / "sidecar").mkdir(exist_ok=True)
    links = root / "var/log/containers"
    links.mkdir(parents=True, exist_ok=True)
    os.symlink(f"{POD_DIR}/sidecar/0.log", links / f"ollama-0_ai_sidecar-{OTHER}.log")
    if link:  # kubelet's link names an absolute path of the host: resolved inside the root
        os.symlink(f"{POD_DIR}/ollama/{restarts}.log", links / f"ollama-0_ai_ollama-{cid}.log")
    return path


def find(proc: FakeProc, root: Path, pid: int = 4100, docker_root: str = "/var/lib/docker"):
    return find_container_log(ProcFS(str(proc.root)), pid, FileView(str(root), "host"),
                              docker_root=docker_root, pods_dir="/var/log/pods")


# --- cgroups -----------------------------------------------------------------------------------


def test_container_id_and_pod_uid_from_the_cgroup():
    assert container_id_of(DOCKER_CGROUP.encode()) == ("docker", ID)
    assert container_id_of(CRI_CGROUP.encode()) == ("containerd", ID)
    assert container_id_of(HOST_CGROUP.encode()) is None
    assert pod_uid_of(CRI_CGROUP.encode()) == POD_UID
    assert pod_uid_of(f"0::/kubepods/burstable/pod{POD_UID}/{ID}\n".encode()) == POD_UID
    assert pod_uid_of(DOCKER_CGROUP.encode()) is None
    assert pod_uid_of(b"\xff" * 100) is None


# --- finding the file --------------------------------------------------------------------------


def test_docker_json_file_of_the_servers_container(tree):
    proc, root = tree
    add_server(proc, 4100, DOCKER_CGROUP)
    path = docker_log(root)
    found = find(proc, root)
    assert (found.path, found.container, found.kind) == (
        str(path), f"docker://{ID[:12]}", "docker json-file")
    assert found.shown == f"/var/lib/docker/containers/{ID}/{ID}-json.log"


def test_docker_root_is_configurable(tree):
    proc, root = tree
    add_server(proc, 4100, DOCKER_CGROUP)
    path = docker_log(root, docker_root="data/docker")
    assert find(proc, root, docker_root="/data/docker").path == str(path)
    with pytest.raises(ContainerLogNotFound, match="docker_root"):
        find(proc, root)


def test_cri_file_through_kubelets_link(tree):
    proc, root = tree
    add_server(proc, 4100, CRI_CGROUP)
    path = cri_log(root, restarts=2)
    found = find(proc, root)
    assert (found.path, found.kind, found.container) == (str(path), "cri",
                                                         f"containerd://{ID[:12]}")
    assert found.shown == f"{POD_DIR}/ollama/2.log"


def test_cri_file_through_the_pod_uid_without_the_link(tree):
    proc, root = tree
    add_server(proc, 4100, CRI_CGROUP)
    path = cri_log(root, link=False, restarts=1)
    (root / POD_DIR.lstrip("/") / "sidecar").rmdir()  # one container: it must be the server's
    assert find(proc, root).path == str(path)


def test_cri_file_of_a_pod_with_several_containers_needs_the_link(tree):
    proc, root = tree
    add_server(proc, 4100, CRI_CGROUP)
    cri_log(root, link=False)
    with pytest.raises(ContainerLogNotFound, match="pods_dir"):
        find(proc, root)


def test_a_dangling_link_is_passed_over(tree):
    proc, root = tree
    add_server(proc, 4100, CRI_CGROUP)
    links = root / "var/log/containers"
    links.mkdir(parents=True)
    os.symlink(f"{POD_DIR}/ollama/0.log", links / f"ollama-0_ai_ollama-{ID}.log")
    with pytest.raises(ContainerLogNotFound, match=f"no log file of containerd://{ID[:12]}"):
        find(proc, root)


def test_a_server_on_the_host_has_no_container_log(tree):
    proc, root = tree
    add_server(proc, 4100, HOST_CGROUP)
    docker_log(root)
    with pytest.raises(ContainerLogNotFound, match="runs in no container"):
        find(proc, root)


def test_an_unreadable_cgroup_is_a_clear_failure(tree):
    proc, root = tree
    with pytest.raises(ContainerLogNotFound, match=r"cannot read .*/4100/cgroup"):
        find(proc, root)


# --- following a json-file log -----------------------------------------------------------------


def records(follower: FileFollower, joiner: LineJoiner) -> list[str]:
    return [r.msg for line in follower.read_lines()
            for r in records_of_line(line, follower.format, UTC, joiner=joiner) or ()]


def test_a_json_file_log_is_followed_as_appended_and_rotated(tmp_path):
    path = tmp_path / f"{ID}-json.log"
    path.write_text(json_entry(version_line("0.13.0"), 1.0) * 3)  # history: not read again
    follower = FileFollower(str(path))
    joiner = LineJoiner()
    try:
        assert follower.format == DOCKER_JSON
        assert records(follower, joiner) == []
        long = version_line("0.13.1") + " " + "k=v " * 6000  # over 16 KiB: in two pieces
        half = len(long) // 2
        append(path, json_entry(long[:half], 2.0, partial=True))
        assert records(follower, joiner) == []  # the line has not ended yet
        append(path, json_entry(long[half:], 2.0) + json_entry("load_tensors: x", 3.0))
        assert records(follower, joiner) == ["Listening on [::]:11434 (version 0.13.1)",
                                             "load_tensors: x"]
        # Docker's rotation (max-size): -json.log → -json.log.1, a new -json.log
        append(path, json_entry(version_line("0.13.2"), 4.0))
        os.rename(path, f"{path}.1")
        path.write_text(json_entry(version_line("0.13.3"), 5.0))
        assert records(follower, joiner) == ["Listening on [::]:11434 (version 0.13.2)",
                                             "Listening on [::]:11434 (version 0.13.3)"]
        assert follower.format == DOCKER_JSON
        append(path, json_entry(version_line("0.13.4"), 6.0))
        assert records(follower, joiner) == ["Listening on [::]:11434 (version 0.13.4)"]
        tail = [r.msg for line in follower.catch_up(0.0)
                for r in records_of_line(line, follower.format, UTC) or ()]
        assert tail == ["Listening on [::]:11434 (version 0.13.3)",
                        "Listening on [::]:11434 (version 0.13.4)"]
    finally:
        follower.close()


def test_the_format_of_an_empty_file_is_told_from_its_first_lines(tmp_path):
    path = tmp_path / "0.log"
    path.write_text("")
    follower = FileFollower(str(path))
    try:
        assert follower.format == "plain"
        append(path, "\n" + f"2025-03-05T09:00:48.123456789Z stderr F {version_line('0.9.0')}\n")
        assert records(follower, LineJoiner()) == ["", "Listening on [::]:11434 (version 0.9.0)"]
        assert follower.format == "cri"
    finally:
        follower.close()


def test_a_plain_file_stays_plain(tmp_path):
    path = tmp_path / "ollama.log"
    path.write_text(version_line("0.9.0") + "\n" + "load_tensors: offloaded 1/1 layers\n")
    follower = FileFollower(str(path))
    try:
        assert follower.format == "plain"
    finally:
        follower.close()


# --- the daemon's container: auto source -------------------------------------------------------


class FakeLoop:
    """The parts of the daemon's loop the Ollama log source uses."""

    def __init__(self, config_text: str):
        self.config = parse_config(config_text)
        self.observer = HostObserver(self.config)
        self.classifier = ExitClassifier(status_source=None, kernel_log=False, ollama_log=False)
        self.handlers: dict[int, Callable[[float], float | None]] = {}
        self.recorded: list[Event] = []
        self.absent: dict[str, bool] = {}

    def watch(self, fd: int, collector: str, handler: Callable[[float], float | None]) -> None:
        self.handlers[fd] = handler

    def unwatch(self, fd: int) -> None:
        self.handlers.pop(fd, None)

    def set_absent(self, collector: str, absent: bool) -> None:
        self.absent[collector] = absent

    def set_ollama(self, state: object) -> None:
        pass

    def apply(self, state: object, extra: Iterable[Event] = ()) -> None:
        pass

    def record(self, events: Iterable[Event], now: float) -> None:
        self.recorded += events

    def readable(self, now: float) -> None:
        for handler in list(self.handlers.values()):
            handler(now)

    def versions(self) -> list[str]:
        return [e.get("version") for e in self.recorded if e.kind == "ollama_version"]


def test_container_auto_follows_the_servers_container_and_its_restarts(tree):
    proc, root = tree
    loop = FakeLoop(f"""
procfs: {proc.root}
rootfs: {root}
links: []
ollama: {{log: {{container: auto}}}}
""")
    source = OllamaLog(OllamaKnowledge())
    with pytest.raises(SourceFailure, match="no Ollama server runs"):
        source.start(loop)  # type: ignore[arg-type]
    assert loop.absent == {"ollama_log": False}

    add_server(proc, 4100, HOST_CGROUP, start_ticks=100)
    loop.observer.refresh(proc.start_time(100) + 1)
    with pytest.raises(SourceFailure, match="runs in no container"):
        source.after_refresh(0.0)

    add_server(proc, 4100, DOCKER_CGROUP, start_ticks=100)
    with pytest.raises(SourceFailure, match="no log file of docker://4c01db0b339c"):
        source.after_refresh(0.0)  # retried at each refresh
    started = proc.start_time(100)
    path = docker_log(root)
    path.write_text(json_entry(version_line("0.1.0", started - 50), started - 50)  # last run
                    + json_entry(version_line("0.2.0", started + 1), started + 1))
    source.after_refresh(started + 2)  # found: what the new server wrote are new events
    assert loop.versions() == ["0.2.0"]
    assert loop.classifier.ollama_log

    append(path, json_entry(version_line("0.3.0", started + 3), started + 3))
    loop.readable(started + 3)
    assert loop.versions() == ["0.2.0", "0.3.0"]

    # the container restarted: a new container, a new server, a new log file
    proc.remove(4100)
    add_server(proc, 4200, f"0::/system.slice/docker-{OTHER}.scope\n", start_ticks=900)
    restarted = proc.start_time(900)
    loop.observer.refresh(restarted + 1)
    new = docker_log(root, OTHER)
    new.write_text(json_entry(version_line("0.4.0", restarted + 0.5), restarted + 0.5))
    source.after_refresh(restarted + 1)
    assert loop.versions() == ["0.2.0", "0.3.0", "0.4.0"]
    append(path, json_entry(version_line("0.3.9", started + 4), started + 4))  # not followed
    append(new, json_entry(version_line("0.5.0", restarted + 2), restarted + 2))
    loop.readable(restarted + 2)
    assert loop.versions() == ["0.2.0", "0.3.0", "0.4.0", "0.5.0"]
    source.close()


def test_container_auto_at_start_catches_up_then_follows(tree):
    proc, root = tree
    add_server(proc, 4100, DOCKER_CGROUP, start_ticks=100)
    started = proc.start_time(100)
    path = docker_log(root)
    path.write_text(json_entry(version_line("0.2.0", started + 1), started + 1))
    loop = FakeLoop(f"""
procfs: {proc.root}
rootfs: {root}
links: []
ollama: {{log: {{container: auto}}}}
""")
    loop.observer.refresh(started + 2)
    knowledge = OllamaKnowledge()
    source = OllamaLog(knowledge)
    source.start(loop)  # type: ignore[arg-type]
    assert loop.recorded == []  # history: what the log says, not new events
    assert knowledge.facts.state(None, {}).version == "0.2.0"
    source.after_refresh(started + 3)
    # `docker restart`: a new server in the same container, which keeps its log file
    proc.remove(4100)
    add_server(proc, 4300, DOCKER_CGROUP, start_ticks=500)
    loop.observer.refresh(proc.start_time(500) + 1)
    append(path, json_entry(version_line("0.2.1", proc.start_time(500) + 1),
                            proc.start_time(500) + 1))
    source.after_refresh(proc.start_time(500) + 1)
    loop.readable(proc.start_time(500) + 2)
    assert loop.versions() == ["0.2.1"]  # read once, from the file already followed
    source.close()
