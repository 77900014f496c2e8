"""vgpumon.ollama.exits: exit texts and wait statuses → exit reasons
(docs/metrics.md#exit-reasons)."""

from __future__ import annotations

import pytest

from vgpumon.ollama.exits import (
    ExitStatus,
    classify_exit_text,
    exit_status_from_wait_status,
)

EXIT_TEXTS = [
    ("exit status 0", ExitStatus("clean", exit_code=0)),
    ("exit status 1", ExitStatus("error", exit_code=1)),
    ("exit status 2", ExitStatus("error", exit_code=2)),
    ("exit status 127", ExitStatus("error", exit_code=127)),
    ("exit status 0xc0000409", ExitStatus("crash", exit_code=0xC0000409)),
    ("exit status 0xc0000005: STATUS_ACCESS_VIOLATION", ExitStatus("crash", exit_code=0xC0000005)),
    ("exit status 0xc0000135", ExitStatus("error", exit_code=0xC0000135)),
    ("signal: segmentation fault", ExitStatus("crash", signal=11)),
    ("signal: segmentation fault (core dumped)", ExitStatus("crash", signal=11, core_dumped=True)),
    ("signal: aborted (core dumped)", ExitStatus("crash", signal=6, core_dumped=True)),
    ("signal: bus error", ExitStatus("crash", signal=7)),
    ("signal: illegal instruction", ExitStatus("crash", signal=4)),
    ("signal: floating point exception", ExitStatus("crash", signal=8)),
    ("signal: trace/breakpoint trap", ExitStatus("crash", signal=5)),
    ("signal: bad system call", ExitStatus("crash", signal=31)),
    ("signal: killed", ExitStatus("stopped", signal=9)),
    ("signal: terminated", ExitStatus("stopped", signal=15)),
    ("signal: interrupt", ExitStatus("stopped", signal=2)),
    ("signal: hangup", ExitStatus("error", signal=1)),
    ("signal: signal 34", ExitStatus("error", signal=34)),
    ("OK", ExitStatus("clean", exit_code=0)),
    ("unknown", ExitStatus("unknown")),
    ("", ExitStatus("unknown")),
    ("signal arrived during cgo execution", ExitStatus("crash")),
    ("fatal error: unexpected signal during runtime execution", ExitStatus("crash")),
    ("panic: runtime error: index out of range", ExitStatus("crash")),
    ("GGML_ASSERT(ctx->mem_buffer != NULL) failed", ExitStatus("crash")),
    ("CUDA error: an illegal memory access was encountered", ExitStatus("crash")),
    ("error loading model: unknown model architecture: 'qwen3'", ExitStatus("error")),
    ("cudaMalloc failed: out of memory", ExitStatus("error")),
    # 0.1.32-0.2.7: exit text then the last error
    ("exit status 1 error:failed to create context with model", ExitStatus("error", exit_code=1)),
]


@pytest.mark.parametrize(("text", "status"), EXIT_TEXTS)
def test_classify_exit_text(text, status):
    assert classify_exit_text(text) == status


@pytest.mark.parametrize(
    ("wait_status", "status"),
    [
        (0, ExitStatus("clean", exit_code=0)),
        (2 << 8, ExitStatus("error", exit_code=2)),
        (139, ExitStatus("crash", signal=11, core_dumped=True)),
        (134, ExitStatus("crash", signal=6, core_dumped=True)),
        (9, ExitStatus("stopped", signal=9)),
        (0x137F, ExitStatus("unknown")),  # stopped, not exited
        (-1, ExitStatus("unknown")),
    ],
)
def test_exit_status_from_wait_status(wait_status, status):
    assert exit_status_from_wait_status(wait_status) == status
