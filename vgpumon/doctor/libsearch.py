"""Where the server's CUDA backend (``libggml-cuda.so``) is, and what it resolves to.

The candidates come from the places Ollama itself looks (docs/ollama.md#install-layout,
docs/ollama.md#environment-variables): the file a runner has mapped, ``GGML_BACKEND_PATH``,
the ``OLLAMA_LIBRARY_PATH`` dirs, and
``cuda_v*`` in the install dir (`find_install_dir`). Each one found is resolved with
`vgpumon.linux.loader.ldresolve` in the environment a runner gets, through the server's
`FileView`, and
``libcuda.so.1`` is followed to the file it lands on: the vGPU shim or not.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from vgpumon.doctor.eras import LATEST, Era
from vgpumon.linux.elf import ElfError, read_elf
from vgpumon.linux.loader.ldresolve import (
    FileId,
    LoaderEnvironment,
    Resolution,
    ShimResolution,
    resolve,
    resolve_name,
    shim_resolution,
)
from vgpumon.linux.paths import FileView

LIBCUDA = "libcuda.so.1"
LIB_OLLAMA = "lib/ollama"
MAX_RESOLVED = 4  # candidates resolved; a host has one or two CUDA dirs


@dataclass(frozen=True)
class Candidate:
    path: str  # in the server's view
    via: str  # how it was found
    exists: bool


@dataclass(frozen=True)
class LibraryResolution:
    """One CUDA backend library resolved as the loader would."""

    path: str
    via: str
    resolution: Resolution | None
    error: str | None
    libcuda: ShimResolution | None  # libcuda.so.1 as the library's dependency or, if it has
    libcuda_dependency: bool  # none, as a plain dlopen by the runner would find it


def install_lib_dir(view: FileView, executable: str | None) -> str | None:
    """``<prefix>/lib/ollama`` for ``<prefix>/bin/ollama`` (tarball ``/usr/local``, Docker
    ``/usr``), else ``lib/ollama`` beside the executable, as Ollama looks on Linux; the first
    that exists in `view`."""
    if not executable:
        return None
    exe_dir = posixpath.dirname(executable)
    for candidate in (posixpath.join(posixpath.dirname(exe_dir), LIB_OLLAMA),
                      posixpath.join(exe_dir, LIB_OLLAMA)):
        if _is_dir(view, candidate):
            return candidate
    return None


@dataclass(frozen=True)
class InstallDir:
    """The server's ``<prefix>/lib/ollama`` and the fact that decided it (``from …``, for
    evidence), or None and where the doctor looked (``not found: …``)."""

    path: str | None
    source: str


def lib_dir_in(path: str) -> str | None:
    """The ``…/lib/ollama`` dir that `path` is or lies in (``<lib dir>``,
    ``<lib dir>/cuda_v13``, ``<lib dir>/cuda_v13/libggml-cuda.so``), else None: Ollama itself
    skips library dirs whose path does not contain ``lib/ollama``."""
    path = posixpath.normpath(path)
    if not path.startswith("/"):
        return None
    if path.endswith("/" + LIB_OLLAMA):
        return path
    at = path.rfind("/" + LIB_OLLAMA + "/")
    return path[: at + len(LIB_OLLAMA) + 1] if at >= 0 else None


def find_install_dir(view: FileView, server_env: Mapping[str, str] | None,
                     mapped: Sequence[str] | None, executable: str | None) -> InstallDir:
    """``<prefix>/lib/ollama`` of the server's install, from the most telling fact first
    (docs/ollama.md#install-layout): an ``OLLAMA_LIBRARY_PATH`` entry of the server's
    environment (``<lib dir>`` or ``<lib dir>/cuda_vNN``), a file under it in the server's
    maps (None: unreadable), then the executable (``<prefix>/bin/ollama``), which may live
    elsewhere (a copy, a wrapper) while the other two say where the install is."""
    value = (server_env or {}).get("OLLAMA_LIBRARY_PATH")
    for entry in _dirs(value):
        found = lib_dir_in(entry)
        if found and _is_dir(view, found):
            return InstallDir(found, f"from OLLAMA_LIBRARY_PATH of the server: {entry}")
    for path in mapped or ():
        found = lib_dir_in(path)
        if found and _is_dir(view, found):
            return InstallDir(found, f"from the server's maps: {path}")
    found = install_lib_dir(view, executable)
    if found:
        return InstallDir(found, f"from the server's executable: {executable}")
    looked = ["OLLAMA_LIBRARY_PATH of the server" + ("" if value else " (not set)"),
              "the server's maps" + (" (unreadable)" if mapped is None
                                     else "" if mapped else " (no lib/ollama file mapped)"),
              f"next to the server's executable ({executable or 'unknown'})"]
    return InstallDir(None, f"not found: looked at {', '.join(looked)}")


def glob_in_view(view: FileView, pattern: str) -> list[str]:
    """Paths of `view` matching `pattern` (``*`` in any component), sorted; no symlinks
    followed out of the view."""
    parts = [p for p in pattern.split("/") if p]
    paths = ["/"]
    for part in parts:
        nxt: list[str] = []
        for base in paths:
            if not any(ch in part for ch in "*?["):
                nxt.append(posixpath.join(base, part))
                continue
            try:
                names = os.listdir(view.outside(view.realpath(base, strict=True)))
            except OSError:
                continue
            nxt += [posixpath.join(base, n) for n in sorted(names) if fnmatch.fnmatch(n, part)]
        paths = nxt
    return [p for p in paths if view.exists(p)]


def find_candidates(view: FileView, era: Era | None, environs: Mapping[str, Mapping[str, str]],
                    lib_dir: str | None, mapped: Mapping[str, str],
                    tmpdir: str = "/tmp") -> tuple[Candidate, ...]:
    """Every place the CUDA backend may be loaded from, most telling first.

    `environs` maps a label (``server``, ``runner pid 4242``) to relevant variables; `mapped`
    maps a path some runner has mapped to that runner's label; `tmpdir` is the server's
    ``TMPDIR``, where eras before 0.5.2 extract their runners.
    """
    era = era or LATEST
    name = era.cuda_library
    found: dict[str, Candidate] = {}

    def add(path: str, via: str) -> None:
        path = posixpath.normpath(path)
        if path not in found:
            found[path] = Candidate(path, via, view.exists(path))

    for path, who in mapped.items():
        add(path, f"mapped by {who}")
    for who, env in environs.items():
        backend = env.get("GGML_BACKEND_PATH")
        if backend and era.name == "G":
            add(backend, f"GGML_BACKEND_PATH of {who}")
        for directory in _dirs(env.get("OLLAMA_LIBRARY_PATH")):
            for path in glob_in_view(view, f"{directory}/{name}") + glob_in_view(
                    view, f"{directory}/cuda_v*/{name}"):
                add(path, f"OLLAMA_LIBRARY_PATH of {who}")
    tmp = tmpdir
    for pattern in era.cuda_globs:
        if "{lib}" in pattern and lib_dir is None:
            continue
        for path in glob_in_view(view, pattern.format(lib=lib_dir or "", tmp=tmp)):
            add(path, "in the install dir" if "{lib}" in pattern
                else "extracted under $TMPDIR")  # the value is used, never shown
    return tuple(found.values())


def resolve_candidate(candidate: Candidate, view: FileView, environ: Mapping[str, str],
                      executable: str | None, cwd: str,
                      shims: Collection[FileId]) -> LibraryResolution:
    env = LoaderEnvironment.for_process(environ, view, executable=executable, cwd=cwd)
    try:
        resolution = resolve(candidate.path, env)
    except ElfError as err:
        return LibraryResolution(candidate.path, candidate.via, None, f"not a loadable ELF "
                                 f"file: {err}", None, False)
    except OSError as err:
        return LibraryResolution(candidate.path, candidate.via, None,
                                 err.strerror or str(err), None, False)
    libcuda = shim_resolution(resolution, LIBCUDA, shims)
    if libcuda.dependency is not None:
        return LibraryResolution(candidate.path, candidate.via, resolution, None, libcuda, True)
    try:
        dep = resolve_name(LIBCUDA, env, model=candidate.path)
    except (OSError, ElfError):
        return LibraryResolution(candidate.path, candidate.via, resolution, None, None, False)
    alone = ShimResolution(LIBCUDA, dep, dep.path, dep.real_path, dep.identity in shims)
    return LibraryResolution(candidate.path, candidate.via, resolution, None, alone, False)


def file_ids(view: FileView, paths: Collection[str]) -> frozenset[FileId]:
    ids = set()
    for path in paths:
        try:
            st = view.stat(path)
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return frozenset(ids)


def loadable_executable(view: FileView, path: str | None) -> tuple[str | None, str | None]:
    """(`path` if the loader model can use it as the program, why not otherwise)."""
    if path is None:
        return None, "the server's executable is not known"
    try:
        read_elf(view.outside(view.realpath(path, strict=True)))
    except (OSError, ElfError) as err:
        return None, f"cannot read the executable {path} ({err}): resolved without it"
    return path, None


def _dirs(text: str | None) -> list[str]:
    return [d for d in (text or "").split(":") if d]


def _is_dir(view: FileView, path: str) -> bool:
    try:
        return os.path.isdir(view.outside(view.realpath(path, strict=True)))
    except OSError:
        return False


def search_patterns(era: Era | None, lib_dir: str | None) -> list[str]:
    """Where `find_candidates` looks besides the environment, for messages (the server's
    TMPDIR is written as $TMPDIR: environment values other than the relevant ones are never
    shown)."""
    era = era or LATEST
    return [p.format(lib=lib_dir or "<prefix>/lib/ollama", tmp="$TMPDIR")
            for p in era.cuda_globs]
