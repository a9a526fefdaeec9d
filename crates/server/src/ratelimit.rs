//! Optional per-key rate limit (`--rate-limit N/s`): a token bucket per API key (one shared bucket
//! when the server has no keys). A spent bucket answers 429 with `Retry-After`.
//!
//! Runs after authentication, so only configured keys ever get a bucket: the map stays as small
//! as the key list. Keys are held hashed (SipHash with a random per-process key), never logged.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::AppState;

/// Requests per second and the burst a key may spend at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: f64,
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    /// `10/s`, `600/m`, `10` (per second); an optional `:burst` (`10/s:40`), else burst = rate
    /// (at least 1).
    fn from_str(s: &str) -> Result<Self, String> {
        let (rate, burst) = match s.split_once(':') {
            Some((r, b)) => (r, Some(b)),
            None => (s, None),
        };
        let (num, unit) = rate.split_once('/').unwrap_or((rate, "s"));
        let per = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            u => {
                return Err(format!(
                    "unknown rate unit {u:?} in {s:?} (use /s, /m or /h)"
                ))
            }
        };
        let n: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("bad rate {s:?} (e.g. 10/s, 600/m, 5/s:20)"))?;
        let per_sec = n / per;
        if !(per_sec.is_finite() && per_sec > 0.0) {
            return Err(format!("a rate limit must be > 0. Given: {s}"));
        }
        let burst = match burst {
            Some(b) => b
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|b| b.is_finite() && *b >= 1.0)
                .ok_or_else(|| format!("the burst must be a number >= 1. Given: {s}"))?,
            None => n.max(1.0),
        };
        Ok(RateLimit { per_sec, burst })
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every key.
pub struct Limiter {
    limit: RateLimit,
    hasher: RandomState,
    buckets: Mutex<HashMap<u64, Bucket>>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            hasher: RandomState::new(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket; `Err(wait)` when it is empty.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let h = self.hasher.hash_one(key);
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = map.entry(h).or_insert(Bucket {
            tokens: self.limit.burst,
            at: now,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * self.limit.per_sec).min(self.limit.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - b.tokens) / self.limit.per_sec,
            ))
        }
    }
}

pub async fn rate_limit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(limiter) = &s.limiter else {
        return next.run(req).await;
    };
    let key = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match limiter.check(key, Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(wait) => ApiError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        let r: RateLimit = "10/s".parse().unwrap();
        assert_eq!((r.per_sec, r.burst), (10.0, 10.0));
        let r: RateLimit = "120/m:5".parse().unwrap();
        assert_eq!((r.per_sec, r.burst), (2.0, 5.0));
        let r: RateLimit = "0.5".parse().unwrap();
        assert_eq!((r.per_sec, r.burst), (0.5, 1.0));
        for bad in ["0/s", "-1/s", "x/s", "1/y", "1/s:0", "nan", "inf/s"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_empties_refills_and_keys_are_apart() {
        let l = Limiter::new(RateLimit {
            per_sec: 2.0,
            burst: 2.0,
        });
        let t0 = Instant::now();
        assert!(l.check("a", t0).is_ok());
        assert!(l.check("a", t0).is_ok());
        let wait = l.check("a", t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(l.check("b", t0).is_ok(), "another key has its own bucket");
        assert!(l.check("a", t0 + Duration::from_millis(500)).is_ok());
        assert!(l.check("a", t0 + Duration::from_millis(500)).is_err());
        // A long pause refills only up to the burst.
        let t9 = t0 + Duration::from_secs(9);
        assert!(l.check("a", t9).is_ok());
        assert!(l.check("a", t9).is_ok());
        assert!(l.check("a", t9).is_err());
    }
}
