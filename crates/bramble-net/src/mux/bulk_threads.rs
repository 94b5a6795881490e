//! The threads that carry bulk mux connections, apart from the agent's control plane.
//!
//! Why: a control call (a Raft append, a lease renewal, a CLI call) crosses several task
//! wake-ups, and on a two-core board each of them waited for a Tokio worker busy
//! encrypting or decrypting a 64 KiB batch of bulk data: with two bulk streams flat out,
//! control-call p99 rose to 4.7x its idle value although the writer always puts control
//! frames first. Priority inside one connection cannot fix CPU sharing inside one process.
//!
//! So bulk traffic gets connections of its own (the client opens them with ALPN
//! `bramble-mux-bulk/1`, see [`crate::mux::MUX_BULK_ALPN`]) and everything such a
//! connection does — TLS encryption and decryption, framing, its handlers — runs here, on
//! single-threaded Tokio runtimes whose threads have the priority the process started
//! with, while the agent's runtime runs at nice -10
//! ([`bramble_util::scheduling::raise_control_plane_priority`]). The kernel then runs a
//! control task as soon as it is woken, whatever the bulk threads are doing. The load
//! balancer's data plane does the same (`bramble_lb::workers`).
//!
//! The threads start with the first bulk connection and idle in `epoll_wait` when there is
//! none; they live as long as the process. Every task they run is a connection or a stream
//! handler that ends on the shutdown signal it was given.
//!
//! `BRAMBLE_MUX_BULK_THREADS` sets their number (default: one per two cores, at most
//! [`MAX_BULK_THREADS`]); `0` runs bulk connections on the caller's runtime (as before
//! the separation; for comparison in benchmarks).

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::task::JoinHandle;
use tracing::warn;

/// At most this many bulk threads, however many cores.
pub const MAX_BULK_THREADS: usize = 4;

static BULK_THREADS: OnceLock<BulkThreads> = OnceLock::new();

/// The bulk threads of this process.
#[derive(Debug)]
pub struct BulkThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

/// The process's bulk threads, started on first use.
pub fn bulk_threads() -> &'static BulkThreads {
    BULK_THREADS.get_or_init(BulkThreads::start)
}

impl BulkThreads {
    fn start() -> BulkThreads {
        // Half the cores: the other half stays free for the control plane, which has
        // little to do but must do it at once.
        let count = configured_count().unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|cores| cores.get().div_ceil(2))
                .unwrap_or(1)
        });
        let count = count.min(MAX_BULK_THREADS);
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            match start_thread(index) {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    warn!(%error, index, "could not start a bulk mux thread");
                    break;
                }
            }
        }
        BulkThreads {
            handles,
            next: AtomicUsize::new(0),
        }
    }

    /// Number of bulk threads (0: bulk runs on the callers' runtimes).
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// The runtime of the next bulk thread, round robin; None when there is no bulk
    /// thread (then bulk work stays on the caller's runtime).
    pub fn next_handle(&self) -> Option<&Handle> {
        if self.handles.is_empty() {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles.get(index)
    }

    /// Runs `future` on the next bulk thread, or on the caller's runtime without one.
    /// Every task `future` spawns runs on the same thread.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.next_handle() {
            Some(handle) => handle.spawn(future),
            None => tokio::spawn(future),
        }
    }
}

/// `BRAMBLE_MUX_BULK_THREADS`, when set to a number.
fn configured_count() -> Option<usize> {
    let text = std::env::var("BRAMBLE_MUX_BULK_THREADS").ok()?;
    match text.trim().parse::<usize>() {
        Ok(count) => Some(count),
        Err(_) => {
            warn!(value = %text, "BRAMBLE_MUX_BULK_THREADS is not a number; using the default");
            None
        }
    }
}

fn start_thread(index: usize) -> std::io::Result<Handle> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("mux-bulk-{index}"))
        .spawn(move || {
            // Usually created by a control-plane thread, whose raised priority it
            // inherited; bulk competes with the rest of the board as an equal.
            bramble_util::scheduling::restore_original_priority();
            let runtime = match Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = sender.send(Err(error));
                    return;
                }
            };
            let _ = sender.send(Ok(runtime.handle().clone()));
            // A current-thread runtime runs its tasks only inside block_on: park here
            // for the life of the process.
            runtime.block_on(std::future::pending::<()>());
        })?;
    receiver
        .recv()
        .map_err(|_| std::io::Error::other("the bulk thread ended before starting"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawned_work_runs_and_returns_its_output() {
        let threads = bulk_threads();
        let name = threads
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        if threads.count() > 0 {
            assert!(name.is_some_and(|name| name.starts_with("mux-bulk-")));
        }
    }
}
