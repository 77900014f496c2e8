"""vgpumon.linux.loader.ldso: ``$PLATFORM`` and ``$LIB`` as the machine's loader expands them.

The parsers are tested on fixed text; the answers on this machine are checked against the
real loader: an object whose ``DT_RUNPATH`` uses both tokens needs a library that is nowhere,
and ``LD_DEBUG=libs`` shows the directories ld.so made of the tokens while it searched. That
is independent of ``--list-diagnostics``, the first place `ldso` asks.
"""

from __future__ import annotations

import os
import platform as platform_module
import re
import struct
from pathlib import Path

import pytest

from vgpumon.linux import elf
from vgpumon.linux.loader import ldso
from vgpumon.linux.loader.ldresolve import LoaderEnvironment, resolve, system_layout
from vgpumon.linux.paths import HOST

from .oracle import build_host, run_loader

X86_64 = (elf.EM_X86_64, 64, "little")

DEBIAN_236 = """\
dl_dst_lib="lib/x86_64-linux-gnu"
dl_hwcap=0x2
dl_hwcaps_subdirs="x86-64-v4:x86-64-v3:x86-64-v2"
dl_hwcaps_subdirs_active=0x6
dl_pagesize=0x1000
dl_platform="haswell"
dl_profile_output="/var/tmp"
dso.ld="ld-linux-x86-64.so.2"
path.rtld="/lib64/ld-linux-x86-64.so.2"
path.system_dirs[0x0]="/lib/x86_64-linux-gnu/"
path.system_dirs[0x1]="/usr/lib/x86_64-linux-gnu/"
path.system_dirs[0x2]="/lib/"
path.system_dirs[0x3]="/usr/lib/"
version.release="stable"
version.version="2.36"
auxv[0x0].a_type=0x21
"""
RHEL_234 = """\
env[0x0]="A=\\"quoted\\" \\\\ \\001"
dl_platform="x86_64"
path.system_dirs[0x1]="/usr/lib64/"
path.system_dirs[0x0]="/lib64/"
version.version="2.34"
"""


@pytest.mark.parametrize(("text", "expected"), [
    (DEBIAN_236, ldso.Diagnostics(
        "haswell", "lib/x86_64-linux-gnu",
        ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"), "2.36")),
    (RHEL_234, ldso.Diagnostics("x86_64", "lib64", ("/lib64", "/usr/lib64"), "2.34")),
    ('dl_platform=0x0\npath.system_dirs[0x0]="/usr/lib/"\nversion.version="2.40"\n',
     ldso.Diagnostics(None, "lib", ("/usr/lib",), "2.40")),  # Arch: slibdir /usr/lib
    ('dl_platform="a\\"b\\\\c\\101"\nversion.version="2.33"\n',
     ldso.Diagnostics('a"b\\cA', None, (), "2.33")),
])
def test_parse_diagnostics(text, expected):
    assert ldso.parse_diagnostics(text) == expected


@pytest.mark.parametrize("text", [
    "", "ld.so: unrecognized option '--list-diagnostics'\n", 'dl_platform="x86_64"\n',
    "version.version=\"2.36\"\n", "\x00" * 100, 'dl_platform="x\nversion.version="2"\n',
])
def test_not_diagnostics(text):
    assert ldso.parse_diagnostics(text) is None


@pytest.mark.parametrize(("dirs", "lib"), [
    (("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"), "lib/x86_64-linux-gnu"),
    (("/usr/lib/aarch64-linux-gnu",), "lib/aarch64-linux-gnu"),
    (("/lib64", "/usr/lib64"), "lib64"),
    (("/usr/lib",), "lib"),
    (("/",), None),
    ((), None),
])
def test_lib_of_system_dirs(dirs, lib):
    assert ldso.lib_of_system_dirs(dirs) == lib


INTEL_HASWELL = ("vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 popcnt movbe fma avx2 bmi1 bmi2 "
                 "abm avx512f avx512cd avx512bw avx512dq avx512vl\nprocessor\t: 1\n")


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    (INTEL_HASWELL, "haswell"),  # Sapphire Rapids and the like: AVX512, but no ER/PF
    (INTEL_HASWELL.replace("GenuineIntel", "AuthenticAMD"), "x86_64"),  # Intel only
    (INTEL_HASWELL.replace(" movbe", ""), "x86_64"),
    (INTEL_HASWELL.replace("avx512cd", "avx512cd avx512er avx512pf"), "xeon_phi"),
    ("vendor_id: GenuineIntel\nflags: sse2\n", "x86_64"),
    ("", "x86_64"),
])
def test_x86_64_platform_as_glibc_chooses_it(cpuinfo, expected):
    assert ldso.x86_64_platform(cpuinfo) == expected


