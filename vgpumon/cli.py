"""The `vgpumon` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence

from prometheus_client import generate_latest, write_to_textfile

from vgpumon import __version__
from vgpumon.config.loading import ConfigError, load_config
from vgpumon.config.schema import Config
from vgpumon.model.untrusted import InertFormatter

log = logging.getLogger("vgpumon")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"vgpumon: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vgpumon",
        description="Watch Ollama on vGPU shim hosts and export what it finds to Prometheus.",
    )
    parser.add_argument("--version", action="version",
                        version=f"vgpumon {__version__} (Python {sys.version.split()[0]})")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="log verbosity (default: info)")
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("--config", metavar="PATH",
                               help="config file (default: built-in defaults)")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser("run", parents=[config_option], help="run the daemon")
    run.set_defaults(func=cmd_run)

    once = commands.add_parser("once", parents=[config_option],
                               help="one refresh; print the metrics and exit")
    once.add_argument("--textfile", metavar="PATH",
                      help="write the metrics atomically to PATH (node_exporter textfile "
                           "collector) instead of stdout")
    once.set_defaults(func=cmd_once)

    config = commands.add_parser("config", help="configuration commands")
    config_commands = config.add_subparsers(title="config commands", metavar="COMMAND")
    check = config_commands.add_parser("check", parents=[config_option],
                                       help="validate a config file and exit")
    check.set_defaults(func=cmd_config_check)
    config.set_defaults(func=lambda _args: _usage(config))

    events = commands.add_parser("events", parents=[config_option],
                                 help="print the event log for a human")
    events.add_argument("--file", metavar="PATH", help="event log (default: events.file)")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--json", action="store_true", help="print the JSON lines as they are")
    events.set_defaults(func=cmd_events)

    doctor = commands.add_parser(
        "doctor", parents=[config_option],
        help="investigate the host once: shims, libraries, Ollama, its log; report and exit",
        description="Check the vGPU shims, Ollama's processes, environment, libraries and log "
                    "in one go. Exit status: 0 nothing failed, 1 something failed, 2 the "
                    "doctor could not run (bad config).")
    doctor.add_argument("--json", action="store_true", help="print the report as one JSON "
                        "document")
    doctor.add_argument("--load-model", metavar="NAME",
                        help="ask Ollama to load model NAME (an empty prompt, keep_alive 30s) "
                             "and check the runner it starts; this changes the host's state")
    doctor.add_argument("--load-timeout", metavar="SECONDS", type=float, default=180.0,
                        help="how long --load-model waits for Ollama (default: 180)")
    doctor.add_argument("--no-load-test", dest="load_test", action="store_false",
                        help="do not dlopen the CUDA backend in a child process (that runs "
                             "the constructors of the library and of the preloaded shims)")
    doctor.set_defaults(func=cmd_doctor)

    replay = commands.add_parser(
        "replay", help="print the timeline of an Ollama server log (post-mortems)",
        description="Read an Ollama server log (plain, journalctl -o short, journalctl -o "
                    "json, or a container's log: Docker's json-file, a Kubernetes CRI log "
                    "file, docker logs -t, Docker Desktop) and print what happened, with the "
                    "same parser as the daemon.")
    replay.add_argument("log", metavar="LOG", help="the log file, or - for standard input")
    replay.add_argument("--json", action="store_true",
                        help="one event per line as JSON (the event log's format)")
    replay.add_argument("--format", choices=["plain", "short", "json", "docker-json", "cri",
                                             "docker-timestamps", "docker-desktop"],
                        help="the log's format (default: detected from the first lines)")
    replay.set_defaults(func=cmd_replay)
    return parser


LOG_FORMAT = "time=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def setup_logging(level: str) -> None:
    """logfmt-like lines on stderr. Messages carry what other processes chose (paths, model
    names, log text): `InertFormatter` escapes their control characters, so each record is
    one line and nothing reaches the terminal raw (docs/reliability.md#untrusted-text)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(InertFormatter(LOG_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_CONFIG


def config_loader(args: argparse.Namespace) -> Callable[[], Config]:
    return lambda: load_config(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    from vgpumon.daemon.loop import Daemon
    from vgpumon.daemon.wiring import event_sources
    from vgpumon.http.webconfig import web_access_for

    loader = config_loader(args)
    config = loader()  # a bad config exits 2 here, before any port is bound
    web_access = web_access_for(config.web_config_file)  # and so does a bad web config
    if config.web_config_file is not None:
        log.info("web config loaded source=%s %s", config.web_config_file,
                 web_access.describe())
    daemon = Daemon(config, reload_config=loader, web_access=web_access)
    daemon.start()
    for source in event_sources():
        daemon.add_source(source)
    try:
        daemon.bind()
    except OSError as err:
        print(f"vgpumon: cannot listen on {config.listen}: {err.strerror or err}",
              file=sys.stderr)
        daemon.close()
        return EXIT_FAILURE
    try:
        return daemon.run()
    finally:
        daemon.close()


def cmd_once(args: argparse.Namespace) -> int:
    from vgpumon.daemon.loop import Daemon
    from vgpumon.daemon.ollama_watch import look_once

    config = load_config(args.config)
    daemon = Daemon(config)
    daemon.start()
    look_once(daemon, time.time())
    # A snapshot taken now carries the Ollama sources' health too; applying it publishes.
    daemon.apply(daemon.observer.snapshot(time.time()))
    registry = daemon.registry(with_process_metrics=False)
    if args.textfile:
        write_to_textfile(args.textfile, registry)
    else:
        sys.stdout.write(generate_latest(registry).decode())
    daemon.close()
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    from vgpumon.http.webconfig import web_access_for

    config = load_config(args.config)
    web_access = web_access_for(config.web_config_file)
    print(f"config ok: {config.source or 'built-in defaults'}")
    print(f"  listen {config.listen}, interval {config.interval:g}s, procfs {config.procfs}")
    print(f"  groups: {', '.join(g.name for g in config.groups)}")
    print(f"  libraries: {', '.join(s.name for s in config.libraries)} "
          f"(shims: {', '.join(config.shims) or 'none'})")
    print(f"  links: {len(config.links)}")
    print(f"  web: {config.web_config_file or 'no web config'} ({web_access.describe()})")
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    from vgpumon.daemon.eventlog import follow_event_log, read_event_log
    from vgpumon.model.timeline import format_event

    path = args.file or load_config(args.config).events.file
    if not path:
        print("vgpumon: no event log configured (events.file)", file=sys.stderr)
        return EXIT_CONFIG
    source = follow_event_log(path) if args.follow else read_event_log(path)
    try:
        for event in source:
            print(json.dumps(event.to_dict()) if args.json else format_event(event), flush=True)
    except BrokenPipeError:
        return EXIT_OK
    return EXIT_OK



def cmd_doctor(args: argparse.Namespace) -> int:
    from vgpumon.doctor import DoctorOptions, diagnose
    from vgpumon.doctor.render import render_json, render_text

    try:
        config = load_config(args.config)
    except ConfigError as err:
        if args.json:
            print(json.dumps({"error": str(err), "exit_code": EXIT_CONFIG}))
        print(f"vgpumon: {err}", file=sys.stderr)
        return EXIT_CONFIG
    options = DoctorOptions(load_test=args.load_test, load_model=args.load_model,
                            load_timeout=args.load_timeout)
    report = diagnose(config, options)
    sys.stdout.write(render_json(report) if args.json else render_text(report))
    sys.stdout.flush()
    return report.exit_code


def cmd_replay(args: argparse.Namespace) -> int:
    from vgpumon.model.timeline import format_timeline
    from vgpumon.ollama.replay import ReplayStats, local_timezone, replay

    stats = ReplayStats()
    try:
        handle = sys.stdin.buffer if args.log == "-" else open(args.log, "rb")  # noqa: SIM115
    except OSError as err:
        print(f"vgpumon: cannot read {args.log}: {err.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        events = replay(handle, stats=stats, log_format=args.format,
                        local_tz=local_timezone())
        if args.json:
            for event in events:
                print(event.to_json())
        else:
            for line in format_timeline(events):
                print(line)
    except BrokenPipeError:
        return EXIT_OK
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()
    print(f"vgpumon: {stats.lines} lines ({stats.format}), {stats.records} records, "
          f"{stats.events} events, {stats.skipped} skipped", file=sys.stderr)
    return EXIT_OK
