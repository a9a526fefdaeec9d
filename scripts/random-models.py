#!/usr/bin/env python3
"""Writes small random-weight GGUF files at the real layouts of Qwen3 and Phi-3 with the `gguf`
PyPI package (installed with pip when missing), deterministically: the same bytes on every
machine, checked against the sha256 recorded in reference/random-models.json when it is there.
llama.cpp scores these files (scripts/llama-reference.py random); crates/models/tests/
random_models.rs compares tokenfab with those scores.

  usage: scripts/random-models.py [OUT_DIR]      (default models/) -> prints one path a line

Layouts (weights are random, shapes and tensor sets are the real ones). Matrices are F16: with
8-bit activations (a Q8_0 file) llama.cpp's and tokenfab's rounding each move these random
logits by about 0.03 nats, which is noise about quantization rather than about the architecture.
- qwen3: Qwen3-0.6B's attention (1024 wide, 16 query heads and 8 KV heads of 128, so Q is
  2048 wide; per-head Q/K RMSNorm), its FFN of 3072, RoPE NeoX base 1e6, eps 1e-6, tied output;
  2 layers, a vocabulary of 4096; matrices F16.
- phi3: Phi-3-mini-128k's heads (MHA, heads of 96, RoPE NeoX over all 96) at 8 heads (768
  wide), fused `attn_qkv` and gate|up `ffn_up`, LongRoPE (48 long and 48 short factors, attention
  factor sqrt(1 + ln 32 / ln 4096), original context 4096 of 131072), untied output; 2 layers,
  FFN 2048, a vocabulary of 4096; matrices F16.
"""
import hashlib
import json
import math
import os
import subprocess
import sys

GGUF_VERSION = "0.19.0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    import gguf
    import numpy as np
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"gguf=={GGUF_VERSION}", "numpy"], check=True, stdout=sys.stderr)
    import gguf
    import numpy as np

VOCAB = 4096


def uniform(seed, name, n):
    """n values uniform in [-1, 1): splitmix64 of (seed, fnv1a(name), index), in numpy."""
    key = np.uint64(0xCBF29CE484222325)
    for b in name.encode():
        key = np.uint64((int(key) ^ b) * 0x100000001B3 % (1 << 64))
    z = (np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(seed) ^ key
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float64) / float(1 << 23) - 1.0).astype(np.float32)


