"""vgpumon.ollama.interpret: Ollama log lines of every era → events (docs/events.md).

Lines are written from the format strings in docs/ollama.md (synthetic values).
"""

from __future__ import annotations

from datetime import datetime

import pytest

from vgpumon.model.events import Event
from vgpumon.ollama.interpret import (
    GO_CRASH,
    LogInterpreter,
    gpu_layers_of_load_request,
    parse_size,
)
from vgpumon.ollama.logline import parse_line

NOW = 1_000_000.0
LLAMA = "45b1c9806e74e0494dd9a08d54a93258ffe5b6ed6468a2c6c274a21bddd7d380"
QWEN = "4a65eed368b066945e57bb625e89d33190ea4863abb1c53422d4f9118a6d5e81"
BLOBS = "/usr/share/ollama/.ollama/models/blobs"
GPU_UUID = "GPU-3a6eeb5b-b641-497e-b833-6d00e2287107"

# slog prefixes, as Ollama writes them
I = "time=2025-06-10T08:15:02.114Z level=INFO source=server.go:405 "  # noqa: E741
W = "time=2025-06-10T08:15:02.114Z level=WARN source=server.go:611 "
E = "time=2025-06-10T08:15:02.114Z level=ERROR source=sched.go:457 "

START_LLAMA = (
    I + 'msg="starting llama server" cmd="/tmp/ollama1234/runners/cuda_v12/ollama_llama_server '
    f"--model {BLOBS}/sha256-{LLAMA} --ctx-size 8192 --batch-size 512 --embedding --log-disable "
    '--n-gpu-layers 33 --parallel 4 --port 38391"'
)
START_QWEN = (
    I + f'msg="starting runner" cmd="/usr/local/bin/ollama runner --ollama-engine --model '
    f'{BLOBS}/sha256-{QWEN} --port 40199"'
)


def run(*lines: str | bytes) -> list[Event]:
    interpreter = LogInterpreter()
    emitted: list[Event] = []
    for line in lines:
        emitted += interpreter.feed(parse_line(line), NOW)
    return emitted + interpreter.flush(NOW)


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def only(events: list[Event], kind: str | None = None) -> Event:
    matching = [e for e in events if kind is None or e.kind == kind]
    assert len(matching) == 1, kinds(events)
    return matching[0]


def fields(event: Event, *names: str) -> dict:
    return {name: event.get(name) for name in names}


# --- version ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "version"),
    [
        (
            "2023/12/01 10:00:00 routes.go:895: Listening on 127.0.0.1:11434 (version 0.1.17)",
            "0.1.17",
        ),
        (
            "2024/01/27 08:14:50 routes.go:933: INFO Listening on [::]:11434 (version 0.1.22)",
            "0.1.22",
        ),
        (I + 'msg="Listening on 127.0.0.1:11434 (version 0.9.6)"', "0.9.6"),
        (I + 'msg="Listening on [::]:11434 (version 0.13.0-rc1)"', "0.13.0-rc1"),
        (
            "Jun 10 08:15:02 gpu-node-3 ollama[4100]: "
            + I
            + 'msg="Listening on 127.0.0.1:11434 (version 0.0.0)"',
            "0.0.0",
        ),
    ],
)
def test_version(line, version):
    event = only(run(line))
    assert event.kind == "ollama_version"
    assert event.get("version") == version


def test_listening_without_version_is_no_event():
    assert run("2023/08/01 10:00:00 routes.go:400: Listening on 127.0.0.1:11434") == []


# --- GPU discovery ----------------------------------------------------------------------------

INFERENCE_COMPUTE = [
    (  # 0.1.35-0.3.6
        I + 'msg="inference compute" id=GPU-076afa50-fc31-49ca-be1d-f9e53480fe75 library=cuda '
        'compute=8.6 driver=12.4 name="NVIDIA GeForce RTX 3090" total="23.7 GiB" '
        'available="23.4 GiB"',
        {
            "id": "GPU-076afa50-fc31-49ca-be1d-f9e53480fe75",
            "library": "cuda",
            "name": "NVIDIA GeForce RTX 3090",
            "total_bytes": round(23.7 * 2**30),
            "available_bytes": round(23.4 * 2**30),
            "compute": "8.6",
            "driver": "12.4",
        },
    ),
    (  # 0.3.7-0.12.3
        I + f'msg="inference compute" id={GPU_UUID} library=cuda variant=v12 compute=8.9 '
        'driver=12.8 name="NVIDIA L4" total="22.0 GiB" available="21.8 GiB"',
        {
            "id": GPU_UUID,
            "library": "cuda",
            "variant": "v12",
            "name": "NVIDIA L4",
            "total_bytes": 22 * 2**30,
            "available_bytes": round(21.8 * 2**30),
        },
    ),
    (  # 0.3.7-0.12.3, ROCm: id=0 is a GPU here
        I + 'msg="inference compute" id=0 library=rocm variant="" compute=gfx1100 driver=6.3 '
        'name=1002:744c total="24.0 GiB" available="512.0 MiB"',
        {
            "id": "0",
            "library": "rocm",
            "name": "1002:744c",
            "compute": "gfx1100",
            "total_bytes": 24 * 2**30,
            "available_bytes": 512 * 2**20,
        },
    ),
    (  # 0.12.4+ (the facts' example)
        'time=2025-11-20T09:01:44.870+01:00 level=INFO source=types.go:42 msg="inference '
        'compute" id=GPU-076afa50-fc31-49ca-be1d-f9e53480fe75 filter_id="" library=CUDA '
        'compute=8.6 name=CUDA0 description="NVIDIA A10" libdirs=ollama,cuda_v12 driver=12.8 '
        'pci_id=0000:3b:00.0 type=discrete total="22.1 GiB" available="21.7 GiB"',
        {
            "id": "GPU-076afa50-fc31-49ca-be1d-f9e53480fe75",
            "library": "CUDA",
            "name": "CUDA0",
            "description": "NVIDIA A10",
            "libdirs": "ollama,cuda_v12",
            "driver": "12.8",
            "pci_id": "0000:3b:00.0",
            "type": "discrete",
            "filter_id": None,  # empty: left out
            "total_bytes": round(22.1 * 2**30),
        },
    ),
    (  # 0.12.10+ with a filter id, an iGPU, sizes in KiB and B
        I + 'msg="inference compute" id=0 filter_id=1 library=Vulkan compute=0.0 name=Vulkan0 '
        'description="AMD Radeon Graphics" libdirs=ollama,vulkan driver=0.0 pci_id=0000:c5:00.0 '
        'type=iGPU total="1024.0 KiB" available="4096 B"',
        {
            "id": "0",
            "filter_id": "1",
            "library": "Vulkan",
            "type": "iGPU",
            "total_bytes": 1024 * 1024,
            "available_bytes": 4096,
        },
    ),
]


