//! Named background workers (Garage's `Worker` and `garage worker list` are the model):
//! every long-running task of the agent is registered under a name, with its state, its
//! error count and last error, a queue length and a progress note. A worker that fails or
//! panics is logged, counted and, if its policy says so, restarted with back-off; it
//! never fails unnoticed. `bramble workers` shows the list of every node.
//!
//! A test-only fault switch makes a named worker panic at its first runs:
//! `BRAMBLE_TEST_PANIC_WORKER=<name>[:<times>]` in the agent's environment (default once).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::shutdown::Shutdown;

/// The environment variable of the test-only fault switch.
pub const PANIC_SWITCH: &str = "BRAMBLE_TEST_PANIC_WORKER";
/// First restart delay; doubled at each consecutive failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run that lasted this long resets the back-off: the failure is not a crash loop.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Longest error text kept (errors may quote peer input).
const MAX_ERROR_CHARS: usize = 300;

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Working on something now.
    Busy,
    /// Running, waiting for work or for its next round.
    Idle,
    /// Deliberately slowed down (a bandwidth or rate limit).
    Throttled,
    /// Its last run failed; it waits for its restart (or stays failed if not restarted).
    Failed,
    /// Ended by the shutdown signal.
    Stopped,
    /// Finished its work and ended.
    Done,
}

/// What to do when a worker's run ends with an error or a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Run it again after the back-off.
    OnFailure,
    /// Leave it failed.
    Never,
}

/// One row of `bramble workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub name: String,
    pub state: WorkerState,
    /// Errors and panics since the agent started (reported or ending a run).
    pub errors: u64,
    pub restarts: u64,
    pub last_error: Option<String>,
    /// Seconds since the last error.
    pub last_error_age_secs: Option<u64>,
    /// Items waiting, for workers that have a queue.
    pub queue: Option<u64>,
    /// Free text: what it is working on, how far it got.
    pub progress: Option<String>,
}

#[derive(Debug)]
struct Status {
    state: WorkerState,
    errors: u64,
    restarts: u64,
    last_error: Option<(String, Instant)>,
    queue: Option<u64>,
    progress: Option<String>,
}

#[derive(Debug)]
struct Entry {
    name: String,
    status: Mutex<Status>,
}

impl Entry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn record_error(&self, message: &str) {
        let mut status = self.lock();
        status.errors += 1;
        let text: String = message.chars().take(MAX_ERROR_CHARS).collect();
        status.last_error = Some((text, Instant::now()));
    }

    fn info(&self) -> WorkerInfo {
        let status = self.lock();
        WorkerInfo {
            name: self.name.clone(),
            state: status.state,
            errors: status.errors,
            restarts: status.restarts,
            last_error: status.last_error.as_ref().map(|(text, _)| text.clone()),
            last_error_age_secs: status
                .last_error
                .as_ref()
                .map(|(_, at)| at.elapsed().as_secs()),
            queue: status.queue,
            progress: status.progress.clone(),
        }
    }
}

/// A worker's own handle on its row, and its stop signal.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    entry: Arc<Entry>,
    shutdown: Shutdown,
}

impl WorkerContext {
    /// The signal that ends this worker: return `Ok(())` soon after it fires.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    pub fn set_state(&self, state: WorkerState) {
        self.entry.lock().state = state;
    }

    pub fn set_queue(&self, length: u64) {
        self.entry.lock().queue = Some(length);
    }

    pub fn set_progress(&self, progress: impl Into<String>) {
        self.entry.lock().progress = Some(progress.into());
    }

    /// Counts an error the worker handled itself (it keeps running).
    pub fn report_error(&self, message: &str) {
        warn!(worker = %self.entry.name, error = %message, "worker error");
        self.entry.record_error(message);
    }
}

/// The fault switch: which worker panics, and how many times.
#[derive(Debug, Clone)]
struct PanicSwitch {
    name: String,
    remaining: Arc<Mutex<u32>>,
}

impl PanicSwitch {
    fn from_environment() -> Option<PanicSwitch> {
        let value = std::env::var(PANIC_SWITCH).ok()?;
        let (name, times) = match value.split_once(':') {
            Some((name, times)) => (name.to_string(), times.parse().unwrap_or(1)),
            None => (value, 1),
        };
        Some(PanicSwitch {
            name,
            remaining: Arc::new(Mutex::new(times)),
        })
    }

