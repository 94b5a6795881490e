//! The data plane's threads, HAProxy's `nbthread`: single-threaded Tokio runtimes (one
//! per two cores unless `BRAMBLE_LB_THREADS` says otherwise), shared by every balancer of
//! the process, each serving the client connections handed to it from accept to close.
//!
//! Why not the agent's own multi-threaded runtime: there a client connection's task and
//! the task driving its pooled backend connection land on different workers, so every
//! request crosses threads twice (measured: 1.1 context switches per request against
//! HAProxy's 0.33, and half its throughput). Here both live on one thread, and each worker
//! has its own backend connection pool ([`current_index`] picks it). It also keeps a
//! saturated proxy from starving the control plane (Raft heartbeats, VIP lease renewals),
//! which stays on the agent's runtime, with its own threads for the kernel to schedule.
//!
//! The threads start with the first balancer ([`bramble_util::runtime_threads`]).

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;

use bramble_util::runtime_threads::{RuntimeThreads, thread_count};

/// At most this many data-plane threads, however many cores.
const MAX_WORKERS: usize = 8;

thread_local! {
    /// Which worker this thread is, on data-plane threads.
    static WORKER_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

/// The data-plane threads of this process.
pub struct Workers {
    threads: RuntimeThreads,
}

/// The process's data-plane threads, started on first use.
pub fn workers() -> &'static Workers {
    WORKERS.get_or_init(Workers::start)
}

/// The index of the data-plane thread running the caller (0 elsewhere), to pick
/// per-worker state such as the backend connection pool.
pub fn current_index() -> usize {
    WORKER_INDEX.with(Cell::get).unwrap_or(0)
}

impl Workers {
    fn start() -> Workers {
        // Half the cores by default: the other half stays for the control plane and the
        // node's own services. Measured on 2 cores shared with the load generator and the
        // backends (bench/lb.sh): one worker gave the same throughput as two, with a p99
        // of 5.1 ms instead of 9.8 ms and 0.15 context switches per request instead of 1.
        // `BRAMBLE_LB_THREADS` is HAProxy's `nbthread`.
        let count = thread_count("BRAMBLE_LB_THREADS", 1, MAX_WORKERS);
        Workers {
            threads: RuntimeThreads::start("lb-worker", count, |index| {
                WORKER_INDEX.with(|cell| cell.set(Some(index)));
            }),
        }
    }

    /// How many per-worker slots callers should keep (at least 1).
    pub fn count(&self) -> usize {
        self.threads.len().max(1)
    }

    /// Runs `future` on the next worker, round robin. Without worker threads (none could
    /// be started) it runs on the caller's runtime instead.
    pub fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.threads.spawn(future));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawned_work_runs_on_worker_threads_that_know_their_index() {
        let pool = workers();
        assert!(pool.count() >= 1);
        let mut answers = Vec::new();
        for _ in 0..pool.count() * 2 {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            pool.spawn(async move {
                let name = std::thread::current().name().map(str::to_string);
                let _ = sender.send((name, current_index()));
            });
            answers.push(receiver.await.unwrap());
        }
        for (name, index) in &answers {
            assert!(
                name.as_deref()
                    .is_some_and(|name| name.starts_with("lb-worker-")),
                "{name:?}"
            );
            assert!(*index < pool.count());
        }
        // Round robin reaches every worker.
        let distinct: std::collections::BTreeSet<usize> =
            answers.iter().map(|(_, index)| *index).collect();
        assert_eq!(distinct.len(), pool.count());
    }
}
