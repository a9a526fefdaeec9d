//! Per-request measurements and the figures of one run computed from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::slo::Slo;
use crate::stats::Summary;

/// Why a request failed, for the "errors by kind" count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Could not connect or send (refused, reset before the response).
    Connect,
    /// The request took longer than `--timeout`.
    Timeout,
    /// The server answered with a non-2xx status.
    Http(u16),
    /// The server reported an error inside the stream.
    Server,
    /// The stream broke or carried something unreadable.
    Stream,
    /// The stream ended without any generated text.
    Empty,
}

impl ErrorKind {
    pub fn label(&self) -> String {
        match self {
            ErrorKind::Connect => "connect".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Http(s) => format!("http_{s}"),
            ErrorKind::Server => "server_error".into(),
            ErrorKind::Stream => "stream".into(),
            ErrorKind::Empty => "empty".into(),
        }
    }
}

/// What one request measured. Times in milliseconds from the request's start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRecord {
    /// When the request was sent, ms since the run started.
    pub sent_at_ms: f64,
    /// Time to the first chunk with generated text; `None` if none came.
    pub ttft_ms: Option<f64>,
    /// Time to the end of the stream.
    pub e2e_ms: f64,
    /// Gaps between successive chunks with text (inter-token latencies, one per chunk).
    pub itl_ms: Vec<f64>,
    /// Prompt tokens (from the usage chunk, else the workload's count).
    pub input_tokens: usize,
    /// Generated tokens (from the usage chunk, else one per text chunk).
    pub output_tokens: usize,
    pub error: Option<ErrorKind>,
}

impl RequestRecord {
    /// Time per output token after the first: `(e2e - ttft) / (output_tokens - 1)`, vLLM's
    /// definition; `None` for failed requests and those with fewer than two tokens.
    pub fn tpot_ms(&self) -> Option<f64> {
        let ttft = self.ttft_ms?;
        (self.error.is_none() && self.output_tokens > 1)
            .then(|| (self.e2e_ms - ttft) / (self.output_tokens - 1) as f64)
    }

    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Goodput: the requests that met the SLO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Goodput {
    pub slo: Slo,
    /// Share of all requests sent (failed ones count as missing the SLO), 0..=1.
    pub share: f64,
    /// Requests per second that met the SLO.
    pub request_rate: f64,
    /// Output tokens per second of the requests that met the SLO.
    pub output_tokens_per_s: f64,
}

/// The figures of one run at one concurrency or request rate. Latencies in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// Concurrent users of a closed-loop run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Arrival rate (requests/s) of an open-loop run; infinite is written as null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_rate_target: Option<f64>,
    pub completed: usize,
    pub failed: usize,
    /// Wall time from the first request sent to the last one finished.
    pub duration_s: f64,
    pub input_tokens: usize,
    pub output_tokens: usize,
    /// Completed requests per second.
    pub request_throughput: f64,
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
    pub ttft: Summary,
    pub tpot: Summary,
    pub itl: Summary,
    pub e2e: Summary,
    /// Failed requests by kind (`connect`, `timeout`, `http_503`, ...).
    pub errors: BTreeMap<String, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goodput: Option<Goodput>,
    /// The server's own account of where its steps went (`--profile`, tokenfab servers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::profile::StepProfile>,
}

