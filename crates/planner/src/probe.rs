//! The local CPU described by micro-benchmarks run here and now: memory bandwidth (a streaming
//! read much larger than the caches), the rates tokenfab-backend's kernels reach on the model's
//! own matrices (int8 block formats, or f32) and in paged attention, the sampler's cost per
//! vocabulary entry, and the per-step cost left over on the real engine (one request decoding
//! on an `EngineHandle`, minus what the cost model predicts for those steps).
//!
//! Times are the best of several runs: a shared machine only ever makes a run slower.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tokenfab_backend::cpu::attention::{
    paged_attention, scratch_len, AttnInput, AttnShape, KvStore, RowKv,
};
use tokenfab_backend::cpu::{in_pool, matmul, Matrix};
use tokenfab_engine::dummy::{build_gguf, DummyConfig};
use tokenfab_engine::{
    EngineConfig, EngineHandle, EngineRequest, KvDtype, LoadedModel, Sampler, StreamEvent,
};
use tokenfab_loader::{GgmlType, Gguf};
use tokenfab_models::{Tensors, Weight};
use tokenfab_types::SamplingParams;

use crate::cost::{CostModel, SeqWork};
use crate::device::{Device, Efficiency, MeasuredRates, Overhead};
use crate::shape::{Compute, Dtype, ModelShape};
use crate::PlanError;

/// Rows (tokens) at which the products are timed.
pub const ROWS: [usize; 5] = [1, 4, 16, 64, 256];
/// Output rows of the output matrix timed (a slice of a large vocabulary: the rate per
/// multiply-add is the same, the time is not).
const LM_ROWS_MAX: usize = 32768;
/// Requests of the real-engine run: prompt and output tokens.
const ENGINE_PROMPT: usize = 8;
const ENGINE_OUTPUT: usize = 40;
/// Runs timed on the real engine at each batch; the mean step of the fastest one counts.
const ENGINE_RUNS: usize = 3;
/// Sequences decoding together in the second real-engine measurement.
const ENGINE_BATCH: usize = 32;

/// Where the model's matrices come from.
pub enum Source<'a> {
    /// A GGUF file: layer 0's matrices and the output matrix as stored.
    Gguf(&'a std::path::Path),
    /// Random weights of the shape in its format (presets and JSON configs).
    Shape,
}

/// Best seconds of `f` over at least `reps` runs and about `budget`.
fn best(budget: Duration, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut b = f64::MAX;
    let mut n = 0;
    while n < reps || start.elapsed() < budget {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
        n += 1;
    }
    b
}

/// Bytes/s of a parallel streaming read of 256 MiB (8x a large L3).
pub fn memory_bandwidth() -> f64 {
    let n = 32 << 20;
    let buf: Vec<u64> = (0..n as u64).collect();
    let chunk = n / (4 * rayon::current_num_threads()).max(1);
    let t = best(Duration::from_millis(500), 4, || {
        let s = buf
            .par_chunks(chunk.max(1))
            .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u64::wrapping_add);
        black_box(s);
    });
    (n * 8) as f64 / t
}

/// The GGUF type a [`Dtype`] is stored as on the CPU.
fn ggml(d: Dtype) -> Result<GgmlType, PlanError> {
    Ok(match d {
        Dtype::F32 => GgmlType::F32,
        Dtype::F16 => GgmlType::F16,
        Dtype::Bf16 => GgmlType::BF16,
        Dtype::Ggml(t) => t,
        Dtype::Fp8 => {
            return Err(PlanError::Invalid(
                "fp8 weights: the CPU has no kernel for them".into(),
            ))
        }
    })
}

/// Bytes of the last-level cache (64 MiB when the system does not say).
fn llc_bytes() -> usize {
    (0..8)
        .filter_map(|i| {
            let p = format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size");
            let s = std::fs::read_to_string(p).ok()?;
            let s = s.trim();
            let (n, mult) = match s.strip_suffix('K') {
                Some(n) => (n, 1 << 10),
                None => (s.strip_suffix('M').unwrap_or(s), 1 << 20),
            };
            n.parse::<usize>().ok().map(|n| n * mult)
        })
        .max()
        .unwrap_or(64 << 20)
}

