"""Which files the dynamic loader would map for an object, found the way glibc's ld.so finds them.

The doctor must say whether ``libggml-cuda.so`` and everything it needs resolve, to which files,
and whether ``libcuda.so.1`` lands on the vGPU shim, without running ``ldd`` (which can execute
the object). This module replays ``_dl_map_object`` and ``_dl_map_object_deps`` (glibc
``elf/dl-load.c``, ``elf/dl-deps.c``, as of 2.36) over files read with `vgpumon.linux.elf`.
Every path
is a path in a `FileView`, and every file is opened through it, so the libraries of a
containerised Ollama are resolved inside its root.

Loader rules reproduced (per ``DT_NEEDED`` edge, objects processed breadth-first):

1. A name already loaded is not searched again: it matches an object's path as loaded, a name it
   was requested by, or its ``DT_SONAME`` (first match in load order). Step ``preload`` when
   that object came from ``LD_PRELOAD``/``/etc/ld.so.preload``, else ``loaded``.
2. A name containing ``/`` is used as a path (dynamic string tokens expanded; relative to the
   process's cwd). Step ``path``; no search follows if it fails.
3. Otherwise: ``DT_RPATH`` of the requesting object, then of the object that loaded it, and so
   on up the chain, then of the executable, all only if the requesting object has no
   ``DT_RUNPATH`` (an object with both ignores its ``DT_RPATH`` entirely); then
   ``LD_LIBRARY_PATH`` (``:`` or ``;`` separated, empty element = cwd, ``$ORIGIN`` = the
   executable's); then the requesting object's ``DT_RUNPATH`` (never inherited); then the
   ld.so cache (entries whose flags fit the machine; with ``DF_1_NODEFLIB`` on the requesting
   object, entries under the default dirs are refused); then the default dirs (not with
   ``DF_1_NODEFLIB``).
4. ``$ORIGIN``/``${ORIGIN}`` is the directory of the *path the owning object was loaded
   through* (symlinks not followed: that is what glibc does for libraries; only the main
   executable's origin comes from its resolved ``/proc/self/exe``). ``$LIB`` and ``$PLATFORM``
   come from the `SystemLayout`. A path element with a token that has no value is dropped.
5. A candidate that does not exist or cannot be opened is skipped; one of another ELF class or
   machine is skipped (reported as ``wrong_class``/``wrong_machine``) and the search goes on.
   Any other defect (not ELF, too short, wrong byte order, not ET_DYN/ET_EXEC, ...) ends the
   search for that name with an error, as ld.so's ``open_verify`` does.
6. A found file that is the same file (device, inode) as a loaded object is that object.

Deliberate simplifications: glibc-hwcaps subdirectories are tried only for the names given in
`LoaderEnvironment.hwcaps` (ld.so asks the CPU); the legacy ``tls/`` and platform
subdirectories of glibc < 2.37 are not tried; secure-mode (setuid) restrictions, audit
modules, ``DT_FILTER``/``DT_AUXILIARY`` and ``dlopen`` namespaces are not modelled; the loader
chain of a dlopened root is the root, then the executable (the real caller of ``dlopen`` may
be a library in between). ld.so stops at the first dependency it cannot load; the resolver
records the failure and carries on, so one report lists every problem.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from vgpumon.linux import elf
from vgpumon.linux.elf import ElfError, ElfInfo, fd_reader, parse_elf
from vgpumon.linux.loader import ldso
from vgpumon.linux.loader.ldcache import LdCache, LdCacheError, loader_flags, read_ld_cache
from vgpumon.linux.paths import HOST, FileView

FileId = tuple[int, int]  # (st_dev, st_ino)

LD_PRELOAD = "LD_PRELOAD"
ETC_PRELOAD = "/etc/ld.so.preload"
DLOPEN = "dlopen"
PT_INTERP = "PT_INTERP"


class Step(StrEnum):
    """How a dependency was satisfied."""

    PRELOAD = "preload"  # by an object loaded through LD_PRELOAD or /etc/ld.so.preload
    LOADED = "loaded"  # by an object already loaded (same name or SONAME), no search
    PATH = "path"  # the name contains "/" and was opened as a path
    RPATH = "rpath"
    LD_LIBRARY_PATH = "LD_LIBRARY_PATH"
    RUNPATH = "runpath"
    CACHE = "ld.so.cache"
    DEFAULT = "default"


class Verdict(StrEnum):
    """What the loader made of one candidate file."""

    ACCEPTED = "accepted"
    MISSING = "missing"  # does not exist (or a dangling link, or a path through a non-dir)
    UNREADABLE = "unreadable"  # exists but cannot be opened (permission)
    WRONG_CLASS = "wrong_class"  # ELF of the other class: skipped, search goes on
    WRONG_MACHINE = "wrong_machine"  # ELF for another machine: skipped, search goes on
    INVALID = "invalid"  # not loadable: the loader gives up on the name
    NODEFLIB = "nodeflib"  # cache entry in a default dir refused because of DF_1_NODEFLIB


@dataclass(frozen=True)
class Candidate:
    path: str  # path in the view, as the loader would open it
    step: Step
    verdict: Verdict
    detail: str = ""


@dataclass(frozen=True)
class LoadedObject:
    path: str  # the path the loader opened (a path in the view; symlinks not followed)
    real_path: str  # the file it is, symlinks followed inside the view
    identity: FileId
    info: ElfInfo
    found_by: Step | None  # None for the root object and the executable
    requested_by: str  # the object (or LD_PRELOAD, dlopen) that first needed it
    preload: bool = False


@dataclass(frozen=True)
class Dependency:
    """One edge: `requester` asked the loader for `name`."""

    name: str
    requester: str  # path of the requesting object, or LD_PRELOAD, /etc/ld.so.preload, dlopen
    found_by: Step | None
    path: str | None = None  # the path it was found through (e.g. a symlink)
    real_path: str | None = None  # the file that path resolves to in the view
    identity: FileId | None = None
    candidates: tuple[Candidate, ...] = ()
    reason: str | None = None  # why it does not resolve

    @property
    def resolved(self) -> bool:
        return self.real_path is not None

    @property
    def skipped(self) -> tuple[Candidate, ...]:
        """Candidates the loader passed over because of their ELF class or machine."""
        wrong = (Verdict.WRONG_CLASS, Verdict.WRONG_MACHINE)
        return tuple(c for c in self.candidates if c.verdict in wrong)


@dataclass(frozen=True)
class Resolution:
    root: LoadedObject
    objects: tuple[LoadedObject, ...]  # in load order
    dependencies: tuple[Dependency, ...]  # preloads first, then DT_NEEDED edges breadth-first

    @property
    def unresolved(self) -> tuple[Dependency, ...]:
        return tuple(d for d in self.dependencies if not d.resolved)

    @property
    def loadable(self) -> bool:
        """Everything the root needs, directly or through what it loads, resolves. (A preload
        that fails is only a warning to ld.so, and does not count.)"""
        path_of = {o.identity: o.path for o in self.objects}
        edges: dict[str, list[Dependency]] = {}
        for dep in self.dependencies:
            edges.setdefault(dep.requester, []).append(dep)
        seen, todo = {self.root.path}, [self.root.path]
        while todo:
            for dep in edges.get(todo.pop(), ()):
                if dep.identity is None:
                    return False
                path = path_of[dep.identity]
                if path not in seen:
                    seen.add(path)
                    todo.append(path)
        return True

    def find(self, name: str) -> Dependency | None:
        """The first edge that asked for `name` (the one that decided what got loaded)."""
        return next((d for d in self.dependencies if d.name == name), None)


@dataclass(frozen=True)
class ShimResolution:
    """Answer to "which file does `name` resolve to, and is it a shim?"."""

    name: str
    dependency: Dependency | None  # None when nothing asked for `name`
    path: str | None  # e.g. /usr/lib64/libcuda.so.1
    real_path: str | None  # e.g. /usr/lib64/libvgpu-cuda.so
    is_shim: bool


def shim_resolution(resolution: Resolution, name: str, shims: Collection[FileId]) -> ShimResolution:
    """What `name` (e.g. ``libcuda.so.1``) resolved to and whether that file is one of `shims`.

    `shims` holds the (st_dev, st_ino) of the shim files as vgpumon stats them (through the
    same view): ``libcuda.so.1 -> libvgpu-cuda.so`` is a shim, ``libcuda.so.575.51`` is not.
    """
    dep = resolution.find(name)
    if dep is None:
        return ShimResolution(name, None, None, None, False)
    return ShimResolution(name, dep, dep.path, dep.real_path, dep.identity in shims)


_MAX_PRELOAD_FILE = 1 << 20


def _read_small_file(view: FileView, path: str, limit: int) -> str | None:
    """The first `limit` bytes of the regular file `path` in `view`; None for anything else.
    Opened non-blocking: a FIFO a container puts there must not block the caller."""
    try:
        fd = os.open(view.outside(view.realpath(path, strict=True)),
                     os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return os.fsdecode(b"".join(chunks))


# --- the machine's loader ---------------------------------------------------------------------


@dataclass(frozen=True)
class SystemLayout:
    """What the machine's ld.so was built with: its default dirs, ``$LIB`` and ``$PLATFORM``."""

    dirs: tuple[str, ...]
    lib: str
    platform: str | None


