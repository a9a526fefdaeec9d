//! Tiny synthetic checkpoints: each architecture's names, keys and conversions as
//! convert_hf_to_gguf.py writes them, and every unsupported input named in its error.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::convert::permute_rows;
use super::*;
use crate::{quant, safetensors, Tokenizer};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(tag: &str) -> Dir {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "tokenfab-hf-unit-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn tokenizer_json() -> serde_json::Value {
    let special = |id: u32, c: &str| {
        json!({"id": id, "content": c, "single_word": false,
        "lstrip": false, "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0", "truncation": {"max_length": 2, "strategy": "LongestFirst",
            "stride": 0, "direction": "Right"}, "padding": null,
        "added_tokens": [special(4, "<s>"), special(5, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [], "special_tokens": {}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "<s>": 4, "<|im_end|>": 5},
            "merges": [["a", "b"]]}
    })
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bf16s(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect()
}

type T = (&'static str, &'static str, Vec<u64>, Vec<u8>);

/// (name, rows, cols) filled with 0.01 * index, as F32.
fn mat(name: &'static str, shape: &[u64]) -> T {
    let n: u64 = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
    (name, "F32", shape.to_vec(), f32s(&v))
}

fn write(dir: &Path, config: serde_json::Value, tensors: &[T]) {
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    let refs: Vec<(&str, &str, Vec<u64>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, *d, s.clone(), b.clone()))
        .collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::write(&refs)).unwrap();
}

fn llama_config() -> serde_json::Value {
    json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 4, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "vocab_size": 6, "tie_word_embeddings": false,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}})
}

fn llama_tensors() -> Vec<T> {
    vec![
        mat("model.embed_tokens.weight", &[6, 4]),
        mat("lm_head.weight", &[6, 4]),
        mat("model.norm.weight", &[4]),
        mat("model.layers.0.input_layernorm.weight", &[4]),
        mat("model.layers.0.post_attention_layernorm.weight", &[4]),
        mat("model.layers.0.self_attn.q_proj.weight", &[4, 4]),
        mat("model.layers.0.self_attn.k_proj.weight", &[2, 4]),
        mat("model.layers.0.self_attn.v_proj.weight", &[2, 4]),
        mat("model.layers.0.self_attn.o_proj.weight", &[4, 4]),
        mat("model.layers.0.self_attn.rotary_emb.inv_freq", &[1]),
        mat("model.layers.0.mlp.gate_proj.weight", &[8, 4]),
        mat("model.layers.0.mlp.up_proj.weight", &[8, 4]),
        mat("model.layers.0.mlp.down_proj.weight", &[4, 8]),
    ]
}

fn vals(g: &Gguf, name: &str) -> Vec<f32> {
    let t = g.tensor(name).unwrap_or_else(|| panic!("no `{name}`"));
    quant::dequantize_to_vec(t.ty, g.tensor_bytes(t), t.n_elements() as usize).unwrap()
}

fn open_default(dir: &Path) -> Result<Gguf> {
    open(dir, &HfOptions::default())
}

#[test]
fn permutation_is_llama_cpps_reshape_swapaxes() {
    // reshape(2 heads, 2, 2, cols).swapaxes(1, 2): per head rows [0, 2, 1, 3].
    let x: Vec<f32> = (0..8).map(|i| i as f32).collect();
    assert_eq!(
        permute_rows(&x, 8, 2).unwrap(),
        [0., 2., 1., 3., 4., 6., 5., 7.]
    );
    let x2: Vec<f32> = (0..16).map(|i| i as f32).collect(); // 8 rows of 2
    assert_eq!(
        &permute_rows(&x2, 8, 1).unwrap()[..8],
        &[0., 1., 8., 9., 2., 3., 10., 11.]
    );
    assert!(permute_rows(&x, 8, 3).is_none());
    assert!(permute_rows(&x, 6, 3).is_none(), "odd rows per head");
}

