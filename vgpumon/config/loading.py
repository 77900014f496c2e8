"""Loading the configuration: YAML in, `Config` out, or a `ConfigError` naming the key path
and, where YAML gives one, the line. `read_yaml` and `Validator` serve every file vgpumon reads
(the config and the web config) so that all of them are checked the same way.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import yaml

from vgpumon.config import patterns as regex_rules
from vgpumon.config.durations import format_duration, parse_duration
from vgpumon.config.schema import (
    EXIT_WATCH_MECHANISMS,
    VIEWS,
    Config,
    CrashLoopSpec,
    EventsSpec,
    GroupSpec,
    LibrarySpec,
    LinkSpec,
    OllamaLogSpec,
    OllamaSpec,
)


class ConfigError(Exception):
    """A config problem, tied to the key path (``groups.runner.cmdline``) and line."""

    def __init__(self, key: str, message: str, *, source: str = "", line: int | None = None):
        self.key = key
        self.message = message
        self.source = source
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.source or "config"
        if self.line is not None:
            where += f":{self.line}"
        key = f"{self.key}: " if self.key else ""
        return f"{where}: {key}{self.message}"


def load_config(path: str | None) -> Config:
    """The config in `path`, or the built-in defaults when `path` is None."""
    if path is None:
        return Config()
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise ConfigError("", f"cannot read config file: {err.strerror}", source=path) from err
    except UnicodeDecodeError as err:
        raise ConfigError("", f"config file is not UTF-8: {err}", source=path) from err
    return parse_config(text, source=path)


def parse_config(text: str, *, source: str = "config") -> Config:
    """The config in YAML `text`; `ConfigError` (and nothing else) for anything wrong in it."""
    data, lines = read_yaml(text, source=source)
    return Validator(lines, source).config(data)


def read_yaml(text: str, *, source: str) -> tuple[Any, dict[str, int]]:
    """The YAML document as plain values, and the line of every key path in it.

    Shared by every file vgpumon reads (the config, the web config), so that all of them
    reject duplicate and non-string keys and name lines the same way, and raise only
    `ConfigError`.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError("", f"invalid YAML: {problem}", source=source, line=line) from err
    except RecursionError:  # PyYAML composes recursively: a few hundred levels of [[[…
        raise ConfigError("", f"invalid YAML: nested deeper than {MAX_DEPTH} levels",
                          source=source) from None
    except (ValueError, OverflowError) as err:  # PyYAML's chr() of "\U99999999" or "\U00110000"
        raise ConfigError("", f"invalid YAML: {err}", source=source) from None
    lines: dict[str, int] = {}
    data = {} if node is None else _Plainer(lines, source).plain(node, "", 0)
    return data, lines


# Beyond these a value is a typo, and the daemon cannot use it: a timeout of more than 24.8
# days overflows epoll's, an integer of 2**63 overflows a deque's maxlen.
MAX_DURATION = 7 * 86400.0
MAX_INTEGER = 2**53

# A real config is a few levels deep and has a few hundred values. Aliases can make a short
# document expand without bound (``&a [*a]`` is infinite, nested ``[*a, *a]`` exponential).
MAX_DEPTH = 32
MAX_VALUES = 100_000


class _Plainer:
    """YAML nodes → plain Python values, recording the line of every key path."""

    def __init__(self, lines: dict[str, int], source: str):
        self._lines = lines
        self._source = source
        self._values = 0

    def error(self, path: str, message: str, node: yaml.Node) -> ConfigError:
        return ConfigError(path, message, source=self._source, line=node.start_mark.line + 1)

    def plain(self, node: yaml.Node, path: str, depth: int) -> Any:
        self._values += 1
        if depth > MAX_DEPTH:
            raise self.error(path, f"nested deeper than {MAX_DEPTH} levels (a recursive "
                                   "alias?)", node)
        if self._values > MAX_VALUES:
            raise self.error(path, f"more than {MAX_VALUES} values (aliases expanding?)", node)
        self._lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(item, f"{path}[{index}]", depth + 1)
                    for index, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)  # a composed node is one of the three kinds
        return self.scalar(node, path)

    def mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                key_path = f"{path}.{shown[:40]}" if path else shown[:40]
                raise self.error(key_path, "keys must be strings", key_node)
            key_path = f"{path}.{key}" if path else key
            if key in result:
                raise self.error(key_path, "duplicate key", key_node)
            self._lines[key_path] = key_node.start_mark.line + 1
            result[key] = self.plain(value_node, key_path, depth + 1)
        return result

    def scalar(self, node: yaml.ScalarNode, path: str) -> Any:
        try:
            return yaml.SafeLoader("").construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError) as err:
            # An explicit tag PyYAML cannot build (!!foo, "=", !!binary of non-base64), an
            # !!int that is not one, a timestamp out of range.
            problem = getattr(err, "problem", None) or str(err)
            raise self.error(path, f"cannot read {node.value[:40]!r}: {problem}", node) from None


