"""Group patterns cannot freeze the daemon: the defaults run in linear time and match what
the earlier ones matched on every era's cmdlines, the loader rejects the shapes that
backtrack catastrophically, and a quadratic pattern sees only a short prefix."""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.simhost.eras import BIN, DEFAULT_VERSIONS, Era
from vgpumon.cli import EXIT_CONFIG, main
from vgpumon.config.loading import ConfigError, parse_config
from vgpumon.config.patterns import (
    LEGACY,
    LINEAR_LIMIT,
    QUADRATIC_LIMIT,
    RUNNER,
    analyze,
    problem,
    search_limit,
)
from vgpumon.config.schema import Config
from vgpumon.linux.procfs import CMDLINE_LIMIT
from vgpumon.sources.processes import classify, found, match_text

GROUPS = Config().groups
OLD_RUNNER = next(iter(LEGACY))
# What the default means, written the quadratic way (the earlier default, plus era A's
# `ollama-runner`), for comparison.
REFERENCE = r"(ollama runner|ollama-runner|ollama_llama_server|llama-server).*--model"
OLD_GROUPS = tuple(dataclasses.replace(g, cmdline=re.compile(REFERENCE))
                   if g.name == "runner" else g for g in GROUPS)


def era_cmdlines() -> list[tuple[str, str, list[str]]]:
    """(era, comm, argv) of every process each era's server starts, and the server."""
    root, blob = "/", "/usr/share/ollama/.ollama/models/blobs/sha256-" + "ab" * 32
    out = []
    for name in DEFAULT_VERSIONS:
        era = Era.get(name)
        out.append((name, "ollama", [f"/{BIN}", "serve"]))
        if not era.has_runner:
            continue
        for gpu, engine in itertools.product((True, False), ("ollama", "llama")):
            argv = era.runner_argv(root, blob, 41235, gpu=gpu, gpu_layers=33, ctx=8192,
                                   engine=engine)
            out.append((name, era.runner_comm_name, argv))
        out += [(name, "probe", argv) for _, argv in era.probe_argvs(root, 41236)]
    # Era G runs MLX models with the Go runner, by model name (docs/ollama.md#eras).
    out.append(("G", "ollama", [f"/{BIN}", "runner", "--mlx-engine", "--model", "llama3.2",
                                "--port", "41237"]))
    # Era E before 0.11.5, and a model dir with spaces in its path.
    era = Era.get("E", "0.10.1")
    out.append(("E", "ollama", era.runner_argv(root, "/srv/my models/blobs/sha256-" + "cd" * 32,
                                              41238, gpu=True, gpu_layers=1, ctx=2048,
                                              engine="llama")))
    return out


