"""What a process is expected to map with `expect: auto`, and when it bypasses a shim, for the
layouts real vGPU hosts use (docs/configuration.md#expectations): shims preloaded (all four,
or only libvgpu-exec.so), reached by links only, preloaded with or without the real driver's
SONAME; links right or pointing at the real driver; a cuda_v13 runner beside cuda_v12 links.
"""

from __future__ import annotations

import pytest

from vgpumon.config.schema import DISCOVERY, RUNNER, SERVER, Config, LinkSpec
from vgpumon.snapshot.expectations import (
    LINK,
    PRELOAD,
    REAL_INSTEAD,
    SHADOWED,
    SYSTEM_PRELOAD,
    Bypass,
    Expectation,
    bypasses,
    expectations,
    preload_failures,
)
from vgpumon.sources.libraries import LibraryMapping, ProcessLibraries
from vgpumon.sources.loader_env import LoaderVariables, split_path, split_preload

CONFIG = Config()
LIB = "/usr/lib64"
OLLAMA = "/usr/local/lib/ollama"
ALL_FOUR = tuple(f"{LIB}/libvgpu-{s}.so" for s in ("exec", "cuda", "nvml", "cudart"))
REAL_DRIVER = f"{LIB}/libcuda.so.580.65.06"


def maps(*pairs: tuple[str, str]) -> ProcessLibraries:
    return ProcessLibraries(readable=True, mappings=tuple(
        LibraryMapping(library, path, False, False) for library, path in pairs))


def group(name: str):
    return CONFIG.group(name)


def runner_maps(*extra: tuple[str, str], cuda: str = "cuda_v13") -> ProcessLibraries:
    return maps((("ggml-cuda", f"{OLLAMA}/{cuda}/libggml-cuda.so")), *extra)


def judge(name: str, loader: LoaderVariables | None, libraries: ProcessLibraries,
          sonames: dict[str, str | None] | None = None, early: frozenset[str] = frozenset()):
    sonames = sonames or {}
    expected = expectations(group(name), CONFIG, loader, libraries, sonames)
    return expected, bypasses(CONFIG, expected, libraries, sonames, early)


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
    expected, gone = judge(RUNNER, loader, libraries, {"cudart": "libcudart.so.13"})
    assert {(e.library, e.because) for e in expected} == {
        ("vgpu-exec", PRELOAD), ("vgpu-cuda", LINK), ("ggml-cuda", "backend")}
    assert gone == ()  # the bundled cudart 13: no cudart link is on a cuda_v13 runner's path


def test_only_exec_preloaded_and_the_link_at_the_real_driver_is_a_bypass():
    """The reported blind spot: libvgpu-exec.so in every process counted as "a shim"."""
    loader = LoaderVariables(preload=(ALL_FOUR[0],))
    libraries = runner_maps(("vgpu-exec", ALL_FOUR[0]), ("cuda-driver", REAL_DRIVER))
    expected, gone = judge(RUNNER, loader, libraries, {"cuda-driver": "libcuda.so.1"})
    assert Expectation("vgpu-cuda", LINK) in expected
    assert gone == (Bypass("vgpu-cuda", "cuda-driver", REAL_INSTEAD),)


def test_links_only_layout_is_healthy_and_a_broken_link_is_a_bypass():
    healthy = runner_maps(("vgpu-cuda", ALL_FOUR[1]), ("cuda-driver", REAL_DRIVER))
    expected, gone = judge(RUNNER, LoaderVariables(), healthy, {
        "vgpu-cuda": "libvgpu-cuda.so", "cuda-driver": "libcuda.so.1"})
    assert Expectation("vgpu-cuda", LINK) in expected
    assert gone == ()  # a forwarding shim reached by the link maps the driver beside it
    broken = runner_maps(("cuda-driver", REAL_DRIVER))
    _, gone = judge(RUNNER, LoaderVariables(), broken, {"cuda-driver": "libcuda.so.1"})
    assert gone == (Bypass("vgpu-cuda", "cuda-driver", REAL_INSTEAD),)


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
    config = Config(links=(LinkSpec(f"{OLLAMA}/cuda_v12/libcudart.so.12.8.90",
                                    f"{LIB}/libvgpu-cudart.so"),))
    libraries = runner_maps(("cudart", f"{OLLAMA}/cuda_v13/libcudart.so.13.0.48"))
    expected = expectations(group(RUNNER), config, LoaderVariables(), libraries,
                            {"cudart": "libcudart.so.13"})
    assert all(e.library != "vgpu-cudart" for e in expected)
    v12 = runner_maps(("cudart", f"{OLLAMA}/cuda_v12/libcudart.so.12.8.90"), cuda="cuda_v12")
    expected = expectations(group(RUNNER), config, LoaderVariables(), v12,
                            {"cudart": "libcudart.so.12"})
    assert Expectation("vgpu-cudart", LINK) in expected
    assert bypasses(config, expected, v12, {"cudart": "libcudart.so.12"}) == (
        Bypass("vgpu-cudart", "cudart", REAL_INSTEAD),)


def test_a_link_searched_after_the_real_librarys_directory_is_not_expected():
    """Ollama's bundled cudart is found through the backend's RUNPATH before /usr/lib64."""
    libraries = runner_maps(("cudart", f"{OLLAMA}/cuda_v12/libcudart.so.12.8.90"),
                            cuda="cuda_v12")
    config = Config(links=(LinkSpec(f"{LIB}/libcudart.so.12", f"{LIB}/libvgpu-cudart.so"),))
    expected = expectations(group(RUNNER), config, LoaderVariables(), libraries,
                            {"cudart": "libcudart.so.12"})
    assert all(e.library != "vgpu-cudart" for e in expected)


def test_a_cpu_runner_expects_no_link_reached_shim():
    expected, gone = judge(RUNNER, LoaderVariables(), maps())
    assert [e.library for e in expected] == ["ggml-cuda"] and gone == ()


def test_explicit_expect_lists_still_win():
    config = Config()
    explicit = config.group(RUNNER).__class__(RUNNER, expect=("vgpu-exec",))
    assert expectations(explicit, config, None, maps(), {}) == (
        Expectation("vgpu-exec", "config"),)


def test_the_lists_the_loader_reads_are_split_as_it_splits_them():
    assert split_preload(" /a.so:/b.so  c.so\n") == ("/a.so", "/b.so", "c.so")
    assert split_path("/x::/y;/z") == ("/x", "/y", "/z")
