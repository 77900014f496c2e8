"""Following Ollama's server log: from the journal (``journalctl -f``) or from a file.

Both followers hand out complete lines as bytes, never block the loop (their descriptors are
non-blocking and polled by the loop), cut over-long lines instead of buffering them without
bound, and recover by themselves: a ``journalctl`` that exits or is missing is restarted with
backoff; a log file that is rotated, truncated, deleted or not there yet is picked up again.
Both start at the end of the log: history is read only by `catch_up`, to rebuild state.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

from inotify_simple import INotify
from inotify_simple import flags as in_flags

from vgpumon.ollama.replay import PLAIN, SAMPLE_LINES, detect_format

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20  # a longer line is cut here; the rest of it is dropped
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
CATCH_UP_BYTES = 8 << 20
CATCH_UP_ENTRIES = 20000
HEAD_BYTES = 256 << 10  # read from the start of a log file to tell its format


class LineSplitter:
    """Bytes in, complete lines out; a line longer than `MAX_LINE` is cut and flagged."""

    def __init__(self, limit: int = MAX_LINE):
        self._limit = limit
        self._partial = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        lines = []
        start = 0
        while True:
            newline = data.find(b"\n", start)
            piece = data[start:] if newline < 0 else data[start:newline]
            if not self._skipping:
                room = self._limit - len(self._partial)
                self._partial += piece[:room]
                if len(piece) > room:
                    self._skipping = True
            if newline < 0:
                break
            lines.append(bytes(self._partial))
            self._partial.clear()
            self._skipping = False
            start = newline + 1
        return lines


class JournalFollower:
    """``journalctl -u UNIT -o json -f``, restarted with backoff when it exits."""

    format = "json"

    def __init__(self, unit: str, command: str = "journalctl"):
        self.unit = unit
        self.command = command
        self.error: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._splitter = LineSplitter()
        self._backoff = BACKOFF_FIRST
        self._next_start = 0.0

    def fileno(self) -> int | None:
        return self._process.stdout.fileno() if self._process and self._process.stdout else None

    def ensure_running(self) -> bool:
        """Start journalctl if it is not running and its backoff has passed; True if it runs."""
        if self._process is not None and self._process.poll() is None:
            return True
        if time.monotonic() < self._next_start:
            return False
        binary = shutil.which(self.command)
        if binary is None:
            self._failed(f"{self.command} not found")
            return False
        try:
            self._process = subprocess.Popen(
                [binary, "-u", self.unit, "-o", "json", "--all", "-f", "-n", "0",
                 "--no-pager"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as err:
            self._failed(f"cannot start {binary}: {err.strerror}")
            return False
        assert self._process.stdout is not None
        os.set_blocking(self._process.stdout.fileno(), False)
        self._splitter = LineSplitter()
        log.info("following journal unit=%s pid=%d", self.unit, self._process.pid)
        return True

    def read_lines(self) -> list[bytes]:
        """Complete lines available now. When journalctl has exited, schedules a restart."""
        if self._process is None or self._process.stdout is None:
            return []
        lines: list[bytes] = []
        while True:
            try:
                data = os.read(self._process.stdout.fileno(), 65536)
            except BlockingIOError:
                return lines
            if not data:
                code = self._process.wait()
                self._process.stdout.close()
                self._process = None
                self._failed(f"journalctl exited with status {code}")
                return lines
            self.error = None
            self._backoff = BACKOFF_FIRST
            lines.extend(self._splitter.feed(data))

    def catch_up(self, since: float) -> Iterator[bytes]:
        """Entries of the unit since `since` (unix seconds), at most CATCH_UP_ENTRIES."""
        binary = shutil.which(self.command)
        if binary is None:
            return iter(())
        try:
            result = subprocess.run(
                [binary, "-u", self.unit, "-o", "json", "--all", "--no-pager",
                 "--since", f"@{int(since)}", "-n", str(CATCH_UP_ENTRIES)],
                capture_output=True, timeout=10, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            self.error = f"journal catch-up failed: {err}"
            log.warning("journal catch-up failed unit=%s error=%r", self.unit, str(err))
            return iter(())
        if result.returncode != 0:
            message = result.stderr.decode("utf-8", "replace").strip()[:300]
            self.error = f"journalctl exited with status {result.returncode}: {message}"
            log.warning("journal catch-up failed unit=%s error=%r", self.unit, self.error)
        return iter(result.stdout.splitlines())


    def close(self) -> None:
        if self._process is not None:
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=2)
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait()
            if self._process.stdout:
                self._process.stdout.close()
            self._process = None

    def _failed(self, error: str) -> None:
        if error != self.error:
            log.warning("journal follower unit=%s error=%r retry_in=%.0fs", self.unit, error,
                        self._backoff)
        self.error = error
        self._next_start = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)


class FileFollower:
    """A log file followed across rotation (rename or delete + create) and truncation.

    An inotify watch on the file's directory says when to read; the file is re-opened when
    the name points at another inode, read from the start when it shrank.

    `format` is the log's format (`vgpumon.ollama.replay.FORMATS`: plain, or a container
    runtime's such as Docker's json-file), told from the first lines of each file opened, or
    of the first lines written to a file that was empty; ``plain`` until then.
    """

    WATCH_MASK = (in_flags.MODIFY | in_flags.CREATE | in_flags.MOVED_TO | in_flags.DELETE
                  | in_flags.MOVED_FROM | in_flags.CLOSE_WRITE | in_flags.ATTRIB)

    def __init__(self, path: str):
        self.path = path
        self.error: str | None = None
        self.format = PLAIN
        self._detected = False
        self._inotify = INotify(nonblocking=True)
        self._watching = False
        self._fd: int | None = None
        self._inode: int | None = None
        self._offset = 0
        self._splitter = LineSplitter()
        self._open(at_end=True)

    def fileno(self) -> int:
        return self._inotify.fileno()

    def ensure_running(self) -> bool:
        if not self._watching:
            self._watch()
        if self._fd is None:
            self._open(at_end=False)
        return self._fd is not None

    def read_lines(self) -> list[bytes]:
        with contextlib.suppress(OSError):
            self._inotify.read(timeout=0)
        lines = self._read_new()
        if self._replaced():
            lines += self._read_new()  # what was appended to the old file before the switch
            self._close_file()
            self._open(at_end=False)
            lines += self._read_new()
        if not self._detected:
            self._detect(lines)
        return lines

    def catch_up(self, since: float) -> Iterator[bytes]:
        """The end of the current file (at most CATCH_UP_BYTES), whole lines only."""
        del since  # a plain file has no index by time; the interpreter's state decides
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                limit = min(size, self._offset or size)
                start = max(0, limit - CATCH_UP_BYTES)
                handle.seek(start)
                data = handle.read(limit - start)
        except OSError:
            return iter(())
        lines = data.split(b"\n")
        if start > 0:
            lines = lines[1:]  # the first one is cut
        return iter(line for line in lines[:-1])


    def close(self) -> None:
        self._close_file()
        self._inotify.close()

    def _watch(self) -> None:
        directory = os.path.dirname(self.path) or "."
        try:
            self._inotify.add_watch(directory, self.WATCH_MASK)
            self._watching = True
        except OSError as err:
            self.error = f"cannot watch {directory}: {err.strerror}"

    def _open(self, *, at_end: bool) -> None:
        self._watch()
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as err:
            self._fd = None
            self.error = f"{self.path}: {err.strerror}"
            return
        st = os.fstat(self._fd)
        self._inode = st.st_ino
        self._offset = st.st_size if at_end else 0
        self._splitter = LineSplitter()
        self.error = None
        self._detected = False
        self._detect(self._head())

    def _head(self) -> list[bytes]:
        """The first whole lines of the open file (at most HEAD_BYTES of it)."""
        assert self._fd is not None
        try:
            data = os.pread(self._fd, HEAD_BYTES, 0)
        except OSError:
            return []
        return data.split(b"\n")[:-1]

    def _detect(self, lines: list[bytes]) -> None:
        """Tell the format from the first non-blank lines, once there are any."""
        sample = [line for line in lines if line.strip()][:SAMPLE_LINES]
        if sample:
            detected = detect_format(sample)
            if detected != self.format:
                log.info("log file format path=%s format=%s", self.path, detected)
            self.format, self._detected = detected, True

    def _read_new(self) -> list[bytes]:
        if self._fd is None:
            return []
        lines = []
        try:
            if os.fstat(self._fd).st_size < self._offset:  # truncated (copytruncate)
                self._offset = 0
                self._splitter = LineSplitter()
            while True:
                data = os.pread(self._fd, 1 << 20, self._offset)
                if not data:
                    break
                self._offset += len(data)
                lines.extend(self._splitter.feed(data))
        except OSError as err:
            if err.errno != errno.EAGAIN:
                self.error = f"{self.path}: {err.strerror}"
        return lines

    def _replaced(self) -> bool:
        try:
            # A new file may reuse the old one's inode number once that was freed: a file
            # that exists while none is open is new, whatever its number.
            return self._fd is None or os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return self._fd is not None  # deleted: read what is left, then wait for a new one
        except OSError:
            return False

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