@dataclass(frozen=True)
class _Arch:
    triplet: str
    flat: tuple[str, ...]  # non-multiarch (RHEL/Fedora style) default dirs
    platform: str | None


_ARCHES: dict[tuple[int, int, str], _Arch] = {
    (elf.EM_X86_64, 64, "little"): _Arch("x86_64-linux-gnu", ("/lib64", "/usr/lib64"), "x86_64"),
    (elf.EM_X86_64, 32, "little"): _Arch(
        "x86_64-linux-gnux32", ("/libx32", "/usr/libx32"), "x86_64"
    ),
    (elf.EM_386, 32, "little"): _Arch("i386-linux-gnu", ("/lib", "/usr/lib"), "i686"),
    (elf.EM_AARCH64, 64, "little"): _Arch("aarch64-linux-gnu", ("/lib64", "/usr/lib64"), "aarch64"),
    (elf.EM_ARM, 32, "little"): _Arch("arm-linux-gnueabihf", ("/lib", "/usr/lib"), None),
    (elf.EM_PPC64, 64, "little"): _Arch("powerpc64le-linux-gnu", ("/lib64", "/usr/lib64"), None),
    (elf.EM_PPC64, 64, "big"): _Arch("powerpc64-linux-gnu", ("/lib64", "/usr/lib64"), None),
    (elf.EM_S390, 64, "big"): _Arch("s390x-linux-gnu", ("/lib64", "/usr/lib64"), None),
    (elf.EM_RISCV, 64, "little"): _Arch("riscv64-linux-gnu", ("/lib64", "/usr/lib64"), None),
}


