//! Forward-pass invariants on tiny random models of every architecture: chunking, batching and
//! block placement must not change any sequence's logits; sliding windows see only their window.

use tokenfab_loader::{GgmlType, Gguf};

use crate::testing::{tiny_gemma3_all_windowed, tiny_model, ARCHS, WINDOW};
use crate::{Arch, Error, ForwardBatch, KvCache, KvDtype, Model, SeqSlice};

const VOCAB: usize = 50;
const BS: usize = 4;

fn load(w: tokenfab_loader::GgufWriter) -> Model {
    Model::from_gguf(&Gguf::from_bytes(w.to_bytes()).unwrap()).unwrap()
}

fn tiny(arch: &str) -> Model {
    load(tiny_model(arch, VOCAB, GgmlType::F32, 4, 2))
}

/// Runs one sequence alone, in chunks of `chunk`, through blocks `table`; returns every row's logits.
fn run_alone(m: &Model, tokens: &[u32], chunk: usize, table: &[u32], kv: &mut KvCache) -> Vec<f32> {
    let mut out = Vec::new();
    for (c, part) in tokens.chunks(chunk).enumerate() {
        let start = (c * chunk) as u32;
        let positions: Vec<u32> = (start..start + part.len() as u32).collect();
        let rows: Vec<usize> = (0..part.len()).collect();
        let seqs = [SeqSlice {
            rows: 0..part.len(),
            block_table: table,
        }];
        let b = ForwardBatch {
            tokens: part,
            positions: &positions,
            seqs: &seqs,
            logits_rows: &rows,
        };
        out.extend(m.forward(&b, kv).unwrap());
    }
    out
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
            "{what}: [{i}] {x} vs {y}"
        );
    }
}

#[test]
fn every_architecture_loads_with_its_own_steps() {
    for arch in ARCHS {
        let m = tiny(arch);
        let w = &m.weights().layers[0];
        let c = &m.cfg;
        assert_eq!(w.bqkv.is_some(), c.kind == Arch::Qwen2, "{arch} biases");
        assert_eq!(
            w.q_norm.is_some(),
            matches!(c.kind, Arch::Qwen3 | Arch::Gemma3),
            "{arch} q/k norms"
        );
        assert_eq!(w.post_ffn_norm.is_some(), c.kind == Arch::Gemma3, "{arch}");
        assert_eq!(w.wqkv.rows(), c.q_dim() + 2 * c.kv_dim(), "{arch}");
        assert_eq!(w.w_gate_up.rows(), 2 * c.ffn_dim, "{arch}");
    }
    let g = tiny("gemma3");
    assert_eq!((g.cfg.window(0), g.cfg.window(1)), (Some(WINDOW), None));
    assert_eq!(g.ropes.len(), 2);
    assert_eq!(g.cfg.embed_scale, 8.0);
    let p = tiny("phi3");
    assert_eq!(p.ropes[0].mscale, 1.19);
}

#[test]
fn chunked_prefill_and_decode_equal_one_pass() {
    for arch in ARCHS {
        let m = tiny(arch);
        // Longer than Gemma 3's window, so chunks cross it.
        let tokens: Vec<u32> = (0..23).map(|i| (i * 7 % VOCAB) as u32).collect();
        let table: Vec<u32> = (0..8).collect();
        let mut kv = m.new_kv_cache(KvDtype::default(), BS, 8).unwrap();
        let whole = run_alone(&m, &tokens, 64, &table, &mut kv);
        assert!(whole.iter().all(|v| v.is_finite()), "{arch}");
        for chunk in [1, 3, 5] {
            let mut kv = m.new_kv_cache(KvDtype::default(), BS, 8).unwrap();
            assert_close(
                &run_alone(&m, &tokens, chunk, &table, &mut kv),
                &whole,
                &format!("{arch} chunk {chunk}"),
            );
        }
    }
}