def test_glibc_version():
    assert ldso.glibc_version("glibc 2.36") == (2, 36)
    assert ldso.glibc_version("glibc 2.17.1") == (2, 17)
    assert ldso.glibc_version("musl") is None
    assert ldso.glibc_version(None) is None


def test_parse_auxv():
    data = struct.pack("<8Q", 6, 4096, 15, 0x7FFD1234, 15, 1, 0, 0) + b"\xff" * 3
    assert ldso.parse_auxv(data, 8, "little") == {6: 4096, 15: 0x7FFD1234}
    assert ldso.parse_auxv(struct.pack(">4I", 15, 7, 0, 0), 4, "big") == {15: 7}
    assert ldso.parse_auxv(b"\x01\x02", 8, "little") == {}


def test_at_platform_is_the_kernels():
    expected = {"x86_64": "x86_64", "aarch64": "aarch64"}.get(platform_module.machine())
    if expected is None:
        pytest.skip("AT_PLATFORM is checked on x86_64 and aarch64")
    assert ldso.auxv_platform() == expected


@pytest.fixture
def fresh_caches():
    ldso.diagnostics.cache_clear()
    ldso.loader_platform.cache_clear()
    yield
    ldso.diagnostics.cache_clear()
    ldso.loader_platform.cache_clear()


def test_without_diagnostics_the_cpu_decides(monkeypatch, fresh_caches):
    if ldso.own_arch() != X86_64:
        pytest.skip("x86-64 only")
    monkeypatch.setattr(ldso, "_run_diagnostics", lambda path: None)
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert ldso.loader_platform(X86_64) == ldso.Platform(ldso.x86_64_platform(cpuinfo),
                                                         "/proc/cpuinfo")
    ldso.loader_platform.cache_clear()
    monkeypatch.setattr(ldso, "_confstr", lambda name: "glibc 2.17")  # before "haswell"
    assert ldso.loader_platform(X86_64) == ldso.Platform("x86_64", "AT_PLATFORM")


def test_another_machine_is_not_asked(fresh_caches):
    assert ldso.diagnostics((elf.EM_S390, 64, "big")) is None
    assert ldso.loader_platform((elf.EM_S390, 64, "big")) is None
    assert ldso.loader_platform((4242, 64, "little")) is None


def test_only_a_root_owned_loader_is_run(monkeypatch, tmp_path, fresh_caches):
    if ldso.own_arch() != X86_64 or not os.path.exists(ldso.SYSTEM_LOADERS[X86_64]):
        pytest.skip("needs the x86-64 loader")
    copy = tmp_path / "ld.so"
    copy.write_bytes(Path(ldso.SYSTEM_LOADERS[X86_64]).read_bytes())
    copy.chmod(0o777)  # anyone may write it
    ran: list[str] = []
    monkeypatch.setattr(ldso, "_run_diagnostics", lambda path: ran.append(path))
    monkeypatch.setitem(ldso.SYSTEM_LOADERS, X86_64, str(copy))
    assert ldso.diagnostics(X86_64) is None
    assert ran == []


# --- against the real loader --------------------------------------------------------------------


def expansions(debug: str, base: str) -> dict[str, str]:
    """What $PLATFORM and $LIB became in the search path of `base`/p/$PLATFORM and
    `base`/l/$LIB, from LD_DEBUG=libs (the shortest entry under each is the element itself;
    the others are its hwcaps subdirectories)."""
    for line in debug.splitlines():
        m = re.search(r"search path=(\S+)\s+\((?:RUNPATH|RPATH) from file", line)
        if m and f"{base}/p/" in m.group(1):
            entries = m.group(1).split(":")
            found = {}
            for token, prefix in (("PLATFORM", f"{base}/p/"), ("LIB", f"{base}/l/")):
                mine = [e for e in entries if e.startswith(prefix)]
                found[token] = min(mine, key=len)[len(prefix):] if mine else ""
            return found
    raise AssertionError(f"no search of {base} in the loader's debug output:\n{debug}")


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """$PLATFORM and $LIB as the real loader expands them, in a dlopen by a host program."""
    from .conftest import GCC, Builder

    if GCC is None or ldso.own_arch() is None:
        pytest.skip("needs gcc")
    work = tmp_path_factory.mktemp("dst")
    host = build_host(work)
    build = Builder(work)
    build.so("missing/libgone.so", "-Wl,-soname,libgone.so")
    top = build.so("top/libtop.so", "-Wl,-rpath,$ORIGIN/p/$PLATFORM:$ORIGIN/l/$LIB",
                   f"-L{work}/missing", "-lgone")
    (work / "missing/libgone.so").unlink()
    run = run_loader(host, str(top), cwd=work)
    assert run.error is not None and "libgone.so" in run.error
    return expansions(run.debug, f"{work}/top")