def system_layout(info: ElfInfo, view: FileView | None = None) -> SystemLayout:
    """The default dirs, ``$LIB`` and ``$PLATFORM`` of the ld.so that would load `info`.

    glibc compiles its default dirs in, and distributions differ: Debian/Ubuntu (multiarch)
    use ``/lib/<triplet>``, ``/usr/lib/<triplet>``, ``/lib``, ``/usr/lib`` and ``$LIB`` =
    ``lib/<triplet>``; Fedora/RHEL use ``/lib64``, ``/usr/lib64`` and ``$LIB`` = ``lib64``.
    Given a view, the layout is the one whose dirs hold ``libc.so.6``. Without a view, or when
    neither does, all of them in that order (multiarch, flat, then ``/lib``, ``/usr/lib``),
    with the multiarch ``$LIB``. Unknown machines get ``/lib``, ``/usr/lib``.

    ``$PLATFORM`` is the machine's loader's (`ldso.loader_platform`: ``haswell`` on most Intel
    x86-64 CPUs, not ``uname -m``); the static guess only where it cannot be asked. In the
    host's own root the default dirs and ``$LIB`` are the system loader's own
    (``ld.so --list-diagnostics``) where it tells them.
    """
    key = (info.machine, info.elf_class, info.byte_order)
    arch = _ARCHES.get(key)
    if arch is None:
        return SystemLayout(("/lib", "/usr/lib"), "lib", None)
    asked = ldso.loader_platform(key)
    platform = asked.value if asked is not None else arch.platform
    if view is not None and view.is_identity:
        told = ldso.diagnostics(key)
        if told is not None and told.system_dirs and told.lib:
            return SystemLayout(told.system_dirs, told.lib, platform)
    multiarch = (f"/lib/{arch.triplet}", f"/usr/lib/{arch.triplet}", "/lib", "/usr/lib")
    multiarch_lib = f"lib/{arch.triplet}"
    if view is not None:
        if any(view.exists(f"{d}/libc.so.6") for d in multiarch[:2]):
            return SystemLayout(multiarch, multiarch_lib, platform)
        if any(view.exists(f"{d}/libc.so.6") for d in arch.flat):
            return SystemLayout(arch.flat, arch.flat[0].lstrip("/"), platform)
    union = tuple(dict.fromkeys(multiarch[:2] + arch.flat + ("/lib", "/usr/lib")))
    return SystemLayout(union, multiarch_lib, platform)


