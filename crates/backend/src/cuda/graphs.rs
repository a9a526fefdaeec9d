//! Batch-size buckets for CUDA graphs of decode steps.
//!
//! A decode step (one new token per sequence) is the same sequence of launches for a given number
//! of rows, so it is captured once per bucket and replayed; a batch of `n` rows runs the graph of
//! the smallest bucket `>= n`, its extra rows padded (they write a scratch KV slot and their logits
//! are dropped). Buckets follow vLLM's default capture sizes: 1, 2, 4, then every 8 up to 256,
//! then every 16 up to the largest batch.
//!
//! A bucket's first step runs eagerly ([`GraphStep::WarmUp`]): lazy initialization (cuBLAS picking
//! and loading its kernels for that shape, module loading, first-touch allocations) happens
//! outside a capture, where it would fail or be recorded. Its second step is captured
//! ([`GraphStep::Capture`]), every later one replayed.

/// Capture sizes up to and including `max_batch` (which is always the last one).
pub fn buckets(max_batch: usize) -> Vec<usize> {
    if max_batch == 0 {
        return Vec::new();
    }
    let mut out: Vec<usize> = [1, 2, 4]
        .into_iter()
        .chain((8..=256).step_by(8))
        .chain((272..).step_by(16))
        .take_while(|&b| b < max_batch)
        .collect();
    out.push(max_batch);
    out
}

/// The bucket a batch of `n` rows runs in: the smallest `>= n`; `None` when `n` is 0 or larger
/// than every bucket (the step then runs without a graph).
pub fn bucket_for(buckets: &[usize], n: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let i = buckets.partition_point(|&b| b < n);
    buckets.get(i).copied()
}

/// Where one bucket stands.
#[derive(Debug)]
enum Slot<G> {
    /// Never run.
    Cold,
    /// Run once eagerly: the next step is captured.
    Warm,
    Captured(G),
}

/// What to do with a step of `n` rows.
#[derive(Debug, PartialEq)]
pub enum GraphStep<'a, G> {
    /// No bucket holds it (0 rows, or more than the largest): run without a graph.
    Eager,
    /// The bucket's first step: run it eagerly, then [`GraphCache::warmed`].
    WarmUp(usize),
    /// Capture this step into the bucket's graph, then [`GraphCache::insert`] and launch it.
    Capture(usize),
    Replay(usize, &'a G),
}

/// Which graphs exist: one per bucket, captured on its second use after an eager first.
#[derive(Debug)]
pub struct GraphCache<G> {
    sizes: Vec<usize>,
    graphs: Vec<Slot<G>>,
}

impl<G> GraphCache<G> {
    pub fn new(max_batch: usize) -> Self {
        let sizes = buckets(max_batch);
        let graphs = sizes.iter().map(|_| Slot::Cold).collect();
        Self { sizes, graphs }
    }