#[test]
fn llama_maps_as_convert_hf_to_gguf() {
    let d = tmp("llama");
    write(&d.0, llama_config(), &llama_tensors());
    let g = open_default(&d.0).unwrap();
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get_usize("llama.block_count").unwrap(), 1);
    assert_eq!(g.get_usize("llama.attention.head_count_kv").unwrap(), 1);
    assert_eq!(g.get_usize("llama.rope.dimension_count").unwrap(), 2);
    assert_eq!(g.get_usize("llama.vocab_size").unwrap(), 6);
    assert_eq!(g.get_usize("llama.context_length").unwrap(), 64);
    assert_eq!(g.get_f64("llama.rope.freq_base").unwrap(), 500000.0);
    let mut names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "blk.0.attn_k.weight",
            "blk.0.attn_norm.weight",
            "blk.0.attn_output.weight",
            "blk.0.attn_q.weight",
            "blk.0.attn_v.weight",
            "blk.0.ffn_down.weight",
            "blk.0.ffn_gate.weight",
            "blk.0.ffn_norm.weight",
            "blk.0.ffn_up.weight",
            "output.weight",
            "output_norm.weight",
            "rope_freqs.weight",
            "token_embd.weight"
        ]
    );
    // ggml dims are the reverse of the checkpoint's shape.
    assert_eq!(g.tensor("blk.0.ffn_down.weight").unwrap().dims, [8, 4]);
    // Llama 3.1 factors, one per rotated pair: head_dim 2 has one, of wavelength 2 pi, between
    // 16 / 4 and 16 / 1: smoothed between 1 and `factor`.
    let smooth = (16.0 / (2.0 * std::f32::consts::PI) - 1.0) / 3.0;
    let want = 1.0 / ((1.0 - smooth) / 8.0 + smooth);
    let got = vals(&g, "rope_freqs.weight");
    assert!(
        got.len() == 1 && (got[0] - want).abs() < 1e-5,
        "{got:?} vs {want}"
    );
    // Rows whose width is not a whole number of blocks stay as stored (F32 here).
    assert_eq!(g.tensor("token_embd.weight").unwrap().ty, GgmlType::F32);
    // Tied: no output matrix.
    let d2 = tmp("llama-tied");
    let mut cfg = llama_config();
    cfg["tie_word_embeddings"] = json!(true);
    write(&d2.0, cfg, &llama_tensors());
    assert!(open_default(&d2.0)
        .unwrap()
        .tensor("output.weight")
        .is_none());
}

/// An FP8 KV cache's calibrated scales under vLLM's names (compressed-tensors' `self_attn.k_scale`
/// as a scalar, ModelOpt's `self_attn.v_proj.v_scale` as one value) become `blk.{i}.attn_k_scale`
/// and `attn_v_scale`, kept as stored, never quantized; the deprecated `kv_scale` is refused by
/// name.
#[test]
fn kv_cache_scales_keep_their_values() {
    // A Llama checkpoint with `extra` tensors, in a folder of its own.
    let with = |tag: &str, extra: Vec<T>| {
        let d = tmp(tag);
        write(&d.0, llama_config(), &[llama_tensors(), extra].concat());
        d
    };
    let k = (
        "model.layers.0.self_attn.k_scale",
        "F32",
        vec![],
        f32s(&[0.0625]),
    );
    let v = (
        "model.layers.0.self_attn.v_proj.v_scale",
        "BF16",
        vec![1],
        bf16s(&[0.5]),
    );
    let d = with("kv-scales", vec![k, v]);
    let q = HfOptions {
        quantization: Quantization::Q8_0,
    };
    let g = open(&d.0, &q).unwrap();
    assert_eq!(vals(&g, "blk.0.attn_k_scale"), [0.0625]);
    assert_eq!(vals(&g, "blk.0.attn_v_scale"), [0.5]);
    assert_eq!(g.tensor("blk.0.attn_k_scale").unwrap().dims, [1]);
    assert_eq!(g.tensor("blk.0.attn_v_scale").unwrap().ty, GgmlType::BF16);
    let old = (
        "model.layers.0.self_attn.kv_scale",
        "F32",
        vec![],
        f32s(&[1.0]),
    );
    let d2 = with("kv-scale-old", vec![old]);
    assert!(err_of(&d2.0).contains("self_attn.kv_scale"));
}