    fn fires_for(&self, name: &str) -> bool {
        if self.name != name {
            return false;
        }
        let mut remaining = self
            .remaining
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if *remaining == 0 {
            return false;
        }
        *remaining -= 1;
        true
    }
}

/// The agent's registry of workers. Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct Workers {
    entries: Arc<Mutex<Vec<Arc<Entry>>>>,
    /// Dropping a handle detaches its task: workers outlive the registry's clones.
    supervisors: Arc<Mutex<Vec<JoinHandle<()>>>>,
    shutdown: Shutdown,
    panic_switch: Option<PanicSwitch>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Workers")
            .field("count", &self.list().len())
            .finish()
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        return (*text).to_string();
    }
    if let Some(text) = payload.downcast_ref::<String>() {
        return text.clone();
    }
    "a panic without a message".to_string()
}

impl Workers {
    /// A registry whose workers end on `shutdown` (unless given their own signal).
    pub fn new(shutdown: Shutdown) -> Workers {
        Workers {
            entries: Arc::new(Mutex::new(Vec::new())),
            supervisors: Arc::new(Mutex::new(Vec::new())),
            shutdown,
            panic_switch: PanicSwitch::from_environment(),
        }
    }

    /// Starts a worker that ends on the registry's shutdown signal.
    pub fn spawn<Run, Work>(&self, name: impl Into<String>, restart: Restart, run: Run)
    where
        Run: Fn(WorkerContext) -> Work + Send + Sync + 'static,
        Work: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.spawn_until(name, restart, self.shutdown.clone(), run);
    }

    /// Starts a worker that ends on its own `shutdown` signal (or the registry's). A
    /// worker ended by a signal leaves the list; one that finished or failed stays on it.
    pub fn spawn_until<Run, Work>(
        &self,
        name: impl Into<String>,
        restart: Restart,
        shutdown: Shutdown,
        run: Run,
    ) where
        Run: Fn(WorkerContext) -> Work + Send + Sync + 'static,
        Work: Future<Output = Result<(), String>> + Send + 'static,
    {
        let entry = Arc::new(Entry {
            name: name.into(),
            status: Mutex::new(Status {
                state: WorkerState::Idle,
                errors: 0,
                restarts: 0,
                last_error: None,
                queue: None,
                progress: None,
            }),
        });
        {
            let mut entries = self
                .entries
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            // A worker of the same name that ended is replaced by the new one.
            entries.retain(|existing| {
                existing.name != entry.name
                    || !matches!(
                        existing.lock().state,
                        WorkerState::Stopped | WorkerState::Done | WorkerState::Failed
                    )
            });
            entries.push(entry.clone());
        }
        let supervisor = supervise(
            entry,
            restart,
            shutdown,
            self.shutdown.clone(),
            self.panic_switch.clone(),
            self.entries.clone(),
            run,
        );
        let mut supervisors = self
            .supervisors
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        supervisors.retain(|handle| !handle.is_finished());
        supervisors.push(tokio::spawn(supervisor));
    }

    /// Every registered worker, sorted by name.
    pub fn list(&self) -> Vec<WorkerInfo> {
        let mut rows: Vec<WorkerInfo> = self
            .entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .map(|entry| entry.info())
            .collect();
        rows.sort_by(|left, right| left.name.cmp(&right.name));
        rows
    }

    /// Waits until every worker has ended (after the shutdown signal), at most `deadline`.
    /// Returns false if some were still running.
    pub async fn wait(&self, deadline: Duration) -> bool {
        let mut supervisors = std::mem::take(
            &mut *self
                .supervisors
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        let all_ended = async {
            for handle in supervisors.drain(..) {
                let _ = handle.await;
            }
        };
        let ended = tokio::time::timeout(deadline, all_ended).await.is_ok();
        if !ended {
            for row in self.list() {
                if !matches!(
                    row.state,
                    WorkerState::Stopped | WorkerState::Done | WorkerState::Failed
                ) {
                    warn!(worker = %row.name, "worker did not stop in time");
                }
            }
        }
        ended
    }
}

