"""Pure /proc parsers, fed with real-format lines including the odd cases."""

from __future__ import annotations

import os
import re
import sys

import pytest

from vgpumon.linux.procfs import (
    PACK_OVER,
    Credentials,
    ProcessMaps,
    ProcFS,
    ProcParseError,
    parse_boot_time,
    parse_cmdline,
    parse_credentials,
    parse_environ,
    parse_maps,
    parse_stat,
    select_lines,
)

STAT_TAIL = b"0 -1 4194560 100 0 0 0 1 2 0 0 20 0 8 0 123456 1000 100 18446744073709551615"


@pytest.mark.parametrize(("line", "pid", "comm", "ppid", "start"), [
    (b"4100 (ollama) S 1 4100 4100 " + STAT_TAIL, 4100, "ollama", 1, 123456),
    (b"4242 (ollama_llama_se) R 4100 4100 4100 " + STAT_TAIL, 4242, "ollama_llama_se", 4100,
     123456),
    # comm may contain spaces and parentheses: split at the LAST ')'
    (b"77 (a) b) (c) S 5 77 77 " + STAT_TAIL, 77, "a) b) (c", 5, 123456),
    (b"78 (x y) Z 5 77 77 " + STAT_TAIL, 78, "x y", 5, 123456),
])
def test_parse_stat(line, pid, comm, ppid, start):
    stat = parse_stat(line)
    assert (stat.pid, stat.comm, stat.ppid, stat.start_ticks) == (pid, comm, ppid, start)


def test_parse_stat_of_this_process():
    with open("/proc/self/stat", "rb") as handle:
        stat = parse_stat(handle.read())
    assert stat.pid == os.getpid()
    assert stat.ppid == os.getppid()
    assert stat.start_ticks > 0


@pytest.mark.parametrize("line", [b"", b"12 no parens", b"12 (x) S 1 2"])
def test_parse_stat_rejects_garbage(line):
    with pytest.raises(ProcParseError):
        parse_stat(line)


@pytest.mark.parametrize(("data", "argv"), [
    (b"/usr/local/bin/ollama\0serve\0", ("/usr/local/bin/ollama", "serve")),
    (b"/usr/local/bin/ollama\0runner\0--model\0/m/blobs/sha256-ab\0--port\0"
     b"41235\0", ("/usr/local/bin/ollama", "runner", "--model", "/m/blobs/sha256-ab", "--port",
                  "41235")),
    (b"", ()),  # kernel thread, zombie
    (b"single", ("single",)),
    (b"with space\0\xff\0", ("with space", "\udcff")),
])
def test_parse_cmdline(data, argv):
    assert parse_cmdline(data) == argv


def test_parse_environ_skips_malformed_entries():
    env = parse_environ(b"OLLAMA_HOST=0.0.0.0\0LD_PRELOAD=/a.so /b.so\0junk\0EMPTY=\0=x\0")
    assert env == {"OLLAMA_HOST": "0.0.0.0", "LD_PRELOAD": "/a.so /b.so", "EMPTY": ""}


def test_parse_boot_time():
    assert parse_boot_time(b"cpu  1 2 3\nbtime 1700000000\nprocesses 5\n") == 1700000000.0
    with pytest.raises(ProcParseError):
        parse_boot_time(b"cpu 1\n")


MAPS = b"""\
55d0c8a00000-55d0c8a2a000 r--p 00000000 fe:00 1316                       /usr/local/bin/ollama
55d0c8a2a000-55d0c8f00000 r-xp 0002a000 fe:00 1316                       /usr/local/bin/ollama
55d0ca000000-55d0ca021000 rw-p 00000000 00:00 0                          [heap]
7f3a1c000000-7f3a1c02a000 r--p 00000000 fe:00 340072                     /usr/lib64/libvgpu-cuda.so
7f3a1c02a000-7f3a1c1f0000 r-xp 0002a000 fe:00 340072                     /usr/lib64/libvgpu-cuda.so
7f3a1c400000-7f3a1c401000 r--p 00000000 fe:00 2171103                    /opt/x/old lib.so (deleted)
7f3a1c600000-7f3a1c621000 rw-p 00000000 00:00 0<SP>
7f3a1c700000-7f3a1c701000 rw-s 00000000 00:05 1055                       /dev/nvidia0
7f3a1c800000-7f3a1c801000 rw-s 00000000 00:01 2048                       /memfd:cuda-ipc (deleted)
7ffd1e9c0000-7ffd1e9e1000 rw-p 00000000 00:00 0                          [stack]
7ffd1e9f3000-7ffd1e9f7000 r--p 00000000 00:00 0                          [vvar]
7ffd1e9f7000-7ffd1e9f9000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
7f3a1d000000-7f3a1d001000 r--p 00000000 103:02 99                        /data/with  two  spaces.so
""".replace(b"<SP>", b" ")  # anonymous lines end in a space