    /// What a decode step of `n` rows does now.
    pub fn step(&self, n: usize) -> GraphStep<'_, G> {
        let Some(b) = bucket_for(&self.sizes, n) else {
            return GraphStep::Eager;
        };
        match &self.graphs[self.sizes.partition_point(|&s| s < b)] {
            Slot::Cold => GraphStep::WarmUp(b),
            Slot::Warm => GraphStep::Capture(b),
            Slot::Captured(g) => GraphStep::Replay(b, g),
        }
    }

    /// `bucket` ran its eager warm-up step.
    pub fn warmed(&mut self, bucket: usize) {
        if let Ok(i) = self.sizes.binary_search(&bucket) {
            if matches!(self.graphs[i], Slot::Cold) {
                self.graphs[i] = Slot::Warm;
            }
        }
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The bucket of `n` rows and its graph, if captured.
    pub fn lookup(&self, n: usize) -> Option<(usize, Option<&G>)> {
        let b = bucket_for(&self.sizes, n)?;
        let i = self.sizes.binary_search(&b).ok()?;
        let g = match &self.graphs[i] {
            Slot::Captured(g) => Some(g),
            _ => None,
        };
        Some((b, g))
    }

    /// Stores the graph captured for `bucket`.
    pub fn insert(&mut self, bucket: usize, g: G) {
        if let Ok(i) = self.sizes.binary_search(&bucket) {
            self.graphs[i] = Slot::Captured(g);
        }
    }

    /// Drops every graph (buffers they point into were replaced); each bucket warms up again,
    /// its buffers being new.
    pub fn clear(&mut self) {
        self.graphs.iter_mut().for_each(|g| *g = Slot::Cold);
    }

    pub fn captured(&self) -> usize {
        self.graphs
            .iter()
            .filter(|g| matches!(g, Slot::Captured(_)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_sizes() {
        assert_eq!(buckets(0), Vec::<usize>::new());
        assert_eq!(buckets(1), vec![1]);
        assert_eq!(buckets(3), vec![1, 2, 3]);
        assert_eq!(buckets(16), vec![1, 2, 4, 8, 16]);
        assert_eq!(buckets(20), vec![1, 2, 4, 8, 16, 20]);
        let b = buckets(256);
        assert_eq!(b.len(), 3 + 32);
        assert_eq!(&b[..5], &[1, 2, 4, 8, 16]);
        assert_eq!(*b.last().unwrap(), 256);
        let b = buckets(300);
        assert_eq!(&b[b.len() - 4..], &[256, 272, 288, 300]);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn smallest_bucket_that_fits() {
        let b = buckets(64);
        assert_eq!(bucket_for(&b, 0), None);
        assert_eq!(bucket_for(&b, 1), Some(1));
        assert_eq!(bucket_for(&b, 3), Some(4));
        assert_eq!(bucket_for(&b, 5), Some(8));
        assert_eq!(bucket_for(&b, 8), Some(8));
        assert_eq!(bucket_for(&b, 9), Some(16));
        assert_eq!(bucket_for(&b, 64), Some(64));
        assert_eq!(bucket_for(&b, 65), None);
        for n in 1..=64 {
            let got = bucket_for(&b, n).unwrap();
            assert!(got >= n && got - n < 8, "{n} -> {got}");
        }
    }

    /// Each bucket: one eager step, one captured step, then replays; sizes that share a bucket
    /// share its state; a batch past the largest bucket always runs eagerly; clearing starts
    /// every bucket over.
    #[test]
    fn each_bucket_warms_up_eagerly_before_capture() {
        let mut c: GraphCache<String> = GraphCache::new(16);
        let mut log = Vec::new();
        for n in [3, 4, 1, 3, 17, 1, 4, 0, 2, 4] {
            let done = match c.step(n) {
                GraphStep::Eager => format!("{n}:eager"),
                GraphStep::WarmUp(b) => {
                    c.warmed(b);
                    format!("{n}:warm{b}")
                }
                GraphStep::Capture(b) => {
                    c.insert(b, format!("g{b}"));
                    format!("{n}:capture{b}")
                }
                GraphStep::Replay(b, g) => {
                    assert_eq!(*g, format!("g{b}"));
                    format!("{n}:replay{b}")
                }
            };
            log.push(done);
        }
        assert_eq!(
            log,
            [
                "3:warm4",
                "4:capture4",
                "1:warm1",
                "3:replay4",
                "17:eager",
                "1:capture1",
                "4:replay4",
                "0:eager",
                "2:warm2",
                "4:replay4"
            ]
        );
        assert_eq!(c.captured(), 2);
        // `warmed` never undoes a capture.
        c.warmed(4);
        assert_eq!(c.step(4), GraphStep::Replay(4, &"g4".to_string()));
        c.clear();
        assert_eq!(c.captured(), 0);
        assert_eq!(c.step(4), GraphStep::WarmUp(4));
    }

    #[test]
    fn cache_captures_once_per_bucket() {
        let mut c: GraphCache<&str> = GraphCache::new(32);
        assert_eq!(c.lookup(3), Some((4, None)));
        c.insert(4, "g4");
        assert_eq!(c.lookup(3), Some((4, Some(&"g4"))));
        assert_eq!(c.lookup(4), Some((4, Some(&"g4"))));
        assert_eq!(c.lookup(5), Some((8, None)));
        assert_eq!(c.lookup(33), None);
        assert_eq!(c.captured(), 1);
        c.clear();
        assert_eq!(c.captured(), 0);
    }
}
