//! The task runner every node has: it asks the scheduler for work while any job is
//! active (learned from its own catalog replica, so an idle cluster sends nothing), runs
//! what it is given within its slots, keeps each attempt's output on disk (the first
//! 1 MiB of each stream) and reports results until a checkpoint covers them.
//!
//! Tasks run as their own process group, at the priority the agent was started with
//! (not the agent's raised control-plane priority), and — when the agent runs as root —
//! as an unprivileged user (`nobody` unless `jobs.toml` names another), so a job cannot
//! take over the node or starve the agent's lease renewals. The built-in π task runs on
//! a thread of its own at the same ordinary priority.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bramble_cluster::Membership;
use bramble_meta::Meta;
use bramble_meta::api::Consistency;
use bramble_meta::types::Change;
use bramble_net::{ErrorKind, RpcClient, RpcError};
use bramble_util::WorkerContext;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::admin::*;
use super::montecarlo;
use super::record::{JobRecord, SCHEDULER_LEASE, STATE_PREFIX, id_of_key};
use super::reduce::{MAX_VALUE_BYTES, task_value};
use super::scheduler::Scheduler;
use super::spec::{JobId, Reduce, Work};
use crate::process::Identity;

/// Output kept per stream of an attempt.
pub const MAX_KEPT_OUTPUT: u64 = 1024 * 1024;
/// Failure reasons carry at most this much of standard error.
const STDERR_TAIL_BYTES: usize = 512;
/// How long a stopped task gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// A worker with tasks reports at least this often (the scheduler's liveness check).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long an exchange may take (the scheduler holds one for up to a second).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Outputs of attempts are kept this long after the job's record is gone.
const OUTPUT_DIRECTORY: &str = "jobs/output";
const SETTINGS_FILE: &str = "jobs.toml";
/// The module's name in a task's scratch directory.
const WASM_FILE: &str = "task.wasm";

/// `jobs.toml` in the data directory; every field optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    /// Task slots (default: the number of CPUs; 0: this node runs no tasks).
    pub slots: Option<u32>,
    /// Relative speed for the greedy policy (default: measured at start).
    pub speed: Option<f64>,
    /// The user tasks run as when the agent runs as root (default `nobody`; `root`
    /// allows root).
    pub task_user: Option<String>,
}

