//! Allocator settings for a long-running proxy.
//!
//! glibc's malloc gives freed memory at the top of its heap back to the
//! kernel as soon as more than its trim threshold is free (128 KiB, raised
//! dynamically only by large allocations). Under a few hundred keep-alive
//! connections the heap top rises and falls by more than that many times a
//! second, so memory went back to the kernel and was faulted in again:
//! 0.036 page faults and about 2 µs of kernel time per request at 256
//! connections, 8 % of throughput (bench/RESULTS.md). Keeping up to
//! [`TRIM_THRESHOLD`] free and growing the heap [`TOP_PAD`] at a time
//! removes the churn; what a burst leaves free is kept for the next one, up
//! to that bound.

/// Free memory at the heap top that is kept rather than returned.
pub const TRIM_THRESHOLD: usize = 32 << 20;
/// Extra memory asked of the kernel each time the heap grows.
pub const TOP_PAD: usize = 4 << 20;

/// Applies the settings. Call first thing in `main`, before other threads
/// start. A no-op on other C libraries (musl has no such knobs).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let as_int = |v: usize| libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets allocator parameters; it takes the
        // allocator's own lock and is sound to call at any time.
        let applied = unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, as_int(TRIM_THRESHOLD)) == 1
                && libc::mallopt(libc::M_TOP_PAD, as_int(TOP_PAD)) == 1
        };
        if !applied {
            // Not fatal: the defaults work, only slower under load.
            eprintln!("switchyard: could not tune the allocator (mallopt)");
        }
    }
}
