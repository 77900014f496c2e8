"""What a process is expected to map with `expect: auto`, and when it bypasses a shim, for the
layouts real vGPU hosts use (docs/configuration.md#expectations): shims preloaded (all four,
or only libvgpu-exec.so), reached by links only, preloaded with or without the real driver's
SONAME; links right or pointing at the real driver; a cuda_v13 runner beside cuda_v12 links.
Where a name lands is given here (`Landing`); tests/core/test_landing.py finds it with the
loader model in real files.
"""

from __future__ import annotations

import pytest

from vgpumon.config.schema import DISCOVERY, RUNNER, SERVER, Config, LinkSpec
from vgpumon.snapshot.expectations import (
    LINK,
    LINK_TO_REAL,
    PRELOAD,
    REAL_INSTEAD,
    SHADOWED,
    SYSTEM_PRELOAD,
    Bypass,
    Expectation,
    bypasses,
    expectations,
    landings_wanted,
    preload_failures,
)
from vgpumon.sources.landing import Landing
from vgpumon.sources.libraries import LibraryMapping, ProcessLibraries
from vgpumon.sources.loader_env import LoaderVariables, split_path, split_preload

CONFIG = Config()
LIB = "/usr/lib64"
OLLAMA = "/usr/local/lib/ollama"
ALL_FOUR = tuple(f"{LIB}/libvgpu-{s}.so" for s in ("exec", "cuda", "nvml", "cudart"))
REAL_DRIVER = f"{LIB}/libcuda.so.580.65.06"
MODERN = "0.13.5"  # an Ollama whose CUDA code is lib/ollama/cuda_v*/libggml-cuda.so
CUDA_LINKS = (f"{LIB}/libcuda.so.1", f"{OLLAMA}/cuda_v12/libcuda.so.1")  # the built-in links
TO_THE_LINK = Landing("libcuda.so.1", ALL_FOUR[1], through=(CUDA_LINKS[1],))
TO_THE_REAL_DRIVER_BY_THE_LINK = Landing("libcuda.so.1", REAL_DRIVER, through=(CUDA_LINKS[1],))
TO_THE_PRELOADED_SHIM = Landing("libcuda.so.1", ALL_FOUR[1], preloaded=True)


def maps(*pairs: tuple[str, str]) -> ProcessLibraries:
    return ProcessLibraries(readable=True, mappings=tuple(
        LibraryMapping(library, path, False, False) for library, path in pairs))


def group(name: str):
    return CONFIG.group(name)


def runner_maps(*extra: tuple[str, str], cuda: str = "cuda_v13") -> ProcessLibraries:
    return maps((("ggml-cuda", f"{OLLAMA}/{cuda}/libggml-cuda.so")), *extra)


def judge(name: str, loader: LoaderVariables | None, libraries: ProcessLibraries,
          sonames: dict[str, str | None] | None = None, early: frozenset[str] = frozenset(),
          landings: dict[str, Landing] | None = None, version: str | None = MODERN):
    sonames = sonames or {}
    expected = expectations(group(name), CONFIG, loader, libraries, landings, version)
    return expected, bypasses(CONFIG, expected, libraries, sonames, early, landings)


def test_a_modern_server_with_nothing_preloaded_expects_nothing():
    """Since 0.12.4 the server maps no GPU library: the old fixed expectation fired
    VgpuShimNotLoaded forever on a healthy host."""
    expected, gone = judge(SERVER, LoaderVariables(), maps())
    assert expected == () and gone == ()


def test_preloaded_shims_are_expected_in_every_process_and_a_missing_one_failed():
    loader = LoaderVariables(preload=ALL_FOUR)
    libraries = maps(("vgpu-exec", ALL_FOUR[0]), ("vgpu-cuda", ALL_FOUR[1]),
                     ("vgpu-nvml", ALL_FOUR[2]))
    expected, gone = judge(SERVER, loader, libraries)
    assert [(e.library, e.because) for e in expected] == [
        ("vgpu-exec", PRELOAD), ("vgpu-cuda", PRELOAD), ("vgpu-nvml", PRELOAD),
        ("vgpu-cudart", PRELOAD)]
    assert preload_failures(expected, libraries) == ("vgpu-cudart",)
    assert gone == ()


def test_a_preload_by_file_name_and_the_system_preload_file_count():
    loader = LoaderVariables(preload=split_preload("libvgpu-exec.so"),
                             system_preload=split_preload(f"{LIB}/libvgpu-nvml.so\n"))
    expected, _ = judge(DISCOVERY, loader, maps())
    assert expected == (Expectation("vgpu-exec", PRELOAD),
                        Expectation("vgpu-nvml", SYSTEM_PRELOAD))


