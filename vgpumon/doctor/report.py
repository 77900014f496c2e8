"""The doctor's findings: checks grouped in sections, and the report they make.

A `Check` says one thing about the host: its id (stable, dotted: ``shims.links``), a status,
a one-line finding, the evidence it rests on (paths, PIDs, log lines) and, for ``warn`` and
``fail``, what to do next. The JSON form (`Report.to_dict`) is a contract for scripts; it
round-trips through `Report.from_dict`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

EXIT_HEALTHY = 0
EXIT_PROBLEMS = 1
EXIT_DOCTOR_FAILED = 2


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


STATUS_ORDER = (Status.OK, Status.WARN, Status.FAIL, Status.SKIP)


@dataclass(frozen=True)
class Check:
    """One finding. `action` is required for warn and fail: a finding nobody can act on is
    not worth a warning."""

    id: str
    status: Status
    finding: str
    evidence: tuple[str, ...] = ()
    action: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "evidence", tuple(self.evidence))
        if self.status in (Status.WARN, Status.FAIL) and not self.action:
            raise ValueError(f"check {self.id}: a {self.status} needs an action")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": str(self.status),
            "finding": self.finding,
            "evidence": list(self.evidence),
            "action": self.action,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        return cls(
            id=str(data["id"]),
            status=Status(data["status"]),
            finding=str(data["finding"]),
            evidence=tuple(str(e) for e in data.get("evidence") or ()),
            action=data.get("action"),
        )


def ok(check_id: str, finding: str, evidence: Iterable[str] = ()) -> Check:
    return Check(check_id, Status.OK, finding, tuple(evidence))


def skip(check_id: str, finding: str, evidence: Iterable[str] = ()) -> Check:
    return Check(check_id, Status.SKIP, finding, tuple(evidence))


def warn(check_id: str, finding: str, action: str, evidence: Iterable[str] = ()) -> Check:
    return Check(check_id, Status.WARN, finding, tuple(evidence), action)


def fail(check_id: str, finding: str, action: str, evidence: Iterable[str] = ()) -> Check:
    return Check(check_id, Status.FAIL, finding, tuple(evidence), action)


def uncertain(check: Check, why: str, remedy: str) -> Check:
    """A fail whose facts were partly assumed becomes a warn that says so: the doctor must
    not call something broken because it could not look."""
    if check.status is not Status.FAIL:
        return check
    return Check(check.id, Status.WARN, f"{check.finding} ({why})", check.evidence,
                 f"{remedy}; then: {check.action}")


@dataclass(frozen=True)
class Section:
    title: str
    checks: tuple[Check, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Section:
        return cls(str(data["title"]), tuple(Check.from_dict(c) for c in data["checks"]))


@dataclass(frozen=True)
class Report:
    """Everything one doctor run found."""

    sections: tuple[Section, ...]
    generated_at: float
    hostname: str = ""
    config: str = ""
    version: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict)  # server pid, Ollama version, era
    # Ids of failed checks that explain other failures of the report (a crash inside a shim
    # explains the loads that fail after it): the summary names them first.
    lead: tuple[str, ...] = ()

    @property
    def checks(self) -> tuple[Check, ...]:
        return tuple(c for s in self.sections for c in s.checks)

    def check(self, check_id: str) -> Check | None:
        return next((c for c in self.checks if c.id == check_id), None)

    def with_status(self, *statuses: Status) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status in statuses)

    @property
    def failures(self) -> tuple[Check, ...]:
        """The failed checks, the `lead` ones first, then the others in report order."""
        failed = self.with_status(Status.FAIL)
        first = [c for i in self.lead for c in failed if c.id == i]
        return (*first, *(c for c in failed if c.id not in self.lead))

    @property
    def counts(self) -> dict[str, int]:
        counts = {str(s): 0 for s in STATUS_ORDER}
        for c in self.checks:
            counts[str(c.status)] += 1
        return counts

    @property
    def exit_code(self) -> int:
        return EXIT_PROBLEMS if self.with_status(Status.FAIL) else EXIT_HEALTHY

    def to_dict(self) -> dict[str, Any]:
        return {
            "vgpumon_version": self.version,
            "generated_at": self.generated_at,
            "hostname": self.hostname,
            "config": self.config,
            "facts": dict(self.facts),
            "summary": self.counts,
            "lead": list(self.lead),
            "exit_code": self.exit_code,
            "sections": [s.to_dict() for s in self.sections],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        return cls(
            sections=tuple(Section.from_dict(s) for s in data["sections"]),
            generated_at=float(data["generated_at"]),
            hostname=str(data.get("hostname", "")),
            config=str(data.get("config", "")),
            version=str(data.get("vgpumon_version", "")),
            facts=dict(data.get("facts") or {}),
            lead=tuple(str(i) for i in data.get("lead") or ()),
        )
