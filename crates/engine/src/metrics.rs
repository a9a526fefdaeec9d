//! The engine's Prometheus metrics, with vLLM's names and meaning under a `tokenfab:` prefix and the
//! same series again as `vllm:` aliases, so routers built for vLLM can read them as they are.
//!
//! One writer (the engine thread), any number of readers (the `/metrics` route): plain atomics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokenfab_types::profile::ForwardPhase;

use crate::profile::EnginePhase;

/// A monotonically increasing count.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down (stored as f64 bits).
#[derive(Default, Debug)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

/// Cumulative-bucket histogram, as Prometheus defines it.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, ascending; +Inf is implicit.
    bounds: &'static [f64],
    /// (bounds.len() + 1,) observations per bucket (not cumulative; the last is +Inf).
    counts: Vec<AtomicU64>,
    /// Sum of observations, f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        let mut cur = self.sum.load(Relaxed);
        loop {
            let new = (f64::from_bits(cur) + v).to_bits();
            match self.sum.compare_exchange_weak(cur, new, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Relaxed))
    }
}

const LATENCY: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const MASK: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Per-step phase durations: 10 µs to 10 s.
const PHASE: &[f64] = &[
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Where steps go ([`crate::profile`]): wall and CPU seconds per phase of the engine loop, one
/// observation per step (the HTTP phase: one per piece of server work), and per phase of the
/// forward pass when a pass is profiled through its hook.
#[derive(Debug)]
pub struct PhaseMetrics {
    /// Engine steps timed.
    pub steps: Counter,
    /// (EnginePhase::COUNT,) wall seconds.
    pub wall: Vec<Histogram>,
    /// (EnginePhase::COUNT,) CPU seconds of the threads doing the phase's work.
    pub cpu: Vec<Histogram>,
    /// Forward passes profiled through [`crate::profile::ForwardProfile`].
    pub forward_passes: Counter,
    /// (ForwardPhase::ALL.len(),) wall seconds per pass, summed over layers.
    pub forward_wall: Vec<Histogram>,
    /// (ForwardPhase::ALL.len(),) CPU seconds per pass, summed over layers.
    pub forward_cpu: Vec<Histogram>,
}

impl Default for PhaseMetrics {
    fn default() -> Self {
        let hists = |n: usize| (0..n).map(|_| Histogram::new(PHASE)).collect();
        Self {
            steps: Counter::default(),
            wall: hists(EnginePhase::COUNT),
            cpu: hists(EnginePhase::COUNT),
            forward_passes: Counter::default(),
            forward_wall: hists(ForwardPhase::ALL.len()),
            forward_cpu: hists(ForwardPhase::ALL.len()),
        }
    }
}

impl PhaseMetrics {
    pub fn observe(&self, phase: EnginePhase, wall: Duration, cpu: Duration) {
        self.wall[phase.index()].observe(wall.as_secs_f64());
        self.cpu[phase.index()].observe(cpu.as_secs_f64());
    }
}

/// Speculative decoding, with vLLM's names (`vllm/v1/spec_decode/metrics.py`).
#[derive(Debug)]
pub struct SpecMetrics {
    /// Drafts verified (one per request per step that carried draft tokens).
    pub num_drafts: Counter,
    /// Draft tokens verified.
    pub num_draft_tokens: Counter,
    /// Draft tokens accepted (the token sampled after them, bonus or correction, not counted).
    pub num_accepted_tokens: Counter,
    /// (num_speculative_tokens,) drafts whose token at that position was accepted.
    pub accepted_per_pos: Vec<Counter>,
}

impl SpecMetrics {
    pub fn new(num_speculative_tokens: usize) -> Self {
        Self {
            num_drafts: Counter::default(),
            num_draft_tokens: Counter::default(),
            num_accepted_tokens: Counter::default(),
            accepted_per_pos: (0..num_speculative_tokens)
                .map(|_| Counter::default())
                .collect(),
        }
    }

    /// One verified draft of `drafted` tokens of which the first `accepted` were accepted.
    pub fn observe(&self, drafted: usize, accepted: usize) {
        self.num_drafts.add(1);
        self.num_draft_tokens.add(drafted as u64);
        self.num_accepted_tokens.add(accepted as u64);
        for c in self.accepted_per_pos.iter().take(accepted) {
            c.add(1);
        }
    }
}

/// Every series the engine exports.
#[derive(Debug)]
pub struct Metrics {
    pub num_requests_running: Gauge,
    pub num_requests_waiting: Gauge,
    /// Fraction of KV blocks in use, 0..1 (vLLM's name says perc; its value is a fraction).
    pub kv_cache_usage_perc: Gauge,
    pub prefix_cache_queries: Counter,
    pub prefix_cache_hits: Counter,
    pub num_preemptions: Counter,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub request_success_stop: Counter,
    pub request_success_length: Counter,
    pub request_success_abort: Counter,
    pub time_to_first_token_seconds: Histogram,
    pub inter_token_latency_seconds: Histogram,
    pub e2e_request_latency_seconds: Histogram,
    pub request_queue_time_seconds: Histogram,
    /// vLLM's `cache_config_info` labels (block_size, num_gpu_blocks, ...), set at start.
    pub cache_config: OnceLock<Vec<(&'static str, String)>>,
    /// KV-event batches sent on the PUB socket (shared with the publisher thread).
    pub kv_events_published: Arc<Counter>,
    /// KV-event batches dropped because the publisher's queue was full.
    pub kv_events_dropped: Arc<Counter>,
    pub phases: PhaseMetrics,
    /// Present when speculative decoding is configured (vLLM exports them only then too).
    pub spec: Option<SpecMetrics>,
    /// Structured outputs: per step with constrained rows, the wall time of computing their
    /// masks and the part of it the step waited for (all of it on the CPU, where masks come
    /// before the forward pass; what the forward did not hide on a GPU).
    pub structured_mask_seconds: Histogram,
    pub structured_mask_wait_seconds: Histogram,
    /// Constrained rows whose mask was computed (one per row per step).
    pub structured_mask_rows: Counter,
    /// Steps planned while the step before ran on the device (async scheduling).
    pub steps_planned_ahead: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            num_requests_running: Gauge::default(),
            num_requests_waiting: Gauge::default(),
            kv_cache_usage_perc: Gauge::default(),
            prefix_cache_queries: Counter::default(),
            prefix_cache_hits: Counter::default(),
            num_preemptions: Counter::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            request_success_stop: Counter::default(),
            request_success_length: Counter::default(),
            request_success_abort: Counter::default(),
            time_to_first_token_seconds: Histogram::new(LATENCY),
            inter_token_latency_seconds: Histogram::new(ITL),
            e2e_request_latency_seconds: Histogram::new(LATENCY),
            request_queue_time_seconds: Histogram::new(LATENCY),
            cache_config: OnceLock::new(),
            kv_events_published: Arc::default(),
            kv_events_dropped: Arc::default(),
            phases: PhaseMetrics::default(),
            spec: None,
            structured_mask_seconds: Histogram::new(MASK),
            structured_mask_wait_seconds: Histogram::new(MASK),
            structured_mask_rows: Counter::default(),
            steps_planned_ahead: Counter::default(),
        }
    }
}

