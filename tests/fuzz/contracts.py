"""Every parser's contract: it returns a result or raises its one documented error.

A `Contract` names a parser (the corpus directory is `corpus/<name>/`), adapts raw bytes to
its input, lists the errors it documents (none: it must never raise) and checks what it
returns. The fuzz tests and the corpus replay both go through `holds`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from hypothesis import settings

from tests.doctor.elfbuild import bytes_reader
from vgpumon.config.loading import MAX_DURATION, MAX_INTEGER, ConfigError, parse_config
from vgpumon.config.schema import Config
from vgpumon.daemon.eventlog import parse_event_line
from vgpumon.linux.elf import ElfError, ElfInfo, parse_elf
from vgpumon.linux.loader.ldcache import LdCache, LdCacheError, parse_ld_cache
from vgpumon.linux.procfs import (
    MappedFile,
    ProcParseError,
    ProcStat,
    parse_boot_time,
    parse_cmdline,
    parse_environ,
    parse_maps,
    parse_stat,
)
from vgpumon.model.events import Event
from vgpumon.ollama.api import ApiFormatError, LoadedModel, parse_ps, parse_version
from vgpumon.ollama.container_log import FORMATS as CONTAINER_FORMATS
from vgpumon.ollama.container_log import LineJoiner, Piece, unwrap
from vgpumon.ollama.interpret import KINDS, LogInterpreter
from vgpumon.ollama.journal import JournalEntry, JournalFormatError, parse_journal_json
from vgpumon.ollama.logline import LogRecord, parse_line
from vgpumon.ollama.replay import JSON, PLAIN, SHORT, flush_records, records_of_line
from vgpumon.sources.kmsg import (
    KmsgFormatError,
    KmsgRecord,
    OomKill,
    Segfault,
    parse_oom_kill,
    parse_record,
    parse_segfault,
)
from vgpumon.sources.proc_connector import ProcEvent, parse_datagram

from .mutate import as_text

FUZZ = settings.get_profile("fuzz")
CORPUS = Path(__file__).resolve().parent / "corpus"


@dataclass(frozen=True)
class Contract:
    name: str
    parse: Callable[[bytes], Any]
    errors: tuple[type[BaseException], ...]
    check: Callable[[Any], None]


def holds(contract: Contract, data: bytes) -> None:
    """Run the parser on `data`: a documented error or a result that passes the check."""
    try:
        result = contract.parse(data)
    except contract.errors:
        return
    contract.check(result)


# --- checks of the results --------------------------------------------------------------------


def _maps(result: tuple[MappedFile, ...]) -> None:
    assert isinstance(result, tuple)
    for mapped in result:
        assert isinstance(mapped.path, str) and mapped.ranges
        assert not mapped.deleted or not mapped.path.endswith("\n")
        mapped.basename  # noqa: B018 - must not raise


def _stat(result: ProcStat) -> None:
    assert isinstance(result, ProcStat)
    assert all(isinstance(v, int) for v in (result.pid, result.ppid, result.start_ticks))


def _cmdline(result: tuple[str, ...]) -> None:
    assert isinstance(result, tuple) and all(isinstance(arg, str) for arg in result)


def _environ(result: dict[str, str]) -> None:
    assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in result.items())


def _number(result: float) -> None:
    assert isinstance(result, float)


def _record(result: KmsgRecord) -> None:
    assert isinstance(result, KmsgRecord) and 0 <= result.priority < 8
    assert "\n" not in result.message


def _segfault(result: Segfault | None) -> None:
    assert result is None or (isinstance(result.pid, int) and isinstance(result.kind, str))


def _oom(result: OomKill | None) -> None:
    assert result is None or isinstance(result.pid, int)


def _datagram(result: list[ProcEvent]) -> None:
    assert isinstance(result, list)
    assert all(e.kind in ("exec", "exit", "fork", "coredump") for e in result)


def _line(result: LogRecord) -> None:
    assert isinstance(result, LogRecord) and isinstance(result.msg, str)
    for ts in (result.ts, result.transport_ts):
        assert ts is None or math.isfinite(ts)


def _journal(result: JournalEntry) -> None:
    assert isinstance(result, JournalEntry)
    assert result.message is None or isinstance(result.message, bytes | str)
    assert result.pid is None or isinstance(result.pid, int)


def _pieces(result: list[Piece]) -> None:
    for piece in result:
        assert isinstance(piece, Piece) and isinstance(piece.text, str)
        piece.text.encode()  # no lone surrogates
        assert piece.ts is None or math.isfinite(piece.ts)


def _events(result: list[Event]) -> None:
    for event in result:
        assert event.kind in KINDS
        event.to_json()


def _version(result: str) -> None:
    assert isinstance(result, str)


def _ps(result: tuple[LoadedModel, ...]) -> None:
    assert all(isinstance(m, LoadedModel) and isinstance(m.size, int) for m in result)


def _config(result: Config) -> None:
    assert isinstance(result, Config)
    assert 0 <= result.listen_port <= 65535
    # What the daemon can wait for and allocate (epoll's timeout, a deque's maxlen).
    for seconds in (result.interval, result.ollama.timeout, result.crash_loop.window):
        assert 0 < seconds <= MAX_DURATION
    for number in (result.events.memory, result.events.max_bytes, result.crash_loop.crashes):
        assert number <= MAX_INTEGER


def _elf(result: ElfInfo) -> None:
    assert isinstance(result, ElfInfo)


def _ldcache(result: LdCache) -> None:
    assert isinstance(result, LdCache)


def _event_line(result: Event | None) -> None:
    if result is not None:
        assert isinstance(result, Event) and math.isfinite(result.ts)
        result.to_json()


# --- adapters: corpus bytes → the parser's input ---------------------------------------------


def _log_pipeline(data: bytes) -> list[Event]:
    """What the daemon does with a chunk of the Ollama log, in each of its formats."""
    events: list[Event] = []
    for log_format in (PLAIN, SHORT, JSON, *CONTAINER_FORMATS):
        interpreter = LogInterpreter()
        joiner = LineJoiner()
        for line in data.split(b"\n"):
            for record in records_of_line(line, log_format, UTC, joiner=joiner) or ():
                events += interpreter.feed(record, 1_000_000.0)
        for record in flush_records(joiner, UTC):
            events += interpreter.feed(record, 1_000_000.0)
        events += interpreter.flush(1_000_000.0)
    return events


def _container_lines(data: bytes) -> list[Piece]:
    """One line of a container's log, unwrapped in each format, and the pieces joined."""
    joiner = LineJoiner()
    pieces = [p for f in CONTAINER_FORMATS if (p := unwrap(data, f, UTC)) is not None]
    return pieces + [whole for p in pieces for whole in joiner.feed(p)] + joiner.flush()