@pytest.mark.parametrize(("line", "expected"), INFERENCE_COMPUTE)
def test_inference_compute_gpu(line, expected):
    event = only(run(line))
    assert event.kind == "gpu_discovered"
    assert fields(event, *expected) == expected
    assert event.get("level") == "INFO"


@pytest.mark.parametrize(
    ("line", "variant"),
    [
        (  # 0.3.7-0.12.3 CPU only
            I + 'msg="inference compute" id=0 library=cpu variant=avx2 compute="" driver=0.0 '
            'name="" total="31.3 GiB" available="28.1 GiB"',
            "avx2",
        ),
        (
            I + 'msg="inference compute" id=0 library=cpu variant="no vector extensions" '
            'compute="" driver=0.0 name="" total="31.3 GiB" available="28.1 GiB"',
            "no vector extensions",
        ),
        (
            I + 'msg="inference compute" id=0 library=cpu variant="" compute="" driver=0.0 '
            'name="" total="31.3 GiB" available="28.1 GiB"',
            None,
        ),
        (  # 0.12.4+ CPU only
            I + 'msg="inference compute" id=cpu library=cpu compute="" name=cpu description=cpu '
            'libdirs=ollama driver="" pci_id="" type="" total="31.3 GiB" available="28.1 GiB"',
            None,
        ),
    ],
)
def test_inference_compute_cpu_is_cpu_only(line, variant):
    event = only(run(line))
    assert event.kind == "cpu_only"
    assert event.get("variant") == variant


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("2024/01/27 08:14:50 gpu.go:99: INFO Nvidia GPU detected", "gpu_discovered"),
        ("2024/03/01 08:14:50 gpu.go:99: INFO Nvidia GPU detected via cudart", "gpu_discovered"),
        ("2024/01/27 08:14:50 gpu.go:160: INFO no GPU detected", "cpu_only"),
        (I + 'msg="no compatible GPUs were discovered"', "cpu_only"),
    ],
)
def test_old_discovery_lines(line, kind):
    event = only(run(line))
    assert event.kind == kind
    if kind == "gpu_discovered":
        assert fields(event, "id", "library", "name") == {"id": "", "library": "cuda", "name": ""}


OLD_LISTENING = "2023/12/20 10:00:00 routes.go:895: Listening on 127.0.0.1:11434 (version {})"
CUDA_DEVICES = (
    "ggml_init_cublas: GGML_CUDA_FORCE_MMQ:    no",
    "ggml_init_cublas: found 2 CUDA devices:",
    "  Device 0: NVIDIA A10, compute capability 8.6, VMM: yes",
    "  Device 1: NVIDIA L4, compute capability 8.9",
)


def test_before_0_1_21_the_cuda_device_list_is_the_discovery():
    events = [e for e in run(OLD_LISTENING.format("0.1.17"), *CUDA_DEVICES)
              if e.kind == "gpu_discovered"]
    assert [fields(e, "id", "library", "name", "compute") for e in events] == [
        {"id": "0", "library": "cuda", "name": "NVIDIA A10", "compute": "8.6"},
        {"id": "1", "library": "cuda", "name": "NVIDIA L4", "compute": "8.9"},
    ]
    assert events[0].get("discovery_round") == events[1].get("discovery_round")


def test_before_0_1_21_no_cuda_device_is_cpu_only():
    line = "ggml_init_cublas: found 0 CUDA devices:"
    assert kinds(run(OLD_LISTENING.format("0.1.20"), line)) == ["ollama_version", "cpu_only"]


@pytest.mark.parametrize("version", [None, "0.0.0", "0.1.21", "0.13.5"])
def test_a_runners_cuda_device_list_is_no_discovery_once_ollama_logs_its_own(version):
    """A runner's list may be narrowed by CUDA_VISIBLE_DEVICES (0.12.4+ probes one device
    each); without the version it is not known to be the only discovery either."""
    lines = ([OLD_LISTENING.format(version)] if version else []) + [
        "ggml_cuda_init: found 1 CUDA devices:",
        "  Device 0: NVIDIA A10, compute capability 8.6, VMM: yes, ID: GPU-1",
    ]
    assert "gpu_discovered" not in kinds(run(*lines))


def test_a_new_server_ends_an_unfinished_device_list():
    lines = [OLD_LISTENING.format("0.1.17"), "ggml_init_cublas: found 2 CUDA devices:",
             "  Device 0: NVIDIA A10, compute capability 8.6",
             OLD_LISTENING.format("0.13.5"),
             "  Device 0: NVIDIA A10, compute capability 8.6, VMM: yes, ID: GPU-1"]
    assert [e.get("id") for e in run(*lines) if e.kind == "gpu_discovered"] == ["0"]


