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
//! The threads ([`bramble_util::runtime_threads`]) start with the first bulk connection. Every task they run is a connection or a stream
//! handler that ends on the shutdown signal it was given.
//!
//! `BRAMBLE_MUX_BULK_THREADS` sets their number (default: one per two cores, at most
//! [`MAX_BULK_THREADS`]); `0` runs bulk connections on the caller's runtime (as before
//! the separation; for comparison in benchmarks).

use std::future::Future;
use std::sync::OnceLock;

use bramble_util::runtime_threads::{RuntimeThreads, thread_count};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// At most this many bulk threads, however many cores.
pub const MAX_BULK_THREADS: usize = 4;

static BULK_THREADS: OnceLock<BulkThreads> = OnceLock::new();

/// The bulk threads of this process.
#[derive(Debug)]
pub struct BulkThreads {
    threads: RuntimeThreads,
}

/// The process's bulk threads, started on first use.
pub fn bulk_threads() -> &'static BulkThreads {
    BULK_THREADS.get_or_init(BulkThreads::start)
}

impl BulkThreads {
    fn start() -> BulkThreads {
        let count = thread_count("BRAMBLE_MUX_BULK_THREADS", 0, MAX_BULK_THREADS);
        BulkThreads {
            threads: RuntimeThreads::start("mux-bulk", count, |_| {}),
        }
    }

    /// Number of bulk threads (0: bulk runs on the callers' runtimes).
    pub fn count(&self) -> usize {
        self.threads.len()
    }

    /// The runtime of the next bulk thread, round robin; None when there is no bulk
    /// thread (then bulk work stays on the caller's runtime).
    pub fn next_handle(&self) -> Option<&Handle> {
        self.threads.next_handle()
    }

    /// Runs `future` on the next bulk thread, or on the caller's runtime without one.
    /// Every task `future` spawns runs on the same thread.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.threads.spawn(future)
    }
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
