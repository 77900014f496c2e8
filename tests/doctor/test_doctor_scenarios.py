"""`vgpumon doctor` against simulated Ollama hosts, one scenario each: the right checks pass,
warn or fail, with the right evidence; a healthy host exits 0."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.doctor.consistency import assert_consistent
from tests.doctor.simdoctor import MODEL, doctor, doctor_process, write_config
from tests.simhost import SimHost
from vgpumon.doctor.render import render_json, render_text
from vgpumon.doctor.report import Report, Status

OK, WARN, FAIL, SKIP = Status.OK, Status.WARN, Status.FAIL, Status.SKIP


@pytest.fixture
def f_host(simhost) -> SimHost:
    """An era-F host (Ollama 0.13.5) with one model and the shims preloaded into the server."""
    host = simhost(era="F")
    host.add_model(MODEL)
    return host


def test_healthy_host_exits_0(f_host):
    server = f_host.start_server()
    runner = server.load_model(MODEL)
    run = doctor(write_config(f_host))
    assert run.rc == 0, run.describe()
    assert run.failed() == []
    assert_consistent(run.report)
    for check_id in ("ollama.server", "ollama.api", "ollama.version", "env.server",
                     "env.LD_PRELOAD", "shims.files", "shims.links", "shims.group.server",
                     "shims.group.runner", "shims.bypass", "shims.stale", "libraries.ggml_cuda",
                     "libraries.dependencies", "libraries.libcuda", "loadtest.dlopen",
                     "loadtest.libcuda", "placement.ggml_cuda", "log.source",
                     "log.gpu_discovery", "log.offload", "log.cuda_errors",
                     "log.runner_crashes"):
        assert run.status(check_id) is OK, (check_id, run.describe())
    assert str(server.pid) in run.check("ollama.server").finding
    assert "era F" in run.check("ollama.version").finding
    assert f"{MODEL}: 29/29 layers" in "\n".join(run.check("log.offload").evidence)
    runner_evidence = "\n".join(run.check("shims.group.runner").evidence)
    assert f"runner pid {runner.pid} ({MODEL})" in runner_evidence
    assert "[shim vgpu-cuda]" in "\n".join(run.check("libraries.dependencies").evidence)
    assert str(f_host.shim("cuda")) in run.check("loadtest.libcuda").finding
    assert run.status("ollama.systemd") is SKIP  # systemd is not PID 1 here
    assert "not systemd" in run.check("ollama.systemd").finding


def test_broken_link_and_cpu_fallback_fail_naming_the_link_and_the_model(f_host):
    link = f_host.lib64 / "libcuda.so.1"
    f_host.set_link(link, f_host.real_driver.name)
    server = f_host.start_server()
    server.load_model(MODEL, scenario="cpu_fallback")
    config = write_config(f_host)
    run = doctor(config)
    assert run.rc == 1
    links = run.check("shims.links")
    assert links.status is FAIL
    assert str(link) in links.finding and str(f_host.real_driver) in links.finding
    assert f"ln -sfn {f_host.shim('cuda')} {link}" in links.action
    offload = run.check("log.offload")
    assert offload.status is FAIL
    assert MODEL in offload.finding and "0/29 layers" in offload.finding
    assert "placement.ggml_cuda" in offload.action
    placement = run.check("placement.ggml_cuda")
    assert placement.status is FAIL and MODEL in placement.finding
    assert run.status("shims.group.runner") is FAIL  # ggml-cuda expected, not mapped
    # The same through the real command line, as text and as JSON.
    text = doctor_process(["--config", str(config)])
    assert text.returncode == 1, text.stderr
    assert str(link) in text.stdout and MODEL in text.stdout and "next: " in text.stdout
    as_json = doctor_process(["--config", str(config), "--json"])
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert document["exit_code"] == 1
    failed = {c["id"] for s in document["sections"] for c in s["checks"]
              if c["status"] == "fail"}
    assert {"shims.links", "log.offload"} <= failed


def test_shim_not_preloaded_in_the_runner(f_host):
    server = f_host.start_server()
    runner = server.load_model(MODEL, scenario="bypass")  # runner env without LD_PRELOAD
    run = doctor(write_config(f_host))
    assert run.rc == 1
    group = run.check("shims.group.runner")
    assert group.status is FAIL
    assert f"runner pid {runner.pid}" in group.finding and "vgpu-exec" in group.finding
    assert "LD_PRELOAD" in group.action
    bypass = run.check("shims.bypass")
    assert bypass.status is FAIL
    assert f"runner pid {runner.pid}" in bypass.finding
    assert str(f_host.real_driver) in bypass.finding
    assert run.status("shims.group.server") is OK  # the server still has its preload


def test_a_dependency_of_libggml_cuda_that_does_not_resolve(f_host):
    (f_host.cuda_dir / "libcublasLt.so.12.8.4.1").unlink()  # libcublasLt.so.12 now dangles
    f_host.start_server()
    run = doctor(write_config(f_host))
    assert run.rc == 1
    assert_consistent(run.report)
    deps = run.check("libraries.dependencies")
    assert deps.status is FAIL
    assert deps.finding.startswith("1 library the CUDA backend needs does not resolve: "
                                   "libcublasLt.so.12 (needed by libggml-cuda.so and "
                                   "libcublas.so.12): cannot open shared object file")
    evidence = "\n".join(deps.evidence)
    assert (f"libcublasLt.so.12 (needed by {f_host.cuda_dir / 'libggml-cuda.so'}): NOT FOUND"
            in evidence)
    dlopen = run.check("loadtest.dlopen")
    assert dlopen.status is FAIL
    assert "libcublasLt.so.12: cannot open shared object file" in dlopen.finding
    assert run.status("libraries.ggml_cuda") is OK


def test_stale_mapping_after_the_shim_was_replaced(f_host):
    server = f_host.start_server()
    runner = server.load_model(MODEL)
    f_host.replace_file(f_host.shim("cuda"))
    run = doctor(write_config(f_host))
    stale = run.check("shims.stale")
    assert stale.status is WARN
    evidence = "\n".join(stale.evidence)
    assert f"runner pid {runner.pid}" in evidence and f"server pid {server.pid}" in evidence
    assert str(f_host.shim("cuda")) in evidence
    assert "restart" in stale.action
    assert run.status("shims.links") is OK  # the link leads to the new file
    assert run.rc == 0, run.describe()


def test_no_runner_yet_is_expected(f_host):
    f_host.start_server()
    run = doctor(write_config(f_host))
    assert run.rc == 0, run.describe()
    placement = run.check("placement.ggml_cuda")
    assert placement.status is OK
    assert "expected until a model is loaded" in placement.finding
    assert run.status("shims.group.runner") is OK
    assert "expected until a model is loaded" in run.check("shims.group.runner").finding
    assert run.status("log.offload") is OK


def test_go_runner_crash_loop(f_host):
    f_host.add_model("crashy:latest")
    server = f_host.start_server()
    for _ in range(3):
        crashed = server.load_model("crashy:latest", scenario="go_crash")
        assert crashed.state == "failed"
    run = doctor(write_config(f_host))
    assert run.rc == 1
    crashes = run.check("log.runner_crashes")
    assert crashes.status is FAIL
    assert "crash loop" in crashes.finding and "crashy:latest" in crashes.finding
    evidence = "\n".join(crashes.evidence)
    assert evidence.count("Go crash trace (crashy:latest): SIGSEGV") == 3
    assert "exit status 2" in evidence


def test_cpu_only_discovery(f_host):
    server = f_host.start_server(gpus=0)
    server.load_model(MODEL)
    run = doctor(write_config(f_host))
    assert run.rc == 1
    discovery = run.check("log.gpu_discovery")
    assert discovery.status is FAIL
    assert "no usable GPU" in discovery.finding
    assert any("cpu_only" in line for line in discovery.evidence)
    assert run.check("log.offload").status is FAIL


def test_runner_side_checks_with_load_model(f_host):
    f_host.start_server()
    run = doctor(write_config(f_host), "--load-model", MODEL)
    assert run.rc == 0, run.describe()
    for check_id in ("model.load", "model.runner", "model.libraries", "model.offload",
                     "model.crash"):
        assert run.status(check_id) is OK, (check_id, run.describe())
    assert "29/29 layers" in run.check("model.offload").finding
    assert run.status("placement.ggml_cuda") is OK


def test_load_model_that_crashes_its_runner(f_host):
    server = f_host.start_server()
    server.set_scenario(MODEL, "go_crash")  # what POST /api/generate will do
    run = doctor(write_config(f_host), "--load-model", MODEL)
    assert run.rc == 1
    assert run.status("model.load") is FAIL
    assert "exit status 2" in run.check("model.load").finding
    assert run.status("model.runner") is FAIL  # it died
    crash = run.check("model.crash")
    assert crash.status is FAIL
    assert any("go_crash" in line for line in crash.evidence)


def test_environment_values_and_what_they_imply(f_host):
    missing = f_host.root / "usr/lib64/libvgpu-gone.so"
    preload = ":".join([str(f_host.shim("exec")), str(missing)])
    f_host.start_server(env={"CUDA_VISIBLE_DEVICES": "", "OLLAMA_LLM_LIBRARY": "cuda_v99",
                             "LD_PRELOAD": preload, "MY_API_TOKEN": "s3cr3t"})
    run = doctor(write_config(f_host))
    assert_consistent(run.report)
    assert run.status("env.CUDA_VISIBLE_DEVICES") is FAIL
    assert "empty" in run.check("env.CUDA_VISIBLE_DEVICES").finding
    llm = run.check("env.OLLAMA_LLM_LIBRARY")
    assert llm.status is FAIL  # 0.12.4+: discovery skips every other dir
    assert "cuda_v99" in llm.finding and "cuda_v12" in "\n".join(llm.evidence)
    pre = run.check("env.LD_PRELOAD")
    assert pre.status is FAIL and str(missing) in "\n".join(pre.evidence)
    assert "s3cr3t" not in run.stdout and "MY_API_TOKEN" not in run.stdout


def test_json_round_trip(f_host):
    f_host.start_server()
    run = doctor(write_config(f_host))
    report = run.report
    assert json.loads(render_json(report)) == json.loads(run.stdout)
    again = Report.from_dict(json.loads(render_json(report)))
    assert again == report
    assert render_text(again) == render_text(report)
    assert report.to_dict()["summary"] == report.counts
    assert report.facts["ollama_version"] == "0.13.5"


def test_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ollama:\n  url: ftp://nowhere\n")
    run = doctor(bad)
    assert run.rc == 2
    assert "ollama.url" in run.stderr
    assert json.loads(run.stdout) == {"error": json.loads(run.stdout)["error"], "exit_code": 2}
    proc = doctor_process(["--config", str(bad)])
    assert proc.returncode == 2 and "ollama.url" in proc.stderr
    missing = doctor_process(["--config", str(tmp_path / "none.yaml")])
    assert missing.returncode == 2


@pytest.mark.parametrize("era", ["B", "C", "D1", "D2", "E", "G"])
def test_healthy_host_of_other_eras_exits_0(simhost, era):
    host = simhost(era=era)
    host.add_model(MODEL)
    server = host.start_server()
    server.load_model(MODEL)
    run = doctor(write_config(host))
    assert run.rc == 0, run.describe()
    assert_consistent(run.report)
    assert f"era {era}" in run.check("ollama.version").finding
    for check_id in ("libraries.ggml_cuda", "libraries.dependencies", "libraries.libcuda",
                     "loadtest.dlopen", "loadtest.libcuda", "placement.ggml_cuda",
                     "log.offload"):
        assert run.status(check_id) is OK, (check_id, run.describe())
    assert host.era.ggml_cuda.rsplit("/", 1)[-1] in run.check("libraries.ggml_cuda").finding


def test_era_b_model_on_the_cpu_inside_the_server_fails_naming_it(simhost):
    """0.1.18-0.1.31: no runner and no /api/ps; the server maps the model it loaded."""
    host = simhost(era="B")
    host.add_model(MODEL)
    server = host.start_server(gpus=0)
    server.load_model(MODEL, scenario="cpu_fallback")
    run = doctor(write_config(host))
    check = run.check("placement.ggml_cuda")
    assert check.status is FAIL, run.describe()
    assert MODEL in check.finding and "runs on the CPU" in check.finding


def test_no_runner_after_a_crash_the_runner_environment_is_derived(simhost):
    """An era-G host whose `ollama serve` runs from a copy outside the install (the
    environment says where the install is) and whose runner crashed inside the shim while
    loading: with no runner alive, the dependencies and the load test use the environment
    Ollama would give a runner (docs/ollama.md#environment-variables), not the server's plain
    one, so Ollama's own libraries resolve; the crash is what the report leads with."""
    host = simhost(era="G")
    host.add_model(MODEL)
    elsewhere = host.root / "opt/ollama-bin/ollama"  # no ../lib/ollama, no ./lib/ollama
    elsewhere.parent.mkdir(parents=True)
    shutil.copy2(host.server_exe, elsewhere)
    lib, cuda = host.ollama_lib, host.cuda_dir
    server = host.start_server(env={"OLLAMA_LIBRARY_PATH": f"{lib}:{cuda}",
                                    "OLLAMA_LLM_LIBRARY": cuda.name},
                               wrap=lambda argv: [str(elsewhere), *argv[1:]])
    server.load_model(MODEL)
    dead = server.crash_runner(MODEL, mode="sigsegv", library="libvgpu-cuda.so")
    assert not dead.alive
    run = doctor(write_config(host))
    assert_consistent(run.report)
    assert str(elsewhere) in "\n".join(run.check("ollama.server").evidence)
    derived = ("the runner's environment, derived from the server's as Ollama 0.31.0 builds "
               "it: no runner is running")
    search = f"LD_LIBRARY_PATH={lib}:{cuda}:{host.lib64}"

    deps = run.check("libraries.dependencies")
    assert deps.status is OK, run.describe()
    assert "derived from the server's: no runner is running" in deps.finding
    evidence = "\n".join(deps.evidence)
    assert f"resolved as ld.so would, with {derived}" in evidence
    assert search in evidence
    assert f"libggml-base.so.0 -> {lib / 'libggml-base.so.0'} (found through LD_LIBRARY_PATH)" \
        in evidence

    dlopen = run.check("loadtest.dlopen")
    assert dlopen.status is OK, run.describe()
    assert "derived from the server's: no runner is running" in dlopen.finding
    evidence = "\n".join(dlopen.evidence)
    assert f"variables (from {derived}): {search}" in evidence
    assert f"OLLAMA_LIBRARY_PATH={lib}:{cuda}" in evidence
    assert f"mapped by the dlopen: {lib / 'libggml-base.so.0'}" in evidence

    llm = run.check("env.OLLAMA_LLM_LIBRARY")
    assert llm.status is OK, run.describe()
    assert f"install dir: {lib} (from OLLAMA_LIBRARY_PATH of the server: {lib})" in llm.evidence
    assert f"install dir: {lib} (from OLLAMA_LIBRARY_PATH of the server: {lib})" in \
        run.check("libraries.ggml_cuda").evidence

    # The kernel rate-limits segfault records (shared with every crash on the machine): when
    # it logged this one, the report leads with it.
    kernel = run.check("kernel.crashes")
    if kernel.status is FAIL:
        assert "inside the vGPU shim libvgpu-cuda.so" in kernel.finding
        assert run.report.lead == ("kernel.crashes",)
        assert run.report.failures[0].id == "kernel.crashes"
        assert "Most likely cause: kernel.crashes: " in run.describe()
