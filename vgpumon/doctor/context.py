"""Everything the checks look at, gathered once: `gather` does the I/O, the checks are pure
functions of the `DoctorContext` it returns.

Each gathering step is isolated: one that raises is recorded in `DoctorContext.problems` and
the others go on, as the daemon's sources do.
"""

from __future__ import annotations

import os
import posixpath
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from vgpumon.config.schema import RUNNER, SERVER, Config
from vgpumon.doctor import eras
from vgpumon.doctor.eras import LATEST, Era, at_least, era_of
from vgpumon.doctor.kmsg import KernelLog, read_kernel_log
from vgpumon.doctor.libsearch import (
    Candidate,
    LibraryResolution,
    file_ids,
    find_candidates,
    find_install_dir,
    loadable_executable,
    resolve_candidate,
)
from vgpumon.doctor.loadtest import LoadTestResult, run_load_test
from vgpumon.doctor.logread import Locate, LogReadout, container_locator, read_log
from vgpumon.doctor.modelload import ModelLoad, load_model
from vgpumon.doctor.privileges import (
    Privileges,
    cannot_read,
    current_privileges,
    describe_error,
)
from vgpumon.doctor.systemd import UnitStatus, unit_of_cgroup, unit_status
from vgpumon.linux.fscreds import acting_as
from vgpumon.linux.loader.ldresolve import FileId
from vgpumon.linux.paths import FileView, process_view
from vgpumon.linux.procfs import (
    DELETED_SUFFIX,
    Credentials,
    ProcFS,
    ProcParseError,
    parse_maps,
    select_lines,
)
from vgpumon.model.events import OLLAMA_VERSION, RUNNER_EXITED, RUNNER_READY, Event
from vgpumon.ollama.manifests import (
    BlobNames,
    blob_digest_from_model_arg,
    model_label,
    model_names_by_blob,
)
from vgpumon.snapshot.host import HostState, ProcessState
from vgpumon.snapshot.observer import HostObserver
from vgpumon.sources.ollama_api import OllamaApiState, poll
from vgpumon.sources.processes import TrackedProcess, server_of

GGML_CUDA = "ggml-cuda"
RELEVANT_NAMES = ("LD_PRELOAD", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "GGML_BACKEND_PATH")
LOG_LOOKBACK = 3600.0  # at least this much log, for restarts and crash loops
RUNNER_WAIT = 5.0  # after --load-model: how long to wait for its runner and its log lines
_LIB_OLLAMA_MAPPED = re.compile(rb"/lib/ollama/")  # a maps line of a file of the install
T = TypeVar("T")


