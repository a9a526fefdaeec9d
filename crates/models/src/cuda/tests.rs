//! The CUDA executor against the CPU's forward pass on every architecture's tiny model. Without a
//! device, building the executor is a typed error and each test says it skipped.

use tokenfab_loader::{GgmlType, Gguf};

use super::*;
use crate::executor::CpuExecutor;
use crate::kv::KvDtype;
use crate::testing::{tiny_model, worst_rel, ARCHS};
use crate::SeqSlice;

const VOCAB: usize = 64;

fn tiny(arch: &str) -> Model {
    let g = Gguf::from_bytes(tiny_model(arch, VOCAB, GgmlType::F32, 4, 2).to_bytes()).unwrap();
    Model::from_gguf(&g).unwrap()
}

/// The executor, or `None` (having said why) where there is no usable device.
fn on_device(model: &Model, max_graph_batch: usize) -> Option<CudaExecutor> {
    on_device_kv(model, max_graph_batch, KvDtype::F16)
}

/// [`on_device`] with the pool stored as `kv_dtype`.
fn on_device_kv(model: &Model, max_graph_batch: usize, kv_dtype: KvDtype) -> Option<CudaExecutor> {
    let cfg = CudaConfig {
        block_size: 4,
        max_batch_tokens: 64,
        max_graph_batch,
        max_blocks: Some(32),
        kv_dtype,
        ..CudaConfig::default()
    };
    match CudaExecutor::new(model, &cfg) {
        Ok(e) => Some(e),
        Err(Error::Device(e)) => {
            eprintln!("skipped: no usable CUDA device ({e})");
            None
        }
        Err(e) => panic!("not a device error: {e}"),
    }
}

/// Two sequences: a prompt each (one batch), then `steps` decode steps of both together;
/// returns the logits of every step.
fn run(e: &mut dyn Executor, steps: usize) -> Vec<Vec<f32>> {
    let (t1, t2): (Vec<u32>, Vec<u32>) = ((0..8).collect(), (8..16).collect());
    let p1: Vec<u32> = (0..13).map(|i| (i * 7 % VOCAB) as u32).collect();
    let p2: Vec<u32> = (0..6).map(|i| (i * 5 % VOCAB) as u32).collect();
    let mut out = Vec::new();
    let tokens: Vec<u32> = p1.iter().chain(&p2).copied().collect();
    let positions: Vec<u32> = (0..13).chain(0..6).collect();
    let seqs = [
        SeqSlice {
            rows: 0..13,
            block_table: &t1,
        },
        SeqSlice {
            rows: 13..19,
            block_table: &t2,
        },
    ];
    let b = ForwardBatch {
        tokens: &tokens,
        positions: &positions,
        seqs: &seqs,
        logits_rows: &[12, 18],
    };
    out.push(e.forward(&b).unwrap().to_vec());
    for s in 0..steps as u32 {
        let seqs = [
            SeqSlice {
                rows: 0..1,
                block_table: &t1,
            },
            SeqSlice {
                rows: 1..2,
                block_table: &t2,
            },
        ];
        let b = ForwardBatch {
            tokens: &[(s * 3) % VOCAB as u32, (s * 11) % VOCAB as u32],
            positions: &[13 + s, 6 + s],
            seqs: &seqs,
            logits_rows: &[0, 1],
        };
        out.push(e.forward(&b).unwrap().to_vec());
    }
    out
}

#[test]
fn every_architecture_matches_the_cpu_on_a_gpu() {
    for arch in ARCHS {
        let model = tiny(arch);
        let Some(mut gpu) = on_device(&model, 8) else {
            return;
        };
        // Past Gemma 3's window of 5: the decode steps attend through it.
        let got = run(&mut gpu, 6);
        assert!(
            gpu.graphs_captured() > 0,
            "{arch}: decode steps ran as graphs"
        );
        let mut cpu = CpuExecutor::new(tiny(arch), KvDtype::F32, 4, 32).unwrap();
        let want = run(&mut cpu, 6);
        for (s, (g, w)) in got.iter().zip(&want).enumerate() {
            let spread = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            // bf16 weights, inputs and K/V against f32.
            assert!(
                worst <= 0.05 * spread,
                "{arch} step {s}: worst {worst} vs spread {spread}"
            );
        }
        // Graph replays give what the same launches give without graphs.
        let mut plain = on_device(&model, 0).expect("the device was there");
        assert_eq!(run(&mut plain, 6), got, "{arch}: graphs vs plain launches");
        assert_eq!(plain.graphs_captured(), 0);
    }
}