#[test]
fn block_placement_does_not_matter() {
    for arch in ARCHS {
        let m = tiny(arch);
        let tokens: Vec<u32> = (0..15).map(|i| (i * 3 % VOCAB) as u32).collect();
        let mut kv = m.new_kv_cache(KvDtype::default(), BS, 10).unwrap();
        let a = run_alone(&m, &tokens, 4, &[0, 1, 2, 3], &mut kv);
        let mut kv = m.new_kv_cache(KvDtype::default(), BS, 10).unwrap();
        let b = run_alone(&m, &tokens, 4, &[9, 2, 7, 5], &mut kv);
        assert_close(&a, &b, &format!("{arch} permuted blocks"));
    }
}

#[test]
fn batching_sequences_together_changes_nothing() {
    for arch in ARCHS {
        let m = tiny(arch);
        let s1: Vec<u32> = (0..9).map(|i| (i * 5 % VOCAB) as u32).collect();
        let s2: Vec<u32> = (0..6).map(|i| (i * 11 % VOCAB) as u32).collect();
        let mut kv = m.new_kv_cache(KvDtype::default(), BS, 16).unwrap();
        let alone1 = run_alone(&m, &s1, 64, &[0, 1, 2], &mut kv);
        let alone2 = run_alone(&m, &s2, 64, &[3, 4], &mut kv);

        // Both prompts minus the last token in one batch, then both last tokens in another.
        let mut kv = m.new_kv_cache(KvDtype::default(), BS, 16).unwrap();
        let (t1, t2) = ([5u32, 6, 9], [7u32, 8]);
        let step = |kv: &mut KvCache, a: &[u32], pa: u32, b: &[u32], pb: u32| {
            let tokens: Vec<u32> = a.iter().chain(b).copied().collect();
            let positions: Vec<u32> = (pa..pa + a.len() as u32)
                .chain(pb..pb + b.len() as u32)
                .collect();
            let seqs = [
                SeqSlice {
                    rows: 0..a.len(),
                    block_table: &t1,
                },
                SeqSlice {
                    rows: a.len()..a.len() + b.len(),
                    block_table: &t2,
                },
            ];
            let rows = [a.len() - 1, a.len() + b.len() - 1];
            let batch = ForwardBatch {
                tokens: &tokens,
                positions: &positions,
                seqs: &seqs,
                logits_rows: &rows,
            };
            m.forward(&batch, kv).unwrap()
        };
        let _ = step(&mut kv, &s1[..8], 0, &s2[..5], 0);
        let last = step(&mut kv, &s1[8..], 8, &s2[5..], 5);
        assert_close(
            &last[..VOCAB],
            &alone1[8 * VOCAB..],
            &format!("{arch} seq 1"),
        );
        assert_close(
            &last[VOCAB..],
            &alone2[5 * VOCAB..],
            &format!("{arch} seq 2"),
        );
    }
}

/// The last layer runs past its attention on the logits rows alone (`Ops::keep_logits_rows`):
/// their logits are the same bits as when every row's are wanted, in any order of the rows.
#[test]
fn logits_of_a_few_rows_are_those_of_all_rows() {
    for arch in ARCHS {
        let m = tiny(arch);
        let tokens: Vec<u32> = (0..13).map(|i| (i * 5 % VOCAB) as u32).collect();
        let positions: Vec<u32> = (0..8).chain(0..5).collect();
        let (t1, t2) = ([0u32, 1, 2], [3u32, 4]);
        let seqs = [
            SeqSlice {
                rows: 0..8,
                block_table: &t1,
            },
            SeqSlice {
                rows: 8..13,
                block_table: &t2,
            },
        ];
        let run = |rows: &[usize]| {
            let mut kv = m.new_kv_cache(KvDtype::default(), BS, 8).unwrap();
            let batch = ForwardBatch {
                tokens: &tokens,
                positions: &positions,
                seqs: &seqs,
                logits_rows: rows,
            };
            m.forward(&batch, &mut kv).unwrap()
        };
        let all = run(&(0..13).collect::<Vec<_>>());
        for rows in [vec![7, 12], vec![12, 7], vec![3]] {
            let few = run(&rows);
            for (i, &r) in rows.iter().enumerate() {
                assert_eq!(
                    few[i * VOCAB..(i + 1) * VOCAB],
                    all[r * VOCAB..(r + 1) * VOCAB],
                    "{arch}: row {r} of {rows:?}"
                );
            }
        }
    }
}

