//! How long a request refused for a full queue should wait (its `Retry-After`), from what the
//! engine observes: a queue place frees when a running request finishes, so the estimate is the
//! observed time between finishes while the engine is busy; before any finish has been seen
//! (the first refusals of a burst), the time the running request nearest its end still needs at
//! the observed step time.

use std::time::{Duration, Instant};

/// Weight of the newest observation in the moving averages.
const ALPHA: f64 = 0.2;

fn ewma(avg: &mut Option<f64>, x: f64) {
    *avg = Some(avg.map_or(x, |a| a + ALPHA * (x - a)));
}

#[derive(Debug, Default)]
pub(crate) struct DrainClock {
    /// Moving average of a step's duration, seconds.
    step_s: Option<f64>,
    /// Moving average of the time between finishes while busy, seconds.
    finish_gap_s: Option<f64>,
    /// When the count of finished requests last changed (while busy), and that count.
    last_finish: Option<(Instant, u64)>,
}

impl DrainClock {
    pub fn step(&mut self, dt: Duration) {
        ewma(&mut self.step_s, dt.as_secs_f64());
    }

    /// Called once per engine loop: `finished` counts the requests finished so far, `busy` says
    /// whether any is unfinished (idle time is not a gap between finishes), and
    /// `nearest_tokens_left` is the fewest tokens a running request may still generate.
    /// Returns the estimate in milliseconds, 0 when nothing is known yet.
    pub fn tick(
        &mut self,
        now: Instant,
        finished: u64,
        busy: bool,
        nearest_tokens_left: Option<usize>,
    ) -> u64 {
        match self.last_finish {
            _ if !busy => self.last_finish = None,
            None => self.last_finish = Some((now, finished)),
            Some((t, n)) if finished > n => {
                let gap = now.saturating_duration_since(t).as_secs_f64() / (finished - n) as f64;
                ewma(&mut self.finish_gap_s, gap);
                self.last_finish = Some((now, finished));
            }
            Some(_) => {}
        }
        let by_length = match (self.step_s, nearest_tokens_left) {
            (Some(s), Some(n)) => Some(s * n.max(1) as f64),
            _ => None,
        };
        let secs = self.finish_gap_s.or(by_length).unwrap_or(0.0);
        (secs * 1000.0).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_any_finish_the_nearest_end_at_the_step_time() {
        let mut c = DrainClock::default();
        let t0 = Instant::now();
        assert_eq!(c.tick(t0, 0, true, Some(100)), 0, "no step seen yet");
        c.step(Duration::from_millis(50));
        assert_eq!(c.tick(t0, 0, true, Some(100)), 5000);
        assert_eq!(c.tick(t0, 0, true, None), 0);
    }

    #[test]
    fn finishes_while_busy_set_the_pace_and_idle_time_does_not_count() {
        let mut c = DrainClock::default();
        c.step(Duration::from_millis(10));
        let t0 = Instant::now();
        c.tick(t0, 0, true, Some(1000));
        // Two finishes 4 s later: one place every 2 s.
        assert_eq!(
            c.tick(t0 + Duration::from_secs(4), 2, true, Some(1000)),
            2000
        );
        // Idle for an hour, then busy again: the hour is not a gap.
        c.tick(t0 + Duration::from_secs(5), 2, false, None);
        c.tick(t0 + Duration::from_secs(3600), 2, true, Some(1000));
        let est = c.tick(t0 + Duration::from_secs(3602), 3, true, Some(1000));
        assert_eq!(est, 2000);
    }
}
