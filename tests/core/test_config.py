"""Configuration: defaults, the shipped example, and errors that name the key and line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vgpumon.config.durations import format_duration, parse_duration
from vgpumon.config.loading import ConfigError, load_config, parse_config
from vgpumon.config.schema import Config

REPO = Path(__file__).resolve().parents[2]


def test_empty_config_gives_the_documented_defaults():
    config = parse_config("")
    assert config.listen == "0.0.0.0:9842"
    assert config.interval == 5.0
    assert config.procfs == "/proc"
    assert [g.name for g in config.groups] == ["server", "runner", "discovery"]
    assert config.shims == ("vgpu-exec", "vgpu-cuda", "vgpu-nvml", "vgpu-cudart")
    assert config.library("vgpu-cuda").path == "/usr/lib64/libvgpu-cuda.so"
    assert config.library("ggml-cuda").glob == "libggml-cuda.so*"
    assert config.library("cuda-driver").driver is True
    assert [link.path for link in config.links][2] == "/usr/local/lib/ollama/cuda_v12/libcuda.so.1"
    assert config.crash_loop.crashes == 3 and config.crash_loop.window == 600
    assert config.ollama.log.journal_unit == "ollama.service"
    assert config.events.max_bytes == 10485760


def test_shipped_example_config_equals_the_built_in_defaults():
    # config/vgpumon.yaml documents every key with its default: the two must never drift.
    shipped = load_config(str(REPO / "config" / "vgpumon.yaml"))
    defaults = Config()
    for field in ("listen_host", "listen_port", "interval", "procfs", "rootfs", "libraries",
                  "shims", "links", "crash_loop", "ollama", "events", "watch_dirs",
                  "nvml", "exit_watch", "web_config_file"):
        assert getattr(shipped, field) == getattr(defaults, field), field
    assert [(g.name, g.comm and g.comm.pattern, g.exe and g.exe.pattern,
             g.cmdline and g.cmdline.pattern, g.expect) for g in shipped.groups] == [
        (g.name, g.comm and g.comm.pattern, g.exe and g.exe.pattern,
         g.cmdline and g.cmdline.pattern, g.expect) for g in defaults.groups]


def test_a_full_config_is_read_into_frozen_dataclasses():
    config = parse_config("""
listen: "[::1]:9900"
interval: 1m30s
libraries:
  shim: {path: /opt/shim/libvgpu-cuda.so, view: server}
  ggml: {name: "libggml-cuda.so*"}
  driver: {name: "libcuda.so.*", driver: true}
shims: [shim]
links:
  - {path: /usr/lib64/libcuda.so.1, target: /opt/shim/libvgpu-cuda.so}
groups:
  runner: {cmdline: "llama-server.*--model", expect: [shim, ggml]}
crash_loop: {crashes: 5, window: 1h}
ollama: {url: "http://10.0.0.1:11434/", timeout: 500ms, log: {file: /var/log/ollama.log},
         expected_gpus: 0}
