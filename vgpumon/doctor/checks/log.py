"""Log: what Ollama's own log says since the server started: GPUs found (or CPU only),
discovery failures, the last offload per model (the runner's report over the server's
estimate), CUDA errors, runner crashes and crash loops. Events come from the daemon's
interpreter (`vgpumon.ollama.interpret`), folded with `OllamaFacts`."""

from __future__ import annotations

from vgpumon.doctor.context import DoctorContext
from vgpumon.doctor.eras import LATEST
from vgpumon.doctor.report import Check, Status, fail, ok, skip, warn
from vgpumon.doctor.text import duration, listing, plural, size, when
from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.model.exits import CRASH_REASONS
from vgpumon.snapshot.ollama import Offload, OllamaFacts

TITLE = "Log"
CUDA_PROBLEMS = (ev.CUDA_INIT_FAILED, ev.CUDA_ERROR, ev.BACKEND_LOAD_FAILED, ev.OUT_OF_MEMORY)
SHOWN = 8  # evidence lines per kind


def checks(ctx: DoctorContext) -> list[Check]:
    first = source(ctx)
    if ctx.log is None or not ctx.log.enabled or ctx.log.error:
        reason = "the log was not read (see log.source)"
        return [first, *(skip(f"log.{name}", reason) for name in
                         ("gpu_discovery", "offload", "cuda_errors", "runner_crashes"))]
    events = ctx.log_since_server
    return [first, discovery(ctx, events), offload(ctx, events), cuda_errors(ctx, events),
            crashes(ctx)]


def source(ctx: DoctorContext) -> Check:
    log = ctx.log
    if log is None:
        return skip("log.source", "the log was not read (see doctor.gathering)")
    if not log.enabled:
        return skip("log.source", "no Ollama log configured (ollama.log: {} in the config)")
    if log.error:
        return warn("log.source", f"cannot read the {log.source}: {log.error}",
                    "point ollama.log in the vgpumon config at Ollama's log (journal_unit:, "
                    "file: or container: auto), and make it readable to the doctor")
    finding = (f"{log.source}: {plural(log.lines, 'line')} since {when(log.since)}, "
               f"{plural(len(log.events), 'event')}")
    if log.limited:
        return warn("log.source", f"{finding}, but possibly not all of it: {log.limited}",
                    "run the doctor as root or as a member of group systemd-journal")
    if ctx.server is not None and not ctx.log_since_server:
        return warn("log.source", f"{finding}, none since the server started "
                    f"({when(ctx.server.process.start_time)}): is this the running server's log?",
                    "point ollama.log in the vgpumon config at the log the server writes")
    return ok("log.source", finding)


def discovery(ctx: DoctorContext, events: tuple[Event, ...]) -> Check:
    era = ctx.era or LATEST
    facts = OllamaFacts()
    facts.apply(events)
    gpus = facts.state(None, {}).gpus
    failures = [e for e in events if e.kind in (ev.DISCOVERY_FAILED, ev.CUDA_INIT_FAILED)]
    evidence = [_line(ctx, e) for e in failures[-SHOWN:]]
    if gpus is None:
        if era.name == "A":
            return skip("log.gpu_discovery", "Ollama ≤ 0.1.17 logs no GPU discovery")
        return warn("log.gpu_discovery", f"no GPU discovery in the log {_since(ctx)}",
                    "check that ollama.log is the running server's log (log.source)", evidence)
    if not gpus:
        cpu = [e for e in events if e.kind == ev.CPU_ONLY]
        evidence = [_line(ctx, e) for e in cpu[-1:]] + evidence
        return fail("log.gpu_discovery", "Ollama found no usable GPU at its last discovery: "
                    "every model runs on the CPU",
                    "find why the driver did not answer: shims.*, libraries.libcuda, "
                    "env.CUDA_VISIBLE_DEVICES; then restart Ollama so it discovers again",
                    evidence)
    found = [f"{g.id}: {g.name} ({g.library}), {size(g.total_bytes)} total, "
             f"{size(g.available_bytes)} free" for g in gpus]
    expected = ctx.config.ollama.expected_gpus
    if len(gpus) < expected:
        return warn("log.gpu_discovery", f"Ollama found {plural(len(gpus), 'GPU')}, the config "
                    f"expects {expected}", "check the missing GPU's shim and visibility "
                    "(env.CUDA_VISIBLE_DEVICES), or set ollama.expected_gpus",
                    found + evidence)
    if failures:
        return warn("log.gpu_discovery", f"Ollama found {plural(len(gpus), 'GPU')}, but "
                    f"discovery also failed {plural(len(failures), 'time')}",
                    "read the failure lines below", found + evidence)
    return ok("log.gpu_discovery", f"Ollama found {plural(len(gpus), 'GPU')}: "
              f"{listing([g.name for g in gpus])}", found)


