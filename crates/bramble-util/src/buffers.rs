//! A small process-wide pool of the large buffers blocks pass through (1 MiB blocks read
//! from a brick file, received from a peer, or filled by a writer; 256 KiB erasure-coded
//! shards).
//!
//! Why: the agent fixes glibc's mmap threshold at 256 KiB ([`crate::memory`]) so that freed
//! blocks go back to the kernel instead of staying resident, and so every such buffer was a
//! fresh mapping: its first touch page-faulted, the kernel zeroed each page and charged it
//! to the memory cgroup, and freeing it unmapped it again. With a 1 GiB read through a
//! gateway, that was about a third of the gateway's CPU time (perf: `exc_page_fault`,
//! `clear_page`, memcg charging, `unmap_page_range`). A buffer taken from here was touched
//! before and costs none of that.
//!
//! Bounded: at most [`POOL_BYTES`] wait here, only buffers between [`MIN_POOLED_BYTES`] and
//! [`MAX_POOLED_BYTES`] are kept, and [`release_idle`] (called once a second) frees them all
//! once a second has gone by without a take, so an idle agent holds none of them. Only
//! processes that call [`enable`] (the agent, which also calls [`release_idle`]) pool at
//! all; in others [`take`] allocates and [`give_back`] frees.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

/// Buffers smaller than this come from glibc's arenas cheaply; they are not kept.
pub const MIN_POOLED_BYTES: usize = 128 * 1024;
/// The largest buffer kept: a block of the largest size a volume may have plus headroom.
pub const MAX_POOLED_BYTES: usize = 4 * 1024 * 1024 + 64 * 1024;
/// Bytes of free buffers the pool holds at most.
pub const POOL_BYTES: usize = 8 * 1024 * 1024;

struct Pool {
    free: Vec<Vec<u8>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

/// Whether this process pools buffers (see [`enable`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Set by every take; cleared by [`release_idle`].
static TAKEN_SINCE_RELEASE: AtomicBool = AtomicBool::new(false);

/// Turns pooling on for this process, which must then call [`release_idle`] once a second.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// An empty buffer with room for at least `capacity` bytes: a pooled one that is not much
/// larger (at most a quarter more, so a 4 MiB buffer is not spent on a 256 KiB shard), or
/// a new one.
pub fn take(capacity: usize) -> Vec<u8> {
    if ENABLED.load(Ordering::Relaxed) && (MIN_POOLED_BYTES..=MAX_POOLED_BYTES).contains(&capacity)
    {
        TAKEN_SINCE_RELEASE.store(true, Ordering::Relaxed);
        let mut pool = pool();
        let largest_fit = capacity + capacity / 4;
        let best = pool
            .free
            .iter()
            .enumerate()
            .filter(|(_, buffer)| (capacity..=largest_fit).contains(&buffer.capacity()))
            .min_by_key(|(_, buffer)| buffer.capacity())
            .map(|(index, _)| index);
        if let Some(index) = best {
            let buffer = pool.free.swap_remove(index);
            pool.bytes -= buffer.capacity();
            return buffer;
        }
    }
    Vec::with_capacity(capacity)
}

/// Hands a buffer back for reuse; it is freed instead when it is outside the pooled sizes
/// or the pool is full.
pub fn give_back(mut buffer: Vec<u8>) {
    let capacity = buffer.capacity();
    if !ENABLED.load(Ordering::Relaxed)
        || !(MIN_POOLED_BYTES..=MAX_POOLED_BYTES).contains(&capacity)
    {
        return;
    }
    buffer.clear();
    let mut pool = pool();
    if pool.bytes + capacity <= POOL_BYTES {
        pool.bytes += capacity;
        pool.free.push(buffer);
    }
}

/// `buffer` as [`Bytes`] that hands it back to the pool when the last clone or slice of it
/// is dropped.
pub fn into_bytes(buffer: Vec<u8>) -> Bytes {
    Bytes::from_owner(Returning(buffer))
}

/// Frees every pooled buffer when none was taken since the last call. Meant to be called
/// once a second.
pub fn release_idle() {
    if TAKEN_SINCE_RELEASE.swap(false, Ordering::Relaxed) {
        return;
    }
    let freed = {
        let mut pool = pool();
        pool.bytes = 0;
        std::mem::take(&mut pool.free)
    };
    drop(freed);
}

/// Bytes of free buffers in the pool now.
pub fn pooled_bytes() -> usize {
    pool().bytes
}

struct Returning(Vec<u8>);

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is process-wide: these steps run in one test so parallel tests do not
    /// take each other's buffers.
    #[test]
    fn buffers_are_reused_within_bounds_and_released_when_idle() {
        enable();
        release_idle();
        release_idle();
        assert_eq!(pooled_bytes(), 0);

        // A dropped Bytes hands its buffer back; the next take of that size gets it.
        let mut buffer = take(1024 * 1024);
        buffer.extend_from_slice(&[7u8; 1024 * 1024]);
        let address = buffer.as_ptr();
        let bytes = into_bytes(buffer);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pooled_bytes(), 0, "a slice still holds the buffer");
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(slice);
        assert!(pooled_bytes() >= 1024 * 1024);
        let again = take(1024 * 1024);
        assert_eq!(again.as_ptr(), address);
        assert!(again.is_empty());

        // A much larger pooled buffer is not spent on a small request.
        give_back(again);
        let small = take(256 * 1024);
        assert!(small.capacity() < 1024 * 1024);

        // Small and huge buffers are not kept; the pool never exceeds its bound.
        give_back(Vec::with_capacity(4096));
        give_back(Vec::with_capacity(MAX_POOLED_BYTES + 1));
        for _ in 0..20 {
            give_back(Vec::with_capacity(1024 * 1024));
        }
        assert!(pooled_bytes() <= POOL_BYTES);

        // Idle for one period: everything is freed.
        release_idle();
        release_idle();
        assert_eq!(pooled_bytes(), 0);
    }
}
