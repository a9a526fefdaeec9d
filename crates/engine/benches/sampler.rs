//! What sampling one token costs on the host, per logits row of the default model's vocabulary
//! (49,152): greedy, temperature 1 (the whole vocabulary's weights, its 1,024 most likely sorted),
//! and temperature 1 with top-p 0.9, each from a row shaped like a language model's (a few
//! likely tokens over a long tail). At 64 streams a step samples 64 such rows, on the compute
//! pool. Run on a quiet machine: `cargo bench -p tokenfab-engine --bench sampler`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tokenfab_engine::rng::Rng;
use tokenfab_engine::Sampler;
use tokenfab_types::SamplingParams;

const VOCAB: usize = 49_152;

/// A model-like row: a normal-ish tail around -5 and a few tokens well above it.
fn logits() -> Vec<f32> {
    let mut rng = Rng::new(1);
    (0..VOCAB)
        .map(|i| {
            let tail = (0..4).map(|_| rng.next_f64() as f32).sum::<f32>() * 2.0 - 9.0;
            if i % 4099 == 0 {
                tail + 12.0
            } else {
                tail
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let row = logits();
    for (name, temperature, top_p) in [
        ("greedy", 0.0, 1.0),
        ("temperature_1", 1.0, 1.0),
        ("temperature_1_top_p_0.9", 1.0, 0.9),
    ] {
        let mut s = Sampler::new(SamplingParams {
            temperature,
            top_p,
            seed: Some(5),
            ..Default::default()
        });
        c.bench_function(&format!("sample_row/{name}"), |b| {
            b.iter(|| black_box(s.sample(black_box(&row), &[], &[]).token))
        });
    }
    // A grammar-constrained row: 64 tokens allowed, the rest -inf (as a mask leaves them).
    let masked: Vec<f32> = row
        .iter()
        .enumerate()
        .map(|(i, &l)| if i % 768 == 0 { l } else { f32::NEG_INFINITY })
        .collect();
    let mut s = Sampler::new(SamplingParams {
        temperature: 1.0,
        seed: Some(5),
        ..Default::default()
    });
    c.bench_function("sample_row/temperature_1_masked_to_64_tokens", |b| {
        b.iter(|| black_box(s.sample(black_box(&masked), &[], &[]).token))
    });
    // The step sampling replaced: weights of the whole row, then all of them sorted.
    let mut cand = Vec::with_capacity(VOCAB);
    c.bench_function("sample_row/baseline_sort_whole_vocabulary", |b| {
        b.iter(|| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            cand.clear();
            cand.extend(
                row.iter()
                    .enumerate()
                    .map(|(i, &l)| (i as u32, (l - max).exp())),
            );
            cand.sort_unstable_by(|a: &(u32, f32), b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            black_box(cand[0].0)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