def test_a_device_line_without_a_device_count_before_it_is_ignored():
    lines = [OLD_LISTENING.format("0.1.17"), "  Device 0: NVIDIA A10, compute capability 8.6"]
    assert kinds(run(*lines)) == ["ollama_version"]


def test_cpu_only_is_reported_once_per_discovery():
    cpu_line = (
        I + 'msg="inference compute" id=0 library=cpu variant=avx2 compute="" driver=0.0 '
        'name="" total="31.3 GiB" available="28.1 GiB"'
    )
    events = run(
        I + 'msg="looking for compatible GPUs"',
        I + 'msg="no compatible GPUs were discovered"',
        cpu_line,
        I + 'msg="looking for compatible GPUs"',
        I + 'msg="no compatible GPUs were discovered"',
        cpu_line,
    )
    assert kinds(events) == ["cpu_only", "cpu_only"]
    assert events[0].get("discovery_round") != events[1].get("discovery_round")


def test_gpus_of_one_discovery_share_a_round_and_rediscovery_starts_another():
    def gpu(n: int) -> str:
        return (
            I + f'msg="inference compute" id=GPU-{n} library=cuda variant=v12 compute=8.9 '
            f'driver=12.8 name="NVIDIA L4" total="22.0 GiB" available="21.8 GiB"'
        )

    events = run(gpu(1), gpu(2), gpu(1), gpu(2))
    rounds = [e.get("discovery_round") for e in events]
    assert rounds[0] == rounds[1] != rounds[2] == rounds[3]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (
            W + 'msg="failure during GPU discovery" OLLAMA_LIBRARY_PATH="[/usr/local/lib/ollama '
            '/usr/local/lib/ollama/cuda_v13]" extra_envs=map[] error="runner crashed"',
            "runner crashed",
        ),
        (
            W + 'msg="failure during llama-server GPU discovery" error="exit status 1"',
            "exit status 1",
        ),
        (
            W + 'msg="llama-server discovery: timed out waiting for server startup"',
            "llama-server discovery: timed out waiting for server startup",
        ),
        (
            I + 'msg="error looking up nvidia GPU memory" error="cuda driver library failed to '
            'get device context 800"',
            "cuda driver library failed to get device context 800",
        ),
        (
            W + 'msg="[0] CUDA GPU is too old. Compute Capability detected: 3.5"',
            "[0] CUDA GPU is too old. Compute Capability detected: 3.5",
        ),
    ],
)
def test_discovery_failed(line, error):
    event = only(run(line))
    assert event.kind == "discovery_failed"
    assert event.get("error").startswith(error)


# --- runner start and ready -------------------------------------------------------------------

RUNNER_STARTS = [
    (
        START_LLAMA,
        {"model": LLAMA, "port": 38391, "discovery": False, "n_gpu_layers": 33, "ctx_size": 8192},
    ),
    (  # D2: variant dir runner, "runner" subcommand
        I + 'msg="starting llama server" cmd="/usr/local/lib/ollama/runners/cuda_v12_avx/'
        f"ollama_llama_server runner --model {BLOBS}/sha256-{LLAMA} --ctx-size 2048 "
        '--batch-size 512 --n-gpu-layers 29 --threads 8 --parallel 1 --port 43123"',
        {"model": LLAMA, "port": 43123, "discovery": False},
    ),
    (START_QWEN, {"model": QWEN, "port": 40199, "discovery": False, "engine": "ollama"}),
    (  # F: a discovery probe
        I + 'msg="starting runner" cmd="/usr/local/bin/ollama runner --ollama-engine --port 35871"',
        {"model": None, "port": 35871, "discovery": True},
    ),
    (  # G: llama-server
        I + 'msg="starting llama-server" cmd="/usr/local/lib/ollama/llama-server --model '
        f"/root/.ollama/models/blobs/sha256-{QWEN} --port 41234 --host 127.0.0.1 --no-webui "
        '--offline -c 4096 -np 1 --no-log-prefix --no-log-timestamps"',
        {"model": QWEN, "port": 41234, "discovery": False, "ctx_size": 4096},
    ),
    (  # G: MLX runner names the model
        I + 'msg="starting runner" cmd="/usr/local/bin/ollama runner --mlx-engine --model '
        'llama3.2:3b --port 41000"',
        {"model": "llama3.2:3b", "port": 41000, "discovery": False, "engine": "mlx"},
    ),
    (  # very old blob names
        I + 'msg="starting llama server" cmd="/tmp/ollama9/runners/cpu_avx2/ollama_llama_server '
        f'--model /root/.ollama/models/blobs/sha256:{LLAMA} --port 50001"',
        {"model": LLAMA, "port": 50001, "discovery": False},
    ),
    (  # A: no command line logged
        "2023/12/01 10:00:05 llama.go:436: starting llama runner",
        {"model": None, "port": None, "discovery": False},
    ),
]


@pytest.mark.parametrize(("line", "expected"), RUNNER_STARTS)
def test_runner_started(line, expected):
    event = only(run(line))
    assert event.kind == "runner_started"
    assert fields(event, *expected) == expected
    assert "model" in event.fields


@pytest.mark.parametrize(
    ("line", "seconds"),
    [
        ("2023/12/01 10:00:08 llama.go:508: llama runner started in 3.002150 seconds", 3.00215),
        (I + 'msg="llama runner started in 3.01 seconds"', 3.01),
        (I + 'msg="llama-server started in 4.51 seconds"', 4.51),
    ],
)
def test_runner_ready(line, seconds):
    event = only(run(START_LLAMA, line), "runner_ready")
    assert event.get("seconds") == seconds
    assert event.get("model") == LLAMA


