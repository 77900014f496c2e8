"""``vgpumon doctor``: the whole shim/Ollama investigation in one command.

- `context`: `gather` reads everything once (processes and maps through the observer, the
  server's environment and filesystem view, the API, the log, systemd, the kernel log, the
  CUDA backend's dependencies, the load test, an optional model load) into a `DoctorContext`
- `checks`: one module per section, pure functions of the context returning `report.Check`s
- `report`: the check/section/report model and its JSON form; `render`: text and JSON
- helpers: `eras` (what each Ollama version maps where), `privileges`, `systemd`, `kmsg`,
  `logread`, `libsearch`, `loadtest`, `modelload`, `text`
"""

from __future__ import annotations

import time

from vgpumon import __version__
from vgpumon.config.schema import Config
from vgpumon.doctor.checks import ROOT_CAUSES, SECTIONS, CheckModule
from vgpumon.doctor.context import DoctorContext, DoctorOptions, gather
from vgpumon.doctor.report import Check, Report, Section, Status, warn
from vgpumon.linux.fscreds import acting_as

__all__ = ["DoctorOptions", "Report", "build_report", "diagnose"]


def diagnose(config: Config, options: DoctorOptions | None = None) -> Report:
    """Gather the host's facts and run every check on them."""
    return build_report(gather(config, options))


def build_report(ctx: DoctorContext) -> Report:
    # Checks look at paths the server names (its install dir, LD_PRELOAD, library paths):
    # with the server's rights, never root's (vgpumon/linux/fscreds.py).
    with acting_as(ctx.server.environ.credentials if ctx.server else None):
        sections = tuple(Section(module.TITLE, tuple(_run(module, ctx)))
                         for module in SECTIONS)
    server = ctx.server.process.pid if ctx.server else None
    facts = {
        "server_pid": server,
        "ollama_version": ctx.version,
        "era": ctx.era.name if ctx.era else None,
        "ollama_url": ctx.config.ollama.url,
    }
    failed = {c.id for s in sections for c in s.checks if c.status is Status.FAIL}
    lead = tuple(i for i in ROOT_CAUSES if i in failed)
    return Report(sections, time.time(), ctx.hostname, ctx.config.source, __version__, facts,
                  lead)


def _run(module: CheckModule, ctx: DoctorContext) -> list[Check]:
    try:
        return list(module.checks(ctx))
    except Exception as err:  # a broken check must not hide the others
        name = getattr(module, "__name__", "checks").rsplit(".", 1)[-1]
        return [warn(f"{name}.error", f"the {name} checks failed: {type(err).__name__}: {err}",
                     "report this as a vgpumon bug, with the evidence")]
