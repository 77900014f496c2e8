"""A real `Daemon` with the exit watch on the real proc connector, for the connector tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vgpumon.config.schema import Config, EventsSpec
from vgpumon.daemon.exit_watch import PROC_CONNECTOR, ExitWatch
from vgpumon.daemon.kernel_log import KernelLog
from vgpumon.daemon.loop import Daemon


@pytest.fixture
def daemon(tmp_path) -> Iterator[Daemon]:
    config = Config(interval=3600.0, events=EventsSpec(file=str(tmp_path / "events.jsonl")),
                    nvml="off", exit_watch=PROC_CONNECTOR)
    daemon = Daemon(config)
    daemon.start()
    daemon.add_source(ExitWatch(KernelLog()))
    if daemon.runtime.exit_mechanism != PROC_CONNECTOR:
        daemon.close()
        pytest.skip("the proc connector is not available here")
    yield daemon
    daemon.close()
