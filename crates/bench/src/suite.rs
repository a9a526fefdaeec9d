//! A whole `tokenfab bench` invocation: the loads on one or two servers (interleaved), the
//! optional capacity search, and the report that the table, the JSON and the plot are made of.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{Endpoint, SendOptions, Target};
use crate::metrics::{RequestRecord, RunMetrics};
use crate::profile::{Snapshot, StepProfile};
use crate::runner::{run_load, Bound, Load, RunPlan};
use crate::slo::{CapacitySearch, Slo};
use crate::workload::{dataset_prompts, synthetic_prompts, PromptSource, Rng};
use crate::BenchError;

/// Prompts made when a run is bounded by duration only (they are reused in a cycle).
const DURATION_POOL: usize = 256;
/// Most prompts one run makes (each needs a /tokenize round trip).
const MAX_POOL: usize = 8192;

/// Everything `tokenfab bench` was asked to do.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub url: String,
    pub model: Option<String>,
    /// A second server to run the same workload on (`--compare`).
    pub compare_url: Option<String>,
    pub compare_model: Option<String>,
    pub endpoint: Endpoint,
    /// The loads to run, in order (`--concurrency 1,8` or `--request-rate 2,4`).
    pub loads: Vec<Load>,
    pub bound: Bound,
    pub source: PromptSource,
    pub ignore_eos: bool,
    pub seed: u64,
    /// Requests sent to each server before measuring, not counted.
    pub warmup: usize,
    pub slo: Option<Slo>,
    /// Share of requests that must meet the SLO for a load to pass (capacity search).
    pub attainment: f64,
    /// Run the capacity search up to this many users.
    pub capacity_max: Option<usize>,
    /// Times each load runs on each server (A B, B A, A B, ...: the first alternates); results are pooled.
    pub rounds: usize,
    pub timeout: Duration,
    pub progress: bool,
    /// Read each tokenfab server's phase metrics before and after every run (`--profile`).
    pub profile: bool,
}

/// The capacity search's answer for one server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityReport {
    /// Most concurrent users held within the SLO (`None`: not even one).
    pub users: Option<usize>,
    /// The search reached `--capacity-max` without a failure: the server may hold more.
    pub hit_max: bool,
    pub slo: Slo,
    pub attainment: f64,
    /// Output tokens/s in total at `users`.
    pub output_tokens_per_s: f64,
    /// What each user saw at `users`: 1000 / median TPOT.
    pub per_user_tokens_per_s: f64,
    /// Every probe, in the order run.
    pub probes: Vec<RunMetrics>,
}

impl CapacityReport {
    /// The answer of a finished `search` whose probes were `probes`.
    pub fn from_search(
        search: &CapacitySearch,
        slo: Slo,
        attainment: f64,
        probes: Vec<RunMetrics>,
    ) -> Self {
        let at = search
            .capacity()
            .and_then(|u| probes.iter().find(|m| m.concurrency == Some(u)));
        CapacityReport {
            users: search.capacity(),
            hit_max: search.hit_max(),
            slo,
            attainment,
            output_tokens_per_s: at.map_or(0.0, |m| m.output_tokens_per_s),
            per_user_tokens_per_s: at.map_or(0.0, |m| {
                if m.tpot.p50 > 0.0 {
                    1000.0 / m.tpot.p50
                } else {
                    0.0
                }
            }),
            probes,
        }
    }
}

/// The bound of one capacity probe of `users`: every user sends at least twice, so each level
/// is seen past its first wave.
pub fn probe_bound(bound: Bound, users: usize) -> Bound {
    Bound {
        num_prompts: bound.num_prompts.map(|n| n.max(2 * users)),
        duration: bound.duration,
    }
}

/// Results on one server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// `A` (the `--url` server) or `B` (the `--compare` one).
    pub label: String,
    pub url: String,
    pub model: String,
    pub runs: Vec<RunMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityReport>,
}

/// A/B ratios at one load (`--compare`); above 1 means A has more of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RatioRow {
    pub load: String,
    pub output_tokens_per_s: f64,
    pub request_throughput: f64,
    pub ttft_p50: f64,
    pub ttft_p99: f64,
    pub tpot_p50: f64,
    pub itl_p50: f64,
    pub e2e_p50: f64,
}