impl JobSettings {
    pub fn load(data_dir: &Path) -> Result<JobSettings, String> {
        let path = data_dir.join(SETTINGS_FILE);
        if !path.exists() {
            return Ok(JobSettings::default());
        }
        let settings: JobSettings = bramble_util::files::read_toml(&path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        if settings.slots.is_some_and(|slots| slots > 1024) {
            return Err(format!("{}: slots is at most 1024", path.display()));
        }
        if settings
            .speed
            .is_some_and(|speed| !speed.is_finite() || speed <= 0.0 || speed > 1e6)
        {
            return Err(format!(
                "{}: speed is a positive number (1.0: the reference)",
                path.display()
            ));
        }
        Ok(settings)
    }
}

/// Measures this node's speed with a short run of `bench cpu` (0.3 s, one thread, the
/// default max prime), in the unit `bench cpu` stores: events per second over 1,000.
/// How long `Runner::new` waits for the catalog's record of this node's speed.
const STARTUP_SPEED_READ: Duration = Duration::from_millis(100);

/// This node's speed as `bench cpu` last stored it in the catalog.
async fn stored_speed(meta: &Meta, node: &str) -> Option<f64> {
    meta.read(&super::admin::speed_key(node), Consistency::Stale, false)
        .await
        .ok()
        .flatten()
        .and_then(|value| serde_json::from_slice(&value.value).ok())
        .filter(|speed: &f64| speed.is_finite() && *speed > 0.0 && *speed < 1e6)
}

fn calibrate() -> f64 {
    let request = crate::cpu_bench::CpuBenchRequest {
        max_prime: crate::cpu_bench::DEFAULT_MAX_PRIME,
        threads: 1,
        events: 0,
        seconds: 0.3,
    };
    crate::cpu_bench::run(&request, "")
        .ok()
        .and_then(|result| crate::cpu_bench::speed_of(&result))
        .map_or(1.0, |speed| (speed * 1000.0).round() / 1000.0)
}

/// An attempt being run here.
struct Attempt {
    stop: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    cpus: u32,
}

/// What is kept of a finished attempt until a checkpoint covers it.
struct Unacknowledged {
    result: TaskResult,
    /// The scheduler epoch it was last sent to (0: never sent).
    sent_to: u64,
}

pub struct Runner {
    node: String,
    /// The cluster's id, in scratch directory names.
    cluster_id: String,
    data_dir: PathBuf,
    slots: u32,
    /// f64 bits: `bench cpu` may change it while the runner runs.
    speed: AtomicU64,
    /// Whether the speed came from jobs.toml or the catalog (else from the measurement at
    /// start, and the runner asks the catalog again when it starts).
    speed_settled: bool,
    cpus: u32,
    identity: Identity,
    meta: Arc<Meta>,
    membership: Arc<Membership>,
    rpc: RpcClient,
    scheduler: Arc<Scheduler>,
    running: Mutex<HashMap<TaskKey, Attempt>>,
    unacknowledged: Mutex<BTreeMap<TaskKey, Unacknowledged>>,
    wake: Notify,
    /// Modules fetched from the catalog, by hash.
    modules: crate::modules::ModuleCache,
    /// Jobs whose scratch directory this run made.
    job_directories: Mutex<BTreeSet<JobId>>,
    /// Attempts given to this node beyond its free slots, started as slots free.
    queued: Mutex<VecDeque<Assignment>>,
    /// The agent is stopping: start nothing more.
    stopping_all: AtomicBool,
}

impl Runner {
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        node: &str,
        cluster_id: &str,
        data_dir: &Path,
        settings: &JobSettings,
        meta: Arc<Meta>,
        membership: Arc<Membership>,
        rpc: RpcClient,
        scheduler: Arc<Scheduler>,
    ) -> Result<Arc<Runner>, String> {
        let cpus = std::thread::available_parallelism()
            .map(|count| count.get() as u32)
            .unwrap_or(1);
        let identity = Identity::resolve(settings.task_user.as_deref())
            .map_err(|error| format!("jobs.toml: {error}"))?;
        // jobs.toml's figure, else the last `bench cpu` here, else a short measurement.
        // The catalog is asked only briefly: a node that has just joined is no replica
        // yet, and its read would wait for the leader (5 s, for every node `bramble up`
        // starts); the runner asks again once it runs ([`Runner::run`]).
        let measured = tokio::time::timeout(STARTUP_SPEED_READ, stored_speed(&meta, node))
            .await
            .ok()
            .flatten();
        let speed_settled = settings.speed.is_some() || measured.is_some();
        let speed = match settings.speed.or(measured) {
            Some(speed) => speed,
            // Measured here, before the agent answers: run later, the measurement's 0.3 s
            // of CPU overlapped a restarted node's return to service (its VIP and
            // backends) and cost a busy node requests.
            None => bramble_util::scheduling::run_at_original_priority(calibrate)
                .await
                .unwrap_or(1.0),
        };
        let output = data_dir.join(OUTPUT_DIRECTORY);
        std::fs::create_dir_all(&output)
            .map_err(|error| format!("creating {}: {error}", output.display()))?;
        Ok(Arc::new(Runner {
            node: node.to_string(),
            cluster_id: cluster_id.to_string(),
            data_dir: data_dir.to_path_buf(),
            slots: settings.slots.unwrap_or(cpus),
            speed: AtomicU64::new(speed.to_bits()),
            speed_settled,
            cpus,
            identity,
            meta,
            membership,
            rpc,
            scheduler,
            running: Mutex::new(HashMap::new()),
            unacknowledged: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            modules: crate::modules::ModuleCache::new(data_dir),
            job_directories: Mutex::new(BTreeSet::new()),
            queued: Mutex::new(VecDeque::new()),
            stopping_all: AtomicBool::new(false),
        }))
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn speed(&self) -> f64 {
        f64::from_bits(self.speed.load(Ordering::Relaxed))
    }

    /// A new measure of this node's speed (`bench cpu`), used from the next exchange.
    pub fn set_speed(&self, speed: f64) {
        self.speed.store(speed.to_bits(), Ordering::Relaxed);
    }

    pub fn running_count(&self) -> usize {
        self.running().len()
    }

    fn running(&self) -> MutexGuard<'_, HashMap<TaskKey, Attempt>> {
        self.running
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn unacknowledged(&self) -> MutexGuard<'_, BTreeMap<TaskKey, Unacknowledged>> {
        self.unacknowledged
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn used_slots(&self) -> u32 {
        self.running().values().map(|attempt| attempt.cpus).sum()
    }

    /// The worker `jobs-runner`.
    pub async fn run(self: Arc<Self>, worker: WorkerContext) -> Result<(), String> {
        let mut shutdown = worker.shutdown();
        if !self.speed_settled {
            // A `bench cpu` result kept from before a restart wins over the measurement,
            // also when the catalog could not say so at start (a node not yet a replica).
            let stored = tokio::select! {
                _ = shutdown.wait() => return Ok(()),
                stored = stored_speed(&self.meta, &self.node) => stored,
            };
            if let Some(speed) = stored {
                self.set_speed(speed);
            }
        }
        let mut watch = self.meta.watch(STATE_PREFIX);
        let mut active = self.active_jobs().await;
        let mut epoch = 0u64;
        loop {
            // One lock at a time: the queue is always taken before the running table.
            let has_queued = !self.queued().is_empty();
            let has_running = !self.running().is_empty();
            let has_results = !self.unacknowledged().is_empty();
            let busy = has_queued || has_running || has_results;
            worker.set_queue(self.running().len() as u64);
            self.forget_job_directories(&active);
            if !busy && active.is_empty() {
                worker.set_progress("idle");
                tokio::select! {
                    _ = shutdown.wait() => break,
                    change = watch.next() => {
                        if !follow(&mut active, change, &self).await {
                            break;
                        }
                    }
                    _ = self.wake.notified() => {}
                }
                continue;
            }
            let free = self.slots.saturating_sub(self.used_slots());
            let wants_work = free > 0 && !active.is_empty();
            let outcome = tokio::select! {
                _ = shutdown.wait() => break,
                outcome = self.exchange(epoch, wants_work) => outcome,
            };
            let mut pause = Duration::ZERO;
            match outcome {
                Ok(answer) => {
                    // A new scheduler: resend every result it has not seen, at once.
                    let new_scheduler = answer.epoch != epoch;
                    epoch = answer.epoch;
                    let started = answer.start.len();
                    let was_idle = self.running().is_empty();
                    self.apply_answer(answer);
                    worker.set_progress(format!(
                        "{} running, {} slot(s)",
                        self.running().len(),
                        self.slots
                    ));
                    // An idle worker that wants work was held by the scheduler already;
                    // otherwise report again when a task ends, or at the heartbeat.
                    if started == 0 && !new_scheduler && !(wants_work && was_idle) {
                        pause = HEARTBEAT;
                    }
                }
                Err(error) => {
                    debug!(%error, "no answer from the jobs scheduler");
                    pause = Duration::from_millis(300);
                }
            }
            // Drain the catalog's changes (the set of active jobs) without waiting.
            while let Some(change) = watch.try_next() {
                if !follow(&mut active, Some(change), &self).await {
                    return Ok(());
                }
            }
            if !pause.is_zero() {
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                    change = watch.next() => {
                        if !follow(&mut active, change, &self).await {
                            break;
                        }
                    }
                }
            }
        }
        self.stop_everything().await;
        self.forget_job_directories(&BTreeSet::new());
        Ok(())
    }

