//! Service-level objectives, goodput, and the search for the most users a server holds.

use serde::{Deserialize, Serialize};

use crate::BenchError;

/// Limits one request must meet to count toward goodput (DistServe's definition, as vLLM's
/// `--goodput`): time to first token and time per output token, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

impl Slo {
    /// Parses `ttft=MS,tpot=MS` (either part may be left out, not both).
    pub fn parse(s: &str) -> Result<Slo, BenchError> {
        let bad = |msg: String| BenchError::InvalidArg { field: "slo", msg };
        let mut slo = Slo::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("expected KEY=MS, given `{part}`")))?;
            let ms: f64 = v.trim().trim_end_matches("ms").parse().map_err(|_| {
                bad(format!(
                    "`{k}` must be a number of milliseconds. Given: `{v}`"
                ))
            })?;
            if !(ms > 0.0 && ms.is_finite()) {
                return Err(bad(format!("`{k}` must be > 0. Given: {ms}")));
            }
            match k.trim() {
                "ttft" => slo.ttft_ms = Some(ms),
                "tpot" => slo.tpot_ms = Some(ms),
                other => return Err(bad(format!("unknown key `{other}` (known: ttft, tpot)"))),
            }
        }
        if slo.ttft_ms.is_none() && slo.tpot_ms.is_none() {
            return Err(bad(format!("give ttft=MS and/or tpot=MS. Given: `{s}`")));
        }
        Ok(slo)
    }

    /// Whether a successful request with these latencies meets every limit. A request with a
    /// single output token has no TPOT and meets any TPOT limit.
    pub fn met(&self, ttft_ms: f64, tpot_ms: Option<f64>) -> bool {
        self.ttft_ms.is_none_or(|l| ttft_ms <= l)
            && self.tpot_ms.is_none_or(|l| tpot_ms.is_none_or(|t| t <= l))
    }
}

/// Finds the largest concurrency that passes, assuming that passing is monotone (if `c` users
/// are served within the SLO, so are fewer). Doubles from 1 until a level fails or `max` is
/// reached, then bisects between the last pass and the first failure. A pure state machine:
/// the caller runs each probe and reports the verdict.
#[derive(Debug, Clone)]
pub struct CapacitySearch {
    max: usize,
    /// Largest level seen to pass.
    pass: Option<usize>,
    /// Smallest level seen to fail.
    fail: Option<usize>,
}

impl CapacitySearch {
    pub fn new(max: usize) -> Self {
        CapacitySearch {
            max: max.max(1),
            pass: None,
            fail: None,
        }
    }

    /// The next level to probe, or `None` when the answer is known.
    pub fn next_probe(&self) -> Option<usize> {
        match (self.pass, self.fail) {
            (None, None) => Some(1),
            (None, Some(_)) => None, // 1 failed: the server holds no user within the SLO
            (Some(p), None) if p >= self.max => None,
            (Some(p), None) => Some((p * 2).min(self.max)),
            (Some(p), Some(f)) if f <= p + 1 => None,
            (Some(p), Some(f)) => Some(p + (f - p) / 2),
        }
    }

    pub fn record(&mut self, level: usize, passed: bool) {
        if passed {
            self.pass = Some(self.pass.map_or(level, |p| p.max(level)));
        } else {
            self.fail = Some(self.fail.map_or(level, |f| f.min(level)));
        }
    }

    /// The largest level that passed (the capacity), once [`Self::next_probe`] is `None`.
    pub fn capacity(&self) -> Option<usize> {
        self.pass
    }

    /// Whether the search stopped at `max` without seeing a failure (the server may hold more).
    pub fn hit_max(&self) -> bool {
        self.fail.is_none() && self.pass == Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_slo() {
        let s = Slo::parse("ttft=2000,tpot=100").unwrap();
        assert_eq!(
            s,
            Slo {
                ttft_ms: Some(2000.0),
                tpot_ms: Some(100.0)
            }
        );
        assert_eq!(Slo::parse("tpot=50ms").unwrap().tpot_ms, Some(50.0));
        assert!(Slo::parse("").is_err());
        assert!(Slo::parse("ttft=-1").is_err());
        assert!(Slo::parse("e2e=5").is_err());
        assert!(Slo::parse("ttft").is_err());
    }

    #[test]
    fn slo_met() {
        let s = Slo {
            ttft_ms: Some(2000.0),
            tpot_ms: Some(100.0),
        };
        assert!(s.met(2000.0, Some(100.0)));
        assert!(!s.met(2000.1, Some(10.0)));
        assert!(!s.met(10.0, Some(100.1)));
        assert!(s.met(10.0, None));
    }

    /// A fake server: latency is a pure function of the number of concurrent users.
    /// TTFT grows 150 ms per user (a queue of prefills), TPOT 10 ms + 3 ms per user (a batch
    /// that slows as it grows). Under ttft <= 2000 and tpot <= 100 the limits are
    /// 150c <= 2000 -> c <= 13 and 10 + 3c <= 100 -> c <= 30: capacity 13.
    fn fake(c: usize) -> (f64, f64) {
        (150.0 * c as f64, 10.0 + 3.0 * c as f64)
    }

    fn search(slo: Slo, max: usize) -> (Option<usize>, Vec<usize>, bool) {
        let mut s = CapacitySearch::new(max);
        let mut probes = Vec::new();
        while let Some(c) = s.next_probe() {
            assert!(!probes.contains(&c), "probed {c} twice");
            probes.push(c);
            let (ttft, tpot) = fake(c);
            s.record(c, slo.met(ttft, Some(tpot)));
        }
        (s.capacity(), probes, s.hit_max())
    }

    #[test]
    fn capacity_against_fake_latency_model() {
        let slo = Slo {
            ttft_ms: Some(2000.0),
            tpot_ms: Some(100.0),
        };
        let (cap, probes, hit) = search(slo, 1024);
        assert_eq!(cap, Some(13));
        assert!(!hit);
        // Doubling 1..16 (16 fails), then bisection 12 (pass), 14 (fail), 13 (pass).
        assert_eq!(probes, vec![1, 2, 4, 8, 16, 12, 14, 13]);
        // TPOT binds when TTFT is loose: 10 + 3c <= 100 -> 30.
        let (cap, _, _) = search(
            Slo {
                ttft_ms: None,
                tpot_ms: Some(100.0),
            },
            1024,
        );
        assert_eq!(cap, Some(30));
    }

    #[test]
    fn capacity_edges() {
        // Nothing passes: even one user misses a 100 ms TTFT (150 ms).
        let (cap, probes, _) = search(
            Slo {
                ttft_ms: Some(100.0),
                tpot_ms: None,
            },
            64,
        );
        assert_eq!((cap, probes), (None, vec![1]));
        // Everything passes up to the cap: stops at max and says so.
        let (cap, probes, hit) = search(
            Slo {
                ttft_ms: Some(1e9),
                tpot_ms: None,
            },
            20,
        );
        assert_eq!(cap, Some(20));
        assert!(hit);
        assert_eq!(probes, vec![1, 2, 4, 8, 16, 20]);
    }
}
