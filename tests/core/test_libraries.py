"""Library matching, bypass and staleness, over a fixture /proc tree and real files."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.core.fakeproc import FakeProc, maps_line, maps_line_for
from vgpumon.config.loading import parse_config
from vgpumon.linux.paths import HOST
from vgpumon.linux.procfs import ProcFS, parse_maps
from vgpumon.snapshot.expectations import REAL_INSTEAD, Bypass, bypasses
from vgpumon.sources.libraries import (
    LibraryMatcher,
    find_library_file,
    library_mappings,
    read_process_libraries,
)


@pytest.fixture
def host(tmp_path):
    """A root with shims, a real-driver copy and an Ollama lib dir; the process's root."""
    root = tmp_path / "root"
    lib64 = root / "usr/lib64"
    cuda = root / "usr/local/lib/ollama/cuda_v12"
    lib64.mkdir(parents=True)
    cuda.mkdir(parents=True)
    for name in ("libvgpu-cuda.so", "libvgpu-exec.so", "libcuda.so.575.51.03"):
        (lib64 / name).write_bytes(name.encode())
    (cuda / "libggml-cuda.so").write_bytes(b"ggml")
    os.symlink("libvgpu-cuda.so", lib64 / "libcuda.so.1")
    return root


def config_for(root):
    return parse_config(f"""
libraries:
  vgpu-cuda: {{path: {root}/usr/lib64/libcuda.so.1}}
  vgpu-exec: {{path: {root}/usr/lib64/libvgpu-exec.so}}
  ggml-cuda: {{name: "libggml-cuda.so*"}}
  cuda-driver: {{name: "libcuda.so.*", driver: true}}
shims: [vgpu-cuda, vgpu-exec]
groups:
  runner: {{cmdline: "runner", expect: [vgpu-cuda, ggml-cuda]}}
""")


def matcher_for(config):
    files = {spec.name: find_library_file(HOST, spec)
             for spec in config.libraries if spec.path}
    return LibraryMatcher(config.libraries, files), files


def test_path_library_given_as_a_symlink_is_found_by_its_target(host):
    config = config_for(host)
    _, files = matcher_for(config)
    shim = files["vgpu-cuda"]
    assert shim.present
    assert shim.resolved == str(host / "usr/lib64/libvgpu-cuda.so")
    assert shim.inode == os.stat(host / "usr/lib64/libvgpu-cuda.so").st_ino


def test_missing_path_library_is_not_present(host):
    (host / "usr/lib64/libvgpu-exec.so").unlink()
    _, files = matcher_for(config_for(host))
    assert not files["vgpu-exec"].present


def test_matching_by_identity_by_basename_and_by_glob(host):
    matcher, _ = matcher_for(config_for(host))
    maps = parse_maps((
        maps_line_for(str(host / "usr/lib64/libvgpu-cuda.so"), 0x1000)
        # same basename, other device and inode: the basename fallback (overlayfs, btrfs)
        + maps_line("/elsewhere/libvgpu-exec.so", (0x99, 0x1), 42, 0x2000)
        + maps_line("/usr/local/lib/ollama/cuda_v12/libggml-cuda.so", (8, 1), 7, 0x3000)
        + maps_line("/usr/lib64/libcuda.so.575.51.03", (8, 1), 8, 0x4000)
        + maps_line("/usr/lib64/libc.so.6", (8, 1), 9, 0x5000)
    ).encode())
    found = {}
    for mapped in maps:
        for library, by_identity in matcher.libraries_of(mapped):
            found[library] = by_identity
    assert found == {"vgpu-cuda": True, "vgpu-exec": False, "ggml-cuda": False,
                     "cuda-driver": False}


