//! Batch-size buckets for CUDA graphs of decode steps.
//!
//! A decode step (one new token per sequence) is the same sequence of launches for a given number
//! of rows, so it is captured once per bucket and replayed; a batch of `n` rows runs the graph of
//! the smallest bucket `>= n`, its extra rows padded (they write a scratch KV slot and their logits
//! are dropped). Buckets follow vLLM's default capture sizes: 1, 2, 4, then every 8 up to 256,
//! then every 16 up to the largest batch.

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

/// Which graphs exist: one per bucket, captured on first use.
#[derive(Debug)]
pub struct GraphCache<G> {
    sizes: Vec<usize>,
    graphs: Vec<Option<G>>,
}

impl<G> GraphCache<G> {
    pub fn new(max_batch: usize) -> Self {
        let sizes = buckets(max_batch);
        let graphs = sizes.iter().map(|_| None).collect();
        Self { sizes, graphs }
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The bucket of `n` rows and its graph, if captured.
    pub fn lookup(&self, n: usize) -> Option<(usize, Option<&G>)> {
        let b = bucket_for(&self.sizes, n)?;
        let i = self.sizes.binary_search(&b).ok()?;
        Some((b, self.graphs[i].as_ref()))
    }

    /// Stores the graph captured for `bucket`.
    pub fn insert(&mut self, bucket: usize, g: G) {
        if let Ok(i) = self.sizes.binary_search(&bucket) {
            self.graphs[i] = Some(g);
        }
    }

    /// Drops every graph (buffers they point into were replaced).
    pub fn clear(&mut self) {
        self.graphs.iter_mut().for_each(|g| *g = None);
    }

    pub fn captured(&self) -> usize {
        self.graphs.iter().filter(|g| g.is_some()).count()
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
