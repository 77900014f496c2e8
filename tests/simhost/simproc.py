"""Helpers for code running INSIDE the simulated processes (server, runners, probes).

Stdlib only: these modules run in the launcher's embedded interpreter, which sees no
site-packages. A simulated process finds its simulated root by walking up from its own
executable to the directory holding `.simhost/host.json`.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

HOST_JSON = ".simhost/host.json"
_emit_lock = threading.Lock()


def find_root(exe: str) -> str:
    d = os.path.dirname(exe)
    while d != "/":
        if os.path.exists(os.path.join(d, HOST_JSON)):
            return d
        d = os.path.dirname(d)
    raise RuntimeError(f"{exe} is not inside a simulated host (no {HOST_JSON} above it)")


def read_json(path: str, default: object = None) -> object:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def write_json(path: str, obj: object) -> None:
    """Write atomically (temp + rename) so a concurrent reader never sees half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Gpu:
    uuid: str
    name: str
    compute: str
    driver: str
    pci_id: str
    total: int
    free: int


@dataclass(frozen=True)
class HostConfig:
    root: str
    era: str
    version: str
    gpus: tuple[Gpu, ...]
    models_dir: str

    @classmethod
    def load(cls, root: str) -> HostConfig:
        raw = read_json(os.path.join(root, HOST_JSON))
        assert isinstance(raw, dict)
        return cls(root=root, era=raw["era"], version=raw["version"],
                   gpus=tuple(Gpu(**g) for g in raw["gpus"]), models_dir=raw["models_dir"])

    def state(self, *parts: str) -> str:
        return os.path.join(self.root, ".simhost", *parts)


def emit(line: str, fd: int = 2) -> None:
    """Write one whole line (one write(2), so lines of threads never interleave)."""
    with _emit_lock:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8", "surrogateescape"))


def loader_failure(argv0: str, message: str) -> None:
    """Die like ld.so does when a DT_NEEDED library is missing: message, exit 127."""
    emit(f"{argv0}: error while loading shared libraries: {message}")
    os._exit(127)


def load_library(name: str) -> ctypes.CDLL:
    """dlopen() a library by SONAME (loader search) or by path; OSError with dlerror text."""
    return ctypes.CDLL(name)


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    path: str


def mappings() -> list[Mapping]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append(Mapping(lo, hi, parts[1], int(parts[2], 16), parts[5].rstrip("\n")))
    return out


def mapped_library(library: str) -> str | None:
    """The mapped file whose basename (or path) is `library`, or None."""
    for m in mappings():
        if m.path == library or os.path.basename(m.path) == library:
            return m.path
    return None


def text_segment(path: str) -> Mapping:
    for m in mappings():
        if m.path == path and "x" in m.perms:
            return m
    raise LookupError(f"{path} has no executable mapping")


def crash_address(path: str) -> int:
    """Address of simlib_crash() in the already mapped library `path` (no new mapping)."""
    lib = load_library(path)  # same file already loaded: the loader returns that object
    return ctypes.cast(lib.simlib_crash, ctypes.c_void_p).value or 0


def segfault_in(library: str) -> None:
    """A real, unhandled SIGSEGV inside `library` (a basename or path of a mapped file)."""
    path = mapped_library(library)
    if path is None:
        raise LookupError(f"{library} is not mapped in this process")
    load_library(path).simlib_crash()


def allocate_forever() -> None:
    """Touch memory without bound, 16 MiB at a time, until something kills us."""
    hoard = []
    while True:
        hoard.append(bytearray(b"\x5a") * (16 << 20))


