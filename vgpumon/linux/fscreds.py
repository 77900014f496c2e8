"""Looking at files with another process's rights: its uid and gid for file access
(``setfsuid``/``setfsgid``, which also drop root's file capabilities while they differ from
0) and its supplementary groups.

The doctor runs as root and follows paths other processes name (an executable's install dir,
``LD_PRELOAD``, ``LD_LIBRARY_PATH``, ``OLLAMA_LIBRARY_PATH``). Looked up with root's rights,
a symlink into a 0700 directory would show the operator its entries: what that process could
not see itself. Under `acting_as` the lookup fails as it would for the process, and the
doctor says it could not read it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

from vgpumon.linux.procfs import Credentials


@contextlib.contextmanager
def acting_as(credentials: Credentials | None) -> Iterator[None]:
    """File access inside the block with `credentials`; nothing changes when they are None
    or this process is not root (it has no more rights than its own then). setgroups is
    process-wide: use it only where no other thread looks at files meanwhile."""
    if credentials is None or os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    groups = os.getgroups()
    fsgid, fsuid = os.getegid(), os.geteuid()
    os.setgroups(list(credentials.groups))
    libc.setfsgid(credentials.gid)
    libc.setfsuid(credentials.uid)
    try:
        yield
    finally:
        libc.setfsuid(fsuid)
        libc.setfsgid(fsgid)
        os.setgroups(groups)
