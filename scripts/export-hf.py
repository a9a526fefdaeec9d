#!/usr/bin/env python3
"""Exports a GGUF model as a Hugging Face checkpoint directory: config.json, model.safetensors
(or shards with model.safetensors.index.json), tokenizer.json written from the GGUF vocabulary and
merges, tokenizer_config.json (special tokens, chat template) and generation_config.json.

Weights are dequantized (gguf's numpy dequantizers) and written as bf16 (default), f16 or f32;
the Q/K rows of `llama` models are un-permuted back to Hugging Face's rotate-half layout, Gemma 3
norms get their `1 + w` offset removed: the inverse of llama.cpp's convert_hf_to_gguf.py, so that
loading the directory (tokenfab's `--model DIR`) gives back the GGUF's tensors.

  scripts/export-hf.py MODEL.gguf OUT_DIR [--dtype bf16|f16|f32] [--shard-size BYTES]
  scripts/export-hf.py VOCAB.gguf OUT_DIR --tokenizer-only    # tokenizer.json and its config only

Needs the PyPI packages `gguf` and `numpy`. Architectures: llama, qwen2, qwen3, gemma3, phi3.
Tokenizers: `gpt2` (byte-level BPE; the split regexes of each `tokenizer.ggml.pre` are llama.cpp's,
as tokenfab's crates/loader/src/tokenizer/pretok.rs has them) and `llama` (SentencePiece, exported
as BPE with merges ordered by score and byte fallback, as transformers' LlamaConverter does).
"""

import argparse
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize

# ---------------------------------------------------------------------------------------------
# Pre-tokenizer regexes per `tokenizer.ggml.pre` (llama.cpp src/llama-vocab.cpp), with the
# clean-up-spaces flag llama.cpp ties to each and whether words already in the vocabulary skip
# the merges (`ignore_merges`).

CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"