/// With every layer windowed, a token sees only the last `2 (WINDOW - 1) + 1` tokens (two layers
/// of reach): two sequences differing in their first token agree exactly from that far on, and
/// differ before.
#[test]
fn sliding_windows_see_only_their_window() {
    let m = load(tiny_gemma3_all_windowed(VOCAB));
    let a: Vec<u32> = (0..20).map(|i| (i * 7 % (VOCAB - 1)) as u32 + 1).collect();
    let mut b = a.clone();
    b[0] = 0;
    let table: Vec<u32> = (0..5).collect();
    let run = |t: &[u32], chunk| {
        let mut kv = m.new_kv_cache(KvDtype::F32, BS, 5).unwrap();
        run_alone(&m, t, chunk, &table, &mut kv)
    };
    let (la, lb) = (run(&a, 20), run(&b, 3));
    let reach = 2 * (WINDOW - 1) + 1;
    for p in 0..20 {
        let (ra, rb) = (&la[p * VOCAB..][..VOCAB], &lb[p * VOCAB..][..VOCAB]);
        if p >= reach {
            assert_close(
                ra,
                rb,
                &format!("position {p} is past the reach of token 0"),
            );
        } else {
            assert!(ra != rb, "position {p} sees token 0");
        }
    }
}

#[test]
fn bad_batches_are_errors() {
    let m = tiny("llama");
    let mut kv = m.new_kv_cache(KvDtype::default(), BS, 2).unwrap();
    let seqs = [SeqSlice {
        rows: 0..1,
        block_table: &[0],
    }];
    // Position 9 needs a third block the table does not have.
    let b = ForwardBatch {
        tokens: &[1],
        positions: &[9],
        seqs: &seqs,
        logits_rows: &[0],
    };
    assert!(m.forward(&b, &mut kv).is_err());
    let b = ForwardBatch {
        tokens: &[VOCAB as u32],
        positions: &[0],
        seqs: &seqs,
        logits_rows: &[0],
    };
    assert!(m.forward(&b, &mut kv).is_err());
    let b = ForwardBatch {
        tokens: &[1],
        positions: &[0],
        seqs: &seqs,
        logits_rows: &[1],
    };
    assert!(m.forward(&b, &mut kv).is_err());
}

/// What a file asks for and tokenfab does not do is an error naming it.
#[test]
fn unsupported_files_are_errors_that_name_the_reason() {
    let err = |w: tokenfab_loader::GgufWriter| match Model::from_gguf(
        &Gguf::from_bytes(w.to_bytes()).unwrap(),
    ) {
        Ok(_) => panic!("loaded"),
        Err(e) => e,
    };
    let mut w = tiny_model("llama", VOCAB, GgmlType::F32, 4, 2);
    w.tensor_f32("blk.0.attn_output.bias", &[64], &[0.0; 64]);
    let e = err(w);
    assert!(
        matches!(&e, Error::Unsupported(m) if m.contains("blk.0.attn_output.bias")),
        "{e}"
    );
    let mut w = tiny_model("gemma3", VOCAB, GgmlType::F32, 4, 2);
    w.meta(
        "gemma3.final_logit_softcapping",
        tokenfab_loader::Value::F32(30.0),
    );
    assert!(err(w).to_string().contains("final_logit_softcapping"));
    let mut w = tiny_model("qwen3", VOCAB, GgmlType::F32, 4, 2);
    w.meta(
        "qwen3.rope.scaling.type",
        tokenfab_loader::Value::String("yarn".into()),
    );
    assert!(err(w).to_string().contains("rope scaling `yarn`"));
    let e = err(tiny_model("mamba", VOCAB, GgmlType::F32, 4, 2)).to_string();
    assert!(e.contains("`mamba`") && e.contains("gemma3"), "{e}");
}

