"""The test oracle for ELF facts: binutils' ``readelf -d``/``readelf -n`` output, parsed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

READELF = shutil.which("readelf")

_DYN = re.compile(r"^\s*0x[0-9a-f]+ \((\w+)\)\s+(.*)$")
_BRACKETED = re.compile(r"\[(.*)\]$")


@dataclass(frozen=True)
class ReadelfFacts:
    needed: tuple[str, ...]
    soname: str | None
    rpath: str | None
    runpath: str | None
    nodeflib: bool
    build_id: str | None
    interpreter: str | None


def readelf_facts(path: str | os.PathLike[str]) -> ReadelfFacts:
    assert READELF is not None
    env = {**os.environ, "LC_ALL": "C"}
    dyn = subprocess.run(
        [READELF, "-dW", os.fspath(path)], env=env, capture_output=True, text=True, check=True
    ).stdout
    notes = subprocess.run(
        [READELF, "-nW", os.fspath(path)], env=env, capture_output=True, text=True, check=True
    ).stdout
    needed: list[str] = []
    last: dict[str, str] = {}
    nodeflib = False
    for line in dyn.splitlines():
        m = _DYN.match(line)
        if not m:
            continue
        tag, rest = m.groups()
        if tag == "FLAGS_1":
            nodeflib = "NODEFLIB" in rest.split()
            continue
        value = _BRACKETED.search(rest)
        if value is None:
            continue
        if tag == "NEEDED":
            needed.append(value.group(1))
        elif tag in ("SONAME", "RPATH", "RUNPATH"):
            last[tag] = value.group(1)
    build = re.search(r"Build ID: ([0-9a-f]+)", notes)
    headers = subprocess.run(
        [READELF, "-lW", os.fspath(path)], env=env, capture_output=True, text=True, check=True
    ).stdout
    interp = re.search(r"\[Requesting program interpreter: (.*)\]", headers)
    return ReadelfFacts(
        needed=tuple(needed),
        soname=last.get("SONAME"),
        rpath=last.get("RPATH"),
        runpath=last.get("RUNPATH"),
        nodeflib=nodeflib,
        build_id=build.group(1) if build else None,
        interpreter=interp.group(1) if interp else None,
    )