impl RatioRow {
    pub fn of(a: &RunMetrics, b: &RunMetrics) -> RatioRow {
        let r = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
        RatioRow {
            load: a.load_label(),
            output_tokens_per_s: r(a.output_tokens_per_s, b.output_tokens_per_s),
            request_throughput: r(a.request_throughput, b.request_throughput),
            ttft_p50: r(a.ttft.p50, b.ttft.p50),
            ttft_p99: r(a.ttft.p99, b.ttft.p99),
            tpot_p50: r(a.tpot.p50, b.tpot.p50),
            itl_p50: r(a.itl.p50, b.itl.p50),
            e2e_p50: r(a.e2e.p50, b.e2e.p50),
        }
    }
}

/// The workload as run, echoed into the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadEcho {
    pub endpoint: String,
    pub prompts: usize,
    pub mean_input_len: f64,
    pub mean_output_len: f64,
    /// Prompt lengths are exact (built with the server's tokenizer), not estimated.
    pub exact_lengths: bool,
    pub ignore_eos: bool,
    pub seed: u64,
    pub warmup: usize,
    pub rounds: usize,
    pub num_prompts: Option<usize>,
    pub duration_s: Option<f64>,
}

/// Everything measured: what `--json` writes and `tokenfab economics --from` reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub workload: WorkloadEcho,
    pub targets: Vec<TargetReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ratios: Vec<RatioRow>,
}

/// Runs the benchmark that `cfg` describes.
pub async fn run_bench(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    if cfg.bound.num_prompts.is_none() && cfg.bound.duration.is_none() {
        return Err(BenchError::InvalidArg {
            field: "num-prompts",
            msg: "give --num-prompts or --duration".into(),
        });
    }
    let mut targets = vec![Target::connect(&cfg.url, cfg.model.clone()).await?];
    if let Some(url) = &cfg.compare_url {
        targets.push(Target::connect(url, cfg.compare_model.clone()).await?);
    }
    let mut rng = Rng::new(cfg.seed);
    let pool = prompt_pool(cfg);
    let (prompts, exact) = match &cfg.source {
        PromptSource::Synthetic {
            input_len,
            output_len,
        } => synthetic_prompts(&targets[0], &mut rng, pool, *input_len, *output_len).await?,
        PromptSource::Dataset { path, output_len } => {
            (dataset_prompts(&targets[0], path, *output_len).await?, true)
        }
    };
    let prompts = Arc::new(prompts);
    let opts = SendOptions {
        endpoint: cfg.endpoint,
        ignore_eos: cfg.ignore_eos,
        timeout: cfg.timeout,
    };
    let plan = |load: Load, bound: Bound, offset: usize| RunPlan {
        load,
        bound,
        opts,
        seed: cfg.seed,
        progress: cfg.progress,
        prompt_offset: offset,
    };
    // Warm-up: each server gets the same `warmup` requests, at most 8 at a time.
    if cfg.warmup > 0 {
        for t in &targets {
            let bound = Bound {
                num_prompts: Some(cfg.warmup),
                duration: None,
            };
            run_load(
                t,
                &prompts,
                &plan(Load::Concurrency(cfg.warmup.min(8)), bound, 0),
            )
            .await;
        }
    }
    let mut offset = cfg.warmup;
    let mut reports: Vec<TargetReport> = targets
        .iter()
        .zip(["A", "B"])
        .map(|(t, label)| TargetReport {
            label: label.into(),
            url: t.base.clone(),
            model: t.model.clone(),
            ..Default::default()
        })
        .collect();
    for &load in &cfg.loads {
        let mut pooled: Vec<(Vec<RequestRecord>, f64)> = vec![(Vec::new(), 0.0); targets.len()];
        let mut profiles: Vec<Option<StepProfile>> = vec![None; targets.len()];
        for round in 0..cfg.rounds.max(1) {
            // A B, B A, A B, ...: each round runs every server on the same prompts, and the
            // server that goes first alternates, so a host that drifts (faster or slower within
            // minutes) does not favour one side of every pair.
            let mut sent = 0;
            for i in round_order(targets.len(), round) {
                let (t, acc, prof) = (&targets[i], &mut pooled[i], &mut profiles[i]);
                let before = if cfg.profile {
                    snapshot(t).await?
                } else {
                    None
                };
                let (recs, secs) = run_load(t, &prompts, &plan(load, cfg.bound, offset)).await;
                if let (Some(before), Some(after)) = (before, snapshot(t).await?) {
                    prof.get_or_insert_with(StepProfile::default)
                        .add(&after.since(&before));
                }
                sent = sent.max(recs.len());
                acc.0.extend(recs);
                acc.1 += secs;
            }
            offset += sent;
        }
        for (((recs, secs), rep), prof) in pooled.iter().zip(reports.iter_mut()).zip(profiles) {
            let mut m = with_load(RunMetrics::from_records(recs, *secs, cfg.slo), load);
            m.profile = prof;
            rep.runs.push(m);
        }
    }
    if let (Some(max), Some(slo)) = (cfg.capacity_max, cfg.slo) {
        let start = offset;
        for (t, rep) in targets.iter().zip(reports.iter_mut()) {
            // Each server's search starts on the same prompts.
            let mut offset = start;
            let mut search = CapacitySearch::new(max);
            let mut probes = Vec::new();
            while let Some(users) = search.next_probe() {
                let bound = probe_bound(cfg.bound, users);
                let (recs, secs) =
                    run_load(t, &prompts, &plan(Load::Concurrency(users), bound, offset)).await;
                offset += recs.len();
                let m = with_load(
                    RunMetrics::from_records(&recs, secs, Some(slo)),
                    Load::Concurrency(users),
                );
                let passed = m.goodput.is_some_and(|g| g.share >= cfg.attainment);
                tracing::info!(
                    users,
                    passed,
                    tokens_per_s = m.output_tokens_per_s,
                    "capacity probe on {}",
                    rep.label
                );
                search.record(users, passed);
                probes.push(m);
            }
            rep.capacity = Some(CapacityReport::from_search(
                &search,
                slo,
                cfg.attainment,
                probes,
            ));
        }
    }
    let ratios = match reports.as_slice() {
        [a, b] => a
            .runs
            .iter()
            .zip(&b.runs)
            .map(|(x, y)| RatioRow::of(x, y))
            .collect(),
        _ => Vec::new(),
    };
    let n = prompts.len() as f64;
    Ok(BenchReport {
        workload: WorkloadEcho {
            endpoint: format!("{:?}", cfg.endpoint).to_lowercase(),
            prompts: prompts.len(),
            mean_input_len: prompts.iter().map(|p| p.input_len as f64).sum::<f64>() / n,
            mean_output_len: prompts.iter().map(|p| p.output_len as f64).sum::<f64>() / n,
            exact_lengths: exact,
            ignore_eos: cfg.ignore_eos,
            seed: cfg.seed,
            warmup: cfg.warmup,
            rounds: cfg.rounds.max(1),
            num_prompts: cfg.bound.num_prompts,
            duration_s: cfg.bound.duration.map(|d| d.as_secs_f64()),
        },
        targets: reports,
        ratios,
    })
}