def test_platform_and_lib_match_the_real_loader(real, fresh_caches):
    libc = next((p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/libc.so.6",
                             "/usr/lib/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6")
                 if os.path.exists(p)), None)
    if libc is None:
        pytest.skip("no glibc found")
    layout = system_layout(elf.read_elf(libc), HOST)
    assert (layout.platform, layout.lib) == (real["PLATFORM"], real["LIB"])
    own = ldso.own_arch()
    assert own is not None
    asked = ldso.loader_platform(own)
    assert asked is not None and asked.value == real["PLATFORM"]


def test_the_cpu_fallback_matches_the_real_loader(real):
    if ldso.own_arch() != X86_64:
        pytest.skip("x86-64 only")
    version = ldso.glibc_version(os.confstr("CS_GNU_LIBC_VERSION"))
    if version is None or version < (2, 26):
        pytest.skip("glibc before 2.26 knows no haswell")
    assert ldso.x86_64_platform(Path("/proc/cpuinfo").read_text()) == real["PLATFORM"]


def test_resolver_finds_libraries_where_the_real_loader_does(real, tmp_path, fresh_caches):
    """Libraries built into the directories the real expansion names resolve there."""
    from .conftest import GCC, Builder

    if GCC is None:
        pytest.skip("needs gcc")
    build = Builder(tmp_path)
    host = build_host(tmp_path)
    build.so(f"top/p/{real['PLATFORM']}/libp.so", "-Wl,-soname,libp.so")
    build.so(f"top/l/{real['LIB']}/libl.so", "-Wl,-soname,libl.so")
    top = build.so("top/libtop.so", "-Wl,-rpath,$ORIGIN/p/$PLATFORM:$ORIGIN/l/$LIB",
                   f"-L{tmp_path}/top/p/{real['PLATFORM']}", f"-L{tmp_path}/top/l/{real['LIB']}",
                   "-lp", "-ll")
    run = run_loader(host, str(top), cwd=tmp_path)
    assert run.error is None
    res = resolve(str(top), LoaderEnvironment(executable=str(host), cwd=str(tmp_path)))
    found = {os.path.basename(d.path or ""): d.path for d in res.dependencies}
    assert found["libp.so"] == f"{tmp_path}/top/p/{real['PLATFORM']}/libp.so"
    assert found["libl.so"] == f"{tmp_path}/top/l/{real['LIB']}/libl.so"
    assert {found["libp.so"], found["libl.so"]} <= set(run.added)


def test_a_haswell_loader_expands_platform_to_haswell(monkeypatch, tmp_path, fresh_caches):
    """The reported bug: on an Intel host ld.so says dl_platform="haswell", and the resolver
    must look in .../haswell/, not .../x86_64/ (uname). Simulated: this CPU may be another."""
    from .conftest import GCC, Builder

    if GCC is None or ldso.own_arch() != X86_64:
        pytest.skip("needs gcc on x86-64")
    monkeypatch.setattr(ldso, "_run_diagnostics", lambda path: DEBIAN_236)
    build = Builder(tmp_path)
    build.so("top/p/x86_64/libp.so", "-Wl,-soname,libp.so")
    build.so("top/p/haswell/libp.so", "-Wl,-soname,libp.so")
    top = build.so("top/libtop.so", "-Wl,-rpath,$ORIGIN/p/$PLATFORM",
                   f"-L{tmp_path}/top/p/haswell", "-lp")
    info = elf.read_elf(top)
    assert system_layout(info, HOST).platform == "haswell"
    assert system_layout(info).platform == "haswell"
    res = resolve(str(top), LoaderEnvironment(cwd=str(tmp_path)))
    found = {os.path.basename(d.path or ""): d.path for d in res.dependencies}
    assert found["libp.so"] == f"{tmp_path}/top/p/haswell/libp.so"
