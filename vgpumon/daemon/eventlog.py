"""The event log: JSON lines appended to ``events.file``, rotated by size.

Each event is one ``write(2)`` of one whole line on an ``O_APPEND`` descriptor, so nothing is
buffered in vgpumon when it dies. A line cut short (disk full mid-write, or vgpumon killed
inside the write) is cut off again: immediately when the write reports it, or when the log is
next opened. Failures never propagate: they are logged once and counted in `dropped`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator

from vgpumon.model.events import Event

log = logging.getLogger(__name__)


class EventLog:
    def __init__(self, path: str | None, max_bytes: int):
        self.path = path
        self.max_bytes = max_bytes
        self.dropped = 0
        self._fd: int | None = None
        self._size = 0
        self._failing = False

    def append(self, events: Iterable[Event]) -> None:
        if self.path is None:
            return
        for event in events:
            self._write((event.to_json() + "\n").encode("utf-8"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, line: bytes) -> None:
        try:
            fd = self._open()
            if self._size and self._size + len(line) > self.max_bytes:
                fd = self._rotate()
            written = os.write(fd, line)
            if written != len(line):
                os.ftruncate(fd, self._size)
                raise OSError(f"short write ({written} of {len(line)} bytes)")
            self._size += written
        except OSError as err:
            self.dropped += 1
            if not self._failing:
                log.error("event log write failed path=%s error=%r", self.path, str(err))
            self._failing = True
            self.close()  # reopen next time: the file may have been removed or the disk freed
            return
        if self._failing:
            log.info("event log writable again path=%s dropped=%d", self.path, self.dropped)
            self._failing = False

    def _open(self) -> int:
        if self._fd is None:
            assert self.path is not None
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._size = _drop_partial_last_line(fd)
            self._fd = fd
        return self._fd

    def _rotate(self) -> int:
        assert self.path is not None
        self.close()
        os.replace(self.path, self.path + ".1")
        return self._open()


def _drop_partial_last_line(fd: int) -> int:
    """Cut a trailing partial line off; returns the size of the file afterwards."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    cut, end = 0, size
    while end > 0:
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            cut = start + newline + 1
            break
        end = start
    os.ftruncate(fd, cut)
    log.warning("event log had a partial last line, cut fd=%d bytes=%d", fd, size - cut)
    return cut


def read_event_log(path: str) -> Iterator[Event]:
    """Events in the log and its rotated predecessor, oldest first; bad lines are skipped."""
    for name in (path + ".1", path):
        try:
            with open(name, "rb") as handle:
                yield from _parse_lines(handle)
        except FileNotFoundError:
            continue


def _parse_lines(lines: Iterable[bytes]) -> Iterator[Event]:
    for line in lines:
        event = parse_event_line(line)
        if event is not None:
            yield event


def parse_event_line(line: bytes) -> Event | None:
    """One line of the event log, or None if it is not an event."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested a few thousand deep
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        return None
    try:
        event = Event.from_dict(data)
    except (KeyError, TypeError, ValueError, OverflowError):  # a ts too large for a float
        return None
    return event if math.isfinite(event.ts) else None


def follow_event_log(path: str, poll_seconds: float = 0.25) -> Iterator[Event]:
    """The events already in the log, then new ones as they are written (across rotation)."""
    import time

    handle = None
    identity = None
    buffered = b""
    while True:
        if handle is None:
            try:
                handle = open(path, "rb")  # noqa: SIM115 - kept open while following
                identity = os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                time.sleep(poll_seconds)
                continue
        chunk = handle.read()
        if chunk:
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            yield from _parse_lines(lines)
            continue
        try:
            rotated = os.stat(path).st_ino != identity
        except FileNotFoundError:
            rotated = True
        if rotated:
            handle.close()
            handle, buffered = None, b""
            continue
        time.sleep(poll_seconds)
