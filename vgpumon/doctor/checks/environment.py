"""Environment: the server's variables that decide how Ollama finds GPUs and libraries, and
what each value implies for this version (docs/ollama.md#environment-variables).

Only `context.relevant` variables are ever read into the report; the others may be secrets.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping

from vgpumon.doctor.context import DoctorContext
from vgpumon.doctor.eras import LATEST, at_least
from vgpumon.doctor.privileges import remedy
from vgpumon.doctor.report import Check, fail, ok, skip, warn
from vgpumon.doctor.text import listing, plural, variable
from vgpumon.linux.paths import FileView
from vgpumon.model import events as ev

TITLE = "Environment"
EDIT = "edit the service's environment (systemctl edit ollama, then systemctl restart ollama)"
_UUID = re.compile(r"(?:GPU|MIG)-[0-9a-fA-F-]+")
# The llama.cpp libraries whose SONAMEs a foreign build on LD_LIBRARY_PATH can shadow (era G).
_SHADOWING = ("libggml-base.so", "libggml.so", "libllama.so")


def checks(ctx: DoctorContext) -> list[Check]:
    first = server_environment(ctx)
    env = ctx.server_environ
    if env is None or ctx.server is None:
        return [first]
    view = ctx.server.view
    out = [first, ld_preload(ctx, env, view), ld_library_path(ctx, env, view)]
    for name, check in (("OLLAMA_LLM_LIBRARY", llm_library), ("CUDA_VISIBLE_DEVICES", visible),
                        ("GGML_BACKEND_PATH", backend_path),
                        ("OLLAMA_LIBRARY_PATH", library_path)):
        if name in env:
            out.append(check(ctx, env[name], view))
    return out


def server_environment(ctx: DoctorContext) -> Check:
    if ctx.server is None:
        return skip("env.server", "no server process to read the environment of")
    environ = ctx.server.environ
    if environ.variables is None:
        return warn("env.server", f"the server's environment is unknown: {environ.error}",
                    remedy("environ"))
    shown = [variable(k, v) for k, v in environ.variables.items()]
    return ok("env.server", f"pid {environ.pid}: {plural(len(shown), 'relevant variable')} set "
              "(OLLAMA_*, LD_PRELOAD, LD_LIBRARY_PATH, CUDA_VISIBLE_DEVICES, GGML_BACKEND_PATH; "
              "others are not shown)", shown or ["none of them is set"])


def ld_preload(ctx: DoctorContext, env: Mapping[str, str], view: FileView) -> Check:
    value = env.get("LD_PRELOAD")
    if not value:
        return ok("env.LD_PRELOAD", "not set: shims reach Ollama only through the library "
                  "links (see shims.links)")
    shims = ctx.libraries.shims if ctx.libraries else {}
    entries = [e for e in re.split(r"[ :]", value) if e]
    missing, found, preloaded = [], [], []
    for entry in entries:
        if "/" not in entry:
            found.append(f"{entry}: a bare name, searched like a library")
            continue
        if "$" in entry:  # $LIB, $PLATFORM, $ORIGIN: the loader expands them, stat cannot
            found.append(f"{entry}: expanded by the dynamic loader (see "
                         "libraries.dependencies for what it resolves to)")
            continue
        try:
            st = view.stat(entry)
        except OSError as err:
            missing.append(f"{entry}: {err.strerror or err}")
            continue
        shim = shims.get((st.st_dev, st.st_ino))
        if shim:
            preloaded.append(shim)
        found.append(f"{entry}" + (f" (shim {shim})" if shim else ""))
    if missing:
        return fail("env.LD_PRELOAD",
                    f"LD_PRELOAD names {plural(len(missing), 'file')} that do not exist in "
                    "the server's filesystem: the loader skips them with only a message on "
                    "stderr, and every Ollama process runs without them",
                    f"install the shims at those paths or correct LD_PRELOAD; {EDIT}",
                    missing + found)
    return ok("env.LD_PRELOAD", f"preloads {plural(len(entries), 'file')}"
              + (f", shims {listing(preloaded)}" if preloaded else "")
              + " into the server and every runner", found)


def ld_library_path(ctx: DoctorContext, env: Mapping[str, str], view: FileView) -> Check:
    value = env.get("LD_LIBRARY_PATH")
    if value is None:
        return ok("env.LD_LIBRARY_PATH", "not set: libcuda.so.1 comes from the runner's own "
                  "dirs, ld.so.cache and the default dirs")
    dirs = [d for d in value.replace(";", ":").split(":")]
    shims = ctx.libraries.shims if ctx.libraries else {}
    lib_dir = ctx.libraries.lib_dir if ctx.libraries else None
    missing, evidence, shadowing = [], [], []
    for directory in dirs:
        if not directory:
            evidence.append("(an empty element: the current directory)")
            continue
        if not _is_dir(view, directory):
            missing.append(directory)
            continue
        evidence.append(directory + _libcuda_note(view, directory, shims))
        era = ctx.era or LATEST
        if era.name == "G" and not (lib_dir and directory.startswith(lib_dir)):
            shadowing += [f"{directory}/{n}" for n in _SHADOWING
                          if view.exists(f"{directory}/{n}") or _has_versioned(view, directory, n)]
    if shadowing:
        return warn("env.LD_LIBRARY_PATH", "LD_LIBRARY_PATH holds another llama.cpp build: "
                    "its libraries have the SONAMEs of Ollama's own and can shadow them in "
                    "llama-server", f"remove those dirs from LD_LIBRARY_PATH; {EDIT}",
                    evidence + [f"shadows: {p}" for p in shadowing])
    if missing:
        return warn("env.LD_LIBRARY_PATH",
                    f"LD_LIBRARY_PATH names {plural(len(missing), 'dir')} that do not exist: "
                    f"{listing(missing)}", f"remove or create them; {EDIT}",
                    evidence + [f"missing: {d}" for d in missing])
    return ok("env.LD_LIBRARY_PATH", f"{plural(len(dirs), 'dir')}, searched before "
              "ld.so.cache by the server and (after Ollama's own dirs) by its runners", evidence)


def llm_library(ctx: DoctorContext, value: str, view: FileView) -> Check:
    """Checked against the install dir `context.library_facts` found (OLLAMA_LIBRARY_PATH,
    the server's maps, its executable): the same dir every other check of the report uses."""
    version = ctx.version
    facts = ctx.libraries
    lib_dir = facts.lib_dir if facts else None
    if value.startswith("cpu"):
        return warn("env.OLLAMA_LLM_LIBRARY", f"OLLAMA_LLM_LIBRARY={value} forces the CPU: no "
                    "model will use a GPU", f"unset it; {EDIT}")
    if version is not None and not at_least(version, "0.5.8"):
        return ok("env.OLLAMA_LLM_LIBRARY", f"OLLAMA_LLM_LIBRARY={value}: Ollama {version} "
                  "uses only that runner variant")
    strict = at_least(version, "0.12.4") if version else True
    effect = ("GPU discovery skips every other library dir, so no GPU is found"
              if strict else "it is only a preference, so other dirs are still tried")
    if lib_dir is None:
        why = facts.lib_dir_from if facts else "the library facts were not gathered"
        return warn("env.OLLAMA_LLM_LIBRARY", f"OLLAMA_LLM_LIBRARY={value}: the install dir "
                    "was not found, so whether it names one of its dirs is unknown (if not, "
                    f"{effect})", f"check that <prefix>/lib/ollama/{value} exists, or unset "
                    f"it; {EDIT}", [f"install dir: {why}"])
    where = posixpath.join(lib_dir, value)
    found_by = f"install dir: {lib_dir} ({facts.lib_dir_from})" if facts else ""
    if not _is_dir(view, where):
        action = f"set it to the name of a dir in {lib_dir} (e.g. cuda_v12) or unset it; {EDIT}"
        evidence = [f"looked for {where}", found_by,
                    f"dirs there: {listing(_subdirs(view, lib_dir), 8)}"]
        make = fail if strict else warn
        return make("env.OLLAMA_LLM_LIBRARY", f"OLLAMA_LLM_LIBRARY={value} names no dir of "
                    f"the install: {effect}", action, evidence)
    effect = ("discovery uses only this dir" if strict else "this dir is tried first")
    return ok("env.OLLAMA_LLM_LIBRARY", f"OLLAMA_LLM_LIBRARY={value}: {effect} ({where})",
              [found_by])


def visible(ctx: DoctorContext, value: str, view: FileView) -> Check:
    del view
    tokens = [t.strip() for t in value.split(",") if t.strip()]
    if not tokens:
        return fail("env.CUDA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES is set but empty: CUDA "
                    "sees no GPU, and Ollama falls back to the CPU",
                    f"unset it, or list the GPUs (indexes or GPU-<uuid>); {EDIT}")
    if any(t.startswith("-") for t in tokens[:1]):
        return fail("env.CUDA_VISIBLE_DEVICES", f"CUDA_VISIBLE_DEVICES={value} hides every GPU "
                    "(an invalid first entry ends the list)",
                    f"unset it, or list the GPUs (indexes or GPU-<uuid>); {EDIT}")
    known = _discovered_ids(ctx)
    uuids = [t for t in tokens if _UUID.fullmatch(t)]
    note = ("; Ollama logs 'user overrode visible devices'"
            if at_least(ctx.version, "0.12.4") else "")
    if known and uuids and not set(uuids) & set(known):
        return warn("env.CUDA_VISIBLE_DEVICES", f"CUDA_VISIBLE_DEVICES={value} names none of "
                    "the GPUs Ollama discovered", f"list the UUIDs Ollama reports; {EDIT}",
                    [f"discovered: {listing(known)}"])
    return ok("env.CUDA_VISIBLE_DEVICES", f"CUDA_VISIBLE_DEVICES={value}: only "
              f"{plural(len(tokens), 'device')} visible to Ollama{note}")


def backend_path(ctx: DoctorContext, value: str, view: FileView) -> Check:
    era = ctx.era or LATEST
    if era.name != "G":
        return ok("env.GGML_BACKEND_PATH", f"GGML_BACKEND_PATH is set but not read by Ollama "
                  f"{ctx.version or ''} (only llama-server, Ollama 0.30+, reads it)".replace(
                      "  ", " "))
    if not view.exists(value):
        return fail("env.GGML_BACKEND_PATH", f"GGML_BACKEND_PATH={value} does not exist: "
                    "llama-server cannot load the CUDA backend", f"unset it; {EDIT}")
    return ok("env.GGML_BACKEND_PATH", f"GGML_BACKEND_PATH={value} exists")


def library_path(ctx: DoctorContext, value: str, view: FileView) -> Check:
    dirs = [d for d in value.split(":") if d]
    missing = [d for d in dirs if not _is_dir(view, d)]
    if ctx.version and at_least(ctx.version, "0.30.0"):
        effect = "not read by Ollama 0.30+"
    elif ctx.version and at_least(ctx.version, "0.6.7"):
        effect = "the server sets its own value for runners, so this one has no effect there"
    else:
        effect = "not used by this version"
    if missing:
        return warn("env.OLLAMA_LIBRARY_PATH", f"OLLAMA_LIBRARY_PATH names "
                    f"{plural(len(missing), 'dir')} that do not exist ({effect})",
                    f"unset it; {EDIT}", [f"missing: {d}" for d in missing])
    return ok("env.OLLAMA_LIBRARY_PATH", f"OLLAMA_LIBRARY_PATH={value}: {effect}")


def _discovered_ids(ctx: DoctorContext) -> list[str]:
    return [str(e.get("id")) for e in ctx.log_since_server if e.kind == ev.GPU_DISCOVERED]


def _libcuda_note(view: FileView, directory: str, shims: Mapping[tuple[int, int], str]) -> str:
    path = f"{directory}/libcuda.so.1"
    try:
        st = view.stat(path)
    except OSError:
        return ""
    shim = shims.get((st.st_dev, st.st_ino))
    real = view.realpath(path)
    return f" (libcuda.so.1 -> {real}" + (f", shim {shim})" if shim else ", not a shim)")


def _has_versioned(view: FileView, directory: str, name: str) -> bool:
    return any(n.startswith(name + ".") for n in _names(view, directory))


def _names(view: FileView, directory: str) -> list[str]:
    try:
        return sorted(os.listdir(view.outside(view.realpath(directory, strict=True))))
    except OSError:
        return []


def _subdirs(view: FileView, directory: str) -> list[str]:
    return [n for n in _names(view, directory) if _is_dir(view, f"{directory}/{n}")]


def _is_dir(view: FileView, path: str) -> bool:
    try:
        return os.path.isdir(view.outside(view.realpath(path, strict=True)))
    except OSError:
        return False
