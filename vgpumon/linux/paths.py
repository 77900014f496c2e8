"""The one path resolver: turn a path as some process sees it into a file vgpumon can open.

A path in a process's maps, cmdline or environment is a path in *that process's* mount
namespace. Ollama often runs in a container, so such a path must be resolved through
``/proc/PID/root`` with symlinks followed *inside* that root: an absolute symlink target in a
container means the container's ``/``, never the host's, which is why the kernel's own lookup
through ``/proc/PID/root/...`` cannot be used for paths that contain symlinks.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from dataclasses import dataclass

_MAX_SYMLINKS = 40


@dataclass(frozen=True)
class FileView:
    """A filesystem as one process (or the host) sees it.

    `root` is the directory that is ``/`` in this view: ``/`` for the host, ``/proc/PID/root``
    for a process, ``/host`` for a host filesystem mounted into vgpumon's container.
    `label` names the view in messages (``host``, ``pid 4100``).
    """

    root: str = "/"
    label: str = "host"

    @property
    def is_identity(self) -> bool:
        return self.root.rstrip("/") == ""

    def outside(self, path: str) -> str:
        """The path under which vgpumon reaches `path` of this view (no symlinks followed)."""
        if self.is_identity:
            return path
        return self.root.rstrip("/") + "/" + path.lstrip("/")

    def realpath(self, path: str, *, strict: bool = False) -> str:
        """`path` with every symlink followed inside this view; a path of this view.

        With ``strict=False`` a missing component ends the resolution and the rest is appended
        as written (like ``os.path.realpath``). With ``strict=True`` it raises the OSError.
        Symlink loops raise ``OSError(ELOOP)`` in both modes.
        """
        if self.is_identity:
            try:
                return _kernel_realpath(path)
            except OSError:
                if strict:
                    raise
                return os.path.realpath(path)  # resolves as far as it goes
        return _resolve_in_root(self.root.rstrip("/"), path, strict=strict)

    # In the identity view the kernel's own lookup follows the same symlinks as the resolver
    # does, in one call instead of one lstat per component (links are checked every refresh).

    def stat(self, path: str) -> os.stat_result:
        """stat() following symlinks inside this view."""
        if self.is_identity:
            return os.stat(path)
        return os.stat(self.outside(self.realpath(path, strict=True)))

    def lstat(self, path: str) -> os.stat_result:
        """lstat() of the last component; the directories above it are resolved in this view."""
        if self.is_identity:
            return os.lstat(path)
        parent, name = os.path.split(path)
        return os.lstat(self.outside(os.path.join(self.realpath(parent or "/", strict=True), name)))

    def readlink(self, path: str) -> str:
        if self.is_identity:
            return os.readlink(path)
        parent, name = os.path.split(path)
        return os.readlink(
            self.outside(os.path.join(self.realpath(parent or "/", strict=True), name))
        )

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except OSError:
            return False
        return True


HOST = FileView("/", "host")


def process_view(procfs: str, pid: int) -> FileView:
    """The filesystem as process `pid` sees it (reading it needs ptrace access to `pid`)."""
    return FileView(os.path.join(procfs, str(pid), "root"), f"pid {pid}")


def _kernel_realpath(path: str) -> str:
    """``os.path.realpath(path, strict=True)`` by the kernel: open the file itself (O_PATH,
    following every symlink) and read back the name of what was opened."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        resolved = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        resolved = ""  # no /proc of our own
    finally:
        os.close(fd)
    if not resolved.startswith("/") or resolved.endswith(" (deleted)"):
        return os.path.realpath(path, strict=True)  # unreachable from here, or just unlinked
    return resolved


def _resolve_in_root(root: str, path: str, *, strict: bool) -> str:
    pending: deque[str] = deque(path.split("/"))
    resolved: list[str] = []
    followed = 0
    while pending:
        name = pending.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/" + "/".join([*resolved, name])
        try:
            mode = os.lstat(root + candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            if strict:
                raise
            rest = os.path.normpath("/".join([name, *pending]))
            return "/" + "/".join([*resolved, *(p for p in rest.split("/") if p)])
        if not stat.S_ISLNK(mode):
            resolved.append(name)
            continue
        followed += 1
        if followed > _MAX_SYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        target = os.readlink(root + candidate)
        if target.startswith("/"):
            resolved = []
        pending.extendleft(reversed(target.split("/")))
    return "/" + "/".join(resolved)
