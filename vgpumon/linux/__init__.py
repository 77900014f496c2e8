"""The kernel's interfaces as vgpumon reads them: procfs, paths in a process's view, containers."""
