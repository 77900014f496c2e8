"""Fixtures shared by all of vgpumon's tests."""

from tests.simhost.fixtures import simhost, simhost_module

__all__ = ["simhost", "simhost_module"]
