"""Ollama: the server process, its restarts (log and systemd), its API, its version and era."""

from __future__ import annotations

from vgpumon.config.schema import SERVER
from vgpumon.doctor.context import DoctorContext
from vgpumon.doctor.eras import LATEST
from vgpumon.doctor.report import Check, fail, ok, skip, warn
from vgpumon.doctor.text import ago, duration, listing, plural, size, when
from vgpumon.model import events as ev

TITLE = "Ollama"


def checks(ctx: DoctorContext) -> list[Check]:
    return [server(ctx), systemd(ctx), restarts(ctx), api(ctx), version(ctx)]


def server(ctx: DoctorContext) -> Check:
    servers = ctx.servers
    group = ctx.config.group(SERVER) if any(
        g.name == SERVER for g in ctx.config.groups) else None
    if not servers or ctx.server is None:
        patterns = []
        if group is not None:
            patterns = [f"{k} ~ {p.pattern}" for k, p in
                        (("comm", group.comm), ("exe", group.exe), ("cmdline", group.cmdline))
                        if p is not None]
        return fail("ollama.server", "no `ollama serve` process runs",
                    "start Ollama (systemctl start ollama, or its container) and read why it "
                    "stopped: journalctl -u ollama -n 50, or its log file",
                    [f"looked in {ctx.config.procfs} for group server: {', '.join(patterns)}"])
    facts = ctx.server
    main = facts.process
    evidence = [f"pid {p.process.pid}: {' '.join(p.process.cmdline)} (started "
                f"{when(p.process.start_time)}, parent pid {p.process.ppid})" for p in servers]
    evidence.append(f"executable: {facts.exe or 'unknown'}")
    evidence += [note for note in (facts.exe_note, facts.view_note) if note]
    if facts.unit:
        evidence.append(f"systemd unit (from /proc/{main.pid}/cgroup): {facts.unit}")
    finding = (f"pid {main.pid}, up {duration(ctx.now - main.start_time)} "
               f"(since {when(main.start_time)})")
    if len(servers) > 1:
        return warn("ollama.server",
                    f"{len(servers)} `ollama serve` processes; the doctor examines the oldest, "
                    + finding,
                    "stop the servers you do not mean to run, or point a separate vgpumon "
                    "config (ollama.url, groups) at each", evidence)
    if facts.exe_note and "replaced" in facts.exe_note:
        return warn("ollama.server", f"1 `ollama serve` process: {finding}; its executable "
                    "was replaced on disk", "restart Ollama so it runs the installed version",
                    evidence)
    return ok("ollama.server", f"1 `ollama serve` process: {finding}", evidence)


def systemd(ctx: DoctorContext) -> Check:
    status = ctx.systemd
    if status is None:
        return skip("ollama.systemd", "systemd was not asked (see doctor.gathering)")
    if status.skipped:
        return skip("ollama.systemd", f"not asked: {status.skipped}")
    unit = status.unit
    if status.error:
        return warn("ollama.systemd", f"cannot ask systemd about {unit}: {status.error}",
                    f"run systemctl status {unit} by hand", [])
    if not status.loaded:
        return skip("ollama.systemd", f"{unit} is not a loaded unit "
                    f"(LoadState={status.get('LoadState')}): Ollama is not run by systemd here")
    active, result = status.get("ActiveState"), status.get("Result")
    restarts, last_exit = status.restarts, status.last_exit
    evidence = [f"{key}={status.get(key)}" for key in
                ("ActiveState", "SubState", "Result", "NRestarts", "ExecMainCode",
                 "ExecMainStatus", "MainPID", "ExecMainStartTimestamp")
                if status.get(key) is not None]
    if last_exit:
        evidence.append(f"last exit of the main process: {last_exit}")
    if active == "failed" or (result not in (None, "success")):
        hint = (" (the OOM killer: a runner's OOM kill stops the whole unit with the default "
                "OOMPolicy=stop)" if result == "oom-kill" else "")
        return fail("ollama.systemd", f"{unit} is {active}, result {result}{hint}",
                    f"read why: journalctl -u {unit} -n 100 and systemctl status {unit}; fix "
                    f"it, then systemctl restart {unit}", evidence)
    if restarts:
        return warn("ollama.systemd",
                    f"{unit} is {active}, but systemd restarted it {plural(restarts, 'time')} "
                    f"since the unit was loaded (last exit: {last_exit or 'unknown'})",
                    f"Restart= hides crashes: find them in journalctl -u {unit} before each "
                    "'Listening on' line", evidence)
    return ok("ollama.systemd", f"{unit} is {active} ({status.get('SubState')}), "
              "no automatic restarts", evidence)


