"""Library-load state: which configured libraries a process has mapped, and whether stale.

`path:` libraries are recognised by the (device, inode) of the configured file, falling back to
the basename of the file it resolves to where that identity cannot decide: the mapping is under
the configured name (the file may have been replaced since: stale), or on another device number
(device numbers in maps are unreliable on btrfs and on overlayfs before Linux 6.8). A file of
that basename elsewhere on the same device is another file: ``cpu_avx2/libext_server.so`` is not
``cuda_v11/libext_server.so``. `name:` libraries are recognised by a basename glob. Maps
show the resolved file, never a symlink name: ``libcuda.so.1 -> libvgpu-cuda.so`` is mapped as
``…/libvgpu-cuda.so``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from vgpumon.config.schema import LibrarySpec
from vgpumon.linux.paths import FileView
from vgpumon.linux.procfs import MappedFile, ProcessMaps, ProcFS, parse_maps, select_lines
from vgpumon.ollama.manifests import blob_digest_from_model_arg

GPU_DEVICE_PREFIX = "/dev/nvidia"
# An Ollama model blob (``…/blobs/sha256-<hex>``): llama.cpp maps the model file it loads.
MODEL_BLOB_ENDING = rb"sha256[-:][0-9a-fA-F]{64}(?: \(deleted\))?$"


@dataclass(frozen=True)
class LibraryFile:
    """A `path:` library as found on disk at the last refresh."""

    library: str
    path: str
    resolved: str
    dev: int | None
    inode: int | None
    error: str | None = None

    @property
    def present(self) -> bool:
        return self.inode is not None


@dataclass(frozen=True)
class LibraryMapping:
    """A configured library mapped in one process."""

    library: str
    path: str
    deleted: bool
    stale: bool


@dataclass(frozen=True)
class ProcessLibraries:
    """The library-load state of one process at one moment."""

    readable: bool
    error: str | None = None
    mappings: tuple[LibraryMapping, ...] = ()
    gpu_device: bool = False
    model_blobs: tuple[str, ...] = ()  # digests of the Ollama model blobs it maps

    def mapped(self, library: str) -> bool:
        return any(mapping.library == library for mapping in self.mappings)

    def stale(self, library: str) -> bool:
        return any(m.library == library and m.stale for m in self.mappings)

    def paths(self, library: str) -> tuple[str, ...]:
        return tuple(m.path for m in self.mappings if m.library == library)




def find_library_file(view: FileView, spec: LibrarySpec) -> LibraryFile:
    """Stat a `path:` library in its view (following symlinks inside that view)."""
    assert spec.path is not None
    try:
        resolved = view.realpath(spec.path)
    except OSError as err:
        return LibraryFile(spec.name, spec.path, spec.path, None, None, _describe(err))
    try:
        st = os.stat(view.outside(resolved))
    except FileNotFoundError:
        return LibraryFile(spec.name, spec.path, resolved, None, None)
    except OSError as err:
        return LibraryFile(spec.name, spec.path, resolved, None, None, _describe(err))
    return LibraryFile(spec.name, spec.path, resolved, st.st_dev, st.st_ino)


class LibraryMatcher:
    """Decides which configured libraries a mapped file is (pure: no I/O)."""

    def __init__(self, specs: tuple[LibrarySpec, ...], files: Mapping[str, LibraryFile]):
        self._by_identity: dict[tuple[int, int], list[str]] = {}
        self._by_basename: dict[str, list[tuple[str, LibraryFile | None]]] = {}
        self._globs: list[tuple[str, str]] = []
        for spec in specs:
            if spec.glob is not None:
                self._globs.append((spec.name, spec.glob))
                continue
            found = files.get(spec.name)
            resolved = found.resolved if found else spec.path or ""
            if found is not None and found.dev is not None and found.inode is not None:
                self._by_identity.setdefault((found.dev, found.inode), []).append(spec.name)
            self._by_basename.setdefault(os.path.basename(resolved), []).append(
                (spec.name, found if found is not None and found.present else None))
        self.maps_patterns = self._maps_patterns()

    def _maps_patterns(self) -> tuple[re.Pattern[bytes], ...]:
        """Searches that find every maps line `libraries_of` or the GPU-device check could
        care about (and a few more, which the parse then drops): the path's last component
        is a configured basename or fits a glob or is a model blob, or the line's
        ``dev inode`` is a `path:` library's, or the path starts with the NVIDIA device
        prefix."""
        names = [re.escape(name).encode("utf-8", "surrogateescape")
                 for name in self._by_basename]
        names += [_glob_superset(pattern) for _name, pattern in self._globs]
        ending = b"|(?:" + b"|".join(names) + rb")(?: \(deleted\))?$" if names else b""
        device = re.escape(GPU_DEVICE_PREFIX[1:]).encode()
        blob = b"|" + MODEL_BLOB_ENDING
        patterns = [re.compile(b"/(?:" + device + ending + blob + b")", re.MULTILINE)]
        inodes: dict[int, list[bytes]] = {}
        for dev, inode in self._by_identity:
            inodes.setdefault(dev, []).append(str(inode).encode())
        for dev, numbers in sorted(inodes.items()):
            # The kernel prints the device as %02x:%02x (major, minor) and the inode in decimal.
            prefix = f" {os.major(dev):02x}:{os.minor(dev):02x} ".encode()
            patterns.append(re.compile(re.escape(prefix) + b"(?:" + b"|".join(numbers) + b") "))
        return tuple(patterns)

    def libraries_of(self, mapped: MappedFile) -> list[tuple[str, bool]]:
        """(library, matched by file identity) for every library `mapped` is."""
        found: dict[str, bool] = {}
        for name in self._by_identity.get((mapped.dev, mapped.inode), ()):
            found[name] = True
        for name, library_file in self._by_basename.get(mapped.basename, ()):
            if library_file is None or _may_be(mapped, library_file):
                found.setdefault(name, False)
        for name, pattern in self._globs:
            if fnmatch.fnmatchcase(mapped.basename, pattern):
                found.setdefault(name, False)
        return list(found.items())


def _may_be(mapped: MappedFile, library_file: LibraryFile) -> bool:
    """Whether a mapping with a `path:` library's basename but not its identity may be it."""
    return mapped.path == library_file.resolved or mapped.dev != library_file.dev


