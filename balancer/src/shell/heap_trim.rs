//! Hands freed heap memory back to the kernel now and then.
//!
//! glibc's allocator returns memory on `free` only from the top of a heap (past
//! `M_TRIM_THRESHOLD`); pages freed in the middle of an arena stay in the process. After a spike
//! of connections (each with its buffers) is over, those pages are free but still counted in
//! RSS, one high-water mark per worker thread's arena: the soak (bench/BENCHMARKS.md) saw RSS
//! rise only at spikes larger than any before and never fall. `malloc_trim(0)` walks every
//! arena and gives whole free pages back (`madvise(MADV_DONTNEED)`; glibc >= 2.8, malloc(3)).
//! It holds each arena's lock while it walks it, so it runs on the blocking pool, not on a
//! worker, and only every [`INTERVAL`]. Other allocators (musl) return memory on their own;
//! there it is a no-op.

use std::time::{Duration, Instant};

/// How often the heap is trimmed: rare enough that its cost (a walk of the free lists, under
/// each arena's lock in turn) is noise, often enough that a spike's memory comes back within
/// seconds of its end.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// Gives free heap pages back to the kernel; returns whether any were, and how long it took.
pub(crate) fn trim() -> (bool, Duration) {
    let start = Instant::now();
    let released = release();
    (released, start.elapsed())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release() -> bool {
    // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks each arena).
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() -> bool {
    false
}

/// Trims on the blocking pool and logs what it cost (debug: it runs every ten seconds).
pub(crate) async fn trim_in_background() {
    match tokio::task::spawn_blocking(trim).await {
        Ok((released, took)) => {
            tracing::debug!(released, micros = took.as_micros() as u64, "heap trimmed")
        }
        Err(e) => tracing::warn!(error = %e, "heap trim failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory freed in the middle of the heap (a big block allocated before a small one that
    /// stays, so the free pages are not at the top) is given back: glibc reports a release.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn free_pages_in_the_middle_of_the_heap_are_released() {
        // Below the mmap threshold (128 KiB by default) blocks come from the heap itself.
        let blocks: Vec<Vec<u8>> = (0..512).map(|i| vec![i as u8; 64 * 1024]).collect();
        let keep = Box::new([1u8; 64]);
        drop(blocks);
        let (released, _) = trim();
        assert!(
            released,
            "32 MiB freed below a live block, and nothing was released"
        );
        assert_eq!(keep[0], 1);
    }
}
