"""The doctor's checks, one module per section; each has ``TITLE`` and
``checks(ctx) -> list[Check]``, a pure function of the `DoctorContext`."""

from __future__ import annotations

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

SECTIONS = (access, ollama, environment, shims, libraries, loadtest, placement, log, kernel,
            model)
