"""Which libraries a process is expected to map, and whether it bypasses a shim: pure
functions of the config, what the loader was told, what the process maps and where the names
its runtime asks for land (docs/configuration.md#expectations).

With ``expect: auto`` a shim is expected where the way it reaches processes says so:

- named in the process's ``LD_PRELOAD`` or in ``/etc/ld.so.preload`` of its root: the loader
  maps it at start, in every process (not mapped then: the preload failed);
- through a link, in a runner only (in every era the runner loads the CUDA backend, which
  asks for ``libcuda.so.1``; the server maps GPU libraries only briefly or, in modern eras,
  never), and only where the link is reached: the name the runner's real library answers to
  (its SONAME), asked for by the runner's CUDA backend, lands through that link as glibc's
  loader resolves it in the runner's root and environment (`vgpumon.sources.landing`:
  preloads by SONAME, ``LD_LIBRARY_PATH``, the backend's ``DT_RUNPATH``, ``ld.so.cache``, the
  default directories);
- a runner also expects the CUDA backend (``ggml-cuda``) when that library is defined and
  the Ollama version is known to be one whose CUDA code is that backend (0.5.8 and later;
  with the version unknown, only what holds in every era is expected).

A process that expects a shim which `stands_for` a real library bypasses it when it maps the
real library and not the shim; or when it maps both and the name the runtime asks for lands,
through a configured link, on the real library it maps (the link now resolves to the real
library, and the shim is in the process only because it was preloaded without that SONAME);
or when it preloads the shim while the real library, which the shim itself loaded at start,
carries the SONAME the runtime asks for and the shim does not. "Loaded at start" is known two
ways: the real library was seen mapped before the process's CUDA backend, or, from 0.12.4 on
(when the server asks for no GPU library itself), the server, preloading the same shim, maps
the real library too: only the shim's constructor can have put it there, and the runner's
copy of the shim did the same before it dlopened its backend. Then glibc hands out the real
one before it searches any path (docs/ollama.md#preloaded-shims-and-the-soname). A shim
that loads the real library only when first called (its ``cuInit``) is handed out itself, and
so is a preloaded shim that carries the SONAME, wherever the links point.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from vgpumon.config.schema import RUNNER, Config, GroupSpec, LibrarySpec, LinkSpec
from vgpumon.ollama.versions import version_tuple
from vgpumon.sources.landing import Landing
from vgpumon.sources.libraries import ProcessLibraries
from vgpumon.sources.loader_env import LoaderVariables

CONFIG, PRELOAD, SYSTEM_PRELOAD, LINK, BACKEND = (
    "config", "preload", "ld_so_preload", "link", "backend")
REASONS = (CONFIG, PRELOAD, SYSTEM_PRELOAD, LINK, BACKEND)
BACKEND_LIBRARY = "ggml-cuda"
# Ollama's CUDA code is a backend library of its own, lib/ollama/cuda_v*/libggml-cuda.so (what
# the built-in ggml-cuda names), from 0.5.8; before, it is in the runner's own libggml.so or
# libggml_cuda_v12.so, or in libcudart (docs/ollama.md#libraries-per-process).
BACKEND_SINCE = (0, 5, 8)
# From 0.12.4 the server maps no GPU library unless a preload puts one there
# (docs/ollama.md#libraries-per-process).
SERVER_NO_GPU_SINCE = (0, 12, 4)
# Where preloads are judged: before this age the loader may not have mapped them yet.
PRELOAD_SETTLE_SECONDS = 1.0
REAL_INSTEAD = "the real library is mapped and the shim is not"
SHADOWED = "shadowed by the real library's SONAME"
LINK_TO_REAL = "the link resolves to the real library"


@dataclass(frozen=True)
class Expectation:
    library: str
    because: str  # one of REASONS

    @property
    def by_preload(self) -> bool:
        return self.because in (PRELOAD, SYSTEM_PRELOAD)


@dataclass(frozen=True)
class Bypass:
    shim: str
    real: str
    why: str


def expectations(group: GroupSpec, config: Config, loader: LoaderVariables | None,
                 libraries: ProcessLibraries,
                 landings: Mapping[str, Landing] | None = None,
                 ollama_version: str | None = None) -> tuple[Expectation, ...]:
    """What `group`'s member is expected to map; `landings`: shim name -> where the name its
    real library answers to lands in the process (those `landings_wanted` names);
    `ollama_version`: the server's, where known."""
    landings = landings or {}
    if not group.expect_auto:
        return tuple(Expectation(name, CONFIG) for name in group.expect)
    found: dict[str, Expectation] = {}
    shims = [config.library(name) for name in config.shims]
    if loader is not None:
        for spec in shims:
            if _named(spec, loader.preload):
                found.setdefault(spec.name, Expectation(spec.name, PRELOAD))
            elif _named(spec, loader.system_preload):
                found.setdefault(spec.name, Expectation(spec.name, SYSTEM_PRELOAD))
    if group.name == RUNNER:
        for spec in shims:
            if spec.name not in found and _reached_by_link(spec, config, libraries,
                                                           landings.get(spec.name)):
                found[spec.name] = Expectation(spec.name, LINK)
        if (any(spec.name == BACKEND_LIBRARY for spec in config.libraries)
                and backend_era(ollama_version)):
            found.setdefault(BACKEND_LIBRARY, Expectation(BACKEND_LIBRARY, BACKEND))
    return tuple(found.values())


