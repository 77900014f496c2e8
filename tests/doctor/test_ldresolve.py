"""vgpumon.linux.loader.ldresolve against the real glibc loader, on objects built with gcc in a
tmp dir.

Each scenario builds tiny shared objects, resolves them with the pure-Python resolver, and
runs the real loader on the same files (`oracle.run_loader`: a host program that dlopens the
object). The resolver models that process: ``executable`` is the host program, so the host's
own libraries, the preloads and ld.so are in the link map before the object is dlopened.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from vgpumon.linux import elf
from vgpumon.linux.loader.ldcache import read_ld_cache
from vgpumon.linux.loader.ldresolve import (
    LD_PRELOAD,
    LoaderEnvironment,
    Resolution,
    Step,
    SystemLayout,
    Verdict,
    resolve,
    resolve_name,
    shim_resolution,
    system_layout,
)
from vgpumon.linux.paths import HOST, FileView

from .oracle import build_host, run_loader, supported_hwcaps, system_search_path

SYSTEM_CACHE = read_ld_cache() if os.path.exists("/etc/ld.so.cache") else None
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not os.path.exists(LIBC),
    reason="needs gcc and an x86_64 multiarch glibc",
)


@pytest.fixture(scope="session")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_host(tmp_path_factory.mktemp("host"))


@pytest.fixture(scope="session")
def hwcaps(host: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """The glibc-hwcaps levels this CPU supports, as ld.so reports them."""
    run = run_loader(host, "libvgpumon-no-such-lib.so.9", cwd=tmp_path_factory.getbasetemp())
    return supported_hwcaps(run.debug)


def env_for(host: Path, cwd: Path, **kw) -> LoaderEnvironment:
    return LoaderEnvironment(cache=SYSTEM_CACHE, executable=str(host), cwd=str(cwd), **kw)


def check(
    host: Path,
    target: Path | str,
    cwd: Path,
    *,
    ld_library_path: str | None = None,
    ld_preload: str | None = None,
    hwcaps: tuple[str, ...] = (),
) -> Resolution:
    """Resolve `target` and assert the real loader agrees: same success or failure, the same
    objects loaded through the same paths in the same order, the same files mapped."""
    env = env_for(host, cwd, ld_library_path=ld_library_path, ld_preload=ld_preload,
                  hwcaps=hwcaps)  # fmt: skip
    res = resolve(str(target), env)
    run = run_loader(host, str(target), cwd=cwd, ld_library_path=ld_library_path,
                     ld_preload=ld_preload)  # fmt: skip
    objects = list(res.objects)
    split = objects.index(next(o for o in objects if o.identity == res.root.identity))
    before = [o.path for o in objects[1:split]]  # [0] is the executable
    if run.error is not None:
        assert not res.loadable, run.error
        first = next(d for d in res.unresolved if d.requester not in (LD_PRELOAD,))
        assert run.error.split(": ", 1)[-1] in first.reason, (run.error, first)
        return res
    assert res.loadable, [d for d in res.unresolved]
    assert before == list(run.before)
    assert [o.path for o in objects[split:]] == list(run.added)
    assert {o.real_path for o in objects} <= run.mapped | {str(host)}
    return res


SRC_A = "int a(void){return 1;}"
SRC_B = "int b(void){return 2;}"


def test_dependencies_from_cache_and_loaded_names(build, host: Path) -> None:
    top = build.so("top/libtop.so", "-lz", source=SRC_A)
    res = check(host, top, build.workdir)
    by_name = {d.name: d for d in res.dependencies if d.requester == str(top)}
    assert by_name["libz.so.1"].found_by is Step.CACHE
    assert by_name["libc.so.6"].found_by is Step.LOADED  # the host program loaded it
    libc_edge = next(d for d in res.dependencies if d.name == "ld-linux-x86-64.so.2")
    assert libc_edge.found_by is Step.LOADED and libc_edge.path == "/lib64/ld-linux-x86-64.so.2"


def test_origin_is_the_directory_the_object_was_found_through(build, host: Path) -> None:
    """glibc takes $ORIGIN of a library from the path it loaded, not from its real path."""
    build.so("real/liby.so", "-Wl,-soname,liby.so", source=SRC_B)
    build.so("link/liby.so", "-Wl,-soname,liby.so", source=SRC_B)
    build.so("real/libx.so", f"-L{build.workdir}/real", "-ly", "-Wl,-rpath,$ORIGIN",
             "-Wl,--enable-new-dtags", source=SRC_A)  # fmt: skip
    (build.workdir / "link/libx.so").symlink_to("../real/libx.so")
    res = check(host, build.workdir / "link/libx.so", build.workdir)
    dep = res.find("liby.so")
    assert dep.found_by is Step.RUNPATH
    assert dep.path == f"{build.workdir}/link/liby.so"


def test_rpath_is_inherited_runpath_is_not(build, host: Path) -> None:
    w = build.workdir
    build.so("deps/libleaf.so", "-Wl,-soname,libleaf.so", source=SRC_B)
    build.so("mid/libmid.so", "-Wl,-soname,libmid.so", f"-L{w}/deps", "-lleaf")
    for tags in ("--disable-new-dtags", "--enable-new-dtags"):
        top = build.so(f"top{tags}/libtop.so", f"-Wl,{tags}", "-Wl,-rpath,$ORIGIN/../deps:"
                       "$ORIGIN/../mid", f"-L{w}/mid", "-lmid", source=SRC_A)  # fmt: skip
        res = check(host, top, w)
        leaf = res.find("libleaf.so")
        if tags == "--disable-new-dtags":
            assert leaf.found_by is Step.RPATH and leaf.requester.endswith("/mid/libmid.so")
            assert leaf.path == f"{w}/top{tags}/../deps/libleaf.so"
        else:
            assert not leaf.resolved
            assert "No such file" in leaf.reason


def test_search_order_rpath_then_ld_library_path_then_runpath(build, host: Path) -> None:
    w = build.workdir
    for d in ("in_rpath", "in_llp", "in_runpath"):
        build.so(f"{d}/libv.so", "-Wl,-soname,libv.so", source=SRC_B)
    old = build.so("old/libtop.so", "-Wl,--disable-new-dtags", f"-Wl,-rpath,{w}/in_rpath",
                   f"-L{w}/in_rpath", "-lv")  # fmt: skip
    new = build.so("new/libtop.so", "-Wl,--enable-new-dtags", f"-Wl,-rpath,{w}/in_runpath",
                   f"-L{w}/in_runpath", "-lv")  # fmt: skip
    assert check(host, old, w, ld_library_path=f"{w}/in_llp").find("libv.so").found_by is Step.RPATH
    got = check(host, new, w, ld_library_path=f"{w}/in_llp").find("libv.so")
    assert (got.found_by, got.path) == (Step.LD_LIBRARY_PATH, f"{w}/in_llp/libv.so")
    got = check(host, new, w).find("libv.so")
    assert (got.found_by, got.path) == (Step.RUNPATH, f"{w}/in_runpath/libv.so")


def test_ld_library_path_relative_and_empty_elements(build, host: Path) -> None:
    w = build.workdir
    build.so("rel/libv.so", "-Wl,-soname,libv.so", source=SRC_B)
    top = build.so("top/libtop.so", f"-L{w}/rel", "-lv")
    assert check(host, top, w, ld_library_path="rel;/nonexistent").find("libv.so").resolved
    shutil.copy(w / "rel/libv.so", w / "libv.so")
    dep = check(host, top, w, ld_library_path=":/nonexistent").find("libv.so")
    assert (dep.found_by, dep.path) == (Step.LD_LIBRARY_PATH, f"{w}/libv.so")


def test_shim_symlink_chain(build, host: Path) -> None:
    """libcuda.so.1 -> libvgpu-cuda.so: found through the link, the shim is what loads."""
    w = build.workdir
    shim = build.so("lib64/libvgpu-cuda.so", "-Wl,-soname,libcuda.so.1", source=SRC_B)
    driver = build.so("driver/libcuda.so.575.51", "-Wl,-soname,libcuda.so.1", source=SRC_B)
    (w / "lib64/libcuda.so.1").symlink_to("libvgpu-cuda.so")
    (w / "driver/libcuda.so.1").symlink_to("libcuda.so.575.51")
    top = build.so("ollama/libggml-cuda.so", f"-L{w}/lib64", "-l:libcuda.so.1")
    st = os.stat(shim)
    shims = {(st.st_dev, st.st_ino)}

    res = check(host, top, w, ld_library_path=f"{w}/lib64:{w}/driver")
    answer = shim_resolution(res, "libcuda.so.1", shims)
    assert answer.is_shim
    assert answer.path == f"{w}/lib64/libcuda.so.1"
    assert answer.real_path == str(shim)

    res = check(host, top, w, ld_library_path=f"{w}/driver:{w}/lib64")
    answer = shim_resolution(res, "libcuda.so.1", shims)
    assert not answer.is_shim and answer.real_path == str(driver)
    assert not shim_resolution(res, "libnotthere.so", shims).is_shim


def test_wrong_class_and_machine_candidates_are_skipped(build, host: Path) -> None:
    w = build.workdir
    build.so("bits32/libcuda.so.1", "-Wl,-soname,libcuda.so.1", m32=True)
    arm = build.so("arm/libcuda.so.1", "-Wl,-soname,libcuda.so.1")
    with open(arm, "r+b") as f:  # the same object, claiming to be for AArch64
        f.seek(18)
        f.write(struct.pack("<H", elf.EM_AARCH64))
    build.so("good/libcuda.so.1", "-Wl,-soname,libcuda.so.1")
    top = build.so("top/libggml-cuda.so", f"-L{w}/good", "-l:libcuda.so.1")
    dep = check(host, top, w, ld_library_path=f"{w}/bits32:{w}/arm:{w}/good").find("libcuda.so.1")
    assert dep.path == f"{w}/good/libcuda.so.1"
    assert [(c.path, c.verdict) for c in dep.skipped] == [
        (f"{w}/bits32/libcuda.so.1", Verdict.WRONG_CLASS),
        (f"{w}/arm/libcuda.so.1", Verdict.WRONG_MACHINE),
    ]
    missing = check(host, top, w, ld_library_path=f"{w}/bits32").find("libcuda.so.1")
    assert not missing.resolved and "wrong ELF class: ELFCLASS32" in missing.reason
    missing = check(host, top, w, ld_library_path=f"{w}/arm").find("libcuda.so.1")
    assert not missing.resolved and "No such file" in missing.reason
    assert missing.skipped[0].verdict is Verdict.WRONG_MACHINE


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"INPUT ( libcuda.so.575 )\n" * 4, "invalid ELF header"), (b"\x7fELF", "file too short")],
)
def test_invalid_candidate_ends_the_search(build, host: Path, content: bytes, message: str) -> None:
    w = build.workdir
    (w / "bad").mkdir()
    (w / "bad/libcuda.so.1").write_bytes(content)
    build.so("good/libcuda.so.1", "-Wl,-soname,libcuda.so.1")
    top = build.so("top/libggml-cuda.so", f"-L{w}/good", "-l:libcuda.so.1")
    dep = check(host, top, w, ld_library_path=f"{w}/bad:{w}/good").find("libcuda.so.1")
    assert not dep.resolved and message in dep.reason
    assert dep.candidates[-1].verdict is Verdict.INVALID


def test_preload_satisfies_by_soname(build, host: Path) -> None:
    w = build.workdir
    shim = build.so("shim/libvgpu-cuda.so", "-Wl,-soname,libcuda.so.1", source=SRC_B)
    build.so("link/libcuda.so.1", "-Wl,-soname,libcuda.so.1", source=SRC_B)
    top = build.so("top/libggml-cuda.so", f"-L{w}/link", "-l:libcuda.so.1")
    res = check(host, top, w, ld_preload=str(shim))
    dep = res.find("libcuda.so.1")
    assert (dep.found_by, dep.real_path) == (Step.PRELOAD, str(shim))
    assert res.dependencies[0].requester == LD_PRELOAD
    assert res.dependencies[0].found_by is Step.PATH


def test_same_file_through_another_name_is_not_loaded_twice(build, host: Path) -> None:
    w = build.workdir
    shim = build.so("lib64/libvgpu-cuda.so", source=SRC_B)  # no SONAME
    (w / "lib64/libcuda.so.1").symlink_to("libvgpu-cuda.so")
    top = build.so("top/libggml-cuda.so", f"-L{w}/lib64", "-l:libcuda.so.1")
    res = check(host, top, w, ld_preload=f"{w}/lib64/libvgpu-cuda.so",
                ld_library_path=f"{w}/lib64")  # fmt: skip
    dep = res.find("libcuda.so.1")
    assert dep.found_by is Step.LD_LIBRARY_PATH and dep.real_path == str(shim)
    assert sum(o.real_path == str(shim) for o in res.objects) == 1


def test_missing_preload_is_only_a_warning(build, host: Path) -> None:
    top = build.so("top/libtop.so")
    res = check(host, top, build.workdir, ld_preload="/nonexistent/libvgpu-exec.so libz.so.1")
    assert [d.resolved for d in res.dependencies[:2]] == [False, True]
    assert res.dependencies[1].found_by is Step.CACHE
    assert res.loadable


def test_nodeflib_refuses_cache_and_default_dirs(build, host: Path) -> None:
    w = build.workdir
    top = build.so("top/libtop.so", "-Wl,-z,nodefaultlib", "-lz")
    dep = check(host, top, w).find("libz.so.1")
    assert not dep.resolved
    assert [c.verdict for c in dep.candidates] == [Verdict.NODEFLIB]
    dep = check(host, top, w, ld_library_path="/lib/x86_64-linux-gnu").find("libz.so.1")
    assert dep.found_by is Step.LD_LIBRARY_PATH


def test_dst_lib_and_platform(build, host: Path) -> None:
    w = build.workdir
    layout = system_layout(elf.read_elf(LIBC), HOST)
    build.so(f"top/{layout.lib}/libl.so", "-Wl,-soname,libl.so", source=SRC_B)
    build.so(f"top/p/{layout.platform}/libp.so", "-Wl,-soname,libp.so", source=SRC_B)
    top = build.so(
        "top/libtop.so",
        "-Wl,-rpath,$ORIGIN/${LIB}:$ORIGIN/p/$PLATFORM",
        f"-L{w}/top/{layout.lib}",
        f"-L{w}/top/p/{layout.platform}",
        "-ll",
        "-lp",
    )
    res = check(host, top, w)
    assert res.find("libl.so").path == f"{w}/top/{layout.lib}/libl.so"
    assert res.find("libp.so").path == f"{w}/top/p/{layout.platform}/libp.so"


def test_glibc_hwcaps_subdirectories(build, host: Path, hwcaps: tuple[str, ...]) -> None:
    if not hwcaps:
        pytest.skip("ld.so searches no glibc-hwcaps subdirectory on this CPU")
    w = build.workdir
    build.so("d/libv.so", "-Wl,-soname,libv.so", source=SRC_B)
    build.so(f"d/glibc-hwcaps/{hwcaps[-1]}/libv.so", "-Wl,-soname,libv.so", source=SRC_B)
    top = build.so("top/libtop.so", f"-L{w}/d", "-lv")
    dep = check(host, top, w, ld_library_path=f"{w}/d", hwcaps=hwcaps).find("libv.so")
    assert dep.path == f"{w}/d/glibc-hwcaps/{hwcaps[-1]}/libv.so"


def test_needed_by_path(build, host: Path) -> None:
    """An object linked against a library without SONAME records the path it was given."""
    w = build.workdir
    build.so("dir/libnoso.so", source=SRC_B)
    top = build.so("top/libtop.so", f"{w}/dir/libnoso.so")
    res = check(host, top, w)
    dep = res.find(f"{w}/dir/libnoso.so")
    assert (dep.found_by, dep.candidates[0].step) == (Step.PATH, Step.PATH)


def test_breadth_first_order(build, host: Path) -> None:
    w = build.workdir
    build.so("l/libd.so", "-Wl,-soname,libd.so")
    build.so("l/libc1.so", "-Wl,-soname,libc1.so", f"-L{w}/l", "-ld")
    build.so("l/libc2.so", "-Wl,-soname,libc2.so")
    build.so("l/libb1.so", "-Wl,-soname,libb1.so", f"-L{w}/l", "-lc1")
    build.so("l/libb2.so", "-Wl,-soname,libb2.so", f"-L{w}/l", "-lc2", "-lc1")
    top = build.so("l/libtop.so", f"-L{w}/l", "-lb1", "-lb2", f"-Wl,-rpath,{w}/l",
                   "-Wl,--disable-new-dtags")  # fmt: skip
    res = check(host, top, w)
    assert res.loadable
    names = [os.path.basename(o.path) for o in res.objects[res.objects.index(res.root) :]]
    assert names == ["libtop.so", "libb1.so", "libb2.so", "libc1.so", "libc2.so", "libd.so"]


def test_default_dirs_match_the_loader(host: Path, tmp_path: Path) -> None:
    run = run_loader(host, "libvgpumon-no-such-lib.so.9", cwd=tmp_path)
    assert system_layout(elf.read_elf(LIBC), HOST).dirs == system_search_path(run.debug)


def test_layouts() -> None:
    x86 = elf.read_elf(LIBC)
    union = system_layout(x86)
    assert union.dirs == ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64",
                          "/usr/lib64", "/lib", "/usr/lib")  # fmt: skip
    i386 = elf.ElfInfo(32, "little", 0, 0, elf.ET_DYN, elf.EM_386)
    assert system_layout(i386).dirs[:2] == ("/lib/i386-linux-gnu", "/usr/lib/i386-linux-gnu")
    odd = elf.ElfInfo(64, "little", 0, 0, elf.ET_DYN, 4242)
    assert system_layout(odd) == SystemLayout(("/lib", "/usr/lib"), "lib", None)


def test_resolve_name_without_the_object(build, host: Path) -> None:
    w = build.workdir
    shim = build.so("lib64/libvgpu-cuda.so", "-Wl,-soname,libcuda.so.1")
    (w / "lib64/libcuda.so.1").symlink_to(shim)
    env = env_for(host, w, ld_library_path=f"{w}/lib64")
    dep = resolve_name("libcuda.so.1", env)
    assert (dep.found_by, dep.real_path) == (Step.LD_LIBRARY_PATH, str(shim))
    assert not resolve_name("libnothing.so.7", env).resolved
    with pytest.raises(ValueError):
        resolve_name("libcuda.so.1", LoaderEnvironment())


# --- a container: a FileView rooted in a tmp dir ------------------------------------------------


def make_container(build, root: Path) -> None:
    """A fake container root: its own libc, an absolute shim link, and links that point at
    files only the host has."""
    multi = root / "lib/x86_64-linux-gnu"
    multi.mkdir(parents=True)
    shutil.copy(LIBC, multi / "libc.so.6")
    shim = build.so("root/usr/lib64/libvgpu-cuda.so", "-Wl,-soname,libcuda.so.1")
    (root / "usr/lib64/libcuda.so.1").symlink_to("/usr/lib64/libvgpu-cuda.so")  # absolute
    (root / "usr/lib64/libz.so.1").symlink_to("/lib/x86_64-linux-gnu/libz.so.1")  # host only
    stub = build.so("outside/libesc.so", "-Wl,-soname,libesc.so")  # only to link against
    build.so("root/usr/local/lib/ollama/libggml-cuda.so", f"-L{shim.parent}", f"-L{stub.parent}",
             "-l:libvgpu-cuda.so", "-lz", "-lesc", "-Wl,-rpath,$ORIGIN/../../../lib64")  # fmt: skip
    shutil.rmtree(stub.parent)
    escape = "../" * 12 + "lib/x86_64-linux-gnu/libz.so.1"  # ".." stops at the view's root
    (root / "usr/lib64/libesc.so").symlink_to(escape)
    # the real ld.so.cache of the host names the host's libz: the container has none
    assert not (root / "etc/ld.so.cache").exists()


def test_resolution_stays_inside_the_container_root(build, tmp_path: Path) -> None:
    root = build.workdir / "root"
    make_container(build, root)
    view = FileView(str(root), "container")
    env = LoaderEnvironment.for_process({"LD_LIBRARY_PATH": "/usr/lib64"}, view)
    assert env.cache is None
    res = resolve("/usr/local/lib/ollama/libggml-cuda.so", env)

    cuda = res.find("libcuda.so.1")
    assert cuda.found_by is Step.LD_LIBRARY_PATH
    assert (cuda.path, cuda.real_path) == ("/usr/lib64/libcuda.so.1", "/usr/lib64/libvgpu-cuda.so")
    shim_id = os.stat(root / "usr/lib64/libvgpu-cuda.so")
    assert shim_resolution(res, "libcuda.so.1", {(shim_id.st_dev, shim_id.st_ino)}).is_shim

    libc = res.find("libc.so.6")
    assert (libc.found_by, libc.path) == (Step.DEFAULT, "/lib/x86_64-linux-gnu/libc.so.6")

    zlib = res.find("libz.so.1")  # the host has it; the container's link dangles
    assert not zlib.resolved
    assert ("/usr/lib64/libz.so.1", Verdict.MISSING) in [
        (c.path, c.verdict) for c in zlib.candidates
    ]
    assert all(c.verdict is Verdict.MISSING for c in zlib.candidates)
    escape = res.find("libesc.so")  # a relative link climbing above the root stays inside
    assert not escape.resolved
    assert ("/usr/lib64/libesc.so", Verdict.MISSING) in [
        (c.path, c.verdict) for c in escape.candidates
    ]

    for obj in res.objects:
        inside = os.stat(root / obj.real_path.lstrip("/"))
        assert obj.identity == (inside.st_dev, inside.st_ino)


def test_for_process_reads_preload_file_and_cache_in_the_view(build) -> None:
    root = build.workdir / "root"
    make_container(build, root)
    (root / "etc").mkdir()
    (root / "etc/ld.so.preload").write_text("# shims\n/usr/lib64/libvgpu-cuda.so  # cuda\n")
    (root / "etc/ld.so.cache").write_bytes(b"garbage")
    view = FileView(str(root), "container")
    env = LoaderEnvironment.for_process({"LD_PRELOAD": "libfoo.so:/a/libbar.so"}, view)
    assert env.cache is None  # a corrupt cache is ignored, as ld.so ignores it
    assert env.preloads() == (
        ("libfoo.so", "LD_PRELOAD"),
        ("/a/libbar.so", "LD_PRELOAD"),
        ("/usr/lib64/libvgpu-cuda.so", "/etc/ld.so.preload"),
    )
    res = resolve("/usr/local/lib/ollama/libggml-cuda.so", env)
    assert res.find("libcuda.so.1").found_by is Step.PRELOAD
    assert not res.find("libfoo.so").resolved and res.loadable is False  # libz is missing


def test_fifos_for_the_preload_file_and_cache_do_not_block(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    os.mkfifo(tmp_path / "etc/ld.so.preload")
    os.mkfifo(tmp_path / "etc/ld.so.cache")
    env = LoaderEnvironment.for_process({}, FileView(str(tmp_path), "container"))
    assert env.etc_preload is None and env.cache is None


def test_root_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        resolve(str(tmp_path / "missing.so"), LoaderEnvironment())
    (tmp_path / "text.so").write_text("not elf")
    with pytest.raises(elf.ElfError):
        resolve(str(tmp_path / "text.so"), LoaderEnvironment())