def test_only_exec_preloaded_and_links_right_is_healthy():
    loader = LoaderVariables(preload=(ALL_FOUR[0],),
                             library_path=split_path(f"{OLLAMA}:{OLLAMA}/cuda_v13"))
    libraries = runner_maps(("vgpu-exec", ALL_FOUR[0]), ("vgpu-cuda", ALL_FOUR[1]),
                            ("cudart", f"{OLLAMA}/cuda_v13/libcudart.so.13.0.48"))
    bundled = Landing("libcudart.so.13", f"{OLLAMA}/cuda_v13/libcudart.so.13.0.48")
    expected, gone = judge(RUNNER, loader, libraries, {"cudart": "libcudart.so.13"},
                           landings={"vgpu-cudart": bundled})
    assert {(e.library, e.because) for e in expected} == {
        ("vgpu-exec", PRELOAD), ("vgpu-cuda", LINK), ("ggml-cuda", "backend")}
    assert gone == ()  # the bundled cudart 13: no cudart link is on a cuda_v13 runner's path


def test_only_exec_preloaded_and_the_link_at_the_real_driver_is_a_bypass():
    """The reported blind spot: libvgpu-exec.so in every process counted as "a shim"."""
    loader = LoaderVariables(preload=(ALL_FOUR[0],))
    libraries = runner_maps(("vgpu-exec", ALL_FOUR[0]), ("cuda-driver", REAL_DRIVER))
    expected, gone = judge(RUNNER, loader, libraries, {"cuda-driver": "libcuda.so.1"},
                           landings={"vgpu-cuda": TO_THE_REAL_DRIVER_BY_THE_LINK})
    assert Expectation("vgpu-cuda", LINK) in expected
    assert gone == (Bypass("vgpu-cuda", "cuda-driver", LINK_TO_REAL),)
    # where it lands is not known (its environment is unreadable): no link expectation
    expected, gone = judge(RUNNER, loader, libraries, {"cuda-driver": "libcuda.so.1"})
    assert Expectation("vgpu-cuda", LINK) not in expected and gone == ()


def test_links_only_layout_is_healthy_and_a_broken_link_is_a_bypass():
    healthy = runner_maps(("vgpu-cuda", ALL_FOUR[1]), ("cuda-driver", REAL_DRIVER))
    expected, gone = judge(RUNNER, LoaderVariables(), healthy, {
        "vgpu-cuda": "libvgpu-cuda.so", "cuda-driver": "libcuda.so.1"})
    assert Expectation("vgpu-cuda", LINK) in expected
    assert gone == ()  # a forwarding shim reached by the link maps the driver beside it
    broken = runner_maps(("cuda-driver", REAL_DRIVER))
    _, gone = judge(RUNNER, LoaderVariables(), broken, {"cuda-driver": "libcuda.so.1"},
                    landings={"vgpu-cuda": TO_THE_REAL_DRIVER_BY_THE_LINK})
    assert gone == (Bypass("vgpu-cuda", "cuda-driver", LINK_TO_REAL),)
    # a libcuda.so.1 found before any link (a real one in LD_LIBRARY_PATH): no link is reached
    elsewhere = Landing("libcuda.so.1", "/opt/cuda/compat/libcuda.so.1")
    expected, gone = judge(RUNNER, LoaderVariables(), broken, {"cuda-driver": "libcuda.so.1"},
                           landings={"vgpu-cuda": elsewhere})
    assert Expectation("vgpu-cuda", LINK) not in expected and gone == ()


@pytest.mark.parametrize(("landing", "bypassed"), [
    (TO_THE_LINK, False),  # the link leads to the preloaded shim: glibc hands out that object
    (TO_THE_REAL_DRIVER_BY_THE_LINK, True),  # the link leads to the real driver
    (TO_THE_PRELOADED_SHIM, False),  # the shim carries libcuda.so.1: no path is searched
])
def test_all_four_preloaded_a_link_at_the_real_driver_is_a_bypass_unless_the_shim_answers(
        landing, bypassed):
    """The shim is in the process by its preload; the runtime's libcuda.so.1 is searched for
    unless a preloaded object answers to it, and a link at the real driver hands out that."""
    loader = LoaderVariables(preload=ALL_FOUR)
    libraries = runner_maps(*((f"vgpu-{s}", path) for s, path in
                              zip(("exec", "cuda", "nvml", "cudart"), ALL_FOUR, strict=True)),
                            ("cuda-driver", REAL_DRIVER))
    sonames = {"vgpu-cuda": "libvgpu-cuda.so", "cuda-driver": "libcuda.so.1"}
    _, gone = judge(RUNNER, loader, libraries, sonames, landings={"vgpu-cuda": landing})
    assert gone == ((Bypass("vgpu-cuda", "cuda-driver", LINK_TO_REAL),) if bypassed else ())