    /// Stops every attempt (the agent is stopping); they are reported as lost and run
    /// elsewhere.
    async fn stop_everything(&self) {
        self.stopping_all.store(true, Ordering::SeqCst);
        self.queued().clear();
        let attempts: Vec<(Arc<Notify>, Arc<AtomicBool>)> = self
            .running()
            .values()
            .map(|attempt| (attempt.stop.clone(), attempt.stopping.clone()))
            .collect();
        for (stop, stopping) in attempts {
            stopping.store(true, Ordering::SeqCst);
            stop.notify_one();
        }
        let deadline = Instant::now() + STOP_GRACE + Duration::from_millis(500);
        while !self.running().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Jobs whose state in this node's replica is not final.
    async fn active_jobs(&self) -> BTreeSet<JobId> {
        let Ok(records) =
            crate::catalog::scan_prefix(&self.meta, STATE_PREFIX, Consistency::Stale).await
        else {
            return BTreeSet::new();
        };
        records
            .into_iter()
            .filter_map(|(key, value)| {
                let id = id_of_key(&key, STATE_PREFIX)?;
                let record = JobRecord::decode(&value).ok()?;
                (!record.state.is_final()).then_some(id)
            })
            .collect()
    }

    async fn exchange(&self, epoch: u64, wants_work: bool) -> Result<ExchangeAnswer, RpcError> {
        // Queued attempts are the worker's too: the scheduler counts them as placed here.
        // Read under the queue's lock (see `start_queued`): an attempt is in one list or the
        // other, never in neither, which the scheduler would take for a lost attempt.
        let mut running: Vec<TaskKey> = {
            let queued = self.queued();
            let mut keys: Vec<TaskKey> = queued.iter().map(|queued| queued.key).collect();
            keys.extend(self.running().keys().copied());
            keys
        };
        running.sort_unstable();
        running.dedup();
        let holder = self
            .meta
            .lease_record(SCHEDULER_LEASE)
            .and_then(|(record, _)| record.holder)
            .ok_or_else(|| RpcError::new(ErrorKind::Unavailable, "no jobs scheduler yet"))?;
        let finished: Vec<TaskResult> = {
            let unacknowledged = self.unacknowledged();
            unacknowledged
                .values()
                .filter(|kept| kept.sent_to != epoch || epoch == 0)
                .map(|kept| kept.result.clone())
                .collect()
        };
        let request = ExchangeRequest {
            node: self.node.clone(),
            slots: self.slots,
            speed: self.speed(),
            load1: load_average(),
            cpus: self.cpus,
            running,
            finished,
            epoch,
            wants_work,
        };
        let sent: Vec<TaskKey> = request.finished.iter().map(|result| result.key).collect();
        let answer = if holder == self.node {
            self.scheduler.exchange(request).await?
        } else {
            let address = self
                .membership
                .nodes()
                .await
                .into_iter()
                .find(|node| node.name == holder)
                .map(|node| node.addr)
                .ok_or_else(|| {
                    RpcError::new(
                        ErrorKind::Unavailable,
                        format!("the jobs scheduler {holder} is not a known member"),
                    )
                })?;
            let call = self.rpc.call_reusing(address, METHOD_EXCHANGE, &request);
            match tokio::time::timeout(EXCHANGE_TIMEOUT, call).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => {
                    return Err(error.remote().cloned().unwrap_or_else(|| {
                        RpcError::new(ErrorKind::Unavailable, error.to_string())
                    }));
                }
                Err(_) => {
                    return Err(RpcError::new(
                        ErrorKind::Unavailable,
                        "the jobs scheduler did not answer in time",
                    ));
                }
            }
        };
        let mut unacknowledged = self.unacknowledged();
        for key in sent {
            if let Some(kept) = unacknowledged.get_mut(&key) {
                kept.sent_to = answer.epoch;
            }
        }
        for key in &answer.durable {
            unacknowledged.remove(key);
        }
        Ok(answer)
    }