def restarts(ctx: DoctorContext) -> Check:
    log = ctx.log
    if log is None or not log.enabled or log.error:
        return skip("ollama.restarts", "the log was not read (see log.source)")
    starts = [e for e in log.events if e.kind == ev.OLLAMA_VERSION]
    window = ctx.config.crash_loop.window
    recent = [e for e in starts if e.ts >= ctx.now - window]
    evidence = [f"{when(e.ts)}: Listening on … (version {e.get('version')})" for e in starts]
    if len(recent) >= ctx.config.crash_loop.crashes:
        return fail("ollama.restarts",
                    f"the server started {len(recent)} times in the last {duration(window)}: "
                    "it is restarting in a loop",
                    "read the lines before each 'Listening on' in the log: they say why it "
                    "exited (a crash trace, an OOM kill, a bad setting)", evidence)
    if not starts:
        return ok("ollama.restarts", f"no server start in the log since {when(log.since)}")
    last = starts[-1]
    return ok("ollama.restarts",
              f"{plural(len(starts), 'server start')} in the log since {when(log.since)}, the "
              f"last {ago(last.ts, ctx.now)}", evidence)


def api(ctx: DoctorContext) -> Check:
    url = ctx.config.ollama.url
    state = ctx.api
    if state is None:
        return skip("ollama.api", "the API was not asked (see doctor.gathering)")
    if state.up and state.models is None:
        return ok("ollama.api", f"{url} answers: version {state.version}; it has no /api/ps "
                  "(Ollama before 0.1.38), so which models are loaded comes from the processes")
    if state.up and state.models is not None:
        evidence = [f"{m.name}: {size(m.size_vram)} of {size(m.size)} in VRAM"
                    f" ({_share(m.size_vram, m.size)}), expires "
                    f"{when(m.expires_at) if m.expires_at else 'never'}" for m in state.models]
        loaded = listing([m.name for m in state.models])
        return ok("ollama.api", f"{url} answers: version {state.version}, "
                  f"{plural(len(state.models), 'model')} loaded"
                  + (f" ({loaded})" if state.models else ""), evidence)
    if state.garbled:
        return fail("ollama.api", f"{url} answers, but not like Ollama: {state.error}",
                    "check that ollama.url in the vgpumon config points at Ollama itself")
    env = ctx.server_environ or {}
    host = env.get("OLLAMA_HOST")
    evidence = [f"OLLAMA_HOST of the server: {host}"] if host else []
    return fail("ollama.api", f"{url} does not answer: {state.error}",
                "if the server runs, make ollama.url in the vgpumon config match its "
                "OLLAMA_HOST; otherwise start it", evidence)


def version(ctx: DoctorContext) -> Check:
    if ctx.version is None:
        return warn("ollama.version", "Ollama's version is unknown (the API does not answer "
                    "and the log has no 'Listening on' line)",
                    "make the API reachable (ollama.api) or the log readable (log.source); the "
                    f"checks assume the newest behaviour ({LATEST.title})")
    if ctx.era is None:
        return warn("ollama.version", f"Ollama {ctx.version} (from {ctx.version_from}): a "
                    "source build or an unknown version, so its era is unknown",
                    f"the checks assume the newest behaviour ({LATEST.title}); run a release "
                    "build to get era-specific advice")
    era = ctx.era
    holder = "`ollama serve` itself" if era.cuda_holder == "server" else "each model runner"
    return ok("ollama.version",
              f"Ollama {ctx.version} (from {ctx.version_from}): {era.title}",
              [f"CUDA code in {era.cuda_library}, mapped by {holder}",
               f"the server itself maps: {era.server_gpu}",
               f"GPU discovery by {era.discovery}"])


def _share(part: int | None, whole: int) -> str:
    if not whole or part is None:
        return "?"
    return f"{100 * part / whole:.0f}%"
