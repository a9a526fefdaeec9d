//! A whole plan: size the KV pool, replay every load (and the capacity search) on one engine in
//! virtual time, and report in `tokenfab bench`'s shape with what the prediction rests on.

use std::time::Instant;

use serde::Serialize;
use tokenfab_bench::metrics::RunMetrics;
use tokenfab_bench::runner::{Bound, Load};
use tokenfab_bench::slo::{CapacitySearch, Slo};
use tokenfab_bench::suite::{
    probe_bound, with_load, BenchReport, CapacityReport, TargetReport, WorkloadEcho,
};
use tokenfab_bench::workload::Prompt;
use tokenfab_scheduler::SchedulerConfig;

use crate::cost::{CostModel, SeqWork, StepCost};
use crate::device::Device;
use crate::shape::{Dtype, ModelShape};
use crate::sim::{EngineStats, SimEngine};
use crate::PlanError;

/// How big the KV pool is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvMemory {
    /// Bytes of the pool (the CPU: `tokenfab serve --kv-cache-memory`).
    Bytes(f64),
    /// Share of each device's memory used; the pool takes what weights and activations leave
    /// (`--gpu-memory-utilization`).
    Utilization(f64),
}

/// The hardware, the model and the engine's limits.
#[derive(Clone, Debug)]
pub struct Setup {
    pub shape: ModelShape,
    pub device: Device,
    /// Devices one model is split over (tensor parallelism).
    pub tp: usize,
    pub kv_dtype: Dtype,
    pub kv_memory: KvMemory,
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub max_queued_requests: usize,
    pub block_size: usize,
    pub enable_prefix_caching: bool,
    /// One way of the client-server round trip, seconds.
    pub latency_s: f64,
}

/// The loads, as `tokenfab bench` takes them.
#[derive(Clone, Debug)]
pub struct Workload {
    pub loads: Vec<Load>,
    pub bound: Bound,
    /// Lengths to send, in order and in a cycle (token ids drawn at random when none).
    pub prompts: Vec<Prompt>,
    /// The lengths are token counts (not word estimates).
    pub exact_lengths: bool,
    pub seed: u64,
    pub warmup: usize,
    pub slo: Option<Slo>,
    pub attainment: f64,
    pub capacity_max: Option<usize>,
}

/// The scheduler's limits as planned.
#[derive(Clone, Debug, Serialize)]
pub struct SchedulerEcho {
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub kv_cache_tokens: usize,
    pub enable_prefix_caching: bool,
    pub max_model_len: usize,
}

/// A step the cost model prices, for the reader to check by hand.
#[derive(Clone, Debug, Serialize)]
pub struct ReferenceStep {
    pub step: String,
    pub cost: StepCost,
}

/// What a prediction rests on.
#[derive(Clone, Debug, Serialize)]
pub struct PlanInfo {
    pub device: Device,
    pub tp: usize,
    pub model: ModelShape,
    pub kv_cache_dtype: Dtype,
    pub scheduler: SchedulerEcho,
    /// How the products' speed was found.
    pub products: String,
    pub network_latency_ms: f64,
    pub assumptions: Vec<String>,
    pub reference_steps: Vec<ReferenceStep>,
    pub engine: EngineStats,
    /// Real seconds the simulation took.
    pub wall_s: f64,
}

/// `tokenfab bench`'s report (so `tokenfab economics --from` reads it) plus the plan's basis.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    #[serde(flatten)]
    pub bench: BenchReport,
    pub plan: PlanInfo,
}

