"""Load test: did a real ``dlopen`` of the CUDA backend work in a child with the runner's
variables, and which GPU libraries did the child end up with (is ``libcuda.so.1`` the shim)?

The child runs library code (constructors) with the examined process's credentials, never the
doctor's: see `vgpumon.doctor.loadtest`; ``--no-load-test`` skips it.
"""

from __future__ import annotations

import fnmatch

from vgpumon.doctor.context import DoctorContext
from vgpumon.doctor.libsearch import LIBCUDA
from vgpumon.doctor.loadtest import LoadTestResult, describe_credentials
from vgpumon.doctor.privileges import remedy
from vgpumon.doctor.report import Check, fail, ok, skip, uncertain, warn
from vgpumon.doctor.text import listing, variable
from vgpumon.linux.procfs import MappedFile
from vgpumon.sources.libraries import LibraryMatcher

TITLE = "Load test"
# Basenames worth listing among what the child mapped.
GPU_LIBRARIES = ("libcuda.so*", "libcudart.so*", "libcublas*.so*", "libnvidia-ml.so*",
                 "libggml*.so*", "libllama.so*", "libvgpu*.so*", "libnvcuvid*", "libext_server*")


def checks(ctx: DoctorContext) -> list[Check]:
    result = ctx.load_test
    if not ctx.options.load_test:
        reason = "skipped (--no-load-test)"
        return [skip("loadtest.dlopen", reason), skip("loadtest.libcuda", reason)]
    if result is None:
        reason = "nothing to load (no server, or no CUDA backend library found)"
        return [skip("loadtest.dlopen", reason), skip("loadtest.libcuda", reason)]
    if result.skipped:
        return [skip("loadtest.dlopen", result.skipped),
                skip("loadtest.libcuda", result.skipped)]
    out = [dlopen(ctx, result), libcuda(ctx, result)]
    if not result.environ_known:
        out = [uncertain(c, "loaded with an assumed environment: the server's own could not "
                         "be read", remedy("environ"))
               for c in out]
    return out


def dlopen(ctx: DoctorContext, result: LoadTestResult) -> Check:
    env = ", ".join(variable(k, v) for k, v in result.environ.items()) or "none"
    rights = (describe_credentials(result.credentials) if result.credentials
              else "unknown")
    evidence = [f"child: {result.python} -c <dlopen> {result.library}",
                f"variables (from {result.environ_from}): {env}",
                f"rights: {rights}, taken from {result.credentials_from}, with no_new_privs",
                "note: the dlopen runs the constructors of the library, its dependencies and "
                "the preloaded shims, with the rights of the process they belong to "
                "(--no-load-test skips this test)"]
    evidence += [f"loader: {m}" for m in result.loader_messages]
    derived = ctx.libraries.environ_derived if ctx.libraries else ""
    variables = f"the runner's variables ({derived})" if derived else "the runner's variables"
    if not result.ok:
        return fail("loadtest.dlopen", f"dlopen({result.library}) failed with {variables}: "
                    f"{result.error}",
                    "the loader's message names what is missing or broken; see "
                    "libraries.dependencies for where it looked", evidence)
    mapped = [_describe(ctx, m) for m in result.loaded if _is_gpu(m)]
    evidence += [f"mapped by the dlopen: {line}" for line in mapped]
    preloaded = [_describe(ctx, m) for m in result.before if _is_gpu(m)]
    evidence += [f"mapped at start-up (preload): {line}" for line in preloaded]
    if result.loader_messages:
        return warn("loadtest.dlopen", f"dlopen({result.library}) worked, but the loader "
                    f"complained: {result.loader_messages[0]}",
                    "a preload that fails is skipped silently: fix LD_PRELOAD (env.LD_PRELOAD)",
                    evidence)
    return ok("loadtest.dlopen", f"dlopen({result.library}) works in a child with "
              f"{variables}", evidence)


def libcuda(ctx: DoctorContext, result: LoadTestResult) -> Check:
    if not result.ok:
        return skip("loadtest.libcuda", "the dlopen failed (see loadtest.dlopen)")
    matcher = _matcher(ctx)
    shims, drivers = set(ctx.config.shims), {s.name for s in ctx.config.libraries if s.driver}
    names = {m.path: {lib for lib, _ in matcher.libraries_of(m)} for m in result.after}
    cuda_shims = [p for p, libs in names.items() if libs & ctx.cuda_shims]
    real = [p for p, libs in names.items() if libs & drivers and not libs & shims]
    evidence = [f"{p}: {listing(sorted(libs))}" for p, libs in names.items() if libs]
    if real and not cuda_shims:
        return fail("loadtest.libcuda", f"the child mapped the real driver {real[0]} and no "
                    "CUDA shim: a runner would bypass the vGPU shim",
                    "make libcuda.so.1 resolve to the shim (shims.links, env.LD_LIBRARY_PATH) "
                    "or preload it", evidence)
    if not cuda_shims and not real and not _needs_libcuda(ctx, result.library):
        return ok("loadtest.libcuda", f"{result.library} does not need {LIBCUDA}: this era's "
                  "CUDA runtime loads the driver when first called, which a dlopen does not "
                  f"do (where a dlopen of {LIBCUDA} lands: libraries.libcuda)", evidence)
    if not cuda_shims:
        return fail("loadtest.libcuda", "the child has no CUDA shim mapped after loading the "
                    "backend", "check shims.links and libraries.libcuda: libcuda.so.1 should "
                    "resolve to the shim", evidence)
    extra = f" (and the real driver {listing(real)})" if real else ""
    return ok("loadtest.libcuda", f"libcuda.so.1 is the shim in the child: {cuda_shims[0]}{extra}",
              evidence)


def _needs_libcuda(ctx: DoctorContext, library: str) -> bool:
    """Whether the loaded library needs libcuda.so.1, directly or through what it loads (the
    loader model's answer; True where that is not known)."""
    resolutions = ctx.libraries.resolutions if ctx.libraries else ()
    found = next((r for r in resolutions if r.path == library), None)
    return found is None or found.resolution is None or found.libcuda_dependency


def _matcher(ctx: DoctorContext) -> LibraryMatcher:
    return LibraryMatcher(ctx.config.libraries, {f.library: f for f in ctx.state.library_files})


def _describe(ctx: DoctorContext, mapped: MappedFile) -> str:
    names = sorted(lib for lib, _ in _matcher(ctx).libraries_of(mapped))
    return mapped.path + (f" [{', '.join(names)}]" if names else "")


def _is_gpu(mapped: MappedFile) -> bool:
    return any(fnmatch.fnmatchcase(mapped.basename, p) for p in GPU_LIBRARIES)

