"""Kernel: segfaults and OOM kills of Ollama's processes in the kernel log since the server
started (a Go runner's crash in cgo code is not logged there: Go handles the signal)."""

from __future__ import annotations

import fnmatch
import posixpath

from vgpumon.doctor.context import DoctorContext
from vgpumon.doctor.privileges import is_permission_problem, remedy
from vgpumon.doctor.report import Check, fail, ok, skip, warn
from vgpumon.doctor.text import plural, when

TITLE = "Kernel"


def checks(ctx: DoctorContext) -> list[Check]:
    return [crashes(ctx)]


def crashes(ctx: DoctorContext) -> Check:
    kernel = ctx.kernel
    if kernel is None:
        return skip("kernel.crashes", "the kernel log was not read (see doctor.gathering)")
    if kernel.error:
        if is_permission_problem(kernel.error):
            return warn("kernel.crashes", f"cannot read {kernel.path} ({kernel.error}): "
                        "segfaults and OOM kills stay unseen", remedy("kmsg"))
        return warn("kernel.crashes", f"cannot read {kernel.path}: {kernel.error}",
                    "read it by hand: dmesg -T | grep -E 'segfault|Killed process'")
    since = ctx.server.process.start_time if ctx.server else ctx.now - ctx.config.crash_loop.window
    records = [r for r in kernel.records if r.ts >= since - 1.0]
    segfaults = [r for r in records if r.segfault is not None]
    ooms = {r.pid: r for r in records if r.oom is not None}
    if not segfaults and not ooms:
        return ok("kernel.crashes", "no segfault or OOM kill of an Ollama process in the kernel "
                  f"log since {when(since)}")
    shown = sorted(segfaults + list(ooms.values()), key=lambda r: r.ts)[-10:]
    evidence = [f"{when(r.ts)}: {r.message}" for r in shown]
    parts = []
    if segfaults:
        libraries = sorted({r.segfault.library for r in segfaults
                            if r.segfault is not None and r.segfault.library})
        parts.append(plural(len(segfaults), "fatal fault") + (
            f" (in {', '.join(libraries)})" if libraries else ""))
    if ooms:
        parts.append(plural(len(ooms), "OOM kill"))
    in_shims = [r for r in segfaults if r.segfault is not None
                and shim_of(ctx, r.segfault.library) is not None]
    if in_shims:
        # The crash itself, not a symptom: loads that fail after it (a runner gone, a derived
        # environment) follow from it, so the report leads with this check.
        last = in_shims[-1]
        library = last.segfault.library if last.segfault else None
        return fail("kernel.crashes", f"the kernel logged a fatal fault inside the vGPU shim "
                    f"{library} ({shim_of(ctx, library)}): {last.message}",
                    "the shim crashed the process that loaded it: report it to the shim's "
                    "vendor with the kernel record and the shim's version; until it is fixed, "
                    "models on this host fail to load on the GPU", evidence)
    return warn("kernel.crashes", f"the kernel logged {' and '.join(parts)} of Ollama processes "
                f"since {when(since)}",
                "a fault inside a shim or libggml-cuda.so points at the vGPU stack; an OOM kill "
                "means the host (or the unit's cgroup) ran out of memory", evidence)


def shim_of(ctx: DoctorContext, library: str | None) -> str | None:
    """The configured shim whose file the kernel named (a basename: ``libvgpu-cuda.so``)."""
    if not library:
        return None
    for spec in ctx.config.libraries:
        if spec.name not in ctx.config.shims:
            continue
        if spec.path and posixpath.basename(spec.path) == library:
            return spec.name
        if spec.glob and fnmatch.fnmatchcase(library, spec.glob):
            return spec.name
    return None
