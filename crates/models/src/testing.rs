//! Tiny random models for tests across the workspace (no real weights needed).

use tokenfab_loader::{quant, GgmlType, GgufWriter, Value};

/// Residual width of the tiny model.
pub const DIM: usize = 64;
const FFN: usize = 96;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;

fn rand_vec(seed: &mut u64, n: usize, scale: f32, offset: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5) * scale + offset
        })
        .collect()
}

/// A GGUF of a 2-layer Llama-shaped model (`arch` = "llama" or "qwen2", the latter with Q/K/V
/// biases) with deterministic random F32 weights and `vocab` tokens. Add tokenizer metadata to the
/// writer to make it a complete model file.
pub fn tiny_llama(arch: &str, vocab: usize) -> GgufWriter {
    tiny_llama_typed(arch, vocab, GgmlType::F32)
}

/// [`tiny_llama`] with its matrices (not norms or biases) stored as `ty`.
pub fn tiny_llama_typed(arch: &str, vocab: usize, ty: GgmlType) -> GgufWriter {
    tiny_llama_heads(arch, vocab, ty, HEADS, KV_HEADS)
}

/// [`tiny_llama_typed`] with `heads` query heads and `kv_heads` KV heads over the same width
/// (2 and 1 give heads of 32, storable in a Q8_0 KV cache).
pub fn tiny_llama_heads(
    arch: &str,
    vocab: usize,
    ty: GgmlType,
    heads: usize,
    kv_heads: usize,
) -> GgufWriter {
    let mut seed = 11;
    let mut w = GgufWriter::new();
    let k = |s: &str| format!("{arch}.{s}");
    w.meta("general.architecture", Value::String(arch.into()))
        .meta("general.name", Value::String(format!("tiny-{arch}")))
        .meta(&k("block_count"), Value::U32(LAYERS as u32))
        .meta(&k("embedding_length"), Value::U32(DIM as u32))
        .meta(&k("feed_forward_length"), Value::U32(FFN as u32))
        .meta(&k("attention.head_count"), Value::U32(heads as u32))
        .meta(&k("attention.head_count_kv"), Value::U32(kv_heads as u32))
        .meta(&k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
        .meta(&k("context_length"), Value::U32(256))
        .meta(&k("rope.freq_base"), Value::F32(10000.0))
        .meta(&k("vocab_size"), Value::U32(vocab as u32));
    let hd = DIM / heads;
    let kv = kv_heads * hd;
    let d = DIM as u64;
    let mut t = |w: &mut GgufWriter, name: &str, dims: &[u64], scale: f32, offset: f32| {
        let n = dims.iter().product::<u64>() as usize;
        let v = rand_vec(&mut seed, n, scale, offset);
        if dims.len() == 2 && ty != GgmlType::F32 {
            let mut bytes = Vec::new();
            quant::quantize(ty, &v, &mut bytes).expect("quantizable tiny matrix");
            w.tensor(name, dims, ty, bytes);
        } else {
            w.tensor_f32(name, dims, &v);
        }
    };
    t(&mut w, "token_embd.weight", &[d, vocab as u64], 2.0, 0.0);
    t(&mut w, "output_norm.weight", &[d], 1.0, 1.0);
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}");
        t(&mut w, &n("attn_norm.weight"), &[d], 0.5, 1.0);
        t(&mut w, &n("ffn_norm.weight"), &[d], 0.5, 1.0);
        t(&mut w, &n("attn_q.weight"), &[d, d], 0.5, 0.0);
        t(&mut w, &n("attn_k.weight"), &[d, kv as u64], 0.5, 0.0);
        t(&mut w, &n("attn_v.weight"), &[d, kv as u64], 0.5, 0.0);
        t(&mut w, &n("attn_output.weight"), &[d, d], 0.3, 0.0);
        t(&mut w, &n("ffn_gate.weight"), &[d, FFN as u64], 0.5, 0.0);
        t(&mut w, &n("ffn_up.weight"), &[d, FFN as u64], 0.5, 0.0);
        t(&mut w, &n("ffn_down.weight"), &[FFN as u64, d], 0.3, 0.0);
        if arch == "qwen2" {
            t(&mut w, &n("attn_q.bias"), &[d], 0.5, 0.0);
            t(&mut w, &n("attn_k.bias"), &[kv as u64], 0.5, 0.0);
            t(&mut w, &n("attn_v.bias"), &[kv as u64], 0.5, 0.0);
        }
    }
    w
}