def test_a_probe_does_not_change_the_current_model():
    probe = I + 'msg="starting runner" cmd="/usr/local/bin/ollama runner --ollama-engine --port 1"'
    events = run(START_QWEN, probe, I + 'msg="offloaded 37/37 layers to GPU"')
    assert only(events, "offload").get("model") == QWEN


# --- offload ----------------------------------------------------------------------------------

ACTUAL_OFFLOADS = [
    ("llm_load_tensors: offloaded 33/33 layers to GPU", 33, 33, "llama.cpp"),
    ("load_tensors: offloaded 23/63 layers to GPU", 23, 63, "llama.cpp"),
    ("load_tensors: offloaded 0/63 layers to GPU", 0, 63, "llama.cpp"),
    (
        "time=2025-12-09T13:40:21.006Z level=INFO source=ggml.go:501 "
        'msg="offloaded 37/37 layers to GPU"',
        37,
        37,
        "ollama_engine",
    ),
]


@pytest.mark.parametrize(("line", "gpu", "total", "origin"), ACTUAL_OFFLOADS)
def test_actual_offload(line, gpu, total, origin):
    event = only(run(START_LLAMA, line), "offload")
    assert fields(event, "gpu_layers", "total_layers", "estimate", "origin", "model") == {
        "gpu_layers": gpu,
        "total_layers": total,
        "estimate": False,
        "origin": origin,
        "model": LLAMA,
    }


def load_request(operation: str, gpu_layers: str) -> str:
    return (
        "time=2025-12-09T13:40:20.912Z level=INFO source=runner.go:1284 msg=load "
        f'request="{{Operation:{operation} LoraPath:[] Parallel:2 BatchSize:256 '
        "FlashAttention:true KvSize:16384 KvCacheType:q8_0 NumThreads:12 "
        f'GPULayers:{gpu_layers} MultiUserCache:false ProjectorPath: MainGPU:0 UseMmap:true}}"'
    )


LOADING_MODEL = I + 'msg="loading model" "model layers"=37 requested=-1'


@pytest.mark.parametrize(
    ("gpu_layers", "expected"),
    [
        (f"37[ID:{GPU_UUID} Layers:37(0..36)]", 37),
        ("[]", 0),
        ("40[ID:GPU-a Layers:20(0..19) ID:GPU-b Layers:20(20..39)]", 40),
        ("5[ID:GPU-a Layers:3[0 1 2] ID:GPU-b Layers:2[3 4]]", 5),
        ("[ID:GPU-a Layers:3[0 1 2] ID:GPU-b Layers:2[3 4]]", 5),  # no sum printed
    ],
)
def test_load_request_commit_is_the_actual_offload(gpu_layers, expected):
    events = run(START_QWEN, LOADING_MODEL, load_request("commit", gpu_layers))
    event = only(events, "offload")
    assert fields(event, "gpu_layers", "total_layers", "estimate", "origin", "model") == {
        "gpu_layers": expected,
        "total_layers": 37,
        "estimate": False,
        "origin": "load_request",
        "model": QWEN,
    }


@pytest.mark.parametrize("operation", ["fit", "alloc", "close"])
def test_load_request_attempts_are_not_offloads(operation):
    assert "offload" not in kinds(run(START_QWEN, load_request(operation, "[]")))


def test_load_request_without_model_layers_has_no_total():
    event = only(run(START_QWEN, load_request("commit", "[]")), "offload")
    assert event.get("total_layers") is None
    assert "total_layers" in event.fields


def test_ollama_engine_load_reports_both_forms():
    events = run(
        START_QWEN,
        LOADING_MODEL,
        load_request("fit", f"37[ID:{GPU_UUID} Layers:37(0..36)]"),
        load_request("commit", f"37[ID:{GPU_UUID} Layers:37(0..36)]"),
        I + 'msg="offloaded 37/37 layers to GPU"',
    )
    offloads = [e for e in events if e.kind == "offload"]
    assert [(e.get("gpu_layers"), e.get("total_layers"), e.get("origin")) for e in offloads] == [
        (37, 37, "load_request"),
        (37, 37, "ollama_engine"),
    ]


ESTIMATES = [
    (  # <= 0.1.17
        "2023/12/01 10:00:05 llama.go:300: 22563 MB VRAM available, loading up to 43 GPU layers",
        {"gpu_layers": 43, "total_layers": None, "available_bytes": 22563 * 2**20},
    ),
    (  # 0.1.33
        I + 'msg="offload to gpu" layers.requested=-1 layers.real=33 layers.estimate=33 '
        'memory.available="23.4 GiB" memory.required.full="5.0 GiB" '
        'memory.required.partial="5.0 GiB" memory.required.kv="256.0 MiB"',
        {"gpu_layers": 33, "total_layers": None, "requested": -1},
    ),
    (  # 0.1.45-0.5.11
        I + 'msg="offload to cuda" layers.requested=-1 layers.model=33 layers.offload=20 '
        'layers.split="" memory.available="[7.6 GiB]" memory.gpu_overhead="0 B" '
        'memory.required.full="9.1 GiB" memory.required.partial="7.4 GiB"',
        {"gpu_layers": 20, "total_layers": 33, "library": "cuda"},
    ),
    (
        I + 'msg="offload to cpu" layers.requested=-1 layers.model=33 layers.offload=0 '
        'layers.split="" memory.available="[31.3 GiB]"',
        {"gpu_layers": 0, "total_layers": 33, "library": "cpu"},
    ),
    (  # 0.5.12-0.12.10
        I + "msg=offload library=cuda layers.requested=-1 layers.model=29 layers.offload=29 "
        'layers.split=2,27 memory.available="[21.8 GiB]" memory.gpu_overhead="0 B"',
        {"gpu_layers": 29, "total_layers": 29, "library": "cuda"},
    ),
]