/// Steps that mix prefill chunks with decode rows, as the scheduler makes them: a prompt; a
/// decode row beside a 20-row chunk (two tiles) and a 2-row chunk (short: the decode kernel);
/// the rest of the long prompt beside two decode rows; then decode steps of all three. Returns
/// the logits of every step.
fn run_mixed(e: &mut dyn Executor) -> Vec<Vec<f32>> {
    let tables: [Vec<u32>; 3] = [(0..8).collect(), (8..16).collect(), (16..24).collect()];
    let tok = |i: u32| (i * 7 + 3) % VOCAB as u32;
    // (sequence, first position, rows) per step; logits of each sequence's last row.
    let steps: [&[(usize, u32, u32)]; 7] = [
        &[(0, 0, 13)],
        &[(0, 13, 1), (1, 0, 20), (2, 0, 2)],
        &[(1, 20, 7), (0, 14, 1), (2, 2, 1)],
        &[(0, 15, 1), (1, 27, 1), (2, 3, 1)],
        &[(0, 16, 1), (1, 28, 1), (2, 4, 1)],
        &[(0, 17, 1), (1, 29, 1), (2, 5, 1)],
        &[(0, 18, 1), (1, 30, 1), (2, 6, 1)],
    ];
    let mut out = Vec::new();
    for step in steps {
        let (mut tokens, mut positions, mut seqs, mut logits_rows) =
            (vec![], vec![], vec![], vec![]);
        for &(s, first, rows) in step {
            let at = tokens.len();
            positions.extend(first..first + rows);
            tokens.extend((first..first + rows).map(|p| tok(p + 40 * s as u32)));
            seqs.push(SeqSlice {
                rows: at..at + rows as usize,
                block_table: &tables[s],
            });
            logits_rows.push(at + rows as usize - 1);
        }
        let b = ForwardBatch {
            tokens: &tokens,
            positions: &positions,
            seqs: &seqs,
            logits_rows: &logits_rows,
        };
        out.push(e.forward(&b).unwrap().to_vec());
    }
    out
}

/// Prefill chunks' attention on `prefill_attention`'s tiles and decode rows' on
/// `paged_attention` in the same steps, against the CPU (bf16 and FP8 K/V), on every
/// architecture (Gemma 3's window of 5 included).
#[test]
fn mixed_prefill_and_decode_steps_match_the_cpu_on_a_gpu() {
    for arch in ARCHS {
        // The CPU first: the steps are well-formed batches with or without a device.
        let mut cpu = CpuExecutor::new(tiny(arch), KvDtype::F32, 4, 32).unwrap();
        let want = run_mixed(&mut cpu);
        assert_eq!(want[1].len(), 3 * VOCAB);
        let Some(mut gpu) = on_device(&tiny(arch), 8) else {
            return;
        };
        let got = run_mixed(&mut gpu);
        // 13 + 20 + 7 rows of chunks long enough for tiles; the 2-row chunk is not.
        assert_eq!(gpu.prefill_tile_rows(), 40, "{arch}");
        let e = worst_rel(&got, &want);
        eprintln!("{arch}: mixed prefill/decode steps vs CPU {e:.4}");
        assert!(e <= 0.05, "{arch}: {e}");
        if arch == "llama" || arch == "gemma3" {
            let mut fp8 = on_device_kv(&tiny(arch), 8, KvDtype::Fp8).expect("the device was there");
            let e8 = worst_rel(&run_mixed(&mut fp8), &got);
            eprintln!("{arch}: mixed steps, fp8 KV vs bf16 KV {e8:.4}");
            assert!(e8 <= 0.1, "{arch}: fp8 KV {e8}");
            assert_eq!(fp8.prefill_tile_rows(), 40);
        }
    }
}

/// One sequence of five prompt tokens in blocks 0..8.
static PROMPT: [SeqSlice<'static>; 1] = [SeqSlice {
    rows: 0..5,
    block_table: &[0, 1, 2, 3, 4, 5, 6, 7],
}];

fn prompt(logits_rows: &[usize]) -> ForwardBatch<'_> {
    ForwardBatch {
        tokens: &[1, 2, 3, 4, 5],
        positions: &[0, 1, 2, 3, 4],
        seqs: &PROMPT,
        logits_rows,
    }
}

