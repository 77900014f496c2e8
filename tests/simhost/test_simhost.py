"""The simulated Ollama host is faithful: real comm, argv, parents, mappings, API, log, exits."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import signal
import time

import pytest

from tests.simhost import SimHost, SimHostError, wait_until
from tests.simhost.cgroups import MemoryCgroup
from tests.simhost.logfmt import (
    exit_text,
    gin_line,
    go_duration,
    go_quote,
    human_bytes,
    slog_line,
)

MODEL = "llama3.2:latest"
ERAS = ["C", "D1", "E", "F", "G"]
RUNNER_COMM = {"C": "ollama_llama_se", "D1": "ollama_llama_se", "E": "ollama", "F": "ollama",
               "G": "llama-server"}
GGML = {"C": "libggml.so", "D1": "libggml_cuda_v12.so", "E": "libggml-cuda.so",
        "F": "libggml-cuda.so", "G": "libggml-cuda.so"}


def expected_argv(host: SimHost, blob: str, port: int) -> list[str]:
    """The era's runner argv, written out independently of the simulator's own table."""
    r, p = str(host.root), str(port)
    return {
        "C": [f"{r}/tmp/ollama2750113406/runners/cuda_v12/ollama_llama_server", "--model", blob,
              "--ctx-size", "8192", "--batch-size", "512", "--embedding", "--n-gpu-layers", "29",
              "--threads", "8", "--parallel", "4", "--port", p],
        "D1": [f"{r}/tmp/ollama2750113406/runners/cuda_v12_avx/ollama_llama_server", "--model",
               blob, "--ctx-size", "8192", "--batch-size", "512", "--n-gpu-layers", "29",
               "--threads", "8", "--parallel", "4", "--port", p],
        "E": [f"{r}/usr/local/bin/ollama", "runner", "--model", blob, "--ctx-size", "8192",
              "--batch-size", "512", "--n-gpu-layers", "29", "--threads", "8", "--parallel", "1",
              "--port", p],
        "F": [f"{r}/usr/local/bin/ollama", "runner", "--ollama-engine", "--model", blob,
              "--port", p],
        "G": [f"{r}/usr/local/lib/ollama/llama-server", "--model", blob, "--port", p, "--host",
              "127.0.0.1", "--no-webui", "--offline", "-c", "4096", "-np", "1", "-ngl", "29",
              "--log-verbosity", "4", "--no-log-prefix", "--no-log-timestamps"],
    }[host.era.name]


KEY_LINES = {
    "C": [r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d routes\.go:\d+: INFO server config env=\"map\[",
          r'msg="looking for compatible GPUs"',
          r'msg="inference compute" id=GPU-[0-9a-f-]+ library=cuda variant=v12 compute=8\.6 '
          r'driver=12\.8 name="NVIDIA A10" total="22\.1 GiB" available="21\.7 GiB"$',
          r'msg="offload to cuda" layers\.requested=-1 layers\.model=29 layers\.offload=29 ',
          r"^llm_load_tensors: offloaded 29/29 layers to GPU$",
          r'msg="llama runner started in \d+\.\d\d seconds"$'],
    "D1": [r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d routes\.go:\d+: INFO server config env=\"map\[",
           r'msg="inference compute" id=GPU-[0-9a-f-]+ library=cuda variant=v12 compute=8\.6 ',
           r'msg="starting go runner"',
           r"^ggml_cuda_init: found 1 CUDA devices:$",
           r"^llm_load_tensors: offloaded 29/29 layers to GPU$",
           r'msg="llama runner started in \d+\.\d\d seconds"$'],
    "E": [r'^time=\S+ level=INFO source=\S+ msg="server config" env="map\[',
          r'msg=offload library=cuda layers\.requested=-1 layers\.model=29 layers\.offload=29 ',
          r"^load_backend: loaded CUDA backend from \S+/cuda_v12/libggml-cuda\.so$",
          r"^load_tensors: offloaded 29/29 layers to GPU$",
          r'msg="llama runner started in \d+\.\d\d seconds"$'],
    "F": [r'msg="discovering available GPUs\.\.\."',
          r'msg="inference compute" id=GPU-[0-9a-f-]+ filter_id="" library=CUDA compute=8\.6 '
          r'name=CUDA0 description="NVIDIA A10" libdirs=ollama,cuda_v12 driver=12\.8 '
          r'pci_id=0000:3b:00\.0 type=discrete total="22\.1 GiB" available="21\.7 GiB"$',
          r'msg="loading model" "model layers"=29 requested=-1$',
          r'msg=load request="\{Operation:commit ',
          r'msg="offloaded 29/29 layers to GPU"$',
          r'msg="llama runner started in \d+\.\d\d seconds"$'],
    "G": [r'msg="inference compute" id=GPU-[0-9a-f-]+ filter_id="" library=CUDA ',
          r'msg="loading model via llama-server" model=',
          r"^system_info: n_threads = 8 \(n_threads_batch = 8\) / 16 \| CUDA : ARCHS = ",
          r"^load_tensors: offloaded 29/29 layers to GPU$",
          r'msg="llama-server started in \d+\.\d\d seconds"$'],
}
START_MSG = {"C": "starting llama server", "D1": "starting llama server",
             "E": "starting llama server", "F": "starting runner", "G": "starting llama-server"}


@pytest.fixture(scope="module", params=ERAS)
def era_host(request, simhost_module):
    """One host per era with a running server (no LD_PRELOAD) and a loaded model."""
    host = simhost_module(era=request.param)
    host.add_model(MODEL)
    server = host.start_server(preload_shims=False)
    runner = server.load_model(MODEL)
    return host, server, runner


@pytest.fixture(scope="module")
def f_host(simhost_module) -> SimHost:
    """An era-F host whose server has the shims in LD_PRELOAD (the default)."""
    host = simhost_module(era="F")
    host.add_model(MODEL)
    host.start_server(preload_shims=True)
    return host


# -- processes ------------------------------------------------------------------------------------


def test_server_process(era_host):
    host, server, _ = era_host
    assert _comm(server.pid) == "ollama"
    assert _cmdline(server.pid) == [str(host.root / "usr/local/bin/ollama"), "serve"]


def test_runner_comm_cmdline_and_parent(era_host):
    host, server, runner = era_host
    assert runner.state == "ready"
    assert runner.comm() == RUNNER_COMM[host.era.name]
    assert runner.cmdline() == expected_argv(host, host.model(MODEL).blob, runner.port)
    assert runner.ppid() == server.pid


def test_runner_maps_ggml_and_shim_through_symlink(era_host):
    host, _, runner = era_host
    paths = runner.mapped_paths()
    assert str(host.ggml_cuda) in paths
    assert os.path.basename(str(host.ggml_cuda)) == GGML[host.era.name]
    assert str(host.shim("cuda")) in paths          # libcuda.so.1 -> libvgpu-cuda.so
    assert not any(p.endswith("/libcuda.so.1") for p in paths)  # maps show resolved files


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = f.read().decode().split("\0")
    return dict(x.split("=", 1) for x in items if "=" in x)


def test_runner_environment(era_host):
    host, server, runner = era_host
    env = _environ(runner.pid)
    first = {"C": host.cuda_dir, "D1": host.cuda_dir, "E": host.cuda_dir,
             "F": host.ollama_lib, "G": host.ollama_lib}[host.era.name]
    dirs = env["LD_LIBRARY_PATH"].split(":")
    assert dirs[0] == str(first) and dirs[-1] == str(host.lib64)  # ours first, then inherited
    gpu = "GPU-076afa50-fc31-49ca-be1d-f9e53480fe75"
    assert env.get("CUDA_VISIBLE_DEVICES") == (None if host.era.name == "F" else gpu)
    assert ("OLLAMA_LIBRARY_PATH" in env) == (host.era.name in ("E", "F", "G"))
    if host.era.name == "G":
        assert env["GGML_BACKEND_PATH"] == str(host.ggml_cuda)
    assert _environ(server.pid)["OLLAMA_HOST"] == f"127.0.0.1:{server.port}"


def test_server_maps_nothing_gpu_after_discovery(era_host):
    _, server, _ = era_host
    with open(f"/proc/{server.pid}/maps") as f:
        maps = f.read()
    assert "libggml-cuda.so" not in maps and "libvgpu-cuda.so" not in maps


# -- API ------------------------------------------------------------------------------------------


def test_api_version_and_ps(era_host):
    host, server, _ = era_host
    code, body = server.request("/")
    assert (code, body) == (200, b"Ollama is running")
    assert server.api("/api/version") == {"version": host.era.version}
    assert server.request("/api/version", method="HEAD")[0] == 200
    ps = server.api("/api/ps")["models"]
    entry = next(m for m in ps if m["name"] == MODEL)
    assert entry["model"] == MODEL
    assert entry["digest"] == host.model(MODEL).digest
    assert entry["size_vram"] == entry["size"] > 0
    assert entry["details"]["family"] == "llama"
    assert ("context_length" in entry) == host.era.at_least("0.10.0")


# -- log ------------------------------------------------------------------------------------------


def test_log_has_the_eras_key_lines(era_host):
    host, server, runner = era_host
    log = host.log_text(server.log_offset)
    assert f'msg="Listening on 127.0.0.1:{server.port} (version {host.era.version})"' in log
    for pattern in KEY_LINES[host.era.name]:
        assert re.search(pattern, log, re.M), pattern
    cmd = " ".join(runner.cmdline())
    assert f'msg="{START_MSG[host.era.name]}" cmd="{cmd}"' in log


# -- exits ----------------------------------------------------------------------------------------


def test_sigsegv_in_shim_gives_sigsegv_wait_status(era_host):
    host, server, _ = era_host
    host.add_model("segv:latest")
    runner = server.load_model("segv:latest")
    assert runner.maps_library("libvgpu-cuda.so")
    dead = server.crash_runner("segv:latest", mode="sigsegv", library="libvgpu-cuda.so")
    assert dead.pid == runner.pid
    assert os.WIFSIGNALED(dead.wait_status)
    assert os.WTERMSIG(dead.wait_status) == signal.SIGSEGV
    assert dead.exit_text.startswith("signal: segmentation fault")


def test_go_crash_exits_2_with_a_trace_in_the_library(era_host):
    host, server, _ = era_host
    host.add_model("gocrash:latest")
    runner = server.load_model("gocrash:latest")
    ranges = [tuple(int(x, 16) for x in line.split()[0].split("-"))
              for line in runner.maps().splitlines() if line.endswith(str(host.ggml_cuda))]
    offset = host.log_file.stat().st_size
    dead = server.crash_runner("gocrash:latest", mode="go_crash")
    assert os.WIFEXITED(dead.wait_status) and os.WEXITSTATUS(dead.wait_status) == 2
    m = host.wait_log(r"^SIGSEGV: segmentation violation\nPC=(0x[0-9a-f]+) m=\d+ sigcode=1 "
                      r"addr=0x0\nsignal arrived during cgo execution\n\ngoroutine \d+ ",
                      since=offset)
    pc = int(m.group(1), 16)
    assert any(lo <= pc < hi for lo, hi in ranges)


def test_unload_is_sigkill_and_leaves_ps(era_host):
    host, server, _ = era_host
    host.add_model("unload:latest")
    server.load_model("unload:latest")
    dead = server.unload("unload:latest")
    assert os.WIFSIGNALED(dead.wait_status)
    assert os.WTERMSIG(dead.wait_status) == signal.SIGKILL
    assert dead.exit_text == "signal: killed"
    assert "unload:latest" not in [m["name"] for m in server.api("/api/ps")["models"]]


@pytest.mark.parametrize("mode,check", [
    ("kill_segv", lambda s: os.WIFSIGNALED(s) and os.WTERMSIG(s) == signal.SIGSEGV),
    ("abort", lambda s: os.WIFSIGNALED(s) and os.WTERMSIG(s) == signal.SIGABRT),
    ("exit:3", lambda s: os.WIFEXITED(s) and os.WEXITSTATUS(s) == 3),
])
def test_other_crash_modes(f_host, mode, check):
    host = f_host
    name = f"mode-{mode.replace(':', '')}:latest"
    host.add_model(name)
    server = host.servers[-1]
    server.load_model(name)
    assert check(server.crash_runner(name, mode=mode).wait_status)


def test_dead_runner_stays_in_ps_until_the_next_request(era_host):
    host, server, _ = era_host
    host.add_model("dead:latest")
    server.load_model("dead:latest")
    server.crash_runner("dead:latest", mode="sigsegv")
    assert "dead:latest" in [m["name"] for m in server.api("/api/ps")["models"]]
    offset = host.log_file.stat().st_size
    code, body = server.generate("dead:latest")
    assert code == 200 and body["done_reason"] == "load"
    if host.era.go_runner or host.era.name == "C":
        host.wait_log(r'msg="llama runner process no longer running" sys=\d+ '
                      r'string="signal: segmentation fault', since=offset)
    assert server.runner("dead:latest").state == "ready"


# -- scenarios ------------------------------------------------------------------------------------


def _load(host: SimHost, scenario: str, **options):
    name = f"{scenario.replace('_', '-')}:latest"
    host.add_model(name)
    offset = host.log_file.stat().st_size
    runner = host.servers[-1].load_model(name, scenario, **options)
    return runner, offset


def test_partial_offload(era_host):
    host = era_host[0]
    runner, offset = _load(host, "partial_offload", gpu_layers=10)
    assert runner.state == "ready"
    host.wait_log(r"offloaded 10/29 layers to GPU", since=offset)


def test_cuda_init_failure_keeps_libraries_and_offloads_nothing(era_host):
    host = era_host[0]
    runner, offset = _load(host, "cuda_init_failure")
    assert runner.state == "ready" and runner.maps_library(str(host.ggml_cuda))
    host.wait_log(r"^ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is "
                  r"detected$", since=offset)
    host.wait_log(r"offloaded 0/29 layers to GPU", since=offset)


def test_cuda_oom_then_crash(era_host):
    host = era_host[0]
    runner, offset = _load(host, "oom")
    assert runner.state == "failed"
    host.wait_log(r"cudaMalloc failed: out of memory$", since=offset)
    if host.era.go_runner:
        assert os.WEXITSTATUS(runner.wait_status) == 2
        host.wait_log(r"^panic: unable to load model: ", since=offset)
    else:
        assert os.WEXITSTATUS(runner.wait_status) == 1
    host.wait_log(r'level=ERROR source=\S+ msg="error loading llama server" error="llama(-server| '
                  r'runner) process has terminated: .*error loading model: unable to allocate '
                  r'CUDA0 buffer"', since=offset)


def test_cxx_crash_is_a_signal(era_host):
    host = era_host[0]
    runner, offset = _load(host, "cxx_crash")
    assert os.WIFSIGNALED(runner.wait_status)
    assert os.WTERMSIG(runner.wait_status) == signal.SIGABRT
    host.wait_log(r"GGML_ASSERT\(err == cudaSuccess\) failed", since=offset)


def test_go_crash_during_load(era_host):
    host = era_host[0]
    runner, offset = _load(host, "go_crash")
    assert os.WIFEXITED(runner.wait_status) and os.WEXITSTATUS(runner.wait_status) == 2
    host.wait_log(r'msg="error loading llama server" error="llama(-server| runner) process has '
                  r'terminated: exit status 2', since=offset)


def test_missing_library_exits_127(era_host):
    host = era_host[0]
    runner, offset = _load(host, "missing_library")
    assert os.WIFEXITED(runner.wait_status) and os.WEXITSTATUS(runner.wait_status) == 127
    host.wait_log(re.escape(runner.argv[0]) + r": error while loading shared libraries: \S+: "
                  r"cannot open shared object file: No such file or directory$", since=offset)


def test_late_load_maps_ggml_cuda_after_the_delay(era_host):
    host = era_host[0]
    runner, _ = _load(host, "late_load", delay=1.0)
    assert runner.alive and not runner.maps_library(str(host.ggml_cuda))
    # listed while it loads (docs/ollama.md#http-api)
    assert "late-load:latest" in [m["name"] for m in host.servers[-1].api("/api/ps")["models"]]
    wait_until(lambda: runner.maps_library(str(host.ggml_cuda)), 10, "ggml-cuda mapping")
    assert runner.wait_ready().state == "ready"


def test_bypass_maps_the_real_driver_not_the_cuda_shim(era_host):
    host = era_host[0]
    runner, _ = _load(host, "bypass")
    assert runner.maps_library(str(host.real_driver))
    assert not runner.maps_library(str(host.shim("cuda")))
    assert runner.maps_library(str(host.ggml_cuda))


def test_cpu_fallback_on_a_gpu_server(era_host):
    host = era_host[0]
    runner, offset = _load(host, "cpu_fallback")
    assert runner.state == "ready"
    assert not runner.maps_library(str(host.ggml_cuda))
    host.wait_log(r"offloaded 0/29 layers to GPU", since=offset)
    entry = next(m for m in host.servers[-1].api("/api/ps")["models"]
                 if m["name"] == "cpu-fallback:latest")
    # docs/ollama.md#http-api: the pre-load estimate (<= 0.11.4, llama engine <= 0.12.10)
    # still says GPU where the runner's backend failed silently; later versions report the
    # runner's allocations.
    estimated = host.era.name in ("E",)
    assert entry["size_vram"] == (entry["size"] if estimated else 0)


@pytest.mark.parametrize("era", ["C", "F"])
def test_cpu_only_discovery(simhost, era):
    host = simhost(era=era)
    host.add_model(MODEL)
    server = host.start_server(gpus=0, preload_shims=False)
    runner = server.load_model(MODEL, "cpu_fallback")
    log = host.log_text()
    if era == "F":
        assert re.search(r'msg="inference compute" id=cpu library=cpu compute="" name=cpu '
                         r'description=cpu libdirs=ollama driver="" pci_id="" type="" '
                         r'total="[\d.]+ GiB" available="[\d.]+ GiB"$', log, re.M)
    else:
        assert 'msg="no compatible GPUs were discovered"' in log
        assert re.search(r'msg="inference compute" id=0 library=cpu variant=avx2 compute="" '
                         r'driver=0\.0 name="" total=', log)
        assert runner.cmdline()[0].endswith("/runners/cpu_avx2/ollama_llama_server")
    host.wait_log(r"offloaded 0/29 layers to GPU")
    assert not any("cuda" in p or "vgpu" in p for p in runner.mapped_paths())
    assert server.api("/api/ps")["models"][0]["size_vram"] == 0


# -- kernel-visible crashes -----------------------------------------------------------------------


def _kmsg():
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        pytest.skip(f"/dev/kmsg not readable: {e}")
    os.lseek(fd, 0, os.SEEK_END)
    return fd


def _kmsg_wait(fd: int, pattern: str, timeout: float = 5) -> str | None:
    """The next kernel record matching `pattern`, or None after `timeout`."""
    rx = re.compile(pattern)

    def poll():
        while True:
            try:
                rec = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                return None
            except BrokenPipeError:  # records were overwritten before we read them
                continue
            if rx.search(rec):
                return rec
    try:
        return wait_until(poll, timeout, f"kernel record /{pattern}/")
    except SimHostError:
        return None


def test_kernel_logs_the_segfault_in_the_shim(f_host):
    with open("/proc/sys/debug/exception-trace") as f:
        if f.read().strip() != "1":
            pytest.skip("debug.exception-trace is off")
    host = f_host
    host.add_model("kmsg:latest")
    server = host.servers[-1]
    fd = _kmsg()
    try:
        # The kernel rate-limits these records (printk_ratelimit, shared with every other
        # crashing process on the machine): try again once the interval has passed.
        for _ in range(3):
            runner = server.load_model("kmsg:latest")
            server.crash_runner("kmsg:latest", mode="sigsegv", library="libvgpu-cuda.so")
            if _kmsg_wait(fd, rf"ollama\[{runner.pid}\]: segfault at 0 ip [0-9a-f]+ "
                              r"sp [0-9a-f]+ error \d+ in libvgpu-cuda\.so\[", timeout=3):
                return
        pytest.fail("no kernel segfault record for three crashes")
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0 or not MemoryCgroup.available(),
                    reason="needs root and a memory cgroup controller")
def test_oom_in_a_memory_cgroup_is_a_real_oom_kill(f_host):
    host = f_host
    host.add_model("oomkill:latest")
    server = host.servers[-1]
    runner = server.load_model("oomkill:latest")
    fd = _kmsg()
    try:
        dead = server.crash_runner("oomkill:latest", mode="oom", memory_limit=96 << 20)
        assert os.WIFSIGNALED(dead.wait_status)
        assert os.WTERMSIG(dead.wait_status) == signal.SIGKILL
        assert _kmsg_wait(fd, rf"Memory cgroup out of memory: Killed process {runner.pid} "
                              r"\(ollama\)")  # not rate-limited
    finally:
        os.close(fd)


# -- shims, probes, the API, the harness ----------------------------------------------------------


def test_preloaded_shims_are_in_server_and_runner(f_host):
    host = f_host
    server = host.servers[-1]
    runner = server.load_model(MODEL)
    with open(f"/proc/{server.pid}/maps") as f:
        server_maps = f.read()
    for name in ("exec", "cuda", "nvml", "cudart"):
        assert str(host.shim(name)) in server_maps
        assert runner.maps_library(str(host.shim(name)))
    assert "libggml-cuda.so" not in server_maps
    with open(f"/proc/{runner.pid}/environ") as f:
        assert "LD_PRELOAD=" in f.read()


def test_f_probes_are_killed_children_without_model(f_host):
    host = f_host
    server = host.servers[-1]
    probes = server.children("probe")
    assert len(probes) == 2  # one per library dir, one per device
    for probe in probes:
        assert probe.argv == [str(host.server_exe), "runner", "--ollama-engine", "--port",
                              str(probe.port)]
        assert os.WTERMSIG(probe.wait_status) == signal.SIGKILL
    log = host.log_text(server.log_offset)
    assert f'msg="starting runner" cmd="{" ".join(probes[0].argv)}"' in log


def test_g_probes(simhost):
    host = simhost(era="G")
    server = host.start_server(probe_hold=0.3)
    kinds = {p.argv[1]: p for p in server.children("probe")}
    assert os.WEXITSTATUS(kinds["gpu-discover"].wait_status) == 0
    assert os.WEXITSTATUS(kinds["--list-devices"].wait_status) == 0
    assert os.WTERMSIG(kinds["--port"].wait_status) == signal.SIGKILL
    assert "starting" not in host.log_text()  # G's probes are not logged at INFO


def test_discovery_probe_maps_the_cuda_backend(simhost):
    host = simhost(era="F")
    server = host.start_server(probes=False, probe_hold=0.6)
    before = {p.pid for p in server.children("probe")}
    import threading
    t = threading.Thread(target=server.discover)
    t.start()
    try:
        probe = wait_until(lambda: next((p for p in server.children("probe")
                                         if p.pid not in before and p.alive), None), 10, "probe")
        wait_until(lambda: probe.maps_library(str(host.ggml_cuda)), 10, "probe maps ggml-cuda")
        assert "--model" not in probe.cmdline()
    finally:
        t.join()


@pytest.mark.parametrize("mode", ["error", "garbage", "huge", "hang", "close"])
def test_api_faults(f_host, mode):
    host = f_host
    server = host.servers[-1]
    server.fault(mode, seconds=1.5, count=1, paths=["/api/ps"], bytes=8 << 20)
    try:
        if mode == "hang":
            with pytest.raises(TimeoutError):
                server.request("/api/ps", timeout=0.5)
        elif mode == "close":
            with pytest.raises(OSError):
                server.request("/api/ps", timeout=2)
        else:
            code, body = server.request("/api/ps")
            if mode == "error":
                assert code == 500 and "error" in json.loads(body)
            elif mode == "garbage":
                with pytest.raises(ValueError):
                    json.loads(body)
            else:
                assert len(body) > 8 << 20
        assert server.api("/api/version")  # other paths unaffected
    finally:
        server.clear_fault()
    assert "models" in server.api("/api/ps")


def test_generate_loads_like_ollama(f_host):
    host = f_host
    host.add_model("viaapi:latest")
    server = host.servers[-1]
    code, body = server.generate("viaapi:latest")
    assert code == 200 and body["done_reason"] == "load"
    assert server.runner("viaapi:latest").state == "ready"
    assert server.generate("nosuch:latest")[0] == 404
    host.wait_log(r'^\[GIN\] \d{4}/\d\d/\d\d - \d\d:\d\d:\d\d \| 200 \|\s+\S+ \|\s+127\.0\.0\.1 '
                  r'\| POST\s+"/api/generate"$')


def test_keep_alive_expiry_unloads_with_sigkill(f_host):
    host = f_host
    host.add_model("brief:latest")
    server = host.servers[-1]
    runner = server.load_model("brief:latest", keep_alive="300ms")
    status = runner.wait_exit(10)
    assert os.WTERMSIG(status) == signal.SIGKILL
    assert "brief:latest" not in [m["name"] for m in server.api("/api/ps")["models"]]


def test_set_link_and_replace_file(f_host):
    host = f_host
    server = host.servers[-1]
    runner = server.load_model(MODEL)
    link = host.lib64 / "libcuda.so.1"
    host.set_link(link, host.real_driver.name)
    assert os.readlink(link) == host.real_driver.name
    host.set_link(link, "libvgpu-cuda.so")
    old = os.stat(host.shim("cuda")).st_ino
    host.replace_file(host.shim("cuda"))
    assert os.stat(host.shim("cuda")).st_ino != old
    assert f"{host.shim('cuda')} (deleted)" in runner.maps()


def test_journal_renderings(era_host):
    host, server, _ = era_host
    plain = host.log_text().splitlines()
    short = host.journal("short").splitlines()
    assert len(short) == len(plain)
    assert re.match(rf"^[A-Z][a-z]{{2}} \d\d \d\d:\d\d:\d\d simhost ollama\[{server.pid}\]: ",
                    short[0])
    assert short[-1].endswith(plain[-1])
    entries = [json.loads(x) for x in host.journal("json").splitlines()]
    assert entries[0]["_PID"] == str(server.pid)
    assert entries[0]["MESSAGE"] == plain[0]
    assert all(isinstance(e["__REALTIME_TIMESTAMP"], str) for e in entries)


def test_vgpumon_config_points_into_the_host(era_host):
    host, server, _ = era_host
    cfg = host.vgpumon_config(listen="127.0.0.1:1", interval="1s", ollama={"timeout": "1s"})
    assert cfg["listen"] == "127.0.0.1:1" and cfg["interval"] == "1s"
    assert cfg["ollama"]["timeout"] == "1s" and cfg["ollama"]["url"] == server.url
    assert cfg["ollama"]["log"] == {"file": str(host.log_file)}
    for lib in cfg["libraries"].values():
        assert "path" not in lib or os.path.isfile(lib["path"])
    assert cfg["links"], "every era has the /usr/lib64 links"
    for link in cfg["links"]:
        assert os.path.realpath(link["path"]) == link["target"]
    ggml = cfg["libraries"]["ggml-cuda"]
    assert (ggml.get("path") == str(host.ggml_cuda)
            or fnmatch.fnmatch(host.ggml_cuda.name, ggml["name"]))


def test_host_without_shim_links(simhost):
    host = simhost(era="F", shim_links=False)
    host.add_model(MODEL)
    server = host.start_server(preload_shims=False, probes=False)
    runner = server.load_model(MODEL)
    assert runner.maps_library(str(host.real_driver))
    assert not any("libvgpu-" in p for p in runner.mapped_paths())
    assert os.readlink(host.lib64 / "libcuda.so.1") == host.real_driver.name
    assert [str(p) for p, _ in host.links()][2:] == [
        str(host.cuda_dir / "libcuda.so.1"), str(host.cuda_dir / "libcudart.so.12.8.90")]
    assert not os.path.lexists(host.cuda_dir / "libcuda.so.1")  # reported missing


@pytest.mark.parametrize("era", ["A", "B", "D2"])
def test_other_eras_start_and_load(simhost, era):
    host = simhost(era=era)
    host.add_model(MODEL)
    server = host.start_server(preload_shims=False)
    runner = server.load_model(MODEL)
    assert runner.state == "ready"
    assert server.api("/api/version") == {"version": host.era.version}
    assert server.request("/api/ps")[0] == (200 if era == "D2" else 404)  # since 0.1.38
    if era == "B":  # no runner: the server itself maps the CUDA libraries
        assert runner.pid == server.pid
        assert runner.maps_library("libext_server.so")
    else:
        assert runner.ppid() == server.pid
        assert runner.comm() == {"A": "ollama-runner", "D2": "ollama_llama_se"}[era]
    assert runner.maps_library(str(host.shim("cuda")))


def test_no_process_left_after_close_even_orphans(simhost):
    host = simhost(era="F")
    host.add_model(MODEL)
    server = host.start_server()
    runner = server.load_model(MODEL)
    server.kill(signal.SIGKILL)  # like a SIGKILLed `ollama serve`: its runner lives on
    server.wait()
    assert runner.pid in host.processes()
    host.close()
    assert host.processes() == []


# -- formats --------------------------------------------------------------------------------------


def test_slog_quoting_rules():
    import datetime as dt
    t = dt.datetime(2025, 6, 10, 8, 15, 2, 114000, tzinfo=dt.UTC)
    line = slog_line(t, "INFO", "types.go:42", "inference compute",
                     [("id", "GPU-1"), ("filter_id", ""), ("name", "NVIDIA A10"),
                      ("model layers", 29), ("q", 'a"b'), ("path", r"C:\x"), ("u", "héllo"),
                      ("eq", "a=b"), ("nl", "a\nb")])
    assert line == ('time=2025-06-10T08:15:02.114Z level=INFO source=types.go:42 '
                    'msg="inference compute" id=GPU-1 filter_id="" name="NVIDIA A10" '
                    '"model layers"=29 q="a\\"b" path=C:\\x u=héllo eq="a=b" nl="a\\nb"')
    assert go_quote("\x1b") == '"\\x1b"'


def test_go_formats():
    import datetime as dt
    assert exit_text(139) == "signal: segmentation fault (core dumped)"
    assert exit_text(2 << 8) == "exit status 2"
    assert exit_text(9) == "signal: killed"
    assert go_duration(0.0000552) == "55.2µs"
    assert go_duration(2.512013) == "2.512013s"
    assert go_duration(65.5) == "1m5.5s"
    assert human_bytes(23727570944) == "22.1 GiB" and human_bytes(512) == "512 B"
    t = dt.datetime(2025, 6, 10, 8, 15, 2)
    assert gin_line(t, 200, 0.0000552, "127.0.0.1", "GET", "/api/ps") == \
        '[GIN] 2025/06/10 - 08:15:02 | 200 |        55.2µs |       127.0.0.1 | GET      "/api/ps"'


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().rstrip("\n")


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().rstrip(b"\0").decode().split("\0")


def test_wait_until_times_out():
    start = time.monotonic()
    with pytest.raises(SimHostError):
        wait_until(lambda: False, 0.05, "nothing")
    assert time.monotonic() - start < 2