@dataclass(frozen=True)
class LoaderEnvironment:
    """Everything besides the object itself that decides what the loader finds.

    `ld_library_path` and `ld_preload` are the raw variables of the process; `etc_preload`
    the contents of its ``/etc/ld.so.preload``; `cache` its parsed ``/etc/ld.so.cache``.
    `executable` (a path in the view) makes the object behave as dlopened by that program:
    the program's own dependencies are loaded first, its ``DT_RPATH`` joins the search, and
    ``$ORIGIN`` in ``LD_LIBRARY_PATH``/``LD_PRELOAD`` means its directory. `cwd` anchors
    relative paths. `layout` defaults to `system_layout` of the object in the view. `hwcaps`
    are the glibc-hwcaps subdirectories the CPU supports, best first (``x86-64-v3``, ...).
    """

    view: FileView = HOST
    ld_library_path: str | None = None
    ld_preload: str | None = None
    etc_preload: str | None = None
    cache: LdCache | None = None
    executable: str | None = None
    cwd: str = "/"
    layout: SystemLayout | None = None
    hwcaps: tuple[str, ...] = ()

    @classmethod
    def for_process(
        cls,
        environ: Mapping[str, str],
        view: FileView = HOST,
        *,
        executable: str | None = None,
        cwd: str = "/",
        hwcaps: tuple[str, ...] = (),
    ) -> LoaderEnvironment:
        """The environment of a process: its variables, plus its ``/etc/ld.so.cache`` and
        ``/etc/ld.so.preload`` read in `view`. A missing or corrupt cache is no cache, which
        is what ld.so makes of it."""
        try:
            cache: LdCache | None = read_ld_cache(view)
        except (OSError, LdCacheError):
            cache = None
        etc_preload = _read_small_file(view, ETC_PRELOAD, _MAX_PRELOAD_FILE)
        return cls(
            view=view,
            ld_library_path=environ.get("LD_LIBRARY_PATH"),
            ld_preload=environ.get("LD_PRELOAD"),
            etc_preload=etc_preload,
            cache=cache,
            executable=executable,
            cwd=cwd,
            hwcaps=hwcaps,
        )

    def preloads(self) -> tuple[tuple[str, str], ...]:
        """(name, source) of every preload in loader order: LD_PRELOAD, then the file."""
        items = [(n, LD_PRELOAD) for n in _split(self.ld_preload or "", " :")]
        text = self.etc_preload or ""
        text = "\n".join(line.split("#", 1)[0] for line in text.split("\n"))
        items += [(n, ETC_PRELOAD) for n in _split(text, ": \t\n")]
        return tuple(items)


def _split(text: str, separators: str) -> list[str]:
    for sep in separators[1:]:
        text = text.replace(sep, separators[0])
    return [part for part in text.split(separators[0]) if part]


# --- resolution ----------------------------------------------------------------------------------


def resolve(path: str, env: LoaderEnvironment) -> Resolution:
    """Resolve the dependencies of the object at `path` (a path in ``env.view``).

    Raises ``OSError`` if the object cannot be opened and `ElfError` if it is not ELF.
    """
    loader = _Loader(env, path)
    root = loader.load_root(path)
    return Resolution(
        root=root.frozen(),
        objects=tuple(o.frozen() for o in loader.objects),
        dependencies=tuple(loader.edges),
    )


def resolve_name(name: str, env: LoaderEnvironment, *, model: str | None = None) -> Dependency:
    """How ``dlopen(name)`` by the executable would resolve: e.g. where ``libcuda.so.1`` lands
    for the runner even when ``libggml-cuda.so`` is missing. Preloads and the executable's
    dependencies are loaded first. The process's ELF class and machine are those of `model`
    (a path in the view), by default ``env.executable``; one of the two is required.
    """
    like = model if model is not None else env.executable
    if like is None:
        raise ValueError("resolve_name needs env.executable or a model object")
    loader = _Loader(env, like)
    loader.start()
    dep, obj, new = loader.map_object(name, loader.main, DLOPEN)
    if new and obj is not None:
        loader.load_dependencies([obj])
    return dep