def library_mappings(procfs: ProcFS, pid: int, maps: tuple[MappedFile, ...],
                     matcher: LibraryMatcher) -> ProcessLibraries:
    """Match one process's maps against the configured libraries and check staleness."""
    mappings = []
    gpu_device = False
    blobs: set[str] = set()
    for mapped in maps:
        if mapped.path.startswith(GPU_DEVICE_PREFIX):
            gpu_device = True
        digest = blob_digest_from_model_arg(mapped.path)
        if digest is not None:
            blobs.add(digest)
        for library, by_identity in matcher.libraries_of(mapped):
            stale = mapped.deleted or (not by_identity and _replaced(procfs, pid, mapped))
            mappings.append(LibraryMapping(library, mapped.path, mapped.deleted, stale))
    return ProcessLibraries(readable=True, mappings=tuple(mappings), gpu_device=gpu_device,
                            model_blobs=tuple(sorted(blobs)))


def _replaced(procfs: ProcFS, pid: int, mapped: MappedFile) -> bool:
    """Whether the name `mapped` was loaded from now holds another file, in the process's view.

    Looked up through ``/proc/PID/root`` because the path is in the process's mount namespace.
    An inode that differs on the same device means replaced; when the device differs too, the
    device numbers are unreliable (overlayfs, btrfs) and only the kernel's "(deleted)" counts.
    """
    root = procfs.path(pid, "root")
    try:
        st = os.stat(root + mapped.path)
    except FileNotFoundError:
        return os.path.exists(root)  # the name is gone, unless the process itself is
    except OSError:
        return False  # unreadable: not evidence of anything
    return st.st_ino != mapped.inode and st.st_dev == mapped.dev


def read_process_libraries(procfs: ProcFS, pid: int,
                           matcher: LibraryMatcher) -> tuple[ProcessLibraries, ProcessMaps]:
    """Read and match `pid`'s maps; permission problems are "unreadable", never "not loaded".

    Only the lines the matcher's patterns select are parsed; the whole maps is returned
    as read, parsed later if ever needed."""
    try:
        data = procfs.read(pid, "maps")
    except OSError as err:
        return ProcessLibraries(readable=False, error=_describe(err)), ProcessMaps()
    maps = parse_maps(select_lines(data, matcher.maps_patterns))
    return library_mappings(procfs, pid, maps, matcher), ProcessMaps(data, maps)


def _glob_superset(pattern: str) -> bytes:
    """A regex for the basenames `pattern` fits, and perhaps more: every wildcard (``*``,
    ``?``, ``[...]``) becomes "anything on this line"; `fnmatchcase` decides afterwards."""
    parts = re.split(r"(\*|\?|\[!?\]?[^\]]*\]?)", pattern)
    regex = "".join("[^\n]*" if index % 2 else re.escape(part)
                    for index, part in enumerate(parts))
    return regex.encode("utf-8", "surrogateescape")


def _describe(err: OSError) -> str:
    return err.strerror or str(err)