@pytest.mark.parametrize(("shim_soname", "bypassed"), [
    ("libcuda.so.1", False),  # glibc hands out the preloaded shim for libcuda.so.1
    ("libvgpu-cuda.so", True),  # it hands out the real driver the shim loaded
    ("", True),  # a shim without a SONAME answers only to its preload path
    (None, False),  # the shim's file could not be read: nothing is claimed
])
def test_a_preloaded_forwarding_shim_is_shadowed_unless_it_carries_the_drivers_soname(
        shim_soname, bypassed):
    """All four preloaded, links right, the real driver loaded at start by the shim: maps are
    the same either way; the SONAME decides."""
    loader = LoaderVariables(preload=ALL_FOUR)
    libraries = runner_maps(*((f"vgpu-{s}", path) for s, path in
                              zip(("exec", "cuda", "nvml", "cudart"), ALL_FOUR, strict=True)),
                            ("cuda-driver", REAL_DRIVER))
    sonames = {"vgpu-cuda": shim_soname, "cuda-driver": "libcuda.so.1"}
    _, gone = judge(RUNNER, loader, libraries, sonames, early=frozenset({"cuda-driver"}))
    assert gone == ((Bypass("vgpu-cuda", "cuda-driver", SHADOWED),) if bypassed else ())
    # a shim that loads the real driver only when first called was handed out itself
    _, gone = judge(RUNNER, loader, libraries, sonames)
    assert gone == ()


def test_a_cuda_v12_link_means_nothing_to_a_cuda_v13_runner():
    link = f"{OLLAMA}/cuda_v12/libcudart.so.12.8.90"
    config = Config(links=(LinkSpec(link, f"{LIB}/libvgpu-cudart.so"),))
    libraries = runner_maps(("cudart", f"{OLLAMA}/cuda_v13/libcudart.so.13.0.48"))
    landing = Landing("libcudart.so.13", f"{OLLAMA}/cuda_v13/libcudart.so.13.0.48")
    expected = expectations(group(RUNNER), config, LoaderVariables(), libraries,
                            {"vgpu-cudart": landing})
    assert all(e.library != "vgpu-cudart" for e in expected)
    real = f"{LIB}/libcudart.so.12.8.90"  # the link was pointed at a real cudart
    v12 = runner_maps(("cudart", real), cuda="cuda_v12")
    landing = Landing("libcudart.so.12", real, through=(link,))
    expected = expectations(group(RUNNER), config, LoaderVariables(), v12,
                            {"vgpu-cudart": landing})
    assert Expectation("vgpu-cudart", LINK) in expected
    assert bypasses(config, expected, v12, {"cudart": "libcudart.so.12"}, frozenset(),
                    {"vgpu-cudart": landing}) == (Bypass("vgpu-cudart", "cudart", LINK_TO_REAL),)


def test_landings_are_wanted_where_a_rule_reads_them():
    """A runner's shims with links whose real library it maps (reached by the link?), and a
    preloaded shim's in any group (bypassed through a link?); nothing else is resolved."""
    real = runner_maps(("cuda-driver", REAL_DRIVER), ("cudart", f"{LIB}/libcudart.so.12.8"))
    assert landings_wanted(group(RUNNER), CONFIG, LoaderVariables(), real) == (
        "vgpu-cuda", "vgpu-cudart")
    assert landings_wanted(group(SERVER), CONFIG, LoaderVariables(), real) == ()
    preloaded = LoaderVariables(preload=(ALL_FOUR[1],))
    assert landings_wanted(group(DISCOVERY), CONFIG, preloaded, real) == ("vgpu-cuda",)
    assert landings_wanted(group(RUNNER), CONFIG, LoaderVariables(), runner_maps()) == ()


@pytest.mark.parametrize(("version", "expected"), [
    ("0.5.8", True), ("0.30.0", True),
    ("0.5.7", False),  # its CUDA code is the runner's libggml_cuda_v12.so
    ("0.3.14", False),  # the runner's libggml.so
    (None, False),  # unknown: only what holds in every era
])
def test_the_cuda_backend_is_expected_where_the_era_has_it(version, expected):
    found, _ = judge(RUNNER, LoaderVariables(), maps(), version=version)
    assert (Expectation("ggml-cuda", "backend") in found) is expected


def test_a_cpu_runner_expects_no_link_reached_shim():
    expected, gone = judge(RUNNER, LoaderVariables(), maps())
    assert [e.library for e in expected] == ["ggml-cuda"] and gone == ()


def test_explicit_expect_lists_still_win():
    config = Config()
    explicit = config.group(RUNNER).__class__(RUNNER, expect=("vgpu-exec",))
    assert expectations(explicit, config, None, maps()) == (
        Expectation("vgpu-exec", "config"),)


def test_the_lists_the_loader_reads_are_split_as_it_splits_them():
    assert split_preload(" /a.so:/b.so  c.so\n") == ("/a.so", "/b.so", "c.so")
    assert split_path("/x::/y;/z") == ("/x", "/y", "/z")


def test_a_failed_preload_with_the_real_library_mapped_is_a_bypass_too():
    """The CUDA shim named in LD_PRELOAD at a path that does not load: the runner got the
    real driver, whatever the links say."""
    loader = LoaderVariables(preload=(f"{LIB}/missing/libvgpu-cuda.so",))
    libraries = runner_maps(("cuda-driver", REAL_DRIVER))
    expected, gone = judge(RUNNER, loader, libraries, {"cuda-driver": "libcuda.so.1"})
    assert Expectation("vgpu-cuda", PRELOAD) in expected
    assert preload_failures(expected, libraries) == ("vgpu-cuda",)
    assert gone == (Bypass("vgpu-cuda", "cuda-driver", REAL_INSTEAD),)