/// The products of `k` layers (QKV stacked, O, gate-up stacked, down, as `Llama` runs them)
/// and the output matrix (at most [`LM_ROWS_MAX`] rows of it).
fn matrices(
    shape: &ModelShape,
    src: &Source,
    k: usize,
) -> Result<(Vec<Weight>, Weight), PlanError> {
    let bytes;
    let g = match src {
        Source::Gguf(p) => Gguf::open(p),
        Source::Shape => {
            let cfg = DummyConfig {
                n_layers: k,
                dim: shape.dim,
                ffn_dim: shape.ffn_dim,
                n_heads: shape.n_heads,
                n_kv_heads: shape.n_kv_heads,
                vocab_size: shape.vocab_size.min(LM_ROWS_MAX),
                context_len: shape.context_len,
                rope_base: 10000.0,
                tied_embeddings: shape.tied_embeddings,
            };
            bytes = build_gguf("probe", &cfg, 1, ggml(shape.weight_dtype)?)
                .map_err(|e| PlanError::Invalid(e.to_string()))?;
            Gguf::from_bytes(bytes)
        }
    }
    .map_err(|e| PlanError::Invalid(e.to_string()))?;
    let (d, q, kv, f) = (
        shape.dim,
        shape.n_heads * shape.head_dim,
        shape.n_kv_heads * shape.head_dim,
        shape.ffn_dim,
    );
    let tensors = Tensors::new(false);
    let w = |name: &str, rows, cols| {
        tensors
            .matrix(&g, name, rows, cols)
            .map_err(|e| PlanError::Invalid(e.to_string()))
    };
    let mut layers = Vec::new();
    for l in 0..k {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        layers.push(Weight::stack(vec![
            w(&n("attn_q"), q, d)?,
            w(&n("attn_k"), kv, d)?,
            w(&n("attn_v"), kv, d)?,
        ]));
        layers.push(w(&n("attn_output"), d, q)?);
        layers.push(Weight::stack(vec![
            w(&n("ffn_gate"), f, d)?,
            w(&n("ffn_up"), f, d)?,
        ]));
        layers.push(w(&n("ffn_down"), d, f)?);
    }
    let name = match g.tensor("output.weight") {
        Some(_) => "output.weight",
        None => "token_embd.weight",
    };
    let t = g
        .tensor(name)
        .ok_or_else(|| PlanError::Invalid(format!("no tensor `{name}`")))?;
    let vocab = t.dims.get(1).copied().unwrap_or(1) as usize;
    let head = w(name, vocab, d)?;
    // A slice of rows of a very large output matrix (whole rows of blocks).
    let head = match head {
        Weight::Quant(m) if vocab > LM_ROWS_MAX => {
            let rb = m.row_bytes();
            let rows = m.bytes()[..rb * LM_ROWS_MAX].to_vec();
            Weight::Quant(
                tokenfab_backend::QMatrix::new(m.ty, LM_ROWS_MAX, d, rows)
                    .map_err(|e| PlanError::Invalid(e.to_string()))?,
            )
        }
        Weight::F32(m) if vocab > LM_ROWS_MAX => Weight::F32(Matrix::new(
            LM_ROWS_MAX,
            d,
            m.data[..LM_ROWS_MAX * d].to_vec(),
        )),
        w => w,
    };
    Ok((layers, head))
}

