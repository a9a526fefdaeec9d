//! Stop strings over a stream of text deltas: text that might be the start of a stop string is held
//! back, so no part of a stop string ever reaches the client.

#[derive(Debug, Default)]
pub struct StopChecker {
    stops: Vec<String>,
    /// Text received but not yet released: a suffix that is a prefix of some stop string.
    held: String,
}

impl StopChecker {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds a delta; returns the text safe to release and whether a stop string was hit (in which
    /// case the released text ends right before it).
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (delta.to_string(), false);
        }
        self.held.push_str(delta);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Longest suffix of `held` that is a proper prefix of a stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&n| s.is_char_boundary(n) && self.held.ends_with(&s[..n]))
                    .take(1)
            })
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// Releases whatever is held (the stream ended without a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut c = StopChecker::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            let (s, hit) = c.push(d);
            out.push_str(&s);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&c.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_deltas_never_leaks() {
        let mut c = StopChecker::new(vec!["STOP".into()]);
        assert_eq!(c.push("abc ST"), ("abc ".into(), false));
        assert_eq!(c.push("O"), ("".into(), false));
        assert_eq!(c.push("Px"), ("".into(), true));
    }

    #[test]
    fn near_miss_is_released_and_earliest_stop_wins() {
        assert_eq!(run(&["STOP"], &["ST", "OX", "!"]), ("STOX!".into(), false));
        assert_eq!(run(&["b", "cd"], &["a", "xcdyb"]), ("ax".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["é!"], &["aé", "é!"]), ("aé".into(), true));
    }
}