def resolve_request(name: str, requester: str, env: LoaderEnvironment) -> Dependency:
    """How `name` resolves for the object at `requester` (a path in the view), dlopened by
    ``env.executable`` after the preloads: the edge that first loaded `name` if the requester
    or anything before it needed it (a preload carrying that SONAME, the requester's own
    ``DT_NEEDED``), else the requester's ``dlopen(name)``, searched with its ``DT_RUNPATH``
    (or its ``DT_RPATH`` chain). E.g. where ``libggml-cuda.so``'s ``libcuda.so.1`` lands.

    Raises ``OSError`` if the requester cannot be opened and `ElfError` if it is not ELF.
    """
    loader = _Loader(env, requester)
    root = loader.load_root(requester)
    first = next((dep for dep in loader.edges if dep.name == name), None)
    if first is not None:
        return first
    dep, _obj, _new = loader.map_object(name, root, root.path)
    return dep


@dataclass(eq=False)
class _Object:
    path: str
    real_path: str
    identity: FileId
    info: ElfInfo
    loader: _Object | None
    found_by: Step | None
    requested_by: str
    origin: str | None
    names: set[str] = field(default_factory=set)
    preload: bool = False
    executable: bool = False
    rpath_dirs: tuple[str, ...] | None = None  # expanded lazily, like glibc's cache_rpath
    runpath_dirs: tuple[str, ...] | None = None

    def matches(self, name: str) -> bool:
        if name in self.names or name == self.info.soname:
            return True
        return not self.executable and name == self.path

    def frozen(self) -> LoadedObject:
        return LoadedObject(
            self.path,
            self.real_path,
            self.identity,
            self.info,
            self.found_by,
            self.requested_by,
            self.preload,
        )


@dataclass(frozen=True)
class _Found:
    real_path: str
    identity: FileId
    info: ElfInfo