events: {file: "", max_bytes: 65536}
""")
    assert (config.listen_host, config.listen_port) == ("::1", 9900)
    assert config.listen == "[::1]:9900"
    assert config.interval == 90
    assert config.library("shim").view == "server"
    assert config.group("runner").cmdline.search("llama-server --model /x")
    assert config.group("runner").expect == ("shim", "ggml")
    assert config.crash_loop.window == 3600
    assert config.ollama.url == "http://10.0.0.1:11434"
    assert config.ollama.timeout == 0.5
    assert config.ollama.log.file == "/var/log/ollama.log"
    assert config.ollama.log.journal_unit is None
    assert config.events.file is None
    with pytest.raises(AttributeError):
        config.interval = 1  # type: ignore[misc]


@pytest.mark.parametrize(("text", "key", "line", "words"), [
    ("intervall: 5s\n", "intervall", 1, "unknown key"),
    ("listen: ':9842'\ninterval: 5\n", "interval", 2, "duration"),
    ("interval: soon\n", "interval", 1, "not a duration"),
    ("interval: 0s\n", "interval", 1, "at least"),
    ("groups:\n  runner:\n    cmdline: '(unclosed'\n", "groups.runner.cmdline", 3,
     "regular expression"),
    ("groups:\n  runner:\n    cmdlin: x\n", "groups.runner.cmdlin", 3, "unknown key"),
    ("groups:\n  runner: {cmdline: x, expect: [nope]}\n", "groups.runner.expect[0]", 2,
     "not defined"),
    ("groups:\n  runner: {expect: []}\n", "groups.runner", 2, "at least one of"),
    ("shims: [vgpu-cuda, ghost]\n", "shims[1]", 1, "not defined"),
    ("libraries:\n  a: {path: /x/liba.so}\n", "shims", None, "not defined"),
    ("libraries:\n  a: {path: relative/liba.so}\n", "libraries.a.path", 2, "absolute"),
    ("libraries:\n  a: {path: /x, name: y}\n", "libraries.a", 2, "exactly one"),
    ("libraries:\n  a: {name: y, driver: yes please}\n", "libraries.a.driver", 2, "true or false"),
    ("links:\n  - {path: /a}\n", "links[0]", 2, "missing target"),
    ("links: {path: /a}\n", "links", 1, "expected a list"),
    ("listen: nowhere\n", "listen", 1, "host:port"),
    ("listen: '0.0.0.0:99999'\n", "listen", 1, "out of range"),
    ("crash_loop: {crashes: 0}\n", "crash_loop.crashes", 1, "at least 1"),
    ("crash_loop: {crashes: three}\n", "crash_loop.crashes", 1, "integer"),
    ("ollama: {url: 'ftp://x'}\n", "ollama.url", 1, "http"),
    ("ollama: {log: {file: /a, journal_unit: b}}\n", "ollama.log", 1, "not both"),
    ("ollama: {log: {file: /a, container: auto}}\n", "ollama.log", 1, "not both"),
    ("ollama: {log: {file: /a, journal_unit: b, container: auto}}\n", "ollama.log", 1,
     "all three"),
    ("ollama: {log: {container: docker}}\n", "ollama.log.container", 1, "expected auto"),
    ("ollama: {log: {container: auto, docker_root: var/lib/docker}}\n",
     "ollama.log.docker_root", 1, "absolute"),
    ("ollama: {log: {container: auto, pods_dir: ''}}\n", "ollama.log.pods_dir", 1, "string"),
    ("events: {max_bytes: 10}\n", "events.max_bytes", 1, "at least"),
    ("interval: 5s\ninterval: 6s\n", "interval", 2, "duplicate"),
    ("- just\n- a list\n", "", 1, "mapping"),
    ("exit_watch: netlink\n", "exit_watch", 1, "one of auto"),
    ("nvml: maybe\n", "nvml", 1, "auto, on or off"),
])
def test_bad_config_names_the_key_and_line(text, key, line, words):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="test.yaml")
    error = caught.value
    assert error.key == key
    assert error.line == line
    assert words in error.message
    assert str(error).startswith(f"test.yaml:{line}: " if line else "test.yaml: ")


def test_ollama_log_in_a_container():
    spec = parse_config("ollama: {log: {container: auto}}\n").ollama.log
    assert (spec.container, spec.journal_unit, spec.file, spec.enabled) == (
        "auto", None, None, True)
    assert (spec.docker_root, spec.pods_dir) == ("/var/lib/docker", "/var/log/pods")
    spec = parse_config("ollama:\n  log: {container: auto, docker_root: /data/docker/,"
                        " pods_dir: /srv/pods}\n").ollama.log
    assert (spec.docker_root, spec.pods_dir) == ("/data/docker", "/srv/pods")
    assert not parse_config("ollama: {log: {docker_root: /d}}\n").ollama.log.enabled


def test_invalid_yaml_reports_the_line():
    with pytest.raises(ConfigError) as caught:
        parse_config("interval: 5s\ngroups: [\n", source="bad.yaml")
    assert "invalid YAML" in caught.value.message
    assert caught.value.line is not None


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path / "absent.yaml"))
    assert "cannot read" in str(caught.value)


def test_relative_paths_are_normalised(tmp_path):
    config = parse_config("procfs: /host/proc/\nrootfs: /host//root\n")
    assert config.procfs == "/host/proc"
    assert config.rootfs == os.path.normpath("/host//root")


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("5s", 5), ("10m", 600), ("1h30m", 5400), ("2d", 172800), ("1.5s", 1.5),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "s", "5 s", "-5s", "5sec", "1h 30m"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (600, "10m"), (0.5, "500ms"),
                                               (3600, "1h"), (90, "90s")])
def test_format_duration_round_trips(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
