"""Libraries: the CUDA backend (``libggml-cuda.so``) found where the server would look, its
ELF dependencies resolved as ld.so would in a runner's environment, and where
``libcuda.so.1`` lands: on the vGPU shim or not. Pure Python (`vgpumon.linux.loader.ldresolve`),
no ``ldd``.
"""

from __future__ import annotations

import posixpath

from vgpumon.doctor.context import DoctorContext
from vgpumon.doctor.eras import LATEST
from vgpumon.doctor.libsearch import LIBCUDA, LibraryResolution, search_patterns
from vgpumon.doctor.privileges import remedy
from vgpumon.doctor.report import Check, fail, ok, skip, uncertain
from vgpumon.doctor.text import listing, plural, variable
from vgpumon.linux.loader.ldresolve import Dependency, Step

TITLE = "Libraries"


ASSUMED = "resolved with an assumed environment: the server's own could not be read"
REMEDY = remedy("environ") + " to check with the real one"


def checks(ctx: DoctorContext) -> list[Check]:
    out = [backend(ctx), dependencies(ctx), libcuda(ctx)]
    if ctx.libraries is not None and not ctx.libraries.environ_known:
        out = [uncertain(c, ASSUMED, REMEDY) for c in out]
    return out


def backend(ctx: DoctorContext) -> Check:
    era = ctx.era or LATEST
    if ctx.server is None or ctx.libraries is None:
        return skip("libraries.ggml_cuda", "no server: its library path is unknown")
    facts = ctx.libraries
    evidence = [f"{c.path} ({c.via}): {'found' if c.exists else 'missing'}"
                for c in facts.candidates]
    evidence.append(f"install dir: {facts.lib_dir} ({facts.lib_dir_from})" if facts.lib_dir
                    else f"install dir: {facts.lib_dir_from}")
    existing = [c for c in facts.candidates if c.exists]
    if not existing:
        looked = [c.path for c in facts.candidates] + search_patterns(ctx.era, facts.lib_dir)
        return fail("libraries.ggml_cuda", f"no {era.cuda_library} found where Ollama "
                    f"{ctx.version or ''} looks for it: models can only run on the CPU"
                    .replace("  ", " "),
                    "install Ollama's CUDA libraries (the release tarball's lib/ollama/cuda_v*, "
                    "or the GPU container image)", [*evidence, f"looked at {listing(looked)}"])
    mapped = [c for c in existing if c.via.startswith("mapped by")]
    chosen = mapped[0] if mapped else existing[0]
    return ok("libraries.ggml_cuda", f"{chosen.path} ({chosen.via})", evidence)


def dependencies(ctx: DoctorContext) -> Check:
    if ctx.libraries is None:
        return skip("libraries.dependencies", "no CUDA backend library to resolve")
    results = ctx.libraries.resolutions
    if not results:
        return skip("libraries.dependencies", "no CUDA backend library found to resolve")
    env = ctx.libraries
    header = [f"resolved as ld.so would, with {env.environ_from}",
              "variables: " + (", ".join(variable(k, v) for k, v in env.environ.items()
                                         if k in ("LD_LIBRARY_PATH", "LD_PRELOAD"))
                               or "no LD_* variables"),
              f"program: {env.executable or 'none (the library alone)'}", *env.notes]
    derived = f" (with the runner's environment {env.environ_derived})" \
        if env.environ_derived else ""
    problems, evidence = [], list(header)
    for result in results:
        if result.resolution is None:
            problems.append(f"{result.path}: {result.error}")
            continue
        evidence += _edges(ctx, result)
        problems += _unresolved(result)
    if problems:
        return fail("libraries.dependencies",
                    f"{plural(len(problems), 'library', 'libraries')} the CUDA backend needs "
                    f"{'does' if len(problems) == 1 else 'do'} not resolve: {problems[0]}"
                    f"{derived}",
                    "put the missing library where the loader looks (the backend's own dir: "
                    "Ollama bundles cudart and cublas there), or reinstall Ollama's CUDA "
                    "libraries; a runner that cannot load it runs on the CPU", problems + evidence)
    total = sum(len({d.name for d in _needed(r)}) for r in results)
    return ok("libraries.dependencies", f"all {plural(total, 'dependency', 'dependencies')} of "
              f"{listing([r.path for r in results])} resolve{derived}", evidence)


