//! `bramble bench disk`: what `dd if=/dev/zero of=F bs=1M count=N conv=fdatasync` and a
//! cold read of F measure, run by the agent in its own data directory (the disk its
//! catalog, bricks and logs live on — on a Pi, usually the SD card).
//!
//! Write: N blocks of 1 MiB, then one `fdatasync`, timed together, as `conv=fdatasync`
//! does, so the figure is the device's and not the page cache's. The blocks hold
//! pseudo-random bytes rather than zeros, so a compressing file system cannot flatter
//! the result. Read: the file's cached pages are dropped first (`posix_fadvise
//! DONTNEED`, which needs no root once the data is on disk), then it is read back in
//! 1 MiB blocks. The file is removed afterwards, also when a step fails.
//!
//! Bounded: at most [`MAX_SIZE_BYTES`], never more than the file system's free space less
//! a margin, one run at a time per agent.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

const MIB: u64 = 1 << 20;
/// The block size, as `dd bs=1M`.
pub const BLOCK_BYTES: usize = MIB as usize;
pub const DEFAULT_SIZE_BYTES: u64 = 256 * MIB;
pub const MIN_SIZE_BYTES: u64 = MIB;
pub const MAX_SIZE_BYTES: u64 = 4096 * MIB;
/// Room left on the file system: the larger of this and a twentieth of it.
const FREE_MARGIN_BYTES: u64 = 256 * MIB;
/// The file, in the node's data directory.
const FILE_NAME: &str = "bench-disk.tmp";

static RUNNING: AtomicBool = AtomicBool::new(false);

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskBenchRequest {
    pub size_bytes: u64,
}

impl DiskBenchRequest {
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_SIZE_BYTES..=MAX_SIZE_BYTES).contains(&self.size_bytes) {
            return Err(format!("--size is 1M to 4G, not {} bytes", self.size_bytes));
        }
        if !self.size_bytes.is_multiple_of(MIB) {
            return Err("--size is a whole number of MiB".to_string());
        }
        Ok(())
    }
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskBenchResult {
    pub node: String,
    /// The directory written in (the node's data directory).
    pub directory: String,
    pub size_bytes: u64,
    /// Writing and the final fdatasync.
    pub write_seconds: f64,
    pub write_bytes_per_second: f64,
    /// Of which the fdatasync alone.
    pub sync_seconds: f64,
    pub read_seconds: f64,
    pub read_bytes_per_second: f64,
    /// False when the kernel refused to drop the cached pages: the read then measured
    /// memory, not the disk.
    pub read_was_cold: bool,
}

/// Runs the test in `directory` (blocking: call it off the async runtime).
pub fn run(
    request: &DiskBenchRequest,
    node: &str,
    directory: &Path,
) -> Result<DiskBenchResult, String> {
    request.validate()?;
    let (free, total) = bramble_util::files::file_system_space(directory)
        .map_err(|error| format!("reading the free space of {}: {error}", directory.display()))?;
    check_room(request.size_bytes, free, total)
        .map_err(|problem| format!("{}: {problem}", directory.display()))?;
    if RUNNING.swap(true, Ordering::AcqRel) {
        return Err("a disk benchmark is already running on this node".to_string());
    }
    let path = directory.join(FILE_NAME);
    let outcome = measure(request, node, directory, &path);
    let _ = std::fs::remove_file(&path);
    RUNNING.store(false, Ordering::Release);
    outcome
}

/// Whether a test of `size` bytes leaves the file system its margin.
fn check_room(size: u64, free: u64, total: u64) -> Result<(), String> {
    let margin = FREE_MARGIN_BYTES.max(total / 20);
    if size.saturating_add(margin) > free {
        return Err(format!(
            "{} MiB free; a {} MiB test must leave {} MiB (use a smaller --size)",
            free / MIB,
            size / MIB,
            margin / MIB
        ));
    }
    Ok(())
}

