//! Sets of single-threaded Tokio runtimes on threads of their own, at the priority the
//! process started with: the load balancer's data plane and the mux's bulk connections
//! both run on such a set, apart from the agent's control plane (nice -10, see
//! [`crate::scheduling`]), so the kernel runs a woken control task at once whatever the
//! data plane is doing, and a connection's tasks never cross threads.
//!
//! The threads idle in `epoll_wait` when there is no work and live as long as the process.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::task::JoinHandle;
use tracing::warn;

/// A set of runtime threads, used round robin.
#[derive(Debug)]
pub struct RuntimeThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl RuntimeThreads {
    /// Starts `count` threads named `<prefix>-<index>`; each runs `on_start(index)` first.
    /// A thread that cannot be started is logged and the set stays smaller.
    pub fn start(prefix: &str, count: usize, on_start: fn(usize)) -> RuntimeThreads {
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            match start_thread(prefix, index, on_start) {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    warn!(%error, index, prefix, "could not start a runtime thread");
                    break;
                }
            }
        }
        RuntimeThreads {
            handles,
            next: AtomicUsize::new(0),
        }
    }

    /// How many threads run (0: work stays on the callers' runtimes).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The runtime of the next thread, round robin; None without threads.
    pub fn next_handle(&self) -> Option<&Handle> {
        if self.handles.is_empty() {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles.get(index)
    }

    /// Runs `future` on the next thread, or on the caller's runtime without threads.
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

/// The number of threads for a set: `variable` from the environment when it holds a
/// number in `minimum..`, else one per two cores (the other half stays free for the
/// control plane); at most `maximum` either way.
pub fn thread_count(variable: &str, minimum: usize, maximum: usize) -> usize {
    let configured = std::env::var(variable).ok().and_then(|text| {
        match text.trim().parse::<usize>() {
            Ok(count) if count >= minimum => Some(count),
            _ => {
                warn!(value = %text, variable, minimum, "not a usable thread count; using the default");
                None
            }
        }
    });
    let count = configured.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|cores| cores.get().div_ceil(2))
            .unwrap_or(1)
    });
    count.clamp(minimum, maximum)
}

fn start_thread(prefix: &str, index: usize, on_start: fn(usize)) -> std::io::Result<Handle> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("{prefix}-{index}"))
        .spawn(move || {
            on_start(index);
            // Usually created by a control-plane thread, whose raised priority it
            // inherited: this work competes with the rest of the board as an equal.
            crate::scheduling::restore_original_priority();
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
        .map_err(|_| std::io::Error::other("the runtime thread ended before starting"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_round_robin_on_the_named_threads() {
        let threads = RuntimeThreads::start("test-runtime", 2, |_| {});
        assert_eq!(threads.len(), 2);
        let mut names = Vec::new();
        for _ in 0..4 {
            let name = threads
                .spawn(async { std::thread::current().name().map(str::to_string) })
                .await
                .unwrap();
            names.push(name.unwrap_or_default());
        }
        assert_eq!(
            names,
            [
                "test-runtime-0",
                "test-runtime-1",
                "test-runtime-0",
                "test-runtime-1"
            ]
        );
        let none = RuntimeThreads::start("unused", 0, |_| {});
        assert!(none.is_empty());
        assert_eq!(none.spawn(async { 7 }).await.unwrap(), 7);
    }

    #[test]
    fn thread_counts_stay_within_bounds() {
        let count = thread_count("BRAMBLE_TEST_UNSET_THREAD_COUNT", 1, 3);
        assert!((1..=3).contains(&count));
    }
}
