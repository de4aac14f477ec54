//! One thread pool for a whole CPU step.
//!
//! Every parallel region of a CPU forward pass (our quantized matmuls, the
//! paged attention, the fused activation) runs on this pool: workers that
//! spin briefly between regions and then park, with the calling thread
//! taking part, as llama.cpp's ggml thread pool does between graph nodes.
//! A step issues a few hundred short regions; on rayon's pool each one was
//! a futex wake-up and a sleep.
//!
//! Unlike a barrier pool (candle's, which this replaced), a worker *joins*
//! a region only while work is left in it, and the caller waits only for
//! the workers that joined: when another process holds a core and a worker
//! is not running, the caller takes every chunk itself and goes on, instead
//! of spinning until the scheduler gets round to that worker (on two busy
//! cores that turned a 3 s generation into 77 s). The caller's own wait for
//! joined workers yields the CPU after a short spin.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;

/// Spins (each a `spin_loop` hint) before a waiting thread parks or yields:
/// about the gap between two regions of a decode step.
const SPINS: u32 = 20_000;

/// The region word: generation (high 32 bits), closed flag (bit 31), and
/// the number of workers inside it (low 31 bits).
const CLOSED: u64 = 1 << 31;
const ACTIVE: u64 = CLOSED - 1;

fn word(gen: u64, closed: bool, active: u64) -> u64 {
    (gen << 32) | if closed { CLOSED } else { 0 } | active
}

/// One region's work: `call(data, range)` over `chunks` chunks of `0..n`
/// (the cursor counts chunks, so it cannot wrap whatever `n` is).
struct Job {
    call: unsafe fn(*const (), std::ops::Range<usize>),
    data: *const (),
    n: usize,
    chunk: usize,
    chunks: usize,
}

struct Shared {
    /// Bumped (Release) after a region's job and word are written.
    gen: AtomicU64,
    region: AtomicU64,
    cursor: AtomicUsize,
    job: UnsafeCell<Job>,
    workers: OnceLock<Vec<Thread>>,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

// SAFETY: `job` is written only by the caller holding `Pool::caller` while
// no worker is inside a region (the previous region closed with no worker
// left), and read by workers only after joining the current region.
unsafe impl Sync for Shared {}

struct Pool {
    shared: &'static Shared,
    /// One region at a time; a second caller (another model's engine
    /// thread) runs its region alone instead of waiting.
    caller: Mutex<()>,
    threads: usize,
}

thread_local! {
    /// Set on pool workers and on a caller inside a region: nested regions
    /// run inline.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// Threads to use: `RAYON_NUM_THREADS` (as candle and the benches read it),
/// else the cores this process may run on.
fn thread_count() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            gen: AtomicU64::new(0),
            region: AtomicU64::new(word(0, true, 0)),
            cursor: AtomicUsize::new(0),
            job: UnsafeCell::new(Job {
                call: |_, _| {},
                data: std::ptr::null(),
                n: 0,
                chunk: 1,
                chunks: 0,
            }),
            workers: OnceLock::new(),
            panic: Mutex::new(None),
        }));
        let threads = thread_count();
        let handles: Vec<Thread> = (1..threads)
            .filter_map(|i| {
                std::thread::Builder::new()
                    .name(format!("switchyard-cpu-{i}"))
                    .spawn(move || worker(shared))
                    .ok()
                    .map(|h| h.thread().clone())
            })
            .collect();
        let threads = handles.len() + 1;
        let _ = shared.workers.set(handles);
        Pool {
            shared,
            caller: Mutex::new(()),
            threads,
        }
    })
}

/// Runs the current job's chunks until none is left.
///
/// # Safety
/// The caller is inside the region (joined, or its caller), so the job is
/// alive.
unsafe fn drain(shared: &Shared) {
    let job = &*shared.job.get();
    loop {
        let i = shared.cursor.fetch_add(1, Ordering::Relaxed);
        if i >= job.chunks {
            break;
        }
        let start = i * job.chunk;
        (job.call)(job.data, start..start + job.chunk.min(job.n - start));
    }
}

