"""Fixtures for the doctor's ELF and loader tests: gcc-built shared objects in a tmp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

GCC = shutil.which("gcc")


class Builder:
    """Builds tiny shared objects with the real toolchain."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._src = workdir / "src"
        self._src.mkdir(exist_ok=True)

    def so(
        self,
        out: str | os.PathLike[str],
        *flags: str,
        source: str = "int f(void){return 1;}",
        m32: bool = False,
    ) -> Path:
        """Compile `source` into shared object `out` (relative to the workdir) with `flags`."""
        target = self.workdir / out
        target.parent.mkdir(parents=True, exist_ok=True)
        src = self._src / f"s{abs(hash(source))}.c"
        src.write_text(source)
        cmd = [GCC, "-shared", "-fPIC", "-Wl,--no-as-needed", "-o", str(target), str(src), *flags]
        if m32:
            cmd[1:1] = ["-m32", "-nostdlib"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return target

    def exe(self, out: str, source: str, *flags: str) -> Path:
        target = self.workdir / out
        src = self._src / f"{Path(out).name}.c"
        src.write_text(source)
        subprocess.run(
            [GCC, "-o", str(target), str(src), *flags], check=True, capture_output=True, text=True
        )
        return target


@pytest.fixture
def build(tmp_path: Path) -> Builder:
    if GCC is None:
        pytest.skip("gcc not installed")
    return Builder(tmp_path)
