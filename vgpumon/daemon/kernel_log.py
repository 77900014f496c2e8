"""The kernel log (``/dev/kmsg``) as an event source: segfault and OOM-kill records become
evidence for the exit classifier.

Only records of the kernel facility count: root can write user-facility lines that look the
same. The exit source reads the log at once before it hands an exit over (`read_now`), so the
evidence is there when the exit is classified; a record that comes later may amend an exit
already published.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence

from vgpumon.config.schema import Config
from vgpumon.daemon.exitclassifier import OOM_KILL, SEGFAULT, Evidence
from vgpumon.daemon.source import Loop, SourceFailure
from vgpumon.model import collectors
from vgpumon.model.events import Event
from vgpumon.sources.kmsg import KERNEL_FACILITY, KmsgReader, parse_oom_kill, parse_segfault


class KernelLog:
    collector = collectors.KMSG

    def __init__(self, path: str = "/dev/kmsg", *,
                 opener: Callable[[str], KmsgReader] = KmsgReader):
        self._path = path
        self._opener = opener  # a test's stand-in for the kernel's records
        self._reader: KmsgReader | None = None
        self._loop: Loop | None = None
        self._problem: str | None = None  # why the log cannot be read now
        self._lost_reported = 0

    @property
    def available(self) -> bool:
        return self._reader is not None

    def start(self, loop: Loop) -> None:
        self._loop = loop
        try:
            self._reader = self._opener(self._path)
        except OSError as err:
            hint = " (needs CAP_SYSLOG under kernel.dmesg_restrict=1)" \
                if err.errno in (errno.EPERM, errno.EACCES) else ""
            self._problem = f"{self._path}: {err.strerror}{hint}"
            raise SourceFailure(self._problem) from None
        loop.classifier.kernel_log = True
        loop.watch(self._reader.fileno(), self.collector, self._on_readable)

    def after_refresh(self, now: float) -> None:
        if self._problem is not None:
            raise SourceFailure(self._problem)

    def on_events(self, events: Sequence[Event]) -> None:
        pass

    def reconfigure(self, config: Config) -> None:
        pass

    def close(self) -> None:
        if self._reader is not None and self._loop is not None:
            self._loop.unwatch(self._reader.fileno())
            self._reader.close()
            self._reader = None

    def read_now(self, now: float) -> None:
        """Read what the kernel has logged so far (evidence for an exit being handled); a
        failure marks this collector, not the caller's."""
        try:
            self._read(now)
        except SourceFailure as failure:
            assert self._loop is not None
            self._loop.failed(self.collector, now, str(failure))

    def _on_readable(self, now: float) -> None:
        if self._read(now) and self._loop is not None:
            self._loop.record((), now)  # a record after the exit it explains amends it

    def _read(self, now: float) -> bool:
        """Read the new records; whether one concerns an exit held or published lately."""
        if self._reader is None or self._loop is None:
            return False
        try:
            records = self._reader.read()
        except OSError as err:
            self._problem = err.strerror or str(err)
            raise SourceFailure(self._problem) from None
        self._problem = None
        if self._reader.lost != self._lost_reported:
            # Records overwritten in the kernel's ring before we read them: nothing to rescan,
            # but a crash's evidence may be among them.
            self._lost_reported = self._reader.lost
            self._loop.events_lost(self.collector, total=self._reader.lost)
        classifier = self._loop.classifier
        concerned = False
        for record in records:
            if record.facility != KERNEL_FACILITY:
                continue
            fault = parse_segfault(record.message)
            if fault is not None:
                classifier.add_evidence(Evidence(
                    SEGFAULT, now, pid=fault.pid, library=fault.library, address=fault.ip,
                    message=record.message))
                concerned = concerned or classifier.concerns(fault.pid)
                continue
            killed = parse_oom_kill(record.message)
            if killed is not None:
                classifier.add_evidence(Evidence(OOM_KILL, now, pid=killed.pid,
                                                 message=record.message))
                concerned = concerned or classifier.concerns(killed.pid)
        return concerned