def backend_era(version: str | None) -> bool:
    """Whether Ollama `version` keeps its CUDA code in the ggml-cuda backend library."""
    parsed = version_tuple(version) if version else None
    return parsed is not None and parsed >= BACKEND_SINCE


def loaded_at_start_by_preloads(config: Config, server: ProcessLibraries | None,
                                 server_expected: tuple[Expectation, ...],
                                 version: str | None) -> frozenset[str]:
    """The real libraries that preloaded shims load at start, as the server shows them: in
    eras whose server asks for no GPU library, a real library the server maps beside a shim it
    preloads, that stands for it."""
    parsed = version_tuple(version) if version else None
    if server is None or not server.readable or parsed is None or parsed < SERVER_NO_GPU_SINCE:
        return frozenset()
    preloaded = {e.library for e in server_expected if e.by_preload}
    found = set()
    for name in preloaded & set(config.shims):
        spec = config.library(name)
        if spec.stands_for is not None and server.mapped(name) and server.mapped(spec.stands_for):
            found.add(spec.stands_for)
    return frozenset(found)


def landings_wanted(group: GroupSpec, config: Config, loader: LoaderVariables | None,
                    libraries: ProcessLibraries) -> tuple[str, ...]:
    """The shims for which `expectations` and `bypasses` need to know where the name their
    real library answers to lands in this process: those with configured links, whose real
    library the process maps, in a runner (reached by a link?) or preloaded (bypassed
    through a link?)."""
    if not group.expect_auto or not libraries.readable:
        return ()
    wanted = []
    for name in config.shims:
        spec = config.library(name)
        if (spec.stands_for is None or not _links_to(config, spec)
                or not libraries.mapped(spec.stands_for)):
            continue
        preloaded = loader is not None and (_named(spec, loader.preload)
                                            or _named(spec, loader.system_preload))
        if group.name == RUNNER or preloaded:
            wanted.append(spec.name)
    return tuple(wanted)


def preload_failures(expected: tuple[Expectation, ...],
                     libraries: ProcessLibraries) -> tuple[str, ...]:
    """Shims the loader was told to preload that the process does not map."""
    return tuple(e.library for e in expected
                 if e.by_preload and libraries.readable and not libraries.mapped(e.library))


