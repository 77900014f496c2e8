"""Fixtures of the soak test (shared with the fault tests, see tests/faults/workload.py)."""

from tests.faults.workload import daemons, runner_binary, runners

__all__ = ["daemons", "runner_binary", "runners"]