fn measure(
    request: &DiskBenchRequest,
    node: &str,
    directory: &Path,
    path: &Path,
) -> Result<DiskBenchResult, String> {
    let failed = |what: &str, error: std::io::Error| format!("{what} {}: {error}", path.display());
    let block = pseudo_random_block();
    let blocks = request.size_bytes / MIB;

    let started = Instant::now();
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|error| failed("creating", error))?;
    for _ in 0..blocks {
        file.write_all(&block)
            .map_err(|error| failed("writing", error))?;
    }
    let sync_started = Instant::now();
    file.sync_data().map_err(|error| failed("syncing", error))?;
    let sync_seconds = sync_started.elapsed().as_secs_f64();
    let write_seconds = started.elapsed().as_secs_f64();
    drop(file);

    let file = File::open(path).map_err(|error| failed("opening", error))?;
    // SAFETY: a valid descriptor of an open file; the call only advises the page cache.
    let dropped = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut reader = file;
    let mut buffer = vec![0u8; BLOCK_BYTES];
    let mut read_total = 0u64;
    let started = Instant::now();
    loop {
        let read = reader
            .read(&mut buffer)
            .map_err(|error| failed("reading", error))?;
        if read == 0 {
            break;
        }
        read_total += read as u64;
    }
    let read_seconds = started.elapsed().as_secs_f64();
    if read_total != request.size_bytes {
        return Err(format!(
            "read back {read_total} bytes of the {} written",
            request.size_bytes
        ));
    }
    let rate = |seconds: f64| request.size_bytes as f64 / seconds.max(1e-9);
    Ok(DiskBenchResult {
        node: node.to_string(),
        directory: directory.display().to_string(),
        size_bytes: request.size_bytes,
        write_seconds,
        write_bytes_per_second: rate(write_seconds),
        sync_seconds,
        read_seconds,
        read_bytes_per_second: rate(read_seconds),
        read_was_cold: dropped == 0,
    })
}

/// A block of xorshift bytes: incompressible enough, and free to make.
fn pseudo_random_block() -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = Vec::with_capacity(BLOCK_BYTES);
    while block.len() < BLOCK_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        block.extend_from_slice(&state.to_le_bytes());
    }
    block.truncate(BLOCK_BYTES);
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_writes_reads_and_cleans_up() {
        let directory = tempfile::tempdir().expect("tempdir");
        let result = run(
            &DiskBenchRequest {
                size_bytes: 4 * MIB,
            },
            "n1",
            directory.path(),
        )
        .expect("runs");
        assert_eq!(result.size_bytes, 4 * MIB);
        assert!(result.write_seconds >= result.sync_seconds);
        assert!(result.write_bytes_per_second > 0.0 && result.read_bytes_per_second > 0.0);
        assert!(!directory.path().join(FILE_NAME).exists(), "removed");
    }

    #[test]
    fn sizes_are_bounded() {
        for size_bytes in [0, MIB - 1, MAX_SIZE_BYTES + MIB, MIB + 1] {
            assert!(
                DiskBenchRequest { size_bytes }.validate().is_err(),
                "{size_bytes}"
            );
        }
        let gib = 1024 * MIB;
        check_room(MIB, 10 * gib, 20 * gib).expect("room");
        let error =
            check_room(9 * gib + 512 * MIB, 10 * gib, 20 * gib).expect_err("a 1 GiB margin");
        assert!(error.contains("smaller --size"), "{error}");
        assert!(
            check_room(MIB, 200 * MIB, 1024 * MIB).is_err(),
            "at least 256 MiB left"
        );
    }

    #[test]
    fn the_block_is_not_compressible_zeros() {
        let block = pseudo_random_block();
        assert_eq!(block.len(), BLOCK_BYTES);
        let zeros = block.iter().filter(|byte| **byte == 0).count();
        assert!(zeros < BLOCK_BYTES / 100, "{zeros}");
    }
}