#[test]
fn llama_q_and_k_rows_are_permuted_per_head() {
    let d = tmp("perm");
    let mut cfg = llama_config();
    cfg["hidden_size"] = json!(8);
    cfg["num_attention_heads"] = json!(2);
    cfg["num_key_value_heads"] = json!(1);
    cfg["rope_scaling"] = json!(null);
    let mut t = llama_tensors();
    t.retain(|x| !x.0.contains("q_proj") && !x.0.contains("k_proj"));
    t.push(mat("model.layers.0.self_attn.q_proj.weight", &[8, 1]));
    t.push(mat("model.layers.0.self_attn.k_proj.weight", &[4, 1]));
    write(&d.0, cfg, &t);
    let g = open(
        &d.0,
        &HfOptions {
            quantization: Quantization::None,
        },
    )
    .unwrap();
    let r = |v: Vec<f32>| {
        v.iter()
            .map(|x| (x * 100.0).round() as i32)
            .collect::<Vec<_>>()
    };
    assert_eq!(r(vals(&g, "blk.0.attn_q.weight")), [0, 2, 1, 3, 4, 6, 5, 7]);
    assert_eq!(r(vals(&g, "blk.0.attn_k.weight")), [0, 2, 1, 3]);
    assert!(g.get("llama.rope.scaling.type").is_none());
}

#[test]
fn gemma3_norms_embedding_and_keys() {
    let d = tmp("gemma3");
    let cfg = json!({"architectures": ["Gemma3ForCausalLM"], "hidden_size": 4, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 2,
        "vocab_size": 10, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "sliding_window": 512, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6});
    let t = vec![
        mat("model.embed_tokens.weight", &[10, 4]),
        mat("model.norm.weight", &[4]),
        mat("model.layers.0.input_layernorm.weight", &[4]),
        mat("model.layers.0.post_attention_layernorm.weight", &[4]),
        mat("model.layers.0.pre_feedforward_layernorm.weight", &[4]),
        mat("model.layers.0.post_feedforward_layernorm.weight", &[4]),
        mat("model.layers.0.self_attn.q_norm.weight", &[2]),
        mat("model.layers.0.self_attn.k_norm.weight", &[2]),
        mat("model.layers.0.self_attn.q_proj.weight", &[4, 4]),
    ];
    write(&d.0, cfg, &t);
    let g = open_default(&d.0).unwrap();
    assert_eq!(g.architecture().unwrap(), "gemma3");
    for (key, want) in [
        ("gemma3.attention.sliding_window", 512.0),
        ("gemma3.rope.freq_base", 1e6),
        ("gemma3.rope.freq_base_swa", 1e4),
        ("gemma3.attention.key_length", 2.0),
        ("gemma3.vocab_size", 8.0),
    ] {
        assert_eq!(g.get(key).and_then(|v| v.as_f64()), Some(want), "{key}");
    }
    // The converter counts the tokenizer's vocabulary plus its added tokens (6 + 2) and keeps as
    // many embedding rows, served from the mapping.
    assert_eq!(g.tensor("token_embd.weight").unwrap().dims, [4, 8]);
    for n in [
        "output_norm",
        "blk.0.attn_norm",
        "blk.0.post_attention_norm",
        "blk.0.ffn_norm",
        "blk.0.post_ffw_norm",
        "blk.0.attn_q_norm",
        "blk.0.attn_k_norm",
    ] {
        let v = vals(&g, &format!("{n}.weight"));
        assert_eq!(v[1], 1.01, "{n} stores 1 + w");
    }
    assert_eq!(
        vals(&g, "blk.0.attn_q.weight")[1],
        0.01,
        "matrices unshifted"
    );
}

