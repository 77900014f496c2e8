"""Shims: the shim files, the links to them, what each process group has mapped or lacks,
bypass (the real driver without a shim) and stale mappings (files replaced since loaded).

Everything comes from the observer's `HostState`, the snapshot the daemon exports too.
"""

from __future__ import annotations

from vgpumon.config.schema import DISCOVERY, RUNNER, SERVER
from vgpumon.doctor.context import DoctorContext
from vgpumon.doctor.privileges import NEEDED_FOR, is_permission_problem, needs, remedy
from vgpumon.doctor.report import Check, fail, ok, skip, warn
from vgpumon.doctor.text import listing, plural
from vgpumon.snapshot.host import ProcessState
from vgpumon.sources import links as ln

TITLE = "Shims"
RESTART = "restart Ollama (systemctl restart ollama) so every process loads it afresh"


def checks(ctx: DoctorContext) -> list[Check]:
    out = [files(ctx), links(ctx)]
    out += [group(ctx, g.name) for g in ctx.config.groups]
    out += [bypass(ctx), stale(ctx)]
    return out


def files(ctx: DoctorContext) -> Check:
    found = {f.library: f for f in ctx.state.library_files}
    evidence, missing, unknown = [], [], []
    for name in ctx.config.shims:
        spec = ctx.config.library(name)
        if spec.path is None:
            evidence.append(f"{name}: recognised by name ({spec.glob}), no file to check")
            continue
        file = found.get(name)
        if file is None or (not file.present and file.error):
            unknown.append(f"{name}: {spec.path}: {file.error if file else 'not checked'}")
        elif not file.present:
            missing.append(f"{name}: {spec.path} does not exist")
        else:
            shown = spec.path if file.resolved == spec.path else f"{spec.path} -> {file.resolved}"
            evidence.append(f"{name}: {shown} (inode {file.inode})")
    if missing:
        return fail("shims.files", f"{plural(len(missing), 'shim file')} missing: "
                    f"{listing([m.split(':')[0] for m in missing])}",
                    "install the vGPU shim libraries (or correct libraries: in the vgpumon "
                    "config), then restart Ollama", missing + unknown + evidence)
    if unknown:
        return warn("shims.files", f"{plural(len(unknown), 'shim file')} could not be checked",
                    "see the error; a path in the server's view needs the server running and "
                    + NEEDED_FOR["root"] + " (or root)", unknown + evidence)
    return ok("shims.files", f"all {plural(len(evidence), 'shim')} present", evidence)


def links(ctx: DoctorContext) -> Check:
    states = ctx.state.links
    if not states:
        return skip("shims.links", "no links configured (links: in the vgpumon config)")
    broken, unknown, evidence = [], [], []
    for link in states:
        line = f"{link.path} -> {link.target}" if link.target else link.path
        if link.state == ln.OK:
            evidence.append(f"{line} (ok: {link.resolved})")
        elif link.state is None:
            unknown.append(link)
            evidence.append(f"{link.path}: cannot check: {link.error}")
        else:
            broken.append(link)
            evidence.append(f"{line}: {_describe(link)}")
    if broken:
        first = broken[0]
        finding = (f"{plural(len(broken), 'shim link')} of {len(states)} broken: {first.path} "
                   f"{_describe(first)}")
        action = "; ".join(f"ln -sfn {link.expected} {link.path}" for link in broken)
        return fail("shims.links", finding, f"point the link(s) back at the shim: {action}; "
                    "then " + RESTART, evidence)
    if unknown:
        return warn("shims.links", f"{plural(len(unknown), 'link')} could not be checked",
                    "links in the server's view need it running and " + NEEDED_FOR["root"]
                    + " (or root)",
                    evidence)
    return ok("shims.links", f"all {plural(len(states), 'link')} point at their shims",
              evidence)


def _describe(link: ln.ShimLinkState) -> str:
    return {
        ln.MISSING: f"does not exist (should point at {link.expected})",
        ln.NOT_SYMLINK: f"is a regular file, not a link to {link.expected}",
        ln.WRONG_TARGET: f"points at {link.resolved or link.target}, not at {link.expected}",
        ln.DANGLING: f"points at {link.target}, which does not exist (should be "
                     f"{link.expected})",
    }.get(link.state or "", f"is in state {link.state}")


