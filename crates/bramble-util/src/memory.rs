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

/// Free memory at the top of a heap that glibc hands back to the kernel by itself. Its
/// default, 128 KiB, can give a heap's top back on a free of one mux payload block, and
/// the next block then page-faults that memory in again; the agent trims once a second
/// instead ([`release_free_memory_if_worthwhile`]). Set together with 192 KiB payload
/// blocks (`bramble_net` mux); the pair cut a gateway's CPU in a read by about 40 %, each
/// part's share not measured apart.
pub const TRIM_THRESHOLD_BYTES: i32 = 8 * 1024 * 1024;

/// Limits glibc to [`MALLOC_ARENAS`] malloc arenas (its default is eight per core) and
/// fixes its mmap threshold at [`MMAP_THRESHOLD_BYTES`], and turns on the pool of block
/// buffers ([`crate::buffers`]). Call once at start, before threads exist.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
    }
    // Large block buffers are reused instead (bounded and released when idle).
    crate::buffers::enable();
}

/// Newly freed heap memory worth handing back to the kernel: less than this, kept for reuse.
pub const TRIM_WHEN_FREED_BYTES: usize = 4 * 1024 * 1024;

/// glibc's free heap bytes right after the last trim (or the lowest seen since): a trim
/// hands pages back but leaves the chunks free, so only growth past this is new.
static FREE_AFTER_TRIM: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Hands freed heap memory back to the kernel when glibc holds at least
/// [`TRIM_WHEN_FREED_BYTES`] more free heap than after the last trim; says whether it did.
/// Meant to be called every second or so: after 2,000 small files went through a mount, a
/// gateway kept 14 MB of freed heap (resident 44.6 MB, 30.8 MB after a trim), and the
/// next burst (an S3 upload) stacked its own memory on top.
pub fn release_free_memory_if_worthwhile() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::Ordering;
        // SAFETY: mallinfo2 only reads the allocator's own statistics.
        let free = unsafe { libc::mallinfo2() }.fordblks;
        let after_trim = FREE_AFTER_TRIM.load(Ordering::Relaxed);
        if free < after_trim {
            // Free chunks were reused: growth is counted from here.
            FREE_AFTER_TRIM.store(free, Ordering::Relaxed);
        } else if free - after_trim >= TRIM_WHEN_FREED_BYTES {
            // SAFETY: malloc_trim only walks the allocator's own free lists.
            unsafe {
                libc::malloc_trim(0);
            }
            FREE_AFTER_TRIM.store(free, Ordering::Relaxed);
            return true;
        }
    }
    false
}

/// Returns freed heap memory to the kernel (after a large, short-lived allocation).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_freed_heap_is_handed_back_once() {
        release_free_memory_if_worthwhile();
        // 20 MB in chunks under the mmap threshold, every hundredth kept, so the freed
        // ones cannot all merge into the top of the heap and leave by themselves.
        let chunks: Vec<Vec<u8>> = (0..20_000).map(|number| vec![number as u8; 1000]).collect();
        let kept: Vec<Vec<u8>> = chunks
            .into_iter()
            .enumerate()
            .filter(|(number, _)| number % 100 == 99)
            .map(|(_, chunk)| chunk)
            .collect();
        assert!(release_free_memory_if_worthwhile());
        assert!(
            !release_free_memory_if_worthwhile(),
            "nothing new was freed"
        );
        assert_eq!(kept.len(), 200);
    }
}