/// Blocks of the KV pool for `s`, and the assumptions made to size it.
pub fn kv_blocks(s: &Setup) -> Result<(usize, Vec<String>), PlanError> {
    let t = s.tp as f64;
    let kv_share = s.shape.n_kv_heads.div_ceil(s.tp) as f64 / s.shape.n_kv_heads as f64;
    let per_token = s.shape.kv_bytes_per_token(s.kv_dtype) * kv_share;
    let (bytes, notes) = match s.kv_memory {
        KvMemory::Bytes(b) => (b, vec![]),
        KvMemory::Utilization(u) => {
            let weights = s.shape.weight_bytes() / t;
            // bf16 activations of a full step (residual, QKV, attention output, gate-up) and
            // f32 logits of a full batch.
            let sh = &s.shape;
            let act = s.max_num_batched_tokens as f64
                * (3 * sh.dim + sh.n_heads * sh.head_dim + 2 * sh.ffn_dim) as f64
                * 2.0
                / t
                + (s.max_num_seqs * sh.vocab_size) as f64 * 4.0 / t;
            let free = s.device.memory_bytes * u - weights - act;
            if free <= 0.0 {
                return Err(PlanError::Invalid(format!(
                    "{} GB of weights and {:.1} GB of activations per device do not fit {:.0}% of {:.0} GB: raise --tp",
                    (weights / 1e9).round(),
                    act / 1e9,
                    u * 100.0,
                    s.device.memory_bytes / 1e9
                )));
            }
            let note = format!(
                "KV pool per device: {:.0}% of {:.1} GB minus {:.1} GB of weights and {:.1} GB of activations (estimated) = {:.1} GB",
                u * 100.0,
                s.device.memory_bytes / 1e9,
                weights / 1e9,
                act / 1e9,
                free / 1e9
            );
            (free, vec![note])
        }
    };
    let blocks = (bytes / (per_token * s.block_size as f64)).floor() as usize;
    if blocks < 2 {
        return Err(PlanError::Invalid(format!(
            "a KV pool of {bytes:.0} bytes holds fewer than 2 blocks of {} tokens ({per_token:.0} bytes per token)",
            s.block_size
        )));
    }
    Ok((blocks, notes))
}

