#!/bin/bash
# Build the trimmed llama.cpp source tarball (tests/gpu/rig/src/llama.cpp.tar.gz, git-ignored)
# and the tiny model (tests/gpu/rig/src/tiny.gguf) that the device run carries.
#   bash tests/gpu/rig/make_src_tarball.sh LLAMA_CPP_PYTHON_SDIST_DIR/vendor
# source: the vendor/ folder of the llama-cpp-python 0.3.36 sdist (pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36; tar xzf it).
set -euo pipefail
VENDOR=${1:?usage: make_src_tarball.sh LLAMA_CPP_PYTHON_SDIST_DIR/vendor}
RIG=$(cd "$(dirname "$0")" && pwd)
STAGE=$(mktemp -d)
cd "$VENDOR"
tar cf - --exclude=llama.cpp/.git --exclude=llama.cpp/docs --exclude=llama.cpp/media --exclude=llama.cpp/benches \
  --exclude=llama.cpp/tests --exclude=llama.cpp/.github --exclude=llama.cpp/.devops --exclude=llama.cpp/.gemini \
  --exclude=llama.cpp/.pi --exclude=llama.cpp/skills --exclude=llama.cpp/models \
  --exclude=llama.cpp/tools/ui/src --exclude=llama.cpp/tools/ui/static --exclude=llama.cpp/tools/ui/tests \
  --exclude=llama.cpp/tools/ui/package-lock.json --exclude=llama.cpp/tools/server/tests --exclude=llama.cpp/tools/server/bench \
  --exclude=llama.cpp/examples/llama.android --exclude=llama.cpp/examples/llama.swiftui \
  --exclude=llama.cpp/ggml/src/ggml-opencl --exclude=llama.cpp/ggml/src/ggml-sycl --exclude=llama.cpp/ggml/src/ggml-hexagon \
  --exclude=llama.cpp/ggml/src/ggml-metal --exclude=llama.cpp/ggml/src/ggml-et --exclude=llama.cpp/ggml/src/ggml-webgpu \
  --exclude=llama.cpp/ggml/src/ggml-openvino --exclude=llama.cpp/ggml/src/ggml-vulkan --exclude=llama.cpp/ggml/src/ggml-cann \
  llama.cpp | tar xf - -C "$STAGE"
mkdir -p "$STAGE/llama.cpp/models"
cp llama.cpp/models/ggml-vocab-llama-spm.gguf "$STAGE/llama.cpp/models/"
mkdir -p "$RIG/src"
tar czf "$RIG/src/llama.cpp.tar.gz" -C "$STAGE" llama.cpp
PYTHONPATH="$STAGE/llama.cpp/gguf-py" python3 "$RIG/make_tiny_gguf.py" \
  --vocab "$STAGE/llama.cpp/models/ggml-vocab-llama-spm.gguf" --out "$RIG/src/tiny.gguf"
rm -rf "$STAGE"
ls -la "$RIG/src"; sha256sum "$RIG/src/tiny.gguf"