def libcuda(ctx: DoctorContext) -> Check:
    if ctx.libraries is None or not ctx.libraries.resolutions:
        return skip("libraries.libcuda", "no CUDA backend library resolved")
    shims = ctx.libraries.shims
    evidence, bad = [], []
    for result in ctx.libraries.resolutions:
        found = result.libcuda
        if found is None or found.dependency is None:
            why = result.error or "no resolution"
            evidence.append(f"{result.path}: {LIBCUDA} not looked up ({why})")
            continue
        dep = found.dependency
        how = "needed by " + dep.requester if result.libcuda_dependency else "dlopen by name"
        if not dep.resolved:
            bad.append(f"{result.path}: {LIBCUDA} ({how}) does not resolve: {dep.reason}")
            continue
        via = f"{dep.path} -> {dep.real_path}" if dep.path != dep.real_path else str(dep.path)
        shim = shims.get(dep.identity) if dep.identity else None
        line = f"{result.path}: {LIBCUDA} ({how}) -> {via} ({_step(dep)})"
        if found.is_shim:
            evidence.append(f"{line}: shim {shim}")
        else:
            bad.append(f"{line}: NOT a shim")
    if bad:
        return fail("libraries.libcuda", f"{LIBCUDA} does not land on the vGPU shim: {bad[0]}",
                    "make the first libcuda.so.1 the loader finds a link to the shim (see "
                    "shims.links and env.LD_LIBRARY_PATH), or preload the shim", bad + evidence)
    if not evidence:
        return skip("libraries.libcuda", f"{LIBCUDA} was not looked up")
    return ok("libraries.libcuda", f"{LIBCUDA} resolves to the vGPU shim", evidence)


def _needed(result: LibraryResolution) -> list[Dependency]:
    """The edges of the library's own dependency closure, breadth-first: not those of the
    program or of preloads, which the runner has loaded already (or, for a failed preload,
    which ld.so only warns about)."""
    resolution = result.resolution
    if resolution is None:
        return []
    path_of = {o.identity: o.path for o in resolution.objects}
    edges: dict[str, list[Dependency]] = {}
    for dep in resolution.dependencies:
        edges.setdefault(dep.requester, []).append(dep)
    out, seen, todo = [], {resolution.root.path}, [resolution.root.path]
    while todo:
        for dep in edges.get(todo.pop(0), ()):
            out.append(dep)
            path = path_of.get(dep.identity) if dep.identity else None
            if path is not None and path not in seen:
                seen.add(path)
                todo.append(path)
    return out


def _unresolved(result: LibraryResolution) -> list[str]:
    """One line per name that does not resolve, with everything that needs it."""
    by_name: dict[str, list[Dependency]] = {}
    for dep in _needed(result):
        if not dep.resolved:
            by_name.setdefault(dep.name, []).append(dep)
    return [f"{name} (needed by {listing([posixpath.basename(d.requester) for d in deps])}): "
            f"{deps[0].reason}" for name, deps in by_name.items()]


def _edges(ctx: DoctorContext, result: LibraryResolution) -> list[str]:
    shims = ctx.libraries.shims if ctx.libraries else {}
    seen, lines = set(), []
    for dep in _needed(result):
        if dep.name in seen:
            continue
        seen.add(dep.name)
        if not dep.resolved:
            lines.append(f"{dep.name} (needed by {dep.requester}): NOT FOUND: {dep.reason}")
            continue
        target = dep.real_path if dep.path == dep.real_path else f"{dep.path} -> {dep.real_path}"
        shim = shims.get(dep.identity) if dep.identity else None
        lines.append(f"{dep.name} -> {target} ({_step(dep)})"
                     + (f" [shim {shim}]" if shim else ""))
    return lines


def _step(dep: Dependency) -> str:
    """How the loader got there, in words."""
    if dep.found_by is None:
        return "not found"
    return {Step.LOADED: "already loaded", Step.PRELOAD: "preloaded",
            Step.PATH: "opened by path"}.get(dep.found_by, f"found through {dep.found_by}")