def test_the_same_basename_elsewhere_on_the_same_device_is_another_file(tmp_path):
    """Era B keeps a CPU and a CUDA libext_server.so side by side: only the configured one is
    the library; under the configured name itself, a new inode means replaced (stale)."""
    cuda, cpu = tmp_path / "cuda_v11", tmp_path / "cpu_avx2"
    for directory in (cuda, cpu):
        directory.mkdir()
        (directory / "libext_server.so").write_bytes(directory.name.encode())
    config = parse_config(f"libraries:\n  ggml-cuda: {{path: {cuda}/libext_server.so}}\n"
                          "shims: []\ngroups:\n  server: {comm: ollama}\n")
    matcher, files = matcher_for(config)
    dev = (os.major(files["ggml-cuda"].dev), os.minor(files["ggml-cuda"].dev))
    other = os.stat(cpu / "libext_server.so").st_ino
    assert matcher.libraries_of(parse_maps(maps_line(
        str(cpu / "libext_server.so"), dev, other).encode())[0]) == []
    assert matcher.libraries_of(parse_maps(maps_line(
        str(cuda / "libext_server.so"), dev, other).encode())[0]) == [("ggml-cuda", False)]


def test_without_stands_for_bypass_means_driver_without_any_shim(host, tmp_path):
    """A config whose shims name nothing they stand for keeps the simple rule."""
    config = config_for(host)
    matcher, _ = matcher_for(config)
    proc = FakeProc(tmp_path / "proc")
    driver_only = maps_line("/usr/lib64/libcuda.so.999", (8, 1), 8)
    proc.add(10, "r", ["runner"], maps=driver_only, root=str(host))
    libs, _ = read_process_libraries(ProcFS(str(proc.root)), 10, matcher)
    assert bypasses(config, (), libs, {}) == (Bypass("", "cuda-driver", REAL_INSTEAD),)
    proc.set_maps(10, driver_only + maps_line_for(str(host / "usr/lib64/libvgpu-cuda.so"),
                                                   0x9000))
    libs, _ = read_process_libraries(ProcFS(str(proc.root)), 10, matcher)
    assert bypasses(config, (), libs, {}) == ()  # the shim forwards to the driver: fine


def test_deleted_mapping_is_stale(host, tmp_path):
    matcher, _ = matcher_for(config_for(host))
    proc = FakeProc(tmp_path / "proc")
    line = maps_line_for(str(host / "usr/lib64/libvgpu-cuda.so"), deleted=True)
    proc.add(11, "r", ["runner"], maps=line, root="/")
    libs, _ = read_process_libraries(ProcFS(str(proc.root)), 11, matcher)
    assert libs.mapped("vgpu-cuda") and libs.stale("vgpu-cuda")


