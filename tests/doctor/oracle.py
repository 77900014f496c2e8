"""The test oracle for the resolver: the real glibc loader, run in a throwaway process.

`loader_host` is a tiny C program: it lists its link map (``dl_iterate_phdr`` gives each
object's ``l_name``, the path it was loaded through, in load order), ``dlopen``s its argument,
lists the link map again and prints the files mapped (``/proc/self/maps``). Running it executes
the test's own freshly built objects, which is fine for a test; the product never does this.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

HOST_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <string.h>
static int show(struct dl_phdr_info *info, size_t size, void *tag) {
    if (info->dlpi_name[0]) printf("%s %s\n", (const char *)tag, info->dlpi_name);
    return 0;
}
int main(int argc, char **argv) {
    dl_iterate_phdr(show, "before");
    void *handle = dlopen(argv[1], RTLD_LAZY);
    if (!handle) { printf("error %s\n", dlerror()); return 3; }
    dl_iterate_phdr(show, "after");
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[4096];
    while (fgets(line, sizeof line, maps)) {
        char *path = strchr(line, '/');
        if (path) printf("map %s", path);
    }
    return 0;
}
"""


@dataclass(frozen=True)
class LoaderRun:
    error: str | None
    before: tuple[str, ...]  # l_names before the dlopen (the host, its libs, preloads)
    added: tuple[str, ...]  # l_names the dlopen added, in load order
    mapped: frozenset[str]  # real files mapped after the dlopen
    debug: str  # LD_DEBUG=libs output


def build_host(workdir: Path) -> Path:
    src = workdir / "loader_host.c"
    src.write_text(HOST_SOURCE)
    exe = workdir / "loader_host"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True)
    return exe


def run_loader(
    host: Path,
    target: str,
    *,
    cwd: Path | str,
    ld_library_path: str | None = None,
    ld_preload: str | None = None,
) -> LoaderRun:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LD_DEBUG": "libs", "LC_ALL": "C"}
    if ld_library_path is not None:
        env["LD_LIBRARY_PATH"] = ld_library_path
    if ld_preload is not None:
        env["LD_PRELOAD"] = ld_preload
    proc = subprocess.run([str(host), target], cwd=cwd, env=env, capture_output=True, text=True)
    before, added, mapped, error = [], [], set(), None
    for line in proc.stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if rest.startswith("linux-vdso.so") or rest.startswith("linux-gate.so"):
            continue  # the kernel's vDSO is no file
        if tag == "before":
            before.append(_absolute(rest, cwd))
        elif tag == "after":
            name = _absolute(rest, cwd)
            if name not in before:
                added.append(name)
        elif tag == "map":
            mapped.add(rest.removesuffix(" (deleted)"))
        elif tag == "error":
            error = rest
    return LoaderRun(error, tuple(before), tuple(added), frozenset(mapped), proc.stderr)


def _absolute(name: str, cwd: Path | str) -> str:
    return name if name.startswith("/") else os.path.join(str(cwd), name)


def supported_hwcaps(debug: str) -> tuple[str, ...]:
    """The glibc-hwcaps subdirectories ld.so searched (best first), from LD_DEBUG=libs."""
    for line in debug.splitlines():
        if "search path=" in line:
            found = re.findall(r"/glibc-hwcaps/([^/:]+)(?=[:\s]|$)", line)
            return tuple(dict.fromkeys(found))
    return ()


def system_search_path(debug: str) -> tuple[str, ...]:
    """The default dirs of the last search that fell through to them ("system search path")."""
    dirs: tuple[str, ...] = ()
    for line in debug.splitlines():
        m = re.search(r"search path=(\S+)\s+\(system search path\)", line)
        if m:
            plain = [
                d
                for d in m.group(1).split(":")
                if not re.search(r"/(glibc-hwcaps|tls|x86_64|haswell|avx512_1)(/|$)", d)
            ]
            dirs = tuple(dict.fromkeys(plain))
    return dirs
