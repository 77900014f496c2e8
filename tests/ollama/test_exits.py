"""vgpumon.ollama.exits: exit texts and wait statuses → exit reasons
(docs/metrics.md#exit-reasons)."""

from __future__ import annotations

import pytest

from vgpumon.ollama.exits import (
    ReportedExit,
    classify_exit_text,
    exit_status_from_wait_status,
)

EXIT_TEXTS = [
    ("exit status 0", ReportedExit("clean", exit_code=0)),
    ("exit status 1", ReportedExit("error", exit_code=1)),
    ("exit status 2", ReportedExit("error", exit_code=2)),
    ("exit status 127", ReportedExit("error", exit_code=127)),
    ("exit status 0xc0000409", ReportedExit("crash", exit_code=0xC0000409)),
    ("exit status 0xc0000005: STATUS_ACCESS_VIOLATION",
     ReportedExit("crash", exit_code=0xC0000005)),
    ("exit status 0xc0000135", ReportedExit("error", exit_code=0xC0000135)),
    ("signal: segmentation fault", ReportedExit("crash", signal=11)),
    ("signal: segmentation fault (core dumped)",
     ReportedExit("crash", signal=11, core_dumped=True)),
    ("signal: aborted (core dumped)", ReportedExit("crash", signal=6, core_dumped=True)),
    ("signal: bus error", ReportedExit("crash", signal=7)),
    ("signal: illegal instruction", ReportedExit("crash", signal=4)),
    ("signal: floating point exception", ReportedExit("crash", signal=8)),
    ("signal: trace/breakpoint trap", ReportedExit("crash", signal=5)),
    ("signal: bad system call", ReportedExit("crash", signal=31)),
    ("signal: killed", ReportedExit("stopped", signal=9)),
    ("signal: terminated", ReportedExit("stopped", signal=15)),
    ("signal: interrupt", ReportedExit("stopped", signal=2)),
    ("signal: hangup", ReportedExit("error", signal=1)),
    ("signal: signal 34", ReportedExit("error", signal=34)),
    ("OK", ReportedExit("clean", exit_code=0)),
    ("unknown", ReportedExit("unknown")),
    ("", ReportedExit("unknown")),
    ("signal arrived during cgo execution", ReportedExit("crash")),
    ("fatal error: unexpected signal during runtime execution", ReportedExit("crash")),
    ("panic: runtime error: index out of range", ReportedExit("crash")),
    ("GGML_ASSERT(ctx->mem_buffer != NULL) failed", ReportedExit("crash")),
    ("CUDA error: an illegal memory access was encountered", ReportedExit("crash")),
    ("error loading model: unknown model architecture: 'qwen3'", ReportedExit("error")),
    ("cudaMalloc failed: out of memory", ReportedExit("error")),
    # 0.1.32-0.2.7: exit text then the last error
    ("exit status 1 error:failed to create context with model", ReportedExit("error", exit_code=1)),
]


@pytest.mark.parametrize(("text", "status"), EXIT_TEXTS)
def test_classify_exit_text(text, status):
    assert classify_exit_text(text) == status


@pytest.mark.parametrize(
    ("wait_status", "status"),
    [
        (0, ReportedExit("clean", exit_code=0)),
        (2 << 8, ReportedExit("error", exit_code=2)),
        (139, ReportedExit("crash", signal=11, core_dumped=True)),
        (134, ReportedExit("crash", signal=6, core_dumped=True)),
        (9, ReportedExit("stopped", signal=9)),
        (0x137F, ReportedExit("unknown")),  # stopped, not exited
        (-1, ReportedExit("unknown")),
    ],
)
def test_exit_status_from_wait_status(wait_status, status):
    assert exit_status_from_wait_status(wait_status) == status
