"""The observer's full refresh skips a maps whose process's address space kept its size, and
only then: over a fixture /proc tree whose stat and maps are changed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.core.fakeproc import FakeProc, maps_line_for
from vgpumon.config.loading import parse_config
from vgpumon.snapshot import observer as observer_module
from vgpumon.snapshot.observer import HostObserver
from vgpumon.sources.landing import Landing
from vgpumon.sources.libraries import ProcessLibraries
from vgpumon.sources.loader_env import LoaderVariables

RUNNER = ["/usr/local/bin/ollama", "runner", "--model", "/m/blobs/sha256-aa", "--port", "1"]


@pytest.fixture
def host(tmp_path):
    lib64 = tmp_path / "root/usr/lib64"
    lib64.mkdir(parents=True)
    for name in ("libvgpu-cuda.so", "libvgpu-exec.so"):
        (lib64 / name).write_bytes(name.encode())
    proc = FakeProc(tmp_path / "proc")
    config = parse_config(f"""
procfs: {proc.root}
libraries:
  vgpu-cuda: {{path: {lib64}/libvgpu-cuda.so}}
  vgpu-exec: {{path: {lib64}/libvgpu-exec.so}}
shims: [vgpu-cuda, vgpu-exec]
links: []
groups:
  runner: {{cmdline: "ollama runner", expect: [vgpu-cuda, vgpu-exec]}}
""")
    return proc, lib64, HostObserver(config)


def set_vsize(proc: FakeProc, pid: int, vsize: int) -> None:
    stat = proc.root / str(pid) / "stat"
    fields = stat.read_text().split(" ")
    fields[22] = str(vsize)  # pid (comm) state ... starttime vsize: field 23
    stat.write_text(" ".join(fields))


def mapped(observer: HostObserver, now: float) -> set[str]:
    state = observer.refresh(now).processes[0]
    return {m.library for m in state.libraries.mappings}


def test_maps_are_read_again_when_the_address_space_changes_size(host):
    proc, lib64, observer = host
    proc.add(10, "ollama", RUNNER, maps=maps_line_for(str(lib64 / "libvgpu-cuda.so")))
    assert mapped(observer, 1.0) == {"vgpu-cuda"}
    proc.set_maps(10, maps_line_for(str(lib64 / "libvgpu-cuda.so"))
                  + maps_line_for(str(lib64 / "libvgpu-exec.so"), 0x7F0000100000))
    assert mapped(observer, 2.0) == {"vgpu-cuda"}  # same vsize: the last read stands
    set_vsize(proc, 10, 5000)
    assert mapped(observer, 3.0) == {"vgpu-cuda", "vgpu-exec"}


def test_an_event_driven_read_never_skips(host):
    proc, lib64, observer = host
    proc.add(11, "ollama", RUNNER, maps=maps_line_for(str(lib64 / "libvgpu-cuda.so")))
    assert mapped(observer, 1.0) == {"vgpu-cuda"}
    proc.set_maps(11, maps_line_for(str(lib64 / "libvgpu-exec.so")))
    state = observer.refresh_maps(2.0).processes[0]
    assert {m.library for m in state.libraries.mappings} == {"vgpu-exec"}


def test_a_read_for_changed_maps_reads_only_those_whose_size_changed_now(host):
    """What a library opened in a watched directory asks for: a busy host opens the shims at
    every exec, so only a process whose address space changed since (its stat read now, not
    at the last scan) has its maps read again."""
    proc, lib64, observer = host
    proc.add(14, "ollama", RUNNER, maps=maps_line_for(str(lib64 / "libvgpu-cuda.so")))
    proc.add(15, "ollama", RUNNER, maps=maps_line_for(str(lib64 / "libvgpu-cuda.so")))
    observer.refresh(1.0)
    both = maps_line_for(str(lib64 / "libvgpu-cuda.so")) \
        + maps_line_for(str(lib64 / "libvgpu-exec.so"), 0x7F0000100000)
    proc.set_maps(14, both)
    proc.set_maps(15, both)
    set_vsize(proc, 15, 5000)  # 15 loaded a library; 14's change is invisible to its size
    state = observer.refresh_maps(2.0, changed_only=True)
    found = {p.process.pid: {m.library for m in p.libraries.mappings} for p in state.processes}
    assert found == {14: {"vgpu-cuda"}, 15: {"vgpu-cuda", "vgpu-exec"}}


def test_an_unchanged_looking_maps_is_read_again_after_a_while(host, monkeypatch):
    proc, lib64, observer = host
    proc.add(12, "ollama", RUNNER, maps=maps_line_for(str(lib64 / "libvgpu-cuda.so")))
    assert mapped(observer, 1.0) == {"vgpu-cuda"}
    proc.set_maps(12, maps_line_for(str(lib64 / "libvgpu-exec.so")))
    monkeypatch.setattr(observer_module, "MAPS_REREAD_SECONDS", 0.0)
    assert mapped(observer, 2.0) == {"vgpu-exec"}


def test_a_replaced_library_file_makes_every_maps_read_again(host):
    proc, lib64, observer = host
    shim = lib64 / "libvgpu-cuda.so"
    proc.add(13, "ollama", RUNNER, maps=maps_line_for(str(shim)))
    assert mapped(observer, 1.0) == {"vgpu-cuda"}
    proc.set_maps(13, maps_line_for(str(lib64 / "libvgpu-exec.so")))
    (lib64 / "new").write_bytes(b"new build")
    (lib64 / "new").rename(shim)  # a new inode under the configured path
    assert mapped(observer, 2.0) == {"vgpu-exec"}



def test_a_new_ollama_version_judges_every_process_again(tmp_path):
    """A runner expects the CUDA backend only once the server's version says its CUDA code
    is that library: the same maps, judged again when the version becomes known."""
    proc = FakeProc(tmp_path / "proc")
    config = parse_config(f"""
