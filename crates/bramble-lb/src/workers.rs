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
//! The threads start with the first balancer and idle in `epoll_wait` when there is no
//! traffic; they live as long as the process.

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tracing::warn;

/// At most this many data-plane threads, however many cores.
const MAX_WORKERS: usize = 8;

thread_local! {
    /// Which worker this thread is, on data-plane threads.
    static WORKER_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

/// The data-plane threads of this process.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
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
        let count = configured_count().unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|cores| cores.get().div_ceil(2))
                .unwrap_or(1)
        });
        let count = count.clamp(1, MAX_WORKERS);
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            match start_worker(index) {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    warn!(%error, index, "could not start a load-balancer worker thread");
                    break;
                }
            }
        }
        Workers {
            handles,
            next: AtomicUsize::new(0),
        }
    }

    /// How many per-worker slots callers should keep (at least 1).
    pub fn count(&self) -> usize {
        self.handles.len().max(1)
    }

    /// Runs `future` on the next worker, round robin. Without worker threads (none could
    /// be started) it runs on the caller's runtime instead.
    pub fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.handles.is_empty() {
            tokio::spawn(future);
            return;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[index].spawn(future);
    }
}

/// `BRAMBLE_LB_THREADS` (HAProxy's `nbthread`), when set to a number.
fn configured_count() -> Option<usize> {
    let text = std::env::var("BRAMBLE_LB_THREADS").ok()?;
    match text.trim().parse::<usize>() {
        Ok(count) if count > 0 => Some(count),
        _ => {
            warn!(value = %text, "BRAMBLE_LB_THREADS is not a positive number; using the default");
            None
        }
    }
}

fn start_worker(index: usize) -> std::io::Result<Handle> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("lb-worker-{index}"))
        .spawn(move || {
            WORKER_INDEX.with(|cell| cell.set(Some(index)));
            // Created by a control-plane thread, whose raised priority it inherited.
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
        .map_err(|_| std::io::Error::other("the worker thread ended before starting"))?
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
