"""The load test: ``dlopen`` the CUDA backend in a fresh child, as a runner would, with the
rights of the process it models and no more.

The ``dlopen`` runs code that the examined process names: the library's constructors, those of
everything it needs and those of the shims in its ``LD_PRELOAD``. Those files may be writable
by the user Ollama runs as, or the "server" may be anyone's look-alike, while the doctor runs
as root. So the child takes the examined process's credentials (effective uid and gid,
supplementary groups: `Credentials`) before it loads anything: whatever that code does, it does
with rights its own user already has. When they cannot be taken, the test is skipped and says
why; it never runs with the doctor's rights instead.

The child is one process in two stages, each ``python -I -S -c <fixed script>``:

1. *drop*: started with the target's uid, gid and groups (subprocess sets them between
   ``fork`` and ``exec``), a clean environment and nothing preloaded. It checks that its real,
   effective and saved ids and its groups are the target's and nothing else, sets
   ``PR_SET_NO_NEW_PRIVS`` (no set-uid program it may exec gains rights), and execs stage 2;
2. *load*: with only the variables that decide what the loader does (`RELEVANT`, taken from
   the runner or the server), so ``LD_PRELOAD`` shims are preloaded into it as into a runner.
   It reads its own ``/proc/self/maps`` before and after the ``dlopen`` and prints them; it
   leaves with ``os._exit`` so no library destructor runs.

The interpreter is this Python when the target may execute it, else the system's
``/usr/bin/python3`` (a Python in a venv under ``/root`` is closed to other users).
``--no-load-test`` skips the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vgpumon.linux.procfs import Credentials, MappedFile, parse_maps

TIMEOUT = 20.0
MAX_OUTPUT = 8 << 20
SYSTEM_PYTHON = "/usr/bin/python3"
ENVIRON_VARIABLE = "VGPUMON_LOAD_TEST_ENVIRON"  # stage 2's variables, handed to stage 1

LOAD = r"""
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

DROP = r"""
import ctypes, json, os, sys
load, library, uid, gid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
groups = sorted({int(g) for g in sys.argv[5].split(",") if g})
def refuse(why):
    sys.stdout.write(json.dumps({"refused": why}))
    sys.stdout.flush()
    os._exit(0)
have = (os.getresuid(), os.getresgid(), sorted(set(os.getgroups())))
if have != ((uid, uid, uid), (gid, gid, gid), groups):
    refuse("the child has uids %s, gids %s, groups %s, not the examined process's" % have)
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    refuse("prctl(PR_SET_NO_NEW_PRIVS): " + os.strerror(ctypes.get_errno()))
environ = json.loads(os.environ["VGPUMON_LOAD_TEST_ENVIRON"])
os.execve(sys.executable, [sys.executable, "-I", "-S", "-c", load, library], environ)
"""


@dataclass(frozen=True)
class LoadTestResult:
    library: str
    environ: Mapping[str, str]
    environ_from: str  # whose variables the child got
    environ_known: bool = True  # False: the server's variables were assumed, not read
    credentials: Credentials | None = None  # whose rights the child had
    credentials_from: str = ""  # the process they were taken from
    python: str | None = None  # the interpreter the child ran
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


def interpreters() -> tuple[str, ...]:
    """Pythons to run the child with, in order: this one, then the system's."""
    found = [sys.executable] if sys.executable else []
    if SYSTEM_PYTHON not in found and os.path.exists(SYSTEM_PYTHON):
        found.append(SYSTEM_PYTHON)
    return tuple(found)


def run_load_test(library: str, environ: Mapping[str, str], environ_from: str,
                  credentials: Credentials | None, credentials_from: str, *,
                  timeout: float = TIMEOUT, pythons: Sequence[str] | None = None,
                  environ_known: bool = True) -> LoadTestResult:
    """``dlopen(library)`` in a child with `environ` and the rights of `credentials` (those of
    the process named by `credentials_from`); skipped, never run otherwise."""
    base = LoadTestResult(library, dict(environ), environ_from, environ_known, credentials,
                          credentials_from)
    if credentials is None:
        return replace(base, skipped=f"the credentials of {credentials_from} could not be "
                                     "read: the test runs only with that process's rights")
    candidates = tuple(pythons) if pythons is not None else interpreters()
    if not candidates:
        return replace(base, skipped="no Python interpreter to run the child with")
    who = describe_credentials(credentials)
    tried = []
    for python in candidates:
        try:
            process = _start(python, library, environ, credentials)
        except OSError as err:
            if err.filename == python:  # the exec failed: try the next interpreter
                tried.append(f"{python}: {err.strerror or err}")
                continue
            return replace(base, skipped=f"cannot take the credentials of {credentials_from} "
                                         f"({who}): {err.strerror or err}; the test never runs "
                                         "with the doctor's own rights")
        return _finish(replace(base, python=python), process, timeout)
    return replace(base, skipped=f"no Python interpreter that {who} may run: "
                                 + "; ".join(tried))