def go_crash_trace(library: str, frames: list[tuple[str, str]], *, signame: str = "SIGSEGV",
                   goroutine_ids: bool = True) -> list[str]:
    """A Go runtime crash report for a fatal signal during cgo execution, its PC inside
    `library` (if mapped), as a Go program prints it to stderr before it exits with 2."""
    exe = text_segment(os.path.realpath("/proc/self/exe"))
    rnd = random.Random(os.getpid())
    path = mapped_library(library)
    # The fault is in `library` when it is mapped, else somewhere in the executable's cgo code.
    pc = crash_address(path) + 0xB if path else exe.start + 0x1A2B

    def gopc() -> int:
        return exe.start + rnd.randrange(0x1000, max(0x2000, exe.end - exe.start - 0x10), 0x10)

    heads = {"SIGSEGV": ("SIGSEGV: segmentation violation", "sigcode=1 addr=0x0"),
             "SIGABRT": ("SIGABRT: abort", "sigcode=18446744073709551610"),
             "SIGBUS": ("SIGBUS: bus error", "sigcode=2 addr=0x0"),
             "SIGILL": ("SIGILL: illegal instruction", "sigcode=2"),
             "SIGFPE": ("SIGFPE: floating-point exception", "sigcode=1")}
    title, sigcode = heads[signame]
    m = 5 + rnd.randrange(8)
    gp = 0xC000000000 + rnd.randrange(0x100000, 0x800000, 0x80)
    lines = [title, f"PC={pc:#x} m={m} {sigcode}", "signal arrived during cgo execution", ""]
    head = (f"goroutine 7 gp={gp:#x} m={m} mp={gp + 0x8008:#x} [syscall]:" if goroutine_ids
            else "goroutine 7 [syscall]:")
    lines.append(head)
    sp = 0xC0000A7B00
    for func, where in [("runtime.cgocall", "runtime/cgocall.go:167"), *frames]:
        lines += [f"{func}(0x{rnd.randrange(1 << 40, 1 << 44):x}, 0x{sp + 0x108:x})",
                  f"\t{where} +0x{rnd.randrange(0x20, 0x200):x} fp=0x{sp + 0x38:x} "
                  f"sp=0x{sp:x} pc=0x{gopc():x}"]
        sp += 0x40
    lines += ["created by github.com/ollama/ollama/runner.Execute in goroutine 1",
              f"\tgithub.com/ollama/ollama/runner/runner.go:22 +0x{rnd.randrange(0x40, 0x400):x}",
              "", "goroutine 1 gp=0xc000002380 m=nil [IO wait]:" if goroutine_ids
              else "goroutine 1 [IO wait]:",
              "runtime.gopark(0x0?, 0x0?, 0x0?, 0x0?, 0x0?)",
              f"\truntime/proc.go:435 +0xce fp=0xc0000a5618 sp=0xc0000a55f8 pc=0x{gopc():x}",
              "internal/poll.runtime_pollWait(0x7f0d8c0c7e28, 0x72)",
              f"\truntime/netpoll.go:351 +0x85 fp=0xc0000a5638 sp=0xc0000a5618 pc=0x{gopc():x}",
              ""]
    regs = ["rax", "rbx", "rcx", "rdx", "rdi", "rsi", "rbp", "rsp", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15"]
    for r in regs:
        value = 0 if r == "rax" else rnd.randrange(1 << 44, 1 << 47)
        lines.append(f"{r:<6} {value:#x}")
    lines += [f"{'rip':<6} {pc:#x}", f"{'rflags':<6} 0x10246", f"{'cs':<6} 0x33",
              f"{'fs':<6} 0x0", f"{'gs':<6} 0x0"]
    return lines


def die_by(signum: int) -> None:
    """Die by `signum` with its default action, whatever handler Python installed."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


# Crashes run on the main thread, so the kernel's segfault record names the process's PID
# (it names the faulting thread) and the process dies the way a single fault kills it.
_main_thread_work: queue.Queue[Callable[[], None]] = queue.Queue()


def on_main_thread(work: Callable[[], None]) -> None:
    _main_thread_work.put(work)


def serve_main_thread(stop: threading.Event | None = None) -> None:
    """Run work handed over with on_main_thread() until `stop` is set (forever if None)."""
    while stop is None or not stop.is_set():
        try:
            work = _main_thread_work.get(timeout=0.2)
        except queue.Empty:
            continue
        work()