/// Prompts to make: enough that no request of the run repeats an earlier one (a repeat would
/// measure the servers' prefix caches instead of their prefill), up to [`MAX_POOL`]; past that,
/// and in runs bounded by time, prompts are reused in order.
fn prompt_pool(cfg: &BenchConfig) -> usize {
    let per_load = cfg.bound.num_prompts.unwrap_or(DURATION_POOL).max(1);
    let mut n = cfg.warmup + per_load * cfg.rounds.max(1) * cfg.loads.len().max(1);
    if let Some(max) = cfg.capacity_max {
        // The search probes about 2·log2(max) levels, each user sending at least twice.
        let probes = 2 * (usize::BITS - max.leading_zeros()) as usize;
        n += probes * per_load.max(2 * max);
    }
    n.clamp(1, MAX_POOL)
}

/// The server's phase metrics now, when it is a tokenfab server that exports them.
async fn snapshot(t: &Target) -> Result<Option<Snapshot>, BenchError> {
    Ok(t.metrics_text()
        .await?
        .map(|text| Snapshot::parse(&text))
        .filter(Snapshot::has_phases))
}

/// `m` labelled with the load it ran at.
pub fn with_load(mut m: RunMetrics, load: Load) -> RunMetrics {
    match load {
        Load::Concurrency(c) => m.concurrency = Some(c),
        Load::Rate { rate, .. } => m.request_rate_target = rate.is_finite().then_some(rate),
    }
    m
}

/// The order in which a round runs the servers: as given in even rounds, reversed in odd ones.
fn round_order(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}
