"""The doctor's checks, one module per section; each has ``TITLE`` and
``checks(ctx) -> list[Check]``, a pure function of the `DoctorContext`."""

from __future__ import annotations

from typing import Protocol

from vgpumon.doctor.checks import (
    access,
    environment,
    kernel,
    libraries,
    loadtest,
    log,
    model,
    ollama,
    placement,
    shims,
)
from vgpumon.doctor.context import DoctorContext
from vgpumon.doctor.report import Check


class CheckModule(Protocol):
    """A section's module."""

    TITLE: str

    def checks(self, ctx: DoctorContext) -> list[Check]: ...


SECTIONS: tuple[CheckModule, ...] = (access, ollama, environment, shims, libraries, loadtest,
                                     placement, log, kernel, model)
