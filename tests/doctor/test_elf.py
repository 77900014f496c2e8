"""vgpumon.linux.elf against binutils' readelf on real libraries, and against synthetic
images."""

from __future__ import annotations

import contextlib
import glob
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgpumon.linux import elf
from vgpumon.linux.elf import ElfError, ElfInfo, parse_elf, read_elf

from .elfbuild import bytes_reader, synth_elf
from .readelf import READELF, readelf_facts

needs_readelf = pytest.mark.skipif(READELF is None, reason="binutils readelf not installed")

MULTIARCH = "/usr/lib/x86_64-linux-gnu"
NAMED = [
    "libc.so.6",
    "libm.so.6",
    "libz.so.1",
    "libstdc++.so.6",
    "libgcc_s.so.1",
    "libssl.so.3",
    "libcrypto.so.3",
    "libpthread.so.0",
]


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _system_libraries() -> list[str]:
    """Named libraries plus an even sample of the rest (regular files only, not symlinks)."""
    everything = sorted(
        p
        for p in glob.glob(f"{MULTIARCH}/*.so*")
        if os.path.isfile(p) and not os.path.islink(p) and _is_elf(p)
    )
    named = [os.path.realpath(f"{MULTIARCH}/{n}") for n in NAMED]
    named = [p for p in named if os.path.isfile(p)]
    sample = everything[:: max(1, len(everything) // 40)]
    return sorted(set(named + sample))


def _extension_modules() -> list[str]:
    # The base interpreter's: a virtual environment (make test) has no lib-dynload of its own.
    dynload = Path(sysconfig.get_path("platstdlib", vars={"platbase": sys.base_exec_prefix})
                   ) / "lib-dynload"
    mods = sorted(str(p) for p in dynload.glob("*.so"))
    return mods[:: max(1, len(mods) // 20)]


SYSTEM_LIBS = _system_libraries()
EXTENSIONS = _extension_modules()


def _compare_with_readelf(path: str) -> ElfInfo:
    info = read_elf(path)
    want = readelf_facts(path)
    assert info.needed == want.needed
    assert info.soname == want.soname
    assert info.rpath == want.rpath
    assert info.runpath == want.runpath
    assert info.nodeflib == want.nodeflib
    assert info.build_id == want.build_id
    assert info.interpreter == want.interpreter
    return info


@needs_readelf
@pytest.mark.parametrize("path", SYSTEM_LIBS, ids=os.path.basename)
def test_system_library_matches_readelf(path: str) -> None:
    info = _compare_with_readelf(path)
    assert (info.elf_class, info.byte_order, info.machine) == (64, "little", elf.EM_X86_64)


@needs_readelf
@pytest.mark.parametrize("path", EXTENSIONS, ids=os.path.basename)
def test_python_extension_matches_readelf(path: str) -> None:
    _compare_with_readelf(path)


def test_samples_cover_what_the_loader_uses() -> None:
    assert len(SYSTEM_LIBS) >= 30 and len(EXTENSIONS) >= 10
    infos = [read_elf(p) for p in SYSTEM_LIBS + EXTENSIONS]
    assert any(i.soname for i in infos)
    assert any(len(i.needed) > 2 for i in infos)
    assert all(i.build_id for i in infos)


@needs_readelf
@pytest.mark.parametrize("program", ["/usr/bin/ls", "/bin/sh", sys.executable])
def test_executable_matches_readelf(program: str) -> None:
    info = _compare_with_readelf(os.path.realpath(program))
    assert info.interpreter and info.interpreter.startswith("/")


def test_libc_facts() -> None:
    info = read_elf(f"{MULTIARCH}/libc.so.6")
    assert info.soname == "libc.so.6"
    assert info.type == elf.ET_DYN
    assert len(info.build_id or "") == 40


@needs_readelf
@pytest.mark.parametrize("dtags", ["--enable-new-dtags", "--disable-new-dtags"])
def test_gcc_built_paths_match_readelf(build, dtags: str) -> None:
    build.so("dep/libdep.so.1", "-Wl,-soname,libdep.so.1")
    so = build.so(
        "libtop.so",
        "-Wl,-soname,libtop.so.2",
        f"-Wl,{dtags}",
        "-Wl,-rpath,$ORIGIN/../dep:/opt/x",
        "-Wl,-z,nodefaultlib",
        f"-L{build.workdir}/dep",
        "-l:libdep.so.1",
    )
    info = _compare_with_readelf(str(so))
    assert info.needed[0] == "libdep.so.1"
    assert info.nodeflib
    path = info.runpath if dtags == "--enable-new-dtags" else info.rpath
    assert path == "$ORIGIN/../dep:/opt/x"


@needs_readelf
def test_gcc_built_32bit_matches_readelf(build) -> None:
    so = build.so("lib32.so", "-Wl,-soname,lib32.so.1", "-Wl,-rpath,/r32", m32=True)
    info = _compare_with_readelf(str(so))
    assert (info.elf_class, info.machine) == (32, elf.EM_386)


@pytest.mark.parametrize(("elf_class", "order"), [(32, ">"), (64, ">"), (32, "<"), (64, "<")])
def test_synthetic_any_class_and_byte_order(elf_class: int, order: str) -> None:
    data = synth_elf(
        elf_class=elf_class,
        order=order,
        machine=20,
        soname="libx.so.1",
        needed=("liba.so", "libb.so.2"),
        rpath="/opt/r",
        runpath="$ORIGIN/lib",
        flags_1=elf.DF_1_NODEFLIB,
        build_id=bytes(range(20)),
    )
    info = parse_elf(bytes_reader(data))
    assert info == ElfInfo(
        elf_class=elf_class,
        byte_order="big" if order == ">" else "little",
        osabi=0,
        abi_version=0,
        type=elf.ET_DYN,
        machine=20,
        soname="libx.so.1",
        needed=("liba.so", "libb.so.2"),
        rpath="/opt/r",
        runpath="$ORIGIN/lib",
        flags_1=elf.DF_1_NODEFLIB,
        build_id=bytes(range(20)).hex(),
    )


@needs_readelf
def test_synthetic_big_endian_agrees_with_readelf(tmp_path: Path) -> None:
    path = tmp_path / "be.so"
    path.write_bytes(
        synth_elf(
            elf_class=32,
            order=">",
            machine=8,
            soname="libbe.so",
            needed=("libc.so.6",),
            build_id=b"\xab" * 8,
        )
    )
    _compare_with_readelf(str(path))


def test_strtab_is_mapped_through_its_pt_load() -> None:
    """DT_STRTAB is a virtual address; the file offset comes from the segment holding it."""
    data = synth_elf(needed=("libq.so",), base=0x7000_0000)
    assert parse_elf(bytes_reader(data)).needed == ("libq.so",)


def test_no_dynamic_segment_is_not_an_error(build) -> None:
    obj = build.workdir / "plain.o"
    src = build.workdir / "plain.c"
    src.write_text("int x;")
    subprocess.run(["gcc", "-c", "-o", str(obj), str(src)], check=True)
    info = read_elf(obj)
    assert info.needed == () and info.soname is None and info.type == 1


def test_reads_only_what_it_needs() -> None:
    path = os.path.realpath(f"{MULTIARCH}/libc.so.6")
    fd = os.open(path, os.O_RDONLY)
    asked: list[tuple[int, int]] = []

    def reader(offset: int, size: int) -> bytes:
        asked.append((offset, size))
        return os.pread(fd, size, offset)

    try:
        parse_elf(reader)
    finally:
        os.close(fd)
    assert sum(size for _, size in asked) < 8192 < os.path.getsize(path)


FULL = synth_elf(soname="libx.so", needed=("liba.so",), runpath="/r", build_id=b"\x01" * 20)


def test_every_truncation_raises() -> None:
    assert parse_elf(bytes_reader(FULL)).build_id == "01" * 20
    for cut in range(len(FULL)):
        with pytest.raises(ElfError):
            parse_elf(bytes_reader(FULL[:cut]))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x7fEL",
        b"#!/bin/sh\nexit 0\n" * 8,
        b"\x7fELF\x03\x01" + b"\0" * 60,
        b"\x7fELF\x02\x07" + b"\0" * 60,
        b"INPUT ( libfoo.so.1 )\n",
    ],
)
def test_garbage_raises(data: bytes) -> None:
    with pytest.raises(ElfError):
        parse_elf(bytes_reader(data))


def test_lying_sizes_raise_without_huge_reads() -> None:
    data = bytearray(FULL)
    data[56:58] = (0xFFFF).to_bytes(2, "little")  # e_phnum = PN_XNUM, no section headers
    with pytest.raises(ElfError):
        parse_elf(bytes_reader(bytes(data)))
    data = bytearray(FULL)
    data[64 + 56 + 32 : 64 + 56 + 40] = (1 << 62).to_bytes(8, "little")  # PT_DYNAMIC filesz
    asked: list[int] = []

    def reader(offset: int, size: int) -> bytes:
        asked.append(size)
        return bytes(data[offset : offset + size])

    with pytest.raises(ElfError):
        parse_elf(reader)
    assert max(asked) < 1 << 20


def test_read_elf_refuses_non_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ElfError):
        read_elf(fifo)  # must not block
    with pytest.raises(ElfError):
        read_elf(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_elf(tmp_path / "missing.so")


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for index, value in edits:
        out[index % len(out)] = value
    return bytes(out[:cut]) if cut is not None else bytes(out)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_elf_error(data: bytes) -> None:
    for blob in (data, b"\x7fELF" + data):
        with contextlib.suppress(ElfError):
            parse_elf(bytes_reader(blob))


SEEDS = [
    FULL,
    synth_elf(elf_class=32, order=">", needed=("a", "b"), rpath="/x"),
    synth_elf(elf_class=64, order=">", soname="s", build_id=b"\x02" * 4),
]


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=8),
    st.none() | st.integers(0, 4096),
)
def test_mutated_elf_raises_only_elf_error(seed: bytes, edits, cut) -> None:
    try:
        info = parse_elf(bytes_reader(_mutate(seed, edits, cut)))
    except ElfError:
        return
    assert isinstance(info, ElfInfo)
