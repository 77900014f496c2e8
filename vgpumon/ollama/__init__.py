"""Pure parsers for Ollama's world: no I/O except `manifests` (through a `FileView`).

- `logline`: one log line (any era, any transport prefix) → `LogRecord`
- `journal`: one line of ``journalctl -o json`` → `JournalEntry`
- `interpret`: `LogRecord`s in order → `Event`s (`LogInterpreter`)
- `exits`, `gotrace`: exit texts and Go crash traces, used by `interpret`
- `api`: ``/api/version`` and ``/api/ps`` bodies
- `manifests`: weight blob digest → model names
- `replay`: a saved log → events, and a human timeline
"""
