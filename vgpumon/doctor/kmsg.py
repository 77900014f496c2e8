"""The kernel log's history (``/dev/kmsg`` from its start): segfaults and OOM kills of Ollama's
processes. Parsing is `vgpumon.sources.kmsg`'s; this module only reads the ring buffer once.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from vgpumon.sources.kmsg import (
    KERNEL_FACILITY,
    KmsgFormatError,
    OomKill,
    Segfault,
    parse_oom_kill,
    parse_record,
    parse_segfault,
)

# comm of every Ollama process kind (docs/ollama.md#eras; comm is cut at 15 characters).
OLLAMA_COMMS = frozenset({"ollama", "ollama_llama_se", "ollama-runner", "llama-server"})
MAX_RECORDS = 200_000


@dataclass(frozen=True)
class KernelRecord:
    ts: float  # unix seconds
    message: str
    segfault: Segfault | None = None
    oom: OomKill | None = None

    @property
    def comm(self) -> str | None:
        if self.segfault is not None:
            return self.segfault.comm
        return self.oom.comm if self.oom is not None else None

    @property
    def pid(self) -> int | None:
        if self.segfault is not None:
            return self.segfault.pid
        return self.oom.pid if self.oom is not None else None


@dataclass(frozen=True)
class KernelLog:
    records: tuple[KernelRecord, ...] = ()
    error: str | None = None  # why /dev/kmsg could not be read
    path: str = "/dev/kmsg"


def read_kernel_log(boot_time: float, pids: frozenset[int] = frozenset(),
                    path: str = "/dev/kmsg") -> KernelLog:
    """Crash and OOM-kill records in the kernel's buffer of Ollama's processes (by comm) or of
    `pids`. Records whose text does not say which process are not kept."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        return KernelLog(error=err.strerror or str(err), path=path)
    found: list[KernelRecord] = []
    try:
        for _ in range(MAX_RECORDS):
            try:
                data = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno == errno.EPIPE:  # overwritten while reading: go on
                    continue
                return KernelLog(tuple(found), err.strerror or str(err), path)
            if not data:
                break
            record = _record(data, boot_time)
            if record is not None and (record.comm in OLLAMA_COMMS or record.pid in pids):
                found.append(record)
    finally:
        os.close(fd)
    return KernelLog(tuple(found), None, path)


def _record(data: bytes, boot_time: float) -> KernelRecord | None:
    try:
        record = parse_record(data)
    except KmsgFormatError:
        return None
    if record.facility != KERNEL_FACILITY:
        return None
    ts = boot_time + record.timestamp_us / 1e6
    segfault = parse_segfault(record.message)
    if segfault is not None:
        return KernelRecord(ts, record.message, segfault=segfault)
    oom = parse_oom_kill(record.message)
    if oom is not None:
        return KernelRecord(ts, record.message, oom=oom)
    return None