    fn apply_answer(self: &Arc<Self>, answer: ExchangeAnswer) {
        for key in &answer.stop {
            if let Some(attempt) = self.running().get(key) {
                attempt.stopping.store(true, Ordering::SeqCst);
                attempt.stop.notify_one();
            }
            self.queued().retain(|queued| queued.key != *key);
        }
        for assignment in answer.start {
            let key = assignment.key;
            // One lock at a time (the queue is taken before the running table elsewhere).
            let running = self.running().contains_key(&key);
            let finished = self.unacknowledged().contains_key(&key);
            let mut queued = self.queued();
            if !running && !finished && !queued.iter().any(|queued| queued.key == key) {
                queued.push_back(assignment);
            }
        }
        self.start_queued();
    }

    fn queued(&self) -> MutexGuard<'_, VecDeque<Assignment>> {
        self.queued
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Starts queued attempts while slots are free. The scheduler gives a worker a few
    /// more short tasks than it has slots (see `scheduler::assign`), so a slot that frees
    /// takes the next task at once instead of after a round trip.
    fn start_queued(self: &Arc<Self>) {
        // The queue stays locked until the attempt is in the running table, so a report
        // (which reads the queue, then the table, under the same lock) never misses it.
        let mut queued = self.queued();
        loop {
            let free = self.slots.saturating_sub(self.used_slots());
            let fits = queued.front().is_some_and(|first| first.cpus <= free);
            if !fits {
                return;
            }
            let Some(assignment) = queued.pop_front() else {
                return;
            };
            self.start_attempt(assignment);
        }
    }