/// Writes one metric family in the text format.
struct Family<'a> {
    out: &'a mut String,
    prefix: &'a str,
    /// `model_name="..."`.
    label: &'a str,
}

impl Family<'_> {
    fn head(&mut self, name: &str, help: &str, kind: &str) {
        let p = self.prefix;
        let _ = writeln!(
            self.out,
            "# HELP {p}:{name} {help}\n# TYPE {p}:{name} {kind}"
        );
    }

    /// A sample; `extra` is `,key="value"` or empty.
    fn sample(&mut self, name: &str, extra: &str, v: impl std::fmt::Display) {
        let _ = writeln!(
            self.out,
            "{}:{name}{{{}{extra}}} {v}",
            self.prefix, self.label
        );
    }

    fn histogram(&mut self, name: &str, extra: &str, h: &Histogram) {
        let mut cum = 0;
        for (i, b) in h.bounds.iter().enumerate() {
            cum += h.counts[i].load(Relaxed);
            self.sample(
                &format!("{name}_bucket"),
                &format!("{extra},le=\"{b}\""),
                cum,
            );
        }
        self.sample(
            &format!("{name}_bucket"),
            &format!("{extra},le=\"+Inf\""),
            h.count(),
        );
        self.sample(&format!("{name}_sum"), extra, h.sum());
        self.sample(&format!("{name}_count"), extra, h.count());
    }
}