async fn supervise<Run, Work>(
    entry: Arc<Entry>,
    restart: Restart,
    mut own_shutdown: Shutdown,
    mut agent_shutdown: Shutdown,
    panic_switch: Option<PanicSwitch>,
    entries: Arc<Mutex<Vec<Arc<Entry>>>>,
    run: Run,
) where
    Run: Fn(WorkerContext) -> Work + Send + Sync + 'static,
    Work: Future<Output = Result<(), String>> + Send + 'static,
{
    let context = WorkerContext {
        entry: entry.clone(),
        shutdown: own_shutdown.clone(),
    };
    let mut backoff = FIRST_BACKOFF;
    let stopping = |own: &Shutdown, agent: &Shutdown| own.is_triggered() || agent.is_triggered();
    loop {
        let started = Instant::now();
        entry.lock().state = WorkerState::Idle;
        let inject_panic = panic_switch
            .as_ref()
            .is_some_and(|switch| switch.fires_for(&entry.name));
        let work = run(context.clone());
        let outcome = tokio::spawn(async move {
            if inject_panic {
                panic!("injected by {PANIC_SWITCH}");
            }
            work.await
        })
        .await;
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(message)) => Some(message),
            Err(join_error) if join_error.is_panic() => {
                Some(format!("panicked: {}", panic_text(join_error.into_panic())))
            }
            Err(join_error) => Some(format!("was cancelled: {join_error}")),
        };
        let Some(message) = failure else {
            let ended_by_signal = stopping(&own_shutdown, &agent_shutdown);
            entry.lock().state = if ended_by_signal {
                WorkerState::Stopped
            } else {
                WorkerState::Done
            };
            if own_shutdown.is_triggered() && !agent_shutdown.is_triggered() {
                // Retired on purpose (its balancer was removed, say): drop the row.
                entries
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .retain(|existing| !Arc::ptr_eq(existing, &entry));
            }
            return;
        };
        error!(worker = %entry.name, error = %message, "worker failed");
        entry.record_error(&message);
        entry.lock().state = WorkerState::Failed;
        if restart == Restart::Never || stopping(&own_shutdown, &agent_shutdown) {
            return;
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        info!(worker = %entry.name, after_ms = backoff.as_millis() as u64, "restarting worker");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = own_shutdown.wait() => return,
            _ = agent_shutdown.wait() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        entry.lock().restarts += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::ShutdownTrigger;

    fn row(workers: &Workers, name: &str) -> Option<WorkerInfo> {
        workers.list().into_iter().find(|row| row.name == name)
    }

    async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        for _ in 0..500 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_worker_is_counted_and_restarted_with_backoff() {
        let (trigger, shutdown) = ShutdownTrigger::new();
        let workers = Workers::new(shutdown);
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        workers.spawn("flaky", Restart::OnFailure, move |context| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if run < 2 {
                    panic!("run {run} breaks");
                }
                context.set_state(WorkerState::Busy);
                context.set_progress("third time lucky");
                context.shutdown().wait().await;
                Ok(())
            }
        });
        wait_for("the third run", || runs.load(Ordering::SeqCst) >= 3).await;
        wait_for("the busy state", || {
            row(&workers, "flaky").is_some_and(|row| row.state == WorkerState::Busy)
        })
        .await;
        let info = row(&workers, "flaky").unwrap();
        assert_eq!(info.errors, 2);
        assert_eq!(info.restarts, 2);
        assert!(
            info.last_error.as_deref().unwrap().contains("run 1 breaks"),
            "{info:?}"
        );
        assert_eq!(info.progress.as_deref(), Some("third time lucky"));
        trigger.trigger();
        assert!(workers.wait(Duration::from_secs(5)).await);
        assert_eq!(row(&workers, "flaky").unwrap().state, WorkerState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_end_a_run_and_never_restart_when_told_not_to() {
        let (_trigger, shutdown) = ShutdownTrigger::new();
        let workers = Workers::new(shutdown);
        workers.spawn("once", Restart::Never, |context| async move {
            context.report_error("a recoverable hiccup");
            Err("gave up".to_string())
        });
        wait_for("the failure", || {
            row(&workers, "once").is_some_and(|row| row.state == WorkerState::Failed)
        })
        .await;
        let info = row(&workers, "once").unwrap();
        assert_eq!(info.errors, 2);
        assert_eq!(info.restarts, 0);
        assert_eq!(info.last_error.as_deref(), Some("gave up"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_retired_by_its_own_signal_leaves_the_list() {
        let (_trigger, shutdown) = ShutdownTrigger::new();
        let workers = Workers::new(shutdown);
        let (retire, own) = ShutdownTrigger::new();
        workers.spawn_until("vip/web", Restart::OnFailure, own, |context| async move {
            context.shutdown().wait().await;
            Ok(())
        });
        wait_for("the worker", || row(&workers, "vip/web").is_some()).await;
        retire.trigger();
        wait_for("the row to go", || row(&workers, "vip/web").is_none()).await;
    }
}
