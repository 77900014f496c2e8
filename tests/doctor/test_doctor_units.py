"""The doctor's pure parts: parsers, era table, report model, and checks on handmade contexts."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import pytest

from tests.doctor.consistency import assert_consistent, contradictions
from vgpumon.config.schema import SERVER, Config
from vgpumon.doctor import build_report
from vgpumon.doctor.checks import environment, kernel, log, ollama
from vgpumon.doctor.context import (
    DoctorContext,
    DoctorOptions,
    LibraryFacts,
    ProcessEnviron,
    ServerFacts,
    library_facts,
    loader_environ,
    relevant,
)
from vgpumon.doctor.eras import era_of, runner_environment
from vgpumon.doctor.kmsg import KernelLog, KernelRecord, _record
from vgpumon.doctor.libsearch import find_candidates, find_install_dir, glob_in_view, lib_dir_in
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
from vgpumon.sources.kmsg import parse_segfault
from vgpumon.sources.processes import TrackedProcess

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


LIB, CUDA = "/usr/local/lib/ollama", "/usr/local/lib/ollama/cuda_v13"
TMP_CUDA = "/tmp/ollama1/runners/cuda_v12"


@pytest.mark.parametrize(("version", "cuda", "path", "library_path"), [
    # docs/ollama.md#environment-variables: the era's dirs, then the server's own value
    ("0.1.17", TMP_CUDA, f"{TMP_CUDA}:/usr/lib64", None),
    ("0.1.29", TMP_CUDA, "/usr/lib64", None),  # B: the server loads the backend itself
    ("0.2.0", TMP_CUDA, f"/usr/lib64:{TMP_CUDA}", None),  # 0.1.32: the user's path first
    ("0.3.14", TMP_CUDA, f"{LIB}:{TMP_CUDA}:/usr/lib64", None),
    ("0.4.7", TMP_CUDA, f"{LIB}:{TMP_CUDA}:/usr/lib64", None),
    ("0.5.7", f"{LIB}/runners/cuda_v12_avx", f"{LIB}:{LIB}/runners/cuda_v12_avx:/usr/lib64",
     None),
    ("0.6.0", CUDA, f"{CUDA}:{LIB}:/usr/lib64", None),  # E, before OLLAMA_LIBRARY_PATH
    ("0.9.6", CUDA, f"{CUDA}:{LIB}:/usr/lib64", f"{LIB}:{CUDA}"),
    ("0.13.5", CUDA, f"{LIB}:{CUDA}:/usr/lib64", f"{LIB}:{CUDA}"),
    ("0.31.0", CUDA, f"{LIB}:{CUDA}:/usr/lib64", f"{LIB}:{CUDA}"),
])
def test_runner_environment_per_era(version, cuda, path, library_path):
    server = {"LD_LIBRARY_PATH": "/usr/lib64", "OLLAMA_HOST": "x",
              "OLLAMA_LIBRARY_PATH": "/users/own"}
    env = runner_environment(era_of(version), version, server, LIB, cuda)
    assert env["LD_LIBRARY_PATH"] == path
    # 0.6.7+ overwrites the server's own value; before, the server's passes through
    assert env["OLLAMA_LIBRARY_PATH"] == (library_path or "/users/own")
    assert env["OLLAMA_HOST"] == "x"
    assert ("GGML_BACKEND_PATH" in env) == (era_of(version).name == "G")
    assert server["LD_LIBRARY_PATH"] == "/usr/lib64"  # not modified


def test_runner_environment_of_era_g_without_a_server_path_or_install_dir():
    g = runner_environment(era_of("0.31.0"), "0.31.0", {}, LIB, CUDA)
    assert g["LD_LIBRARY_PATH"] == f"{LIB}:{CUDA}"  # no trailing ':' (no empty element)
    assert g["GGML_BACKEND_PATH"] == f"{CUDA}/libggml-cuda.so"
    own = runner_environment(era_of("0.31.0"), "0.31.0", {"GGML_BACKEND_PATH": "/b.so"}, LIB,
                             CUDA)
    assert own["GGML_BACKEND_PATH"] == "/b.so"
    unknown = runner_environment(era_of("0.13.5"), "0.13.5", {"LD_LIBRARY_PATH": "/x"}, None,
                                 CUDA)
    assert unknown["LD_LIBRARY_PATH"] == f"{CUDA}:/x" and "OLLAMA_LIBRARY_PATH" not in unknown
    latest = runner_environment(era_of("0.31.0"), None, {}, LIB, CUDA)  # version unknown
    assert latest["OLLAMA_LIBRARY_PATH"] == f"{LIB}:{CUDA}"


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
        (f"{lib}/cuda_v12/libggml-cuda.so", "in the install dir", True),
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


# -- the install dir and the runner's environment without a runner ---------------------------


def _install(base, prefix: str = "usr/local") -> str:
    lib = base / prefix / "lib/ollama"
    (lib / "cuda_v13").mkdir(parents=True)
    (lib / "cuda_v13" / "libggml-cuda.so").write_bytes(b"\x7fELF")
    return str(lib)


def test_lib_dir_in_a_path():
    assert lib_dir_in("/usr/local/lib/ollama") == "/usr/local/lib/ollama"
    assert lib_dir_in("/usr/local/lib/ollama/") == "/usr/local/lib/ollama"
    assert lib_dir_in("/usr/local/lib/ollama/cuda_v13") == "/usr/local/lib/ollama"
    assert lib_dir_in("/usr/lib/ollama/cuda_v13/libggml-cuda.so.0") == "/usr/lib/ollama"
    assert lib_dir_in("/opt/ollama/lib") is None  # Ollama skips dirs without lib/ollama
    assert lib_dir_in("relative/lib/ollama") is None


def test_install_dir_order_of_trust_env_beats_maps_beats_exe(tmp_path):
    by_env, by_maps, by_exe = (_install(tmp_path / n) for n in ("env", "maps", "exe"))
    exe = str(tmp_path / "exe/usr/local/bin/ollama")
    env = {"OLLAMA_LIBRARY_PATH": f"/nowhere/lib/ollama:{tmp_path}/own:{by_env}/cuda_v13"}
    maps = (f"{by_maps}/libggml-base.so.0",)
    found = find_install_dir(HOST, env, maps, exe)
    assert found.path == by_env
    assert found.source == f"from OLLAMA_LIBRARY_PATH of the server: {by_env}/cuda_v13"
    found = find_install_dir(HOST, {"OLLAMA_HOST": "x"}, maps, exe)
    assert (found.path, found.source) == (by_maps, f"from the server's maps: {maps[0]}")
    found = find_install_dir(HOST, None, None, exe)
    assert (found.path, found.source) == (by_exe, f"from the server's executable: {exe}")
    beside = _install(tmp_path / "beside", "opt/ollama")  # <dir>/ollama + <dir>/lib/ollama
    assert find_install_dir(HOST, {}, (), f"{tmp_path}/beside/opt/ollama/ollama").path == beside
    nothing = find_install_dir(HOST, {}, None, f"{tmp_path}/opt/bin/ollama")
    assert nothing.path is None
    assert nothing.source == ("not found: looked at OLLAMA_LIBRARY_PATH of the server (not set), "
                              "the server's maps (unreadable), next to the server's executable "
                              f"({tmp_path}/opt/bin/ollama)")


def _server(env: dict[str, str] | None, exe: str) -> ServerFacts:
    process = TrackedProcess(100, 1, time.time() - 60, 1, SERVER, "ollama", (exe, "serve"), exe,
                             None)
    return ServerFacts(process, ProcessEnviron(100, env), exe, None, "/", HOST, None, True, None,
                       ())


def test_the_runner_environment_is_derived_with_no_runner(tmp_path):
    lib = _install(tmp_path)
    env = {"LD_LIBRARY_PATH": "/usr/lib64", "OLLAMA_LIBRARY_PATH": f"{lib}/cuda_v13"}
    ctx = context(server=_server(env, "/opt/ollama/bin/ollama"), version="0.31.0",
                  era=era_of("0.31.0"))
    derived = loader_environ(ctx, f"{lib}/cuda_v13/libggml-cuda.so", lib)
    assert derived.variables["LD_LIBRARY_PATH"] == f"{lib}:{lib}/cuda_v13:/usr/lib64"
    assert derived.variables["OLLAMA_LIBRARY_PATH"] == f"{lib}:{lib}/cuda_v13"
    assert derived.whose == ("the runner's environment, derived from the server's as Ollama "
                             "0.31.0 builds it: no runner is running")
    assert derived.known and derived.derived == "derived from the server's: no runner is running"
    facts = library_facts(ctx)  # the install dir comes from OLLAMA_LIBRARY_PATH, not the exe
    assert facts is not None and facts.lib_dir == lib
    assert facts.environ["LD_LIBRARY_PATH"] == f"{lib}:{lib}/cuda_v13:/usr/lib64"
    assert facts.environ_derived and "derived" in facts.environ_from
    # A runner whose environment is readable is the truth; one that is not is said so.
    runner = ProcessEnviron(200, {"LD_LIBRARY_PATH": "/r"})
    assert loader_environ(replace(ctx, runner_environs={200: runner}), None, lib).whose == \
        "runner pid 200"
    unknown = loader_environ(replace(ctx, server=_server(None, "/x"), version=None,
                                     era=None), f"{lib}/cuda_v13/libggml-cuda.so", None)
    assert not unknown.known
    assert unknown.whose == ("the runner's environment, derived from an assumed server "
                             "environment (the server's could not be read) as Ollama of era G "
                             "(0.30.0 to 0.33.x) (the version is unknown) builds it: no runner is "
                             "running (the install dir was not found: its dirs are left out)")
    assert unknown.variables["LD_LIBRARY_PATH"] == f"{lib}/cuda_v13"


def _llm_ctx(lib_dir: str | None, source: str = "from OLLAMA_LIBRARY_PATH of the server: x"):
    facts = LibraryFacts(lib_dir, (), (), {}, "", True, None, lib_dir_from=source)
    return context(version="0.31.0", era=era_of("0.31.0"), libraries=facts)


def test_llm_library_is_checked_against_the_install_dir_found(tmp_path):
    lib = _install(tmp_path)
    check = environment.llm_library(_llm_ctx(lib), "cuda_v13", HOST)
    assert check.status is Status.OK and f"({lib}/cuda_v13)" in check.finding
    assert check.evidence == (f"install dir: {lib} (from OLLAMA_LIBRARY_PATH of the server: x)",)
    wrong = environment.llm_library(_llm_ctx(lib), "cuda_v99", HOST)
    assert wrong.status is Status.FAIL and "names no dir of the install" in wrong.finding
    assert f"looked for {lib}/cuda_v99" in wrong.evidence and "dirs there: cuda_v13" in \
        wrong.evidence
    # Not knowing the install dir is not evidence that the dir is missing.
    unknown = environment.llm_library(_llm_ctx(None, "not found: looked at …"), "cuda_v13", HOST)
    assert unknown.status is Status.WARN and "names no dir" not in unknown.finding
    assert unknown.evidence == ("install dir: not found: looked at …",)


# -- a crash inside a shim leads the report ------------------------------------------------------


def _kernel(message: str) -> KernelLog:
    segfault = parse_segfault(message)
    assert segfault is not None
    return KernelLog((KernelRecord(time.time() - 5, message, segfault=segfault),))


SHIM_FAULT = ("llama-server[4242]: segfault at 0 ip 00007f6e55c1935c sp 00007fffabab0eb8 "
              "error 6 in libvgpu-cuda.so[135c,7f6e55c19000+1000]")


def test_a_fault_inside_a_shim_fails_and_leads_the_summary():
    check = kernel.crashes(context(kernel=_kernel(SHIM_FAULT)))
    assert check.status is Status.FAIL
    assert "inside the vGPU shim libvgpu-cuda.so (vgpu-cuda)" in check.finding
    assert SHIM_FAULT in check.finding
    other = kernel.crashes(context(kernel=_kernel(SHIM_FAULT.replace("libvgpu-cuda", "libfoo"))))
    assert other.status is Status.WARN  # not a shim: a warning, as before
    report = Report(
        (Section("Libraries", (fail("libraries.dependencies", "libggml-base.so.0 does not "
                                    "resolve", "fix"),)),
         Section("Kernel", (check,))),
        generated_at=0.0, lead=("kernel.crashes",))
    assert [c.id for c in report.failures] == ["kernel.crashes", "libraries.dependencies"]
    summary = render_text(report).split("Summary:", 1)[1].splitlines()
    assert summary[1] == f"Most likely cause: kernel.crashes: {check.finding}"
    assert summary[3].startswith("  kernel.crashes: ")
    assert Report.from_dict(json.loads(render_json(report))) == report


def test_build_report_leads_with_the_shim_fault(tmp_path):
    config = replace(Config(), procfs=str(tmp_path))
    report = build_report(context(config=config, kernel=_kernel(SHIM_FAULT)))
    assert report.lead == ("kernel.crashes",)
    assert report.failures[0].id == "kernel.crashes"
    assert build_report(context(config=config)).lead == ()


# -- the consistency helper of the scenario tests ----------------------------------------------


def test_contradictions_find_a_dir_said_missing_that_another_check_found():
    lib = "/usr/local/lib/ollama"
    report = Report((Section("S", (
        fail("env.OLLAMA_LLM_LIBRARY", "OLLAMA_LLM_LIBRARY=cuda_v13 names no dir of the "
             "install", "fix", [f"looked for {lib}/cuda_v13", "dirs there: cuda_v13"]),
        ok("libraries.ggml_cuda", f"{lib}/cuda_v13/libggml-cuda.so (OLLAMA_LIBRARY_PATH of the "
           "server)", [f"{lib}/cuda_v13/libggml-cuda.so (OLLAMA_LIBRARY_PATH of the server): "
                       "found", f"install dir: {lib} (from the server's maps: x)"]),
    )),), 0.0)
    assert contradictions(report) == [
        f"env.OLLAMA_LLM_LIBRARY says {lib}/cuda_v13 is missing, but libraries.ggml_cuda found "
        f"{lib}/cuda_v13/libggml-cuda.so"]
    with pytest.raises(AssertionError, match="contradicts itself"):
        assert_consistent(report)
    fine = Report((Section("S", (
        fail("env.OLLAMA_LLM_LIBRARY", "x", "fix", [f"looked for {lib}/cuda_v99"]),
        ok("libraries.dependencies", "all resolve", [
            f"libcudart.so.13 -> {lib}/cuda_v13/libcudart.so.13 (found through LD_LIBRARY_PATH)",
            f"libggml-base.so.0 (needed by {lib}/cuda_v13/libggml-cuda.so): NOT FOUND: gone"]),
        warn("env.LD_LIBRARY_PATH", "x", "fix", [f"missing: {lib}/cuda_v13/gone"]),
    )),), 0.0)
    assert contradictions(fine) == []
    dependent = Report((Section("S", (
        ok("libraries.dependencies", "all resolve", [
            f"libcudart.so.13 -> {lib}/cuda_v13/libcudart.so.13 (found through runpath)"]),
        warn("env.LD_LIBRARY_PATH", "x", "fix", [f"missing: {lib}/cuda_v13"]),
    )),), 0.0)
    assert len(contradictions(dependent)) == 1
