//! The engine's Prometheus metrics, with vLLM's names and meaning under a `tokenfab:` prefix and the
//! same series again as `vllm:` aliases, so routers built for vLLM can read them as they are.
//!
//! One writer (the engine thread), any number of readers (the `/metrics` route): plain atomics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

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
    /// Structured outputs: per step with constrained rows, the wall time of computing their
    /// masks (on the pool, while the forward runs) and the time the step then still waited.
    pub structured_mask_seconds: Histogram,
    pub structured_mask_wait_seconds: Histogram,
    /// Constrained rows whose mask was computed (one per row per step).
    pub structured_mask_rows: Counter,
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
            structured_mask_seconds: Histogram::new(MASK),
            structured_mask_wait_seconds: Histogram::new(MASK),
            structured_mask_rows: Counter::default(),
        }
    }
}

impl Metrics {
    /// Prometheus text exposition format (0.0.4), `model_name` as a label on every series.
    pub fn render(&self, model_name: &str) -> String {
        let mut out = String::new();
        let label = format!("model_name=\"{}\"", escape(model_name));
        for prefix in ["tokenfab", "vllm"] {
            let mut gauge = |name: &str, help: &str, v: f64| {
                let _ = writeln!(
                    out,
                    "# HELP {prefix}:{name} {help}\n# TYPE {prefix}:{name} gauge"
                );
                let _ = writeln!(out, "{prefix}:{name}{{{label}}} {v}");
            };
            gauge(
                "num_requests_running",
                "Requests in the running batch.",
                self.num_requests_running.get(),
            );
            gauge(
                "num_requests_waiting",
                "Requests waiting to be scheduled.",
                self.num_requests_waiting.get(),
            );
            gauge(
                "kv_cache_usage_perc",
                "Fraction of KV-cache blocks in use (1 = full).",
                self.kv_cache_usage_perc.get(),
            );
            if let Some(info) = self.cache_config.get() {
                let labels: String = info
                    .iter()
                    .map(|(k, v)| format!(",{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = writeln!(
                    out,
                    "# HELP {prefix}:cache_config_info Information of the KV cache configuration.\n\
                     # TYPE {prefix}:cache_config_info gauge\n\
                     {prefix}:cache_config_info{{{label}{labels}}} 1"
                );
            }
            let mut counter = |name: &str, help: &str, v: u64, extra: &str| {
                let _ = writeln!(
                    out,
                    "# HELP {prefix}:{name} {help}\n# TYPE {prefix}:{name} counter"
                );
                let _ = writeln!(out, "{prefix}:{name}{{{label}{extra}}} {v}");
            };
            counter(
                "prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache.",
                self.prefix_cache_queries.get(),
                "",
            );
            counter(
                "prefix_cache_hits_total",
                "Prompt tokens found in the prefix cache.",
                self.prefix_cache_hits.get(),
                "",
            );
            counter(
                "num_preemptions_total",
                "Requests preempted for lack of KV blocks.",
                self.num_preemptions.get(),
                "",
            );
            counter(
                "prompt_tokens_total",
                "Prompt tokens processed.",
                self.prompt_tokens.get(),
                "",
            );
            counter(
                "generation_tokens_total",
                "Tokens generated.",
                self.generation_tokens.get(),
                "",
            );
            let _ = writeln!(out, "# HELP {prefix}:request_success_total Finished requests by finish reason.\n# TYPE {prefix}:request_success_total counter");
            for (reason, c) in [
                ("stop", &self.request_success_stop),
                ("length", &self.request_success_length),
                ("abort", &self.request_success_abort),
            ] {
                let _ = writeln!(
                    out,
                    "{prefix}:request_success_total{{{label},finished_reason=\"{reason}\"}} {}",
                    c.get()
                );
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
                write_histogram(&mut out, &format!("{prefix}:{name}"), help, &label, h);
            }
        }
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
        ] {
            let _ = writeln!(
                out,
                "# HELP tokenfab:{name} {help}\n# TYPE tokenfab:{name} counter\n\
                 tokenfab:{name}{{{label}}} {}",
                c.get()
            );
        }
        for (name, help, h) in [
            (
                "structured_mask_seconds",
                "Per step with constrained rows: wall time of computing their grammar masks.",
                &self.structured_mask_seconds,
            ),
            (
                "structured_mask_wait_seconds",
                "Per step with constrained rows: time the step waited for the masks after the forward pass.",
                &self.structured_mask_wait_seconds,
            ),
        ] {
            write_histogram(&mut out, &format!("tokenfab:{name}"), help, &label, h);
        }
        let _ = writeln!(
            out,
            "# HELP tokenfab:structured_mask_rows_total Constrained rows masked (one per row per step).\n\
             # TYPE tokenfab:structured_mask_rows_total counter\n\
             tokenfab:structured_mask_rows_total{{{label}}} {}",
            self.structured_mask_rows.get()
        );
        out
    }
}

/// One histogram in the exposition format: cumulative buckets, sum and count.
fn write_histogram(out: &mut String, name: &str, help: &str, label: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cum = 0;
    for (i, b) in h.bounds.iter().enumerate() {
        cum += h.counts[i].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"{b}\"}} {cum}");
    }
    let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {}", h.count());
    let _ = writeln!(out, "{name}_sum{{{label}}} {}", h.sum());
    let _ = writeln!(out, "{name}_count{{{label}}} {}", h.count());
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
