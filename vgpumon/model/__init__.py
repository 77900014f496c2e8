"""The vocabulary every layer speaks: events, exit reasons, the timeline."""