@pytest.mark.parametrize(("era", "comm", "argv"), era_cmdlines(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_default_groups_classify_every_era_as_the_earlier_defaults_did(era, comm, argv):
    now = classify(GROUPS, comm, None, tuple(argv))
    assert now == classify(OLD_GROUPS, comm, None, tuple(argv))
    if "--model" in argv:
        assert now == "runner"


def test_the_default_patterns_are_linear_and_accepted():
    for group in GROUPS:
        for pattern in (group.comm, group.exe, group.cmdline):
            if pattern is not None:
                verdict = analyze(pattern.pattern)
                assert verdict.problem is None and verdict.degree <= 1, pattern.pattern
                assert search_limit(pattern) == LINEAR_LIMIT
    assert analyze(OLD_RUNNER).degree == 2  # why it was replaced


_PIECES = ["ollama runner", "ollama-runner", "ollama_llama_server", "llama-server",
           "ollama gpu-discover", "--model", "--mode", "-m", " ", "x", "ollama", "llama",
           "runner", "server", "-", "_",
           "ollama_", "llama_server", "--model=", "/usr/local/bin/"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12))
def test_the_runner_pattern_matches_what_the_earlier_one_matched(pieces):
    text = "".join(pieces)
    assert bool(re.search(RUNNER, text)) == bool(re.search(REFERENCE, text))


def test_the_runner_pattern_matches_the_earlier_one_on_every_short_combination():
    pieces = ["ollama runner", "ollama-runner", "ollama_llama_server", "llama-server",
              "--model", "o", "l", " "]
    for count in range(5):
        for combination in itertools.product(pieces, repeat=count):
            text = "".join(combination)
            assert bool(re.search(RUNNER, text)) == bool(re.search(REFERENCE, text)), text


def test_classification_of_an_adversarial_cmdline_completes():
    # What froze the daemon for 90 s: 15 arguments of 128 KiB of "ollama runner ", no --model.
    # Cut to CMDLINE_LIMIT, every default pattern runs in linear time over it.
    argv = ("ollama", *["ollama runner " * 9362] * 15)
    assert len(match_text(argv)) == CMDLINE_LIMIT
    assert classify(GROUPS, "ollama", None, argv) == "discovery"
    other = ("llama-server", *["llama-serverollama_llama_server" * 4000] * 15)
    assert classify(GROUPS, "llama-server", None, other) == "discovery"


@pytest.mark.parametrize(("pattern", "degree"), [
    (r"^ollama$", 0),
    (r"\bserve\b", 1),
    (RUNNER, 1),
    (r"(ollama runner|llama-server|ollama gpu-discover)", 1),
    (r"--port \d+ ", 1),  # a run of digits cannot hold the "--port " before it
    (r"x\d+\.\d+y", 1),
    (r"^/usr/bin/python3 .*vllm", 1),  # anchored: one start
    (r"/opt/.*", 1),  # nothing after the repeat can fail
    (r"\Aa++b", 1),  # possessive, anchored: one run over the a's
    (r"a++b", 2),  # possessive, yet each start of the search runs over the a's after it
    (r"(?s)\A(?>.*?a).*b", 1),
    (r"ollama.*serve", 2),
    (OLD_RUNNER, 2),
    (r"\S+x", 2),
    (r"(\d+\.)+x", 2),
    (r"\A.*x.*y", 2),
    (r"(\s+\S+)+x", 2),  # each iteration is split at the space: not nested
])
def test_degree_of_accepted_patterns(pattern, degree):
    verdict = analyze(pattern)
    assert verdict.problem is None and verdict.degree == degree


@pytest.mark.parametrize("pattern", [
    r"(a+)+$", r"(a+)+", r"(.*)*", r"(a*)*b", r"(?:a*)*", r"(a?)*$", r"(\w+\s?)+$",
    r"([^ ]+ ?)+x", r"(x+x+)+y", r"(?:.*x){2}y", r"(?i)(A+a+)+",  # nested repeats
    r"(a|aa)+$", r"(a|ab)*c", r"(a|a)*",  # alternatives that start alike, repeated
    r"((?:)*s)+ x", r"(?:x?)+y", r"b*(?>)*s", r"(?=x)+y",  # repeats of what can be empty
    r".*x.*y", r"\d+\d+x", r"a.*b.*c", r"[^ ]*=.*x", r"(?=.*x.*y)",  # cubic and worse
    "(" * 60 + "a*" + ")*" * 60,
])
def test_catastrophic_patterns_are_rejected(pattern):
    assert problem(pattern) is not None


def test_the_checker_is_quick_on_large_patterns():
    # Not a timing assertion: these must simply finish (an exponential checker would not).
    for pattern in ["(" * 90 + "a*" + ")*" * 90, "(?:x(?:y(?:z)+)+)+" * 20,
                    "(?:" + "|".join(f"w{i}" for i in range(500)) + ")+x", "a" * 5000]:
        analyze(pattern)


@pytest.mark.parametrize("key", ["cmdline", "comm", "exe"])
def test_the_loader_rejects_a_catastrophic_pattern_naming_the_key_and_line(key):
    text = f"groups:\n  evil:\n    {key}: '(a+)+$'\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="test.yaml")
    assert caught.value.key == f"groups.evil.{key}" and caught.value.line == 3
    assert "backtrack" in str(caught.value)


def test_config_check_exits_2_on_a_catastrophic_pattern(tmp_path, capsys):
    path = tmp_path / "vgpumon.yaml"
    path.write_text("groups:\n  server: {comm: '^ollama$'}\n  evil: {cmdline: '(a+)+$'}\n")
    assert main(["config", "check", "--config", str(path)]) == EXIT_CONFIG
    assert "groups.evil.cmdline" in capsys.readouterr().err


def test_a_file_with_the_earlier_runner_default_gets_the_linear_one():
    config = parse_config(f"groups:\n  runner: {{cmdline: '{OLD_RUNNER}'}}\n")
    assert config.groups[0].cmdline.pattern == RUNNER


def test_a_quadratic_pattern_is_searched_in_a_short_prefix_only():
    quadratic, linear = re.compile("ollama.*serve"), re.compile(r"\bserve\b")
    assert search_limit(quadratic) == QUADRATIC_LIMIT and search_limit(linear) == LINEAR_LIMIT
    near = "ollama " + "x" * 100 + " serve"
    far = "ollama " + "x" * QUADRATIC_LIMIT + " serve"
    assert found(quadratic, near) and not found(quadratic, far)
    assert found(linear, far)
    assert not found(linear, "x" * (LINEAR_LIMIT - 3) + " serve")  # cut inside the word
    assert found(linear, "x" * (LINEAR_LIMIT - 20) + " serve")
    assert not found(linear, "x" * LINEAR_LIMIT + " serve")