impl Metrics {
    /// Prometheus text exposition format (0.0.4), `model_name` as a label on every series.
    pub fn render(&self, model_name: &str) -> String {
        let mut out = String::new();
        let label = format!("model_name=\"{}\"", escape(model_name));
        for prefix in ["tokenfab", "vllm"] {
            let mut f = Family {
                out: &mut out,
                prefix,
                label: &label,
            };
            for (name, help, v) in [
                (
                    "num_requests_running",
                    "Requests in the running batch.",
                    self.num_requests_running.get(),
                ),
                (
                    "num_requests_waiting",
                    "Requests waiting to be scheduled.",
                    self.num_requests_waiting.get(),
                ),
                (
                    "kv_cache_usage_perc",
                    "Fraction of KV-cache blocks in use (1 = full).",
                    self.kv_cache_usage_perc.get(),
                ),
            ] {
                f.head(name, help, "gauge");
                f.sample(name, "", v);
            }
            if let Some(info) = self.cache_config.get() {
                let labels: String = info
                    .iter()
                    .map(|(k, v)| format!(",{k}=\"{}\"", escape(v)))
                    .collect();
                let name = "cache_config_info";
                f.head(name, "Information of the KV cache configuration.", "gauge");
                f.sample(name, &labels, 1u64);
            }
            let mut counters = vec![
                (
                    "prefix_cache_queries_total",
                    "Prompt tokens looked up in the prefix cache.",
                    &self.prefix_cache_queries,
                ),
                (
                    "prefix_cache_hits_total",
                    "Prompt tokens found in the prefix cache.",
                    &self.prefix_cache_hits,
                ),
                (
                    "num_preemptions_total",
                    "Requests preempted for lack of KV blocks.",
                    &self.num_preemptions,
                ),
                (
                    "prompt_tokens_total",
                    "Prompt tokens processed.",
                    &self.prompt_tokens,
                ),
                (
                    "generation_tokens_total",
                    "Tokens generated.",
                    &self.generation_tokens,
                ),
            ];
            if let Some(s) = &self.spec {
                counters.extend([
                    (
                        "spec_decode_num_drafts_total",
                        "Number of spec decoding drafts.",
                        &s.num_drafts,
                    ),
                    (
                        "spec_decode_num_draft_tokens_total",
                        "Number of draft tokens.",
                        &s.num_draft_tokens,
                    ),
                    (
                        "spec_decode_num_accepted_tokens_total",
                        "Number of accepted tokens.",
                        &s.num_accepted_tokens,
                    ),
                ]);
            }
            for (name, help, c) in counters {
                f.head(name, help, "counter");
                f.sample(name, "", c.get());
            }
            if let Some(s) = &self.spec {
                let name = "spec_decode_num_accepted_tokens_per_pos_total";
                f.head(name, "Accepted tokens per draft position.", "counter");
                for (pos, c) in s.accepted_per_pos.iter().enumerate() {
                    f.sample(name, &format!(",position=\"{pos}\""), c.get());
                }
            }
            f.head(
                "request_success_total",
                "Finished requests by finish reason.",
                "counter",
            );
            for (reason, c) in [
                ("stop", &self.request_success_stop),
                ("length", &self.request_success_length),
                ("abort", &self.request_success_abort),
            ] {
                let extra = format!(",finished_reason=\"{reason}\"");
                f.sample("request_success_total", &extra, c.get());
            }
            for (name, help, h) in [
                (
                    "time_to_first_token_seconds",
                    "Time from arrival to the first token.",
                    &self.time_to_first_token_seconds,
                ),
                (
                    "inter_token_latency_seconds",
                    "Time between consecutive tokens of a request.",
                    &self.inter_token_latency_seconds,
                ),
                (
                    "e2e_request_latency_seconds",
                    "Time from arrival to the last token.",
                    &self.e2e_request_latency_seconds,
                ),
                (
                    "request_queue_time_seconds",
                    "Time from arrival to first being scheduled.",
                    &self.request_queue_time_seconds,
                ),
            ] {
                f.head(name, help, "histogram");
                f.histogram(name, "", h);
            }
        }
        let mut f = Family {
            out: &mut out,
            prefix: "tokenfab",
            label: &label,
        };
        for (name, help, c) in [
            (
                "kv_events_published_total",
                "KV-event batches sent on the ZMQ PUB socket.",
                &*self.kv_events_published,
            ),
            (
                "kv_events_dropped_total",
                "KV-event batches dropped because the publisher's queue was full.",
                &*self.kv_events_dropped,
            ),
            (
                "async_scheduled_steps_total",
                "Steps planned while the step before ran on the device (async scheduling).",
                &self.steps_planned_ahead,
            ),
        ] {
            f.head(name, help, "counter");
            f.sample(name, "", c.get());
        }
        for (name, help, h) in [
            (
                "structured_mask_seconds",
                "Per step with constrained rows: wall time of computing their grammar masks.",
                &self.structured_mask_seconds,
            ),
            (
                "structured_mask_wait_seconds",
                "Per step with constrained rows: time the step waited for the masks (all of it on the CPU, which computes them before the forward pass; on a GPU, what the forward pass did not hide).",
                &self.structured_mask_wait_seconds,
            ),
        ] {
            f.head(name, help, "histogram");
            f.histogram(name, "", h);
        }
        f.head(
            "structured_mask_rows_total",
            "Constrained rows masked (one per row per step).",
            "counter",
        );
        f.sample(
            "structured_mask_rows_total",
            "",
            self.structured_mask_rows.get(),
        );
        self.render_phases(&mut Family {
            out: &mut out,
            prefix: "tokenfab",
            label: &label,
        });
        out
    }

