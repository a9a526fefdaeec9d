//! Summary statistics over latency samples.
//!
//! Percentiles use linear interpolation between closest ranks, numpy's default
//! (`np.percentile(x, q, method="linear")`): over the sorted samples `x[0..n]` the rank is
//! `h = (n - 1) * q / 100` and the value is `x[⌊h⌋] + (h - ⌊h⌋) * (x[⌊h⌋ + 1] - x[⌊h⌋])`.
//! vLLM's `bench serve` reports its percentiles the same way, so figures compare directly.

use serde::{Deserialize, Serialize};

/// The `q`-th percentile (0..=100) of `sorted` (ascending), linear interpolation; `None` when empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let h = (n - 1) as f64 * q.clamp(0.0, 100.0) / 100.0;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// Mean and percentiles of one latency metric, in milliseconds. All zero when `count` is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    /// Number of samples.
    pub count: usize,
}

impl Summary {
    /// Summarizes `values` (any order; NaNs are dropped).
    pub fn of(values: &[f64]) -> Summary {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        let p = |q| percentile(&v, q).unwrap_or(0.0);
        Summary {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: p(50.0),
            p90: p(90.0),
            p99: p(99.0),
            min: v[0],
            max: v[v.len() - 1],
            count: v.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentile_by_hand() {
        // n = 4: h = 3q/100. p50: h=1.5 -> 2 + 0.5*(3-2) = 2.5; p90: h=2.7 -> 3 + 0.7*1 = 3.7;
        // p99: h=2.97 -> 3.97; p0 = 1, p100 = 4.
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!(close(percentile(&x, 50.0).unwrap(), 2.5));
        assert!(close(percentile(&x, 90.0).unwrap(), 3.7));
        assert!(close(percentile(&x, 99.0).unwrap(), 3.97));
        assert!(close(percentile(&x, 0.0).unwrap(), 1.0));
        assert!(close(percentile(&x, 100.0).unwrap(), 4.0));
        // n = 11, 0..=100 step 10: h = q/10 exactly, p90 = 90, p99: h=9.9 -> 90 + 0.9*10 = 99.
        let y: Vec<f64> = (0..=10).map(|i| i as f64 * 10.0).collect();
        assert!(close(percentile(&y, 90.0).unwrap(), 90.0));
        assert!(close(percentile(&y, 99.0).unwrap(), 99.0));
        assert!(close(percentile(&y, 25.0).unwrap(), 25.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert!(close(percentile(&[7.0], 99.0).unwrap(), 7.0));
    }

    #[test]
    fn summary_unsorted_and_skewed() {
        // Sorted: 10, 20, 30, 40, 1000 (n=5, h = q/25).
        // mean = 1100/5 = 220; p50: h=2 -> 30; p90: h=3.6 -> 40 + 0.6*960 = 616;
        // p99: h=3.96 -> 40 + 0.96*960 = 961.6.
        let s = Summary::of(&[40.0, 1000.0, 10.0, 30.0, 20.0, f64::NAN]);
        assert_eq!(s.count, 5);
        assert!(close(s.mean, 220.0));
        assert!(close(s.p50, 30.0));
        assert!(close(s.p90, 616.0));
        assert!(close(s.p99, 961.6));
        assert!(close(s.min, 10.0) && close(s.max, 1000.0));
        assert_eq!(Summary::of(&[]), Summary::default());
    }
}