    fn start_attempt(self: &Arc<Self>, assignment: Assignment) {
        let key = assignment.key;
        let stop = Arc::new(Notify::new());
        let stopping = Arc::new(AtomicBool::new(false));
        self.running().insert(
            key,
            Attempt {
                stop: stop.clone(),
                stopping: stopping.clone(),
                cpus: assignment.cpus,
            },
        );
        let runner = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let (outcome, value, stderr_tail) =
                runner.run_attempt(&assignment, stop, stopping).await;
            let result = TaskResult {
                key,
                outcome,
                value,
                stderr_tail,
                duration_ms: started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32,
            };
            runner
                .unacknowledged()
                .insert(key, Unacknowledged { result, sent_to: 0 });
            runner.running().remove(&key);
            if !runner.stopping_all.load(Ordering::SeqCst) {
                runner.start_queued();
            }
            runner.wake.notify_one();
        });
    }

    /// Where an attempt's output is kept.
    pub fn output_paths(&self, key: TaskKey) -> (PathBuf, PathBuf) {
        let directory = self
            .data_dir
            .join(OUTPUT_DIRECTORY)
            .join(format!("{:012}", key.job));
        (
            directory.join(format!("{}.{}.out", key.index, key.attempt)),
            directory.join(format!("{}.{}.err", key.index, key.attempt)),
        )
    }

    /// `jobs.output`: an attempt's kept output from `offset`.
    pub fn read_output(&self, request: &OutputRequest) -> Result<OutputAnswer, RpcError> {
        let key = TaskKey {
            job: request.job,
            index: request.index,
            attempt: request.attempt,
        };
        let (stdout_path, stderr_path) = self.output_paths(key);
        let read = |path: &Path| -> Result<(Vec<u8>, u64), RpcError> {
            let bytes = match std::fs::read(path) {
                Ok(bytes) => bytes,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(error) => {
                    return Err(RpcError::new(
                        ErrorKind::Internal,
                        format!("reading {}: {error}", path.display()),
                    ));
                }
            };
            let dropped = read_dropped(path);
            let start = (request.offset as usize).min(bytes.len());
            Ok((bytes[start..].to_vec(), dropped))
        };
        // A task that printed nothing has no files (they are made at the first byte).
        let (stdout, stdout_dropped) = read(&stdout_path)?;
        let (stderr, stderr_dropped) = read(&stderr_path)?;
        Ok(OutputAnswer {
            stdout,
            stderr,
            stdout_dropped,
            stderr_dropped,
            running: self.running().contains_key(&key),
        })
    }

    /// Removes the kept output of jobs the catalog no longer has.
    pub async fn forget_outputs(&self, keep: &BTreeSet<JobId>) {
        let directory = self.data_dir.join(OUTPUT_DIRECTORY);
        let Ok(entries) = std::fs::read_dir(&directory) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|text| text.parse::<JobId>().ok()) else {
                continue;
            };
            let running = self.running().keys().any(|key| key.job == id);
            if !keep.contains(&id) && !running {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    async fn run_attempt(
        &self,
        assignment: &Assignment,
        stop: Arc<Notify>,
        stopping: Arc<AtomicBool>,
    ) -> (Outcome, Option<String>, String) {
        match &assignment.work {
            Work::Pi { samples } => {
                let samples =
                    montecarlo::samples_of_task(*samples, assignment.count, assignment.key.index);
                let seed = montecarlo::task_seed(assignment.seed, assignment.key.index);
                let (sender, receiver) = tokio::sync::oneshot::channel();
                let flag = stopping.clone();
                let spawned = std::thread::Builder::new()
                    .name("job-pi".to_string())
                    .spawn(move || {
                        bramble_util::scheduling::restore_original_priority();
                        let _ = sender.send(montecarlo::count_hits(seed, samples, &flag));
                    });
                if let Err(error) = spawned {
                    return (
                        Outcome::NotStarted {
                            reason: format!("could not start a thread: {error}"),
                        },
                        None,
                        String::new(),
                    );
                }
                let timeout = assignment.timeout_ms.map(Duration::from_millis);
                let started = Instant::now();
                let waited = async {
                    match timeout {
                        Some(limit) => tokio::time::timeout(limit, receiver).await.ok(),
                        None => Some(receiver.await),
                    }
                };
                tokio::select! {
                    finished = waited => match finished {
                        Some(Ok(Some(hits))) => (Outcome::Exited { code: 0 }, Some(hits.to_string()), String::new()),
                        Some(_) => (Outcome::Stopped, None, String::new()),
                        None => {
                            stopping.store(true, Ordering::SeqCst);
                            (Outcome::TimedOut { after_ms: started.elapsed().as_millis() as u64 }, None, String::new())
                        }
                    },
                    _ = stop.notified() => {
                        stopping.store(true, Ordering::SeqCst);
                        (Outcome::Stopped, None, String::new())
                    }
                }
            }
            Work::Command { program, args } => {
                self.run_command(assignment, program, args, None, stop, stopping)
                    .await
            }
            Work::Wasm {
                module,
                module_bytes,
                args,
                fuel,
                memory_bytes,
            } => {
                let reference = crate::modules::ModuleRef {
                    hash: module.clone(),
                    bytes: *module_bytes,
                };
                let cached = match self.modules.fetch(&self.meta, &reference).await {
                    Ok(path) => path,
                    Err(reason) => return (Outcome::NotStarted { reason }, None, String::new()),
                };
                // The agent's own binary runs the module (`bramble wasm-task`), so a
                // runaway module is a process the runner can kill like any other.
                let mut child_args = vec![
                    "wasm-task".to_string(),
                    "--module".to_string(),
                    WASM_FILE.to_string(),
                    "--memory".to_string(),
                    memory_bytes.to_string(),
                ];
                if let Some(fuel) = fuel {
                    child_args.push("--fuel".to_string());
                    child_args.push(fuel.to_string());
                }
                child_args.push("--".to_string());
                child_args.extend(args.iter().cloned());
                self.run_command(
                    assignment,
                    "/proc/self/exe",
                    &child_args,
                    Some(&cached),
                    stop,
                    stopping,
                )
                .await
            }
        }
    }

    /// Where `job`'s scratch directory is: named by cluster and node, so the emulator's
    /// clusters on one machine (whose nodes share names and job numbers) never meet.
    fn job_directory_path(&self, job: JobId) -> PathBuf {
        crate::process::scratch_directory(&self.cluster_id, &self.node, &format!("job{job}"))
    }

    /// The scratch directory of `job`'s tasks on this node (made on first use).
    fn job_directory(&self, job: JobId) -> Result<PathBuf, String> {
        let path = self.job_directory_path(job);
        let mut made = self
            .job_directories
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if made.contains(&job) {
            return Ok(path);
        }
        // A directory left by an earlier run of this agent is not trusted.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path)
            .map_err(|error| format!("creating {}: {error}", path.display()))?;
        self.identity.give(&path);
        made.insert(job);
        Ok(path)
    }

    /// Removes the scratch directories of jobs that are no longer active here.
    fn forget_job_directories(&self, active: &BTreeSet<JobId>) {
        let running: BTreeSet<JobId> = self.running().keys().map(|key| key.job).collect();
        let mut made = self
            .job_directories
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let finished: Vec<JobId> = made
            .iter()
            .filter(|job| !active.contains(job) && !running.contains(job))
            .copied()
            .collect();
        for job in finished {
            made.remove(&job);
            let _ = std::fs::remove_dir_all(self.job_directory_path(job));
        }
    }

    /// `jobs.launch`: runs a shell command line like a task (see `launch.rs`).
    pub fn spawn_shell(
        &self,
        line: &str,
        env: &[(String, String)],
    ) -> Result<LaunchedShell, String> {
        let scratch = crate::process::scratch_directory(
            &self.cluster_id,
            &self.node,
            &format!(
                "launch-{}-{}",
                std::process::id(),
                LAUNCHES.fetch_add(1, Ordering::Relaxed)
            ),
        );
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir(&scratch)
            .map_err(|error| format!("creating {}: {error}", scratch.display()))?;
        let scratch = WorkDirectory(scratch);
        self.identity.give(&scratch.0);
        let mut command =
            self.identity
                .command("/bin/sh", &["-c".to_string(), line.to_string()], &scratch.0);
        command.envs(env.iter().map(|(name, value)| (name, value)));
        let process = command
            .spawn()
            .map_err(|error| format!("starting /bin/sh on {}: {error}", self.node))?;
        Ok(LaunchedShell { process, scratch })
    }

    async fn run_command(
        &self,
        assignment: &Assignment,
        program: &str,
        args: &[String],
        module: Option<&Path>,
        stop: Arc<Notify>,
        stopping: Arc<AtomicBool>,
    ) -> (Outcome, Option<String>, String) {
        let key = assignment.key;
        let not_started = |reason: String| (Outcome::NotStarted { reason }, None, String::new());
        let (stdout_path, stderr_path) = self.output_paths(key);
        if let Some(parent) = stdout_path.parent()
            && let Err(error) = std::fs::create_dir_all(parent)
        {
            return not_started(format!("creating {}: {error}", parent.display()));
        }
        // One scratch directory per job on this node, shared by its tasks (as Slurm's
        // tasks share their submit directory): creating and removing one per task cost
        // more than starting a small task.
        let work_directory = match self.job_directory(key.job) {
            Ok(path) => path,
            Err(reason) => return not_started(reason),
        };
        let module_copy = work_directory.join(WASM_FILE);
        if let Some(module) = module
            && !module_copy.exists()
        {
            let partial = work_directory.join(format!("{WASM_FILE}.{}", key.index));
            if let Err(error) = std::fs::copy(module, &partial)
                .and_then(|_| std::fs::rename(&partial, &module_copy))
            {
                return not_started(format!("copying the module for the task: {error}"));
            }
            self.identity.give(&module_copy);
        }
        let mut command = self.identity.command(program, args, &work_directory);
        command
            .env("BRAMBLE_JOB_ID", key.job.to_string())
            .env("BRAMBLE_TASK_INDEX", key.index.to_string())
            .env("BRAMBLE_TASK_COUNT", assignment.count.to_string())
            .env("BRAMBLE_ATTEMPT", key.attempt.to_string())
            .env(
                "BRAMBLE_TASK_SEED",
                montecarlo::task_seed(assignment.seed, key.index).to_string(),
            )
            .env("BRAMBLE_NODE", &self.node)
            .envs(assignment.env.iter().map(|(name, value)| (name, value)));
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                let reason = if !work_directory.is_dir() {
                    format!(
                        "its scratch directory {} disappeared before it started",
                        work_directory.display()
                    )
                } else if error.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "{program:?} was not found on node {} (PATH and the program itself)",
                        self.node
                    )
                } else {
                    format!("{program:?}: {error}")
                };
                return not_started(reason);
            }
        };
        let process_group = child.id().map(|pid| pid as i32);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let stdout_task = tokio::spawn(capture(stdout, stdout_path));
        let stderr_task = tokio::spawn(capture(stderr, stderr_path));
        let timeout = assignment.timeout_ms.map(Duration::from_millis);
        let started = Instant::now();
        let deadline = async {
            match timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending::<()>().await,
            }
        };
        let status = tokio::select! {
            status = child.wait() => Some(status),
            _ = deadline => None,
            _ = stop.notified() => {
                stopping.store(true, Ordering::SeqCst);
                None
            }
        };
        let outcome = match status {
            Some(Ok(status)) => {
                use std::os::unix::process::ExitStatusExt;
                match (status.code(), status.signal()) {
                    (Some(code), _) => Outcome::Exited { code },
                    (None, Some(signal)) => Outcome::Signalled { signal },
                    _ => Outcome::Exited { code: -1 },
                }
            }
            Some(Err(error)) => Outcome::NotStarted {
                reason: format!("waiting for the task: {error}"),
            },
            None => {
                terminate(process_group, &mut child).await;
                if stopping.load(Ordering::SeqCst) {
                    Outcome::Stopped
                } else {
                    Outcome::TimedOut {
                        after_ms: started.elapsed().as_millis() as u64,
                    }
                }
            }
        };
        // The group's other processes may hold the pipes open: end them too.
        if let Some(group) = process_group {
            // SAFETY: signalling a process group we created; a group that is gone is ESRCH.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
        let stdout = stdout_task.await.unwrap_or_default();
        let stderr = stderr_task.await.unwrap_or_default();
        let value = match assignment.reduce {
            Reduce::Concat => task_value(Reduce::Concat, &stdout.head),
            reduce => task_value(reduce, &stdout.tail),
        };
        let mut stderr_tail = String::from_utf8_lossy(&stderr.tail).to_string();
        if stderr_tail.len() > STDERR_TAIL_BYTES {
            let mut cut = stderr_tail.len() - STDERR_TAIL_BYTES;
            while !stderr_tail.is_char_boundary(cut) {
                cut += 1;
            }
            stderr_tail = stderr_tail[cut..].to_string();
        }
        (outcome, value, stderr_tail)
    }
}

