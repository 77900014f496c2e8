"""The doctor's pure parts: parsers, era table, report model, and checks on handmade contexts."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import pytest

from vgpumon.config.schema import Config
from vgpumon.doctor import build_report
from vgpumon.doctor.checks import environment, log, ollama
from vgpumon.doctor.context import DoctorContext, DoctorOptions, relevant
from vgpumon.doctor.eras import era_of, runner_environment
from vgpumon.doctor.kmsg import _record
from vgpumon.doctor.libsearch import find_candidates, glob_in_view
from vgpumon.doctor.loadtest import run_load_test
from vgpumon.doctor.logread import LogReadout, interpret
from vgpumon.doctor.modelload import parse_answer, request_body
from vgpumon.doctor.privileges import (
    CAP_SYS_PTRACE,
    CAP_SYSLOG,
    Privileges,
    cannot_read,
    is_permission_problem,
    parse_capability_mask,
    parse_status_capabilities,
)
from vgpumon.doctor.render import render_json, render_text
from vgpumon.doctor.report import Check, Report, Section, Status, fail, ok, uncertain, warn
from vgpumon.doctor.systemd import UnitStatus, parse_show, unit_of_cgroup, unit_status
from vgpumon.linux.paths import HOST
from vgpumon.linux.procfs import Credentials
from vgpumon.model.events import Event
from vgpumon.snapshot.host import HostState

ROOT = Privileges(0, 0, ("root",), frozenset(range(41)))


def context(**fields) -> DoctorContext:
    base = DoctorContext(config=Config(), options=DoctorOptions(), now=time.time(),
                         hostname="h", privileges=ROOT, state=HostState(taken_at=0.0))
    return replace(base, **fields)


# -- systemd ---------------------------------------------------------------------------------


SHOW = """NRestarts=4
ExecMainCode=1
ExecMainStatus=2
Result=exit-code
ActiveState=activating
SubState=auto-restart
LoadState=loaded
ExecMainStartTimestamp=Tue 2025-06-10 08:15:02 UTC
Environment=A=b C=d
"""


def test_parse_show_keeps_values_with_equals():
    props = parse_show(SHOW)
    assert props["NRestarts"] == "4" and props["Environment"] == "A=b C=d"
    status = UnitStatus("ollama.service", props)
    assert status.restarts == 4 and status.loaded
    assert status.last_exit == "exit status 2"


@pytest.mark.parametrize(("code", "status", "text"), [
    ("0", "0", None), ("1", "0", "exit status 0"), ("2", "9", "signal 9"),
    ("3", "11", "signal 11, core dumped"), ("1", "203", "exit status 203 (could not exec)"),
])
def test_last_exit_in_words(code, status, text):
    assert UnitStatus("u", {"ExecMainCode": code, "ExecMainStatus": status}).last_exit == text


@pytest.mark.parametrize(("text", "unit"), [
    ("0::/system.slice/ollama.service\n", "ollama.service"),
    ("0::/system.slice/docker-abc.scope\n", None),
    ("12:memory:/x\n1:name=systemd:/system.slice/ollama.service\n", "ollama.service"),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.service\n", "x.service"),
    ("", None),
])
def test_unit_of_cgroup(text, unit):
    assert unit_of_cgroup(text) == unit


def test_systemd_is_skipped_when_it_is_not_pid_1(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "comm").write_text("tini\n")
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("this host runs systemd")
    status = unit_status("ollama.service", str(tmp_path))
    assert status.skipped and "'tini', not systemd" in status.skipped


def test_a_unit_name_from_a_cgroup_is_never_taken_as_an_option(tmp_path):
    """A delegated user names its own cgroups: ``--help.service`` must reach systemctl as a
    unit name (after ``--``), not as an option."""
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "comm").write_text("systemd\n")
    argv_file = tmp_path / "argv"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {argv_file}\n"
                         "echo LoadState=loaded\n")
    systemctl.chmod(0o755)
    status = unit_status("--help.service", str(tmp_path), str(systemctl))
    argv = argv_file.read_text().splitlines()
    assert argv[0] == "show" and argv[-2:] == ["--", "--help.service"]
    assert all(arg.startswith("--") for arg in argv[1:-2])
    assert status.properties.get("LoadState") == "loaded"


@pytest.mark.parametrize(("props", "expected", "words"), [
    ({"LoadState": "loaded", "ActiveState": "active", "SubState": "running",
      "Result": "success", "NRestarts": "0"}, Status.OK, "no automatic restarts"),
    ({"LoadState": "loaded", "ActiveState": "active", "Result": "success", "NRestarts": "3",
      "ExecMainCode": "1", "ExecMainStatus": "2"}, Status.WARN, "restarted it 3 times"),
    ({"LoadState": "loaded", "ActiveState": "failed", "Result": "oom-kill"}, Status.FAIL,
     "OOM killer"),
    ({"LoadState": "not-found"}, Status.SKIP, "not a loaded unit"),
])
def test_systemd_check(props, expected, words):
    check = ollama.systemd(context(systemd=UnitStatus("ollama.service", props)))
    assert check.status is expected and words in check.finding


# -- eras --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "era"), [
    ("0.1.17", "A"), ("0.1.18", "B"), ("0.1.31", "B"), ("0.1.32", "C"), ("0.3.14", "C"),
    ("0.4.0", "D1"), ("0.5.1", "D1"), ("0.5.2", "D2"), ("0.5.7", "D2"), ("0.5.8", "E"),
    ("0.9.6", "E"), ("0.12.3", "E"), ("0.12.4", "F"), ("0.13.5", "F"), ("0.24.1", "F"),
    ("0.27.0", "F"), ("0.30.0", "G"), ("0.33.2", "G"), ("1.2.0", "G"), ("0.13.0-rc1", "F"),
    ("v0.9.6", "E"), ("0.0.0", None), ("dev", None), ("", None), (None, None),
])
def test_era_of(version, era):
    found = era_of(version)
    assert (found.name if found else None) == era


def test_runner_environment_per_era():
    server = {"LD_LIBRARY_PATH": "/usr/lib64", "OLLAMA_HOST": "x"}
    lib, cuda = "/usr/local/lib/ollama", "/usr/local/lib/ollama/cuda_v12"
    e = runner_environment(era_of("0.9.6"), "0.9.6", server, lib, cuda)
    assert e["LD_LIBRARY_PATH"] == f"{cuda}:{lib}:/usr/lib64"
    assert e["OLLAMA_LIBRARY_PATH"] == f"{lib}:{cuda}"
    assert "OLLAMA_LIBRARY_PATH" not in runner_environment(era_of("0.6.0"), "0.6.0", server, lib,
                                                           cuda)
    f = runner_environment(era_of("0.13.5"), "0.13.5", {}, lib, cuda)
    assert f["LD_LIBRARY_PATH"] == f"{lib}:{cuda}"
    g = runner_environment(era_of("0.31.0"), "0.31.0", server, lib, cuda)
    assert g["GGML_BACKEND_PATH"] == f"{cuda}/libggml-cuda.so"
    assert "OLLAMA_LIBRARY_PATH" not in g
    assert server == {"LD_LIBRARY_PATH": "/usr/lib64", "OLLAMA_HOST": "x"}  # not modified


def test_relevant_variables_only():
    env = {"OLLAMA_HOST": "a", "LD_PRELOAD": "b", "CUDA_VISIBLE_DEVICES": "", "HOME": "/",
           "AWS_SECRET_ACCESS_KEY": "s", "GGML_BACKEND_PATH": "g", "LD_LIBRARY_PATH": "l",
           "OLLAMA": "no underscore"}
    assert relevant(env) == {"CUDA_VISIBLE_DEVICES": "", "GGML_BACKEND_PATH": "g",
                             "LD_LIBRARY_PATH": "l", "LD_PRELOAD": "b", "OLLAMA_HOST": "a"}


# -- privileges --------------------------------------------------------------------------------


def test_capability_masks():
    assert parse_capability_mask("0000000000080000") == {CAP_SYS_PTRACE}
    assert parse_capability_mask("0") == frozenset()
    caps = parse_status_capabilities(b"Name:\tx\nCapInh:\t0\nCapEff:\t000001ffffffffff\n")
    assert CAP_SYSLOG in caps and len(caps) == 41
    nobody = Privileges(65534, 65534, ("nogroup",), frozenset())
    assert not nobody.root and not nobody.can_read_journal and len(nobody.missing) == 3
    assert Privileges(1000, 1000, ("adm",), frozenset()).can_read_journal


def test_cannot_read_names_the_privilege_only_for_permission_errors():
    assert cannot_read("maps", "/proc/1/maps", "Permission denied") == (
        "cannot read /proc/1/maps (Permission denied); needs CAP_SYS_PTRACE (or root)")
    assert cannot_read("maps", "/proc/1/maps", "No such file or directory") == (
        "cannot read /proc/1/maps (No such file or directory)")
    assert is_permission_problem(PermissionError(13, "Permission denied"))
    assert is_permission_problem("Operation not permitted")
    assert not is_permission_problem(FileNotFoundError(2, "x")) and not is_permission_problem(None)


# -- the report --------------------------------------------------------------------------------


def test_warn_and_fail_need_an_action():
    with pytest.raises(ValueError, match="needs an action"):
        Check("x.y", Status.FAIL, "broken")
    with pytest.raises(ValueError):
        Check("x.y", "warn", "odd", action="")
    assert Check("x.y", "ok", "fine").status is Status.OK


def test_report_counts_exit_code_and_round_trip():
    report = Report(
        (Section("A", (ok("a.one", "fine", ["e1"]), warn("a.two", "odd", "look"))),
         Section("B", (fail("b.one", "broken", "fix it", ["p", "q"]),))),
        generated_at=1.5, hostname="h", config="/etc/x.yaml", version="0.1.0",
        facts={"era": "F"})
    assert report.counts == {"ok": 1, "warn": 1, "fail": 1, "skip": 0}
    assert report.exit_code == 1
    assert Report.from_dict(json.loads(render_json(report))) == report
    text = render_text(report)
    assert "  [FAIL] b.one: broken" in text and "next: fix it" in text
    assert text.rstrip().endswith("a.two: odd")
    assert "Summary: 1 ok, 1 warn, 1 fail, 0 skip." in text
    healthy = Report((Section("A", (ok("a.one", "fine"),)),), 0.0)
    assert healthy.exit_code == 0 and "Nothing failed." in render_text(healthy)


def test_uncertain_turns_a_fail_into_a_warn_that_says_why():
    check = uncertain(fail("x.y", "broken", "fix"), "assumed", "look closer")
    assert check.status is Status.WARN
    assert check.finding == "broken (assumed)" and check.action == "look closer; then: fix"
    assert uncertain(ok("x.y", "fine"), "a", "b") == ok("x.y", "fine")


def test_a_check_that_raises_becomes_a_warning(monkeypatch):
    def broken(ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(log, "checks", broken)
    report = build_report(context())
    check = report.check("log.error")
    assert check is not None and check.status is Status.WARN and "boom" in check.finding


# -- model load ---------------------------------------------------------------------------------


def test_generate_request_and_answers():
    assert request_body("m:1") == {"model": "m:1", "prompt": "", "keep_alive": "30s"}
    assert parse_answer(b'{"model":"m","done":true,"done_reason":"load"}') == (None, "load")
    streamed = b'{"model":"m","done":false}\n{"model":"m","done":true,"done_reason":"load"}\n'
    assert parse_answer(streamed) == (None, "load")
    assert parse_answer(b'{"error":"llama runner process has terminated: exit status 2"}') == (
        "llama runner process has terminated: exit status 2", None)
    assert parse_answer(b"<html>")[0].startswith("unexpected answer")


# -- log checks on synthetic events --------------------------------------------------------------


def _log_ctx(events, now=None, **config):
    readout = LogReadout("file /x.log", 0.0, len(events), tuple(events))
    return context(log=readout, now=now or time.time(), config=replace(Config(), **config))


def test_offload_grades_name_the_worst_model():
    t = time.time()
    events = [
        Event(t - 30, "offload", {"model": "a" * 64, "gpu_layers": 29, "total_layers": 29,
                                  "estimate": False}),
        Event(t - 20, "offload", {"model": "b" * 64, "gpu_layers": 10, "total_layers": 29,
                                  "estimate": False}),
    ]
    ctx = _log_ctx(events)
    check = log.offload(replace(ctx, names={"b" * 64: ("big:70b",)}), events)
    assert check.status is Status.WARN and "big:70b" in check.finding and "10/29" in check.finding
    events.append(Event(t - 10, "offload", {"model": "c" * 64, "gpu_layers": 0,
                                            "total_layers": 29, "estimate": False}))
    check = log.offload(ctx, tuple(events))
    assert check.status is Status.FAIL and "blob cccccccccccc runs on the CPU" in check.finding


def test_crash_loop_needs_the_threshold_within_the_window():
    t = time.time()

    def crash(ts):
        return Event(ts, "runner_exited", {"reason": "crash", "model": "d" * 64,
                                           "message": "exit status 2"})

    old = [crash(t - 3600 - i) for i in range(5)]
    assert log.crashes(_log_ctx(old, now=t)).status is Status.WARN  # no server: all count
    recent = [crash(t - 60 * i) for i in range(3)]
    check = log.crashes(_log_ctx(old + recent, now=t))
    assert check.status is Status.FAIL and "3 runner crashes in the last 10m" in check.finding
    repeat = Event(t, "runner_exited", {"reason": "crash", "repeat": True})
    stopped = Event(t, "runner_exited", {"reason": "stopped"})
    assert log.crashes(_log_ctx([repeat, stopped], now=t)).status is Status.OK


def test_discovery_from_a_real_log_line():
    line = (b'time=2025-11-20T09:01:44.870+01:00 level=INFO source=types.go:42 msg="inference '
            b'compute" id=cpu library=cpu compute="" name=cpu description=cpu libdirs=ollama '
            b'driver="" pci_id="" type="" total="31.0 GiB" available="28.2 GiB"')
    events = interpret([line], "plain")
    check = log.discovery(_log_ctx(events), events)
    assert check.status is Status.FAIL and "no usable GPU" in check.finding


# -- environment values ------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "status"), [
    ("", Status.FAIL), (" , ", Status.FAIL), ("-1", Status.FAIL), ("0", Status.OK),
    ("GPU-076afa50-fc31-49ca-be1d-f9e53480fe75", Status.OK), ("0,1", Status.OK),
])
def test_cuda_visible_devices(value, status):
    assert environment.visible(context(version="0.13.5"), value, HOST).status is status


def test_cpu_llm_library_is_a_warning():
    check = environment.llm_library(context(version="0.13.5"), "cpu_avx2", HOST)
    assert check.status is Status.WARN and "forces the CPU" in check.finding


# -- library search -----------------------------------------------------------------------------


def test_candidates_from_the_library_path_and_the_install(tmp_path):
    lib = tmp_path / "usr/local/lib/ollama"
    for d in ("cuda_v12", "cuda_v13"):
        (lib / d).mkdir(parents=True)
        (lib / d / "libggml-cuda.so").write_bytes(b"\x7fELF")
    other = tmp_path / "opt/ollama/lib"
    other.mkdir(parents=True)
    assert glob_in_view(HOST, f"{lib}/cuda_v*/libggml-cuda.so") == [
        f"{lib}/cuda_v12/libggml-cuda.so", f"{lib}/cuda_v13/libggml-cuda.so"]
    found = find_candidates(HOST, era_of("0.13.5"),
                            {"the server": {"OLLAMA_LIBRARY_PATH": f"{lib}/cuda_v13:{other}"}},
                            str(lib), {})
    assert [(c.path, c.via, c.exists) for c in found] == [
        (f"{lib}/cuda_v13/libggml-cuda.so", "OLLAMA_LIBRARY_PATH of the server", True),
        (f"{lib}/cuda_v12/libggml-cuda.so", "next to the server's executable", True),
    ]
    g = find_candidates(HOST, era_of("0.31.0"),
                        {"runner pid 7": {"GGML_BACKEND_PATH": f"{other}/libggml-cuda.so"}},
                        None, {})
    assert [(c.via, c.exists) for c in g] == [("GGML_BACKEND_PATH of runner pid 7", False)]


# -- the load test child ---------------------------------------------------------------------------


def test_load_test_reports_the_loader_error_and_the_mappings(build, tmp_path):
    dep = build.so("lib/libdep.so", "-Wl,-soname,libdep.so")
    top = build.so("lib/libtop.so", "-Wl,-soname,libtop.so", f"-L{dep.parent}", "-ldep",
                   "-Wl,-rpath,$ORIGIN")
    mine = Credentials(os.geteuid(), os.getegid(), tuple(os.getgroups()))
    result = run_load_test(str(top), {}, "test", mine, "test")
    assert result.ok and result.error is None
    assert {m.path for m in result.loaded} >= {str(top), str(dep)}
    dep.unlink()
    broken = run_load_test(str(top), {"LD_PRELOAD": str(tmp_path / "nope.so")}, "test",
                           mine, "test")
    assert not broken.ok
    assert "libdep.so: cannot open shared object file" in (broken.error or "")
    assert any("nope.so" in m and "LD_PRELOAD" in m for m in broken.loader_messages)
    missing_python = run_load_test(str(top), {}, "test", mine, "test",
                                   pythons=[str(tmp_path / "no-python")])
    assert missing_python.skipped and "no Python interpreter" in missing_python.skipped
    assert "no-python: No such file or directory" in missing_python.skipped


# -- kernel records ------------------------------------------------------------------------------


def test_kernel_records_of_ollama_processes():
    seg = (b"6,912,88231004,-;ollama[51207]: segfault at 18 ip 00007f2c8e1d4119 sp "
           b"00007ffc0a9b7e30 error 4 in libvgpu-cuda.so[4d4119,7f2c8dd00000+2a10000]\n")
    record = _record(seg, boot_time=1000.0)
    assert record is not None and record.pid == 51207 and record.comm == "ollama"
    assert record.segfault.library == "libvgpu-cuda.so"
    assert record.ts == pytest.approx(1000.0 + 88.231004)
    user = b"14,913,88231005,-;ollama[1]: segfault at 0 ip 1 sp 2 error 4 in x.so[1+2]\n"
    assert _record(user, 0.0) is None  # user facility: anyone can write that
    oom = b"3,914,88231006,-;Out of memory: Killed process 4242 (ollama) total-vm:1kB\n"
    assert _record(oom, 0.0).oom.pid == 4242


def test_healthy_looking_context_without_a_server_fails_only_on_ollama(tmp_path):
    config = replace(Config(), procfs=str(tmp_path))
    report = build_report(context(config=config))
    assert report.check("ollama.server").status is Status.FAIL
    assert report.check("placement.ggml_cuda").status is Status.OK
