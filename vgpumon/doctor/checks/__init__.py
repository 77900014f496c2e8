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


# Checks whose failure explains other failures of the same report, most telling first: a
# fault inside a shim in the kernel log explains a runner gone and any load that fails after
# it. The report leads with them (`Report.lead`).
ROOT_CAUSES: tuple[str, ...] = ("kernel.crashes",)

SECTIONS: tuple[CheckModule, ...] = (access, ollama, environment, shims, libraries, loadtest,
                                     placement, log, kernel, model)
