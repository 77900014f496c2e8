"""Optional NVML collector: GPU memory held by each process, from the NVIDIA driver.

Needs ``pip install vgpumon[nvml]`` (nvidia-ml-py) and an NVIDIA driver. Absent-safe: where
the package or the driver is missing (a CPU host, or a remoting shim with no local device),
the collector is simply not there; that is not an error.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from types import ModuleType

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuMemory:
    """Bytes of GPU memory per PID (summed over devices), and how many devices there are."""

    devices: int
    by_pid: dict[int, int]


class NvmlReader:
    def __init__(self, nvml: ModuleType):
        self._nvml = nvml

    @classmethod
    def open(cls) -> NvmlReader | None:
        """Initialise NVML; None (with the reason logged once) when it is unavailable."""
        try:
            import pynvml  # the nvidia-ml-py package
        except ImportError:
            log.info("nvml collector off reason=%r", "nvidia-ml-py is not installed")
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            log.info("nvml collector off reason=%r", str(err))
            return None
        return cls(pynvml)

    def read(self) -> GpuMemory:
        nvml = self._nvml
        by_pid: dict[int, int] = {}
        count = nvml.nvmlDeviceGetCount()
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used = process.usedGpuMemory or 0  # None where the driver cannot tell
                by_pid[process.pid] = by_pid.get(process.pid, 0) + used
        return GpuMemory(count, by_pid)

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()