/// Removes an attempt's scratch directory when dropped.
pub struct WorkDirectory(PathBuf);

/// A command started by `jobs.launch`, with its scratch directory (removed on drop).
pub struct LaunchedShell {
    pub process: tokio::process::Child,
    pub scratch: WorkDirectory,
}

/// Numbers launches' scratch directories.
static LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for WorkDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SIGTERM to the task's group, then SIGKILL after the grace period.
async fn terminate(process_group: Option<i32>, child: &mut tokio::process::Child) {
    let Some(group) = process_group else {
        let _ = child.kill().await;
        return;
    };
    // SAFETY: signalling a process group we created.
    unsafe {
        libc::kill(-group, libc::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        // SAFETY: as above.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = child.wait().await;
    }
}

/// What is kept in memory of a stream: its first and last bytes.
#[derive(Default)]
struct Captured {
    head: Vec<u8>,
    tail: Vec<u8>,
}

/// Copies a stream to `path` up to [`MAX_KEPT_OUTPUT`] bytes, counting the rest (written
/// to `<path>.dropped`), and keeps its head and tail for the value and the failure reason.
async fn capture(stream: Option<impl AsyncRead + Unpin>, path: PathBuf) -> Captured {
    let mut captured = Captured::default();
    let Some(mut stream) = stream else {
        return captured;
    };
    // The file is made when the first byte arrives: most small tasks print little or
    // nothing, and creating two files per task cost more than running it.
    let mut file: Option<tokio::fs::File> = None;
    let mut file_failed = false;
    let mut kept = 0u64;
    let mut dropped = 0u64;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        if captured.head.len() < MAX_VALUE_BYTES {
            let room = MAX_VALUE_BYTES - captured.head.len();
            captured.head.extend_from_slice(&chunk[..room.min(read)]);
        }
        captured.tail.extend_from_slice(chunk);
        if captured.tail.len() > 2 * MAX_VALUE_BYTES {
            let excess = captured.tail.len() - MAX_VALUE_BYTES;
            captured.tail.drain(..excess);
        }
        let room = MAX_KEPT_OUTPUT.saturating_sub(kept) as usize;
        let keep = room.min(read);
        if keep > 0 && file.is_none() && !file_failed {
            match tokio::fs::File::create(&path).await {
                Ok(created) => file = Some(created),
                Err(error) => {
                    file_failed = true;
                    warn!(path = %path.display(), %error, "cannot keep a task's output");
                }
            }
        }
        if keep > 0
            && let Some(file) = file.as_mut()
            && file.write_all(&chunk[..keep]).await.is_err()
        {
            break;
        }
        kept += keep as u64;
        dropped += (read - keep) as u64;
    }
    if let Some(mut file) = file {
        let _ = file.flush().await;
    }
    if dropped > 0 {
        let _ = std::fs::write(dropped_path(&path), dropped.to_string());
    }
    captured
}

fn dropped_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".dropped");
    PathBuf::from(name)
}

fn read_dropped(path: &Path) -> u64 {
    std::fs::read_to_string(dropped_path(path))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// The one-minute load average.
fn load_average() -> f32 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Follows one catalog change of the job states; false when the replica closed.
async fn follow(active: &mut BTreeSet<JobId>, change: Option<Change>, runner: &Runner) -> bool {
    match change {
        None => false,
        Some(Change::Reset) => {
            *active = runner.active_jobs().await;
            true
        }
        Some(Change::Key { key, value, .. }) => {
            if let Some(id) = id_of_key(&key, STATE_PREFIX) {
                let unfinished = value
                    .as_deref()
                    .and_then(|bytes| JobRecord::decode(bytes).ok())
                    .is_some_and(|record| !record.state.is_final());
                if unfinished {
                    active.insert(id);
                } else {
                    active.remove(&id);
                }
            }
            true
        }
    }
}