class _Loader:
    """One process's loader state: the loaded objects and the edges that loaded them."""

    def __init__(self, env: LoaderEnvironment, like: str) -> None:
        self.env = env
        self.view = env.view
        model = elf.read_elf(self.view.outside(self.view.realpath(self._abs(like), strict=True)))
        self.model = model
        self.layout = env.layout or system_layout(model, self.view)
        self.cache_flags = loader_flags(model.machine, model.elf_class)
        self.objects: list[_Object] = []
        self.edges: list[Dependency] = []
        self.main: _Object | None = None
        self.interpreter: _Object | None = None  # ld.so itself, placed when first needed
        self.started = False

    # process start: executable, preloads, their dependencies

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        queue: list[_Object] = []
        if self.env.executable is not None:
            self.main = self._load_executable(self.env.executable)
            self.interpreter = self._load_interpreter(self.main.info.interpreter)
            queue.append(self.main)
        for name, source in self.env.preloads():
            _dep, obj, new = self.map_object(name, self.main, source, preload=True)
            if new and obj is not None:
                queue.append(obj)
        self.load_dependencies(queue)

    def _read_file(self, path: str) -> tuple[str, FileId, ElfInfo]:
        """`path` resolved in the view, the identity of that file, and its ELF headers."""
        real = self.view.realpath(path, strict=True)
        st = os.stat(self.view.outside(real))
        return real, (st.st_dev, st.st_ino), elf.read_elf(self.view.outside(real))

    def _load_executable(self, path: str) -> _Object:
        path = self._abs(path)
        real, identity, info = self._read_file(path)
        obj = _Object(
            path=path,
            real_path=real,
            identity=identity,
            info=info,
            loader=None,
            found_by=None,
            requested_by=DLOPEN,
            origin=posixpath.dirname(real),  # the kernel's resolved /proc/self/exe
            executable=True,
        )
        self.objects.append(obj)
        return obj

    def _load_interpreter(self, path: str | None) -> _Object | None:
        """ld.so is in the link map from the start (as PT_INTERP names it) and takes its
        place in the load order where an object first needs it, usually after libc."""
        if path is None:
            return None
        try:
            real, identity, info = self._read_file(path)
        except (OSError, ElfError):
            return None
        return _Object(
            path=path,
            real_path=real,
            identity=identity,
            info=info,
            loader=None,
            found_by=None,
            requested_by=PT_INTERP,
            origin=posixpath.dirname(path),
        )

    def _loaded(self) -> Iterable[_Object]:
        yield from self.objects
        if self.interpreter is not None and self.interpreter not in self.objects:
            yield self.interpreter

    def _place(self, obj: _Object) -> None:
        if obj not in self.objects:
            self.objects.append(obj)

    def load_root(self, path: str) -> _Object:
        self.start()
        path = self._abs(path)
        for obj in self._loaded():
            if obj.matches(path):
                self._place(obj)
                return obj
        real = self.view.realpath(path, strict=True)
        outside = self.view.outside(real)
        st = os.stat(outside)
        for obj in self._loaded():
            if obj.identity == (st.st_dev, st.st_ino):
                self._place(obj)
                return obj
        info = elf.read_elf(outside)
        root = _Object(
            path=path,
            real_path=real,
            identity=(st.st_dev, st.st_ino),
            info=info,
            loader=self.main,
            found_by=None,
            requested_by=DLOPEN,
            origin=posixpath.dirname(path),
            names={path},
        )
        self.objects.append(root)
        self.load_dependencies([root])
        return root

    def load_dependencies(self, queue: list[_Object]) -> None:
        """Breadth-first over `queue`, appending each newly loaded object (dl-deps.c)."""
        i = 0
        while i < len(queue):
            obj = queue[i]
            i += 1
            for name in obj.info.needed:
                _dep, dep_obj, new = self.map_object(name, obj, obj.path)
                if new and dep_obj is not None:
                    queue.append(dep_obj)

    # one name (dl-load.c: _dl_map_object)

    def map_object(
        self, name: str, loader: _Object | None, requester: str, *, preload: bool = False
    ) -> tuple[Dependency, _Object | None, bool]:
        for obj in self._loaded():
            if obj.matches(name):
                self._place(obj)
                obj.names.add(name)
                step = Step.PRELOAD if obj.preload else Step.LOADED
                dep = Dependency(name, requester, step, obj.path, obj.real_path, obj.identity)
                self.edges.append(dep)
                return dep, obj, False
        if "/" in name:
            candidates, found = self._open_path(name, loader)
        else:
            candidates, found = self._search(name, loader)
        if found is None:
            dep = Dependency(
                name,
                requester,
                None,
                candidates=tuple(candidates),
                reason=_failure_reason(candidates, self.model.elf_class),
            )
            self.edges.append(dep)
            return dep, None, False
        accepted = candidates[-1]
        dep = Dependency(
            name,
            requester,
            accepted.step,
            path=accepted.path,
            real_path=found.real_path,
            identity=found.identity,
            candidates=tuple(candidates),
        )
        self.edges.append(dep)
        for obj in self._loaded():
            if obj.identity == found.identity:
                self._place(obj)
                obj.names.add(name)
                return dep, obj, False
        obj = _Object(
            path=accepted.path,
            real_path=found.real_path,
            identity=found.identity,
            info=found.info,
            loader=loader,
            found_by=accepted.step,
            requested_by=requester,
            origin=posixpath.dirname(accepted.path),  # not the real path: glibc's l_origin
            names={name},
            preload=preload,
        )
        self.objects.append(obj)
        return dep, obj, True

    def _open_path(
        self, name: str, loader: _Object | None
    ) -> tuple[list[Candidate], _Found | None]:
        owner = loader or self.main
        expanded = self._expand(name, owner.origin if owner else None)
        if not expanded:
            miss = Candidate(name, Step.PATH, Verdict.MISSING, "dynamic string token has no value")
            return [miss], None
        candidate, found = self._probe(self._abs(expanded), Step.PATH)
        return [candidate], found

    def _search(self, name: str, loader: _Object | None) -> tuple[list[Candidate], _Found | None]:
        tried: list[Candidate] = []

        def attempt(dirs: Iterable[str], step: Step) -> _Found | Literal[False] | None:
            """The found file; False when the search must stop; None to go on."""
            for directory in dirs:
                for sub in (*(f"glibc-hwcaps/{h}" for h in self.env.hwcaps), ""):
                    path = posixpath.join(directory, sub, name)
                    candidate, found = self._probe(path, step)
                    tried.append(candidate)
                    if found is not None:
                        return found
                    if candidate.verdict is Verdict.INVALID:
                        return False
            return None

        searches: list[tuple[Iterable[str], Step]] = []
        if loader is None or loader.info.runpath is None:
            chain = list(_loader_chain(loader))
            if self.main is not None and self.main not in chain:
                chain.append(self.main)
            searches += [(self._rpath_dirs(o), Step.RPATH) for o in chain]
        searches.append((self._ld_library_path_dirs(), Step.LD_LIBRARY_PATH))
        if loader is not None:
            searches.append((self._runpath_dirs(loader), Step.RUNPATH))
        for dirs, step in searches:
            result = attempt(dirs, step)
            if result is not None:
                return tried, result or None
        defaults_owner = loader or self.main
        nodeflib = defaults_owner is not None and defaults_owner.info.nodeflib
        result = self._from_cache(name, nodeflib, tried)
        if result is None and not nodeflib:
            result = attempt(self.layout.dirs, Step.DEFAULT)
        return tried, result or None

    def _from_cache(
        self, name: str, nodeflib: bool, tried: list[Candidate]
    ) -> _Found | Literal[False] | None:
        if self.env.cache is None:
            return None
        entry = self.env.cache.lookup(name, flags=self.cache_flags, hwcaps=self.env.hwcaps)
        if entry is None:
            return None
        if nodeflib and any(entry.path.startswith(d.rstrip("/") + "/") for d in self.layout.dirs):
            tried.append(Candidate(entry.path, Step.CACHE, Verdict.NODEFLIB, "DF_1_NODEFLIB"))
            return None
        candidate, found = self._probe(entry.path, Step.CACHE)
        tried.append(candidate)
        if found is None and candidate.verdict is Verdict.INVALID:
            return False
        return found

    # search paths (dl-load.c: decompose_rpath, fillin_rpath, _dl_init_paths)

    def _rpath_dirs(self, obj: _Object) -> tuple[str, ...]:
        if obj.rpath_dirs is None:
            rpath = obj.info.rpath if obj.info.runpath is None else None
            obj.rpath_dirs = self._path_list(rpath, ":", obj.origin)
        return obj.rpath_dirs

    def _runpath_dirs(self, obj: _Object) -> tuple[str, ...]:
        if obj.runpath_dirs is None:
            obj.runpath_dirs = self._path_list(obj.info.runpath, ":", obj.origin)
        return obj.runpath_dirs

    def _ld_library_path_dirs(self) -> tuple[str, ...]:
        origin = self.main.origin if self.main is not None else None
        return self._path_list(self.env.ld_library_path, ":;", origin)

    def _path_list(self, text: str | None, separators: str, origin: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        for sep in separators[1:]:
            text = text.replace(sep, separators[0])
        dirs: list[str] = []
        for element in text.split(separators[0]):
            if element:
                element = self._expand(element, origin)
                if not element:
                    continue  # a token without a value drops the element
            directory = self._abs(element.rstrip("/") or "/") if element else self.env.cwd
            if directory not in dirs:
                dirs.append(directory)
        return tuple(dirs)

    def _expand(self, text: str, origin: str | None) -> str:
        """Dynamic string tokens substituted; "" when a known token has no value."""
        values = {"ORIGIN": origin, "PLATFORM": self.layout.platform, "LIB": self.layout.lib}
        out: list[str] = []
        i = 0
        while i < len(text):
            if text[i] != "$":
                out.append(text[i])
                i += 1
                continue
            for token, value in values.items():
                length = _dst_length(text, i + 1, token)
                if length:
                    if value is None:
                        return ""
                    out.append(value)
                    i += 1 + length
                    break
            else:
                out.append("$")
                i += 1
        return "".join(out)

    def _abs(self, path: str) -> str:
        return path if path.startswith("/") else posixpath.join(self.env.cwd, path)

    # one candidate (dl-load.c: open_verify)

    def _probe(self, path: str, step: Step) -> tuple[Candidate, _Found | None]:
        try:
            real = self.view.realpath(path, strict=True)
            fd = os.open(self.view.outside(real), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            unreadable = exc.errno in (errno.EACCES, errno.EPERM)
            verdict = Verdict.UNREADABLE if unreadable else Verdict.MISSING
            return Candidate(path, step, verdict, exc.strerror or str(exc)), None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return Candidate(path, step, Verdict.INVALID, "cannot read file data"), None
            read_at = fd_reader(fd)
            problem = self._verify(read_at(0, 64))
            if problem is not None:
                return Candidate(path, step, *problem), None
            info = parse_elf(read_at)
        except ElfError as exc:
            return Candidate(path, step, Verdict.INVALID, str(exc)), None
        except OSError as exc:
            return Candidate(path, step, Verdict.INVALID, f"cannot read file data: {exc}"), None
        finally:
            os.close(fd)
        found = _Found(real, (st.st_dev, st.st_ino), info)
        return Candidate(path, step, Verdict.ACCEPTED), found

    def _verify(self, header: bytes) -> tuple[Verdict, str] | None:
        """ld.so's open_verify: None if loadable, else the verdict and glibc's message."""
        model = self.model
        is64 = model.elf_class == 64
        order: Literal["little", "big"] = "little" if model.byte_order == "little" else "big"
        if len(header) < (64 if is64 else 52):
            return Verdict.INVALID, "file too short"
        if header[:4] != b"\x7fELF":
            return Verdict.INVALID, "invalid ELF header"
        if header[4] != (elf.ELFCLASS64 if is64 else elf.ELFCLASS32):
            return Verdict.WRONG_CLASS, f"ELF class {header[4]}, need {model.elf_class}-bit"
        if header[5] != (elf.ELFDATA2LSB if order == "little" else elf.ELFDATA2MSB):
            return Verdict.INVALID, f"ELF file data encoding not {order}-endian"
        if header[6] != 1:
            return Verdict.INVALID, "ELF file version ident does not match current one"
        osabi, abi_version = header[7], header[8]
        if osabi not in (0, 3):
            return Verdict.INVALID, "ELF file OS ABI invalid"
        if abi_version != 0 and not (osabi == 3 and abi_version < 4):
            return Verdict.INVALID, "ELF file ABI version invalid"
        if any(header[9:16]):
            return Verdict.INVALID, "nonzero padding in e_ident"
        e_type = int.from_bytes(header[16:18], order)
        e_machine = int.from_bytes(header[18:20], order)
        if int.from_bytes(header[20:24], order) != 1:
            return Verdict.INVALID, "ELF file version does not match current one"
        if e_machine != model.machine:
            return Verdict.WRONG_MACHINE, f"e_machine {e_machine}, need {model.machine}"
        if e_type not in (elf.ET_DYN, elf.ET_EXEC):
            return Verdict.INVALID, "only ET_DYN and ET_EXEC can be loaded"
        phentsize = int.from_bytes(header[54:56] if is64 else header[42:44], order)
        if phentsize != (56 if is64 else 32):
            return Verdict.INVALID, "ELF file's phentsize not the expected size"
        return None


def _loader_chain(obj: _Object | None) -> Iterable[_Object]:
    while obj is not None:
        yield obj
        obj = obj.loader


def _dst_length(text: str, at: int, token: str) -> int:
    """Length of `token` (bare or in braces) at `at`, 0 if it is not there (dl-load.c is_dst)."""
    curly = text.startswith("{", at)
    start = at + 1 if curly else at
    if not text.startswith(token, start):
        return 0
    after = text[start + len(token) : start + len(token) + 1]
    if curly:
        return len(token) + 2 if after == "}" else 0
    if after and (after.isascii() and (after.isalnum() or after == "_")):
        return 0
    return len(token)


def _failure_reason(candidates: list[Candidate], elf_class: int) -> str:
    """glibc's message for a name that did not resolve, plus what was skipped."""
    if candidates and candidates[-1].verdict is Verdict.INVALID:
        return f"{candidates[-1].path}: {candidates[-1].detail}"
    if candidates and candidates[-1].step is Step.PATH:
        return f"{candidates[-1].path}: {candidates[-1].detail or 'cannot open'}"
    wrong_class = [c.path for c in candidates if c.verdict is Verdict.WRONG_CLASS]
    wrong_machine = [c.path for c in candidates if c.verdict is Verdict.WRONG_MACHINE]
    if wrong_class:  # ld.so names the class it found, not the one it wanted
        reason = f"wrong ELF class: ELFCLASS{64 if elf_class == 32 else 32}"
    else:
        reason = "cannot open shared object file: No such file or directory"
    if wrong_class or wrong_machine:
        reason += " (skipped: " + ", ".join(wrong_class + wrong_machine) + ")"
    return reason
