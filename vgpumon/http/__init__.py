"""The HTTP subsystem: the metrics collector, exposition, the server, its TLS/auth config."""