#[test]
fn device_greedy_picks_the_argmax() {
    let model = tiny("gemma3");
    let Some(mut gpu) = on_device(&model, 8) else {
        return;
    };
    let b = prompt(&[2, 4]);
    let logits = gpu.forward(&b).unwrap().to_vec();
    let picks = gpu.forward_greedy(&b).unwrap();
    for (i, &p) in picks.iter().enumerate() {
        let row = &logits[i * VOCAB..(i + 1) * VOCAB];
        let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let first = row.iter().position(|&v| v == best).unwrap() as u32;
        assert_eq!(p, first, "row {i}");
    }
}

#[test]
fn table_capacity_covers_full_contexts() {
    let g = Gguf::from_bytes(tiny_model("llama", VOCAB, GgmlType::F32, 4, 2).to_bytes()).unwrap();
    let c = ModelConfig::from_gguf(&g).unwrap();
    let caps = step_caps(&c, 16, 4, 0);
    assert_eq!(caps.table_cap, 4 * c.context_len.div_ceil(16) + 1);
    assert_eq!((caps.rows, caps.edits), (4, 256));
    assert_eq!(step_caps(&c, 16, 4, 1000).edits, 1000);
}

/// Device sampling through the executor (inputs in the step's one upload, masks after the
/// launch, `mask_rows` then `sample_rows`) gives what the CPU twins give on the device's own
/// logits; a row the host reads comes back masked.
#[test]
fn device_sampling_matches_the_twins_on_the_devices_logits() {
    use tokenfab_backend::cuda::sampling::{row_inputs, sample_row, HOST};
    use tokenfab_backend::cuda::token_mask::{mask_row, mask_words};
    use tokenfab_types::SamplingParams;

    use crate::executor::{DeviceSampling, TokenMasks};

    let model = tiny("llama");
    let Some(mut gpu) = on_device(&model, 8) else {
        return;
    };
    let b = prompt(&[2, 3, 4]);
    let logits = gpu.forward(&b).unwrap().to_vec();
    let mut edits = Vec::new();
    let greedy = SamplingParams::default();
    let sampled = SamplingParams {
        temperature: 0.9,
        top_k: 5,
        repetition_penalty: 1.2,
        ..Default::default()
    };
    let mut params = vec![
        row_inputs(&greedy, &[(7, 5.0)], (&[1, 2], &[]), 0.0, &mut edits),
        row_inputs(&sampled, &[], (&[1, 2, 3], &[9]), 0.6, &mut edits),
        row_inputs(&greedy, &[], (&[], &[]), 0.0, &mut edits),
    ];
    params[1].want_logprob = 1;
    let host = [false, false, true];
    let words = mask_words(VOCAB);
    // Row 1 may take tokens 32..64 only; row 2 (the host's) 0..32.
    let masks = [0u32, u32::MAX, u32::MAX, 0];
    gpu.launch(
        &b,
        &DeviceSampling {
            params: &params,
            edits: &edits,
            host: &host,
            feed: &[],
        },
    )
    .unwrap();
    let got = gpu
        .sample(&TokenMasks {
            rows: &[1, 2],
            words: &masks,
        })
        .unwrap();
    let row = |r: usize| logits[r * VOCAB..(r + 1) * VOCAB].to_vec();
    let mut r1 = row(1);
    mask_row(&mut r1, &masks[..words]);
    let mut r2 = row(2);
    mask_row(&mut r2, &masks[words..]);
    let edits_of = |p: &tokenfab_backend::cuda::sampling::SampleParams| {
        &edits[p.edits_start as usize..][..p.edits_len as usize]
    };
    assert_eq!(
        got.tokens[0],
        sample_row(&row(0), &params[0], edits_of(&params[0])).token
    );
    let w1 = sample_row(&r1, &params[1], edits_of(&params[1]));
    assert_eq!(got.tokens[1], w1.token);
    assert!(w1.token >= 32 && (got.logprobs[1] - w1.logprob).abs() < 1e-4);
    assert_eq!(got.tokens[2], HOST);
    assert_eq!(got.host_at, &[usize::MAX, usize::MAX, 0]);
    assert_eq!(got.logits, &r2[..]);
}

/// Async scheduling's feed on the device: decode steps whose input tokens `feed_tokens` takes
/// from the last step's sampled tokens (through a graph bucket's warm-up, capture and replays)
/// give the tokens of steps whose inputs the host uploads, and those of the CPU twin.
#[test]
fn fed_steps_match_host_fed_steps_on_a_gpu() {
    let Some(mut fed) = on_device(&tiny("llama"), 8) else {
        return;
    };
    let mut host = on_device(&tiny("llama"), 8).expect("the device was there");
    let got = crate::testing::fed_steps(&mut fed, 6, true);
    assert_eq!(got, crate::testing::fed_steps(&mut host, 6, false));
    assert!(
        fed.graphs_captured() > 0,
        "the decode steps replayed a graph"
    );
    eprintln!("fed tokens {got:?}");
}

