"""Identity rules of a group (docs/configuration.md#membership): the verdict table and the
config keys that set them."""

from __future__ import annotations

import stat

import pytest

from vgpumon.config.loading import ConfigError, parse_config
from vgpumon.config.schema import RUNNER, SERVER, Config, GroupSpec
from vgpumon.sources.identity import (
    EXECUTABLE_NAME,
    EXECUTABLE_OWNER,
    EXECUTABLE_WRITABLE,
    PARENT,
    Executable,
    has_identity_rules,
    rejection,
)

SERVER_RULES = Config().group(SERVER)
RUNNER_RULES = Config().group(RUNNER)
ROOT_FILE = stat.S_IFREG | 0o755


@pytest.mark.parametrize(("group", "executable", "parent_ok", "parent_uid", "why"), [
    (SERVER_RULES, Executable("ollama", 0, ROOT_FILE), False, None, None),
    (SERVER_RULES, Executable("sleep", 0, ROOT_FILE), False, None, EXECUTABLE_NAME),
    (SERVER_RULES, Executable("ollama", 65534, ROOT_FILE), False, None, EXECUTABLE_OWNER),
    (SERVER_RULES, Executable("ollama", 0, stat.S_IFREG | 0o775), False, None,
     EXECUTABLE_WRITABLE),
    (SERVER_RULES, Executable("ollama", 0, stat.S_IFREG | 0o757), False, None,
     EXECUTABLE_WRITABLE),
    (SERVER_RULES, None, False, None, None),  # unreadable link: the name rules decide
    (RUNNER_RULES, Executable("llama-server", 0, ROOT_FILE), True, 0, None),
    (RUNNER_RULES, Executable("llama-server", 0, ROOT_FILE), False, None, PARENT),
    (RUNNER_RULES, None, False, None, PARENT),  # lineage needs no privilege
    # an extracted runner (eras before 0.5.2) belongs to the server's user
    (RUNNER_RULES, Executable("ollama_llama_server", 998, ROOT_FILE), True, 998, None),
    (RUNNER_RULES, Executable("ollama_llama_server", 1000, ROOT_FILE), True, 998,
     EXECUTABLE_OWNER),
    (RUNNER_RULES, Executable("python3.11", 0, ROOT_FILE), True, 0, EXECUTABLE_NAME),
])
def test_the_verdict(group, executable, parent_ok, parent_uid, why):
    assert rejection(group, executable, parent_ok, parent_uid) == why


def test_a_group_without_identity_keys_behaves_as_before():
    assert not has_identity_rules(GroupSpec("mine"))
    assert rejection(GroupSpec("mine"), Executable("x", 1000, stat.S_IFREG | 0o777), False,
                     None) is None


def test_the_config_keys():
    config = parse_config(
        "groups:\n"
        "  server: {comm: '^ollama$', executable: ollama, owner: [root, 1001]}\n"
        "  runner: {cmdline: runner, executable: [llama-server], parent: server}\n")
    server, runner = config.group("server"), config.group("runner")
    assert server.executables == ("ollama",) and server.owners == (0, 1001)
    assert runner.parent == "server" and runner.owners == ()


@pytest.mark.parametrize(("text", "key", "words"), [
    ("groups:\n  s: {comm: x, owner: [no-such-user-here]}\n", "groups.s.owner[0]", "no user"),
    ("groups:\n  r: {comm: x, parent: server}\n", "groups.r.parent", "not another group"),
    ("groups:\n  r: {comm: x, parent: r}\n", "groups.r.parent", "not another group"),
    ("groups:\n  s: {comm: x, executable: [1]}\n", "groups.s.executable[0]", "string"),
])
def test_bad_identity_keys_name_the_key(text, key, words):
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.key == key and words in caught.value.message
