"""Configuration: the schema (frozen dataclasses), loading and validation, durations."""