def test_replaced_file_is_stale_when_looked_up_in_the_process_root(host, tmp_path):
    """Maps hold the process's own path; the current file is looked up in its root."""
    matcher, _ = matcher_for(config_for(host))
    ggml = host / "usr/local/lib/ollama/cuda_v12/libggml-cuda.so"
    st = os.stat(ggml)
    line = maps_line("/usr/local/lib/ollama/cuda_v12/libggml-cuda.so",
                     (os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino)
    proc = FakeProc(tmp_path / "proc")
    proc.add(12, "r", ["runner"], maps=line, root=str(host))
    procfs = ProcFS(str(proc.root))
    libs, _ = read_process_libraries(procfs, 12, matcher)
    assert libs.mapped("ggml-cuda") and not libs.stale("ggml-cuda")
    shutil.copy(ggml, str(ggml) + ".new")
    os.replace(str(ggml) + ".new", ggml)  # new inode under the same name
    libs, _ = read_process_libraries(procfs, 12, matcher)
    assert libs.stale("ggml-cuda")


def test_other_device_numbers_are_not_evidence_of_replacement(host, tmp_path):
    matcher, _ = matcher_for(config_for(host))
    line = maps_line("/usr/local/lib/ollama/cuda_v12/libggml-cuda.so", (0x99, 0x1), 1)
    proc = FakeProc(tmp_path / "proc")
    proc.add(13, "r", ["runner"], maps=line, root=str(host))
    libs, _ = read_process_libraries(ProcFS(str(proc.root)), 13, matcher)
    assert libs.mapped("ggml-cuda") and not libs.stale("ggml-cuda")


def test_unreadable_maps_are_unreadable_not_missing(host, tmp_path):
    matcher, _ = matcher_for(config_for(host))
    proc = FakeProc(tmp_path / "proc")
    proc.add(14, "r", ["runner"])
    proc.make_unreadable(14)
    libs, maps = read_process_libraries(ProcFS(str(proc.root)), 14, matcher)
    assert not libs.readable and libs.error and maps == ()


def test_gpu_device_mapping_is_noticed():
    matcher = LibraryMatcher((), {})
    maps = parse_maps(maps_line("/dev/nvidia0", (0, 5), 1055).encode())
    assert library_mappings(ProcFS("/proc"), 1, maps, matcher).gpu_device


def test_mapped_model_blobs_are_noticed_in_both_spellings_even_deleted():
    matcher = LibraryMatcher((), {})
    maps = parse_maps((
        maps_line("/m/blobs/sha256-" + "A" * 64, (8, 1), 20)
        + maps_line("/old/blobs/sha256:" + "c" * 64, (8, 1), 21, 0x7F0000100000,
                    deleted=True)
        + maps_line("/m/blobs/sha256-" + "a" * 63, (8, 1), 22, 0x7F0000200000)  # no digest
        + maps_line("/m/sha256-" + "a" * 64 + ".so", (8, 1), 23, 0x7F0000300000)
    ).encode())
    libraries = library_mappings(ProcFS("/proc"), 1, maps, matcher)
    assert libraries.model_blobs == ("a" * 64, "c" * 64)


def test_only_the_lines_of_configured_libraries_are_parsed_and_the_result_is_the_same(
        host, tmp_path):
    """The pre-filter over the whole maps buffer must never drop a line the matcher or the
    GPU-device check would have used: compare with matching the full parse."""
    config = parse_config(f"""
libraries:
  vgpu-cuda: {{path: {host}/usr/lib64/libcuda.so.1}}
  vgpu-exec: {{path: {host}/usr/lib64/libvgpu-exec.so}}
  ggml-cuda: {{name: "libggml-cuda.so*"}}
  cuda-driver: {{name: "libcuda.so.*", driver: true}}
  odd: {{name: "lib[]x]?d*.so"}}
shims: [vgpu-cuda, vgpu-exec]
groups:
  runner: {{cmdline: "runner", expect: [vgpu-cuda, ggml-cuda]}}
""")
    matcher, _ = matcher_for(config)
    shim = host / "usr/lib64/libvgpu-cuda.so"
    st = os.stat(shim)
    shim_dev = (os.major(st.st_dev), os.minor(st.st_dev))
    filler = "".join(maps_line("/models/blobs/sha256-0123", (8, 1), 77, 0x10000 + i * 0x1000)
                     + f"{0x90000000 + i * 0x1000:x}-{0x90001000 + i * 0x1000:x} rw-p "
                       "00000000 00:00 0 \n" for i in range(500))
    maps = (
        filler
        + maps_line_for(str(shim), 0x1000)
        # the same file under another name (a bind mount in a container): identity only
        + maps_line("/usr/lib/x86_64-linux-gnu/libshim.so", shim_dev, st.st_ino, 0x2000)
        + maps_line(str(host / "usr/lib64/libvgpu-exec.so"), (0x99, 1), 5, 0x3000,
                    deleted=True)
        + maps_line("/opt/ollama/cuda_v12/libggml-cuda.so.0.1", (8, 1), 6, 0x4000)
        + maps_line("/opt/libggml-cuda.so/inner.so", (8, 1), 7, 0x5000)
        + maps_line("/usr/lib64/libcuda.so.575.51.03", (8, 1), 8, 0x6000)
        + maps_line("/dev/nvidiactl", (0, 5), 1055, 0x7000)
        + maps_line("/opt/with space/libxad9.so", (8, 1), 9, 0x8000)
        + maps_line("/opt/lib]yd.so", (8, 1), 10, 0x9000)
        + maps_line("/models/blobs/sha256-" + "e" * 64, (8, 1), 11, 0xA000)
        + filler
    )
    proc = FakeProc(tmp_path / "proc")
    proc.add(15, "r", ["runner"], maps=maps, root="/")
    procfs = ProcFS(str(proc.root))
    libs, whole = read_process_libraries(procfs, 15, matcher)
    assert libs == library_mappings(procfs, 15, parse_maps(maps.encode()), matcher)
    assert {m.library for m in libs.mappings} == {"vgpu-cuda", "vgpu-exec", "ggml-cuda",
                                                   "cuda-driver", "odd"}
    assert libs.gpu_device
    assert libs.model_blobs == ("e" * 64,)
    assert whole == parse_maps(maps.encode())  # crash attribution still sees every file
