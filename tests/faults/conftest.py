"""Fixtures of the fault-injection tests (see workload.py)."""

from tests.faults.workload import daemons, runner_binary, runners

__all__ = ["daemons", "runner_binary", "runners"]