def byte_vocab(w):
    """GPT-2 byte tokens, one merge (llama.cpp wants at least one), then fillers."""
    def ch(b):
        printable = lambda b: 33 <= b <= 126 or 161 <= b <= 172 or b >= 174
        return chr(b) if printable(b) else chr(256 + sum(1 for x in range(b) if not printable(x)))
    tokens = [ch(b) for b in range(256)] + [ch(32) * 2]
    tokens += [f"<|filler_{i}|>" for i in range(len(tokens), VOCAB)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([1] * VOCAB)
    w.add_token_merges([f"{ch(32)} {ch(32)}"])
    w.add_bos_token_id(VOCAB - 2)
    w.add_eos_token_id(VOCAB - 1)
    w.add_add_bos_token(False)


def write(path, arch, meta, tensors):
    w = gguf.GGUFWriter(path, arch)
    # Not the architecture's name: llama.cpp gives Phi-3-named vocabularies special tokens this
    # one does not have.
    w.add_name("tokenfab random weights")
    for key, value in meta:
        if isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    byte_vocab(w)
    for name, data, qtype in tensors:
        if qtype == "Q8_0":
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif qtype == "F16":
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, data.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def matrix(seed, name, rows, cols, std, qtype):
    """(rows, cols): uniform with standard deviation `std`."""
    return (name, (uniform(seed, name, rows * cols) * std * math.sqrt(3)).reshape(rows, cols), qtype)


def vector(seed, name, n, center=1.0, spread=0.1):
    return (name, uniform(seed, name, n) * spread + center, "F32")


def qwen3(path):
    a, seed, q = "qwen3", 3, "F16"
    dim, heads, kv_heads, hd, ffn, layers = 1024, 16, 8, 128, 3072, 2
    meta = [(f"{a}.context_length", 40960), (f"{a}.embedding_length", dim),
            (f"{a}.block_count", layers), (f"{a}.feed_forward_length", ffn),
            (f"{a}.attention.head_count", heads), (f"{a}.attention.head_count_kv", kv_heads),
            (f"{a}.attention.key_length", hd), (f"{a}.attention.value_length", hd),
            (f"{a}.rope.freq_base", 1e6), (f"{a}.attention.layer_norm_rms_epsilon", 1e-6)]
    # Small input rows, so that the layers rather than the token itself drive the (tied) output;
    # the output norm's scale makes logits of about 4 standard deviations: a clear top-1 on most
    # positions.
    t = [matrix(seed, "token_embd.weight", VOCAB, dim, 1 / math.sqrt(dim), q),
         vector(seed, "output_norm.weight", dim, center=4.0, spread=0.4)]
    for l in range(layers):
        n = lambda s: f"blk.{l}.{s}"
        t += [vector(seed, n("attn_norm.weight"), dim), vector(seed, n("ffn_norm.weight"), dim),
              matrix(seed, n("attn_q.weight"), heads * hd, dim, 1 / math.sqrt(dim), q),
              matrix(seed, n("attn_k.weight"), kv_heads * hd, dim, 1 / math.sqrt(dim), q),
              matrix(seed, n("attn_v.weight"), kv_heads * hd, dim, 1 / math.sqrt(dim), q),
              matrix(seed, n("attn_output.weight"), dim, heads * hd, 1 / math.sqrt(heads * hd), q),
              vector(seed, n("attn_q_norm.weight"), hd), vector(seed, n("attn_k_norm.weight"), hd),
              matrix(seed, n("ffn_gate.weight"), ffn, dim, 1 / math.sqrt(dim), q),
              matrix(seed, n("ffn_up.weight"), ffn, dim, 1 / math.sqrt(dim), q),
              matrix(seed, n("ffn_down.weight"), dim, ffn, 1 / math.sqrt(ffn), q)]
    write(path, a, meta, t)


def phi3(path):
    a, seed, q = "phi3", 5, "F16"
    heads, hd, ffn, layers = 8, 96, 2048, 2
    dim = heads * hd
    ctx, orig = 131072, 4096
    meta = [(f"{a}.context_length", ctx), (f"{a}.rope.scaling.original_context_length", orig),
            (f"{a}.embedding_length", dim), (f"{a}.block_count", layers),
            (f"{a}.feed_forward_length", ffn), (f"{a}.attention.head_count", heads),
            (f"{a}.attention.head_count_kv", heads), (f"{a}.rope.dimension_count", hd),
            (f"{a}.rope.freq_base", 10000.0), (f"{a}.attention.layer_norm_rms_epsilon", 1e-5),
            (f"{a}.rope.scaling.attn_factor", math.sqrt(1 + math.log(ctx / orig) / math.log(orig))),
            (f"{a}.attention.sliding_window", 262144)]
    t = [matrix(seed, "token_embd.weight", VOCAB, dim, 1 / math.sqrt(dim), q),
         matrix(seed, "output.weight", VOCAB, dim, 4 / math.sqrt(dim), q),
         vector(seed, "output_norm.weight", dim),
         vector(seed, "rope_factors_long.weight", hd // 2, center=20.0, spread=18.0),
         vector(seed, "rope_factors_short.weight", hd // 2, center=1.05, spread=0.05)]
    for l in range(layers):
        n = lambda s: f"blk.{l}.{s}"
        t += [vector(seed, n("attn_norm.weight"), dim), vector(seed, n("ffn_norm.weight"), dim),
              matrix(seed, n("attn_qkv.weight"), 3 * dim, dim, 1 / math.sqrt(dim), q),
              matrix(seed, n("attn_output.weight"), dim, dim, 1 / math.sqrt(dim), q),
              matrix(seed, n("ffn_up.weight"), 2 * ffn, dim, 1 / math.sqrt(dim), q),
              matrix(seed, n("ffn_down.weight"), dim, ffn, 1 / math.sqrt(ffn), q)]
    write(path, a, meta, t)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models")
    os.makedirs(out, exist_ok=True)
    ref_path = os.path.join(ROOT, "reference", "random-models.json")
    want = json.load(open(ref_path))["sha256"] if os.path.exists(ref_path) else {}
    for name, make in [("qwen3", qwen3), ("phi3", phi3)]:
        path = os.path.join(out, f"random-{name}.gguf")
        if not os.path.exists(path) or (name in want and sha256(path) != want[name]):
            make(path + ".tmp")
            os.replace(path + ".tmp", path)
        got = sha256(path)
        if name in want and got != want[name]:
            sys.exit(f"{path}: sha256 {got}, but llama.cpp scored {want[name]} "
                     f"(made with gguf=={GGUF_VERSION})")
        print(path)


if __name__ == "__main__":
    main()
