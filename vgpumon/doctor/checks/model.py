"""Model load (``--load-model NAME``): ask Ollama to load a model, then check the runner it
started: its process, the libraries it mapped, the offload it reported, a crash if any."""

from __future__ import annotations

from vgpumon.config.schema import RUNNER
from vgpumon.doctor.checks.placement import recognises_cuda_library
from vgpumon.doctor.context import GGML_CUDA, DoctorContext
from vgpumon.doctor.eras import LATEST
from vgpumon.doctor.modelload import KEEP_ALIVE
from vgpumon.doctor.privileges import remedy
from vgpumon.doctor.report import Check, fail, ok, skip, warn
from vgpumon.doctor.text import listing, when
from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.model.exits import CRASH_REASONS
from vgpumon.ollama.manifests import blob_digest_from_model_arg
from vgpumon.snapshot.host import ProcessState

TITLE = "Model load"
_IDS = ("model.load", "model.runner", "model.libraries", "model.offload", "model.crash")


def checks(ctx: DoctorContext) -> list[Check]:
    load = ctx.model_load
    if not ctx.options.load_model:
        return [skip("model.load", "not asked: --load-model NAME loads a model (it changes the "
                     "host's state) and checks the runner it starts")]
    if load is None:
        return [skip(i, "the load could not be attempted (see doctor.gathering)") for i in _IDS]
    events = _events_of_load(ctx)
    runner = _runner(ctx)
    return [request(ctx), process(ctx, runner), libraries(ctx, runner),
            offload(ctx, events), crash(ctx, events)]


def request(ctx: DoctorContext) -> Check:
    load = ctx.model_load
    assert load is not None
    evidence = [f"POST {ctx.config.ollama.url}/api/generate "
                f'{{"model": "{load.model}", "prompt": "", "keep_alive": "{KEEP_ALIVE}"}}',
                f"started {when(load.started_at)}, answered after {load.seconds:.1f}s"
                + (f" with HTTP {load.status}" if load.status else "")]
    if ctx.model_blob is None:
        evidence.append(f"no manifest names {load.model}: its runner cannot be told apart")
    if not load.succeeded:
        return fail("model.load", f"Ollama could not load {load.model}: {load.error}",
                    "read model.crash and log.* for what happened to the runner", evidence)
    return ok("model.load", f"Ollama loaded {load.model} in {load.seconds:.1f}s "
              f"(done_reason {load.done_reason}; it unloads after {KEEP_ALIVE} idle)", evidence)


def _runner(ctx: DoctorContext) -> ProcessState | None:
    if ctx.model_blob is None:
        return None
    found = [p for p in ctx.runners
             if blob_digest_from_model_arg(p.process.model_arg or "") == ctx.model_blob]
    return max(found, key=lambda p: p.process.start_time) if found else None


def process(ctx: DoctorContext, runner: ProcessState | None) -> Check:
    load = ctx.model_load
    assert load is not None
    if runner is None:
        if ctx.model_blob is None:
            return skip("model.runner", f"the weight blob of {load.model} is unknown (no "
                        "manifest in the models dir)")
        return fail("model.runner", f"no runner process of {load.model} runs after the load",
                    "it exited or was never started: see model.crash and log.runner_crashes",
                    [f"looked for a runner with --model …sha256-{ctx.model_blob}"])
    p = runner.process
    return ok("model.runner", f"runner pid {p.pid} (parent {p.ppid}), started "
              f"{when(p.start_time)}", [" ".join(p.cmdline)])