#[test]
fn qwen3_and_phi3_names_and_rope() {
    let d = tmp("qwen3");
    let cfg = json!({"architectures": ["Qwen3ForCausalLM"], "hidden_size": 4, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
        "vocab_size": 6, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 40960});
    write(
        &d.0,
        cfg,
        &[
            mat("model.layers.0.self_attn.q_norm.weight", &[4]),
            mat("model.layers.0.self_attn.q_proj.weight", &[8, 4]),
            mat("model.layers.0.self_attn.q_proj.bias", &[8]),
        ],
    );
    let g = open_default(&d.0).unwrap();
    assert_eq!(g.get_usize("qwen3.attention.key_length").unwrap(), 4);
    assert!(g.tensor("blk.0.attn_q_norm.weight").is_some());
    assert!(g.tensor("blk.0.attn_q.bias").is_some());
    // Not permuted: qwen uses NeoX pairing.
    assert_eq!(vals(&g, "blk.0.attn_q.weight")[4], 0.04);

    let d = tmp("phi3");
    let long: Vec<f32> = vec![1.0, 2.0];
    let cfg = json!({"architectures": ["Phi3ForCausalLM"], "hidden_size": 8, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 6,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096, "sliding_window": 262144,
        "rope_scaling": {"type": "longrope", "long_factor": long, "short_factor": [1.0, 1.5]}});
    write(
        &d.0,
        cfg,
        &[
            mat("model.layers.0.self_attn.qkv_proj.weight", &[24, 8]),
            mat("model.layers.0.mlp.gate_up_proj.weight", &[16, 8]),
        ],
    );
    let g = open_default(&d.0).unwrap();
    assert_eq!(g.tensor("blk.0.attn_qkv.weight").unwrap().dims, [8, 24]);
    assert_eq!(g.tensor("blk.0.ffn_up.weight").unwrap().dims, [8, 16]);
    assert_eq!(vals(&g, "rope_factors_long.weight"), [1.0, 2.0]);
    assert_eq!(vals(&g, "rope_factors_short.weight"), [1.0, 1.5]);
    assert_eq!(
        g.get_usize("phi3.rope.scaling.original_context_length")
            .unwrap(),
        4096
    );
    assert_eq!(g.get_usize("phi3.rope.dimension_count").unwrap(), 4);
    let attn = g.get_f64("phi3.rope.scaling.attn_factor").unwrap();
    let want = (1.0 + (32f64).ln() / (4096f64).ln()).sqrt();
    assert!((attn - want).abs() < 1e-6, "{attn} vs {want}");
}

/// A one-layer llama config of width 64 (whole Q8_0 blocks per row).
fn dim64_config() -> serde_json::Value {
    let mut cfg = llama_config();
    cfg["hidden_size"] = json!(64);
    cfg["num_attention_heads"] = json!(2);
    cfg["rope_scaling"] = json!(null);
    cfg
}

/// A (64, 64) BF16 output projection of `v` and a BF16 norm of its first 64 values.
fn bf16_o_proj_and_norm(v: &[f32]) -> Vec<T> {
    vec![
        (
            "model.layers.0.self_attn.o_proj.weight",
            "BF16",
            vec![64, 64],
            bf16s(v),
        ),
        (
            "model.layers.0.input_layernorm.weight",
            "BF16",
            vec![64],
            bf16s(&v[..64]),
        ),
    ]
}