#[test]
fn quantized_weights_track_their_f32_dequantization() {
    for arch in ARCHS {
        for ty in [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q4_0] {
            let g = Gguf::from_bytes(tiny_model(arch, VOCAB, ty, 4, 2).to_bytes()).unwrap();
            let q = Model::from_gguf(&g).unwrap();
            let f = Model::from_gguf_with(&g, true).unwrap();
            assert!(
                q.weight_bytes() * 3 < f.weight_bytes(),
                "{arch} {ty}: weights stay quantized"
            );
            let tokens: Vec<u32> = (0..12).map(|i| (i * 7 % VOCAB) as u32).collect();
            let table: Vec<u32> = (0..4).collect();
            let kv = |m: &Model| m.new_kv_cache(KvDtype::default(), BS, 4).unwrap();
            let lq = run_alone(&q, &tokens, 64, &table, &mut kv(&q));
            let lf = run_alone(&f, &tokens, 64, &table, &mut kv(&f));
            // 8-bit activations: logits agree to a small fraction of their spread.
            let spread = lf.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = lq
                .iter()
                .zip(&lf)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst < 0.05 * spread,
                "{arch} {ty}: worst {worst} vs spread {spread}"
            );
            // Batch composition still changes nothing: one pass equals token-by-token.
            let step = run_alone(&q, &tokens, 1, &table, &mut kv(&q));
            assert_close(&step, &lq, &format!("{arch} {ty} chunked"));
        }
    }
}

/// Every KV dtype keeps the invariants exactly (chunking and block placement change nothing:
/// every row reads K/V back from the pool), and f16 / q8_0 stay close to f32.
#[test]
fn kv_dtypes_keep_the_invariants_and_track_f32() {
    for arch in ["llama", "gemma3"] {
        // Heads of 32 (2 query heads over 1 KV head) so that q8_0 blocks fit a head.
        let m = load(tiny_model(arch, VOCAB, GgmlType::F32, 2, 1));
        let tokens: Vec<u32> = (0..21).map(|i| (i * 5 % VOCAB) as u32).collect();
        let kv = |d: KvDtype| m.new_kv_cache(d, BS, 12).unwrap();
        let table: Vec<u32> = (0..6).collect();
        let scattered = [11u32, 3, 8, 0, 6, 9];
        let f32_logits = run_alone(&m, &tokens, 64, &table, &mut kv(KvDtype::F32));
        let spread = f32_logits.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (d, tol) in [
            (KvDtype::F32, 0.0),
            (KvDtype::F16, 0.01),
            (KvDtype::Q8_0, 0.05),
        ] {
            let whole = run_alone(&m, &tokens, 64, &table, &mut kv(d));
            for chunk in [1, 4, 7] {
                let c = run_alone(&m, &tokens, chunk, &scattered, &mut kv(d));
                assert_eq!(
                    c, whole,
                    "{arch} {d}: chunks of {chunk} in scattered blocks"
                );
            }
            let worst = whole
                .iter()
                .zip(&f32_logits)
                .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                worst <= tol * spread,
                "{arch} {d}: worst {worst} vs spread {spread}"
            );
        }
    }
    // A q8_0 pool cannot hold heads of 16.
    let small = tiny("llama");
    assert!(small.new_kv_cache(KvDtype::Q8_0, BS, 4).is_err());
}

/// Records the phase boundaries a pass reports.
#[derive(Default)]
struct Phases {
    passes: usize,
    seen: Vec<(Option<usize>, tokenfab_types::profile::ForwardPhase)>,
}

impl tokenfab_types::profile::ForwardHook for Phases {
    fn pass_begin(&mut self) {
        self.passes += 1;
    }
    fn phase_done(&mut self, layer: Option<usize>, phase: tokenfab_types::profile::ForwardPhase) {
        self.seen.push((layer, phase));
    }
}