/// Leaves a region on drop, so that a worker is never left counted (its
/// caller waits for it) even if `drain` unwinds.
struct Leave(&'static Shared);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.region.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Closes a region on drop and waits for the workers inside it, also when
/// the caller's `drain` unwinds: the job's closure lives on the caller's
/// stack until then.
struct Close(&'static Shared);

impl Drop for Close {
    fn drop(&mut self) {
        IN_POOL.with(|c| c.set(false));
        // Late workers no longer join; wait for those inside.
        let mut w = self.0.region.fetch_or(CLOSED, Ordering::AcqRel) | CLOSED;
        let mut spins = 0u32;
        while w & ACTIVE != 0 {
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            w = self.0.region.load(Ordering::Acquire);
        }
    }
}

fn worker(shared: &'static Shared) {
    IN_POOL.with(|f| f.set(true));
    let mut seen = 0u64;
    loop {
        let mut spins = 0;
        let gen = loop {
            let g = shared.gen.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                // `unpark` before `park` returns at once: no lost wake-up.
                std::thread::park();
            }
        };
        seen = gen;
        // Join only an open region of this generation.
        let mut w = shared.region.load(Ordering::Acquire);
        let joined = loop {
            if w >> 32 != gen & 0xFFFF_FFFF || w & CLOSED != 0 {
                break false;
            }
            match shared
                .region
                .compare_exchange_weak(w, w + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break true,
                Err(now) => w = now,
            }
        };
        if joined {
            let _leave = Leave(shared);
            // SAFETY: joined an open region: its job stays alive until this
            // worker leaves.
            unsafe { drain(shared) };
        }
    }
}

/// Call `f` on disjoint ranges covering `0..n`, in parallel.
///
/// A panic in `f` is caught where it happens and resumed here, after every
/// task has finished and the pool is released, so the pool itself stays
/// usable (the engine's step loop catches a panic of one step and carries
/// on).
pub(crate) fn for_ranges(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    if n == 0 {
        return;
    }
    let pool = pool();
    let inline = IN_POOL.with(|c| c.get()) || pool.threads == 1;
    let guard = if inline {
        None
    } else {
        match pool.caller.try_lock() {
            Ok(g) => Some(g),
            // The lock guards no data that a panic could leave half-done.
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    };
    let Some(guard) = guard else {
        return f(0..n);
    };
    let shared = pool.shared;
    let task = |range: std::ops::Range<usize>| {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(range))) {
            // Keep the first; later ones are forgotten, not dropped (a
            // payload's own `Drop` could panic outside the catch).
            match shared.panic.lock() {
                Ok(mut first) if first.is_none() => *first = Some(payload),
                _ => std::mem::forget(payload),
            }
        }
    };
    unsafe fn call<T: Fn(std::ops::Range<usize>)>(data: *const (), range: std::ops::Range<usize>) {
        (*(data as *const T))(range)
    }
    fn call_for<T: Fn(std::ops::Range<usize>)>(
        _: &T,
    ) -> unsafe fn(*const (), std::ops::Range<usize>) {
        call::<T>
    }
    let gen = shared.gen.load(Ordering::Relaxed) + 1;
    let chunk = n.div_ceil(pool.threads * 8).max(1);
    // SAFETY: the previous region is closed with no worker inside (we
    // waited for that before returning), and we hold the caller lock, so no
    // one reads the job while it is written.
    unsafe {
        *shared.job.get() = Job {
            call: call_for(&task),
            data: &task as *const _ as *const (),
            n,
            chunk,
            chunks: n.div_ceil(chunk),
        };
    }
    shared.cursor.store(0, Ordering::Relaxed);
    shared
        .region
        .store(word(gen & 0xFFFF_FFFF, false, 0), Ordering::Release);
    shared.gen.store(gen, Ordering::Release);
    if let Some(workers) = shared.workers.get() {
        for t in workers {
            t.unpark();
        }
    }
    {
        let _close = Close(shared);
        IN_POOL.with(|c| c.set(true));
        // SAFETY: the region is ours; `task` outlives it (`_close` waits).
        unsafe { drain(shared) };
    }
    let payload = shared.panic.lock().ok().and_then(|mut p| p.take());
    // Release the pool before unwinding: a guard dropped while panicking
    // would poison the caller lock.
    drop(guard);
    if let Some(payload) = payload {
        std::panic::resume_unwind(payload);
    }
}

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
    /// `i < len`, and no other task writes or reads index `i` during the
    /// parallel call.
    #[inline(always)]
    pub(crate) unsafe fn write(&self, i: usize, value: T) {
        debug_assert!(i < self.len);
        *self.base.0.add(i) = value;
    }

    /// `values` at indices `start..start + values.len()`.
    ///
    /// # Safety
    /// As [`SharedOut::write`], for each of those indices (all `< len`).
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
        // Still parallel: a panic used to poison the caller lock (released
        // while unwinding), after which every region ran inline.
        assert!(!super::pool().caller.is_poisoned());
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