/// Operations/s of `ws` multiplied one after the other by `n` rows. With `flush`, a buffer
/// larger than the caches is read before each timed run, so the weights come from memory.
fn product_rate(ws: &[Weight], n: usize, flush: Option<&[u64]>) -> f64 {
    let cols = ws.iter().map(Weight::cols).max().unwrap_or(1);
    let rows = ws.iter().map(Weight::rows).max().unwrap_or(1);
    let x: Vec<f32> = (0..n * cols)
        .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
        .collect();
    let mut y = vec![0f32; n * rows];
    let macs: usize = ws.iter().map(|w| w.rows() * w.cols() * n).sum();
    let mut best = f64::MAX;
    let start = Instant::now();
    // The first run builds the kernels' repacked copies; it is not counted.
    for run in 0.. {
        if run > 3 && start.elapsed() > Duration::from_millis(150) {
            break;
        }
        if let Some(b) = flush {
            black_box(
                b.par_iter()
                    .fold(|| 0u64, |a, &x| a ^ x)
                    .reduce(|| 0, |a, b| a ^ b),
            );
        }
        // Started from a pool thread, as the forward pass starts its products (`in_pool`).
        let (x, y) = (&x, &mut y);
        let t = Instant::now();
        in_pool(|| {
            for w in ws {
                w.matmul(&x[..n * w.cols()], n, &mut y[..n * w.rows()]);
            }
        });
        if run > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    2.0 * macs as f64 / best
}

/// f32 operations/s of the f32 product on 64 rows of a 1024 x 1024 matrix.
fn f32_rate() -> f64 {
    let (n, k) = (64, 1024);
    let w = Matrix::new(k, k, (0..k * k).map(|i| (i % 17) as f32 * 0.01).collect());
    let x = vec![0.5f32; n * k];
    let mut y = vec![0f32; n * k];
    let t = best(Duration::from_millis(200), 3, || {
        in_pool(|| matmul(&x, n, &w, &mut y))
    });
    2.0 * (n * k * k) as f64 / t
}

/// Operations/s of paged attention (4 · head_dim · heads per attended position) for 64 rows
/// decoding at 512 positions each, K/V stored as `kv`.
fn attention_rate(shape: &ModelShape, kv: tokenfab_backend::cpu::attention::KvDtype) -> f64 {
    let (rows, ctx, bs) = (64usize, 512usize, 16usize);
    let width = shape.n_kv_heads * shape.head_dim;
    let slots = rows * ctx;
    let mut k = KvStore::new(kv, slots, width);
    let mut v = KvStore::new(kv, slots, width);
    let row: Vec<f32> = (0..width).map(|i| ((i % 11) as f32 - 5.0) * 0.1).collect();
    for s in 0..slots {
        k.write(s, &row);
        v.write(s, &row);
    }
    let tables: Vec<Vec<u32>> = (0..rows)
        .map(|r| ((r * ctx / bs) as u32..((r + 1) * ctx / bs) as u32).collect())
        .collect();
    let q_dim = shape.n_heads * shape.head_dim;
    let q: Vec<f32> = (0..rows * q_dim)
        .map(|i| ((i % 7) as f32 - 3.0) * 0.1)
        .collect();
    let sh = AttnShape {
        n_heads: shape.n_heads,
        n_kv_heads: shape.n_kv_heads,
        head_dim: shape.head_dim,
        block_size: bs,
        scale: 1.0 / (shape.head_dim as f32).sqrt(),
    };
    let inp = AttnInput {
        shape: sh,
        q: &q,
        q_stride: q_dim,
        rows: |t: usize| RowKv {
            block_table: &tables[t],
            start: 0,
            ctx,
        },
        k: &k,
        v: &v,
    };
    let mut out = vec![0f32; rows * q_dim];
    let mut scratch = vec![0f32; scratch_len(&sh)];
    let t = best(Duration::from_millis(200), 3, || {
        in_pool(|| paged_attention(&inp, &mut out, &mut scratch))
    });
    4.0 * (shape.head_dim * shape.n_heads * ctx * rows) as f64 / t
}

/// Seconds per vocabulary entry of choosing a token (the server's default sampling: greedy).
fn sample_per_vocab(vocab: usize) -> f64 {
    let mut s = Sampler::new(SamplingParams::default());
    let logits: Vec<f32> = (0..vocab).map(|i| ((i * 31) % 97) as f32 * 0.01).collect();
    let t = best(Duration::from_millis(100), 5, || {
        black_box(s.sample(&logits, &[1], &[]));
    });
    t / vocab as f64
}

/// What a decode step of one sequence, and of [`ENGINE_BATCH`] sequences, costs on the real
/// engine: the mean gap between tokens as the engine's own inter-token-latency metric records it
/// (on the engine thread, so the reader's scheduling does not count), the fastest of
/// [`ENGINE_RUNS`] runs after a warm-up; with the mean context of the decoding sequences.
fn engine_steps(m: LoadedModel, shape: &ModelShape) -> Result<[(f64, usize); 2], PlanError> {
    let vocab = shape.vocab_size;
    // Room for every sequence of the batch at its longest, twice.
    let per_token = shape.kv_bytes_per_token(Dtype::F16);
    let cfg = EngineConfig {
        kv_cache_bytes: (2.0 * (ENGINE_BATCH * (ENGINE_PROMPT + ENGINE_OUTPUT)) as f64 * per_token)
            .max((64 << 20) as f64) as usize,
        kv_cache_dtype: KvDtype::F16,
        device: tokenfab_engine::Device::Cpu,
        ..EngineConfig::default()
    };
    let h = EngineHandle::start(m, cfg).map_err(|e| PlanError::Invalid(e.to_string()))?;
    let req = |max_tokens| EngineRequest {
        prompt_tokens: (0..ENGINE_PROMPT)
            .map(|i| ((i * 37 + 5) % vocab) as u32)
            .collect(),
        max_tokens,
        ignore_eos: true,
        ..EngineRequest::default()
    };
    // `n` requests at once, to their end: after the first step (all prompts), each step decodes
    // one token of each.
    let run = |n: usize, max_tokens: usize| -> Result<(), PlanError> {
        let mut streams = Vec::new();
        for _ in 0..n {
            streams.push(
                h.submit(req(max_tokens))
                    .map_err(|e| PlanError::Invalid(e.to_string()))?,
            );
        }
        for mut s in streams {
            while let Some(ev) = s.blocking_recv() {
                if let StreamEvent::Error(e) = ev {
                    return Err(PlanError::Invalid(e));
                }
            }
        }
        Ok(())
    };
    run(ENGINE_BATCH, 8)?;
    let itl = &h.metrics().inter_token_latency_seconds;
    let mut out = [(f64::MAX, ENGINE_PROMPT + ENGINE_OUTPUT / 2); 2];
    for _ in 0..ENGINE_RUNS {
        for (i, n) in [1, ENGINE_BATCH].into_iter().enumerate() {
            let (sum0, n0) = (itl.sum(), itl.count());
            run(n, ENGINE_OUTPUT)?;
            let count = itl.count() - n0;
            if count > 0 {
                out[i].0 = out[i].0.min((itl.sum() - sum0) / count as f64);
            }
        }
    }
    h.shutdown(Duration::from_secs(5));
    if out.iter().any(|o| o.0 == f64::MAX) {
        return Err(PlanError::Invalid(
            "the engine produced no tokens during the probe".into(),
        ));
    }
    Ok(out)
}

/// The model the real-engine run uses, and what it stands for.
fn engine_model(shape: &ModelShape, src: &Source) -> Result<(LoadedModel, String), PlanError> {
    let err = |e: tokenfab_engine::Error| PlanError::Invalid(e.to_string());
    match src {
        Source::Gguf(p) => Ok((
            LoadedModel::load(p).map_err(err)?,
            "the model itself".into(),
        )),
        Source::Shape
            if shape.weight_bytes() <= 2e9 && DummyConfig::resolve(&shape.name).is_ok() =>
        {
            Ok((
                LoadedModel::dummy(&shape.name, 0, ggml(shape.weight_dtype)?).map_err(err)?,
                "the model's shape with dummy weights".into(),
            ))
        }
        Source::Shape => Ok((
            LoadedModel::dummy("smollm2-135m", 0, ggml(shape.weight_dtype)?).map_err(err)?,
            "smollm2-135m dummy weights (the model is too large to load for a probe)".into(),
        )),
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn total_memory() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let l = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            l.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib * 1024.0)
}

/// Measures this machine for `shape` (whose matrices come from `src`), its KV stored as `kv`.
/// Progress goes to `log`.
pub fn probe_cpu(
    shape: &ModelShape,
    src: &Source,
    kv: KvDtype,
    log: &mut dyn FnMut(String),
) -> Result<Device, PlanError> {
    let threads = rayon::current_num_threads();
    let bw = memory_bandwidth();
    log(format!("memory read bandwidth {:.1} GB/s", bw / 1e9));
    // As many layers as overflow the last-level cache twice: each is read from memory, as in
    // a forward pass.
    let llc = llc_bytes();
    let k = ((2 * llc) as f64 / shape.layer_matrix_bytes.max(1.0)).ceil() as usize;
    let k = k.clamp(1, shape.n_layers.max(1));
    let (layer, head) = matrices(shape, src, k)?;
    let flush: Vec<u64> = (0..2 * llc as u64 / 8).collect();
    let layers: Vec<f64> = ROWS
        .iter()
        .map(|&n| product_rate(&layer, n, None))
        .collect();
    let lm_head: Vec<f64> = ROWS
        .iter()
        .map(|&n| product_rate(std::slice::from_ref(&head), n, Some(&flush)))
        .collect();
    drop(flush);
    log(format!(
        "products of {k} layers, and the output matrix after a cache flush (GOP/s at {ROWS:?} rows): layers {:?}, output {:?}",
        layers.iter().map(|r| (r / 1e9).round()).collect::<Vec<_>>(),
        lm_head
            .iter()
            .map(|r| (r / 1e9).round())
            .collect::<Vec<_>>()
    ));
    let f32_peak = f32_rate();
    let attn = attention_rate(
        shape,
        kv.cpu().map_err(|e| PlanError::Invalid(e.to_string()))?,
    );
    let sample = sample_per_vocab(shape.vocab_size);
    log(format!(
        "f32 product {:.1} GFLOP/s, attention {:.1} GOP/s ({kv} KV), sampling {:.1} us per row",
        f32_peak / 1e9,
        attn / 1e9,
        sample * shape.vocab_size as f64 * 1e6
    ));
    let int8_peak = layers.iter().chain(&lm_head).copied().fold(0.0, f64::max);
    let mut dev = Device {
        name: format!("cpu: {}, {threads} threads", cpu_name()),
        source: "measured by `tokenfab plan --device cpu` on this machine".into(),
        memory_bytes: total_memory(),
        mem_bw: bw,
        peaks: BTreeMap::from([(Compute::F32, f32_peak), (Compute::Int8, int8_peak)]),
        attention_ops: attn,
        link_bw: None,
        efficiency: Efficiency::MEASURED,
        overhead: Overhead {
            sample_per_vocab_s: sample,
            ..Overhead::default()
        },
        widens_to_f32: true,
        measured: Some(MeasuredRates {
            model: shape.name.clone(),
            rows: ROWS.to_vec(),
            layers,
            lm_head,
        }),
        assumptions: vec![],
    };
    // The real engine: what a decode step of one sequence costs beyond the model's prediction.
    let (m, what) = engine_model(shape, src)?;
    let engine_shape = ModelShape::from_loaded(&m, shape);
    let [(one, ctx), (batch, _)] = engine_steps(m, &engine_shape)?;
    let kv_dtype = match kv {
        KvDtype::F32 => Dtype::F32,
        KvDtype::F16 => Dtype::F16,
        KvDtype::Q8_0 => Dtype::Ggml(GgmlType::Q8_0),
        KvDtype::Fp8 => Dtype::Fp8,
    };
    let model = CostModel::new(&engine_shape, &dev, 1, kv_dtype)?;
    let decode = |n: usize| {
        let w = SeqWork {
            start: ctx,
            tokens: 1,
            sample: true,
        };
        model.step(&vec![w; n]).seconds
    };
    // What the real steps take beyond the priced parts, split into a cost per step and one per
    // sampled row by the two batch sizes.
    let (left1, left_b) = (one - decode(1), batch - decode(ENGINE_BATCH));
    let row = ((left_b - left1) / (ENGINE_BATCH - 1) as f64).max(0.0);
    let step = (left1 - row).max(0.0);
    log(format!(
        "real engine ({what}): decode steps of 1 and {ENGINE_BATCH} sequences {:.2} and {:.2} ms, priced parts {:.2} and {:.2} ms: {:.3} ms per step and {:.3} ms per sampled row",
        one * 1e3,
        batch * 1e3,
        decode(1) * 1e3,
        decode(ENGINE_BATCH) * 1e3,
        step * 1e3,
        row * 1e3
    ));
    dev.overhead.step_s = step;
    dev.overhead.row_s = row;
    dev.assumptions = vec![
        format!("memory, product, attention and sampling rates measured here with {threads} threads (best of several runs)"),
        format!(
            "{:.3} ms per step and {:.3} ms per sampled row: decode steps of 1 and {ENGINE_BATCH} sequences on the real engine ({what}) took {:.2} and {:.2} ms, the priced parts {:.2} and {:.2} ms{}",
            step * 1e3,
            row * 1e3,
            one * 1e3,
            batch * 1e3,
            decode(1) * 1e3,
            decode(ENGINE_BATCH) * 1e3,
            if left1 < 0.0 || left_b < 0.0 { " (the priced parts alone exceed a real step: the model over-predicts there)" } else { "" }
        ),
        "products: the model's own matrices timed as a forward pass runs them (enough layers to overflow the caches twice; the output matrix after a cache flush)".into(),
    ];
    Ok(dev)
}

impl ModelShape {
    /// The shape of a loaded model, with the bytes of `like` when it is the same model.
    fn from_loaded(m: &LoadedModel, like: &ModelShape) -> ModelShape {
        let c = &m.model.cfg;
        let mut s = like.clone();
        if (c.n_layers, c.dim, c.ffn_dim, c.vocab_size)
            != (like.n_layers, like.dim, like.ffn_dim, like.vocab_size)
        {
            s.n_layers = c.n_layers;
            s.dim = c.dim;
            s.ffn_dim = c.ffn_dim;
            s.n_heads = c.n_heads;
            s.n_kv_heads = c.n_kv_heads;
            s.head_dim = c.head_dim;
            s.vocab_size = c.vocab_size;
            s.tied_embeddings = true;
            s.restore(like.weight_dtype);
            s.name = format!("{} (probe)", like.name);
        }
        s
    }
}