#[test]
fn a_hooked_pass_reports_every_phase_of_every_layer_and_the_same_logits() {
    use tokenfab_types::profile::ForwardPhase as P;
    let m = tiny("llama");
    let tokens: Vec<u32> = (0..6).map(|i| (i * 7 % VOCAB) as u32).collect();
    let positions: Vec<u32> = (0..6).collect();
    let table = [0u32, 1];
    let seqs = [SeqSlice {
        rows: 0..6,
        block_table: &table,
    }];
    let b = ForwardBatch {
        tokens: &tokens,
        positions: &positions,
        seqs: &seqs,
        logits_rows: &[5],
    };
    let mut kv = m.new_kv_cache(KvDtype::default(), BS, 2).unwrap();
    let plain = m.forward(&b, &mut kv).unwrap();
    let mut kv = m.new_kv_cache(KvDtype::default(), BS, 2).unwrap();
    let mut s = crate::Scratch::default();
    let mut rec = Phases::default();
    let hooked = m
        .forward_profiled(&b, &mut kv, &mut s, Some(&mut rec))
        .unwrap()
        .to_vec();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&plain), bits(&hooked));
    let layer = [
        P::AttnNorm,
        P::Qkv,
        P::RopeKv,
        P::Attention,
        P::AttnOutput,
        P::FfnNorm,
        P::FfnGateUp,
        P::FfnAct,
        P::FfnDown,
    ];
    let mut want = vec![(None, P::Embed)];
    for l in 0..m.cfg.n_layers {
        want.extend(layer.iter().map(|&p| (Some(l), p)));
    }
    want.push((None, P::Logits));
    assert_eq!(rec.passes, 1);
    assert_eq!(rec.seen, want);
    // Every phase the engine's profile knows is reported.
    assert!(P::ALL.iter().all(|p| rec.seen.iter().any(|s| s.1 == *p)));
}

/// A checkpoint's FP8 KV cache scales (`blk.{i}.attn_k_scale` / `attn_v_scale`) reach the model
/// per layer and set an FP8 pool's scales; without them the scale is 1, and a bf16 pool takes
/// none. Half a set, or a scale that is not a positive number, is an error naming the tensor.
#[test]
fn kv_cache_scales_come_from_the_checkpoint() {
    use crate::cuda::{fp8_kv_scales, FP8_KV_SCALE};
    let scaled = |skip: Option<&str>, v0: f32| {
        let mut w = tiny_model("llama", VOCAB, GgmlType::F32, 4, 2);
        for (l, (k, v)) in [(v0, 0.25f32), (0.125, 0.5)].into_iter().enumerate() {
            for (kv, x) in [("k", k), ("v", v)] {
                let n = format!("blk.{l}.attn_{kv}_scale");
                if skip != Some(n.as_str()) {
                    w.tensor_f32(&n, &[1], &[x]);
                }
            }
        }
        Model::from_gguf(&Gguf::from_bytes(w.to_bytes()).unwrap())
    };
    let m = scaled(None, 0.0625).unwrap();
    assert_eq!(m.kv_scales, Some(vec![(0.0625, 0.25), (0.125, 0.5)]));
    assert_eq!(fp8_kv_scales(&m, KvDtype::Fp8, 1), Some((0.125, 0.5)));
    assert_eq!(fp8_kv_scales(&m, KvDtype::F16, 1), None);
    let plain = tiny("llama");
    assert_eq!(plain.kv_scales, None);
    let one = Some((FP8_KV_SCALE, FP8_KV_SCALE));
    assert_eq!(fp8_kv_scales(&plain, KvDtype::Fp8, 0), one);
    let e = scaled(Some("blk.1.attn_v_scale"), 0.0625).err().unwrap();
    assert!(
        e.to_string().contains("`blk.1.attn_v_scale` is missing"),
        "{e}"
    );
    let e = scaled(None, -1.0).err().unwrap();
    assert!(e.to_string().contains("`blk.0.attn_k_scale` is -1"), "{e}");
}