def test_parse_maps_keeps_file_backed_mappings_only():
    files = {f.path: f for f in parse_maps(MAPS)}
    assert set(files) == {
        "/usr/local/bin/ollama", "/usr/lib64/libvgpu-cuda.so", "/opt/x/old lib.so",
        "/dev/nvidia0", "/memfd:cuda-ipc", "/data/with  two  spaces.so",
    }


def test_parse_maps_folds_vmas_of_one_file():
    shim = next(f for f in parse_maps(MAPS) if f.basename == "libvgpu-cuda.so")
    assert shim.dev == os.makedev(0xFE, 0x00)
    assert shim.inode == 340072
    assert not shim.deleted
    assert [(r.start, r.end, r.offset) for r in shim.ranges] == [
        (0x7F3A1C000000, 0x7F3A1C02A000, 0),
        (0x7F3A1C02A000, 0x7F3A1C1F0000, 0x2A000),
    ]
    assert shim.contains(0x7F3A1C02B000)
    assert not shim.contains(0x7F3A1C1F0000)  # end is exclusive


def test_parse_maps_deleted_suffix_and_spaces():
    files = {f.path: f for f in parse_maps(MAPS)}
    old = files["/opt/x/old lib.so"]
    assert old.deleted and old.basename == "old lib.so"
    assert files["/data/with  two  spaces.so"].dev == os.makedev(0x103, 0x02)


def test_parse_maps_of_this_process_finds_libc():
    with open("/proc/self/maps", "rb") as handle:
        files = parse_maps(handle.read())
    assert any(f.basename.startswith("libc.so") or f.basename.startswith("libc-")
               for f in files)
    assert all(f.inode != 0 for f in files)


@pytest.mark.parametrize("data", [b"", b"\n\n", b"garbage line\n", b"zz-yy r--p 0 0:0 5 /x\n"])
def test_parse_maps_tolerates_junk(data):
    assert parse_maps(data) == ()


def test_select_lines_keeps_matching_lines_in_order():
    data = b"a 1\nb /x/lib.so\nc 3\nd /y/lib.so (deleted)\ne /dev/nvidia0"
    patterns = [re.compile(rb"/lib\.so(?: \(deleted\))?$", re.MULTILINE),
                re.compile(rb"/dev/nvidia")]
    assert select_lines(data, patterns) == b"b /x/lib.so\nd /y/lib.so (deleted)\ne /dev/nvidia0"
    assert select_lines(data, [re.compile(rb"nothing")]) == b""
    assert select_lines(b"", patterns) == b""


def test_process_maps_parse_on_first_look_and_compare_like_the_parse():
    maps = ProcessMaps(MAPS)
    assert maps and not ProcessMaps()
    assert maps == parse_maps(MAPS)
    assert [f.path for f in maps] == [f.path for f in parse_maps(MAPS)]
    assert ProcessMaps() == ()


def test_a_large_maps_is_kept_compressed_and_reads_back_the_same():
    large = MAPS * (PACK_OVER // len(MAPS) + 1)
    maps = ProcessMaps(large)
    assert maps.size == len(large) and maps.data == large
    assert sys.getsizeof(maps._kept) < len(large) // 10
    assert maps == parse_maps(large)


def test_credentials_are_the_effective_ids_and_the_groups():
    status = (b"Name:\tollama\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n"
              b"Uid:\t1000\t999\t998\t997\nGid:\t2000\t1999\t1998\t1997\n"
              b"FDSize:\t64\nGroups:\t44 109 \nNStgid:\t4242\n")
    assert parse_credentials(status) == Credentials(999, 1999, (44, 109))
    no_groups = status.replace(b"Groups:\t44 109 \n", b"Groups:\t\n")
    assert parse_credentials(no_groups) == Credentials(999, 1999, ())


def test_credentials_of_a_status_without_ids_are_an_error():
    with pytest.raises(ProcParseError):
        parse_credentials(b"Name:\tx\nUid:\t0\n")
    with pytest.raises(ProcParseError):
        parse_credentials(b"Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n")  # no Groups line


def test_credentials_of_this_process():
    mine = ProcFS().credentials(os.getpid())
    assert mine == Credentials(os.geteuid(), os.getegid(), tuple(sorted(os.getgroups())))
