"""Where `libcuda.so.1` lands in a process, found with the loader model in real files
(vgpumon/sources/landing.py), and what the expectation rules make of it: a CUDA backend built
with a `RUNPATH` of `$ORIGIN` next to a `libcuda.so.1` link, `LD_LIBRARY_PATH` ahead of that
`RUNPATH`, a link reached only through an `ld.so.cache` that `ldconfig` built, a preloaded shim
that carries the driver's SONAME. Where the host's own loader can run the files, it is asked
too (tests/doctor/oracle.py): the file it maps for `libcuda.so.1` is the landing's. Answers are
kept per (root, environment, asking object) and resolved again once a link changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.doctor.oracle import build_host, run_loader
from vgpumon.config.schema import RUNNER, Config, LibrarySpec, LinkSpec
from vgpumon.linux.paths import HOST, FileView
from vgpumon.linux.procfs import ProcFS
from vgpumon.snapshot.expectations import (
    LINK,
    LINK_TO_REAL,
    Bypass,
    Expectation,
    bypasses,
    expectations,
)
from vgpumon.sources.landing import Landing, LandingResolver, resolve_landing
from vgpumon.sources.libraries import LibraryMapping, ProcessLibraries
from vgpumon.sources.loader_env import LoaderVariables

GCC = shutil.which("gcc")
LDCONFIG = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig")
                                        else None)
pytestmark = pytest.mark.skipif(GCC is None, reason="needs gcc")
SOURCE = "int cuInit(unsigned int flags){return (int)flags;}"


def so(path: Path, soname: str, *flags: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.parent / f".{path.name}.c"
    source.write_text(SOURCE)
    subprocess.run([GCC, "-shared", "-fPIC", "-Wl,--no-as-needed", "-o", str(path),
                    str(source), f"-Wl,-soname,{soname}", *flags], check=True,
                   capture_output=True)
    source.unlink()
    return path


class Host:
    """A vGPU host's files under `base` (paths as a process on this host sees them): the
    shim and the real driver in lib64, Ollama's CUDA backend in lib/ollama/cuda_v13 with
    a RUNPATH of $ORIGIN, and a `libcuda.so.1` link beside it."""

    def __init__(self, base: Path, *, shim_soname: str = "libvgpu-cuda.so"):
        self.base = base
        self.lib64 = base / "usr/lib64"
        self.cuda_dir = base / "usr/local/lib/ollama/cuda_v13"
        self.shim = so(self.lib64 / "libvgpu-cuda.so", shim_soname)
        self.real = so(self.lib64 / "libcuda.so.580.65.06", "libcuda.so.1")
        (self.lib64 / "libcuda.so.1").symlink_to("libcuda.so.580.65.06")
        self.link = self.cuda_dir / "libcuda.so.1"
        self.cuda_dir.mkdir(parents=True)
        self.link.symlink_to(self.shim)
        # linked against the real driver's SONAME, found at build time through lib64
        self.backend = so(self.cuda_dir / "libggml-cuda.so", "libggml-cuda.so",
                          f"-L{self.lib64}", "-l:libcuda.so.1", "-Wl,-rpath,$ORIGIN",
                          "-Wl,--enable-new-dtags")

    def config(self) -> Config:
        base = Config()
        libraries = tuple(LibrarySpec(spec.name, path=str(self.shim), stands_for=spec.stands_for)
                          if spec.name == "vgpu-cuda" else spec for spec in base.libraries)
        return Config(libraries=libraries, links=(LinkSpec(str(self.link), str(self.shim)),))


@pytest.fixture(scope="module")
def loader_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_host(tmp_path_factory.mktemp("loader-host"))


def land(host: Host, executable: Path, **variables: str) -> Landing:
    loader = LoaderVariables(ld_library_path=variables.get("LD_LIBRARY_PATH"),
                             ld_preload=variables.get("LD_PRELOAD"))
    found = resolve_landing(HOST, loader, str(executable), str(host.base), str(host.backend),
                            "libcuda.so.1", (str(host.link),))
    assert found is not None
    return found


def real_loader_maps(loader_host: Path, host: Host, **variables: str) -> frozenset[str]:
    run = run_loader(loader_host, str(host.backend), cwd=host.base,
                     ld_library_path=variables.get("LD_LIBRARY_PATH"),
                     ld_preload=variables.get("LD_PRELOAD"))
    assert run.error is None, run.error
    return run.mapped


def judge(host: Host, landing: Landing, mapped: frozenset[str], preload: tuple[str, ...] = ()):
    """The runner's expectations and bypasses from what it maps and where libcuda.so.1 lands."""
    config = host.config()
    names = {str(host.shim): "vgpu-cuda", str(host.real): "cuda-driver",
             str(host.backend): "ggml-cuda"}
    libraries = ProcessLibraries(True, mappings=tuple(
        LibraryMapping(names[path], path, False, False) for path in sorted(mapped)
        if path in names))
    loader = LoaderVariables(preload=preload)
    landings = {"vgpu-cuda": landing}
    expected = expectations(config.group(RUNNER), config, loader, libraries, landings)
    sonames = {"vgpu-cuda": "libvgpu-cuda.so", "cuda-driver": "libcuda.so.1"}
    return expected, bypasses(config, expected, libraries, sonames, frozenset(), landings)