def offload(ctx: DoctorContext, events: tuple[Event, ...]) -> Check:
    facts = OllamaFacts()
    facts.apply(events)
    per_model = facts.offload()
    if not per_model:
        return ok("log.offload", f"no model was loaded {_since(ctx)}")
    graded = sorted(((_grade(o), ctx.model_label(blob), o) for blob, o in per_model.items()),
                    key=lambda item: _ORDER[item[0]], reverse=True)
    evidence = [f"{name}: {_layers(o)} on the GPU ({_origin(o)}, {when(o.ts)})"
                for _, name, o in graded]
    status, name, worst = graded[0]
    if status is Status.FAIL:
        return fail("log.offload", f"{name} runs on the CPU: {_layers(worst)} on the GPU",
                    "the runner found no GPU or could not load its CUDA backend: see "
                    "placement.ggml_cuda, libraries.dependencies, loadtest.dlopen and "
                    "log.gpu_discovery", evidence)
    if status is Status.WARN:
        return warn("log.offload", f"{name} is only partly on the GPU: {_layers(worst)}",
                    "the model does not fit in free VRAM: a smaller quantization or context "
                    "(num_ctx), fewer models at once, or more VRAM", evidence)
    return ok("log.offload", f"{plural(len(graded), 'model')} fully on the GPU", evidence)


_ORDER = {Status.OK: 0, Status.WARN: 1, Status.FAIL: 2}


def _grade(o: Offload) -> Status:
    if o.gpu_layers <= 0:
        return Status.FAIL
    if o.total_layers is not None and o.gpu_layers < o.total_layers:
        return Status.WARN
    return Status.OK


def _origin(o: Offload) -> str:
    return "the server's estimate" if o.estimate else "the runner's report"


def _layers(o: Offload) -> str:
    return f"{o.gpu_layers}/{o.total_layers if o.total_layers is not None else '?'} layers"


def cuda_errors(ctx: DoctorContext, events: tuple[Event, ...]) -> Check:
    found = [e for e in events if e.kind in CUDA_PROBLEMS]
    if not found:
        return ok("log.cuda_errors", "no CUDA error, CUDA init failure or backend load failure "
                  + _since(ctx))
    kinds = sorted({e.kind for e in found})
    evidence = [_line(ctx, e) for e in found[-SHOWN:]]
    if kinds == [ev.OUT_OF_MEMORY]:
        return warn("log.cuda_errors", f"{plural(len(found), 'out-of-memory error')} on the GPU "
                    + _since(ctx), "the model does not fit in VRAM: a smaller "
                    "quantization or context, or fewer models at once", evidence)
    last = found[-1]
    return fail("log.cuda_errors", f"{plural(len(found), 'CUDA problem')} {_since(ctx)} "
                f"({listing(kinds)}); the last: {_message(last)}",
                "a CUDA init failure under a shim means the shim could not reach the vGPU "
                "(check its own log and the vGPU licence/service); see shims.* and "
                "libraries.libcuda", evidence)


def crashes(ctx: DoctorContext) -> Check:
    log = ctx.log
    assert log is not None
    exits = [e for e in log.events if e.kind == ev.RUNNER_EXITED and not e.get("repeat")
             and e.get("reason") in CRASH_REASONS]
    traces = [e for e in log.events if e.kind == ev.GO_CRASH]
    window = ctx.config.crash_loop.window
    recent = [e for e in exits if e.ts >= ctx.now - window]
    since_server = [e for e in exits if ctx.server is None
                    or e.ts >= ctx.server.process.start_time - 2.0]
    evidence = [_line(ctx, e) for e in exits[-SHOWN:]]
    evidence += [f"{when(e.ts)} Go crash trace ({ctx.model_label(e.get('model'))}): "
                 f"{e.get('signal') or 'panic'}{_pc(e)}: {e.get('message')}"
                 for e in traces[-SHOWN:]]
    threshold = ctx.config.crash_loop.crashes
    if len(recent) >= threshold:
        models = listing(sorted({ctx.model_label(e.get("model")) for e in recent}))
        return fail("log.runner_crashes",
                    f"crash loop: {plural(len(recent), 'runner crash', 'runner crashes')} in the "
                    f"last {duration(window)} (threshold {threshold}), model {models}",
                    "each load of the model crashes its runner: read the crash trace below and "
                    "shims.*/libraries.* (a fault inside a shim or ggml-cuda points at them); "
                    "stop loading it until fixed", evidence)
    if since_server:
        last = since_server[-1]
        return warn("log.runner_crashes",
                    f"{plural(len(since_server), 'runner crash', 'runner crashes')} since the "
                    f"server started, the last of {ctx.model_label(last.get('model'))}: "
                    f"{_message(last)}", "read the crash lines below; a crash inside a shim "
                    "or libggml-cuda.so points at the vGPU stack", evidence)
    return ok("log.runner_crashes", f"no runner crashed {_since(ctx)}")


def _since(ctx: DoctorContext) -> str:
    if ctx.server is not None:
        return "since the server started"
    return f"since {when(ctx.log.since)}" if ctx.log else "lately"


def _pc(event: Event) -> str:
    pc = event.get("pc")
    return f" at pc {pc:#x}" if isinstance(pc, int) else ""


def _message(event: Event) -> str:
    text = event.get("message") or event.get("error") or event.kind
    return str(text)[:300]


def _line(ctx: DoctorContext, event: Event) -> str:
    model = event.get("model")
    about = f" ({ctx.model_label(model)})" if model else ""
    return f"{when(event.ts)} {event.kind}{about}: {_message(event)}"
