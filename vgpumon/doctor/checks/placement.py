"""Placement: where this era maps the CUDA backend (server, runner, discovery probe), and where
it is mapped now (docs/ollama.md#libraries-per-process)."""

from __future__ import annotations

import fnmatch
import os

from vgpumon.config.schema import RUNNER, SERVER
from vgpumon.doctor.context import GGML_CUDA, DoctorContext
from vgpumon.doctor.eras import LATEST
from vgpumon.doctor.privileges import is_permission_problem, needs, remedy
from vgpumon.doctor.report import Check, fail, ok, skip, warn
from vgpumon.doctor.text import listing

TITLE = "Placement"
CHECK = "placement.ggml_cuda"


def checks(ctx: DoctorContext) -> list[Check]:
    return [ggml_cuda(ctx)]


def ggml_cuda(ctx: DoctorContext) -> Check:
    if not any(s.name == GGML_CUDA for s in ctx.config.libraries):
        return skip(CHECK, f"no library named {GGML_CUDA} in the config")
    era = ctx.era or LATEST
    holders: dict[str, list[int]] = {}
    if not recognises_cuda_library(ctx, era.cuda_library):
        return skip(CHECK, f"the ggml-cuda library of the config does not match "
                    f"{era.cuda_library}, the file {era.title} keeps its CUDA code in: configure "
                    f"ggml-cuda as name: \"{cuda_glob(era.cuda_library)}\" to check where it "
                    "is mapped")
    for member in ctx.state.processes:
        if member.libraries.mapped(GGML_CUDA):
            holders.setdefault(member.process.group, []).append(member.process.pid)
    where = [f"{group}: pid {listing([str(p) for p in pids])}" for group, pids in holders.items()]
    expected = (f"{ctx.version or 'this version'} ({era.title}) maps {era.cuda_library} in "
                + ("`ollama serve` itself" if era.cuda_holder == SERVER else "each model runner"
                   + ", never in `ollama serve`"))
    evidence = [expected, f"mapped now by: {listing(where) if where else 'no process'}"]
    if era.cuda_holder == SERVER:
        return _in_server(ctx, holders, evidence)
    if SERVER in holders and era.name in ("E", "F", "G"):
        return warn(CHECK, f"`ollama serve` (pid {holders[SERVER][0]}) maps {era.cuda_library}, "
                    f"which {era.title} never does: the version or the process groups are not "
                    "what they seem", "check ollama.version and the groups: in the config",
                    evidence)
    runners = ctx.runners
    if not runners:
        return ok(CHECK, f"no model runner runs, so {era.cuda_library} is mapped nowhere: "
                  "expected until a model is loaded (--load-model NAME loads one)", evidence)
    without, unreadable = [], []
    for member in runners:
        libs = member.libraries
        if not libs.readable:
            hint = f"; {needs('maps')}" if is_permission_problem(libs.error) else ""
            unreadable.append(f"{ctx.runner_label(member.process)}: maps unreadable "
                              f"({libs.error}){hint}")
        elif not libs.mapped(GGML_CUDA):
            without.append(ctx.runner_label(member.process))
    if without:
        return fail(CHECK, f"{without[0]} runs without {era.cuda_library}: its CUDA backend did "
                    "not load, so the model runs on the CPU", _why_not_loaded(ctx),
                    evidence + [f"without it: {w}" for w in without] + unreadable)
    if unreadable:
        return warn(CHECK, f"cannot tell whether the runners map {era.cuda_library}",
                    remedy("maps"),
                    evidence + unreadable)
    return ok(CHECK, f"every model runner maps {era.cuda_library}, as {era.title} does",
              evidence)


def _why_not_loaded(ctx: DoctorContext) -> str:
    test = ctx.load_test
    if test is not None and test.ok:
        return ("the backend loads in a test child with the runner's variables (loadtest.dlopen), "
                "so the runner dropped it at run time (no device, CUDA init failed): see "
                "log.cuda_errors; restart Ollama with OLLAMA_DEBUG=1 and load the model again to "
                "see its backend scan")
    return ("see libraries.dependencies and loadtest.dlopen for why the backend does not load "
            "(Ollama 0.5.8 to 0.24 does not log that error)")


def _in_server(ctx: DoctorContext, holders: dict[str, list[int]], evidence: list[str]) -> Check:
    era = ctx.era or LATEST
    if SERVER in holders:
        return ok(CHECK, f"`ollama serve` maps {era.cuda_library}, as {era.title} does", evidence)
    if RUNNER in holders:
        return warn(CHECK, f"a runner maps {era.cuda_library}, which {era.title} has none of",
                    "check ollama.version and the groups: in the config", evidence)
    # These versions have no /api/ps; the model file the server maps says what is loaded.
    loaded = sorted({ctx.model_label(blob) for server in ctx.servers
                     for blob in server.libraries.model_blobs})
    if loaded:
        return fail(CHECK, f"{listing(loaded)} loaded, but `ollama serve` does not map "
                    f"{era.cuda_library}: it runs on the CPU",
                    "see libraries.dependencies and loadtest.dlopen", evidence)
    return ok(CHECK, f"no model loaded: `ollama serve` maps {era.cuda_library} only after the "
              "first load", evidence)


def recognises_cuda_library(ctx: DoctorContext, basename: str) -> bool:
    """Whether the configured ggml-cuda library would match this era's CUDA code file."""
    spec = next((s for s in ctx.config.libraries if s.name == GGML_CUDA), None)
    if spec is None:
        return False
    if spec.glob is not None:
        return fnmatch.fnmatchcase(basename, spec.glob)
    return os.path.basename(spec.path or "") == basename


def cuda_glob(basename: str) -> str:
    return basename + "*"
