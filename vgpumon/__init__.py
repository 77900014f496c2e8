"""vgpumon: watch Ollama on vGPU shim hosts and export what it finds to Prometheus."""

__version__ = "0.1.0"
