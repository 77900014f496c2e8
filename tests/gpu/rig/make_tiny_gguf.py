#!/usr/bin/env python3
"""Make a tiny random llama-architecture GGUF model for the vgpumon rig.

The weights are random (seeded, so the file is reproducible); the tokenizer
(SPM, 32000 tokens) is copied from a vocab-only GGUF shipped in the llama.cpp
tree (models/ggml-vocab-llama-spm.gguf). The model loads in llama.cpp and
generates garbage text, which is all the rig needs: real model loading,
real "offloaded N/M layers to GPU" logs, real CUDA library mappings.

Usage:
  PYTHONPATH=<llama.cpp>/gguf-py python3 make_tiny_gguf.py \
      --vocab <llama.cpp>/models/ggml-vocab-llama-spm.gguf --out tiny.gguf

Only needs numpy and the gguf-py package of the llama.cpp tree (or
`pip install gguf`).
"""
import argparse
import sys

import numpy as np

try:
    import gguf
    from gguf import GGUFReader, GGUFWriter
except ImportError:  # pragma: no cover
    sys.exit("gguf-py not importable: set PYTHONPATH=<llama.cpp>/gguf-py or pip install gguf")


def read_vocab(path):
    r = GGUFReader(path)
    f = r.fields

    def get(key, default=None):
        return f[key].contents() if key in f else default

    return {
        "model": get("tokenizer.ggml.model", "llama"),
        "pre": get("tokenizer.ggml.pre", "default"),
        "tokens": get("tokenizer.ggml.tokens"),
        "scores": get("tokenizer.ggml.scores"),
        "types": get("tokenizer.ggml.token_type"),
        "bos": get("tokenizer.ggml.bos_token_id", 1),
        "eos": get("tokenizer.ggml.eos_token_id", 2),
        "unk": get("tokenizer.ggml.unknown_token_id", 0),
        "add_bos": get("tokenizer.ggml.add_bos_token", True),
        "add_eos": get("tokenizer.ggml.add_eos_token", False),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", required=True, help="vocab-only GGUF to copy the tokenizer from")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    # head_dim = 64 (a size the CUDA FA kernels support)
    ap.add_argument("--n-head", type=int, default=2)
    ap.add_argument("--n-head-kv", type=int, default=2)
    ap.add_argument("--n-ff", type=int, default=256)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--f32", action="store_true", help="store matrices as F32 instead of F16")
    a = ap.parse_args()

    v = read_vocab(a.vocab)
    n_vocab = len(v["tokens"])
    head_dim = a.n_embd // a.n_head
    n_embd_kv = head_dim * a.n_head_kv
    rng = np.random.default_rng(a.seed)
    mat_dtype = np.float32 if a.f32 else np.float16

    def mat(rows, cols, scale=0.02):
        # numpy shape (rows, cols) == ggml ne = [cols, rows]
        return (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(mat_dtype)

    def norm(n):
        return np.ones((n,), dtype=np.float32)

    arch = "llama"
    w = GGUFWriter(a.out, arch)
    w.add_name("vgpumon-tiny-llama")
    w.add_context_length(a.n_ctx)
    w.add_embedding_length(a.n_embd)
    w.add_block_count(a.n_layer)
    w.add_feed_forward_length(a.n_ff)
    w.add_head_count(a.n_head)
    w.add_head_count_kv(a.n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if a.f32 else gguf.LlamaFileType.MOSTLY_F16)

    w.add_tokenizer_model(v["model"])
    w.add_tokenizer_pre(v["pre"])
    w.add_token_list(v["tokens"])
    if v["scores"] is not None:
        w.add_token_scores(v["scores"])
    if v["types"] is not None:
        w.add_token_types(v["types"])
    w.add_bos_token_id(v["bos"])
    w.add_eos_token_id(v["eos"])
    w.add_unk_token_id(v["unk"])
    w.add_add_bos_token(bool(v["add_bos"]))
    w.add_add_eos_token(bool(v["add_eos"]))

    w.add_tensor("token_embd.weight", mat(n_vocab, a.n_embd, 1.0))
    for i in range(a.n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(a.n_embd))
        w.add_tensor(p + "attn_q.weight", mat(a.n_embd, a.n_embd))
        w.add_tensor(p + "attn_k.weight", mat(n_embd_kv, a.n_embd))
        w.add_tensor(p + "attn_v.weight", mat(n_embd_kv, a.n_embd))
        w.add_tensor(p + "attn_output.weight", mat(a.n_embd, a.n_embd))
        w.add_tensor(p + "ffn_norm.weight", norm(a.n_embd))
        w.add_tensor(p + "ffn_gate.weight", mat(a.n_ff, a.n_embd))
        w.add_tensor(p + "ffn_up.weight", mat(a.n_ff, a.n_embd))
        w.add_tensor(p + "ffn_down.weight", mat(a.n_embd, a.n_ff))
    w.add_tensor("output_norm.weight", norm(a.n_embd))
    w.add_tensor("output.weight", mat(n_vocab, a.n_embd))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out}: llama n_layer={a.n_layer} n_embd={a.n_embd} n_head={a.n_head} "
          f"n_head_kv={a.n_head_kv} n_ff={a.n_ff} n_vocab={n_vocab} "
          f"dtype={'f32' if a.f32 else 'f16'}")


if __name__ == "__main__":
    main()
