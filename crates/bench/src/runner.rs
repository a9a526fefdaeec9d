//! Drives one run: a closed loop of N users, or open-loop arrivals at a rate. Every run is
//! bounded by a request count, a duration, or both (whichever comes first).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::client::{SendOptions, Target};
use crate::metrics::RequestRecord;
use crate::workload::{next_gap_s, Prompt, Rng};

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Closed loop: N users, each sending its next request when the last one ends.
    Concurrency(usize),
    /// Open loop: arrivals at `rate` requests/s (infinite: all at once), gaps drawn from a
    /// gamma distribution of shape `burstiness` (1 = Poisson).
    Rate { rate: f64, burstiness: f64 },
}

/// When a run stops sending. At least one bound is set (the CLI makes sure).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    pub num_prompts: Option<usize>,
    pub duration: Option<Duration>,
}

impl Bound {
    fn allows(&self, sent: usize, start: Instant) -> bool {
        self.num_prompts.is_none_or(|n| sent < n)
            && self.duration.is_none_or(|d| start.elapsed() < d)
            && (self.num_prompts.is_some() || self.duration.is_some())
    }
}

/// Everything one run needs besides the server.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub load: Load,
    pub bound: Bound,
    pub opts: SendOptions,
    /// Seeds the arrival times.
    pub seed: u64,
    /// Show a progress line on stderr (only if it is a terminal).
    pub progress: bool,
    /// Index of the first prompt used, so that consecutive runs do not repeat prompts.
    pub prompt_offset: usize,
}

/// Runs `plan` against `target`; returns the records and the wall time in seconds from the
/// first request sent to the last one finished.
pub async fn run_load(
    target: &Target,
    prompts: &Arc<Vec<Prompt>>,
    plan: &RunPlan,
) -> (Vec<RequestRecord>, f64) {
    assert!(!prompts.is_empty(), "run_load needs prompts");
    let start = Instant::now();
    let sent = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let progress = Progress::start(plan, done.clone(), start);
    let mut tasks: JoinSet<Vec<RequestRecord>> = JoinSet::new();
    match plan.load {
        Load::Concurrency(users) => {
            for _ in 0..users.max(1) {
                let (t, p, pl, sent, done) = (
                    target.clone(),
                    prompts.clone(),
                    plan.clone(),
                    sent.clone(),
                    done.clone(),
                );
                tasks.spawn(async move {
                    let mut out = Vec::new();
                    loop {
                        let i = sent.fetch_add(1, Ordering::SeqCst);
                        if !pl.bound.allows(i, start) {
                            break;
                        }
                        let prompt = &p[(pl.prompt_offset + i) % p.len()];
                        out.push(t.send(prompt, &pl.opts, start).await);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    out
                });
            }
        }
        Load::Rate { rate, burstiness } => {
            let mut rng = Rng::new(plan.seed);
            let mut next_at = Duration::ZERO;
            let mut i = 0;
            while plan.bound.allows(i, start) {
                tokio::time::sleep_until((start + next_at).into()).await;
                if !plan.bound.allows(i, start) {
                    break;
                }
                let (t, p, opts, done) = (target.clone(), prompts.clone(), plan.opts, done.clone());
                let idx = (plan.prompt_offset + i) % p.len();
                tasks.spawn(async move {
                    let r = t.send(&p[idx], &opts, start).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    vec![r]
                });
                i += 1;
                next_at += Duration::from_secs_f64(next_gap_s(&mut rng, rate, burstiness));
            }
        }
    }
    let mut records = Vec::new();
    while let Some(r) = tasks.join_next().await {
        records.extend(r.unwrap_or_default());
    }
    progress.stop();
    let secs = sort_and_span(&mut records);
    (records, secs)
}

/// Sorts `records` by send time and returns the run's wall time in seconds: first send to
/// last finish (the first send is at ~0 in a closed loop).
pub fn sort_and_span(records: &mut [RequestRecord]) -> f64 {
    records.sort_by(|a, b| a.sent_at_ms.total_cmp(&b.sent_at_ms));
    let first = records.first().map_or(0.0, |r| r.sent_at_ms);
    let last = records
        .iter()
        .map(|r| r.sent_at_ms + r.e2e_ms)
        .fold(0.0, f64::max);
    (last - first).max(0.0) / 1000.0
}

/// A one-line progress bar on stderr, redrawn four times a second; silent unless stderr is a
/// terminal.
struct Progress {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(plan: &RunPlan, done: Arc<AtomicUsize>, start: Instant) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        if !plan.progress || !std::io::stderr().is_terminal() {
            return Progress { stop, task: None };
        }
        let (bound, flag) = (plan.bound, stop.clone());
        let label = match plan.load {
            Load::Concurrency(c) => format!("c={c}"),
            Load::Rate { rate, .. } => format!("rate={rate}"),
        };
        let task = tokio::spawn(async move {
            while !flag.load(Ordering::Relaxed) {
                let (n, el) = (done.load(Ordering::Relaxed), start.elapsed().as_secs_f64());
                let frac = match (bound.num_prompts, bound.duration) {
                    (Some(t), Some(d)) => (n as f64 / t as f64).max(el / d.as_secs_f64()),
                    (Some(t), None) => n as f64 / t as f64,
                    (None, Some(d)) => el / d.as_secs_f64(),
                    (None, None) => 0.0,
                }
                .min(1.0);
                let w = 30;
                let fill = (frac * w as f64) as usize;
                let total = bound.num_prompts.map_or(String::new(), |t| format!("/{t}"));
                eprint!(
                    "\r\x1b[2K{label:>10} [{}{}] {n}{total} requests {el:.1}s",
                    "=".repeat(fill),
                    " ".repeat(w - fill)
                );
                let _ = std::io::stderr().flush();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            eprint!("\r\x1b[2K");
        });
        Progress {
            stop,
            task: Some(task),
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.task {
            t.abort();
            eprint!("\r\x1b[2K");
        }
    }
}