def test_the_backends_runpath_reaches_the_link_next_to_it(tmp_path, loader_host):
    host = Host(tmp_path)
    landing = land(host, loader_host)
    assert landing == Landing("libcuda.so.1", str(host.shim), (str(host.link),))
    assert str(host.shim) in real_loader_maps(loader_host, host)
    expected, gone = judge(host, landing, frozenset({str(host.shim), str(host.backend)}))
    assert Expectation("vgpu-cuda", LINK) in expected and gone == ()


def test_ld_library_path_comes_before_the_runpath(tmp_path, loader_host):
    """LD_LIBRARY_PATH=/usr/lib64 (the real driver's libcuda.so.1) is searched before the
    backend's RUNPATH: the link next to the backend is never reached, so the shim is not
    expected through it, and its absence is no bypass."""
    host = Host(tmp_path)
    variables = {"LD_LIBRARY_PATH": str(host.lib64)}
    landing = land(host, loader_host, **variables)
    assert landing == Landing("libcuda.so.1", str(host.real))
    mapped = real_loader_maps(loader_host, host, **variables)
    assert str(host.real) in mapped and str(host.shim) not in mapped
    expected, gone = judge(host, landing, mapped)
    assert all(e.library != "vgpu-cuda" for e in expected) and gone == ()


def test_the_link_pointed_at_the_real_driver_is_a_bypass(tmp_path, loader_host):
    host = Host(tmp_path)
    host.link.unlink()
    host.link.symlink_to(host.real)
    landing = land(host, loader_host)
    assert landing == Landing("libcuda.so.1", str(host.real), (str(host.link),))
    mapped = real_loader_maps(loader_host, host)
    expected, gone = judge(host, landing, mapped)
    assert Expectation("vgpu-cuda", LINK) in expected
    assert gone == (Bypass("vgpu-cuda", "cuda-driver", LINK_TO_REAL),)


@pytest.mark.parametrize("shim_soname", ["libvgpu-cuda.so", "libcuda.so.1"])
def test_a_preloaded_shim_is_handed_out_only_when_it_carries_the_soname(tmp_path, loader_host,
                                                                        shim_soname):
    """All preloaded, the link at the real driver: glibc gives the backend the preloaded shim
    only if it answers to libcuda.so.1; else it searches, and the link gives the real one."""
    host = Host(tmp_path, shim_soname=shim_soname)
    host.link.unlink()
    host.link.symlink_to(host.real)
    variables = {"LD_PRELOAD": str(host.shim)}
    landing = land(host, loader_host, **variables)
    mapped = real_loader_maps(loader_host, host, **variables)
    _, gone = judge(host, landing, mapped, preload=(str(host.shim),))
    if shim_soname == "libcuda.so.1":
        assert landing == Landing("libcuda.so.1", str(host.shim), preloaded=True)
        assert str(host.real) not in mapped
        assert gone == ()
    else:
        assert landing.path == str(host.real) and not landing.preloaded
        assert {str(host.shim), str(host.real)} <= mapped
        assert gone == (Bypass("vgpu-cuda", "cuda-driver", LINK_TO_REAL),)


@pytest.mark.skipif(LDCONFIG is None, reason="needs ldconfig")
@pytest.mark.parametrize("first", ["/opt/vgpu/lib", "/usr/lib/x86_64-linux-gnu"])
def test_a_link_reached_only_through_ld_so_cache(tmp_path, first):
    """In another root (a container): /opt/vgpu/lib is on no search path, only in the
    ld.so.cache that ldconfig built from its ld.so.conf; its libcuda.so.1 link (to a shim that
    carries that SONAME, as ldconfig files a library under its SONAME) is what the backend
    gets when that directory comes first in the cache, the real driver otherwise."""
    root = tmp_path / "root"
    vgpu, system = root / "opt/vgpu/lib", root / "usr/lib/x86_64-linux-gnu"
    shim = so(vgpu / "libvgpu-cuda.so", "libcuda.so.1")
    (vgpu / "libcuda.so.1").symlink_to("libvgpu-cuda.so")
    so(system / "libcuda.so.580.65.06", "libcuda.so.1")
    (system / "libcuda.so.1").symlink_to("libcuda.so.580.65.06")
    backend = so(root / "usr/lib/ollama/cuda_v13/libggml-cuda.so", "libggml-cuda.so",
                 f"-L{system}", "-l:libcuda.so.1", "-Wl,-rpath,$ORIGIN", "-Wl,--enable-new-dtags")
    (root / "etc").mkdir()
    order = [first, *({"/opt/vgpu/lib", "/usr/lib/x86_64-linux-gnu"} - {first})]
    (root / "etc/ld.so.conf").write_text("\n".join(order) + "\n")
    subprocess.run([LDCONFIG, "-X", "-r", str(root), "-f", "/etc/ld.so.conf",
                    "-C", "/etc/ld.so.cache"], check=True, capture_output=True)
    view = FileView(str(root), "container")
    inside = "/" + str(backend.relative_to(root))
    found = resolve_landing(view, LoaderVariables(), None, "/", inside, "libcuda.so.1",
                            ("/opt/vgpu/lib/libcuda.so.1",))
    if first == "/opt/vgpu/lib":
        assert found == Landing("libcuda.so.1", "/opt/vgpu/lib/libvgpu-cuda.so",
                                ("/opt/vgpu/lib/libcuda.so.1",))
        assert shim.exists()
    else:
        assert found == Landing("libcuda.so.1",
                                "/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06")
    (root / "etc/ld.so.cache").unlink()  # without the cache: the default dirs only
    found = resolve_landing(view, LoaderVariables(), None, "/", inside, "libcuda.so.1",
                            ("/opt/vgpu/lib/libcuda.so.1",))
    assert found is not None and found.through == ()


