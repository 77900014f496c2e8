"""Who the doctor runs as, and which privilege would let it read what it could not.

docs/linux.md#permissions: another user's ``maps`` needs CAP_SYS_PTRACE; its ``environ`` also
CAP_DAC_READ_SEARCH; ``/proc/PID/root`` and ``exe`` need CAP_SYS_PTRACE; ``/dev/kmsg`` under
``kernel.dmesg_restrict=1`` needs CAP_SYSLOG; the system journal needs group
``systemd-journal`` (``adm`` on Debian/Ubuntu) or root. A read that failed for want of one
of these is reported as "could not look", never as "not there".
"""

from __future__ import annotations

import errno
import grp
import os
from dataclasses import dataclass

CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_SYSLOG = 34
CAP_PERFMON = 38
CAP_NAMES = {
    CAP_DAC_OVERRIDE: "CAP_DAC_OVERRIDE",
    CAP_DAC_READ_SEARCH: "CAP_DAC_READ_SEARCH",
    CAP_SYS_PTRACE: "CAP_SYS_PTRACE",
    CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
    CAP_SYSLOG: "CAP_SYSLOG",
    CAP_PERFMON: "CAP_PERFMON",
}
# What the doctor needs to see everything, and why.
WANTED = (
    (CAP_SYS_PTRACE, "other users' /proc/PID/maps, exe and root"),
    (CAP_DAC_READ_SEARCH, "other users' /proc/PID/environ (with CAP_SYS_PTRACE)"),
    (CAP_SYSLOG, "/dev/kmsg when kernel.dmesg_restrict=1"),
)
JOURNAL_GROUPS = ("systemd-journal", "adm")

# What reading each kind of thing needs (root has all of it).
NEEDED_FOR = {
    "maps": "CAP_SYS_PTRACE",
    "environ": "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH",
    "root": "CAP_SYS_PTRACE",
    "journal": "membership in group systemd-journal (adm on Debian/Ubuntu)",
    "kmsg": "CAP_SYSLOG (kernel.dmesg_restrict=1 hides /dev/kmsg)",
    "file": "read access to the file",
}
_PERMISSION_TEXTS = (os.strerror(errno.EACCES), os.strerror(errno.EPERM))


@dataclass(frozen=True)
class Privileges:
    uid: int
    euid: int
    groups: tuple[str, ...]
    capabilities: frozenset[int]

    @property
    def root(self) -> bool:
        return self.euid == 0

    def has(self, cap: int) -> bool:
        return cap in self.capabilities

    @property
    def missing(self) -> tuple[tuple[int, str], ...]:
        """The wanted capabilities this process lacks, with what each would allow."""
        return tuple((cap, why) for cap, why in WANTED if not self.has(cap))

    @property
    def can_read_journal(self) -> bool:
        return (self.root or any(g in self.groups for g in JOURNAL_GROUPS)
                or self.has(CAP_DAC_READ_SEARCH) or self.has(CAP_DAC_OVERRIDE))


def parse_capability_mask(text: str) -> frozenset[int]:
    """The capability numbers set in a hex mask (``CapEff:`` of /proc/PID/status)."""
    value = int(text, 16)
    return frozenset(bit for bit in range(64) if value >> bit & 1)


def parse_status_capabilities(data: bytes) -> frozenset[int]:
    for line in data.decode("ascii", "replace").splitlines():
        if line.startswith("CapEff:"):
            return parse_capability_mask(line.split(":", 1)[1].strip())
    return frozenset()


def current_privileges(procfs: str = "/proc") -> Privileges:
    try:
        with open(f"{procfs}/self/status", "rb") as handle:
            caps = parse_status_capabilities(handle.read())
    except OSError:
        caps = frozenset()
    names = []
    for gid in sorted({os.getegid(), *os.getgroups()}):
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
    return Privileges(os.getuid(), os.geteuid(), tuple(names), caps)


def is_permission_problem(error: BaseException | str | None) -> bool:
    """Whether a failed read failed for want of privilege (EACCES, EPERM)."""
    if error is None:
        return False
    if isinstance(error, OSError):
        return error.errno in (errno.EACCES, errno.EPERM)
    text = str(error)
    return any(t in text for t in _PERMISSION_TEXTS)


def describe_error(error: OSError) -> str:
    return error.strerror or str(error)


def cannot_read(what: str, path: str, error: str) -> str:
    """``cannot read /proc/4100/maps (Permission denied); needs CAP_SYS_PTRACE …``"""
    text = f"cannot read {path} ({error})"
    if is_permission_problem(error) and what in NEEDED_FOR:
        text += f"; {needs(what)}"
    return text


def needs(what: str) -> str:
    """``needs CAP_SYS_PTRACE (or root)``"""
    return f"needs {NEEDED_FOR[what]} (or root)"


def remedy(what: str) -> str:
    """The next step for a check that could not look."""
    return f"run the doctor as root, or give it {NEEDED_FOR[what]}"