    /// tokenfab's own: where steps go (no vLLM counterpart, so no `vllm:` alias).
    fn render_phases(&self, f: &mut Family) {
        let p = &self.phases;
        f.head(
            "engine_steps_total",
            "Engine steps timed by phase.",
            "counter",
        );
        f.sample("engine_steps_total", "", p.steps.get());
        f.head(
            "process_cpu_seconds_total",
            "CPU seconds used by the whole process, every thread.",
            "counter",
        );
        f.sample(
            "process_cpu_seconds_total",
            "",
            crate::profile::process_cpu().as_secs_f64(),
        );
        let phase = |i: usize| format!(",phase=\"{}\"", EnginePhase::ALL[i].name());
        for (name, help, hs) in [
            (
                "engine_phase_seconds",
                "Wall seconds per engine step spent in each phase.",
                &p.wall,
            ),
            (
                "engine_phase_cpu_seconds",
                "CPU seconds per engine step spent in each phase by the threads doing it.",
                &p.cpu,
            ),
        ] {
            f.head(name, help, "histogram");
            for (i, h) in hs.iter().enumerate() {
                f.histogram(name, &phase(i), h);
            }
        }
        if p.forward_passes.get() == 0 {
            return;
        }
        let phase = |i: usize| format!(",phase=\"{}\"", ForwardPhase::ALL[i].name());
        for (name, help, hs) in [
            (
                "forward_phase_seconds",
                "Wall seconds per profiled forward pass in each phase, summed over layers.",
                &p.forward_wall,
            ),
            (
                "forward_phase_cpu_seconds",
                "CPU seconds per profiled forward pass in each phase, summed over layers.",
                &p.forward_cpu,
            ),
        ] {
            f.head(name, help, "histogram");
            for (i, h) in hs.iter().enumerate() {
                f.histogram(name, &phase(i), h);
            }
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_both_prefixes_render() {
        let m = Metrics::default();
        m.time_to_first_token_seconds.observe(0.003);
        m.time_to_first_token_seconds.observe(0.5);
        m.time_to_first_token_seconds.observe(9999.0);
        m.prompt_tokens.add(7);
        m.kv_cache_usage_perc.set(0.25);
        let text = m.render("m\"x");
        assert!(
            text.contains("tokenfab:prompt_tokens_total{model_name=\"m\\\"x\"} 7"),
            "{text}"
        );
        assert!(text.contains("vllm:prompt_tokens_total{model_name=\"m\\\"x\"} 7"));
        assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"m\\\"x\"} 0.25"));
        assert!(text.contains(
            "tokenfab:time_to_first_token_seconds_bucket{model_name=\"m\\\"x\",le=\"0.001\"} 0"
        ));
        assert!(text.contains(
            "tokenfab:time_to_first_token_seconds_bucket{model_name=\"m\\\"x\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "tokenfab:time_to_first_token_seconds_bucket{model_name=\"m\\\"x\",le=\"0.5\"} 2"
        ));
        assert!(text.contains(
            "tokenfab:time_to_first_token_seconds_bucket{model_name=\"m\\\"x\",le=\"+Inf\"} 3"
        ));
        assert!(
            text.contains("tokenfab:time_to_first_token_seconds_count{model_name=\"m\\\"x\"} 3")
        );
        assert!(
            !text.contains("spec_decode"),
            "no speculative config, no spec series"
        );
        assert!(
            !text.contains("forward_phase"),
            "no profiled pass, no forward series"
        );
    }

    #[test]
    fn phase_and_spec_series_render_with_their_labels() {
        let mut m = Metrics {
            spec: Some(SpecMetrics::new(3)),
            ..Metrics::default()
        };
        m.phases.observe(
            EnginePhase::Forward,
            Duration::from_millis(20),
            Duration::from_millis(35),
        );
        m.phases.steps.add(1);
        let s = m.spec.as_mut().unwrap();
        s.observe(3, 2);
        s.observe(2, 0);
        let text = m.render("m");
        for want in [
            "tokenfab:engine_steps_total{model_name=\"m\"} 1",
            "tokenfab:engine_phase_seconds_sum{model_name=\"m\",phase=\"forward\"} 0.02",
            "tokenfab:engine_phase_cpu_seconds_sum{model_name=\"m\",phase=\"forward\"} 0.035",
            "tokenfab:engine_phase_cpu_seconds_count{model_name=\"m\",phase=\"http\"} 0",
            "vllm:spec_decode_num_drafts_total{model_name=\"m\"} 2",
            "vllm:spec_decode_num_draft_tokens_total{model_name=\"m\"} 5",
            "tokenfab:spec_decode_num_accepted_tokens_total{model_name=\"m\"} 2",
            "vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name=\"m\",position=\"1\"} 1",
            "vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name=\"m\",position=\"2\"} 0",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert!(text.contains("tokenfab:process_cpu_seconds_total{model_name=\"m\"} "));
        assert!(
            !text.contains("vllm:engine_phase"),
            "tokenfab's own series have no alias"
        );
    }

    #[test]
    fn cache_config_info_and_kv_event_counters() {
        let m = Metrics::default();
        assert!(!m.render("m").contains("cache_config_info"));
        m.cache_config
            .set(vec![
                ("block_size", "16".into()),
                ("num_gpu_blocks", "7".into()),
            ])
            .unwrap();
        m.kv_events_dropped.add(2);
        let text = m.render("m");
        for prefix in ["tokenfab", "vllm"] {
            assert!(text.contains(&format!(
                "{prefix}:cache_config_info{{model_name=\"m\",block_size=\"16\",num_gpu_blocks=\"7\"}} 1"
            )));
        }
        assert!(text.contains("tokenfab:kv_events_dropped_total{model_name=\"m\"} 2"));
        assert!(!text.contains("vllm:kv_events"));
    }
}
