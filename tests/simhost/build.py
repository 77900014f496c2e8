"""Compile the simulator's native parts (launcher, simlib variants) once into a cache dir.

The cache lives under ``<repo>/build/simhost/<key>``; the key hashes the C sources, the
interpreter and the variant list, so an edit or another Python rebuilds, and concurrent test
sessions (several worktrees, xdist workers) share one build under a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ENTRY_MODULE = "tests.simhost.entry"


@dataclass(frozen=True)
class LibSpec:
    """One build of simlib.c: its SONAME, DT_NEEDED entries and RUNPATH."""

    soname: str
    needed: tuple[str, ...] = ()
    runpath: str | None = None

    @property
    def artifact(self) -> str:
        """File name of this build in the cache (distinct per NEEDED/RUNPATH variant)."""
        if not self.needed and self.runpath is None:
            return self.soname
        tag = hashlib.sha256(repr((self.needed, self.runpath)).encode()).hexdigest()[:8]
        return f"{self.soname}@{tag}"


@dataclass(frozen=True)
class Toolchain:
    """The compiled parts: the launcher binary and a directory of simlib builds."""

    dir: Path

    @property
    def launcher(self) -> Path:
        return self.dir / "launcher"

    def library(self, spec: LibSpec) -> Path:
        path = self.dir / "libs" / spec.artifact
        if not path.exists():
            raise FileNotFoundError(f"simlib variant {spec} was not built (add it to build())")
        return path


def _python_flags() -> tuple[list[str], list[str], dict[str, str]]:
    # In a virtual environment the stdlib and lib-dynload are the base interpreter's.
    paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    include = [f"-I{paths['include']}", f"-I{paths['platinclude']}"]
    libdir = sysconfig.get_config_var("LIBDIR")
    ver = sysconfig.get_config_var("LDVERSION") or sysconfig.get_config_var("VERSION")
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        link = [f"-L{libdir}", f"-lpython{ver}", f"-Wl,-rpath,{libdir}"]
    else:
        libpl = sysconfig.get_config_var("LIBPL")
        link = [f"-L{libpl}", f"-lpython{ver}", "-Xlinker", "-export-dynamic"]
    link += (sysconfig.get_config_var("LIBS") or "").split()
    link += (sysconfig.get_config_var("SYSLIBS") or "").split()
    lib_dynload = Path(paths["platstdlib"]) / "lib-dynload"
    defines = {
        # The base interpreter, not a virtual environment's: the stdlib lives there.
        "SIMHOST_PYTHON_EXECUTABLE": getattr(sys, "_base_executable", sys.executable),
        "SIMHOST_PYTHON_HOME": sys.base_prefix,
        "SIMHOST_SEARCH_PATH": ":".join([str(REPO), paths["stdlib"], str(lib_dynload)]),
        "SIMHOST_MODULE": ENTRY_MODULE,
    }
    return include, link, defines


def _cc(args: list[str]) -> None:
    proc = subprocess.run(["gcc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"gcc {' '.join(args)} failed:\n{proc.stderr}")


def _build_launcher(out: Path) -> None:
    include, link, defines = _python_flags()
    defs = [f'-D{k}="{v}"' for k, v in defines.items()]
    _cc(["-O2", "-Wall", *include, *defs, "-o", str(out), str(HERE / "launcher.c"), *link])


def _build_lib(spec: LibSpec, libs: Path, stubs: Path) -> None:
    args = ["-shared", "-fPIC", "-O1", "-Wall", "-fno-omit-frame-pointer",
            f"-Wl,-soname,{spec.soname}", "-o", str(libs / spec.artifact),
            str(HERE / "simlib.c")]
    if spec.needed:
        # The loader needs a file per DT_NEEDED name at link time only; any simlib will do.
        for name in spec.needed:
            stub = stubs / name
            if not stub.exists():
                _cc(["-shared", "-fPIC", f"-Wl,-soname,{name}", "-o", str(stub),
                     str(HERE / "simlib.c")])
        args += [f"-L{stubs}", "-Wl,--no-as-needed", *(f"-l:{n}" for n in spec.needed)]
    if spec.runpath is not None:
        args += [f"-Wl,-rpath,{spec.runpath}", "-Wl,--enable-new-dtags"]
    _cc([*args, "-ldl"])


def _key(specs: list[LibSpec]) -> str:
    h = hashlib.sha256()
    for src in ("launcher.c", "simlib.c", "build.py"):
        h.update((HERE / src).read_bytes())
    h.update(repr((sys.executable, sys.version, str(REPO), sorted(map(repr, specs)))).encode())
    return h.hexdigest()[:16]


def build(specs: list[LibSpec]) -> Toolchain:
    """Build the launcher and every simlib variant in `specs` (cached); return where they are."""
    specs = sorted(set(specs), key=repr)
    root = REPO / "build" / "simhost"
    root.mkdir(parents=True, exist_ok=True)
    final = root / _key(specs)
    if (final / ".done").exists():
        return Toolchain(final)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".done").exists():
            return Toolchain(final)
        work = root / f".tmp-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "libs").mkdir(parents=True)
        (work / "stubs").mkdir()
        _build_launcher(work / "launcher")
        for spec in specs:
            _build_lib(spec, work / "libs", work / "stubs")
        (work / ".done").write_text("ok\n")
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
    return Toolchain(final)