def llama3_like(numbers):
    return (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|" + numbers
            + r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def rust_unicode(s):
    """Rust's `\\u{hex}` escapes as the characters."""
    return re.sub(r"\\u\{([0-9a-f]+)\}", lambda m: chr(int(m.group(1), 16)), s)


DEEPSEEK_LETTERS = rust_unicode(
    r"\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+")
CJK = rust_unicode(r"[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+")

# pre -> (regexes, clean_spaces, ignore_merges)
PRE = {
    "default": ([r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"], True, False),
    "llama-bpe": ([llama3_like(r"\p{N}{1,3}")], True, True),
    "llama3": ([llama3_like(r"\p{N}{1,3}")], True, True),
    "dbrx": ([llama3_like(r"\p{N}{1,3}")], True, False),
    "smaug-bpe": ([llama3_like(r"\p{N}{1,3}")], True, False),
    "deepseek-llm": ([r"[\r\n]", DEEPSEEK_LETTERS,
                      rust_unicode(r"\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+"),
                      r"\s+$", CJK, r"\p{N}+"], False, False),
    "deepseek-coder": ([r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK, r"\p{N}"], False, False),
    "falcon": ([r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"], True, False),
    "starcoder": ([r"\p{N}", GPT2], True, False),
    "refact": ([r"\p{N}", GPT2], True, False),
    "command-r": ([r"\p{N}", GPT2], False, False),
    "smollm": ([r"\p{N}", GPT2], False, False),
    "gpt-2": ([GPT2], True, False),
    "mpt": ([GPT2], True, False),
    "qwen2": ([llama3_like(r"\p{N}")], False, False),
    "qwen35": ([CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
               False, False),
}

# GGUF token types (llama.cpp llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def die(msg):
    print(f"export-hf: {msg}", file=sys.stderr)
    sys.exit(1)


class Metadata:
    """A GGUF file's metadata, read directly: gguf's GGUFReader builds a numpy view per string
    and takes half a minute on a 256k-token vocabulary; it is used for the tensors only."""

    SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def __init__(self, path):
        self.buf = Path(path).read_bytes()
        self.pos = 0
        if self.buf[:4] != b"GGUF":
            die(f"{path} is not a GGUF file")
        version, _n_tensors, n_kv = struct.unpack_from("<IQQ", self.buf, 4)
        if version < 2:
            die(f"{path}: GGUF v{version} is not supported")
        self.pos = 24
        self.fields = {}
        for _ in range(n_kv):
            key = self.string()
            self.fields[key] = self.value(self.u32())
        del self.buf

    def u32(self):
        v = struct.unpack_from("<I", self.buf, self.pos)[0]
        self.pos += 4
        return v

    def string(self):
        n = struct.unpack_from("<Q", self.buf, self.pos)[0]
        s = self.buf[self.pos + 8:self.pos + 8 + n].decode("utf-8")
        self.pos += 8 + n
        return s

    def value(self, ty):
        if ty == 8:
            return self.string()
        if ty == 9:
            ety = self.u32()
            n = struct.unpack_from("<Q", self.buf, self.pos)[0]
            self.pos += 8
            if ety in self.SCALARS:
                fmt = self.SCALARS[ety]
                size = struct.calcsize(fmt)
                out = list(struct.unpack_from(f"<{n}{fmt[1]}", self.buf, self.pos))
                self.pos += n * size
                return out
            return [self.value(ety) for _ in range(n)]
        fmt = self.SCALARS[ty]
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v


def field(r, key, default=None):
    return r.fields.get(key, default)


def added_token(i, text, special, rstrip=False):
    return {"id": i, "content": text, "single_word": False, "lstrip": False,
            "rstrip": rstrip, "normalized": False, "special": special}


def tokenizer_json(r):
    """tokenizer.json (as transformers would save it) from the GGUF vocabulary."""
    kind = field(r, "tokenizer.ggml.model")
    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    # Phi-3's special tokens swallow the whitespace after them (llama.cpp keys it on the name).
    phi3 = "phi-3" in (field(r, "general.name", "") or "").lower() or "phi3" in (field(r, "general.name", "") or "").lower()
    added = [added_token(i, t, ty in (CONTROL, UNKNOWN), rstrip=phi3 and ty in (CONTROL, USER_DEFINED) and t not in ("<unk>", "<s>", "<|endoftext|>"))
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED, UNKNOWN)]
    if kind == "gpt2":
        pre = field(r, "tokenizer.ggml.pre", "default")
        if pre not in PRE:
            die(f"pre-tokenizer `{pre}` has no split regexes here (known: {', '.join(sorted(PRE))})")
        regexes, clean, ignore_merges = PRE[pre]
        merges = []
        for m in field(r, "tokenizer.ggml.merges"):
            at = m.index(" ", 1)
            merges.append([m[:at], m[at + 1:]])
        tok = {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False}
                for rx in regexes] + [
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
        }
        return tok, clean
    if kind == "llama":
        scores = field(r, "tokenizer.ggml.scores")
        space_prefix = field(r, "tokenizer.ggml.add_space_prefix", True)
        unk = field(r, "tokenizer.ggml.unknown_token_id", 0)
        normal = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == NORMAL}
        # transformers' SentencePieceExtractor: every split of a piece into two pieces is a merge,
        # ranked by the merged piece's score (highest first), ties in vocabulary order.
        merges = []
        for piece, i in sorted(normal.items(), key=lambda kv: kv[1]):
            local = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                     if piece[:k] in normal and piece[k:] in normal]
            local.sort(key=lambda lr: (normal[lr[0]], normal[lr[1]]))
            merges.extend((l, rr, scores[i]) for l, rr in local)
        merges.sort(key=lambda m: m[2], reverse=True)
        norm = [{"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]
        dec = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
               {"type": "ByteFallback"}, {"type": "Fuse"}]
        if space_prefix:
            norm.insert(0, {"type": "Prepend", "prepend": "\u2581"})
            dec.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        tok = {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": norm},
            "pre_tokenizer": None, "post_processor": None,
            "decoder": {"type": "Sequence", "decoders": dec},
            "model": {"type": "BPE", "dropout": None, "unk_token": tokens[unk], "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
                      "ignore_merges": False, "vocab": vocab, "merges": [[l, rr] for l, rr, _ in merges]},
        }
        return tok, False
    die(f"tokenizer model `{kind}` cannot be exported (gpt2 and llama can)")


def tokenizer_files(r, out):
    tok, clean = tokenizer_json(r)
    tokens = field(r, "tokenizer.ggml.tokens")
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, indent=1))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": clean,
           "model_max_length": 1 << 30}
    for typ, key in [("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                     ("pad", "padding_token_id")]:
        i = field(r, f"tokenizer.ggml.{key}")
        if i is not None and i < len(tokens):
            cfg[f"{typ}_token"] = tokens[i]
    kind = field(r, "tokenizer.ggml.model")
    for typ, default in [("bos", kind == "llama"), ("eos", False)]:
        cfg[f"add_{typ}_token"] = bool(field(r, f"tokenizer.ggml.add_{typ}_token", default))
    template = field(r, "tokenizer.chat_template")
    if template is not None:
        cfg["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=1))


# ---------------------------------------------------------------------------------------------
# Weights.

# GGUF block names -> Hugging Face names, per architecture.
BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_qkv": "self_attn.qkv_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
}
ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
         "gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM"}


def hf_name(arch, name):
    if name in ("token_embd.weight", "output_norm.weight", "output.weight"):
        return {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}[name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
    if not m:
        return None
    bid, part, suffix = m.groups()
    table = dict(BLOCK)
    table["ffn_up"] = "mlp.gate_up_proj" if arch == "phi3" else "mlp.up_proj"
    if arch == "gemma3":
        table.update({"post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
                      "post_ffw_norm": "post_feedforward_layernorm"})
    else:
        table["ffn_norm"] = "post_attention_layernorm"
    if part not in table:
        die(f"tensor `{name}` has no Hugging Face name for {arch}")
    return f"model.layers.{bid}.{table[part]}.{suffix}"


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf's LlamaModel.permute over the rows."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_dtype(x, dtype):
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "F32":
        return x.tobytes()
    if dtype == "F16":
        return x.astype(np.float16).tobytes()
    u = x.view(np.uint32).astype(np.uint64)
    # Round to nearest even, as torch and ggml's fp32_to_bf16 do (no NaNs in model weights).
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, off = {}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for *_, data in tensors:
            f.write(data)


def config_json(r, arch, tied, dtype):
    a = lambda k, d=None: field(r, f"{arch}.{k}", d)
    n_head = a("attention.head_count")
    dim = a("embedding_length")
    cfg = {
        "architectures": [ARCHS[arch]], "model_type": arch,
        "hidden_size": dim, "intermediate_size": a("feed_forward_length"),
        "num_hidden_layers": a("block_count"), "num_attention_heads": n_head,
        "num_key_value_heads": a("attention.head_count_kv", n_head),
        "max_position_embeddings": a("context_length", 4096),
        "rms_norm_eps": a("attention.layer_norm_rms_epsilon"),
        "rope_theta": a("rope.freq_base", 10000.0),
        "vocab_size": a("vocab_size") or len(field(r, "tokenizer.ggml.tokens")),
        "tie_word_embeddings": tied,
        "hidden_act": "gelu_pytorch_tanh" if arch == "gemma3" else "silu",
        "torch_dtype": {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype],
        "_name_or_path": field(r, "general.name", "exported"),
    }
    for typ in ("bos", "eos"):
        if (i := field(r, f"tokenizer.ggml.{typ}_token_id")) is not None:
            cfg[f"{typ}_token_id"] = i
    if (hd := a("attention.key_length")) is not None:
        cfg["head_dim"] = hd
    head_dim = hd or dim // n_head
    if (kind := a("rope.scaling.type")) not in (None, "none"):
        if kind != "linear":
            die(f"rope scaling `{kind}` cannot be exported")
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": a("rope.scaling.factor")}
    if arch == "gemma3":
        cfg["query_pre_attn_scalar"] = head_dim
        cfg["sliding_window"] = a("attention.sliding_window", 512)
        # llama.cpp fixes Gemma 3's pattern: five sliding-window layers, then a global one.
        cfg["sliding_window_pattern"] = 6
        if (swa := a("rope.freq_base_swa")) is not None:
            cfg["rope_local_base_freq"] = swa
        if (cap := a("final_logit_softcapping")) is not None:
            cfg["final_logit_softcapping"] = cap
    if arch == "phi3":
        cfg["original_max_position_embeddings"] = a("rope.scaling.original_context_length", cfg["max_position_embeddings"])
        cfg["sliding_window"] = a("attention.sliding_window") or None
        if (rd := a("rope.dimension_count")) is not None and rd != head_dim:
            cfg["partial_rotary_factor"] = rd * n_head / dim
    elif arch == "llama" and (rd := a("rope.dimension_count")) is not None and rd != head_dim:
        die(f"rope dimension {rd} != head dim {head_dim} cannot be exported for llama")
    return cfg


def export_weights(r, arch, out, dtype, shard_size):
    n_head = field(r, f"{arch}.attention.head_count")
    n_kv = field(r, f"{arch}.attention.head_count_kv", n_head)
    names = {t.name for t in r.tensors}
    tensors, extras = [], {}
    for t in r.tensors:
        if t.name in ("rope_factors_long.weight", "rope_factors_short.weight"):
            extras[t.name] = [float(v) for v in np.asarray(t.data, dtype=np.float32).reshape(-1)]
            continue
        if t.name == "rope_freqs.weight":
            die("rope_freqs (Llama 3.1 RoPE scaling) cannot be exported back to its config parameters")
        name = hf_name(arch, t.name)
        if name is None:
            die(f"tensor `{t.name}` has no Hugging Face name")
        shape = [int(d) for d in reversed(t.shape)]
        x = dequantize(t.data, GGMLQuantizationType(t.tensor_type)).astype(np.float32).reshape(shape)
        if arch == "llama" and re.search(r"\.attn_q\.(weight|bias)$", t.name):
            x = unpermute(x, n_head)
        elif arch == "llama" and re.search(r"\.attn_k\.(weight|bias)$", t.name):
            x = unpermute(x, n_kv)
        if arch == "gemma3" and t.name.endswith("norm.weight"):
            x = x - 1.0
        # Every tensor in the checkpoint's dtype, norms included, as transformers saves them.
        tensors.append((name, dtype, shape, to_dtype(x, dtype)))
    tied = "output.weight" not in names
    # Shards of at most shard_size bytes (a tensor larger than that gets a shard of its own).
    shards, cur, size = [], [], 0
    for t in tensors:
        if cur and size + len(t[3]) > shard_size:
            shards.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += len(t[3])
    shards.append(cur)
    if len(shards) == 1:
        write_safetensors(out / "model.safetensors", shards[0])
    else:
        weight_map = {}
        for i, s in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(out / fname, s)
            weight_map.update({t[0]: fname for t in s})
        index = {"metadata": {"total_size": sum(len(t[3]) for t in tensors)}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return tied, len(shards), extras


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    ap.add_argument("--shard-size", type=int, default=5 << 30, help="bytes per safetensors shard")
    ap.add_argument("--tokenizer-only", action="store_true")
    args = ap.parse_args()
    r = Metadata(args.gguf)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer_files(r, args.out)
    if args.tokenizer_only:
        return
    r.tensors = GGUFReader(args.gguf).tensors
    arch = field(r, "general.architecture")
    if arch not in ARCHS:
        die(f"architecture `{arch}` cannot be exported (supported: {', '.join(ARCHS)})")
    dtype = args.dtype.upper()
    tied, n_shards, extras = export_weights(r, arch, args.out, dtype, args.shard_size)
    cfg = config_json(r, arch, tied, dtype)
    if extras:
        cfg["rope_scaling"] = {"rope_type": "longrope", "long_factor": extras["rope_factors_long.weight"],
                               "short_factor": extras["rope_factors_short.weight"]}
    (args.out / "config.json").write_text(json.dumps(cfg, indent=1))
    gen = {"do_sample": False}
    if (e := field(r, "tokenizer.ggml.eos_token_id")) is not None:
        gen["eos_token_id"] = e
    if (b := field(r, "tokenizer.ggml.bos_token_id")) is not None:
        gen["bos_token_id"] = b
    (args.out / "generation_config.json").write_text(json.dumps(gen, indent=1))
    print(f"export-hf: {args.gguf} -> {args.out} ({arch}, {dtype}, {n_shards} shard(s))")


if __name__ == "__main__":
    main()