def bypasses(config: Config, expected: tuple[Expectation, ...], libraries: ProcessLibraries,
             sonames: Mapping[str, str | None],
             loaded_early: frozenset[str] = frozenset(),
             landings: Mapping[str, Landing] | None = None) -> tuple[Bypass, ...]:
    """The shims this process goes around (see the module's description). `loaded_early`:
    the real libraries it mapped before its CUDA backend, i.e. at start, where only a preload
    (a forwarding shim's constructor) puts them; `landings` as for `expectations`. Configs
    where no shim names what it `stands_for` keep the simple rule: a `driver:` library mapped
    while no shim is."""
    if not libraries.readable:
        return ()
    landings = landings or {}
    specs = {spec.name: spec for spec in config.libraries}
    if not any(specs[name].stands_for for name in config.shims if name in specs):
        drivers = [spec.name for spec in config.libraries if spec.driver]
        mapped_driver = next((name for name in drivers if libraries.mapped(name)), None)
        if mapped_driver and not any(libraries.mapped(name) for name in config.shims):
            return (Bypass("", mapped_driver, REAL_INSTEAD),)
        return ()
    found = []
    for expectation in expected:
        spec = specs.get(expectation.library)
        if spec is None or spec.stands_for is None or not libraries.mapped(spec.stands_for):
            continue
        to_real = _link_lands_on(spec, config, landings.get(spec.name),
                                 libraries.paths(spec.stands_for))
        if not libraries.mapped(spec.name):
            found.append(Bypass(spec.name, spec.stands_for,
                                LINK_TO_REAL if to_real else REAL_INSTEAD))
        elif (expectation.by_preload and _loaded_before_backend(spec.stands_for, libraries,
                                                                loaded_early)
              and not _answers_to(sonames.get(spec.name), sonames.get(spec.stands_for))):
            found.append(Bypass(spec.name, spec.stands_for, SHADOWED))
        elif to_real:
            found.append(Bypass(spec.name, spec.stands_for, LINK_TO_REAL))
    return tuple(found)


def _link_lands_on(spec: LibrarySpec, config: Config, landing: Landing | None,
                   real_paths: tuple[str, ...]) -> bool:
    """The name the runtime asks for lands, by a search through one of the shim's links, on
    the real library the process maps (not on a preloaded object carrying that SONAME)."""
    if landing is None or landing.preloaded or landing.path not in real_paths:
        return False
    return any(link.path in landing.through for link in _links_to(config, spec))


def _loaded_before_backend(real: str, libraries: ProcessLibraries,
                           loaded_early: frozenset[str]) -> bool:
    """The real library was mapped before the process mapped its CUDA backend: only a
    preload put it there. (A server maps no backend: whether it asked for the library itself
    cannot be told, so it is never judged shadowed.)"""
    return real in loaded_early and libraries.mapped(BACKEND_LIBRARY)


def _named(spec: LibrarySpec, entries: tuple[str, ...]) -> bool:
    """Whether a preload list names the shim's file, by path or by its file name."""
    if spec.path is None:
        return False
    base = os.path.basename(spec.path)
    return any(entry == spec.path or os.path.basename(entry) == base for entry in entries)


def _answers_to(shim_soname: str | None, real_soname: str | None) -> bool:
    """Whether glibc would hand out the shim for the name the real library answers to ("":
    no SONAME; None: unreadable, so no bypass is claimed)."""
    return shim_soname is None or real_soname is None or shim_soname == real_soname


def _links_to(config: Config, spec: LibrarySpec) -> list[LinkSpec]:
    return [link for link in config.links if spec.path is not None and link.target == spec.path]


def _reached_by_link(spec: LibrarySpec, config: Config, libraries: ProcessLibraries,
                     landing: Landing | None) -> bool:
    if spec.path is None or spec.stands_for is None:
        return False
    links = _links_to(config, spec)
    if not links:
        return False
    if libraries.mapped(spec.name):
        return True  # reached, and by no preload: through a link
    # it maps the real library (else no landing was wanted: a CPU runner loads neither)
    return landing is not None and any(link.path in landing.through for link in links)