/// Plans `w` on `s`: every load, then the capacity search, on one engine as one server would
/// see them.
pub fn plan(s: &Setup, w: &Workload) -> Result<PlanReport, PlanError> {
    let wall = Instant::now();
    let cost = CostModel::new(&s.shape, &s.device, s.tp, s.kv_dtype)?;
    let products = cost.products.clone();
    let (num_blocks, mut notes) = kv_blocks(s)?;
    let cfg = SchedulerConfig {
        max_num_batched_tokens: s.max_num_batched_tokens,
        max_num_seqs: s.max_num_seqs,
        block_size: s.block_size,
        num_blocks,
        enable_prefix_caching: s.enable_prefix_caching,
        max_model_len: s.shape.context_len,
    };
    let fits = |p: &Prompt| {
        let longest = p.input_len + p.output_len;
        longest <= cfg.max_model_len && (longest - 1).div_ceil(cfg.block_size) <= num_blocks
    };
    if !w.prompts.iter().any(fits) {
        return Err(PlanError::Invalid(format!(
            "no prompt fits: prompt + output must be <= the context ({}) and fit the KV pool ({} tokens)",
            cfg.max_model_len,
            num_blocks * cfg.block_size
        )));
    }
    let mut engine = SimEngine::new(
        cfg.clone(),
        cost,
        s.latency_s,
        s.max_queued_requests,
        s.shape.vocab_size,
    )?;
    let reference_steps = reference_steps(&engine, s, w);
    let mut offset = 0;
    if w.warmup > 0 {
        let b = Bound {
            num_prompts: Some(w.warmup),
            duration: None,
        };
        engine.run_load(&w.prompts, Load::Concurrency(w.warmup.min(8)), b, 0, w.seed)?;
        offset = w.warmup;
    }
    let mut runs = Vec::new();
    for &load in &w.loads {
        let (recs, secs) = engine.run_load(&w.prompts, load, w.bound, offset, w.seed)?;
        offset += recs.len();
        runs.push(with_load(
            RunMetrics::from_records(&recs, secs, w.slo),
            load,
        ));
    }
    let capacity = match (w.capacity_max, w.slo) {
        (Some(max), Some(slo)) => {
            let mut search = CapacitySearch::new(max);
            let mut probes = Vec::new();
            while let Some(users) = search.next_probe() {
                let load = Load::Concurrency(users);
                let b = probe_bound(w.bound, users);
                let (recs, secs) = engine.run_load(&w.prompts, load, b, offset, w.seed)?;
                offset += recs.len();
                let m = with_load(RunMetrics::from_records(&recs, secs, Some(slo)), load);
                search.record(users, m.goodput.is_some_and(|g| g.share >= w.attainment));
                probes.push(m);
            }
            Some(CapacityReport::from_search(
                &search,
                slo,
                w.attainment,
                probes,
            ))
        }
        _ => None,
    };
    let n = w.prompts.len() as f64;
    let bench = BenchReport {
        workload: WorkloadEcho {
            endpoint: "completions".into(),
            prompts: w.prompts.len(),
            mean_input_len: w.prompts.iter().map(|p| p.input_len as f64).sum::<f64>() / n,
            mean_output_len: w.prompts.iter().map(|p| p.output_len as f64).sum::<f64>() / n,
            exact_lengths: w.exact_lengths,
            ignore_eos: true,
            seed: w.seed,
            warmup: w.warmup,
            rounds: 1,
            num_prompts: w.bound.num_prompts,
            duration_s: w.bound.duration.map(|d| d.as_secs_f64()),
        },
        targets: vec![TargetReport {
            label: "A".into(),
            url: format!("plan:{} x{}", s.device.name, s.tp),
            model: s.shape.name.clone(),
            runs,
            capacity,
        }],
        ratios: Vec::new(),
    };
    let mut assumptions = s.device.assumptions.clone();
    assumptions.append(&mut notes);
    assumptions.push(format!(
        "every request generates exactly its max_tokens (as bench --ignore-eos); prompts are random tokens (no prefix-cache hits); {:.2} ms each way between client and server",
        s.latency_s * 1e3
    ));
    Ok(PlanReport {
        bench,
        plan: PlanInfo {
            device: s.device.clone(),
            tp: s.tp,
            model: s.shape.clone(),
            kv_cache_dtype: s.kv_dtype,
            scheduler: SchedulerEcho {
                max_num_batched_tokens: cfg.max_num_batched_tokens,
                max_num_seqs: cfg.max_num_seqs,
                block_size: cfg.block_size,
                num_blocks: cfg.num_blocks,
                kv_cache_tokens: cfg.num_blocks * cfg.block_size,
                enable_prefix_caching: cfg.enable_prefix_caching,
                max_model_len: cfg.max_model_len,
            },
            products,
            network_latency_ms: s.latency_s * 1e3,
            assumptions,
            reference_steps,
            engine: engine.stats,
            wall_s: wall.elapsed().as_secs_f64(),
        },
    })
}

/// Three steps priced alone: one sequence decoding, a full batch decoding, a full prefill.
fn reference_steps(e: &SimEngine, s: &Setup, w: &Workload) -> Vec<ReferenceStep> {
    let input = w.prompts.first().map_or(128, |p| p.input_len);
    let seqs = s.max_num_seqs.min(s.max_num_batched_tokens);
    let budget = s.max_num_batched_tokens.min(s.shape.context_len);
    let dec = SeqWork {
        start: input,
        tokens: 1,
        sample: true,
    };
    vec![
        ReferenceStep {
            step: format!("decode 1 sequence at {input} tokens"),
            cost: e.cost().step(&[dec]),
        },
        ReferenceStep {
            step: format!("decode {seqs} sequences at {input} tokens"),
            cost: e.cost().step(&vec![dec; seqs]),
        },
        ReferenceStep {
            step: format!("prefill {budget} tokens of one prompt"),
            cost: e.cost().step(&[SeqWork {
                start: 0,
                tokens: budget,
                sample: true,
            }]),
        },
    ]
}
