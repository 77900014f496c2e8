"""Every parser against 10,000 hostile inputs: random ones and mutated real ones.

The contract (`tests.fuzz.contracts`): a result, or the parser's one documented error.
`@example`s are inputs that broke a parser once (also in `corpus/`) or that are notable.
"""

from __future__ import annotations

import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from vgpumon.daemon.eventlog import parse_event_line
from vgpumon.model.events import ALL_KINDS, Event

from . import samples
from .contracts import CONTRACTS, FUZZ, holds
from .mutate import inputs, mutated


def check(name: str, data: bytes) -> None:
    holds(CONTRACTS[name], data)


@FUZZ
@given(inputs(samples.MAPS))
@example(b"0-1000 r--p 00000000 fe:99999999999 2171103 /x.so")  # os.makedev overflow
def test_maps(data):
    check("maps", data)


@FUZZ
@given(inputs(samples.STAT))
def test_stat(data):
    check("stat", data)


@FUZZ
@given(inputs(samples.CMDLINE))
def test_cmdline(data):
    check("cmdline", data)


@FUZZ
@given(inputs(samples.ENVIRON))
def test_environ(data):
    check("environ", data)


@FUZZ
@given(inputs(samples.PROC_STAT))
def test_boot_time(data):
    check("boot_time", data)


@FUZZ
@given(inputs(samples.KMSG_RECORDS))
def test_kmsg_record(data):
    check("kmsg_record", data)


@FUZZ
@given(inputs(samples.SEGFAULT_MESSAGES))
@example(b"x[" + b"9" * 5000 + b"]: segfault at 0 ip 0")  # int() digit limit
def test_segfault(data):
    check("segfault", data)


@FUZZ
@given(inputs(samples.OOM_MESSAGES))
@example("oom-kill:pid=\u00b2".encode())  # isdigit() but not int()
def test_oom_kill(data):
    check("oom_kill", data)


@FUZZ
@given(inputs(samples.DATAGRAMS))
def test_datagram(data):
    check("datagram", data)


@FUZZ
@given(inputs(samples.LOG_LINES))
def test_log_line(data):
    check("log_line", data)
    check("log_line_text", data)


@FUZZ
@given(inputs(samples.JOURNAL))
def test_journal_json(data):
    check("journal_json", data)


@FUZZ
@given(inputs(samples.CONTAINER_LINES))
def test_container_line(data):
    check("container_line", data)


@FUZZ
@given(inputs(samples.LOG_CHUNKS, max_random=500))
def test_log_interpreter(data):
    check("log_interpreter", data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=6,
)


@FUZZ
@given(inputs(samples.API_VERSION + samples.API_PS)
       | json_values.map(lambda v: json.dumps(v).encode()))
def test_api(data):
    check("api_version", data)
    check("api_ps", data)


# Config as operators get it wrong: real files mutated, and well-formed YAML of any shape
# under the real keys.
CONFIG_KEYS = ("listen", "interval", "procfs", "rootfs", "libraries", "shims", "links",
               "groups", "crash_loop", "ollama", "events", "watch_dirs", "web_config_file",
               "path", "name", "driver", "view", "target", "comm", "exe", "cmdline", "expect",
               "crashes", "window", "url", "timeout", "log", "journal_unit", "file",
               "models_dir", "expected_gpus", "max_bytes", "memory", "server")
config_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(["5s", "100ms", "1h30m", "/abs/path", "rel", "127.0.0.1:0", "[::1]:1",
                       "http://h:1", "(", "a{99999}", "x" * 50]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=5), children, max_size=4),
    max_leaves=8,
)


@FUZZ
@given(inputs(samples.CONFIG)
       | config_trees.map(lambda tree: json.dumps(tree).encode()))
@example(b"=")  # a tag (yaml 'value') SafeLoader cannot construct
@example(b"&a [*a]")  # recursive alias
@example(b"[" * 5000 + b"]" * 5000)  # RecursionError in PyYAML
@example(b"listen: '127.0.0.1:" + b"1" * 5000 + b"'")  # int() digit limit
@example(b"ollama: {url: 'http://[::1'}")  # urlsplit's ValueError
@example(b"groups: {a: {comm: 'a{4294967296}'}}")  # OverflowError from re
@example(b'listen: "\\U99999999"')  # OverflowError from PyYAML's chr()
def test_config(data):
    check("config", data)


@FUZZ
@given(inputs(samples.ELF, max_random=512)
       | mutated(samples.ELF).map(lambda d: b"\x7fELF" + d[4:]))
def test_elf(data):
    check("elf", data)


@FUZZ
@given(inputs(samples.LDCACHE, max_random=300)
       | st.binary(max_size=300).map(lambda d: b"ld.so-1.7.0" + d)
       | st.binary(max_size=300).map(lambda d: b"glibc-ld.so.cache1.1" + d))
def test_ldcache(data):
    check("ldcache", data)


@FUZZ
@given(inputs(samples.EVENT_LINES)
       | json_values.map(lambda v: json.dumps({"ts": 1, "kind": "x", "v": v}).encode()))
@example(b"[" * 100_000)  # RecursionError in json.loads
@example(b'{"ts":1' + b"0" * 400 + b',"kind":"x"}')  # int too large for float()
@example(b'{"ts":' + b"9" * 400 + b'.5,"kind":"x"}')  # a float that is inf
def test_event_line(data):
    check("event_line", data)


plain_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


# A property, not a contract: a tenth of the examples is plenty (and keeps CI cheap).
@settings(FUZZ, max_examples=max(1, FUZZ.max_examples // 10))
@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(ALL_KINDS) | st.text(),
       st.dictionaries(st.text(max_size=10).filter(lambda k: k not in ("ts", "kind")),
                       plain_json, max_size=5))
def test_event_line_round_trip(ts, kind, fields):
    event = Event(ts, kind, fields)
    assert parse_event_line(event.to_json().encode()) == event
