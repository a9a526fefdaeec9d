//! Async scheduling's input feed: a step planned before the previous step's tokens were back
//! takes some of its input tokens from that step's result, which stays on the device. The step's
//! upload carries one row map (`StepLayout::feed`): row `i` keeps its uploaded token when
//! `feed[i] < 0`, else takes the token the previous step sampled at its logits row `feed[i]`.
//! `feed_tokens` applies it before the embedding reads the tokens; [`feed_rows`] is its CPU twin
//! and [`check_feed`] what the host checks before the upload (the kernel trusts the indices).

use cudarc::driver::PushKernelArg;

use super::kernels::ROW_THREADS;
use super::launch::{check, grid};
use super::{Gpu, GpuBuf, Result};

/// The kernel's CUDA C, appended to [`super::kernels::SOURCE`].
macro_rules! feed_source {
    () => {
        r#"
/* Async scheduling: row i of the step takes the token the previous step sampled at its logits
   row feed[i] (>= 0, below that step's rows: checked on the host), or keeps tokens[i] (< 0).
   One thread per row; grid ceil(rows / ROW_THREADS). Captured with the decode graphs. */
extern "C" __global__ void feed_tokens(unsigned int* __restrict__ tokens,
                                       const int* __restrict__ feed,
                                       const unsigned int* __restrict__ prev, int rows) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows) {
        int src = feed[i];
        if (src >= 0) tokens[i] = prev[src];
    }
}
"#
    };
}
pub(crate) use feed_source;

/// The CPU twin of `feed_tokens`: `tokens[i] = prev[feed[i]]` where `feed[i] >= 0`.
pub fn feed_rows(tokens: &mut [u32], feed: &[i32], prev: &[u32]) {
    for (t, &f) in tokens.iter_mut().zip(feed) {
        if let Ok(src) = usize::try_from(f) {
            *t = prev[src];
        }
    }
}

/// A step's row map against its `rows` rows and the `prev_rows` logits rows of the previous
/// step: empty (nothing fed) or one entry per row, each negative or below `prev_rows`.
pub fn check_feed(feed: &[i32], rows: usize, prev_rows: usize) -> Result<(), String> {
    if !feed.is_empty() && feed.len() != rows {
        return Err(format!("a feed of {} entries for {rows} rows", feed.len()));
    }
    match feed.iter().find(|&&f| f >= 0 && f as usize >= prev_rows) {
        Some(f) => Err(format!(
            "row fed from logits row {f} of a previous step of {prev_rows}"
        )),
        None => Ok(()),
    }
}

impl Gpu {
    /// Applies the row map `feed` (rows,) to `tokens` (rows,) from `prev`, the previous step's
    /// sampled tokens (see [`feed_rows`]). Every index was checked against `prev`'s filled rows
    /// ([`check_feed`]).
    pub fn feed_tokens(
        &self,
        tokens: &mut GpuBuf<u32>,
        feed: &GpuBuf<i32>,
        prev: &GpuBuf<u32>,
        rows: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        check(
            tokens.len() >= rows && feed.len() >= rows && rows <= i32::MAX as usize,
            "feed_tokens",
        )?;
        let (t, f, p) = (self.ptr(tokens), self.ptr(feed), self.ptr(prev));
        let n = rows as i32;
        let mut b = self.stream.launch_builder(&self.k.feed_tokens);
        b.arg(&t).arg(&f).arg(&p).arg(&n);
        // SAFETY: sizes checked above; indices into `prev` checked by the caller.
        unsafe { b.launch(grid(rows.div_ceil(ROW_THREADS as usize), 1, ROW_THREADS)) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fed rows take the previous step's token at their index, the others keep theirs.
    #[test]
    fn the_twin_feeds_rows_from_the_previous_step() {
        let prev = [70, 71, 72, 73];
        let mut tokens = [1, 2, 3, 4, 5];
        feed_rows(&mut tokens, &[-1, 3, 0, -1, 3], &prev);
        assert_eq!(tokens, [1, 73, 70, 4, 73]);
        // No map: nothing changes.
        feed_rows(&mut tokens, &[], &prev);
        assert_eq!(tokens, [1, 73, 70, 4, 73]);
    }

    #[test]
    fn maps_are_checked_against_both_steps() {
        assert!(check_feed(&[], 5, 0).is_ok());
        assert!(check_feed(&[-1, 2, 0], 3, 3).is_ok());
        assert!(check_feed(&[-1, -1], 2, 0).is_ok());
        assert!(
            check_feed(&[-1, 3, 0], 3, 3).is_err(),
            "past the previous step"
        );
        assert!(check_feed(&[0], 2, 1).is_err(), "one entry per row");
    }
}