def _start(python: str, library: str, environ: Mapping[str, str],
           credentials: Credentials) -> subprocess.Popen[bytes]:
    groups = ",".join(str(group) for group in credentials.groups)
    return subprocess.Popen(
        [python, "-I", "-S", "-c", DROP, LOAD, library, str(credentials.uid),
         str(credentials.gid), groups],
        env={ENVIRON_VARIABLE: json.dumps(dict(environ))}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", start_new_session=True,
        **_credential_arguments(credentials))


def _credential_arguments(credentials: Credentials) -> dict[str, Any]:
    """What subprocess needs to switch to `credentials`: nothing when this process already has
    exactly them (so a doctor run as the server's own user needs no privilege)."""
    uid, gid = credentials.uid, credentials.gid
    if (os.getresuid() == (uid, uid, uid) and os.getresgid() == (gid, gid, gid)
            and sorted(set(os.getgroups())) == sorted(set(credentials.groups))):
        return {}
    return {"user": uid, "group": gid, "extra_groups": list(credentials.groups)}


def _finish(base: LoadTestResult, process: subprocess.Popen[bytes],
            timeout: float) -> LoadTestResult:
    try:
        stdout, stderr_bytes = _bounded_output(process, timeout)
    finally:
        _kill_group(process)
    if stdout is None:
        return replace(base, error=f"the child did not finish within {timeout:g}s "
                                   "(a library constructor hangs?)")
    stderr = stderr_bytes.decode("utf-8", "replace")
    messages = tuple(line for line in stderr.splitlines() if "ld.so" in line)
    try:
        result = json.loads(stdout)
    except ValueError:
        return replace(base, error=_died(process.returncode, stderr), loader_messages=messages)
    if not isinstance(result, dict):
        return replace(base, error="the child printed no report")
    if "refused" in result:
        return replace(base, skipped=f"the child refused to load: {result['refused']}")
    return replace(
        base,
        ok=bool(result.get("ok")),
        error=str(result["error"]) if result.get("error") is not None else None,
        loader_messages=messages,
        before=parse_maps(str(result.get("before", "")).encode("utf-8", "surrogateescape")),
        after=parse_maps(str(result.get("after", "")).encode("utf-8", "surrogateescape")),
    )


def _bounded_output(process: subprocess.Popen[bytes],
                    timeout: float) -> tuple[bytes | None, bytes]:
    """The child's stdout and stderr, each cut at `MAX_OUTPUT` (the rest is read and dropped,
    so a chatty constructor neither blocks nor fills memory); stdout None on timeout. Reading
    stops at end of file, or once the child has exited and nothing more comes (a process it
    started may hold the pipes open)."""
    streams = {process.stdout: bytearray(), process.stderr: bytearray()}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for stream, buffer in streams.items():
            if stream is not None:
                selector.register(stream, selectors.EVENT_READ, buffer)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return None, bytes(streams[process.stderr])
            exited = process.poll() is not None
            ready = selector.select(min(left, 0.1))
            if exited and not ready:
                break
            for key, _ in ready:
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                kept: bytearray = key.data
                kept += chunk[:max(0, MAX_OUTPUT - len(kept))]
    try:
        process.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None, bytes(streams[process.stderr])
    return bytes(streams[process.stdout]), bytes(streams[process.stderr])


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """End the child and whatever a constructor started beside it (its own session), then
    reap it; the group id stays the child's until it is reaped."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def describe_credentials(credentials: Credentials) -> str:
    groups = ",".join(str(group) for group in credentials.groups) or "none"
    return f"uid {credentials.uid} gid {credentials.gid} groups {groups}"


def _died(returncode: int, stderr: str) -> str:
    how = (f"was killed by signal {-returncode}" if returncode < 0
           else f"exited with status {returncode}")
    tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
    return f"the child {how} without a report" + (f": {tail[0]}" if tail else "")
