//! Keeping freed memory for the next batch.
//!
//! A batch allocates and frees tens of megabytes: fetched records, parsed items, the state's
//! changes. glibc's allocator gives freed memory back to the system once enough of it lies free
//! at the top of a heap, and serves large blocks from fresh mappings, so the next batch takes the
//! same memory afresh: a page fault per 4 KiB page, thousands a batch (measured on the
//! clickstream benchmark: about 3,500 a 100,000-click batch, 1,000 with these settings, and
//! 3-6 ms less processing per batch). Allocation-heavy services usually answer this with another
//! allocator (jemalloc, mimalloc); those are C, so sluice sets glibc's own thresholds instead.

/// Tells the C library's allocator (glibc) to keep freed memory for reuse rather than give it
/// back to the system after every batch: blocks up to 32 MiB come from its heaps, which grow
/// 64 MiB at a time and are trimmed only once 1 GiB of them lies free. The process's resident
/// size then stays near its peak. Process-wide: call it once, at start (the `sluice` binary and
/// the benchmarks do). Returns whether the settings took: false with another C library or on
/// another system, where it does nothing.
///
/// ```
/// let kept = sluice_stream::keep_freed_memory();
/// assert_eq!(kept, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        [(libc::M_MMAP_THRESHOLD, 32 << 20), (libc::M_TOP_PAD, 64 << 20), (libc::M_TRIM_THRESHOLD, 1 << 30)]
            .into_iter()
            .all(|(param, value)| set(param, value))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set(param: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: mallopt takes two integers and changes the allocator's settings under the
    // allocator's own lock; it touches no memory of ours.
    unsafe { libc::mallopt(param, value) == 1 }
}
