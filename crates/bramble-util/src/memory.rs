//! Keeping the agent's resident memory low on boards with 512 MB.
//!
//! glibc's allocator gives each thread its own arena and keeps freed memory for reuse, so
//! a burst (building a catalog snapshot of 100,000 keys, say) leaves the resident size high
//! long after the memory was freed. The agent limits the number of arenas and fixes the
//! mmap threshold at start, and hands freed memory back to the kernel after such bursts.

/// Arenas glibc may create. Not two, as first chosen: threads that share an arena share
/// its lock, and the mux's bulk threads (normal priority, allocating a buffer per 64 KiB
/// frame) then shared one with the control plane (nice -10). A bulk thread preempted while
/// holding it makes a Raft append wait for it: the suspected cause of lease lapses in the
/// bulk drill (tests/bulk.rs) when other programs also kept the cores busy. With eight,
/// the agent's dozen threads mostly get arenas of their own.
pub const MALLOC_ARENAS: i32 = 8;

/// Allocations of this size or more get a mapping of their own, handed back to the kernel
/// when freed. glibc starts at 128 KiB but raises its threshold to the size of every
/// mapped chunk freed (up to 32 MiB); after the first 1 MiB block was freed, blocks came
/// from the arenas and stayed resident: an S3 upload of 1 GiB left its gateway at 164 MB
/// resident, and at 32 MB with the threshold fixed here.
pub const MMAP_THRESHOLD_BYTES: i32 = 256 * 1024;

/// Limits glibc to [`MALLOC_ARENAS`] malloc arenas (its default is eight per core) and
/// fixes its mmap threshold at [`MMAP_THRESHOLD_BYTES`]. Call once at start, before
/// threads exist.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
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