#[test]
fn bf16_matrices_are_quantized_and_f32_kept() {
    let d = tmp("quant");
    let cfg = dim64_config();
    let v: Vec<f32> = (0..64 * 64)
        .map(|i| ((i % 17) as f32 - 8.0) * 0.01)
        .collect();
    let t = bf16_o_proj_and_norm(&v);
    write(&d.0, cfg.clone(), &t);
    let g = open_default(&d.0).unwrap();
    let o = g.tensor("blk.0.attn_output.weight").unwrap();
    assert_eq!(o.ty, GgmlType::Q8_0);
    let back = vals(&g, "blk.0.attn_output.weight");
    assert!(back.iter().zip(&v).all(|(a, b)| (a - b).abs() < 0.001));
    assert_eq!(
        g.tensor("blk.0.attn_norm.weight").unwrap().ty,
        GgmlType::BF16
    );
    // An f32 checkpoint stays f32 under `auto`.
    let t32: Vec<T> = vec![(
        "model.layers.0.self_attn.o_proj.weight",
        "F32",
        vec![64, 64],
        f32s(&v),
    )];
    write(&d.0, cfg, &t32);
    let g = open_default(&d.0).unwrap();
    assert_eq!(
        g.tensor("blk.0.attn_output.weight").unwrap().ty,
        GgmlType::F32
    );
}

/// `--quantization fp8`: matrices hold their FP8 E4M3 round trip (one scale per tensor) as F32, the
/// exact values an FP8 product multiplies; norms stay as stored.
#[test]
fn fp8_matrices_hold_their_fp8_rounded_values() {
    use crate::quant::fp8::{Fp8Matrix, Fp8Scaling};
    let d = tmp("fp8");
    let cfg = dim64_config();
    let v: Vec<f32> = (0..64 * 64)
        .map(|i| ((i % 23) as f32 - 11.0) * 0.013 * (1 + i / 64) as f32)
        .collect();
    let t = bf16_o_proj_and_norm(&v);
    write(&d.0, cfg, &t);
    let g = open(
        &d.0,
        &HfOptions {
            quantization: "fp8".parse().unwrap(),
        },
    )
    .unwrap();
    assert_eq!(
        g.tensor("blk.0.attn_output.weight").unwrap().ty,
        GgmlType::F32
    );
    let vb: Vec<f32> = v
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    let want = Fp8Matrix::quantize(&vb, 64, 64, Fp8Scaling::PerTensor)
        .unwrap()
        .dequantize();
    assert_eq!(vals(&g, "blk.0.attn_output.weight"), want);
    assert_ne!(want, vb, "FP8 rounding changes the values");
    assert_eq!(
        g.tensor("blk.0.attn_norm.weight").unwrap().ty,
        GgmlType::BF16
    );
}

