"""OllamaFacts: log events folded into GPUs and per-model offload; llama-server's own log."""

from __future__ import annotations

from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.ollama.interpret import LogInterpreter
from vgpumon.ollama.logline import parse_line
from vgpumon.snapshot.ollama import OllamaFacts

BLOB = "a" * 64


def e(kind, ts=1.0, **fields):
    return Event(ts, kind, fields)


def test_gpus_of_the_last_discovery_round():
    facts = OllamaFacts()
    facts.apply([e(ev.GPU_DISCOVERED, id="GPU-1", library="CUDA", name="A", discovery_round=1),
                 e(ev.GPU_DISCOVERED, id="GPU-2", library="CUDA", name="B", discovery_round=1)])
    assert [g.id for g in facts.state(None, {}).gpus] == ["GPU-1", "GPU-2"]
    facts.apply([e(ev.CPU_ONLY, discovery_round=2)])
    assert facts.state(None, {}).gpus == ()


def test_no_discovery_seen_means_unknown():
    assert OllamaFacts().state(None, {}).gpus is None


def test_actual_offload_wins_over_the_estimate_and_a_new_load_resets_it():
    facts = OllamaFacts()
    facts.apply([e(ev.OFFLOAD, gpu_layers=29, total_layers=29, estimate=True, model=BLOB)])
    assert facts.offload()[BLOB].estimate
    facts.apply([e(ev.OFFLOAD, gpu_layers=10, total_layers=29, estimate=False, model=BLOB)])
    assert (facts.offload()[BLOB].gpu_layers, facts.offload()[BLOB].estimate) == (10, False)
    facts.apply([e(ev.OFFLOAD, gpu_layers=29, total_layers=29, estimate=True, model=BLOB),
                 e(ev.RUNNER_STARTED, model=BLOB, discovery=False)])
    assert facts.offload()[BLOB].estimate  # the old runner's report is gone with the new load


def test_load_request_without_total_keeps_the_known_total():
    facts = OllamaFacts()
    facts.apply([e(ev.OFFLOAD, gpu_layers=29, total_layers=29, estimate=False, model=BLOB),
                 e(ev.OFFLOAD, gpu_layers=5, total_layers=None, estimate=False, model=BLOB)])
    assert (facts.offload()[BLOB].gpu_layers, facts.offload()[BLOB].total_layers) == (5, 29)


# llama-server's own stderr (Ollama 0.30+ runs it; the rig runs it directly): no Ollama line
# names the model, llama.cpp's loader does.
LLAMA_SERVER_STDERR = [
    "llama_model_loader: loaded meta data with 27 key-value pairs and 39 tensors from "
    "/srv/models/tiny.gguf (version GGUF V3 (latest))",
    "load_tensors: offloading 4 repeating layers to GPU",
    "load_tensors: offloading output layer to GPU",
    "load_tensors: offloaded 5/5 layers to GPU",
]


def facts_of(lines: list[str], interpreter: LogInterpreter | None = None) -> OllamaFacts:
    """The facts the daemon folds from these log lines."""
    interpreter = interpreter or LogInterpreter()
    facts = OllamaFacts()
    for line in lines:
        facts.apply(interpreter.feed(parse_line(line), 1.0))
    return facts


def test_llama_server_log_attributes_the_offload_to_its_model_file():
    offload = facts_of(LLAMA_SERVER_STDERR).offload()["/srv/models/tiny.gguf"]
    assert (offload.gpu_layers, offload.total_layers, offload.estimate) == (5, 5, False)


def test_ollama_blob_path_in_the_loader_line_is_keyed_by_its_digest():
    facts = facts_of([
        "llama_model_loader: loaded meta data with 27 key-value pairs and 39 tensors from "
        f"/usr/share/ollama/.ollama/models/blobs/sha256-{BLOB} (version GGUF V3 (latest))",
        "load_tensors: offloaded 2/5 layers to GPU",
    ])
    assert facts.offload()[BLOB].gpu_layers == 2


# Lines from the real llama-server (llama.cpp of llama-cpp-python 0.3.36, -lv 4) on an H100,
# with llama.cpp's own prefix (tests/gpu/RESULTS.md).
REAL_LLAMA_SERVER = [
    "0.00.240.903 I llama_model_loader: loaded meta data with 23 key-value pairs and 39 "
    "tensors from /work/main/rig/src/tiny.gguf (version GGUF V3 (latest))",
    "0.00.271.513 I load_tensors: offloaded 2/5 layers to GPU",
]


def test_real_llama_server_lines_with_llama_cpp_prefix():
    interpreter = LogInterpreter()
    offload = facts_of(REAL_LLAMA_SERVER, interpreter).offload()["/work/main/rig/src/tiny.gguf"]
    assert (offload.gpu_layers, offload.total_layers) == (2, 5)
    failed = interpreter.feed(parse_line(
        "0.00.012.163 E ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is "
        "detected"), 1.0)
    assert [e.kind for e in failed] == [ev.CUDA_INIT_FAILED]
