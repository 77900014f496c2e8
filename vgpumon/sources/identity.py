"""Whether a process that looks like Ollama is Ollama: judged by what it cannot set for itself
(docs/configuration.md#membership).

A process chooses its own comm and cmdline (`exec -a`), so any local user can look like
`ollama serve` or a runner. What it cannot choose: the executable the kernel ran
(``/proc/PID/exe``; a user can copy a binary and name it ``ollama``, but the copy is then
owned by that user) and who started it (its parent, from ``/proc/PID/stat``). A group with
identity rules admits a process only when

- its executable's name fits one of `executable` (globs), the file is owned by one of `owner`
  (default root) and is writable by neither group nor others; a child of the `parent` group
  may also run a file owned by its parent's user (eras before 0.5.2 extract their runners
  into the server's TMPDIR);
- with `parent`, its parent process is a member of that group (Ollama starts every runner
  and probe itself, in every era).

The executable is read through the process's own ``/proc/PID/exe`` link, so a container's
``/bin/ollama`` is judged as the file it is. Reading another user's link needs
CAP_SYS_PTRACE: without it the executable rules cannot be applied and only the parent rule
decides (docs/privileges.md).
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass

from vgpumon.config.schema import GroupSpec
from vgpumon.linux.procfs import DELETED_SUFFIX, ProcFS

EXECUTABLE_NAME = "executable_name"
EXECUTABLE_OWNER = "executable_owner"
EXECUTABLE_WRITABLE = "executable_writable"
PARENT = "parent"
REASONS = (EXECUTABLE_NAME, EXECUTABLE_OWNER, EXECUTABLE_WRITABLE, PARENT)
ROOT_UID = 0


@dataclass(frozen=True)
class Executable:
    """The file a process runs, as the kernel knows it."""

    name: str  # its file name (a deleted file's, without the " (deleted)" mark)
    owner: int
    mode: int


def has_identity_rules(group: GroupSpec) -> bool:
    return bool(group.executables) or group.parent is not None


def read_executable(procfs: ProcFS, pid: int) -> Executable | None:
    """None when the link cannot be read (no privilege, or the process is gone)."""
    link = procfs.path(pid, "exe")
    try:
        target = os.readlink(link)
        st = os.stat(link)  # the file itself, even in another mount namespace or deleted
    except OSError:
        return None
    if target.endswith(DELETED_SUFFIX):
        target = target[:-len(DELETED_SUFFIX)]
    return Executable(os.path.basename(target), st.st_uid, st.st_mode)


def rejection(group: GroupSpec, executable: Executable | None, parent_ok: bool,
              parent_uid: int | None) -> str | None:
    """Why a process that matched `group`'s name rules is not a member, or None."""
    if group.parent is not None and not parent_ok:
        return PARENT
    if not group.executables or executable is None:
        return None
    if not any(fnmatch.fnmatchcase(executable.name, glob) for glob in group.executables):
        return EXECUTABLE_NAME
    owners = set(group.owners or (ROOT_UID,))
    if parent_uid is not None:
        owners.add(parent_uid)
    if executable.owner not in owners:
        return EXECUTABLE_OWNER
    if executable.mode & (stat.S_IWGRP | stat.S_IWOTH):
        return EXECUTABLE_WRITABLE
    return None