/// FP8 weights (layers' matrices as E4M3 with a scale each, products through cuBLASLt) and an
/// FP8 KV cache against the CPU's f32 pass, with a tolerance fit to FP8 (operands within 2^-4
/// relative); FP8 K/V against bf16 K/V on the same FP8 weights. Devices below sm_89 refuse FP8
/// with an error naming it.
#[test]
fn fp8_weights_and_kv_track_the_cpu_on_a_gpu() {
    for arch in ["llama", "qwen2"] {
        let mut model = tiny(arch);
        model.gpu_weights = GpuWeights::Fp8;
        let Some(mut fp8_kv) = on_device_kv(&model, 8, KvDtype::Fp8) else {
            return;
        };
        let mut bf16_kv = on_device_kv(&model, 8, KvDtype::F16).expect("the device was there");
        let mut bf16 = on_device(&tiny(arch), 8).expect("the device was there");
        let mut cpu = CpuExecutor::new(tiny(arch), KvDtype::F32, 4, 32).unwrap();
        let want = run(&mut cpu, 6);
        let (a, b, c) = (run(&mut fp8_kv, 6), run(&mut bf16_kv, 6), run(&mut bf16, 6));
        let (e_fp8, e_kv, e_bf16) = (
            worst_rel(&a, &want),
            worst_rel(&a, &b),
            worst_rel(&c, &want),
        );
        eprintln!("{arch}: fp8 weights+KV vs CPU {e_fp8:.4}, fp8 KV vs bf16 KV {e_kv:.4}, bf16 vs CPU {e_bf16:.4}");
        assert!(e_fp8 <= 0.15, "{arch}: fp8 vs cpu {e_fp8}");
        assert!(e_kv <= 0.1, "{arch}: fp8 KV vs bf16 KV {e_kv}");
        assert!(
            e_fp8 > e_bf16 / 4.0,
            "{arch}: FP8 really ran ({e_fp8} vs bf16 {e_bf16})"
        );
        assert!(
            fp8_kv.weight_bytes() < bf16.weight_bytes(),
            "FP8 weights take less memory"
        );
    }
}

/// Sizing counts what is stored: an FP8 pool holds twice the tokens of a bf16 one, FP8 layers
/// take half the bytes, and a dtype the GPU does not store is an error naming it.
#[test]
fn footprint_follows_the_storage() {
    let g = Gguf::from_bytes(tiny_model("llama", VOCAB, GgmlType::F32, 4, 2).to_bytes()).unwrap();
    let c = ModelConfig::from_gguf(&g).unwrap();
    let kv = |kv_dtype| CudaConfig {
        kv_dtype,
        block_size: 16,
        ..CudaConfig::default()
    };
    let f16 = device_footprint(&c, 1000, 0, false, &kv(KvDtype::F16)).unwrap();
    let f8 = device_footprint(&c, 1000, 0, true, &kv(KvDtype::Fp8)).unwrap();
    assert_eq!(f16.kv_min, 2 * f8.kv_min);
    assert_eq!(f8.kv_min, 3 * 2 * c.n_layers * c.kv_dim() * 16);
    // The FP8 products' quantized input: the widest layer input per row.
    assert_eq!(
        f8.activations - f16.activations,
        512 * (c.dim.max(c.ffn_dim) + 4)
    );
    for d in [KvDtype::Q8_0, KvDtype::F32] {
        let e = device_footprint(&c, 0, 0, false, &kv(d))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("--kv-cache-dtype {d}")), "{e}");
    }
    let layer = |w| llama_weight_bytes(&c, false, w) - llama_weight_bytes(&c, true, w);
    assert_eq!(
        layer(GpuWeights::Fp8),
        layer(GpuWeights::Bf16),
        "output matrix stays bf16"
    );
    let (b, f) = (
        llama_weight_bytes(&c, true, GpuWeights::Bf16),
        llama_weight_bytes(&c, true, GpuWeights::Fp8),
    );
    let layer_params =
        c.dim * (c.q_dim() + 2 * c.kv_dim()) + c.dim * c.q_dim() + 3 * c.ffn_dim * c.dim;
    assert_eq!(b - f, c.n_layers * (layer_params - 16));
}
