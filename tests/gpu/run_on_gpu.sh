#!/bin/bash
# vgpumon against a real CUDA llama.cpp server, on the GPU machine. Run by hand, not by CI.
#
# From the project root on the GPU machine, with tests/gpu/rig/src/llama.cpp.tar.gz and
# tests/gpu/rig/src/tiny.gguf made beforehand (tests/gpu/rig/make_src_tarball.sh) and, where
# the machine's Python lacks them, .whl/ (inotify-simple and nvidia-ml-py wheels) in the
# project root; tests/gpu/README.md says how:
#
#   bash tests/gpu/run_on_gpu.sh [CASE ...]
#
# 1. builds llama-server with CUDA, the tiny model and the shim with the rig (reused while
#    the machine stays warm);
# 2. runs each case: llama-server in the rig's configuration and, beside it, `vgpumon run`
#    with a config for that host; scrapes /metrics, /events, /state and `vgpumon doctor
#    --json`; checks what vgpumon reports against what happened;
# 3. writes the PASS/FAIL table to $OUT/gpu_table.txt and everything to $OUT/gpu_results.tgz.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/vgpumon-gpu-out}
mkdir -p "$OUT"
SITE=/tmp/vgpumon-site
if [ -d .whl ] && [ ! -d "$SITE" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
        || echo "wheel install failed"
fi
export PYTHONPATH="$(pwd):$SITE"

# The rig's build, shim and model (no rig cases: "none" is not one of them).
RIG_DEADLINE_S=${RIG_DEADLINE_S:-420} bash tests/gpu/rig/device_run.sh none 2>&1 | tail -n 25
if [ "$(cat /tmp/vgpurig/build.rc 2>/dev/null)" != 0 ]; then
    echo "llama-server is not built yet (the build goes on in the background on a warm machine); run again"
    exit 3
fi

# The rig's cases (explicit configs), then the preload layouts with the default config.
# `layouts` as the only argument runs the layouts alone.
rc=0
if [ "${1:-}" != layouts ]; then
    python3 tests/gpu/gpu_cases.py --out "$OUT" "$@" || rc=1
fi
OUT="$OUT" python3 tests/gpu/layout_cases.py || rc=1
exit $rc