def group(ctx: DoctorContext, name: str) -> Check:
    """Each member maps what it is expected to (the same judgement as the daemon's
    ``vgpumon_processes_missing_library``: explicit ``expect:``, or derived from how each shim
    reaches the process)."""
    check_id = f"shims.group.{name}"
    members = ctx.group(name)
    if not members:
        return _empty_group(check_id, name)
    unreadable, lacking, evidence = [], [], []
    expected_anywhere: dict[str, None] = {}
    for member in members:
        label = _label(ctx, member)
        libs = member.libraries
        if not libs.readable:
            unreadable.append(member)
            hint = f"; {needs('maps')}" if is_permission_problem(libs.error) else ""
            evidence.append(f"{label}: cannot read /proc/{member.process.pid}/maps "
                            f"({libs.error}){hint}: not evidence that anything is missing")
            continue
        expected = [e.library for e in member.expected]
        expected_anywhere.update(dict.fromkeys(expected))
        missing = [lib for lib in expected if not libs.mapped(lib)]
        mapped = sorted({m.library for m in libs.mappings})
        why = ", ".join(f"{e.library} ({e.because})" for e in member.expected) or "nothing"
        text = f"{label}: maps {listing(mapped, 8)}; expected: {why}"
        if member.preload_failed:
            text += (f"; the loader was told to preload {listing(list(member.preload_failed))}"
                     " and it is not mapped (the preload failed)")
        if missing:
            lacking.append((member, missing))
            text += f"; missing {listing(missing, 8)}"
        evidence.append(text)
    if lacking:
        member, missing = lacking[0]
        verb = "lacks" if len(lacking) == 1 else "lack"
        return fail(check_id, f"{plural(len(lacking), 'process', 'processes')} of group {name} "
                    f"{verb} expected libraries: {_label(ctx, member)} has no "
                    f"{listing(missing)} mapped", _missing_action(ctx, name, missing), evidence)
    expect = list(expected_anywhere)
    if unreadable:
        count = plural(len(unreadable), "process", "processes")
        return warn(check_id, f"cannot read the maps of {count} of group {name} (so whether "
                    "they map what they should is unknown)", remedy("maps"), evidence)
    count = plural(len(members), "process", "processes")
    if not expect:
        return ok(check_id, f"{count} of group {name} (no libraries expected: no shim is "
                  "preloaded into it or reaches it by a link)", evidence)
    verb = "maps" if len(members) == 1 else "map"
    return ok(check_id, f"{count} of group {name} {verb} every expected library "
              f"({listing(expect, 8)})", evidence)


def _empty_group(check_id: str, name: str) -> Check:
    if name == SERVER:
        return skip(check_id, "no server process (see ollama.server)")
    if name == RUNNER:
        return ok(check_id, "no model runner runs: expected until a model is loaded "
                  "(--load-model NAME loads one and checks it)")
    if name == DISCOVERY:
        return ok(check_id, "no discovery probe runs now (they live for seconds at start-up)")
    return ok(check_id, f"no process in group {name}")


def _missing_action(ctx: DoctorContext, group_name: str, missing: list[str]) -> str:
    steps = []
    shims = [m for m in missing if m in ctx.config.shims]
    if shims:
        steps.append("make the shims reach the process: list them in LD_PRELOAD of the Ollama "
                     "service (systemctl edit ollama) or fix the links (shims.links), then "
                     "restart Ollama")
    others = [m for m in missing if m not in ctx.config.shims]
    if others and group_name == RUNNER:
        steps.append(f"{listing(others)} did not load in the runner: see libraries.dependencies "
                     "and loadtest.dlopen for why")
    elif others:
        steps.append(f"{listing(others)} is not mapped: see libraries.* and loadtest.*")
    return "; ".join(steps)


def bypass(ctx: DoctorContext) -> Check:
    """A process that expects a shim gets the real library it stands for: the daemon's
    ``vgpumon_processes_bypassing_shim`` and the VgpuShimBypassed alert, judged the same way
    (vgpumon/snapshot/expectations.py)."""
    found = []
    for member in ctx.state.processes:
        for gone_around in member.bypasses:
            real = [m.path for m in member.libraries.mappings if m.library == gone_around.real]
            shim = f"the {gone_around.shim} shim" if gone_around.shim else "every shim"
            found.append(f"{_label(ctx, member)} maps {listing(real)} ({gone_around.real}): "
                         f"{shim} is bypassed, {gone_around.why}")
    if found:
        verb = "goes" if len(found) == 1 else "go"
        return fail("shims.bypass", f"{plural(len(found), 'process', 'processes')} {verb} "
                    "around the vGPU shim: " + found[0],
                    "a link that resolves to the real library: point it back at the shim "
                    "(shims.links); shadowed by the real library's SONAME: preload a shim that "
                    "carries that SONAME, or reach the shim through the links instead of "
                    "LD_PRELOAD; then restart Ollama", found)
    return ok("shims.bypass", "no process that expects a shim maps the real library instead")


def stale(ctx: DoctorContext) -> Check:
    found = []
    for member in ctx.state.processes:
        for mapping in member.libraries.mappings:
            if mapping.stale:
                how = "deleted or replaced" if mapping.deleted else "replaced"
                found.append(f"{_label(ctx, member)}: {mapping.library} {mapping.path} "
                             f"({how} on disk since it was loaded)")
    if found:
        return warn("shims.stale", f"{plural(len(found), 'mapping')} of files changed on disk "
                    "since they were loaded: those processes still run the old code; "
                    + found[0], RESTART, found)
    return ok("shims.stale", "no process maps a library that was replaced since it was loaded")


def _label(ctx: DoctorContext, member: ProcessState) -> str:
    process = member.process
    if process.group == RUNNER:
        return ctx.runner_label(process)
    return f"{process.group} pid {process.pid}"
