"""Fixtures shared by all of vgpumon's tests, and the `slow` marker given by path.

`make test-unit` (``pytest -m "not slow"``) runs the pure and unit tests only, for the
edit-test loop; `make test` runs everything. A test is slow when it lives in one of
`SLOW_DIRS` or `SLOW_FILES`, or uses a simulated host (`SLOW_FIXTURES`): no test file marks
itself, so a new test in those places is slow without being told.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.simhost.fixtures import simhost, simhost_module

__all__ = ["simhost", "simhost_module"]

TESTS = Path(__file__).resolve().parent

# Suites that start real processes, servers (Prometheus, vgpumon's own) or simulated hosts,
# or fuzz each parser 10,000 times.
SLOW_DIRS = frozenset({"bench", "e2e", "faults", "fuzz", "ops", "simhost", "soak", "web"})
# Files of the fast suites that do the same: the doctor against simulated hosts and as
# another user, the event sources against the real kernel.
SLOW_FILES = frozenset({
    "doctor/test_doctor_privileges.py",
    "doctor/test_doctor_scenarios.py",
    "doctor/test_loadtest_rights.py",
    "lifecycle/test_connector_overrun.py",
    "lifecycle/test_kernel_sources.py",
})
SLOW_FIXTURES = frozenset({"simhost", "simhost_module"})


def is_slow(item: pytest.Item) -> bool:
    try:
        relative = item.path.resolve().relative_to(TESTS)
    except ValueError:  # a test outside tests/ (a path given on the command line)
        return False
    return (relative.parts[0] in SLOW_DIRS or relative.as_posix() in SLOW_FILES
            or not SLOW_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item):
            item.add_marker(pytest.mark.slow)