procfs: {proc.root}
groups:
  runner: {{cmdline: "ollama runner", expect: auto}}
""")
    observer = HostObserver(config)
    proc.add(10, "ollama", RUNNER, maps=maps_line_for("/usr/lib/x86_64-linux-gnu/libc.so.6"))

    def backend_expected(now: float) -> bool:
        state = observer.snapshot(now) if now > 1.0 else observer.refresh(now)
        return any(e.library == "ggml-cuda" for e in state.processes[0].expected)

    assert not backend_expected(1.0)  # the version is unknown
    assert observer.set_ollama_version("0.13.5")
    assert backend_expected(2.0)
    assert not observer.set_ollama_version("0.13.5")  # no change, nothing judged again
    assert observer.set_ollama_version("0.5.7")
    assert not backend_expected(3.0)


def test_a_failed_poll_keeps_the_version_the_same_server_gave(tmp_path):
    """An API poll that fails (and no log followed) says "version unknown"; a version does
    not change without a restart, so the same server process keeps the one it gave. A new
    server process starts unknown."""
    proc = FakeProc(tmp_path / "proc")
    config = parse_config(f"""
procfs: {proc.root}
groups:
  server: {{cmdline: "serve", expect: auto}}
  runner: {{cmdline: "ollama runner", expect: auto}}
""")
    observer = HostObserver(config)
    proc.add(5, "ollama", ["/usr/local/bin/ollama", "serve"])
    proc.add(10, "ollama", RUNNER, ppid=5,
             maps=maps_line_for("/usr/lib/x86_64-linux-gnu/libc.so.6"))
    observer.refresh(1.0)

    def backend_expected(now: float) -> bool:
        runner = next(p for p in observer.snapshot(now).processes if p.process.pid == 10)
        return any(e.library == "ggml-cuda" for e in runner.expected)

    assert observer.set_ollama_version("0.13.5")
    assert backend_expected(2.0)
    assert not observer.set_ollama_version(None)  # one poll failed
    assert backend_expected(3.0)
    proc.remove(5)
    proc.add(6, "ollama", ["/usr/local/bin/ollama", "serve"], start_ticks=200)
    observer.refresh(4.0)
    assert observer.set_ollama_version(None)  # a restarted server: unknown until it says
    assert not backend_expected(5.0)


def test_a_landing_not_told_is_asked_again_at_the_next_judgement(host, monkeypatch):
    """A resolution that failed (files unreadable for a moment) is not kept for the
    process's life: the next judgement asks again, and a told landing is then kept."""
    _proc, _lib64, observer = host
    told = Landing("libcuda.so.1", "/usr/lib64/libcuda.so.580.65.06")
    answers = [None, told]
    asked: list[int] = []

    class Resolver:
        def landing(self, pid, loader, requester, name, now):
            asked.append(pid)
            return answers.pop(0) if answers else told

    monkeypatch.setattr(observer, "_resolver", Resolver())
    monkeypatch.setattr(observer_module, "landings_wanted", lambda *args: ("vgpu-cuda",))
    monkeypatch.setattr(observer, "_specs", {"vgpu-cuda": SimpleNamespace(
        stands_for="cuda-driver")})
    process = SimpleNamespace(key=(10, 1), pid=10)
    libraries = ProcessLibraries(True)
    sonames = {"cuda-driver": "libcuda.so.1"}
    group = observer.config.group("runner")

    def landings(now: float) -> dict[str, Landing]:
        return observer._landings_of(process, group, LoaderVariables(), libraries, sonames,
                                     now)

    assert landings(1.0) == {}
    assert landings(2.0) == {"vgpu-cuda": told}
    assert landings(3.0) == {"vgpu-cuda": told}
    assert asked == [10, 10]


def pids(observer: HostObserver, now: float) -> list[int]:
    return [p.process.pid for p in observer.refresh(now).processes]


def test_without_complete_events_every_refresh_lists_proc(host):
    proc, _lib64, observer = host
    assert not observer.events_complete  # the doctor, `vgpumon once`, pidfds, polling
    pids(observer, 1.0)
    proc.add(20, "ollama", RUNNER)
    assert pids(observer, 2.0) == [20]
    assert observer.listings == 2


def test_while_events_are_complete_proc_is_listed_once_per_reconcile_period(host, monkeypatch):
    proc, _lib64, observer = host
    proc.add(21, "ollama", RUNNER)
    observer.events_complete = True
    assert pids(observer, 1.0) == [21]  # the first refresh lists
    proc.add(22, "ollama", RUNNER)  # no exec event reported it
    for now in (2.0, 3.0, 4.0):
        assert pids(observer, now) == [21]  # tracked processes re-read, /proc not listed
    assert observer.listings == 1
    proc.remove(21)  # its exit event was lost with nothing else: a re-read finds it gone
    assert pids(observer, 5.0) == []
    monkeypatch.setattr(observer_module, "RECONCILE_SECONDS", 0.0)
    assert pids(observer, 6.0) == [22]  # the reconcile period is over: listed
    assert observer.listings == 2


def test_lost_events_make_the_next_refresh_list_proc(host):
    proc, _lib64, observer = host
    observer.events_complete = True
    pids(observer, 1.0)
    proc.add(23, "ollama", RUNNER)
    assert pids(observer, 2.0) == []
    observer.events_lost()
    assert pids(observer, 3.0) == [23]
    assert observer.listings == 2
    assert pids(observer, 4.0) == [23]
    assert observer.listings == 2