def libraries(ctx: DoctorContext, runner: ProcessState | None) -> Check:
    if runner is None:
        return skip("model.libraries", "no runner to look at")
    libs = runner.libraries
    label = ctx.runner_label(runner.process)
    if not libs.readable:
        return warn("model.libraries", f"cannot read the maps of {label} ({libs.error})",
                    remedy("maps"))
    expect = list(ctx.config.group(RUNNER).expect) if any(
        g.name == RUNNER for g in ctx.config.groups) else [GGML_CUDA]
    if recognises_cuda_library(ctx, (ctx.era or LATEST).cuda_library):
        wanted = [*expect, GGML_CUDA]
    else:  # the configured glob cannot see this era's CUDA code file: do not miss it
        wanted = [lib for lib in expect if lib != GGML_CUDA]
    missing = [lib for lib in dict.fromkeys(wanted)
               if any(s.name == lib for s in ctx.config.libraries) and not libs.mapped(lib)]
    cuda_shims = ctx.cuda_shims
    evidence = [f"{m.library}: {m.path}" + (" (stale)" if m.stale else "")
                for m in libs.mappings]
    if missing:
        return fail("model.libraries", f"{label} lacks {listing(missing)}",
                    "see shims.group.runner, libraries.dependencies and loadtest.dlopen",
                    evidence)
    if cuda_shims and not any(libs.mapped(s) for s in cuda_shims):
        return fail("model.libraries", f"{label} has no CUDA shim ({listing(sorted(cuda_shims))})"
                    " mapped", "see shims.bypass and libraries.libcuda", evidence)
    names = sorted({m.library for m in libs.mappings})
    return ok("model.libraries", f"{label} maps {listing(names, 8)}", evidence)


def offload(ctx: DoctorContext, events: list[Event]) -> Check:
    reports = [e for e in events if e.kind == ev.OFFLOAD]
    if not reports:
        return warn("model.offload", "the log has no offload line of this load",
                    "check log.source; the runner may have died before loading the weights",
                    [_line(e) for e in events[-5:]])
    actual = [e for e in reports if not e.get("estimate")]
    last = (actual or reports)[-1]
    gpu, total = int(last.get("gpu_layers") or 0), last.get("total_layers")
    origin = "the server's estimate" if last.get("estimate") else "the runner's report"
    finding = f"{gpu}/{total if total is not None else '?'} layers on the GPU ({origin})"
    evidence = [_line(e) for e in reports]
    if gpu <= 0:
        return fail("model.offload", f"{ctx.options.load_model} runs on the CPU: {finding}",
                    "see placement.ggml_cuda, libraries.* and loadtest.*", evidence)
    if total is not None and gpu < total:
        return warn("model.offload", f"{ctx.options.load_model} is partly on the GPU: {finding}",
                    "it does not fit in free VRAM: a smaller quantization or context", evidence)
    return ok("model.offload", f"{ctx.options.load_model} is fully on the GPU: {finding}",
              evidence)


def crash(ctx: DoctorContext, events: list[Event]) -> Check:
    bad = [e for e in events if (e.kind == ev.RUNNER_EXITED and e.get("reason") in CRASH_REASONS)
           or e.kind in (ev.GO_CRASH, ev.CUDA_INIT_FAILED, ev.CUDA_ERROR, ev.OUT_OF_MEMORY,
                         ev.BACKEND_LOAD_FAILED, ev.LOAD_FAILED)]
    if bad:
        return fail("model.crash", f"the load went wrong: {bad[-1].kind}: "
                    f"{str(bad[-1].get('message') or bad[-1].get('signal'))[:200]}",
                    "read the lines below and log.runner_crashes", [_line(e) for e in bad])
    return ok("model.crash", "no crash or CUDA error while loading")


def _events_of_load(ctx: DoctorContext) -> list[Event]:
    load = ctx.model_load
    if ctx.log is None or load is None:
        return []
    return [e for e in ctx.log.events if e.ts >= load.started_at - 1.0
            and (e.get("model") in (None, ctx.model_blob))]


def _line(event: Event) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in event.fields.items()
                       if k in ("gpu_layers", "total_layers", "estimate", "reason", "message",
                                "signal", "exit_code"))
    return f"{when(event.ts)} {event.kind}: {fields}"
