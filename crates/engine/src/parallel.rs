//! One thread pool for a whole CPU step.
//!
//! Every parallel region of a CPU forward pass — our quantized matmuls, the
//! paged attention, and candle's own element-wise ops — runs on candle's
//! barrier pool (`candle_core::utils::barrier_pool`): workers that spin
//! between regions (parking only after a pause), with the calling thread
//! taking part, as llama.cpp's ggml thread pool does between graph nodes.
//! A step issues a few hundred short regions; on rayon's pool (which the
//! engine thread entered from outside) each one was a futex wake-up and a
//! sleep, and the two pools handed the same cores back and forth.

/// Call `f(first_row, rows)` on disjoint runs of `row_len`-element rows of
/// `out`, in parallel; every row is handed out exactly once.
pub(crate) fn for_row_runs<T: Send>(
    out: &mut [T],
    row_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if row_len == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / row_len;
    let base = SharedPtr(out.as_mut_ptr());
    for_ranges(rows, |range| {
        let base = &base;
        // SAFETY: the pool's cursor hands out disjoint ranges of `0..rows`,
        // so these slices of `out` (borrowed mutably for this whole call)
        // never overlap, and all of them end before the call returns.
        let run = unsafe {
            std::slice::from_raw_parts_mut(base.0.add(range.start * row_len), range.len() * row_len)
        };
        f(range.start, run);
    });
}

/// Call `f` on disjoint ranges covering `0..n`, in parallel.
///
/// A panic in `f` is caught inside the pool and resumed here, after every
/// task has finished: unwinding through the pool itself would poison its
/// lock and break every later parallel region of the process (candle's own
/// ops included), where the engine's step loop expects to catch a panic of
/// one step and carry on.
pub(crate) fn for_ranges(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let panicked = std::sync::Mutex::new(None);
    candle_core::utils::barrier_pool().execute_chunked(n, |range| {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(range))) {
            if let Ok(mut first) = panicked.lock() {
                first.get_or_insert(payload);
            }
        }
    });
    if let Some(payload) = panicked.into_inner().ok().flatten() {
        std::panic::resume_unwind(payload);
    }
}

/// An output buffer that the tasks of one parallel call write at indices
/// they own (for outputs whose owned parts are not contiguous, such as a
/// token-major matmul output split by weight rows).
pub(crate) struct SharedOut<'a, T> {
    base: SharedPtr<T>,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

impl<'a, T: Send> SharedOut<'a, T> {
    pub(crate) fn new(out: &'a mut [T]) -> Self {
        SharedOut {
            base: SharedPtr(out.as_mut_ptr()),
            len: out.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// # Safety
    /// No other task writes or reads index `i` during the parallel call.
    #[inline(always)]
    pub(crate) unsafe fn write(&self, i: usize, value: T) {
        debug_assert!(i < self.len);
        *self.base.0.add(i) = value;
    }

    /// `values` at indices `start..start + values.len()`.
    ///
    /// # Safety
    /// As [`SharedOut::write`], for each of those indices.
    #[inline(always)]
    pub(crate) unsafe fn write_run(&self, start: usize, values: &[T])
    where
        T: Copy,
    {
        debug_assert!(start + values.len() <= self.len);
        std::ptr::copy_nonoverlapping(values.as_ptr(), self.base.0.add(start), values.len());
    }
}

struct SharedPtr<T>(*mut T);
// SAFETY: used only to hand disjoint sub-slices of one `&mut [T]` to the
// pool's threads (see `for_row_runs`).
unsafe impl<T: Send> Sync for SharedPtr<T> {}

#[cfg(test)]
mod tests {
    /// A panicking task reaches the caller, and the pool still works.
    #[test]
    fn a_panic_is_resumed_and_the_pool_survives() {
        let caught = std::panic::catch_unwind(|| {
            super::for_ranges(64, |range| assert!(!range.contains(&40), "task panics"))
        });
        assert!(caught.is_err());
        let mut out = vec![0u8; 64];
        super::for_row_runs(&mut out, 1, |_, run| run.fill(1));
        assert!(out.iter().all(|&v| v == 1));
    }

    #[test]
    fn every_row_is_visited_once() {
        for (rows, row_len) in [(1, 3), (7, 1), (1000, 5), (0, 4)] {
            let mut out = vec![0u32; rows * row_len];
            super::for_row_runs(&mut out, row_len, |first, run| {
                for (i, row) in run.chunks_mut(row_len).enumerate() {
                    row.iter_mut().for_each(|v| *v += (first + i) as u32 + 1);
                }
            });
            let want: Vec<u32> = (0..rows)
                .flat_map(|r| vec![r as u32 + 1; row_len])
                .collect();
            assert_eq!(out, want);
        }
    }
}
