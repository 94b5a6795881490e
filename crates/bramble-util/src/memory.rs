//! Keeping the agent's resident memory low on boards with 512 MB.
//!
//! glibc's allocator gives each thread its own arena and keeps freed memory for reuse, so
//! a burst (building a catalog snapshot of 100,000 keys, say) leaves the resident size high
//! long after the memory was freed. The agent limits the number of arenas at start and
//! hands freed memory back to the kernel after such bursts.

/// Limits glibc to two malloc arenas. Call once at start, before threads exist.
pub fn limit_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed heap memory to the kernel (after a large, short-lived allocation).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