class Validator:
    """Checks plain data against the schema; every error names the key path and line."""

    def __init__(self, lines: Mapping[str, int], source: str):
        self._lines = lines
        self._source = source

    def error(self, path: str, message: str) -> ConfigError:
        line = self._lines.get(path)
        return ConfigError(path, message, source=self._source, line=line)

    # -- generic shapes ---------------------------------------------------------------------

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {type_name(value)}")
        for key in value:
            if key not in allowed:
                key_path = f"{path}.{key}" if path else key
                raise self.error(key_path, f"unknown key (known here: {', '.join(allowed)})")
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(path, f"expected a non-empty string, got {type_name(value)}")
        return value

    def optional_string(self, value: Any, path: str) -> str | None:
        if value is None or value == "":
            return None
        return self.string(value, path)

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(path, f"expected true or false, got {type_name(value)}")
        return value

    def integer(self, value: Any, path: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"expected an integer, got {type_name(value)}")
        if value < minimum:
            raise self.error(path, f"must be at least {minimum}, got {_shown(value)}")
        if value > MAX_INTEGER:
            raise self.error(path, f"must be at most {MAX_INTEGER}, got {_shown(value)}")
        return value

    def duration(self, value: Any, path: str, minimum: float) -> float:
        if not isinstance(value, str):
            raise self.error(path, f"expected a duration like 5s or 10m, got {type_name(value)}")
        try:
            seconds = parse_duration(value)
        except ValueError as err:
            raise self.error(path, str(err)) from None
        if seconds < minimum:
            raise self.error(path, f"must be at least {minimum:g}s, got {value}")
        if seconds > MAX_DURATION:
            raise self.error(path, f"must be at most {format_duration(MAX_DURATION)}, "
                                   f"got {_shown(value)}")
        return seconds

    def regex(self, value: Any, path: str) -> re.Pattern[str] | None:
        if value is None:
            return None
        text = self.string(value, path)
        text = regex_rules.LEGACY.get(text, text)  # an earlier default: its linear equivalent
        try:
            compiled = re.compile(text)
        except (re.error, OverflowError, RecursionError) as err:
            # OverflowError: a repeat count like {4294967296}; RecursionError: (((… nesting
            raise self.error(path, f"invalid regular expression: {err}") from None
        problem = regex_rules.problem(text)  # docs/configuration.md#patterns
        if problem is not None:
            raise self.error(path, f"regular expression can backtrack catastrophically: "
                                   f"{problem}")
        return compiled

    def absolute_path(self, value: Any, path: str) -> str:
        text = self.string(value, path)
        if not os.path.isabs(text):
            raise self.error(path, f"expected an absolute path, got {text!r}")
        return os.path.normpath(text)

    def view(self, value: Any, path: str) -> str:
        if value is None:
            return "host"
        if value not in VIEWS:
            raise self.error(path, f"expected one of {', '.join(VIEWS)}, got {_shown(value)}")
        return value

    def name_list(self, value: Any, path: str, known: Mapping[str, object]) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(path, "expected a list of library names (or auto for expect:), "
                                   f"got {type_name(value)}")
        names = []
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            name = self.string(item, item_path)
            if name not in known:
                raise self.error(item_path, f"library {name!r} is not defined under libraries:")
            names.append(name)
        return tuple(dict.fromkeys(names))

    # -- sections -----------------------------------------------------------------------------

    def config(self, data: Any) -> Config:
        defaults = Config()
        top = self.mapping(data, "", _TOP_KEYS)
        host, port = self.listen(top.get("listen", defaults.listen), "listen")
        libraries = (
            self.libraries(top["libraries"]) if "libraries" in top else defaults.libraries
        )
        by_name = {spec.name: spec for spec in libraries}
        shims = (
            self.name_list(top["shims"], "shims", by_name) if "shims" in top else defaults.shims
        )
        self.check_names_defined(shims, by_name, "shims")
        groups = self.groups(top["groups"], by_name) if "groups" in top else defaults.groups
        for group in groups:
            self.check_names_defined(group.expect, by_name, f"groups.{group.name}.expect")
        return Config(
            listen_host=host,
            listen_port=port,
            interval=self.get(top, "interval", defaults.interval,
                              lambda v, p: self.duration(v, p, 0.05)),
            procfs=self.get(top, "procfs", defaults.procfs, self.absolute_path),
            rootfs=self.get(top, "rootfs", defaults.rootfs, self.absolute_path),
            libraries=libraries,
            shims=shims,
            links=self.links(top["links"]) if "links" in top else defaults.links,
            groups=groups,
            crash_loop=self.crash_loop(top.get("crash_loop")),
            ollama=self.ollama(top.get("ollama")),
            events=self.events(top.get("events")),
            watch_dirs=self.get(top, "watch_dirs", (), self.path_list),
            nvml=self.get(top, "nvml", "auto", self.switch),
            exit_watch=self.get(top, "exit_watch", "auto", self.exit_watch),
            web_config_file=self.get(top, "web_config_file", None, self.optional_path),
            source=self._source,
        )

    def get(self, section: Mapping[str, Any], key: str, default: Any,
            convert: Callable[[Any, str], Any], prefix: str = "") -> Any:
        if key not in section:
            return default
        return convert(section[key], f"{prefix}{key}")

    def optional_path(self, value: Any, path: str) -> str | None:
        if value is None or value == "":
            return None
        return self.absolute_path(value, path)

    def exit_watch(self, value: Any, path: str) -> str:
        if value not in EXIT_WATCH_MECHANISMS:
            raise self.error(path, f"expected one of {', '.join(EXIT_WATCH_MECHANISMS)}, "
                                   f"got {type_name(value)}")
        return value

    def switch(self, value: Any, path: str) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        if value not in ("auto", "on", "off"):
            raise self.error(path, f"expected auto, on or off, got {type_name(value)}")
        return value

    def path_list(self, value: Any, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(path, f"expected a list of paths, got {type_name(value)}")
        return tuple(self.absolute_path(item, f"{path}[{i}]") for i, item in enumerate(value))

    def check_names_defined(self, names: tuple[str, ...], known: Mapping[str, object],
                            path: str) -> None:
        # Reached when `libraries:` is overridden but `shims:`/`expect:` keep their defaults.
        for name in names:
            if name not in known:
                raise self.error(path, f"library {name!r} is not defined under libraries:")

    def listen(self, value: Any, path: str) -> tuple[str, int]:
        text = self.string(value, path)
        match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:([0-9]+)|([^:\[\]]*):([0-9]+)", text)
        if not match:
            raise self.error(path, f"expected host:port (or [ipv6]:port), got {text!r}")
        host = match.group(1) or match.group(3) or "0.0.0.0"
        digits = match.group(2) or match.group(4)
        port = int(digits) if len(digits) <= 5 else 65536  # int() refuses 4,300+ digits
        if not 0 <= port <= 65535:
            raise self.error(path, f"port out of range: {digits[:20]}")
        if match.group(1):
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise self.error(path, f"invalid IPv6 address {host!r}") from None
        return host, port

    def libraries(self, value: Any) -> tuple[LibrarySpec, ...]:
        if not isinstance(value, dict) or not value:
            raise self.error("libraries", "expected a non-empty mapping of library names")
        specs = []
        for name, body in value.items():
            path = f"libraries.{name}"
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise self.error(path, "library names may use letters, digits, '_', '.', '-'")
            section = self.mapping(body, path, ("path", "name", "driver", "view", "stands_for"))
            has_path, has_name = "path" in section, "name" in section
            if has_path == has_name:
                raise self.error(path, "give exactly one of path: (a file) or name: (a glob)")
            specs.append(LibrarySpec(
                name=name,
                path=self.absolute_path(section["path"], f"{path}.path") if has_path else None,
                glob=self.string(section["name"], f"{path}.name") if has_name else None,
                driver=self.get(section, "driver", False, self.boolean, f"{path}."),
                view=self.view(section.get("view"), f"{path}.view"),
                stands_for=self.get(section, "stands_for", None, self.string, f"{path}."),
            ))
        names = {spec.name for spec in specs}
        for spec in specs:
            if spec.stands_for is not None and (spec.stands_for not in names
                                                or spec.stands_for == spec.name):
                raise self.error(f"libraries.{spec.name}.stands_for",
                                 f"library {spec.stands_for!r} is not another library defined "
                                 "under libraries:")
        return tuple(specs)

    def links(self, value: Any) -> tuple[LinkSpec, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error("links", f"expected a list, got {type_name(value)}")
        specs = []
        for index, body in enumerate(value):
            path = f"links[{index}]"
            section = self.mapping(body, path, ("path", "target", "view"))
            for required in ("path", "target"):
                if required not in section:
                    raise self.error(path, f"missing {required}:")
            specs.append(LinkSpec(
                path=self.absolute_path(section["path"], f"{path}.path"),
                target=self.absolute_path(section["target"], f"{path}.target"),
                view=self.view(section.get("view"), f"{path}.view"),
            ))
        seen = set()
        for index, spec in enumerate(specs):
            if (spec.view, spec.path) in seen:
                raise self.error(f"links[{index}].path", f"link {spec.path} is listed twice")
            seen.add((spec.view, spec.path))
        return tuple(specs)

    def groups(self, value: Any, libraries: Mapping[str, LibrarySpec]) -> tuple[GroupSpec, ...]:
        if not isinstance(value, dict) or not value:
            raise self.error("groups", "expected a non-empty mapping of group names")
        specs = []
        for name, body in value.items():
            path = f"groups.{name}"
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise self.error(path, "group names may use letters, digits, '_', '.', '-'")
            section = self.mapping(body, path, ("comm", "exe", "cmdline", "expect",
                                                "executable", "owner", "parent"))
            expect_auto = section.get("expect") == "auto"
            patterns = {key: self.regex(section.get(key), f"{path}.{key}")
                        for key in ("comm", "exe", "cmdline")}
            if not any(patterns.values()):
                raise self.error(path, "give at least one of comm:, exe:, cmdline:")
            specs.append(GroupSpec(
                name=name,
                expect=() if expect_auto else self.name_list(section.get("expect"),
                                                              f"{path}.expect", libraries),
                expect_auto=expect_auto,
                executables=self.strings(section.get("executable"), f"{path}.executable"),
                owners=tuple(self.owner(item, f"{path}.owner[{index}]") for index, item in
                             enumerate(self.listed(section.get("owner")))),
                parent=self.get(section, "parent", None, self.string, f"{path}."),
                **patterns,
            ))
        names = [spec.name for spec in specs]
        for spec in specs:
            if spec.parent is not None and (spec.parent not in names or spec.parent == spec.name):
                raise self.error(f"groups.{spec.name}.parent",
                                 f"group {spec.parent!r} is not another group defined under "
                                 "groups:")
        return tuple(specs)

    @staticmethod
    def listed(value: Any) -> list[Any]:
        """A value that may be given alone or as a list."""
        if value is None:
            return []
        return value if isinstance(value, list) else [value]

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        return tuple(self.string(item, f"{path}[{index}]")
                     for index, item in enumerate(self.listed(value)))

    def owner(self, value: Any, path: str) -> int:
        """A user name (looked up now) or a uid."""
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        name = self.string(value, path)
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            raise self.error(path, f"no user {name!r} on this host (give a uid)") from None

    def crash_loop(self, value: Any) -> CrashLoopSpec:
        section = self.mapping(value, "crash_loop", ("crashes", "window"))
        defaults = CrashLoopSpec()
        return CrashLoopSpec(
            crashes=self.get(section, "crashes", defaults.crashes,
                             lambda v, p: self.integer(v, p, 1), "crash_loop."),
            window=self.get(section, "window", defaults.window,
                            lambda v, p: self.duration(v, p, 1.0), "crash_loop."),
        )

    def ollama(self, value: Any) -> OllamaSpec:
        section = self.mapping(
            value, "ollama", ("url", "timeout", "log", "models_dir", "expected_gpus")
        )
        defaults = OllamaSpec()
        return OllamaSpec(
            url=self.get(section, "url", defaults.url, self.url, "ollama."),
            timeout=self.get(section, "timeout", defaults.timeout,
                             lambda v, p: self.duration(v, p, 0.01), "ollama."),
            log=self.ollama_log(section["log"]) if "log" in section else defaults.log,
            models_dir=self.get(section, "models_dir", defaults.models_dir,
                                self.absolute_path, "ollama."),
            expected_gpus=self.get(section, "expected_gpus", defaults.expected_gpus,
                                   lambda v, p: self.integer(v, p, 0), "ollama."),
        )

    def ollama_log(self, value: Any) -> OllamaLogSpec:
        section = self.mapping(value, "ollama.log",
                               ("journal_unit", "file", "container", "docker_root", "pods_dir"))
        given = [key for key in ("journal_unit", "file", "container") if key in section]
        if len(given) > 1:
            raise self.error("ollama.log", "give one of journal_unit:, file: or container:, "
                                           + ("not both" if len(given) == 2 else "not all three"))
        defaults = OllamaLogSpec()
        return OllamaLogSpec(
            journal_unit=self.get(section, "journal_unit", None, self.string, "ollama.log."),
            file=self.get(section, "file", None, self.absolute_path, "ollama.log."),
            container=self.get(section, "container", None, self.container, "ollama.log."),
            docker_root=self.get(section, "docker_root", defaults.docker_root,
                                 self.absolute_path, "ollama.log."),
            pods_dir=self.get(section, "pods_dir", defaults.pods_dir, self.absolute_path,
                              "ollama.log."),
        )

    def container(self, value: Any, path: str) -> str:
        if value != "auto":
            raise self.error(path, f"expected auto, got {_shown(value)}")
        return value

    def url(self, value: Any, path: str) -> str:
        text = self.string(value, path)
        try:
            parts = urlsplit(text)
        except ValueError:  # "Invalid IPv6 URL": a '[' without its ']'
            raise self.error(path, f"expected an http:// or https:// URL, got {text!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(path, f"expected an http:// or https:// URL, got {text!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise self.error(path, f"invalid port in {text!r}") from None
        return text.rstrip("/")

    def events(self, value: Any) -> EventsSpec:
        section = self.mapping(value, "events", ("file", "max_bytes", "memory"))
        defaults = EventsSpec()
        return EventsSpec(
            file=self.get(section, "file", defaults.file, self.optional_path, "events."),
            max_bytes=self.get(section, "max_bytes", defaults.max_bytes,
                               lambda v, p: self.integer(v, p, 4096), "events."),
            memory=self.get(section, "memory", defaults.memory,
                            lambda v, p: self.integer(v, p, 1), "events."),
        )


_TOP_KEYS = (
    "listen", "interval", "procfs", "rootfs", "libraries", "shims", "links", "groups",
    "crash_loop", "ollama", "events", "watch_dirs", "nvml", "exit_watch",
    "web_config_file",
)


def _shown(value: Any) -> str:
    """repr() of a value for a message; an integer too long to print is described instead."""
    try:
        text = repr(value)
    except ValueError:  # YAML reads 0x… integers of any length; repr() stops at 4,300 digits
        return "a very large integer"
    return text if len(text) <= 80 else text[:77] + "..."


def type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {_shown(value)}"
    return f"{type(value).__name__} {_shown(value)}"