#[test]
fn tokenizer_files_become_tokenizer_metadata() {
    let d = tmp("tok");
    write(&d.0, llama_config(), &llama_tensors());
    std::fs::write(
        d.0.join("tokenizer_config.json"),
        json!({"bos_token": "<s>", "eos_token": {"content": "<|im_end|>"},
            "chat_template": [{"name": "default", "template": "{{ messages[0].content }}"},
                              {"name": "tool_use", "template": "tools"}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        d.0.join("generation_config.json"),
        json!({"eos_token_id": [5, 2], "temperature": 0.6, "top_p": 0.9, "top_k": 20}).to_string(),
    )
    .unwrap();
    let g = open_default(&d.0).unwrap();
    assert_eq!(g.get_usize("tokenizer.ggml.bos_token_id").unwrap(), 4);
    assert_eq!(g.get_usize("tokenizer.ggml.eos_token_id").unwrap(), 5);
    assert!(
        g.get_bool("tokenizer.ggml.add_bos_token").unwrap(),
        "post-processor adds <s>"
    );
    assert_eq!(
        g.get_str("tokenizer.chat_template").unwrap(),
        "{{ messages[0].content }}"
    );
    assert_eq!(
        g.get_str("tokenizer.chat_template.tool_use").unwrap(),
        "tools"
    );
    assert!((g.get_f64("general.sampling.temp").unwrap() - 0.6).abs() < 1e-6);
    assert_eq!(
        g.get("general.sampling.top_k").and_then(|v| v.as_i64()),
        Some(20)
    );

    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.vocab_size(), 6);
    assert_eq!(tok.eog_ids(), [2, 5], "generation_config's list plus EOS");
    assert!(tok.is_special(5) && !tok.is_special(2));
    // The file's truncation to 2 tokens is ignored, BOS comes from add_bos_token.
    assert_eq!(
        tok.encode("ab ab ab", true, true).unwrap(),
        [4, 2, 3, 2, 3, 2]
    );
    assert_eq!(tok.encode("ab<|im_end|>", false, true).unwrap(), [2, 5]);
    assert_ne!(tok.encode("ab<|im_end|>", false, false).unwrap(), [2, 5]);
    assert_eq!(tok.decode(&[4, 2, 3, 2, 5], true), "ab ab");
}

#[test]
fn unigram_tokenizer_json() {
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
        "post_processor": null,
        "decoder": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
        "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": false,
            "vocab": [["<unk>", 0.0], ["\u{2581}a", -1.0], ["a", -2.0], ["\u{2581}", -3.0], ["b", -2.5]]}
    });
    let d = tmp("unigram");
    std::fs::write(d.0.join("tokenizer.json"), tok.to_string()).unwrap();
    let g = open_tokenizer(&d.0).unwrap();
    let t = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(t.vocab_size(), 5);
    assert_eq!(t.unk_id(), Some(0));
    assert!(t.is_special(0));
    let ids = t.encode("a ab", false, false).unwrap();
    assert_eq!(ids, [1, 1, 4]);
    assert_eq!(t.decode(&ids, false), "a ab");
}

fn err_of(dir: &Path) -> String {
    open_default(dir).unwrap_err().to_string()
}

#[test]
fn unsupported_inputs_are_named() {
    // Missing files.
    let d = tmp("missing");
    assert!(err_of(&d.0).contains("config.json"), "{}", err_of(&d.0));
    write(&d.0, llama_config(), &llama_tensors());
    std::fs::remove_file(d.0.join("config.json")).unwrap();
    assert!(err_of(&d.0).contains("config.json"));
    write(&d.0, llama_config(), &llama_tensors());
    std::fs::remove_file(d.0.join("model.safetensors")).unwrap();
    assert!(err_of(&d.0).contains("neither model.safetensors"));
    std::fs::write(
        d.0.join("model.safetensors.index.json"),
        json!({"weight_map": {"a": "model-00001-of-00002.safetensors"}}).to_string(),
    )
    .unwrap();
    let e = err_of(&d.0);
    assert!(
        e.contains("model-00001-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );

    let case = |tag: &str, cfg: serde_json::Value, t: Vec<T>, want: &[&str]| {
        let d = tmp(tag);
        write(&d.0, cfg, &t);
        let e = err_of(&d.0);
        assert!(want.iter().all(|w| e.contains(w)), "{tag}: {e}");
    };
    let mut cfg = llama_config();
    cfg["architectures"] = json!(["MambaForCausalLM"]);
    case(
        "arch",
        cfg,
        llama_tensors(),
        &["MambaForCausalLM", "not supported"],
    );
    let mut cfg = llama_config();
    cfg["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
    case("yarn", cfg, llama_tensors(), &["rope scaling `yarn`"]);
    let mut t = llama_tensors();
    t.push(("model.norm.weight", "I64", vec![4], vec![0; 32]));
    t.retain(|x| x.0 != "model.norm.weight" || x.1 == "I64");
    case("dtype", llama_config(), t, &["model.norm.weight", "I64"]);
    let mut t = llama_tensors();
    t.push(mat("model.layers.0.self_attn.q_norm.weight", &[2]));
    case(
        "name",
        llama_config(),
        t,
        &["model.layers.0.self_attn.q_norm.weight", "no GGUF name"],
    );
}
