"""The Ollama log file rotated by rename, truncated in place (logrotate's copytruncate),
deleted and re-created: every line written after each is still parsed, none twice."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.faults.workload import runner_config
from tests.harness import wait_for

NOISE = ('[GIN] 2025/06/10 - 08:15:02 | 200 |      41.2µs |       127.0.0.1 | GET      '
         '"/api/version"\n')


def version_line(version: str) -> str:
    return (f'time=2025-06-10T08:15:02.114Z level=INFO source=routes.go:1 '
            f'msg="Listening on 127.0.0.1:11434 (version {version})"\n')


def append(path, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text)


def rotate(log, how: str) -> None:
    if how == "rename":  # logrotate's default: rename, then the writer opens a new file
        os.rename(log, f"{log}.1")
        log.touch()
    elif how == "copytruncate":
        shutil.copy(log, f"{log}.1")
        os.truncate(log, 0)
    elif how == "delete":
        log.unlink()
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["rename", "copytruncate", "delete"])
def test_log_lines_after_rotation_are_parsed(tmp_path, runner_binary, daemons, how):
    log = tmp_path / "log" / "ollama.log"
    log.parent.mkdir()
    log.write_text(NOISE * 2000)  # history, larger than anything written after a truncation
    config = runner_config(tmp_path, runner_binary, interval="1s",
                           ollama={"log": {"file": str(log)}})
    daemon = daemons(config, tmp_path)
    written: list[str] = []

    def versions() -> list[str]:
        return [e["version"] for e in daemon.events("ollama_version")]

    for round_ in range(3):
        version = f"0.{round_}.0"
        append(log, NOISE * 10 + version_line(version))
        written.append(version)
        wait_for(lambda: versions() == written, message=f"versions {written}")
        rotate(log, how)
        if how == "delete":
            daemon.wait_value("vgpumon_collector_success", 0, collector="ollama_log")
            log.write_text(NOISE)
        after = f"0.{round_}.1"
        append(log, version_line(after))
        written.append(after)
        wait_for(lambda: versions() == written, message=f"versions {written}")
        daemon.wait_value("vgpumon_collector_success", 1, collector="ollama_log")
    assert versions() == written
    assert daemon.process.poll() is None