impl RunMetrics {
    /// Computes the figures of a run from its records. `duration_s` is the measured wall time.
    pub fn from_records(records: &[RequestRecord], duration_s: f64, slo: Option<Slo>) -> Self {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
        let mut errors = BTreeMap::new();
        for r in records {
            if let Some(e) = &r.error {
                *errors.entry(e.label()).or_insert(0) += 1;
            }
        }
        let per_s = |x: f64| {
            if duration_s > 0.0 {
                x / duration_s
            } else {
                0.0
            }
        };
        let input_tokens: usize = ok.iter().map(|r| r.input_tokens).sum();
        let output_tokens: usize = ok.iter().map(|r| r.output_tokens).sum();
        let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_ms).collect();
        let tpot: Vec<f64> = ok.iter().filter_map(|r| r.tpot_ms()).collect();
        let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl_ms.iter().copied()).collect();
        let e2e: Vec<f64> = ok.iter().map(|r| r.e2e_ms).collect();
        let goodput = slo.map(|slo| {
            let good: Vec<&&RequestRecord> = ok
                .iter()
                .filter(|r| r.ttft_ms.is_some_and(|t| slo.met(t, r.tpot_ms())))
                .collect();
            Goodput {
                slo,
                share: if records.is_empty() {
                    0.0
                } else {
                    good.len() as f64 / records.len() as f64
                },
                request_rate: per_s(good.len() as f64),
                output_tokens_per_s: per_s(
                    good.iter().map(|r| r.output_tokens).sum::<usize>() as f64
                ),
            }
        });
        RunMetrics {
            concurrency: None,
            request_rate_target: None,
            completed: ok.len(),
            failed: records.len() - ok.len(),
            duration_s,
            input_tokens,
            output_tokens,
            request_throughput: per_s(ok.len() as f64),
            output_tokens_per_s: per_s(output_tokens as f64),
            total_tokens_per_s: per_s((input_tokens + output_tokens) as f64),
            ttft: Summary::of(&ttft),
            tpot: Summary::of(&tpot),
            itl: Summary::of(&itl),
            e2e: Summary::of(&e2e),
            errors,
            goodput,
            profile: None,
        }
    }

    /// A short name of the load: `c=8` or `rate=2.5`.
    pub fn load_label(&self) -> String {
        match (self.concurrency, self.request_rate_target) {
            (Some(c), _) => format!("c={c}"),
            (None, Some(r)) => format!("rate={r}"),
            (None, None) => "rate=inf".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ttft: f64, e2e: f64, out: usize) -> RequestRecord {
        RequestRecord {
            ttft_ms: Some(ttft),
            e2e_ms: e2e,
            input_tokens: 10,
            output_tokens: out,
            itl_ms: vec![(e2e - ttft) / (out.max(2) - 1) as f64; out.saturating_sub(1)],
            ..Default::default()
        }
    }

    #[test]
    fn tpot_definition() {
        // 11 tokens, first at 100 ms, last at 600 ms: 500 ms over 10 gaps = 50 ms.
        assert_eq!(rec(100.0, 600.0, 11).tpot_ms(), Some(50.0));
        assert_eq!(rec(100.0, 100.0, 1).tpot_ms(), None);
        let mut failed = rec(100.0, 600.0, 11);
        failed.error = Some(ErrorKind::Http(500));
        assert_eq!(failed.tpot_ms(), None);
    }

    #[test]
    fn goodput_and_throughput() {
        // Over 2 s: a meets (ttft 100, tpot 50), b misses ttft (3000), c misses tpot
        // (ttft 100, (1100-100)/10 = 100 > 60), d failed. SLO ttft<=2000, tpot<=60.
        let mut d = rec(0.0, 0.0, 0);
        d.error = Some(ErrorKind::Timeout);
        let records = vec![
            rec(100.0, 600.0, 11),
            rec(3000.0, 3500.0, 11),
            rec(100.0, 1100.0, 11),
            d,
        ];
        let slo = Slo {
            ttft_ms: Some(2000.0),
            tpot_ms: Some(60.0),
        };
        let m = RunMetrics::from_records(&records, 2.0, Some(slo));
        assert_eq!((m.completed, m.failed), (3, 1));
        assert_eq!(m.errors.get("timeout"), Some(&1));
        assert_eq!(m.output_tokens, 33);
        assert!((m.output_tokens_per_s - 16.5).abs() < 1e-9);
        assert!((m.total_tokens_per_s - 31.5).abs() < 1e-9);
        assert!((m.request_throughput - 1.5).abs() < 1e-9);
        let g = m.goodput.unwrap();
        assert!((g.share - 0.25).abs() < 1e-9);
        assert!((g.request_rate - 0.5).abs() < 1e-9);
        assert!((g.output_tokens_per_s - 5.5).abs() < 1e-9);
        // TTFT over the three successes: 100, 100, 3000 -> p50 100, mean 1066.67.
        assert!((m.ttft.p50 - 100.0).abs() < 1e-9);
        assert!((m.ttft.mean - 3200.0 / 3.0).abs() < 1e-9);
        assert_eq!(m.itl.count, 30);
    }
}
