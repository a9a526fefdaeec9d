//! Forward-pass invariants on a tiny random model: chunking, batching and block placement must not
//! change any sequence's logits.

use tokenfab_loader::Gguf;

use tokenfab_loader::GgmlType;

use crate::testing::{tiny_llama, tiny_llama_heads, tiny_llama_typed};
use crate::{ForwardBatch, KvCache, KvDtype, Llama, SeqSlice};

const VOCAB: usize = 50;
const BS: usize = 4;

fn tiny_model(arch: &str) -> Llama {
    Llama::from_gguf(&Gguf::from_bytes(tiny_llama(arch, VOCAB).to_bytes()).unwrap()).unwrap()
}

/// Runs one sequence alone, in chunks of `chunk`, through blocks `table`; returns every row's logits.
fn run_alone(m: &Llama, tokens: &[u32], chunk: usize, table: &[u32], kv: &mut KvCache) -> Vec<f32> {
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
fn chunked_prefill_and_decode_equal_one_pass() {
    for arch in ["llama", "qwen2"] {
        let m = tiny_model(arch);
        let tokens: Vec<u32> = (0..23).map(|i| (i * 7 % VOCAB) as u32).collect();
        let table: Vec<u32> = (0..8).collect();
        let mut kv = m.new_kv_cache(KvDtype::default(), BS, 8).unwrap();
        let whole = run_alone(&m, &tokens, 64, &table, &mut kv);
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
    let m = tiny_model("llama");
    let tokens: Vec<u32> = (0..15).map(|i| (i * 3 % VOCAB) as u32).collect();
    let mut kv = m.new_kv_cache(KvDtype::default(), BS, 10).unwrap();
    let a = run_alone(&m, &tokens, 4, &[0, 1, 2, 3], &mut kv);
    let mut kv = m.new_kv_cache(KvDtype::default(), BS, 10).unwrap();
    let b = run_alone(&m, &tokens, 4, &[9, 2, 7, 5], &mut kv);
    assert_close(&a, &b, "permuted blocks");
}

#[test]
fn batching_sequences_together_changes_nothing() {
    let m = tiny_model("llama");
    let s1: Vec<u32> = (0..9).map(|i| (i * 5 % VOCAB) as u32).collect();
    let s2: Vec<u32> = (0..6).map(|i| (i * 11 % VOCAB) as u32).collect();
    let mut kv = m.new_kv_cache(KvDtype::default(), BS, 16).unwrap();
    let alone1 = run_alone(&m, &s1, 64, &[0, 1, 2], &mut kv);
    let alone2 = run_alone(&m, &s2, 64, &[3, 4], &mut kv);

    // Both sequences' prompts minus the last token in one batch, then both last tokens in another.
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
    assert_close(&last[..VOCAB], &alone1[8 * VOCAB..], "seq 1 in a batch");
    assert_close(&last[VOCAB..], &alone2[5 * VOCAB..], "seq 2 in a batch");
}

#[test]
fn bad_batches_are_errors() {
    let m = tiny_model("llama");
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

#[test]
fn quantized_weights_track_their_f32_dequantization() {
    for ty in [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q4_0] {
        let g = Gguf::from_bytes(tiny_llama_typed("llama", VOCAB, ty).to_bytes()).unwrap();
        let q = Llama::from_gguf(&g).unwrap();
        let f = Llama::from_gguf_with(&g, true).unwrap();
        assert!(
            q.weight_bytes() * 3 < f.weight_bytes(),
            "{ty}: weights stay quantized"
        );
        let tokens: Vec<u32> = (0..12).map(|i| (i * 7 % VOCAB) as u32).collect();
        let table: Vec<u32> = (0..4).collect();
        let lq = run_alone(
            &q,
            &tokens,
            64,
            &table,
            &mut q.new_kv_cache(KvDtype::default(), BS, 4).unwrap(),
        );
        let lf = run_alone(
            &f,
            &tokens,
            64,
            &table,
            &mut f.new_kv_cache(KvDtype::default(), BS, 4).unwrap(),
        );
        // 8-bit activations: logits agree to a small fraction of their spread.
        let spread = lf.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = lq
            .iter()
            .zip(&lf)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst < 0.05 * spread,
            "{ty}: worst {worst} vs spread {spread}"
        );
        // Batch composition still changes nothing: one pass equals token-by-token.
        let step = run_alone(
            &q,
            &tokens,
            1,
            &table,
            &mut q.new_kv_cache(KvDtype::default(), BS, 4).unwrap(),
        );
        assert_close(&step, &lq, &format!("{ty} chunked"));
    }
}

/// Every KV dtype keeps the invariants exactly (chunking and block placement change nothing:
/// every row reads K/V back from the pool), and f16 / q8_0 stay close to f32.
#[test]
fn kv_dtypes_keep_the_invariants_and_track_f32() {
    // Heads of 32 (2 query heads over 1 KV head) so that q8_0 blocks fit a head.
    let g =
        Gguf::from_bytes(tiny_llama_heads("llama", VOCAB, GgmlType::F32, 2, 1).to_bytes()).unwrap();
    let m = Llama::from_gguf(&g).unwrap();
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
            assert_eq!(c, whole, "{d}: chunks of {chunk} in scattered blocks");
        }
        let worst = whole
            .iter()
            .zip(&f32_logits)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            worst <= tol * spread,
            "{d}: worst {worst} vs spread {spread}"
        );
    }
    // A q8_0 pool cannot hold heads of 16.
    let small = tiny_model("llama");
    assert!(small.new_kv_cache(KvDtype::Q8_0, BS, 4).is_err());
}
