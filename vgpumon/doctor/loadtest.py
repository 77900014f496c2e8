"""The load test: ``dlopen`` the CUDA backend in a fresh child, as a runner would.

The child is this Python (``sys.executable -I -S -c <fixed script> <library>``) with only the
variables that decide what the loader does (`RELEVANT`, taken from the server or runner), so
``LD_PRELOAD`` shims are preloaded into it like into a runner. It reads its own
``/proc/self/maps`` before and after the ``dlopen`` and prints them; it leaves with
``os._exit`` so no library destructor runs. It runs nothing else: but the ``dlopen`` does run
the constructors of the library, of everything it needs and of the preloaded shims. That is
the point of the test, and why ``--no-load-test`` exists.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace

from vgpumon.procfs import MappedFile, parse_maps

TIMEOUT = 20.0
MAX_OUTPUT = 8 << 20

CHILD = r"""
import ctypes, json, os, sys
def maps():
    with open("/proc/self/maps") as handle:
        return handle.read()
result = {"before": maps()}
try:
    ctypes.CDLL(sys.argv[1], mode=os.RTLD_NOW | os.RTLD_LOCAL)
    result["ok"] = True
except OSError as err:
    result["ok"] = False
    result["error"] = str(err)
result["after"] = maps()
sys.stdout.write(json.dumps(result))
sys.stdout.flush()
os._exit(0)
"""


@dataclass(frozen=True)
class LoadTestResult:
    library: str
    environ: Mapping[str, str]
    environ_from: str  # whose variables the child got
    environ_known: bool = True  # False: the server's variables were assumed, not read
    ok: bool = False
    error: str | None = None  # dlerror(), or why the child did not report
    loader_messages: tuple[str, ...] = ()  # ld.so's own lines on stderr (failed preloads)
    before: tuple[MappedFile, ...] = ()
    after: tuple[MappedFile, ...] = ()
    skipped: str | None = None

    @property
    def loaded(self) -> tuple[MappedFile, ...]:
        """Files the dlopen mapped (not mapped at start-up)."""
        known = {(m.dev, m.inode, m.path) for m in self.before}
        return tuple(m for m in self.after if (m.dev, m.inode, m.path) not in known)


def run_load_test(library: str, environ: Mapping[str, str], environ_from: str,
                  timeout: float = TIMEOUT, python: str | None = None,
                  environ_known: bool = True) -> LoadTestResult:
    python = python or sys.executable
    base = LoadTestResult(library, dict(environ), environ_from, environ_known)
    if not python:
        return _with(base, skipped="no Python interpreter to run the child with")
    try:
        done = subprocess.run([python, "-I", "-S", "-c", CHILD, library], env=dict(environ),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              cwd="/", check=False)
    except subprocess.TimeoutExpired:
        return _with(base, error=f"the child did not finish within {timeout:g}s "
                                 "(a library constructor hangs?)")
    except OSError as err:
        return _with(base, skipped=f"cannot start {python}: {err.strerror or err}")
    stderr = done.stderr[:MAX_OUTPUT].decode("utf-8", "replace")
    messages = tuple(line for line in stderr.splitlines() if "ld.so" in line)
    try:
        result = json.loads(done.stdout[:MAX_OUTPUT])
    except ValueError:
        why = _died(done.returncode, stderr)
        return _with(base, error=why, loader_messages=messages)
    return LoadTestResult(
        library, dict(environ), environ_from, environ_known,
        ok=bool(result.get("ok")),
        error=result.get("error"),
        loader_messages=messages,
        before=parse_maps(str(result.get("before", "")).encode("utf-8", "surrogateescape")),
        after=parse_maps(str(result.get("after", "")).encode("utf-8", "surrogateescape")),
    )


def _died(returncode: int, stderr: str) -> str:
    how = (f"was killed by signal {-returncode}" if returncode < 0
           else f"exited with status {returncode}")
    tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
    return f"the child {how} without a report" + (f": {tail[0]}" if tail else "")


def _with(base: LoadTestResult, **changes: object) -> LoadTestResult:
    return replace(base, **changes)  # type: ignore[arg-type]
