"""Shim link states, on real symlinks."""

from __future__ import annotations

import os

import pytest

from vgpumon.config.schema import LinkSpec
from vgpumon.linux.paths import HOST, FileView
from vgpumon.sources.links import check_link


@pytest.fixture
def lib64(tmp_path):
    directory = tmp_path / "usr/lib64"
    directory.mkdir(parents=True)
    (directory / "libvgpu-cuda.so").write_bytes(b"shim")
    (directory / "libcuda.so.575.51.03").write_bytes(b"driver")
    return directory


def spec(lib64, name="libcuda.so.1"):
    return LinkSpec(str(lib64 / name), str(lib64 / "libvgpu-cuda.so"))


def test_ok_with_a_relative_target(lib64):
    os.symlink("libvgpu-cuda.so", lib64 / "libcuda.so.1")
    state = check_link(HOST, spec(lib64))
    assert state.state == "ok"
    assert state.target == "libvgpu-cuda.so"
    assert state.resolved == str(lib64 / "libvgpu-cuda.so")


def test_ok_through_a_chain_of_links(lib64):
    os.symlink("libvgpu-cuda.so", lib64 / "libcuda.so.1.1")
    os.symlink("libcuda.so.1.1", lib64 / "libcuda.so.1")
    assert check_link(HOST, spec(lib64)).state == "ok"


def test_missing(lib64):
    assert check_link(HOST, spec(lib64)).state == "missing"


def test_missing_when_a_parent_directory_is_a_file(lib64):
    (lib64 / "notadir").write_text("")
    assert check_link(HOST, spec(lib64, "notadir/libcuda.so.1")).state == "missing"


def test_not_symlink(lib64):
    (lib64 / "libcuda.so.1").write_bytes(b"a regular copy")
    assert check_link(HOST, spec(lib64)).state == "not_symlink"


def test_wrong_target(lib64):
    os.symlink("libcuda.so.575.51.03", lib64 / "libcuda.so.1")
    state = check_link(HOST, spec(lib64))
    assert state.state == "wrong_target"
    assert state.target == "libcuda.so.575.51.03"


def test_wrong_target_when_the_expected_shim_is_gone(lib64):
    os.symlink("libcuda.so.575.51.03", lib64 / "libcuda.so.1")
    (lib64 / "libvgpu-cuda.so").unlink()
    assert check_link(HOST, spec(lib64)).state == "wrong_target"


def test_dangling(lib64):
    os.symlink("libvgpu-cuda.so", lib64 / "libcuda.so.1")
    (lib64 / "libvgpu-cuda.so").unlink()
    state = check_link(HOST, spec(lib64))
    assert state.state == "dangling"
    assert state.target == "libvgpu-cuda.so"


def test_dangling_on_a_loop(lib64):
    os.symlink("libcuda.so.1", lib64 / "libcuda.so.1")
    assert check_link(HOST, spec(lib64)).state == "dangling"


def test_no_view_means_unchecked(lib64):
    state = check_link(None, LinkSpec("/usr/lib64/libcuda.so.1", "/x", view="server"))
    assert state.state is None and "server" in state.error


def test_absolute_target_inside_a_container_view(tmp_path):
    # In the container /usr/lib64/libcuda.so.1 -> /usr/lib64/libvgpu-cuda.so means the
    # container's file; the host has no such file at all.
    root = tmp_path / "ctr"
    (root / "usr/lib64").mkdir(parents=True)
    (root / "usr/lib64/libvgpu-cuda.so").write_bytes(b"shim in container")
    os.symlink("/usr/lib64/libvgpu-cuda.so", root / "usr/lib64/libcuda.so.1")
    view = FileView(str(root), "server")
    link = LinkSpec("/usr/lib64/libcuda.so.1", "/usr/lib64/libvgpu-cuda.so", view="server")
    assert check_link(view, link).state == "ok"