CONTRACTS = {
    contract.name: contract
    for contract in (
        Contract("maps", parse_maps, (), _maps),
        Contract("stat", parse_stat, (ProcParseError,), _stat),
        Contract("cmdline", parse_cmdline, (), _cmdline),
        Contract("environ", parse_environ, (), _environ),
        Contract("boot_time", parse_boot_time, (ProcParseError,), _number),
        Contract("kmsg_record", parse_record, (KmsgFormatError,), _record),
        Contract("segfault", lambda d: parse_segfault(as_text(d)), (), _segfault),
        Contract("oom_kill", lambda d: parse_oom_kill(as_text(d)), (), _oom),
        Contract("datagram", parse_datagram, (), _datagram),
        Contract("log_line", parse_line, (), _line),
        Contract("log_line_text", lambda d: parse_line(as_text(d)), (), _line),
        Contract("journal_json", parse_journal_json, (JournalFormatError,), _journal),
        Contract("container_line", _container_lines, (), _pieces),
        Contract("log_interpreter", _log_pipeline, (), _events),
        Contract("api_version", parse_version, (ApiFormatError,), _version),
        Contract("api_ps", parse_ps, (ApiFormatError,), _ps),
        Contract("config", lambda d: parse_config(as_text(d)), (ConfigError,), _config),
        Contract("elf", lambda d: parse_elf(bytes_reader(d)), (ElfError,), _elf),
        Contract("ldcache", parse_ld_cache, (LdCacheError,), _ldcache),
        Contract("event_line", parse_event_line, (), _event_line),
    )
}
