"""The path resolver: symlinks are followed inside the view's root, never outside it."""

from __future__ import annotations

import errno
import os

import pytest

from vgpumon.linux.paths import HOST, FileView


@pytest.fixture
def container(tmp_path):
    """A fake container root whose absolute symlinks mean the container's /."""
    root = tmp_path / "root"
    (root / "usr/lib64").mkdir(parents=True)
    (root / "usr/lib64/libvgpu-cuda.so").write_bytes(b"container shim")
    os.symlink("/usr/lib64/libvgpu-cuda.so", root / "usr/lib64/libcuda.so.1")
    os.symlink("usr/lib64", root / "lib64")
    os.symlink("../../..", root / "usr/lib64/up")
    return FileView(str(root), "container")


def test_absolute_symlink_resolves_inside_the_root(container):
    assert container.realpath("/usr/lib64/libcuda.so.1") == "/usr/lib64/libvgpu-cuda.so"
    assert container.stat("/usr/lib64/libcuda.so.1").st_size == len(b"container shim")


def test_relative_directory_symlink_inside_root(container):
    assert container.realpath("/lib64/libcuda.so.1") == "/usr/lib64/libvgpu-cuda.so"


def test_dotdot_cannot_escape_the_root(container):
    assert container.realpath("/usr/lib64/up/../../etc") == "/etc"
    assert container.realpath("/usr/lib64/up/usr/lib64/libcuda.so.1") == (
        "/usr/lib64/libvgpu-cuda.so")
    assert container.outside("/etc") == container.root + "/etc"


def test_missing_components_are_kept_unless_strict(container):
    assert container.realpath("/lib64/nothing/here") == "/usr/lib64/nothing/here"
    with pytest.raises(FileNotFoundError):
        container.realpath("/lib64/nothing", strict=True)


def test_symlink_loop_raises_eloop(container):
    root = container.root
    os.symlink("/loop-b", os.path.join(root, "loop-a"))
    os.symlink("/loop-a", os.path.join(root, "loop-b"))
    with pytest.raises(OSError) as caught:
        container.realpath("/loop-a")
    assert caught.value.errno == errno.ELOOP


def test_lstat_and_readlink_see_the_link_itself(container):
    assert container.readlink("/lib64/libcuda.so.1") == "/usr/lib64/libvgpu-cuda.so"
    assert os.path.islink(container.outside("/usr/lib64/libcuda.so.1"))
    assert container.lstat("/lib64/libcuda.so.1").st_mode & 0o170000 == 0o120000


def test_host_view_is_the_identity(tmp_path):
    target = tmp_path / "t"
    target.write_text("x")
    os.symlink(target, tmp_path / "l")
    assert HOST.realpath(str(tmp_path / "l")) == str(target)
    assert HOST.outside("/etc/passwd") == "/etc/passwd"
    assert HOST.exists(str(tmp_path / "l"))
    assert not HOST.exists(str(tmp_path / "absent"))
