"""The long-running daemon: the event loop, its event sources, counters, exit classification, the
event log."""
