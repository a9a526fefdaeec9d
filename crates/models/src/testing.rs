//! Tiny random models of every supported architecture for tests across the workspace (no real
//! weights needed).

use tokenfab_loader::{quant, GgmlType, GgufWriter, Value};

/// Residual width of the tiny model.
pub const DIM: usize = 64;
const FFN: usize = 96;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;
/// Context of the tiny models.
pub const CONTEXT: usize = 256;
/// Window of the tiny Gemma 3's sliding-window layers: short enough for tests to cross it.
pub const WINDOW: usize = 5;

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
    tiny_model(arch, vocab, GgmlType::F32, HEADS, KV_HEADS)
}

/// A 2-layer model of any supported architecture (`llama`, `qwen2`, `qwen3`, `gemma3`, `phi3`)
/// laid out as its GGUF files are: Qwen2's Q/K/V biases; Qwen3's and Gemma 3's Q/K norms;
/// Gemma 3's post-norms, a sliding-window layer of [`WINDOW`] positions (its own RoPE base) then
/// a global one; Phi-3's fused `attn_qkv` and gate|up `ffn_up`, LongRoPE factors (the long ones:
/// the context is past the original) and attention factor. `heads` and `kv_heads` split [`DIM`].
pub fn tiny_model(
    arch: &str,
    vocab: usize,
    ty: GgmlType,
    heads: usize,
    kv_heads: usize,
) -> GgufWriter {
    build(arch, vocab, ty, heads, kv_heads, 2)
}

/// A tiny Gemma 3 whose two layers both attend only to their last [`WINDOW`] positions, so a
/// token's logits depend on the last `2 * (WINDOW - 1) + 1` tokens alone.
pub fn tiny_gemma3_all_windowed(vocab: usize) -> GgufWriter {
    build("gemma3", vocab, GgmlType::F32, HEADS, KV_HEADS, 0)
}

/// `swa_pattern`: Gemma 3's `sliding_window_pattern` (every n-th layer global; 0: none).
fn build(
    arch: &str,
    vocab: usize,
    ty: GgmlType,
    heads: usize,
    kv_heads: usize,
    swa_pattern: u32,
) -> GgufWriter {
    let mut seed = 11;
    let mut w = GgufWriter::new();
    let k = |s: &str| format!("{arch}.{s}");
    let hd = DIM / heads;
    w.meta("general.architecture", Value::String(arch.into()))
        .meta("general.name", Value::String(format!("tiny-{arch}")))
        .meta(&k("block_count"), Value::U32(LAYERS as u32))
        .meta(&k("embedding_length"), Value::U32(DIM as u32))
        .meta(&k("feed_forward_length"), Value::U32(FFN as u32))
        .meta(&k("attention.head_count"), Value::U32(heads as u32))
        .meta(&k("attention.head_count_kv"), Value::U32(kv_heads as u32))
        .meta(&k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
        .meta(&k("context_length"), Value::U32(CONTEXT as u32))
        .meta(&k("rope.freq_base"), Value::F32(10000.0))
        .meta(&k("vocab_size"), Value::U32(vocab as u32));
    match arch {
        "gemma3" => {
            w.meta(&k("attention.sliding_window"), Value::U32(WINDOW as u32))
                .meta(
                    &k("attention.sliding_window_pattern"),
                    Value::U32(swa_pattern),
                )
                .meta(&k("rope.freq_base_swa"), Value::F32(100.0))
                .meta(&k("attention.key_length"), Value::U32(hd as u32))
                .meta(&k("attention.value_length"), Value::U32(hd as u32));
        }
        "phi3" => {
            w.meta(&k("rope.scaling.original_context_length"), Value::U32(64))
                .meta(&k("rope.scaling.attn_factor"), Value::F32(1.19));
        }
        _ => {}
    }
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
    if arch == "phi3" {
        let half = hd as u64 / 2;
        t(&mut w, "rope_factors_long.weight", &[half], 4.0, 3.0);
        t(&mut w, "rope_factors_short.weight", &[half], 0.5, 1.0);
    }
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}");
        t(&mut w, &n("attn_norm.weight"), &[d], 0.5, 1.0);
        t(&mut w, &n("ffn_norm.weight"), &[d], 0.5, 1.0);
        if arch == "phi3" {
            let qkv = d + 2 * kv as u64;
            t(&mut w, &n("attn_qkv.weight"), &[d, qkv], 0.5, 0.0);
        } else {
            t(&mut w, &n("attn_q.weight"), &[d, d], 0.5, 0.0);
            t(&mut w, &n("attn_k.weight"), &[d, kv as u64], 0.5, 0.0);
            t(&mut w, &n("attn_v.weight"), &[d, kv as u64], 0.5, 0.0);
        }
        t(&mut w, &n("attn_output.weight"), &[d, d], 0.3, 0.0);
        if arch == "phi3" {
            t(&mut w, &n("ffn_up.weight"), &[d, 2 * FFN as u64], 0.5, 0.0);
        } else {
            t(&mut w, &n("ffn_gate.weight"), &[d, FFN as u64], 0.5, 0.0);
            t(&mut w, &n("ffn_up.weight"), &[d, FFN as u64], 0.5, 0.0);
        }
        t(&mut w, &n("ffn_down.weight"), &[FFN as u64, d], 0.3, 0.0);
        if arch == "qwen2" {
            t(&mut w, &n("attn_q.bias"), &[d], 0.5, 0.0);
            t(&mut w, &n("attn_k.bias"), &[kv as u64], 0.5, 0.0);
            t(&mut w, &n("attn_v.bias"), &[kv as u64], 0.5, 0.0);
        }
        if arch == "qwen3" || arch == "gemma3" {
            t(&mut w, &n("attn_q_norm.weight"), &[hd as u64], 0.5, 1.0);
            t(&mut w, &n("attn_k_norm.weight"), &[hd as u64], 0.5, 1.0);
        }
        if arch == "gemma3" {
            t(&mut w, &n("post_attention_norm.weight"), &[d], 0.5, 1.0);
            t(&mut w, &n("post_ffw_norm.weight"), &[d], 0.5, 1.0);
        }
    }
    w
}

