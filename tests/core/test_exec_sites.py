"""Every place vgpumon starts a program, loads a shared object or imports code by name.

vgpumon reads what other processes name (their executables, environments, library paths) and
often runs as root. None of that may reach a call that executes or loads something, except the
doctor's load test, which does it with the examined process's own credentials. This test walks
the syntax tree of every module and compares the call sites it finds with the reviewed list
below: a new site fails it until someone has checked where its arguments come from and added
it here with the reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "vgpumon"

# Calls that run a program, load a shared object or import/evaluate code by name.
EXECUTING = frozenset({
    "subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
    "subprocess.check_output", "subprocess.getoutput", "subprocess.getstatusoutput",
    "os.system", "os.popen", "os.execv", "os.execve", "os.execl", "os.execle", "os.execlp",
    "os.execlpe", "os.execvp", "os.execvpe", "os.spawnv", "os.spawnve", "os.spawnl",
    "os.spawnle", "os.spawnlp", "os.spawnlpe", "os.spawnvp", "os.spawnvpe", "os.posix_spawn",
    "os.posix_spawnp", "pty.spawn", "ctypes.CDLL", "ctypes.PyDLL", "ctypes.LibraryLoader",
    "ctypes.cdll.LoadLibrary", "ctypes.pydll.LoadLibrary", "ctypes.util.find_library",
    "importlib.import_module", "importlib.__import__", "runpy.run_path", "runpy.run_module",
    "builtins.exec", "builtins.eval", "builtins.compile", "builtins.__import__",
    "multiprocessing.Process", "asyncio.create_subprocess_exec",
    "asyncio.create_subprocess_shell",
})

# (module, enclosing function, call) -> where its arguments come from.
REVIEWED = {
    ("vgpumon/doctor/loadtest.py", "_start", "subprocess.Popen"):
        "the load test: this Python with a fixed script; the child takes the examined "
        "process's uid, gid and groups and sets no_new_privs before anything is loaded",
    ("vgpumon/doctor/systemd.py", "unit_status", "subprocess.run"):
        "systemctl as named by the operator (doctor options); the unit name, from the "
        "server's cgroup, is an argument after '--', never an option or a program",
    ("vgpumon/sources/ollama_log.py", "JournalFollower.ensure_running", "subprocess.Popen"):
        "journalctl as named in vgpumon's own config, fixed arguments",
    ("vgpumon/sources/ollama_log.py", "JournalFollower.catch_up", "subprocess.run"):
        "journalctl as named in vgpumon's own config, fixed arguments",
    ("vgpumon/linux/loader/ldso.py", "_run_diagnostics", "subprocess.run"):
        "the system's own dynamic loader, from a fixed path per ELF machine (SYSTEM_LOADERS, "
        "its PT_INTERP), only a root-owned file nobody else may write, with the one fixed "
        "argument --list-diagnostics and an empty environment: $PLATFORM and $LIB as the "
        "loader expands them; once per process, by the doctor, and by the daemon in "
        "Daemon.start (ldso.ask_ahead) before its loop runs, for the expectations "
        "(vgpumon/sources/landing.py); the child inherits the daemon's ambient capabilities",
    ("vgpumon/linux/fscreds.py", "acting_as", "ctypes.CDLL"):
        "the C library itself (CDLL(None)), for setfsuid and setfsgid",
    ("vgpumon/linux/datagrams.py", "DatagramBatch.__init__", "ctypes.CDLL"):
        "the C library itself (CDLL(None)), for recvmmsg",
    ("vgpumon/http/passwords.py", "_load_library", "ctypes.util.find_library"):
        "the host's libcrypt, by a fixed name",
    ("vgpumon/http/passwords.py", "_load_library", "ctypes.CDLL"):
        "the host's libcrypt, by fixed names or what find_library('crypt') returns",
}


def executing_calls(source: str) -> Iterator[tuple[str, str]]:
    """(enclosing function, dotted call) of each executing call in `source`, with import
    aliases (``import subprocess as sp``, ``from os import execv``) resolved."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {name: f"builtins.{name}"
                               for name in ("exec", "eval", "compile", "__import__")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    yield from _visit(tree, "<module>", aliases)


def _visit(node: ast.AST, where: str, aliases: dict[str, str]) -> Iterator[tuple[str, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            inner = child.name if where == "<module>" else f"{where}.{child.name}"
            yield from _visit(child, inner, aliases)
            continue
        if isinstance(child, ast.Call):
            name = _dotted(child.func, aliases)
            if name in EXECUTING:
                yield where, name
        yield from _visit(child, where, aliases)


def _dotted(func: ast.expr, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id not in aliases:
        return None
    return ".".join([aliases[func.id], *reversed(parts)])


def test_the_walker_sees_aliases_and_nested_functions():
    source = ("import subprocess as sp\nfrom os import execve\nimport ctypes.util\n"
              "from ctypes import CDLL as Load\n"
              "class A:\n    def go(self):\n        sp.run(['x'])\n"
              "def f():\n    def g():\n        execve('x', [], {})\n"
              "    ctypes.util.find_library('m')\n    Load(None)\n    eval('1')\n"
              "    sp.TimeoutExpired\n")
    assert sorted(executing_calls(source)) == [
        ("A.go", "subprocess.run"), ("f", "builtins.eval"), ("f", "ctypes.CDLL"),
        ("f", "ctypes.util.find_library"), ("f.g", "os.execve")]


def test_every_executing_call_site_is_reviewed():
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE.parent).as_posix()
        for where, call in executing_calls(path.read_text()):
            found.add((module, where, call))
    unreviewed = found - REVIEWED.keys()
    assert not unreviewed, ("calls that execute or load something, not yet reviewed: check "
                            "that nothing another process names reaches them, then add them "
                            f"to REVIEWED: {sorted(unreviewed)}")
    gone = REVIEWED.keys() - found
    assert not gone, f"reviewed sites that no longer exist (remove them): {sorted(gone)}"