def test_answers_are_kept_per_environment_until_a_link_changes(tmp_path):
    """Two runners of one server (same root, environment and backend) cost one resolution;
    another LD_LIBRARY_PATH is another answer; after `invalidate` (a link changed) the
    same question is resolved again and sees the new link."""
    host = Host(tmp_path)
    resolver = LandingResolver(ProcFS("/proc"), (str(host.link),))
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    sleepers = [subprocess.Popen(sleep, cwd=tmp_path) for _ in range(3)]
    try:
        same = LoaderVariables(ld_library_path="/nowhere")
        first = resolver.landing(sleepers[0].pid, same, str(host.backend), "libcuda.so.1", 0.0)
        second = resolver.landing(sleepers[1].pid, same, str(host.backend), "libcuda.so.1", 1.0)
        assert first == second == Landing("libcuda.so.1", str(host.shim), (str(host.link),))
        assert resolver.resolutions == 1
        other = LoaderVariables(ld_library_path=str(host.lib64))
        assert resolver.landing(sleepers[2].pid, other, str(host.backend), "libcuda.so.1",
                                1.0) == Landing("libcuda.so.1", str(host.real))
        assert resolver.resolutions == 2
        host.link.unlink()
        host.link.symlink_to(host.real)
        kept = resolver.landing(sleepers[0].pid, same, str(host.backend), "libcuda.so.1", 2.0)
        assert kept == first and resolver.resolutions == 2
        resolver.invalidate()
        again = resolver.landing(sleepers[0].pid, same, str(host.backend), "libcuda.so.1", 3.0)
        assert again == Landing("libcuda.so.1", str(host.real), (str(host.link),))
        assert resolver.resolutions == 3
        unknown = LoaderVariables(known=False)
        assert resolver.landing(sleepers[0].pid, unknown, str(host.backend), "libcuda.so.1",
                                3.0) is None
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a private mount namespace")
def test_a_runner_in_another_mount_namespace_over_the_same_root_is_resolved_in_its_view(
        tmp_path):
    """The unit's PrivateTmp=/ProtectHome= give the daemon its own /tmp and /home over the
    same "/": a runner's root has the daemon's (dev, ino), but its files there differ. Here
    the runner sees another backend dir, whose libcuda.so.1 is the real driver; the daemon
    still sees the link to the shim. The runner's view is the one resolved."""
    host = Host(tmp_path / "host")
    theirs = tmp_path / "runner-cuda"
    theirs.mkdir()
    shutil.copy(host.backend, theirs / host.backend.name)
    (theirs / "libcuda.so.1").symlink_to(host.real)
    script = f'mount --bind "{theirs}" "{host.cuda_dir}" && exec "$@"'
    runner = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
         sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path)
    try:
        procfs = ProcFS("/proc")
        deadline = time.monotonic() + 30
        # Until the shell has mounted and exec'd Python (its own argv names time.sleep too).
        while (Path(f"/proc/{runner.pid}/cmdline").read_bytes().split(b"\0")[0]
               != sys.executable.encode()):
            assert runner.poll() is None and time.monotonic() < deadline, "runner did not start"
            time.sleep(0.02)
        theirs_root, ours_root = os.stat(f"/proc/{runner.pid}/root"), os.stat("/")
        assert (theirs_root.st_dev, theirs_root.st_ino) == (ours_root.st_dev, ours_root.st_ino)
        resolver = LandingResolver(procfs, (str(host.link),))
        found = resolver.landing(runner.pid, LoaderVariables(), str(host.backend),
                                 "libcuda.so.1", 0.0)
        assert found == Landing("libcuda.so.1", str(host.real), (str(host.link),))
        ours = resolve_landing(HOST, LoaderVariables(), None, "/", str(host.backend),
                               "libcuda.so.1", (str(host.link),))
        assert ours == Landing("libcuda.so.1", str(host.shim), (str(host.link),))
    finally:
        runner.kill()
        runner.wait()
