"""What systemd knows about the Ollama unit: ``systemctl show`` (docs/linux.md#systemctl-show).

Parsing is pure; `unit_status` runs ``systemctl`` only where systemd is PID 1, and says why
not otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

PROPERTIES = ("LoadState", "ActiveState", "SubState", "Result", "NRestarts", "ExecMainCode",
              "ExecMainStatus", "ExecMainPID", "MainPID", "ExecMainStartTimestamp")
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
TIMEOUT = 5.0


@dataclass(frozen=True)
class UnitStatus:
    """`systemctl show` of one unit, or why it was not asked (`skipped`) or failed (`error`)."""

    unit: str
    properties: Mapping[str, str] = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None

    def get(self, key: str) -> str | None:
        value = self.properties.get(key)
        return value if value not in (None, "") else None

    @property
    def loaded(self) -> bool:
        return self.get("LoadState") == "loaded"

    @property
    def restarts(self) -> int | None:
        return _int(self.get("NRestarts"))

    @property
    def last_exit(self) -> str | None:
        """The last main-process exit in words (``exit status 2``, ``signal 11, core dumped``),
        None before any exit."""
        code, status = _int(self.get("ExecMainCode")), _int(self.get("ExecMainStatus"))
        if not code or status is None:
            return None
        if code == CLD_EXITED:
            return f"exit status {status}" + (" (could not exec)" if status == 203 else "")
        what = f"signal {status}"
        return what + (", core dumped" if code == CLD_DUMPED else "")


def parse_show(text: str) -> dict[str, str]:
    """``Key=Value`` lines of ``systemctl show`` (order not guaranteed, values may hold ``=``)."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and key.replace("_", "").isalnum():
            result[key] = value
    return result


def unit_of_cgroup(text: str) -> str | None:
    """The systemd unit a process belongs to, from ``/proc/PID/cgroup`` (v2 ``0::/path`` or
    the v1 ``name=systemd`` line): the last ``.service`` component of the path."""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or (parts[0] != "0" and parts[1] != "name=systemd"):
            continue
        for component in reversed(parts[2].split("/")):
            if component.endswith(".service"):
                return component
    return None


def systemd_is_init(procfs: str = "/proc") -> tuple[bool, str]:
    """(systemd manages this host, why not when it does not)."""
    try:
        with open(f"{procfs}/1/comm", encoding="utf-8", errors="replace") as handle:
            comm = handle.read().strip()
    except OSError as err:
        return False, f"cannot read {procfs}/1/comm ({err.strerror})"
    if comm != "systemd" and not os.path.isdir("/run/systemd/system"):
        return False, f"PID 1 is {comm!r}, not systemd: no unit to ask"
    return True, ""


def unit_status(unit: str, procfs: str = "/proc", systemctl: str = "systemctl") -> UnitStatus:
    booted, why = systemd_is_init(procfs)
    if not booted:
        return UnitStatus(unit, skipped=why)
    binary = shutil.which(systemctl)
    if binary is None:
        return UnitStatus(unit, skipped=f"{systemctl} not found")
    # The unit name comes from the server's cgroup path, which a delegated user can name:
    # after "--" it can only ever be a unit name, never an option.
    args = [binary, "show", "--no-pager", *(f"--property={p}" for p in PROPERTIES), "--", unit]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return UnitStatus(unit, error=f"systemctl show {unit}: {err}")
    if done.returncode != 0:
        return UnitStatus(unit, error=f"systemctl show {unit}: {done.stderr.strip()}")
    return UnitStatus(unit, parse_show(done.stdout))


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