def relevant(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that decide how Ollama finds GPUs and libraries; nothing else is ever
    shown (the rest of an environment may hold secrets)."""
    return {k: v for k, v in sorted(environ.items())
            if k.startswith("OLLAMA_") or k in RELEVANT_NAMES}


@dataclass(frozen=True)
class DoctorOptions:
    load_test: bool = True
    load_model: str | None = None
    load_timeout: float = 180.0
    load_test_timeout: float = 20.0
    journalctl: str = "journalctl"
    systemctl: str = "systemctl"
    kmsg: str = "/dev/kmsg"


@dataclass(frozen=True)
class ProcessEnviron:
    """A process's relevant variables, or why they could not be read. `tmpdir` (where eras
    before 0.5.2 extract their runners) is kept apart: it is used, never shown."""

    pid: int
    variables: Mapping[str, str] | None
    error: str | None = None
    tmpdir: str | None = None
    credentials: Credentials | None = None  # read with the variables: the same process


@dataclass(frozen=True)
class ServerFacts:
    process: TrackedProcess
    environ: ProcessEnviron
    exe: str | None  # the executable, a path in the server's view
    exe_note: str | None  # how it was found when not from /proc/PID/exe, or that it is deleted
    cwd: str
    view: FileView  # the server's filesystem
    view_note: str | None  # why paths are looked up where they are
    same_root: bool  # the server sees the host's / (no container): the load test can run
    unit: str | None  # systemd unit from /proc/PID/cgroup
    # Files it maps under a ``…/lib/ollama/`` dir (paths in its view); None: maps unreadable.
    lib_mappings: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LibraryFacts:
    lib_dir: str | None  # <prefix>/lib/ollama of the server's install
    candidates: tuple[Candidate, ...]
    resolutions: tuple[LibraryResolution, ...]
    environ: Mapping[str, str]  # the variables the loader was modelled with
    environ_from: str
    environ_known: bool  # False: the server's variables could not be read, only assumed
    executable: str | None
    shims: Mapping[FileId, str] = field(default_factory=dict)  # shim files in the server's view
    notes: tuple[str, ...] = ()
    lib_dir_from: str = ""  # which fact decided `lib_dir`, or where the doctor looked
    environ_derived: str = ""  # non-empty: `environ` was derived from the server's, and why


@dataclass(frozen=True)
class DoctorContext:
    config: Config
    options: DoctorOptions
    now: float
    hostname: str
    privileges: Privileges
    state: HostState
    server: ServerFacts | None = None
    runner_environs: Mapping[int, ProcessEnviron] = field(default_factory=dict)
    api: OllamaApiState | None = None
    log: LogReadout | None = None
    version: str | None = None
    version_from: str | None = None
    era: Era | None = None
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    libraries: LibraryFacts | None = None
    load_test: LoadTestResult | None = None
    systemd: UnitStatus | None = None
    kernel: KernelLog | None = None
    model_load: ModelLoad | None = None
    model_blob: str | None = None  # weight blob of --load-model's model
    problems: tuple[str, ...] = ()

    def group(self, name: str) -> tuple[ProcessState, ...]:
        return self.state.in_group(name)

    @property
    def servers(self) -> tuple[ProcessState, ...]:
        return self.group(SERVER)

    @property
    def runners(self) -> tuple[ProcessState, ...]:
        return self.group(RUNNER)

    def model_label(self, blob: str | None) -> str:
        """The model's name as the metrics label it, said as a blob where it has none."""
        if not blob:
            return "unknown model"
        label = model_label(blob, self.names)
        return label if self.names.get(blob) else f"blob {label}"

    def runner_label(self, process: TrackedProcess) -> str:
        blob = blob_digest_from_model_arg(process.model_arg or "")
        return f"runner pid {process.pid} ({self.model_label(blob)})"

    @property
    def cuda_shims(self) -> frozenset[str]:
        """The shims that stand in for the driver: targets of the configured ``libcuda.so*``
        links, else shims whose file is named like ``libvgpu-cuda.so``."""
        config = self.config
        by_path = {s.path: s.name for s in config.libraries if s.name in config.shims and s.path}
        names = {by_path[link.target] for link in config.links
                 if posixpath.basename(link.path).startswith("libcuda.so")
                 and link.target in by_path}
        if not names:
            names = {name for path, name in by_path.items()
                     if re.search(r"cuda(?!rt)", posixpath.basename(path))}
        return frozenset(names)

    @property
    def server_environ(self) -> Mapping[str, str] | None:
        return self.server.environ.variables if self.server else None

    @property
    def log_since_server(self) -> tuple[Event, ...]:
        """Log events since the current server started (all of them without a server)."""
        if self.log is None:
            return ()
        if self.server is None:
            return self.log.events
        return self.log.since_ts(self.server.process.start_time - 2.0)


# -- gathering ----------------------------------------------------------------------------------


def gather(config: Config, options: DoctorOptions | None = None) -> DoctorContext:
    """Read everything once; with ``options.load_model``, load that model first."""
    options = options or DoctorOptions()
    problems: list[str] = []

    def step(name: str, action: Callable[[], T], default: T) -> T:
        try:
            return action()
        except Exception as err:  # a broken step must not take the others down
            problems.append(f"{name}: {type(err).__name__}: {err}")
            return default

    privileges = current_privileges()
    model_load = None
    if options.load_model:
        model_load = step("load model", lambda: load_model(
            config.ollama.url, options.load_model or "", options.load_timeout), None)
    observer = HostObserver(config)
    state = observer.refresh(time.time())
    problems += [f"{c.name}: {c.error}" for c in state.collectors if not c.success]
    server = step("server", lambda: server_facts(observer.procfs, state, observer.host_view),
                  None)
    names = step("manifests", lambda: model_names(config, server), BlobNames({}, 0))
    blob = blob_of_model(names, options.load_model) if options.load_model else None
    if model_load is not None and blob is not None:
        state = step("runner", lambda: wait_for_runner(observer, blob), state)
    now = time.time()
    runner_environs = {
        p.process.pid: read_environ(observer.procfs, p.process.pid)
        for p in state.in_group(RUNNER)
    }
    api = step("api", lambda: poll(config.ollama.url, config.ollama.timeout, now), None)
    since = log_since(config, server, now)
    locate = container_locator(observer, server.process.pid if server else None,
                               config.ollama.log)
    log = step("log", lambda: read_log_for(config, options, since, privileges, model_load, blob,
                                           locate),
               LogReadout("", since, error="not read"))
    version, version_from = ollama_version(api, log)
    era = era_of(version)
    if observer.set_ollama_version(version):  # what a runner is expected to map depends on it
        state = observer.snapshot(state.taken_at)
    context = DoctorContext(
        config=config, options=options, now=now, hostname=socket.gethostname(),
        privileges=privileges, state=state, server=server, runner_environs=runner_environs,
        api=api, log=log, version=version, version_from=version_from, era=era, names=names,
        model_load=model_load, model_blob=blob,
    )
    libraries = step("libraries", lambda: _as_server(context, library_facts), None)
    load_test = None
    if options.load_test:
        load_test = step("load test", lambda: load_test_for(context, libraries), None)
    unit = (server.unit if server and server.unit else None) or config.ollama.log.journal_unit \
        or "ollama.service"
    systemd = step("systemd", lambda: unit_status(unit, config.procfs, options.systemctl), None)
    pids = frozenset(p.process.pid for p in state.processes)
    kernel = step("kernel log", lambda: read_kernel_log(observer.procfs.boot_time(), pids,
                                                         options.kmsg), None)
    return replace(context, libraries=libraries, load_test=load_test, systemd=systemd,
                   kernel=kernel, problems=tuple(problems))


