"""Doctor: who the doctor runs as, and whether everything could be gathered."""

from __future__ import annotations

from vgpumon.doctor.context import DoctorContext
from vgpumon.doctor.privileges import CAP_NAMES
from vgpumon.doctor.report import Check, ok, warn

TITLE = "Doctor"


def checks(ctx: DoctorContext) -> list[Check]:
    out = [privileges(ctx)]
    if ctx.problems:
        out.append(warn("doctor.gathering", "some facts could not be gathered; the checks that "
                        "need them say so", "report this as a vgpumon bug, with the evidence",
                        ctx.problems))
    return out


def privileges(ctx: DoctorContext) -> Check:
    p = ctx.privileges
    who = f"uid {p.euid}" + (" (root)" if p.root else "")
    held = [name for cap, name in CAP_NAMES.items() if p.has(cap)]
    evidence = [f"effective capabilities: {', '.join(held) or 'none'}",
                f"groups: {', '.join(p.groups) or 'none'}"]
    missing = p.missing
    if not missing and p.can_read_journal:
        return ok("doctor.privileges", f"running as {who} with every privilege it uses",
                  evidence)
    evidence += [f"without {CAP_NAMES[cap]}: cannot read {why}" for cap, why in missing]
    if not p.can_read_journal:
        evidence.append("not in group systemd-journal or adm: sees only its own journal entries")
    return warn(
        "doctor.privileges",
        f"running as {who} without some privileges: checks that need them say what they "
        "could not see",
        "run it as root (sudo vgpumon doctor), or grant CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and "
        "CAP_SYSLOG and group systemd-journal (as vgpumon.service does)",
        evidence,
    )
