"""Which libraries a process is expected to map, and whether it bypasses a shim: pure
functions of the config, what the loader was told and what the process maps
(docs/configuration.md#expectations).

With ``expect: auto`` a shim is expected where the way it reaches processes says so:

- named in the process's ``LD_PRELOAD`` or in ``/etc/ld.so.preload`` of its root: the loader
  maps it at start, in every process (not mapped then: the preload failed);
- through a link, in a runner only (in every era the runner loads the CUDA backend, which
  asks for ``libcuda.so.1``; the server maps GPU libraries only briefly or, in modern eras,
  never), and only where the link is reached: the link's name is the one the runner's real
  library answers to (its SONAME) and the link's directory comes no later in the runner's
  search order (``LD_LIBRARY_PATH``, the backend's own directory, the system directories)
  than the directory the real library was mapped from;
- a runner also expects the CUDA backend (``ggml-cuda``) when that library is defined.

A process that expects a shim which `stands_for` a real library bypasses it when it maps the
real library and not the shim, or preloads the shim while the real library, which the shim
itself loaded at start (it was mapped before the process's CUDA backend), carries the SONAME
the runtime asks for and the shim does not: glibc then hands out the real one before it
searches any path (docs/ollama.md#preloaded-shims-and-the-soname). A shim that loads the real
library only when first called (its ``cuInit``) is handed out itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from vgpumon.config.schema import RUNNER, Config, GroupSpec, LibrarySpec
from vgpumon.sources.libraries import ProcessLibraries
from vgpumon.sources.loader_env import LoaderVariables

CONFIG, PRELOAD, SYSTEM_PRELOAD, LINK, BACKEND = (
    "config", "preload", "ld_so_preload", "link", "backend")
REASONS = (CONFIG, PRELOAD, SYSTEM_PRELOAD, LINK, BACKEND)
BACKEND_LIBRARY = "ggml-cuda"
SYSTEM_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/lib/x86_64-linux-gnu",
               "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
               "/usr/lib/aarch64-linux-gnu")
# Where preloads are judged: before this age the loader may not have mapped them yet.
PRELOAD_SETTLE_SECONDS = 1.0
REAL_INSTEAD = "the real library is mapped and the shim is not"
SHADOWED = "shadowed by the real library's SONAME"


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
                 sonames: Mapping[str, str | None]) -> tuple[Expectation, ...]:
    """What `group`'s member is expected to map; `sonames`: library name -> SONAME of the
    file the process maps for it."""
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
            if spec.name not in found and _reached_by_link(spec, config, loader, libraries,
                                                           sonames):
                found[spec.name] = Expectation(spec.name, LINK)
        if any(spec.name == BACKEND_LIBRARY for spec in config.libraries):
            found.setdefault(BACKEND_LIBRARY, Expectation(BACKEND_LIBRARY, BACKEND))
    return tuple(found.values())


def preload_failures(expected: tuple[Expectation, ...],
                     libraries: ProcessLibraries) -> tuple[str, ...]:
    """Shims the loader was told to preload that the process does not map."""
    return tuple(e.library for e in expected
                 if e.by_preload and libraries.readable and not libraries.mapped(e.library))


def bypasses(config: Config, expected: tuple[Expectation, ...], libraries: ProcessLibraries,
             sonames: Mapping[str, str | None],
             loaded_early: frozenset[str] = frozenset()) -> tuple[Bypass, ...]:
    """The shims this process goes around (see the module's description). `loaded_early`:
    the real libraries it mapped before its CUDA backend, i.e. at start, where only a preload
    (a forwarding shim's constructor) puts them. Configs where no shim names what it
    `stands_for` keep the simple rule: a `driver:` library mapped while no shim is."""
    if not libraries.readable:
        return ()
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
        if not libraries.mapped(spec.name):
            found.append(Bypass(spec.name, spec.stands_for, REAL_INSTEAD))
        elif (expectation.by_preload and _loaded_before_backend(spec.stands_for, libraries,
                                                                loaded_early)
              and not _answers_to(sonames.get(spec.name), sonames.get(spec.stands_for))):
            found.append(Bypass(spec.name, spec.stands_for, SHADOWED))
    return tuple(found)


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


def _reached_by_link(spec: LibrarySpec, config: Config, loader: LoaderVariables | None,
                     libraries: ProcessLibraries, sonames: Mapping[str, str | None]) -> bool:
    if spec.path is None or spec.stands_for is None:
        return False
    links = [link for link in config.links if link.target == spec.path]
    if not links:
        return False
    if libraries.mapped(spec.name):
        return True  # reached, and by no preload: through a link
    real_paths = libraries.paths(spec.stands_for)
    if not real_paths:
        return False  # it does not load this library at all (a CPU runner)
    real_name = sonames.get(spec.stands_for) or os.path.basename(real_paths[0])
    order = _search_order(loader, libraries)
    real_rank = _rank(order, os.path.dirname(real_paths[0]))
    for link in links:
        if _family(os.path.basename(link.path)) != _family(real_name):
            continue
        rank = _rank(order, os.path.dirname(link.path))
        if rank is not None and (real_rank is None or rank <= real_rank):
            return True
    return False


def _search_order(loader: LoaderVariables | None,
                  libraries: ProcessLibraries) -> tuple[str, ...]:
    """Where a runner's loader looks, in order: LD_LIBRARY_PATH, the backend's directory (its
    RUNPATH is ``$ORIGIN``), the system directories."""
    library_path = loader.library_path if loader is not None else ()
    backend = tuple(os.path.dirname(path) for path in libraries.paths(BACKEND_LIBRARY))
    return tuple(os.path.normpath(d) for d in (*library_path, *backend, *SYSTEM_DIRS))


def _rank(order: tuple[str, ...], directory: str) -> int | None:
    directory = os.path.normpath(directory)
    return order.index(directory) if directory in order else None


def _family(name: str) -> str:
    """``libcudart.so.12`` for ``libcudart.so.12.8.90``: the name up to the major version,
    which is what a SONAME holds."""
    match = re.match(r"(.+?\.so(?:\.\d+)?)", name)
    return match.group(1) if match else name