def _as_server(ctx: DoctorContext, action: Callable[[DoctorContext], T]) -> T:
    """Run `action` looking at files with the server's rights: it follows paths the server
    names, and must not show what the server's user could not see (linux/fscreds.py)."""
    with acting_as(ctx.server.environ.credentials if ctx.server else None):
        return action(ctx)


def read_environ(procfs: ProcFS, pid: int) -> ProcessEnviron:
    try:
        credentials: Credentials | None = procfs.credentials(pid)
    except (OSError, ProcParseError):
        credentials = None
    try:
        environ = procfs.environ(pid)
    except OSError as err:
        return ProcessEnviron(pid, None, cannot_read("environ", procfs.path(pid, "environ"),
                                                     describe_error(err)),
                              credentials=credentials)
    return ProcessEnviron(pid, relevant(environ), None, environ.get("TMPDIR"), credentials)


def server_facts(procfs: ProcFS, state: HostState, host_view: FileView) -> ServerFacts | None:
    process = server_of(p.process for p in state.processes)
    if process is None:
        return None
    view, same_root, view_note = server_view(procfs, process.pid, host_view)
    exe, exe_note = executable_of(procfs, process)
    try:
        cwd = os.readlink(procfs.path(process.pid, "cwd"))
    except OSError:
        cwd = "/"
    try:
        with open(procfs.path(process.pid, "cgroup"), encoding="utf-8") as handle:
            unit = unit_of_cgroup(handle.read())
    except OSError:
        unit = None
    return ServerFacts(process, read_environ(procfs, process.pid), exe, exe_note, cwd, view,
                       view_note, same_root, unit, ollama_mappings(procfs, process.pid))


def ollama_mappings(procfs: ProcFS, pid: int) -> tuple[str, ...] | None:
    """The files `pid` maps under a ``…/lib/ollama/`` dir (where its install is); None when
    its maps cannot be read."""
    try:
        data = procfs.read(pid, "maps")
    except OSError:
        return None
    selected = select_lines(data, [_LIB_OLLAMA_MAPPED])
    return tuple(sorted({m.path for m in parse_maps(selected)}))


def server_view(procfs: ProcFS, pid: int, host_view: FileView) -> tuple[FileView, bool, str | None]:
    """The server's filesystem: the host's when its root is the host's root, else its own
    through /proc/PID/root (a container)."""
    root = procfs.path(pid, "root")
    try:
        theirs, ours = os.stat(root), os.stat(host_view.root)
    except OSError as err:
        note = (cannot_read("root", root, describe_error(err))
                + "; its paths are looked up in the host's filesystem")
        return host_view, True, note
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        return host_view, True, None
    return (process_view(procfs.root, pid), False,
            f"the server has its own root (a container): its paths are looked up through {root}")


def executable_of(procfs: ProcFS, process: TrackedProcess) -> tuple[str | None, str | None]:
    try:
        exe = procfs.exe(process.pid)
    except OSError as err:
        argv0 = process.cmdline[0] if process.cmdline else None
        why = cannot_read("root", procfs.path(process.pid, "exe"), describe_error(err))
        if argv0 and argv0.startswith("/"):
            return argv0, f"{why}; taken from argv[0]"
        return None, why
    if exe.endswith(DELETED_SUFFIX):
        exe = exe[: -len(DELETED_SUFFIX)]
        return exe, (f"{exe} was replaced or deleted since the server started "
                     "(an upgrade without a restart?)")
    return exe, None


