"""A fixture /proc tree, for what the kernel will not produce on demand (odd paths, PID reuse,
zombies, unreadable files). Real-process tests cover the rest."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

BOOT_TIME = 1_700_000_000


class FakeProc:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "stat").write_text(f"cpu  1 2 3 4\nbtime {BOOT_TIME}\nprocesses 42\n")

    def add(self, pid: int, comm: str, argv: list[str], *, ppid: int = 1,
            start_ticks: int = 100, state: str = "S", maps: str = "",
            root: str | None = None) -> Path:
        directory = self.root / str(pid)
        directory.mkdir(exist_ok=True)
        self.set_stat(pid, comm, ppid=ppid, start_ticks=start_ticks, state=state)
        self.set_cmdline(pid, argv)
        (directory / "maps").write_text(maps)
        if root is not None:
            link = directory / "root"
            if link.is_symlink():
                link.unlink()
            os.symlink(root, link)
        return directory

    def set_stat(self, pid: int, comm: str, *, ppid: int = 1, start_ticks: int = 100,
                 state: str = "S") -> None:
        fields = f"{ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start_ticks}"
        (self.root / str(pid) / "stat").write_text(f"{pid} ({comm}) {state} {fields} 1000 100\n")

    def set_cmdline(self, pid: int, argv: list[str]) -> None:
        data = "".join(arg + "\0" for arg in argv)
        (self.root / str(pid) / "cmdline").write_bytes(data.encode())

    def set_maps(self, pid: int, maps: str) -> None:
        (self.root / str(pid) / "maps").write_text(maps)

    def make_unreadable(self, pid: int, name: str = "maps") -> None:
        """Reading a directory fails even for root (EISDIR), like EACCES does for others."""
        path = self.root / str(pid) / name
        path.unlink()
        path.mkdir()

    def remove(self, pid: int) -> None:
        shutil.rmtree(self.root / str(pid))

    def start_time(self, start_ticks: int) -> float:
        return BOOT_TIME + start_ticks / os.sysconf("SC_CLK_TCK")


def maps_line(path: str, dev: tuple[int, int], inode: int, start: int = 0x7F0000000000,
              size: int = 0x1000, deleted: bool = False) -> str:
    suffix = " (deleted)" if deleted else ""
    return (f"{start:x}-{start + size:x} r-xp 00000000 {dev[0]:02x}:{dev[1]:02x} {inode}"
            f"                 {path}{suffix}\n")


def maps_line_for(path: str, start: int = 0x7F0000000000, deleted: bool = False) -> str:
    st = os.stat(path)
    return maps_line(path, (os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino, start,
                     deleted=deleted)
