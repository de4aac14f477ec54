//! Large host allocations backed by transparent huge pages.
//!
//! A fresh anonymous allocation is committed by the kernel one page fault at
//! a time; with 4 KiB pages the faults (and their memory-cgroup charging), not
//! the copying, were most of a model's load and all of its KV pool's start-up.
//! `madvise(MADV_HUGEPAGE)` (honoured when THP is `always` or `madvise`, the
//! common defaults) commits 2 MiB per fault instead, and the matmul and
//! attention loops that stream these buffers miss the TLB less. llama.cpp
//! avoids the faults by computing on the file mapping itself; our kernels use
//! their own layouts, so they pay one copy, made cheap here.

/// An empty vector with room for `capacity` elements, its pages advised to be
/// huge before anything is written to them.
pub(crate) fn vec_with_huge_pages<T>(capacity: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(capacity);
    let spare = v.spare_capacity_mut();
    advise(spare.as_mut_ptr() as usize, std::mem::size_of_val(spare));
    v
}

/// `n` zeros, committed on first write (or by [`commit_now`]),
/// in huge pages where the kernel allows.
pub(crate) fn zeroed_with_huge_pages<T: Clone + Default>(n: usize) -> Vec<T> {
    // `vec![0; n]` of a primitive this size is a fresh zero-filled mapping
    // (calloc) whose pages are not touched yet, so the advice still applies.
    let mut v = vec![T::default(); n];
    advise(v.as_mut_ptr() as usize, std::mem::size_of_val(v.as_slice()));
    v
}

/// Commit the pages of these buffers (`(address, bytes)`) now, in
/// parallel, with `madvise(MADV_POPULATE_WRITE)` (Linux 5.14+): the kernel
/// faults them in, writable, without touching their contents. A KV pool is
/// thus reserved at start-up, as llama.cpp and vLLM reserve theirs, instead
/// of growing while serving; in huge pages (see [`zeroed_with_huge_pages`])
/// this costs the zeroing alone (tens of milliseconds for 512 MiB), not
/// 131072 faults. Where the kernel lacks the advice, pages are committed on
/// first write instead.
pub(crate) fn commit_now(buffers: &[(usize, usize)]) {
    #[cfg(target_os = "linux")]
    crate::parallel::for_ranges(buffers.len(), |range| {
        // SAFETY: a plain query.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        for &(start, len) in &buffers[range] {
            // madvise wants a page-aligned start: round down to the page
            // holding the buffer's first byte (the kernel rounds the end up).
            let page = start & !(page_size - 1);
            // SAFETY: advice over the pages of live allocations owned by the
            // caller (and the neighbours sharing their first and last page);
            // it commits them without changing any contents.
            unsafe {
                libc::madvise(
                    page as *mut libc::c_void,
                    len + (start - page),
                    libc::MADV_POPULATE_WRITE,
                );
            }
        }
    });
    #[cfg(not(target_os = "linux"))]
    let _ = buffers;
}

/// Advice only: on failure, for small buffers, or off Linux, the memory
/// stays on ordinary pages.
fn advise(start: usize, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let aligned_start = start.next_multiple_of(HUGE);
        let aligned_end = (start + len) / HUGE * HUGE;
        if aligned_end > aligned_start {
            // SAFETY: the range lies inside an allocation the caller owns
            // mutably; MADV_HUGEPAGE changes how its pages are backed, not
            // their contents.
            unsafe {
                libc::madvise(
                    aligned_start as *mut libc::c_void,
                    aligned_end - aligned_start,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advised_vectors_hold_what_is_written() {
        let mut v = vec_with_huge_pages::<u8>(5 << 20);
        assert!(v.is_empty() && v.capacity() >= 5 << 20);
        v.extend((0..5 << 20).map(|i| i as u8));
        assert!(v.iter().enumerate().all(|(i, &b)| b == i as u8));
        let z = zeroed_with_huge_pages::<f32>(3 << 20);
        assert!(z.len() == 3 << 20 && z.iter().all(|&x| x == 0.0));
        assert!(vec_with_huge_pages::<f32>(0).is_empty());
    }
}