def model_names(config: Config, server: ServerFacts | None) -> BlobNames:
    """Blob -> model names from the manifests, in the server's view and models dir."""
    view = server.view if server else FileView(config.rootfs, "host")
    env = server.environ.variables if server and server.environ.variables else {}
    models_dir = env.get("OLLAMA_MODELS") or config.ollama.models_dir
    return model_names_by_blob(view, models_dir)


def blob_of_model(names: Mapping[str, tuple[str, ...]], model: str | None) -> str | None:
    if not model:
        return None
    wanted = {model, model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"}
    for blob, known in names.items():
        if wanted & set(known):
            return blob
    return None


def wait_for_runner(observer: HostObserver, blob: str) -> HostState:
    deadline = time.monotonic() + RUNNER_WAIT
    while True:
        state = observer.refresh(time.time())
        if any(blob_digest_from_model_arg(p.process.model_arg or "") == blob
               for p in state.in_group(RUNNER)) or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def log_since(config: Config, server: ServerFacts | None, now: float) -> float:
    lookback = max(config.crash_loop.window, LOG_LOOKBACK)
    start = server.process.start_time if server else now - lookback
    return min(start, now - lookback) - 60.0


def read_log_for(config: Config, options: DoctorOptions, since: float, privileges: Privileges,
                 model_load: ModelLoad | None, blob: str | None,
                 locate: Locate | None = None) -> LogReadout:
    """The log; after a model load, read again until the load's outcome is in it (the server
    writes the runner's lines through a pipe, a moment after answering)."""
    deadline = time.monotonic() + RUNNER_WAIT
    while True:
        log = read_log(config.ollama.log, since, privileges, options.journalctl, locate=locate)
        if model_load is None or blob is None or log.error or time.monotonic() > deadline:
            return log
        outcome = (RUNNER_READY, RUNNER_EXITED)
        if any(e.kind in outcome and e.get("model") == blob and e.ts >= model_load.started_at
               for e in log.events):
            return log
        time.sleep(0.2)


def ollama_version(api: OllamaApiState | None,
                   log: LogReadout | None) -> tuple[str | None, str | None]:
    if api is not None and api.up and api.version:
        return api.version, "the API"
    if log is not None:
        versions = [e.get("version") for e in log.events if e.kind == OLLAMA_VERSION]
        if versions and versions[-1]:
            return str(versions[-1]), "the log"
    return None, None


def library_facts(ctx: DoctorContext) -> LibraryFacts | None:
    server = ctx.server
    if server is None:
        return None
    view = server.view
    install = find_install_dir(view, server.environ.variables, server.lib_mappings, server.exe)
    lib_dir = install.path
    environs: dict[str, Mapping[str, str]] = {}
    for pid, env in ctx.runner_environs.items():
        if env.variables is not None:
            environs[f"runner pid {pid}"] = env.variables
    if server.environ.variables is not None:
        environs["the server"] = server.environ.variables
    mapped = {
        path: ctx.runner_label(p.process)
        for p in ctx.runners for path in p.libraries.paths(GGML_CUDA)
    }
    tmpdir = server.environ.tmpdir or "/tmp"
    candidates = find_candidates(view, ctx.era, environs, lib_dir, mapped, tmpdir)
    existing = [c for c in candidates if c.exists][:4]
    shims = shim_files(view, ctx.config)
    executable, exe_note = loadable_executable(view, runner_executable(ctx, server, lib_dir))
    notes = [n for n in (exe_note,) if n]
    resolutions = []
    shown: LoaderEnviron | None = None  # the first candidate's: the one the load test uses
    for candidate in existing:
        loader_env = loader_environ(ctx, candidate.path, lib_dir)
        shown = shown or loader_env
        resolutions.append(resolve_candidate(candidate, view, loader_env.variables, executable,
                                             server.cwd, shims))
    if shown is None:
        shown = loader_environ(ctx, None, lib_dir)
    return LibraryFacts(lib_dir, candidates, tuple(resolutions), shown.variables, shown.whose,
                        shown.known, executable, shims, tuple(notes), install.source,
                        shown.derived)


def shim_files(view: FileView, config: Config) -> dict[FileId, str]:
    """(st_dev, st_ino) of each configured shim file in `view` -> the shim's name."""
    found: dict[FileId, str] = {}
    for spec in config.libraries:
        if spec.name in config.shims and spec.path:
            for identity in file_ids(view, [spec.path]):
                found.setdefault(identity, spec.name)
    return found


def runner_executable(ctx: DoctorContext, server: ServerFacts,
                      lib_dir: str | None) -> str | None:
    """The program that loads the CUDA backend: a running runner's, else ``llama-server`` in
    era G, else the server's own binary (``ollama runner``; eras before 0.5.8 start their own
    runner binaries, which only a running runner shows)."""
    for member in ctx.runners:
        argv0 = member.process.cmdline[0] if member.process.cmdline else ""
        if argv0.startswith("/"):
            return argv0
    era = ctx.era
    if era is not None and era.name == "G" and lib_dir:
        candidate = f"{lib_dir}/llama-server"
        if server.view.exists(candidate):
            return candidate
    return server.exe


@dataclass(frozen=True)
class LoaderEnviron:
    """The variables a runner loads the library with, whose they are, whether they are known
    (False: the server's own could not be read, so only what Ollama adds is there), and the
    process whose rights a test load takes. `derived` is empty for a running runner's own
    variables, else a short note that they were derived from the server's and why."""

    variables: dict[str, str]
    whose: str
    known: bool
    owner: ProcessEnviron | None
    derived: str = ""


def loader_environ(ctx: DoctorContext, library: str | None,
                   lib_dir: str | None) -> LoaderEnviron:
    """A running runner's own where readable, else the runner's derived from the server's as
    Ollama of this version builds it for a runner (docs/ollama.md#environment-variables):
    with no runner alive (say, after one crashed while loading) the server's plain variables
    would miss the install's dirs, and its libraries would look missing."""
    for pid, env in sorted(ctx.runner_environs.items()):
        if env.variables is not None:
            return LoaderEnviron(dict(env.variables), f"runner pid {pid}", True, env)
    owner = ctx.server.environ if ctx.server else None
    server_env = ctx.server_environ
    known = server_env is not None
    base = dict(server_env or {})
    era = ctx.era or LATEST
    if era.name == "B":  # the server loads the backend itself
        whose = ("the server's environment" if known
                 else "an assumed environment (the server's could not be read)")
        return LoaderEnviron(base, f"{whose}: Ollama {ctx.version or ''} loads the CUDA "
                             "backend into the server itself".replace("  ", " "), known, owner)
    cuda_dir = os.path.dirname(library) if library else None
    derived = eras.runner_environment(era, ctx.version, base, lib_dir, cuda_dir)
    why = "no runner is running" if not ctx.runners else \
        "no runner's environment could be read"
    ollama = (f"Ollama {ctx.version}" if ctx.version
              else f"Ollama of {era.title} (the version is unknown)")
    source = "the server's" if known else \
        "an assumed server environment (the server's could not be read)"
    whose = f"the runner's environment, derived from {source} as {ollama} builds it: {why}"
    if lib_dir is None and at_least(ctx.version or LATEST.first, "0.3.7"):
        whose += " (the install dir was not found: its dirs are left out)"
    return LoaderEnviron(derived, whose, known, owner, f"derived from the server's: {why}")


def load_test_for(ctx: DoctorContext, libraries: LibraryFacts | None) -> LoadTestResult | None:
    if libraries is None or ctx.server is None:
        return None
    target = next((r for r in libraries.resolutions if r.resolution is not None), None)
    if target is None:
        return None
    env = loader_environ(ctx, target.path, libraries.lib_dir)
    owner = env.owner or ctx.server.environ
    credentials_from = ("the server" if owner.pid == ctx.server.process.pid else "runner") \
        + f" pid {owner.pid}"
    skipped = LoadTestResult(target.path, env.variables, env.whose, env.known,
                             owner.credentials, credentials_from)
    if not ctx.server.same_root:
        return replace(skipped, skipped="the server runs in its own filesystem (a container); "
                                        "a child of the doctor would load the host's files")
    if not ctx.server.view.is_identity:
        return replace(skipped, skipped=f"the host's filesystem is mounted at "
                                        f"{ctx.server.view.root} (rootfs:): a child of the "
                                        "doctor would load its own files, not the host's")
    return run_load_test(target.path, env.variables, env.whose, owner.credentials,
                         credentials_from, timeout=ctx.options.load_test_timeout,
                         environ_known=env.known)