/// Every architecture [`tiny_model`] writes.
pub const ARCHS: [&str; 5] = ["llama", "qwen2", "qwen3", "gemma3", "phi3"];

/// The largest |got - want| of each step over that step's largest |want|, the worst step's:
/// the error measure of the device-against-CPU tests.
pub fn worst_rel(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), want.len(), "steps");
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            let spread = w.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / spread
        })
        .fold(0f32, f32::max)
}

/// Device sampling with async scheduling's feed: two sequences' prompts (one batch, sampled),
/// then `steps` decode steps of both whose input tokens are the previous step's, taken on the
/// device through the feed (`feed`) or uploaded by the host. Every step's sampled tokens; the
/// two ways must agree. Decode steps of one size reach a graph bucket's warm-up, capture and
/// replays on a CUDA executor.
pub fn fed_steps(e: &mut dyn crate::Executor, steps: usize, feed: bool) -> Vec<[u32; 2]> {
    use crate::executor::{DeviceSampling, TokenMasks};
    use crate::{ForwardBatch, SeqSlice};
    use tokenfab_backend::cuda::sampling::row_inputs;

    let (t1, t2): (Vec<u32>, Vec<u32>) = ((0..8).collect(), (8..16).collect());
    let p1: Vec<u32> = (0..13).map(|i| (i * 7 % 50) as u32).collect();
    let p2: Vec<u32> = (0..6).map(|i| (i * 5 % 50) as u32).collect();
    // A high temperature with a draw per step and row, so that the tokens move (the tiny
    // models' logits are peaked).
    let sampling = tokenfab_types::SamplingParams {
        temperature: 100.0,
        ..Default::default()
    };
    let mut draws = 0u32;
    let d = e.device_sampler().expect("a device sampler");
    let mut step = |tokens: &[u32], positions: &[u32], fed: &[i32], rows: [usize; 2]| {
        let params = [0, 1].map(|_| {
            draws += 1;
            let u = (draws as f32 * 0.377).fract();
            row_inputs(&sampling, &[], (&[], &[]), u, &mut Vec::new())
        });
        let seqs = [
            SeqSlice {
                rows: 0..rows[0] + 1,
                block_table: &t1,
            },
            SeqSlice {
                rows: rows[0] + 1..rows[1] + 1,
                block_table: &t2,
            },
        ];
        let b = ForwardBatch {
            tokens,
            positions,
            seqs: &seqs,
            logits_rows: &rows,
        };
        let s = DeviceSampling {
            params: &params,
            edits: &[],
            host: &[false, false],
            feed: fed,
        };
        d.launch(&b, &s).unwrap();
        let got = d.sample(&TokenMasks::default()).unwrap();
        [got.tokens[0], got.tokens[1]]
    };
    let tokens: Vec<u32> = p1.iter().chain(&p2).copied().collect();
    let positions: Vec<u32> = (0..13).chain(0..6).collect();
    let mut out = vec![step(&tokens, &positions, &[], [12, 18])];
    for s in 0..steps as u32 {
        let last = out[out.len() - 1];
        let (tokens, fed) = if feed {
            // The host does not know them: whatever it uploads is replaced.
            ([0, 0], [0, 1])
        } else {
            (last, [-1, -1])
        };
        out.push(step(&tokens, &[13 + s, 6 + s], &fed, [0, 1]));
    }
    out
}
