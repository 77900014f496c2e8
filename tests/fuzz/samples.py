"""Real inputs of every parser: the seeds that `tests.fuzz.mutate` damages.

Fixed text (from docs/linux.md, docs/ollama.md and the parsers' own test tables), never
read from this machine, so that derandomized runs draw the same examples everywhere.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import yaml

from tests.doctor.elfbuild import synth_elf
from tests.doctor.test_elf import SEEDS as ELF_SEEDS
from tests.doctor.test_ldcache import SEED as LDCACHE_SEED
from tests.doctor.test_ldcache import synth_cache
from tests.ollama.test_api import PS_CURRENT
from tests.ollama.test_fuzz import KNOWN_LINES
from vgpumon.model.events import Event

REPO = Path(__file__).resolve().parents[2]
OLLAMA_DATA = REPO / "tests" / "ollama" / "data"

# --- /proc ------------------------------------------------------------------------------------

MAPS_LINES = [
    b"7f3a1c000000-7f3a1c02a000 r--p 00000000 fe:00 340072                     "
    b"/usr/lib64/libvgpu-cuda.so",
    b"7f3a1c02a000-7f3a1c1f0000 r-xp 0002a000 fe:00 340072                     "
    b"/usr/lib64/libvgpu-cuda.so",
    b"7f3a1c400000-7f3a1c401000 r--p 00000000 fe:00 2171103                    "
    b"/opt/x/old lib.so (deleted)",
    b"7f3a1c600000-7f3a1c621000 rw-p 00000000 00:00 0 ",
    b"7f2c8dd00000-7f2c90710000 r-xp 00000000 00:2a 81                         "
    b"/usr/local/lib/ollama/cuda_v12/libggml-cuda.so",
    b"55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]",
    b"7ffc0a998000-7ffc0a9b9000 rw-p 00000000 00:00 0                          [stack]",
    b"7f0000000000-7f0000001000 rw-s 00000000 00:01 1025                       /memfd:x (deleted)",
    b"7f0000002000-7f0000003000 r--p 00001000 103:02 77                        "
    b"/weird/name\\012with newline",
    b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
]
MAPS = [b"\n".join(MAPS_LINES) + b"\n", *MAPS_LINES]

_STAT_TAIL = b"0 -1 4194560 100 0 0 0 1 2 0 0 20 0 8 0 123456 1000 100 18446744073709551615"
STAT = [
    b"4100 (ollama) S 1 4100 4100 " + _STAT_TAIL,
    b"4242 (ollama_llama_se) R 4100 4100 4100 " + _STAT_TAIL,
    b"77 (a) b) (c) S 5 77 77 " + _STAT_TAIL,
    b"78 (x y) Z 5 77 77 " + _STAT_TAIL + b"\n",
]
CMDLINE = [
    b"/usr/local/bin/ollama\0serve\0",
    b"/usr/local/bin/ollama\0runner\0--ollama-engine\0--model\0/usr/share/ollama/.ollama/"
    b"models/blobs/sha256-45b1c9806e74e0494dd9a08d54a93258ffe5b6ed6468a2c6c274a21bddd7d380\0"
    b"--port\x0041235\0",
    b"",
    b"with space\0\xff\0",
]
ENVIRON = [
    b"PATH=/usr/local/sbin:/usr/local/bin:/usr/bin\0HOME=/usr/share/ollama\0"
    b"LD_PRELOAD=/usr/lib64/libvgpu-exec.so:/usr/lib64/libvgpu-cuda.so\0"
    b"LD_LIBRARY_PATH=/usr/local/lib/ollama/cuda_v12:/usr/lib64\0CUDA_VISIBLE_DEVICES=0\0"
    b"OLLAMA_LIBRARY_PATH=/usr/local/lib/ollama\0",
    b"A==b\0=novalue\0noequals\0\0",
]
PROC_STAT = [b"cpu  1 2 3 4\nintr 5\nbtime 1749543000\nprocesses 77\n"]

# --- /dev/kmsg --------------------------------------------------------------------------------

SEGFAULT_MESSAGES = [
    b"ollama_llama_se[51207]: segfault at 18 ip 00007f2c8e1d4119 sp 00007ffc0a9b7e30 error 4 "
    b"in libggml-cuda.so[4d4119,7f2c8dd00000+2a10000] likely on CPU 3 (core 3, socket 0)",
    b"llama-server[9]: segfault at 0 ip 00007f12 sp 00007ffd error 6 in "
    b"libvgpu-cuda.so[7f0000+1000]",
    b"traps: python3[1234] general protection fault ip:7f12 sp:7ffd error:0 in "
    b"libc.so.6[7f00+1000]",
    b"traps: prog[123] trap invalid opcode ip:401136 sp:7ffd error:0 in prog[401000+1000]",
]
OOM_MESSAGES = [
    b"Out of memory: Killed process 4242 (ollama) total-vm:1kB, anon-rss:1kB, file-rss:0kB, "
    b"shmem-rss:0kB, UID:997 pgtables:4kB oom_score_adj:0",
    b"Memory cgroup out of memory: Killed process 3119 (python3) total-vm:67784kB",
    b"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    b"oom_memcg=/vgtest,task_memcg=/vgtest,task=python3,pid=3119,uid=0",
    b"ollama invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, "
    b"oom_score_adj=0",
]
KMSG_RECORDS = [
    b"6,912,88231004,-;" + SEGFAULT_MESSAGES[0] + b"\n SUBSYSTEM=x\n DEVICE=+y:z\n",
    b"6,913,88231010,-;Code: 48 8b 07 <89> 10 c3\n",
    b"3,1001,99000000,-;" + OOM_MESSAGES[0] + b"\n",
    b"6,1000,98999999,-;" + OOM_MESSAGES[2] + b"\n",
    b"4,999,98999990,-;" + OOM_MESSAGES[3] + b"\n",
    b"14,5,1,-;user text\n",
    b"6,914,88231011,c;continued\n",
]

# --- proc connector ---------------------------------------------------------------------------


def datagram(what: int, body: bytes, cn_idx: int = 1) -> bytes:
    event = struct.pack("=IIQ", what, 3, 123456789) + body
    cn = struct.pack("=IIIIHH", cn_idx, 1, 7, 0, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 7, 0) + cn


_EXIT = datagram(0x80000000, struct.pack("=iiIiii", 4242, 4242, 0xB, 17, 4100, 4100))
_THREAD_EXIT = datagram(0x80000000, struct.pack("=iiIiii", 4243, 4242, 0, -1, 0, 0))
_EXEC = datagram(0x2, struct.pack("=ii", 10, 10))
_FORK = datagram(0x1, struct.pack("=iiii", 1, 1, 11, 11))
_CORE = datagram(0x40000000, struct.pack("=iiii", 4242, 4242, 4100, 4100))
_ACK = datagram(0x0, struct.pack("=I", 0))
_COMM = datagram(0x200, struct.pack("=ii16s", 10, 10, b"ollama"))
DATAGRAMS = [_EXIT, _THREAD_EXIT, _EXEC, _FORK, _CORE, _ACK, _COMM,
             _EXEC + _EXIT + _FORK, datagram(0x2, struct.pack("=ii", 1, 1), cn_idx=9)]

# --- Ollama -----------------------------------------------------------------------------------

LOG_LINES = sorted({
    *(line.encode() if isinstance(line, str) else line for line in KNOWN_LINES),
    *(OLLAMA_DATA / "multi_era.log").read_bytes().splitlines(),
    *(OLLAMA_DATA / "journal_short.log").read_bytes().splitlines(),
    b"2025-06-10T08:15:02.114+02:00 gpu-node-3 ollama[4100]: llm_load_tensors: offloaded 33/33 "
    b"layers to GPU",
    b"[ 8823.100204] gpu-node-3 ollama[4100]: time=2025-06-10T08:15:02.114Z level=INFO "
    b'source=x.go:1 msg="a b" k="v \\"q\\" \\xff \\u00e9"',
    b"2025-06-10T08:15:02.114567891Z time=2025-06-10T08:15:02.114Z level=WARN msg=x",
    b"2024/05/01 10:00:00 server.go:1: ERROR llama runner terminated error=\"exit status 2\"",
})
# The same lines as container runtimes store them (docs/ollama.md#container-logs).
CONTAINER_LINES = [
    *(json.dumps({"log": line.decode("utf-8", "replace") + "\n", "stream": "stderr",
                  "time": "2025-03-05T09:00:48.123456789Z"}, separators=(",", ":")).encode()
      for line in LOG_LINES[::3]),
    *(b"2025-03-05T09:00:48.123456789Z stderr F " + line for line in LOG_LINES[1::3]),
    *(b"2025-03-05T09:00:48.123456789Z " + line for line in LOG_LINES[2::6]),
    *(b"2025-03-05 09:00:48 " + line for line in LOG_LINES[5::6]),
    b'{"log":"time=2025-03-05T09:00:48.120Z level=INFO msg=\\"a","stream":"stderr",'
    b'"time":"2025-03-05T09:00:48.123456789Z"}',
    b"2025-03-05T10:00:48.1+01:00 stdout P load_tensors: offl",
    b'{"log":"\\ud800\\n","stream":"stdout","time":"0001-01-01T00:00:00Z"}',
]
# Consecutive lines of a real log, for the interpreter (state across lines matters).
LOG_CHUNKS = [
    b"\n".join(lines[i : i + size])
    for lines in [(OLLAMA_DATA / "multi_era.log").read_bytes().splitlines()]
    for size in (3, 8)
    for i in range(0, len(lines), size)
] + [b"\n".join(CONTAINER_LINES[i : i + 8]) for i in range(0, len(CONTAINER_LINES), 8)]


def _journal(message: object, **extra: object) -> bytes:
    entry = {
        "__CURSOR": "s=0123abcd;i=1f2;b=77aa;m=5f5e100;t=61e5b3a0b8f90;x=9c1",
        "__REALTIME_TIMESTAMP": "1749543302114532", "__MONOTONIC_TIMESTAMP": "100000000",
        "_BOOT_ID": "77aa", "PRIORITY": "6", "SYSLOG_FACILITY": "3",
        "SYSLOG_IDENTIFIER": "ollama", "_PID": "4100", "_UID": "998", "_COMM": "ollama",
        "_EXE": "/usr/local/bin/ollama", "_CMDLINE": "/usr/local/bin/ollama serve",
        "_SYSTEMD_UNIT": "ollama.service", "_TRANSPORT": "stdout", "MESSAGE": message,
    }
    entry.update(extra)
    return json.dumps(entry).encode()


JOURNAL = [
    *(_journal(line.decode("utf-8", "replace")) for line in LOG_LINES[::4]),
    _journal(list(b"ggml_cuda_init: failed \x1b[31m\xff")),
    _journal(None),
    _journal(["line one", "line two"]),
    _journal(["text", [104, 105, 255]]),
    _journal("x", _PID=["4100", "4101"], PRIORITY=[54]),
    _journal("x", _SYSTEMD_UNIT=None, _SYSTEMD_USER_UNIT="ollama.service"),
]

API_VERSION = [b'{"version":"0.12.3"}', b'{"version":"0.13.0-rc1"}', b'{"version":"0.1.17"}']
API_PS = [
    PS_CURRENT,
    b'{"models":[]}',
    b'{"models":null}',
    b'{"models":[{"name":"a:1","size":1,"expires_at":"2024-06-01T12:00:00.123456789Z"},'
    b'{"name":"b:1","size":1,"expires_at":"0001-01-01T00:00:00Z"}]}',
    b'{"models":[{"name":"llama3:latest","model":"llama3:latest","size":5137025024,"digest":'
    b'"365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1","details":{"parent_model"'
    b':"","format":"gguf","family":"llama","families":["llama"],"parameter_size":"8.0B",'
    b'"quantization_level":"Q4_0"}}]}',
    b'{"models":[{"name":"x:1","size":3,"details":null,"size_vram":null}]}',
]

# --- config -----------------------------------------------------------------------------------

_SHIPPED = (REPO / "config" / "vgpumon.yaml").read_bytes()
_SMALL = {
    "listen": "127.0.0.1:0",
    "interval": "100ms",
    "procfs": "/proc",
    "libraries": {"vgpu-cuda": {"path": "/usr/lib64/libvgpu-cuda.so"},
                  "ggml-cuda": {"name": "libggml-cuda.so*"},
                  "cuda-driver": {"name": "libcuda.so.*", "driver": True, "view": "server"}},
    "shims": ["vgpu-cuda"],
    "links": [{"path": "/usr/lib64/libcuda.so.1", "target": "/usr/lib64/libvgpu-cuda.so"}],
    "groups": {"server": {"comm": "^ollama$", "cmdline": "\\bserve\\b", "expect": ["vgpu-cuda"]},
               "runner": {"cmdline": "ollama runner.*--model", "exe": "ollama$"}},
    "crash_loop": {"crashes": 3, "window": "10m"},
    "ollama": {"url": "https://[::1]:11434/", "timeout": "1h30m",
               "log": {"file": "/var/log/ollama.log"}, "models_dir": "/m", "expected_gpus": 0},
    "events": {"file": "/tmp/e.jsonl", "max_bytes": 4096, "memory": 5},
    "watch_dirs": ["/usr/lib64"],
    "web_config_file": "",
}
CONFIG = [
    _SHIPPED,
    yaml.safe_dump(_SMALL, sort_keys=False).encode(),
    json.dumps(_SMALL).encode(),  # JSON is YAML
    b"",
    b"listen: '[::]:9842'\nollama:\n  log: {}\nevents: {file: null}\n",
    b"libraries: &libs\n  a: {path: /a}\nshims: [a]\ngroups: {g: {comm: x, expect: [a]}}\n",
]

# --- ELF and ld.so.cache (the doctor's seeds, reused) ----------------------------------------

ELF = [*ELF_SEEDS, synth_elf(soname="libvgpu-cuda.so", needed=("libc.so.6", "libdl.so.2"),
                             runpath="$ORIGIN", flags_1=0x800, build_id=b"\xab" * 20)]
LDCACHE = [
    LDCACHE_SEED,
    synth_cache([("libcuda.so.1", "/usr/lib64/libcuda.so.1", 0x0303, 0)], endian=3),
    synth_cache([]),
]

# --- event log --------------------------------------------------------------------------------

EVENT_LINES = [
    Event(1749543302.114, "process_exited", {
        "group": "runner", "pid": 4242, "reason": "crash", "exit_code": None, "signal": "SIGSEGV",
        "library": "libvgpu-cuda.so", "model": "sha256-45b1", "source": "proc_connector",
        "lifetime_seconds": 3.5}).to_json().encode(),
    Event(1749543302.0, "shim_link_changed", {
        "path": "/usr/lib64/libcuda.so.1", "old_target": "libvgpu-cuda.so",
        "new_target": "libcuda.so.575.51.03", "state": "wrong_target"}).to_json().encode(),
    Event(1.5, "offload", {"gpu_layers": 10, "total_layers": 29, "estimate": False,
                           "message": "caf\u00e9 \"q\" \\ \u2028"}).to_json().encode(),
    Event(0, "cpu_only").to_json().encode() + b"\n",
]