@pytest.mark.parametrize(("line", "expected"), ESTIMATES)
def test_server_estimate(line, expected):
    event = only(run(line), "offload")
    assert event.get("estimate") is True
    assert event.get("origin") == "server_estimate"
    assert fields(event, *expected) == expected


def test_estimate_before_the_runner_start_belongs_to_that_runner():
    estimate = ESTIMATES[2][0]
    events = run(START_QWEN, estimate, START_LLAMA)
    assert kinds(events) == ["runner_started", "runner_started", "offload"]
    assert events[2].get("model") == LLAMA


def test_estimate_after_the_runner_start_belongs_to_it():
    estimate = ESTIMATES[4][0]
    events = run(START_QWEN, estimate, load_request("commit", "[]"))
    assert kinds(events) == ["runner_started", "offload", "offload"]
    assert [e.get("model") for e in events[1:]] == [QWEN, QWEN]
    assert [e.get("estimate") for e in events[1:]] == [True, False]


@pytest.mark.parametrize(
    ("request_text", "layers"),
    [("{Operation:commit GPULayers:12[ID:0 Layers:12(0..11)]}", 12), ("{Operation:commit}", None)],
)
def test_gpu_layers_of_load_request(request_text, layers):
    assert gpu_layers_of_load_request(request_text) == layers


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("22.1 GiB", round(22.1 * 2**30)),
        ("0 B", 0),
        ("1.5 MiB", 3 * 2**19),
        ("12.0 KiB", 12 * 1024),
        ("lots", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


# --- runner exits -----------------------------------------------------------------------------

EXITS = [
    (
        E + 'msg="llama runner terminated" error="exit status 1"',
        {"reason": "error", "exit_code": 1},
    ),
    (
        E + 'msg="llama runner terminated" error="exit status 0"',
        {"reason": "clean", "exit_code": 0},
    ),
    (
        E + 'msg="llama runner terminated" error="signal: segmentation fault (core dumped)"',
        {"reason": "crash", "signal": "SIGSEGV", "core_dumped": True},
    ),
    (
        W + 'msg="llama runner terminated" error="signal: killed"',
        {"reason": "stopped", "signal": "SIGKILL"},
    ),
    (
        E + 'msg="llama-server terminated" error="exit status 1" exit=1',
        {"reason": "error", "exit_code": 1},
    ),
    (
        E + 'msg="llama-server terminated" error="signal: aborted (core dumped)" exit=unknown',
        {"reason": "crash", "signal": "SIGABRT", "exit_code": None},
    ),
    (
        E + 'msg="error loading llama server" error="llama runner process has terminated: exit '
        'status 2"',
        {"reason": "error", "exit_code": 2},
    ),
    (
        E + 'msg="error loading llama server" error="llama runner process has terminated: error '
        'loading model: unable to allocate CUDA0 buffer"',
        {"reason": "error", "exit_code": None},
    ),
    (
        E + 'msg="error loading llama server" error="llama runner process has terminated: signal '
        'arrived during cgo execution"',
        {"reason": "crash"},
    ),
    (  # 0.1.32-0.2.7: exit text then the last error
        E + 'msg="error loading llama server" error="llama runner process has terminated: exit '
        "status 1 error:failed to create context with model '/root/.ollama/models/blobs/"
        "sha256-x'\"",
        {"reason": "error", "exit_code": 1},
    ),
    (
        E + 'msg="error loading llama server" error="llama runner process has terminated: exit '
        'status 0xc0000409"',
        {"reason": "crash", "exit_code": 0xC0000409},
    ),
    (  # the facts' example
        'time=2024-09-03T14:12:09.777+02:00 level=WARN source=server.go:611 msg="llama runner '
        'process no longer running" sys=139 string="signal: segmentation fault (core dumped)"',
        {"reason": "crash", "signal": "SIGSEGV", "core_dumped": True},
    ),
    (
        W + 'msg="llama runner process no longer running" sys=512',
        {"reason": "error", "exit_code": 2},
    ),
    (
        E + 'msg="post predict" error="llama runner process no longer running: -1 "',
        {"reason": "unknown"},
    ),
    (
        E + 'msg="post predict" error="llama runner process no longer running: 1 error:out of '
        'memory"',
        {"reason": "error", "exit_code": 1},
    ),
    (  # 0.30+
        E + 'msg="llama-server completion error" error="llama-server process no longer running: '
        'exit status 1 out of memory"',
        {"reason": "error", "exit_code": 1},
    ),
    (
        E + 'msg="error loading llama server" error="llama-server process has terminated: exit '
        'status 1: failed to load model"',
        {"reason": "error", "exit_code": 1},
    ),
    (
        E + 'msg="error loading llama server" error="llama-server process has terminated: OK"',
        {"reason": "clean", "exit_code": 0},
    ),
    (
        E + 'msg="error loading llama server" error="llama-server process has terminated: unknown"',
        {"reason": "unknown"},
    ),
    (  # <= 0.1.17 names no exit text
        "2023/12/01 10:00:09 llama.go:451: llama runner process has terminated",
        {"reason": "unknown"},
    ),
]


@pytest.mark.parametrize(("line", "expected"), EXITS)
def test_runner_exited(line, expected):
    event = only(run(START_LLAMA, line), "runner_exited")
    assert fields(event, *expected) == expected
    assert event.get("model") == LLAMA
    assert event.get("message")


def test_exit_status_127_names_the_missing_library():
    loader = (
        "/usr/local/bin/ollama: error while loading shared libraries: libcudart.so.12: cannot "
        "open shared object file: No such file or directory"
    )
    events = run(START_QWEN, loader, E + 'msg="llama runner terminated" error="exit status 127"')
    event = only(events, "runner_exited")
    assert fields(event, "reason", "exit_code", "missing_library") == {
        "reason": "error",
        "exit_code": 127,
        "missing_library": "libcudart.so.12",
    }
    assert "libcudart.so.12: cannot open shared object file" in event.get("message")


def test_repeated_reports_of_one_exit_are_marked():
    events = run(
        START_QWEN,
        E + 'msg="llama runner terminated" error="exit status 1"',
        E + 'msg="error loading llama server" error="llama runner process has terminated: '
        'error loading model: bad file"',
    )
    first, second = (e for e in events if e.kind == "runner_exited")
    assert first.get("repeat") is None
    assert second.get("repeat") is True


def test_a_new_runner_resets_the_repeat_window():
    exit_line = E + 'msg="llama runner terminated" error="exit status 1"'
    events = run(START_QWEN, exit_line, START_LLAMA, exit_line)
    assert [e.get("repeat") for e in events if e.kind == "runner_exited"] == [None, None]


# --- Go crash traces --------------------------------------------------------------------------

SEGV_IN_CGO = [
    "SIGSEGV: segmentation violation",
    "PC=0x7f3a1c02b1e4 m=5 sigcode=1 addr=0x18",
    "signal arrived during cgo execution",
    "",
    "goroutine 7 gp=0xc000102a80 m=5 mp=0xc000100008 [syscall]:",
    "runtime.cgocall(0x55d0c3a0b0d0, 0xc00004fb80)",
    "\t/usr/local/go/src/runtime/cgocall.go:167 +0x4b fp=0xc00004fb58 sp=0xc00004fb20",
    "github.com/ollama/ollama/llama._Cfunc_llama_decode(0x7f3a0c000b70, {0x1, 0x0})",
    "rax    0x0",
    "rip    0x7f3a1c02b1e4",
]
FATAL_UNEXPECTED_SIGNAL = [
    "fatal error: unexpected signal during runtime execution",
    "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x7f00deadbeef]",
    "",
    "runtime stack:",
    "runtime.throw({0x55d0c3b2d2a1?, 0x0?})",
    "goroutine 1 gp=0xc0000061c0 m=0 mp=0x55d0c4a1e5e0 [syscall, locked to thread]:",
]
NIL_PANIC = [
    "panic: runtime error: invalid memory address or nil pointer dereference",
    "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x55d0c2f8c66b]",
    "",
    "goroutine 38 [running]:",
    "github.com/ollama/ollama/runner/ollamarunner.(*Server).run(0xc0001a2000)",
]
PLAIN_PANIC = ["panic: failed to create context", "", "goroutine 1 [running]:"]
GGML_ABORT = [
    "/go/src/github.com/ollama/ollama/ml/backend/ggml/ggml/src/ggml.c:1734: "
    "GGML_ASSERT(ggml_nelements(a) == ne0) failed",
    "SIGABRT: abort",
    "PC=0x7f8e4a29eb2c m=12 sigcode=18446744073709551610",
    "signal arrived during cgo execution",
    "",
    "goroutine 23 gp=0xc000503500 m=12 mp=0xc000680008 [syscall]:",
]

GO_CRASHES = [
    (
        SEGV_IN_CGO,
        {
            "signal": "SIGSEGV",
            "pc": 0x7F3A1C02B1E4,
            "addr": 0x18,
            "cgo": True,
            "message": "segmentation violation",
        },
    ),
    (
        FATAL_UNEXPECTED_SIGNAL,
        {
            "signal": "SIGSEGV",
            "pc": 0x7F00DEADBEEF,
            "addr": 0,
            "cgo": False,
            "message": "unexpected signal during runtime execution",
        },
    ),
    (
        NIL_PANIC,
        {
            "signal": "SIGSEGV",
            "pc": 0x55D0C2F8C66B,
            "message": "runtime error: invalid memory address or nil pointer dereference",
        },
    ),
    (PLAIN_PANIC, {"signal": None, "pc": None, "message": "failed to create context"}),
    (
        GGML_ABORT,
        {
            "signal": "SIGABRT",
            "pc": 0x7F8E4A29EB2C,
            "cgo": True,
            "message": "abort",
            "cause": "/go/src/github.com/ollama/ollama/ml/backend/ggml/ggml/src/ggml.c:1734: "
            "GGML_ASSERT(ggml_nelements(a) == ne0) failed",
        },
    ),
    (
        ["SIGBUS: bus error", "PC=0x1 m=0 sigcode=2", "goroutine 1 [running]:"],
        {"signal": "SIGBUS", "pc": 1},
    ),
    (
        ["SIGILL: illegal instruction", "PC=0x2 m=0 sigcode=2", "goroutine 1 [running]:"],
        {"signal": "SIGILL", "pc": 2},
    ),
    (
        ["SIGFPE: floating-point exception", "PC=0x3 m=0 sigcode=1", "goroutine 1 [running]:"],
        {"signal": "SIGFPE", "pc": 3},
    ),
]

EXIT_2 = (
    E
    + 'msg="error loading llama server" error="llama runner process has terminated: exit status 2"'
)


@pytest.mark.parametrize(("trace", "expected"), GO_CRASHES)
def test_go_crash_trace_is_one_event_and_refines_the_exit(trace, expected):
    events = run(START_QWEN, *trace, EXIT_2)
    assert kinds(events) == ["runner_started", GO_CRASH, "runner_exited"]
    crash, exited = events[1], events[2]
    assert fields(crash, *expected) == expected
    assert crash.get("model") == QWEN
    assert fields(exited, "reason", "exit_code", "crash_signal", "pc", "model") == {
        "reason": "crash",
        "exit_code": 2,
        "crash_signal": expected["signal"],
        "pc": expected["pc"],
        "model": QWEN,
    }


def test_go_crash_is_emitted_when_the_dump_starts_not_at_the_exit():
    interpreter = LogInterpreter()
    emitted = []
    for line in [START_QWEN, *SEGV_IN_CGO[:4]]:
        emitted += interpreter.feed(parse_line(line), NOW)
    assert kinds(emitted) == ["runner_started"]
    assert kinds(interpreter.feed(parse_line(SEGV_IN_CGO[4]), NOW)) == [GO_CRASH]


def test_go_crash_without_a_dump_is_emitted_at_the_next_structured_line_or_flush():
    assert kinds(run(*SEGV_IN_CGO[:3], I + 'msg="x"')) == [GO_CRASH]
    assert kinds(run(*SEGV_IN_CGO[:3])) == [GO_CRASH]


def test_go_crash_takes_the_time_of_its_first_line():
    interpreter = LogInterpreter()
    interpreter.feed(parse_line("2025-06-10T08:15:02+0000 h ollama[1]: SIGSEGV: x"), NOW)
    (crash,) = interpreter.feed(parse_line("goroutine 1 [running]:"), NOW + 5)
    assert crash.ts == datetime.fromisoformat("2025-06-10T08:15:02+00:00").timestamp()


def test_exit_status_2_without_a_trace_is_an_error():
    event = only(run(START_QWEN, EXIT_2), "runner_exited")
    assert event.get("reason") == "error"
    assert event.get("crash_signal") is None


def test_a_trace_of_an_earlier_runner_does_not_refine_a_later_exit():
    events = run(START_QWEN, *SEGV_IN_CGO, START_LLAMA, EXIT_2)
    assert only(events, "runner_exited").get("reason") == "error"


def test_signal_exit_is_not_refined_by_a_trace():
    line = E + 'msg="llama runner terminated" error="signal: killed"'
    assert only(run(*SEGV_IN_CGO, line), "runner_exited").get("reason") == "stopped"


def test_trace_lines_make_no_other_events():
    trace = [
        "SIGABRT: abort",
        "PC=0x1 m=0 sigcode=0",
        "CUDA error: out of memory",
        "goroutine 1 [x]:",
    ]
    assert kinds(run(*trace)) == [GO_CRASH]


# --- CUDA, memory, load and backend problems --------------------------------------------------

PROBLEMS = [
    (
        "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected",
        "cuda_init_failed",
    ),
    ("ggml_cuda_init: failed to initialize CUDA: initialization error", "cuda_init_failed"),
    (
        I + 'msg="Unable to load cudart library /usr/lib/x86_64-linux-gnu/libcudart.so.12.4.99: '
        'cuda driver library init failure: 999"',
        "cuda_init_failed",
    ),
    (
        W + 'msg="unable to load cuda driver library" library=/usr/lib64/libcuda.so.1 '
        'error="cuda driver library init failure: 3"',
        "cuda_init_failed",
    ),
    ("CUDA error: an illegal memory access was encountered", "cuda_error"),
    (
        "CUDA error 2 at /go/src/github.com/jmorganca/ollama/llm/llama.cpp/ggml-cuda.cu:7636: "
        "out of memory",
        "cuda_error",
    ),
    (
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9216.00 MiB on device 0: "
        "cudaMalloc failed: out of memory",
        "out_of_memory",
    ),
    ("alloc_tensor_range: failed to allocate CUDA0 buffer of size 9663676416", "out_of_memory"),
    (
        I + 'msg="memory layout cannot be allocated" memory.InputWeights=4404019200 '
        "memory.CPU.Name=CPU memory.GPUs[0].Name=CUDA0",
        "out_of_memory",
    ),
    (
        "llama_model_load: error loading model: error loading model vocabulary: unknown "
        "pre-tokenizer type: 'qwen2'",
        "load_failed",
    ),
    ("llama_model_load_from_file_impl: failed to load model", "load_failed"),
    (
        E + f'msg="Load failed" model={BLOBS}/sha256-{QWEN} error="model requires more system '
        'memory (11.2 GiB) than is available (7.6 GiB)"',
        "load_failed",
    ),
    (
        E + 'msg="do load request" error="Post \\"http://127.0.0.1:40199/load\\": EOF"',
        "load_failed",
    ),
    (
        E + 'msg="error loading llama server" error="timed out waiting for llama runner to '
        'start - progress 1.00 - "',
        "load_failed",
    ),
    (
        "2023/12/01 10:00:05 llama.go:436: error starting llama runner: fork/exec: ENOENT",
        "load_failed",
    ),
    ("ggml_init_cublas: failed to initialize CUDA: initialization error", "cuda_init_failed"),
]


@pytest.mark.parametrize(("line", "kind"), PROBLEMS)
def test_problem_lines(line, kind):
    event = only(run(START_QWEN, line), kind)
    assert event.get("message")
    assert event.get("model") == QWEN


def test_slog_problem_message_includes_the_error_attribute():
    event = only(run(PROBLEMS[11][0]), "load_failed")
    assert event.get("message") == (
        "Load failed: model requires more system memory (11.2 GiB) than is available (7.6 GiB)"
    )
    assert event.get("level") == "ERROR"


def test_a_cuda_error_block_is_one_event():
    events = run(
        "CUDA error: an illegal memory access was encountered",
        "  current device: 0, in function ggml_backend_cuda_synchronize at ggml-cuda.cu:2343",
        "  cudaStreamSynchronize(cuda_ctx->stream())",
        "ggml-cuda.cu:101: CUDA error",
    )
    assert kinds(events) == ["cuda_error"]


@pytest.mark.parametrize(
    "block",
    [
        [
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9216.00 MiB on device 0: "
            "cudaMalloc failed: out of memory",
            "alloc_tensor_range: failed to allocate CUDA0 buffer of size 9663676416",
        ],
        [
            "llama_model_load: error loading model: unable to allocate backend buffer",
            "llama_load_model_from_file: failed to load model",
        ],
    ],
)
def test_one_failure_reported_on_consecutive_lines_is_one_event(block):
    assert len(run(*block)) == 1
    assert len(run(*block, "unrelated", *block)) == 2


@pytest.mark.parametrize(
    ("line", "path"),
    [
        (
            "load_backend: failed to load /opt/ai/ollama/lib/ollama/cuda_v13/libggml-cuda.so: "
            "libcublas.so.13: cannot open shared object file: No such file or directory",
            "/opt/ai/ollama/lib/ollama/cuda_v13/libggml-cuda.so",
        ),
        (
            "load_backend: failed to load /usr/local/lib/ollama/cuda_v12/libggml-cuda.so",
            "/usr/local/lib/ollama/cuda_v12/libggml-cuda.so",
        ),
        (
            "ggml_nvml_init unable to load libnvidia-ml: libnvidia-ml.so.1: cannot open shared "
            "object file: No such file or directory",
            None,
        ),
    ],
)
def test_backend_load_failed(line, path):
    event = only(run(line))
    assert event.kind == "backend_load_failed"
    assert event.get("path") == path
    assert event.get("message") == line


@pytest.mark.parametrize(
    ("line", "name", "path"),
    [
        (
            "load_backend: loaded CUDA backend from /usr/local/lib/ollama/cuda_v12/libggml-cuda.so",
            "CUDA",
            "/usr/local/lib/ollama/cuda_v12/libggml-cuda.so",
        ),
        (
            "load_backend: loaded CPU backend from /usr/lib/ollama/libggml-cpu-haswell.so",
            "CPU",
            "/usr/lib/ollama/libggml-cpu-haswell.so",
        ),
        (
            "load_backend: loaded ROCm backend from /usr/lib/ollama/rocm/libggml-hip.so",
            "ROCm",
            "/usr/lib/ollama/rocm/libggml-hip.so",
        ),
    ],
)
def test_backend_loaded(line, name, path):
    event = only(run(line))
    assert (event.kind, event.get("name"), event.get("path")) == ("backend_loaded", name, path)


@pytest.mark.parametrize(
    "line",
    [
        "ggml_cuda_init: found 1 CUDA devices:",
        "  Device 0: NVIDIA A10, compute capability 8.6, VMM: yes, ID: GPU-076afa50",
        "llm_load_tensors: offloading 32 repeating layers to GPU",
        "llm_load_tensors:      CUDA0 buffer size =  4155.99 MiB",
        '[GIN] 2024/01/27 - 08:14:55 | 200 |  4.1s |       127.0.0.1 | POST     "/api/chat"',
        I + 'msg="loaded runners" count=1',
        I + 'msg="waiting for llama runner to start responding"',
        I + 'msg="starting go runner"',
        I + 'msg="server config" env="map[OLLAMA_DEBUG:false]"',
        I + 'msg="no nvidia devices detected by library /usr/lib/libcuda.so.535"',
        "ggml-cuda.cu:101: CUDA error",
        "",
    ],
)
def test_lines_that_make_no_event(line):
    assert run(line) == []


# --- time -------------------------------------------------------------------------------------


def test_event_time_comes_from_the_record_then_the_transport_then_now():
    interpreter = LogInterpreter()
    slog = parse_line(I + 'msg="Listening on 127.0.0.1:11434 (version 0.9.6)"')
    iso = parse_line(
        "2025-06-10T08:15:03+0000 h ollama[1]: load_tensors: offloaded 1/2 layers to GPU"
    )
    short = parse_line("Jun 10 08:15:04 h ollama[1]: load_tensors: offloaded 1/2 layers to GPU")
    assert (
        interpreter.feed(slog, NOW)[0].ts
        == datetime.fromisoformat("2025-06-10T08:15:02.114+00:00").timestamp()
    )
    assert (
        interpreter.feed(iso, NOW)[0].ts
        == datetime.fromisoformat("2025-06-10T08:15:03+00:00").timestamp()
    )
    assert interpreter.feed(short, NOW)[0].ts == NOW


def test_events_serialise_to_json():
    for event in run(START_QWEN, *SEGV_IN_CGO, EXIT_2, *[p for p, _ in PROBLEMS]):
        assert event.to_json().startswith('{"ts":')


@pytest.mark.parametrize(
    "line",
    [
        "Listening on " * 80_000,
        "GGML_ASSERT(" * 80_000,
        "2024/01/27 08:14:55 x.go:1: INFO m " + "a=b " * 250_000 + "junk",
        "time=2025-01-01T00:00:00.000Z level=INFO msg=m " + "a=b " * 250_000 + '"',
        "[signal SIGSEGV: " + "x" * (1 << 20),
    ],
)
def test_pathological_megabyte_lines_are_read(line):
    # Guards against regexes that backtrack quadratically: these lines took minutes before.
    assert isinstance(run(line), list)
