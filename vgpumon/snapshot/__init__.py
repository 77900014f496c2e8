"""The immutable picture of the host: host and Ollama state, collector health, publication."""
