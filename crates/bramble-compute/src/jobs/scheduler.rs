//! The scheduler: one node at a time, the holder of the `jobs/scheduler` lease, places the
//! tasks of every job on the nodes' slots, counts each task's result once, and
//! checkpoints every job to the catalog.
//!
//! Why one scheduler for all jobs (Slurm's slurmctld, Nomad's leader) rather than one
//! coordinator per job: it sees every node's slots across jobs, so "a node never runs
//! more tasks than its free slots" holds with several jobs at once without coordinators
//! negotiating. It is no single point of failure: its state is in the catalog (specs and
//! checkpoints) and on the workers (running tasks, results not yet checkpointed), so the
//! next lease holder rebuilds it.
//!
//! - **Workers pull.** Each node's runner calls `jobs.exchange` with its finished results,
//!   the attempts it is running and whether it has free slots; the answer carries new
//!   assignments, attempts to stop and the results a committed checkpoint now covers. A
//!   worker with free slots is held for up to a second until work appears, so a new job
//!   starts without polling delay and an idle cluster sends nothing (workers only call
//!   while a job is active, which they learn from their catalog replica).
//! - **Exactly-once results.** A result counts only if its index is not yet in the job's
//!   `done` set; the checkpoint stores `done` with the reduction over exactly those
//!   indices, fenced by the lease grant's version, so a deposed scheduler cannot write.
//!   Workers keep each result until a checkpoint covers it and resend it to a new
//!   scheduler. Execution is at least once: a task may run twice (a node cut off and
//!   back, a speculative copy, a scheduler change), its result counts once.
//! - **Recovery.** A node declared dead by gossip, or silent for [`WORKER_SILENCE`]
//!   while it had tasks, loses them: they run elsewhere. A failed attempt is retried up to
//!   `--retries` times, on another node where one is free. With `--speculate`, once 75 %
//!   of a job's tasks are done, a task running longer than 1.5 times the median gets a
//!   copy on another node (Spark's defaults); the first result wins, the other copy is
//!   stopped.
//! - **Drained nodes** (`bramble drain`) get no new tasks, and their share of a static
//!   plan goes to the shared queue; the tasks they already run finish there (a drain does
//!   not stop work in progress; a reboot afterwards would lose it to the recovery above).
//! - **Taking over.** A new scheduler loads every unfinished job from the catalog, adopts
//!   the attempts workers report as running, and holds back new assignments until every
//!   live worker has reported or [`ADOPTION_WAIT`] has passed, so running tasks are not
//!   started a second time.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bramble_cluster::{Membership, NodeState};
use bramble_meta::Meta;
use bramble_meta::api::Consistency;
use bramble_meta::types::{Change, Command, CommandResult, Condition, Operation};
use bramble_net::{ErrorKind, RpcError};
use bramble_platform::lease_holder::HeldLease;
use bramble_util::WorkerContext;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::admin::*;
use super::policy::{self, NodeCapacity};
use super::record::*;
use super::spec::{JobId, JobSpec};

/// The scheduler lease's period: a dead scheduler is replaced after about this long.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How long a worker with running tasks may stay silent before they run elsewhere.
pub const WORKER_SILENCE: Duration = Duration::from_secs(5);
/// After taking over, how long to wait for workers to report what they run.
pub const ADOPTION_WAIT: Duration = Duration::from_secs(2);
/// How long a new job waits for idle workers to report before a static plan is made.
const PLANNING_WAIT: Duration = Duration::from_millis(300);
/// Tasks shorter than this (median) are queued on workers ahead of their free slots.
const PIPELINE_BELOW: Duration = Duration::from_millis(100);
/// How long a worker asking for work is held when there is none.
const LONG_POLL: Duration = Duration::from_secs(1);
/// How often dirty jobs are checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// Speculation: after this share of a job's tasks is done...
const SPECULATION_QUANTILE: f64 = 0.75;
/// ...a task running this many times the median gets a copy...
const SPECULATION_MULTIPLIER: f64 = 1.5;
/// ...if it has run at least this long.
const SPECULATION_MINIMUM: Duration = Duration::from_millis(200);
/// Finished jobs kept in the catalog: this many, for at most a day.
const KEEP_FINISHED_JOBS: usize = 1000;
const KEEP_FINISHED_FOR_MS: u64 = 24 * 3600 * 1000;
/// A checkpoint batch carries at most this many bytes (the catalog's bound is 1.5 MiB).
const CHECKPOINT_BATCH_BYTES: usize = 1024 * 1024;

/// One running copy of a task.
#[derive(Debug, Clone)]
struct Copy {
    node: String,
    attempt: u32,
    started: Instant,
}

/// A job as the scheduler runs it.
struct JobRun {
    spec: Arc<JobSpec>,
    record: JobRecord,
    rows: Vec<TaskRow>,
    /// Failed attempts per task (retries are bounded by the spec).
    failures: Vec<u8>,
    copies: BTreeMap<u32, Vec<Copy>>,
    /// Tasks any node may take: the dynamic policy's queue, and retries or the share of
    /// a lost node under any policy.
    pending: VecDeque<u32>,
    /// Nodes a task failed on (a retry prefers another).
    failed_on: HashMap<u32, String>,
    /// Static policies: each node's queue.
    plan: Option<BTreeMap<String, VecDeque<u32>>>,
    /// Tasks waiting for a speculative copy.
    speculate: VecDeque<u32>,
    durations: Vec<u32>,
    loaded_at: Instant,
    dirty: bool,
    dirty_chunks: BTreeSet<u32>,
    /// The final state is committed: the job leaves the scheduler's memory.
    final_committed: bool,
}

impl JobRun {
    fn new(spec: Arc<JobSpec>, record: JobRecord, rows: Vec<TaskRow>) -> JobRun {
        let count = spec.tasks as usize;
        let mut rows = rows;
        rows.resize(count, TaskRow::default());
        let mut pending = VecDeque::new();
        for (index, row) in rows.iter_mut().enumerate() {
            if record.done.contains(index as u32) {
                row.state = TaskState::Done;
            } else {
                row.state = TaskState::Pending;
                if !spec.policy.is_static() {
                    pending.push_back(index as u32);
                }
            }
        }
        JobRun {
            failures: vec![0; count],
            spec,
            record,
            rows,
            copies: BTreeMap::new(),
            pending,
            failed_on: HashMap::new(),
            plan: None,
            speculate: VecDeque::new(),
            durations: Vec::new(),
            loaded_at: Instant::now(),
            dirty: false,
            dirty_chunks: BTreeSet::new(),
            final_committed: false,
        }
    }

    fn running(&self) -> u32 {
        self.copies.values().map(|copies| copies.len() as u32).sum()
    }

    fn mark_row(&mut self, index: u32) {
        self.dirty = true;
        self.dirty_chunks.insert(index / TASKS_PER_CHUNK);
    }

    /// Removes a task from every queue (it was adopted or is done).
    fn unqueue(&mut self, index: u32) {
        self.pending.retain(|queued| *queued != index);
        if let Some(plan) = &mut self.plan {
            for queue in plan.values_mut() {
                queue.retain(|queued| *queued != index);
            }
        }
        self.speculate.retain(|queued| *queued != index);
    }

    fn finish(&mut self, state: JobState, reason: Option<String>) {
        if self.record.state.is_final() {
            return;
        }
        self.record.state = state;
        self.record.reason = reason;
        self.record.finished_unix_ms = Some(bramble_util::time::unix_millis());
        self.dirty = true;
        self.pending.clear();
        self.plan = None;
        self.speculate.clear();
    }
}

/// A worker as the scheduler sees it.
struct WorkerView {
    slots: u32,
    speed: f64,
    load1: f32,
    cpus: u32,
    used: u32,
    last_seen: Instant,
    to_stop: BTreeSet<TaskKey>,
    /// Results applied but not yet in a committed checkpoint.
    awaiting_checkpoint: Vec<TaskKey>,
    /// Results to tell the worker it may forget.
    durable: Vec<TaskKey>,
}

/// The scheduler's state while this node holds the lease.
struct Reign {
    epoch: u64,
    grant_version: u64,
    adopting_until: Instant,
    jobs: BTreeMap<JobId, JobRun>,
    workers: BTreeMap<String, WorkerView>,
    /// Members alive when the reign began that have not reported yet.
    unreported: BTreeSet<String>,
    /// The unfinished jobs are loaded: until then a report could name a job this
    /// scheduler does not know yet, so exchanges wait.
    loaded: bool,
    /// Drained nodes, as this node's catalog replica had them at the last exchange.
    drained: BTreeSet<String>,
}

impl Reign {
    fn dispatching(&self) -> bool {
        self.unreported.is_empty() || Instant::now() >= self.adopting_until
    }

    fn stop_elsewhere(&mut self, job: JobId, index: u32, keep: Option<(&str, u32)>) {
        let Some(run) = self.jobs.get_mut(&job) else {
            return;
        };
        let cpus = run.spec.cpus_per_task;
        let copies = run.copies.remove(&index).unwrap_or_default();
        for copy in copies {
            if keep.is_some_and(|(node, attempt)| node == copy.node && attempt == copy.attempt) {
                continue;
            }
            if let Some(worker) = self.workers.get_mut(&copy.node) {
                worker.used = worker.used.saturating_sub(cpus);
                worker.to_stop.insert(TaskKey {
                    job,
                    index,
                    attempt: copy.attempt,
                });
            }
        }
    }

    /// Stops every running copy of a job (it ended).
    fn stop_job(&mut self, job: JobId) {
        let indices: Vec<u32> = self
            .jobs
            .get(&job)
            .map(|run| run.copies.keys().copied().collect())
            .unwrap_or_default();
        for index in indices {
            self.stop_elsewhere(job, index, None);
        }
    }

    /// Forgets a copy that ended or was lost; returns whether the task has no copy left.
    fn drop_copy(&mut self, key: TaskKey, node: &str) -> bool {
        let Some(run) = self.jobs.get_mut(&key.job) else {
            return false;
        };
        let cpus = run.spec.cpus_per_task;
        let Some(copies) = run.copies.get_mut(&key.index) else {
            return false;
        };
        let before = copies.len();
        copies.retain(|copy| !(copy.node == node && copy.attempt == key.attempt));
        let removed = copies.len() < before;
        let none_left = copies.is_empty();
        if none_left {
            run.copies.remove(&key.index);
        }
        if removed && let Some(worker) = self.workers.get_mut(node) {
            worker.used = worker.used.saturating_sub(cpus);
        }
        removed && none_left
    }

    /// Puts a task back to run anywhere (a retry, or its node was lost).
    fn requeue(&mut self, job: JobId, index: u32, front: bool) {
        if let Some(run) = self.jobs.get_mut(&job)
            && !run.record.state.is_final()
            && !run.record.done.contains(index)
        {
            run.rows[index as usize].state = TaskState::Pending;
            run.mark_row(index);
            if front {
                run.pending.push_front(index);
            } else {
                run.pending.push_back(index);
            }
        }
    }

    /// Every copy on `node` is lost (the node died or went silent).
    fn lose_node(&mut self, node: &str) {
        let lost = copies_on(&self.jobs, node);
        if !lost.is_empty() {
            warn!(
                node,
                tasks = lost.len(),
                "a worker was lost; its tasks run elsewhere"
            );
        }
        for key in lost {
            if self.drop_copy(key, node) {
                self.requeue(key.job, key.index, true);
            }
        }
        // A static plan's share for that node goes to whoever frees a slot first.
        for run in self.jobs.values_mut() {
            if let Some(plan) = &mut run.plan
                && let Some(queue) = plan.remove(node)
            {
                run.pending.extend(queue);
            }
        }
        self.workers.remove(node);
    }
}

/// The scheduler role of one node (idle unless it holds the lease).
pub struct Scheduler {
    node: String,
    meta: Arc<Meta>,
    membership: Arc<Membership>,
    reign: Mutex<Option<Reign>>,
    work_changed: Notify,
    /// A job ended: checkpoint now rather than at the next period, so whoever waits for
    /// it (an attached `bramble run`) hears at once.
    checkpoint_wanted: Notify,
}

fn not_scheduler() -> RpcError {
    RpcError::new(
        ErrorKind::Unavailable,
        "this node is not the jobs scheduler (the lease moved); ask again",
    )
}

impl Scheduler {
    pub fn new(node: &str, meta: Arc<Meta>, membership: Arc<Membership>) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            node: node.to_string(),
            meta,
            membership,
            reign: Mutex::new(None),
            work_changed: Notify::new(),
            checkpoint_wanted: Notify::new(),
        })
    }

    fn reign(&self) -> MutexGuard<'_, Option<Reign>> {
        self.reign
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn is_reigning(&self) -> bool {
        self.reign().is_some()
    }

    /// The worker `jobs-scheduler`: contends for the lease, and while it holds it runs
    /// the checkpoints, the liveness and speculation checks and follows new jobs.
    pub async fn run(self: Arc<Self>, worker: WorkerContext) -> Result<(), String> {
        let mut shutdown = worker.shutdown();
        let mut lease = HeldLease::new(self.meta.clone(), SCHEDULER_LEASE, &self.node, LEASE_TTL);
        let mut watch = self.meta.watch(PREFIX);
        let mut next_step = Instant::now();
        let mut next_checkpoint = Instant::now();
        let mut next_sweep = Instant::now();
        let mut next_cleanup = Instant::now() + Duration::from_secs(60);
        loop {
            let now = Instant::now();
            if now >= next_step {
                next_step = now + lease.step_every();
                let hold = lease.step().await;
                match (hold, self.is_reigning()) {
                    (Some(hold), false) => {
                        worker.set_progress(format!("scheduler (epoch {})", hold.epoch));
                        if let Err(error) = self.begin_reign(hold.epoch, hold.grant_version).await {
                            worker.report_error(&format!("loading the jobs: {error}"));
                            lease.release().await;
                            *self.reign() = None;
                        }
                    }
                    (None, true) => {
                        warn!("no longer the jobs scheduler");
                        worker.set_progress("standby");
                        *self.reign() = None;
                    }
                    (Some(hold), true) => {
                        if let Some(reign) = self.reign().as_mut() {
                            reign.grant_version = hold.grant_version;
                        }
                    }
                    (None, false) => worker.set_progress("standby"),
                }
            }
            if self.is_reigning() {
                if Instant::now() >= next_sweep {
                    next_sweep = Instant::now() + Duration::from_millis(250);
                    self.sweep().await;
                }
                if Instant::now() >= next_checkpoint {
                    next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
                    if let Err(error) = self.checkpoint().await {
                        worker.report_error(&format!("checkpoint: {error}"));
                    }
                }
                if Instant::now() >= next_cleanup {
                    next_cleanup = Instant::now() + Duration::from_secs(600);
                    if let Err(error) = self.forget_old_jobs().await {
                        worker.report_error(&format!("removing old jobs: {error}"));
                    }
                }
            }
            let wake = next_step
                .min(if self.is_reigning() {
                    next_sweep.min(next_checkpoint)
                } else {
                    next_step
                })
                .max(Instant::now() + Duration::from_millis(5));
            tokio::select! {
                _ = shutdown.wait() => {
                    if self.is_reigning() {
                        let _ = self.checkpoint().await;
                        *self.reign() = None;
                        lease.release().await;
                    }
                    return Ok(());
                }
                change = watch.next() => {
                    match change {
                        Some(Change::Key { key, value: Some(_), .. }) if self.is_reigning() => {
                            if let Some(id) = id_of_key(&key, SPEC_PREFIX) {
                                self.load_job(id).await;
                            } else if let Some(id) = id_of_key(&key, CANCEL_PREFIX) {
                                self.cancel_in_memory(id);
                            }
                        }
                        Some(Change::Reset) if self.is_reigning() => self.load_unfinished().await,
                        None => return Ok(()),
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = self.checkpoint_wanted.notified() => next_checkpoint = Instant::now(),
            }
        }
    }

    async fn begin_reign(&self, epoch: u64, grant_version: u64) -> Result<(), RpcError> {
        let alive: BTreeSet<String> = self
            .membership
            .nodes()
            .await
            .into_iter()
            .filter(|node| node.state == NodeState::Alive)
            .map(|node| node.name)
            .collect();
        *self.reign() = Some(Reign {
            epoch,
            grant_version,
            adopting_until: Instant::now() + ADOPTION_WAIT,
            jobs: BTreeMap::new(),
            workers: BTreeMap::new(),
            unreported: alive,
            loaded: false,
            drained: BTreeSet::new(),
        });
        info!(epoch, "this node is the jobs scheduler");
        self.load_unfinished().await;
        if let Some(reign) = self.reign().as_mut() {
            reign.loaded = true;
            reign.adopting_until = Instant::now() + ADOPTION_WAIT;
        }
        self.work_changed.notify_waiters();
        Ok(())
    }

    /// Loads every unfinished job not yet in memory.
    async fn load_unfinished(&self) {
        let records = match scan_all(&self.meta, STATE_PREFIX).await {
            Ok(records) => records,
            Err(error) => {
                warn!(%error, "could not list the jobs");
                return;
            }
        };
        for (key, value) in records {
            let Some(id) = id_of_key(&key, STATE_PREFIX) else {
                continue;
            };
            let unfinished = JobRecord::decode(&value).is_ok_and(|record| !record.state.is_final());
            let known = self
                .reign()
                .as_ref()
                .is_some_and(|reign| reign.jobs.contains_key(&id));
            if unfinished && !known {
                self.load_job(id).await;
            }
        }
        // Cancellations that arrived while no scheduler ran.
        if let Ok(cancels) = scan_all(&self.meta, CANCEL_PREFIX).await {
            for (key, _) in cancels {
                if let Some(id) = id_of_key(&key, CANCEL_PREFIX) {
                    self.cancel_in_memory(id);
                }
            }
        }
    }

    /// Loads one job from the catalog into memory (if unfinished and not there yet).
    async fn load_job(&self, id: JobId) {
        let spec = match read_json::<JobSpec>(&self.meta, &spec_key(id)).await {
            Ok(Some(spec)) => spec,
            Ok(None) => return,
            Err(error) => {
                warn!(job = id, %error, "could not read a job's spec");
                return;
            }
        };
        let record = match self
            .meta
            .read(&state_key(id), Consistency::Linearizable, false)
            .await
        {
            Ok(Some(value)) => match JobRecord::decode(&value.value) {
                Ok(record) => record,
                Err(error) => {
                    warn!(job = id, %error, "skipping a job");
                    return;
                }
            },
            Ok(None) => JobRecord::queued(),
            Err(error) => {
                warn!(job = id, %error, "could not read a job's state");
                return;
            }
        };
        if record.state.is_final() {
            return;
        }
        let rows = read_rows(&self.meta, id, spec.tasks)
            .await
            .unwrap_or_default();
        let cancelled = self
            .meta
            .read(&cancel_key(id), Consistency::Stale, false)
            .await
            .ok()
            .flatten()
            .is_some();
        let mut guard = self.reign();
        let Some(reign) = guard.as_mut() else {
            return;
        };
        if reign.jobs.contains_key(&id) {
            return;
        }
        let mut run = JobRun::new(Arc::new(spec), record, rows);
        if run
            .record
            .scheduler
            .as_deref()
            .is_some_and(|node| node != self.node)
            || run.record.scheduler_epoch != 0 && run.record.scheduler_epoch != reign.epoch
        {
            run.record.scheduler_changes += 1;
        }
        run.record.scheduler = Some(self.node.clone());
        run.record.scheduler_epoch = reign.epoch;
        run.dirty = true;
        info!(
            job = id,
            tasks = run.spec.tasks,
            done = run.record.done.len(),
            "scheduling a job"
        );
        reign.jobs.insert(id, run);
        drop(guard);
        if cancelled {
            self.cancel_in_memory(id);
        }
        self.work_changed.notify_waiters();
    }

    fn cancel_in_memory(&self, id: JobId) {
        let mut guard = self.reign();
        let Some(reign) = guard.as_mut() else {
            return;
        };
        let Some(run) = reign.jobs.get_mut(&id) else {
            return;
        };
        if run.record.state.is_final() {
            return;
        }
        run.finish(
            JobState::Cancelled,
            Some("cancelled (bramble cancel)".to_string()),
        );
        reign.stop_job(id);
        info!(job = id, "job cancelled");
    }

    /// The periodic checks: dead or silent workers, dependencies, speculation, the end
    /// of the adoption wait.
    async fn sweep(&self) {
        let members: HashMap<String, NodeState> = self
            .membership
            .nodes()
            .await
            .into_iter()
            .map(|node| (node.name, node.state))
            .collect();
        let dependencies: Vec<(JobId, JobId)> = self
            .reign()
            .as_ref()
            .map(|reign| {
                reign
                    .jobs
                    .iter()
                    .filter(|(_, run)| run.record.state == JobState::Queued)
                    .filter_map(|(id, run)| run.spec.after.map(|after| (*id, after)))
                    .collect()
            })
            .unwrap_or_default();
        let mut dependency_states = HashMap::new();
        for (_, after) in &dependencies {
            let in_memory = self
                .reign()
                .as_ref()
                .and_then(|reign| reign.jobs.get(after).map(|run| run.record.state));
            let state = match in_memory {
                Some(state) => Some(state),
                None => match self
                    .meta
                    .read(&state_key(*after), Consistency::Stale, false)
                    .await
                {
                    Ok(Some(value)) => JobRecord::decode(&value.value)
                        .ok()
                        .map(|record| record.state),
                    _ => None,
                },
            };
            dependency_states.insert(*after, state);
        }
        let mut changed = false;
        {
            let mut guard = self.reign();
            let Some(reign) = guard.as_mut() else {
                return;
            };
            let now = Instant::now();
            // Workers that died or went silent with tasks.
            let lost: Vec<String> = reign
                .workers
                .iter()
                .filter(|(name, worker)| {
                    let gone = matches!(
                        members.get(*name),
                        Some(NodeState::Dead | NodeState::Left) | None
                    );
                    let silent =
                        worker.used > 0 && now.duration_since(worker.last_seen) > WORKER_SILENCE;
                    gone || silent
                })
                .map(|(name, _)| name.clone())
                .collect();
            for node in lost {
                reign.lose_node(&node);
                changed = true;
            }
            reign
                .unreported
                .retain(|name| members.get(name) == Some(&NodeState::Alive));
            // Admit queued jobs.
            let ids: Vec<JobId> = reign.jobs.keys().copied().collect();
            for id in ids {
                let Some(run) = reign.jobs.get_mut(&id) else {
                    continue;
                };
                if run.record.state != JobState::Queued {
                    continue;
                }
                match run.spec.after {
                    None => {}
                    Some(after) => match dependency_states.get(&after).copied().flatten() {
                        Some(JobState::Succeeded) => {}
                        Some(state @ (JobState::Failed | JobState::Cancelled)) => {
                            run.finish(
                                JobState::Failed,
                                Some(format!("its dependency, job {after}, {}", state.name())),
                            );
                            changed = true;
                            continue;
                        }
                        Some(_) => continue,
                        None => {
                            run.finish(
                                JobState::Failed,
                                Some(format!("its dependency, job {after}, does not exist")),
                            );
                            changed = true;
                            continue;
                        }
                    },
                }
                run.record.state = JobState::Running;
                run.record.started_unix_ms = Some(bramble_util::time::unix_millis());
                run.loaded_at = now;
                run.dirty = true;
                changed = true;
            }
            // Speculation.
            for run in reign.jobs.values_mut() {
                if !run.spec.speculate
                    || run.record.state != JobState::Running
                    || (run.record.done.len() as f64)
                        < SPECULATION_QUANTILE * f64::from(run.spec.tasks)
                    || run.durations.is_empty()
                {
                    continue;
                }
                let mut sorted = run.durations.clone();
                sorted.sort_unstable();
                let median = Duration::from_millis(u64::from(sorted[sorted.len() / 2]));
                let threshold = median
                    .mul_f64(SPECULATION_MULTIPLIER)
                    .max(SPECULATION_MINIMUM);
                let stragglers: Vec<u32> = run
                    .copies
                    .iter()
                    .filter(|(index, copies)| {
                        copies.len() == 1
                            && now.duration_since(copies[0].started) > threshold
                            && !run.speculate.contains(index)
                    })
                    .map(|(index, _)| *index)
                    .collect();
                for index in stragglers {
                    run.speculate.push_back(index);
                    changed = true;
                }
            }
        }
        if changed {
            self.work_changed.notify_waiters();
        }
    }

    /// One worker's exchange. Applies its report, then answers with work (waiting up to
    /// [`LONG_POLL`] for some when the worker has free slots and there is none).
    pub async fn exchange(&self, request: ExchangeRequest) -> Result<ExchangeAnswer, RpcError> {
        let deadline = Instant::now() + LONG_POLL;
        // From this node's replica: a drain reaches the scheduler within a heartbeat, and
        // an exchange costs no quorum round.
        let drained: Option<BTreeSet<String>> =
            match bramble_platform::drain::drained_here(self.meta.reader()) {
                Ok(records) => Some(records.into_keys().collect()),
                Err(error) => {
                    warn!(%error, "could not read the drained nodes; keeping the last known");
                    None
                }
            };
        {
            let mut guard = self.reign();
            let reign = guard.as_mut().ok_or_else(not_scheduler)?;
            if !reign.loaded {
                return Err(RpcError::new(
                    ErrorKind::Unavailable,
                    "the jobs scheduler is still loading the jobs; ask again",
                ));
            }
            if let Some(drained) = drained {
                reign.drained = drained;
            }
            apply_report(reign, &request);
            let ended = reign
                .jobs
                .values()
                .any(|run| run.record.state.is_final() && !run.final_committed);
            if ended {
                self.checkpoint_wanted.notify_one();
            }
        }
        self.work_changed.notify_waiters();
        loop {
            let notified = self.work_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut guard = self.reign();
                let reign = guard.as_mut().ok_or_else(not_scheduler)?;
                let start = if reign.dispatching() {
                    assign(reign, &request.node)
                } else {
                    Vec::new()
                };
                let Some(worker) = reign.workers.get_mut(&request.node) else {
                    return Err(not_scheduler());
                };
                let free = worker.slots.saturating_sub(worker.used);
                // Only an idle worker is held: one with tasks running must be free to
                // report the next one that ends.
                let answer_now = !start.is_empty()
                    || !request.wants_work
                    || !request.running.is_empty()
                    || free == 0
                    || !worker.to_stop.is_empty()
                    || Instant::now() >= deadline;
                if answer_now {
                    return Ok(ExchangeAnswer {
                        epoch: reign.epoch,
                        start,
                        stop: std::mem::take(&mut worker.to_stop).into_iter().collect(),
                        durable: std::mem::take(&mut worker.durable),
                    });
                }
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    /// Writes every changed job to the catalog, fenced by the lease grant. Results the
    /// write covers become durable for their workers.
    async fn checkpoint(&self) -> Result<(), RpcError> {
        let (batches, covered, lease_version, finished) = {
            let mut guard = self.reign();
            let Some(reign) = guard.as_mut() else {
                return Ok(());
            };
            let mut operations = Vec::new();
            let mut finished = Vec::new();
            for (id, run) in reign.jobs.iter_mut() {
                if !run.dirty {
                    continue;
                }
                run.dirty = false;
                for chunk in std::mem::take(&mut run.dirty_chunks) {
                    let start = (chunk * TASKS_PER_CHUNK) as usize;
                    let end = (start + TASKS_PER_CHUNK as usize).min(run.rows.len());
                    let rows = &run.rows[start..end];
                    operations.push(Operation::Put {
                        key: tasks_key(*id, chunk),
                        value: postcard::to_allocvec(rows).unwrap_or_default(),
                    });
                }
                operations.push(Operation::Put {
                    key: state_key(*id),
                    value: run.record.encode(),
                });
                if run.record.state.is_final() {
                    finished.push(*id);
                }
            }
            let covered: Vec<(String, Vec<TaskKey>)> = reign
                .workers
                .iter_mut()
                .map(|(name, worker)| {
                    (
                        name.clone(),
                        std::mem::take(&mut worker.awaiting_checkpoint),
                    )
                })
                .filter(|(_, keys)| !keys.is_empty())
                .collect();
            (
                split_batches(operations),
                covered,
                reign.grant_version,
                finished,
            )
        };
        if batches.is_empty() && covered.is_empty() {
            return Ok(());
        }
        let lease_key = bramble_meta::lease::lease_key(SCHEDULER_LEASE);
        let mut outcome = Ok(());
        for operations in batches {
            let command = Command::Batch {
                conditions: vec![Condition {
                    key: lease_key.clone(),
                    version: lease_version,
                }],
                operations,
            };
            match self.meta.write(command, false).await {
                Ok(CommandResult::BatchApplied { .. }) => {}
                Ok(CommandResult::ConditionFailed { .. }) => {
                    warn!("a checkpoint was refused: the scheduler lease moved on");
                    *self.reign() = None;
                    return Err(not_scheduler());
                }
                Ok(other) => {
                    outcome = Err(RpcError::new(
                        ErrorKind::Internal,
                        format!("unexpected answer to a checkpoint: {other:?}"),
                    ));
                    break;
                }
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
        let mut guard = self.reign();
        let Some(reign) = guard.as_mut() else {
            return outcome;
        };
        match outcome {
            Ok(()) => {
                for (node, keys) in covered {
                    if let Some(worker) = reign.workers.get_mut(&node) {
                        worker.durable.extend(keys);
                    }
                }
                for id in finished {
                    if let Some(run) = reign.jobs.get_mut(&id) {
                        run.final_committed = true;
                    }
                }
                // Finished jobs leave memory once no copy of theirs runs anywhere.
                reign
                    .jobs
                    .retain(|_, run| !(run.final_committed && run.copies.is_empty()));
                Ok(())
            }
            Err(error) => {
                // Write it all again next time.
                for run in reign.jobs.values_mut() {
                    run.dirty = true;
                    let chunks = run.rows.len().div_ceil(TASKS_PER_CHUNK as usize) as u32;
                    run.dirty_chunks.extend(0..chunks);
                }
                for (node, keys) in covered {
                    if let Some(worker) = reign.workers.get_mut(&node) {
                        worker.awaiting_checkpoint.extend(keys);
                    }
                }
                Err(error)
            }
        }
    }

    /// Removes finished jobs beyond the newest [`KEEP_FINISHED_JOBS`] or older than a day.
    async fn forget_old_jobs(&self) -> Result<(), RpcError> {
        let records = scan_all(&self.meta, STATE_PREFIX).await?;
        let now = bramble_util::time::unix_millis();
        let mut finished: Vec<(JobId, u64)> = records
            .iter()
            .filter_map(|(key, value)| {
                let id = id_of_key(key, STATE_PREFIX)?;
                let record = JobRecord::decode(value).ok()?;
                record
                    .state
                    .is_final()
                    .then_some((id, record.finished_unix_ms.unwrap_or(0)))
            })
            .collect();
        finished.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        for (position, (id, finished_at)) in finished.into_iter().enumerate() {
            if position < KEEP_FINISHED_JOBS
                && now.saturating_sub(finished_at) < KEEP_FINISHED_FOR_MS
            {
                continue;
            }
            let command = Command::Batch {
                conditions: vec![],
                operations: vec![
                    Operation::Delete { key: spec_key(id) },
                    Operation::Delete { key: state_key(id) },
                    Operation::Delete {
                        key: cancel_key(id),
                    },
                    Operation::DeletePrefix {
                        prefix: tasks_prefix(id),
                    },
                ],
            };
            self.meta.write(command, false).await?;
        }
        crate::modules::forget_unused(&self.meta).await
    }

    /// The live view of a job, if this node schedules it.
    pub fn live_view(&self, id: JobId, with_tasks: bool) -> Option<JobView> {
        let guard = self.reign();
        let reign = guard.as_ref()?;
        let run = reign.jobs.get(&id)?;
        let mut record = run.record.clone();
        if record.state.is_final() && !run.final_committed {
            // Not final until the catalog says so: a new scheduler would carry on.
            record.state = JobState::Running;
        }
        let mut running_by_node = BTreeMap::new();
        for copies in run.copies.values() {
            for copy in copies {
                *running_by_node.entry(copy.node.clone()).or_insert(0) += 1;
            }
        }
        let pending = run.pending.len()
            + run
                .plan
                .as_ref()
                .map(|plan| plan.values().map(VecDeque::len).sum::<usize>())
                .unwrap_or(0);
        Some(JobView {
            spec: (*run.spec).clone(),
            record,
            live: true,
            running: run.running(),
            pending: pending as u32,
            running_by_node,
            tasks: if with_tasks {
                run.rows.clone()
            } else {
                Vec::new()
            },
        })
    }

    /// Each worker as the scheduler sees it (`None`: not the scheduler).
    pub fn workers(&self) -> Option<Vec<WorkerSummary>> {
        let guard = self.reign();
        let reign = guard.as_ref()?;
        Some(
            reign
                .workers
                .iter()
                .map(|(name, worker)| WorkerSummary {
                    node: name.clone(),
                    slots: worker.slots,
                    used: worker.used,
                    speed: worker.speed,
                    load1: worker.load1,
                    seen_ms_ago: worker.last_seen.elapsed().as_millis() as u64,
                })
                .collect(),
        )
    }

    /// Summaries of the jobs in memory (live counts).
    pub fn live_summaries(&self) -> BTreeMap<JobId, u64> {
        self.reign()
            .as_ref()
            .map(|reign| {
                reign
                    .jobs
                    .iter()
                    .map(|(id, run)| (*id, run.record.done.len()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Every running copy the scheduler placed on `node`.
fn copies_on(jobs: &BTreeMap<JobId, JobRun>, node: &str) -> Vec<TaskKey> {
    let mut found = Vec::new();
    for (job, run) in jobs {
        for (index, copies) in &run.copies {
            for copy in copies.iter().filter(|copy| copy.node == node) {
                found.push(TaskKey {
                    job: *job,
                    index: *index,
                    attempt: copy.attempt,
                });
            }
        }
    }
    found
}

/// Applies a worker's report: its view, what it runs, what finished.
fn apply_report(reign: &mut Reign, request: &ExchangeRequest) {
    let node = request.node.as_str();
    reign.unreported.remove(node);
    let worker = reign
        .workers
        .entry(node.to_string())
        .or_insert_with(|| WorkerView {
            slots: request.slots,
            speed: request.speed,
            load1: request.load1,
            cpus: request.cpus,
            used: 0,
            last_seen: Instant::now(),
            to_stop: BTreeSet::new(),
            awaiting_checkpoint: Vec::new(),
            durable: Vec::new(),
        });
    worker.slots = request.slots;
    worker.speed = request.speed;
    worker.load1 = request.load1;
    worker.cpus = request.cpus;
    worker.last_seen = Instant::now();
    let reported: BTreeSet<TaskKey> = request
        .running
        .iter()
        .chain(request.finished.iter().map(|result| &result.key))
        .copied()
        .collect();
    // Copies the scheduler placed here that the worker no longer knows: lost.
    let mine = copies_on(&reign.jobs, node);
    for key in mine {
        if !reported.contains(&key) && reign.drop_copy(key, node) {
            warn!(
                node,
                job = key.job,
                index = key.index,
                attempt = key.attempt,
                "an attempt the worker no longer reports: queued again"
            );
            reign.requeue(key.job, key.index, true);
        }
    }
    // What the worker runs that the scheduler does not know: adopt it, or stop it.
    for key in &request.running {
        let Some(run) = reign.jobs.get_mut(&key.job) else {
            if let Some(worker) = reign.workers.get_mut(node) {
                worker.to_stop.insert(*key);
            }
            continue;
        };
        let index = key.index;
        if index >= run.spec.tasks {
            continue;
        }
        let known = run.copies.get(&index).is_some_and(|copies| {
            copies
                .iter()
                .any(|copy| copy.node == node && copy.attempt == key.attempt)
        });
        if known {
            continue;
        }
        let stale = run.record.state.is_final()
            || run.record.done.contains(index)
            || run
                .copies
                .get(&index)
                .is_some_and(|copies| !copies.is_empty());
        if stale {
            if let Some(worker) = reign.workers.get_mut(node) {
                worker.to_stop.insert(*key);
            }
            continue;
        }
        run.unqueue(index);
        run.copies.entry(index).or_default().push(Copy {
            node: node.to_string(),
            attempt: key.attempt,
            started: Instant::now(),
        });
        let row = &mut run.rows[index as usize];
        row.state = TaskState::Running;
        row.node = node.to_string();
        row.attempts = row.attempts.max(key.attempt + 1);
        run.mark_row(index);
        let cpus = run.spec.cpus_per_task;
        if let Some(worker) = reign.workers.get_mut(node) {
            worker.used += cpus;
        }
    }
    for result in &request.finished {
        apply_result(reign, node, result);
    }
}

fn apply_result(reign: &mut Reign, node: &str, result: &TaskResult) {
    let key = result.key;
    let acknowledge = |reign: &mut Reign| {
        if let Some(worker) = reign.workers.get_mut(node) {
            worker.durable.push(key);
        }
    };
    if !reign.jobs.contains_key(&key.job) {
        acknowledge(reign);
        return;
    }
    let none_left = reign.drop_copy(key, node);
    let Some(run) = reign.jobs.get_mut(&key.job) else {
        return;
    };
    let index = key.index;
    if index >= run.spec.tasks || run.record.state.is_final() || run.record.done.contains(index) {
        acknowledge(reign);
        return;
    }
    if result.outcome.succeeded() {
        run.record.done.insert(index);
        run.record
            .reduction
            .add(run.spec.reduce, index, result.value.as_deref());
        *run.record.per_node.entry(node.to_string()).or_insert(0) += 1;
        let row = &mut run.rows[index as usize];
        row.state = TaskState::Done;
        row.node = node.to_string();
        row.attempt = key.attempt;
        row.exit_code = Some(0);
        row.duration_ms = result.duration_ms;
        run.durations.push(result.duration_ms);
        run.mark_row(index);
        let complete = run.record.done.len() == u64::from(run.spec.tasks);
        if complete {
            run.finish(JobState::Succeeded, None);
            info!(job = key.job, "job succeeded");
        }
        if let Some(worker) = reign.workers.get_mut(node) {
            worker.awaiting_checkpoint.push(key);
        }
        reign.stop_elsewhere(key.job, index, None);
        return;
    }
    if result.outcome == Outcome::Stopped {
        if none_left {
            reign.requeue(key.job, index, true);
        }
        acknowledge(reign);
        return;
    }
    let reason = if result.stderr_tail.is_empty() {
        result.outcome.describe()
    } else {
        format!(
            "{}: {}",
            result.outcome.describe(),
            result.stderr_tail.trim()
        )
    };
    run.record.note_failure(Failure {
        index,
        attempt: key.attempt,
        node: node.to_string(),
        reason: reason.clone(),
    });
    let row = &mut run.rows[index as usize];
    row.exit_code = result.outcome.exit_code();
    row.node = node.to_string();
    row.attempt = key.attempt;
    row.duration_ms = result.duration_ms;
    let failures = &mut run.failures[index as usize];
    *failures = failures.saturating_add(1);
    let failures = *failures;
    run.failed_on.insert(index, node.to_string());
    run.mark_row(index);
    if none_left {
        if u32::from(failures) > run.spec.retries {
            run.rows[index as usize].state = TaskState::Failed;
            run.finish(
                JobState::Failed,
                Some(format!(
                    "task {index} failed {failures} time(s) (--retries {}); the last: {reason}",
                    run.spec.retries
                )),
            );
            warn!(
                job = key.job,
                index, "job failed: a task ran out of retries"
            );
            reign.stop_job(key.job);
        } else {
            reign.requeue(key.job, index, false);
        }
    }
    acknowledge(reign);
}

/// Picks the tasks `node` starts now, within its free slots (none for a drained node).
fn assign(reign: &mut Reign, node: &str) -> Vec<Assignment> {
    if reign.drained.contains(node) {
        // Its share of a static plan goes to whoever frees a slot first.
        for run in reign.jobs.values_mut() {
            if let Some(plan) = &mut run.plan
                && let Some(queue) = plan.remove(node)
            {
                run.pending.extend(queue);
            }
        }
        return Vec::new();
    }
    let alive_workers: Vec<NodeCapacity> = reign
        .workers
        .iter()
        .filter(|(name, _)| !reign.drained.contains(*name))
        .map(|(name, worker)| NodeCapacity {
            name: name.clone(),
            slots: worker.slots,
            used: worker.used,
            speed: worker.speed,
            load1: worker.load1,
            cpus: worker.cpus,
        })
        .collect();
    let other_workers = reign.workers.len() > 1;
    let Some(worker) = reign.workers.get_mut(node) else {
        return Vec::new();
    };
    // Short tasks (a median under PIPELINE_BELOW) are given up to one slot's worth more
    // than the node's free slots: the worker queues them and starts one the moment a slot
    // frees, instead of waiting a round trip to the scheduler for each.
    let mut free = worker.slots.saturating_sub(worker.used);
    let mut extra = 0;
    let mut start = Vec::new();
    let now = Instant::now();
    for (id, run) in reign.jobs.iter_mut() {
        if run.record.state != JobState::Running {
            continue;
        }
        let cpus = run.spec.cpus_per_task;
        if run.spec.policy.is_static() && run.plan.is_none() {
            if now.duration_since(run.loaded_at) < PLANNING_WAIT {
                continue;
            }
            let remaining: Vec<u32> = run
                .record
                .done
                .missing_below(run.spec.tasks)
                .into_iter()
                .filter(|index| !run.copies.contains_key(index) && !run.pending.contains(index))
                .collect();
            let made = policy::plan(run.spec.policy, &remaining, &alive_workers, cpus);
            if made.queues.is_empty() {
                run.finish(
                    JobState::Failed,
                    Some(format!(
                        "no node has {cpus} free slot(s) for a task (--cpus-per-task)"
                    )),
                );
                continue;
            }
            run.record.weights = made.weights;
            run.plan = Some(made.queues);
            run.dirty = true;
        }
        if !run.spec.policy.is_static()
            && !alive_workers.iter().any(|worker| worker.slots >= cpus)
            && !alive_workers.is_empty()
        {
            run.finish(
                JobState::Failed,
                Some(format!(
                    "no node has {cpus} slot(s) for a task (--cpus-per-task)"
                )),
            );
            continue;
        }
        if extra == 0 && is_short(run) {
            extra = (worker.slots * 2).saturating_sub(worker.used.max(worker.slots));
            free += extra;
        }
        while free >= cpus {
            if let Some(limit) = run.spec.max_running
                && run.running() >= limit
            {
                break;
            }
            let Some((index, speculative)) = next_task(run, node, other_workers) else {
                break;
            };
            let row = &mut run.rows[index as usize];
            let attempt = row.attempts;
            row.attempts += 1;
            row.state = TaskState::Running;
            row.node = node.to_string();
            run.copies.entry(index).or_default().push(Copy {
                node: node.to_string(),
                attempt,
                started: now,
            });
            run.record.attempts += 1;
            if speculative {
                run.record.speculative_copies += 1;
            }
            if run.record.first_task_unix_ms.is_none() {
                run.record.first_task_unix_ms = Some(bramble_util::time::unix_millis());
            }
            run.mark_row(index);
            free -= cpus;
            worker.used += cpus;
            start.push(Assignment {
                key: TaskKey {
                    job: *id,
                    index,
                    attempt,
                },
                count: run.spec.tasks,
                work: run.spec.work.clone(),
                seed: run.spec.seed,
                env: run.spec.env.clone(),
                timeout_ms: run.spec.timeout_ms,
                cpus,
                reduce: run.spec.reduce,
            });
        }
        if free == 0 {
            break;
        }
    }
    start
}

/// The next task of `run` for `node`: a retry or a lost node's task (preferring a node
/// it did not fail on), then its own queue (static) or the shared one (dynamic), then a
/// speculative copy. Queues may hold tasks that finished or were adopted meanwhile (they
/// are not searched out on every result): those are skipped here.
fn next_task(run: &mut JobRun, node: &str, other_workers: bool) -> Option<(u32, bool)> {
    let startable = |run: &JobRun, index: u32| {
        !run.record.done.contains(index) && !run.copies.contains_key(&index)
    };
    while let Some(position) = run.pending.iter().position(|index| {
        !other_workers || run.failed_on.get(index).is_none_or(|failed| failed != node)
    }) {
        let Some(index) = run.pending.remove(position) else {
            break;
        };
        if startable(run, index) {
            return Some((index, false));
        }
    }
    if let Some(plan) = &mut run.plan {
        let mut found = None;
        if let Some(queue) = plan.get_mut(node) {
            while let Some(index) = queue.pop_front() {
                if !run.record.done.contains(index) && !run.copies.contains_key(&index) {
                    found = Some(index);
                    break;
                }
            }
        }
        if let Some(index) = found {
            return Some((index, false));
        }
    }
    while let Some(position) = run.speculate.iter().position(|index| {
        run.copies
            .get(index)
            .is_some_and(|copies| copies.iter().all(|copy| copy.node != node))
    }) {
        let index = run.speculate.remove(position)?;
        if run
            .copies
            .get(&index)
            .is_some_and(|copies| copies.len() == 1)
        {
            return Some((index, true));
        }
    }
    None
}

/// Whether a job's tasks are short enough to queue on workers ahead of free slots: a
/// median below [`PIPELINE_BELOW`] over at least 8 results, and no speculation (a queued
/// copy would wait behind the straggler it is meant to beat).
fn is_short(run: &JobRun) -> bool {
    if run.spec.speculate || run.durations.len() < 8 {
        return false;
    }
    let mut recent: Vec<u32> = run.durations.iter().rev().take(64).copied().collect();
    recent.sort_unstable();
    u64::from(recent[recent.len() / 2]) < PIPELINE_BELOW.as_millis() as u64
}

/// Groups checkpoint operations into batches under the catalog's size bound.
fn split_batches(operations: Vec<Operation>) -> Vec<Vec<Operation>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for operation in operations {
        let size = match &operation {
            Operation::Put { key, value } => key.len() + value.len(),
            other => other.key().len(),
        };
        if !current.is_empty()
            && (bytes + size > CHECKPOINT_BATCH_BYTES
                || current.len() + 1 >= bramble_meta::types::MAX_BATCH_OPERATIONS)
        {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(operation);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Every key and value under `prefix`, from the leader.
pub async fn scan_all(meta: &Meta, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, RpcError> {
    crate::catalog::scan_prefix(meta, prefix, Consistency::Linearizable).await
}

/// A JSON value from the catalog (linearizable).
pub async fn read_json<T: serde::de::DeserializeOwned>(
    meta: &Meta,
    key: &str,
) -> Result<Option<T>, RpcError> {
    match meta.read(key, Consistency::Linearizable, false).await? {
        None => Ok(None),
        Some(value) => serde_json::from_slice(&value.value)
            .map(Some)
            .map_err(|error| {
                RpcError::new(ErrorKind::Internal, format!("unreadable {key}: {error}"))
            }),
    }
}

/// A job's task table from its chunks.
pub async fn read_rows(meta: &Meta, id: JobId, tasks: u32) -> Result<Vec<TaskRow>, RpcError> {
    let mut rows = vec![TaskRow::default(); tasks as usize];
    for (key, value) in scan_all(meta, &tasks_prefix(id)).await? {
        let Some(chunk) = key
            .rsplit('/')
            .next()
            .and_then(|text| text.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(chunk_rows) = postcard::from_bytes::<Vec<TaskRow>>(&value) else {
            continue;
        };
        let start = (chunk * TASKS_PER_CHUNK) as usize;
        for (offset, row) in chunk_rows.into_iter().enumerate() {
            if let Some(slot) = rows.get_mut(start + offset) {
                *slot = row;
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::spec::{Policy, Reduce, Work};

    fn spec(tasks: u32, policy: Policy, retries: u32) -> Arc<JobSpec> {
        Arc::new(JobSpec {
            id: 1,
            work: Work::Command {
                program: "true".into(),
                args: vec![],
            },
            tasks,
            policy,
            cpus_per_task: 1,
            max_running: None,
            retries,
            speculate: false,
            timeout_ms: None,
            after: None,
            reduce: Reduce::Sum,
            seed: 1,
            env: vec![],
            submitted_unix_ms: 0,
            submitted_by: "admin".into(),
        })
    }

    fn reign_with(run: JobRun) -> Reign {
        let mut jobs = BTreeMap::new();
        jobs.insert(1, run);
        Reign {
            epoch: 1,
            grant_version: 1,
            adopting_until: Instant::now(),
            jobs,
            workers: BTreeMap::new(),
            unreported: BTreeSet::new(),
            loaded: true,
            drained: BTreeSet::new(),
        }
    }

    fn report(
        node: &str,
        slots: u32,
        running: Vec<TaskKey>,
        finished: Vec<TaskResult>,
    ) -> ExchangeRequest {
        ExchangeRequest {
            node: node.into(),
            slots,
            speed: 1.0,
            load1: 0.0,
            cpus: slots,
            running,
            finished,
            epoch: 1,
            wants_work: true,
        }
    }

    fn success(key: TaskKey, value: &str) -> TaskResult {
        TaskResult {
            key,
            outcome: Outcome::Exited { code: 0 },
            value: Some(value.into()),
            stderr_tail: String::new(),
            duration_ms: 5,
        }
    }

    fn running_job(tasks: u32, policy: Policy, retries: u32) -> JobRun {
        let mut record = JobRecord::queued();
        record.state = JobState::Running;
        JobRun::new(spec(tasks, policy, retries), record, vec![])
    }

    #[test]
    fn a_result_counts_once_whatever_the_copies() {
        let mut reign = reign_with(running_job(2, Policy::Dynamic, 3));
        apply_report(&mut reign, &report("n1", 2, vec![], vec![]));
        let given = assign(&mut reign, "n1");
        assert_eq!(given.len(), 2);
        let key = given[0].key;
        // The same result twice (a resend to a new scheduler), and an adopted duplicate.
        apply_report(
            &mut reign,
            &report("n1", 2, vec![given[1].key], vec![success(key, "20")]),
        );
        apply_report(
            &mut reign,
            &report("n1", 2, vec![given[1].key], vec![success(key, "20")]),
        );
        let run = &reign.jobs[&1];
        assert_eq!(run.record.done.len(), 1);
        assert_eq!(
            run.record.reduction.render(Reduce::Sum).as_deref(),
            Some("20")
        );
        // Never more tasks than free slots: n1 still runs one, so one more at most.
        assert!(assign(&mut reign, "n1").is_empty());
    }

    #[test]
    fn a_lost_node_s_tasks_run_elsewhere_and_a_late_result_is_ignored() {
        let mut reign = reign_with(running_job(3, Policy::Dynamic, 3));
        apply_report(&mut reign, &report("n1", 3, vec![], vec![]));
        let on_n1 = assign(&mut reign, "n1");
        assert_eq!(on_n1.len(), 3);
        reign.lose_node("n1");
        apply_report(&mut reign, &report("n2", 3, vec![], vec![]));
        let on_n2 = assign(&mut reign, "n2");
        assert_eq!(on_n2.len(), 3);
        let finished: Vec<TaskResult> = on_n2.iter().map(|given| success(given.key, "1")).collect();
        apply_report(&mut reign, &report("n2", 3, vec![], finished));
        // n1 comes back with its old results: the job's sum does not change.
        let late: Vec<TaskResult> = on_n1
            .iter()
            .map(|given| success(given.key, "100"))
            .collect();
        apply_report(&mut reign, &report("n1", 3, vec![], late));
        let run = &reign.jobs[&1];
        assert_eq!(run.record.state, JobState::Succeeded);
        assert_eq!(
            run.record.reduction.render(Reduce::Sum).as_deref(),
            Some("3")
        );
    }

    #[test]
    fn retries_are_bounded_and_the_reason_is_kept() {
        let mut reign = reign_with(running_job(1, Policy::Dynamic, 1));
        for round in 0..2 {
            apply_report(&mut reign, &report("n1", 1, vec![], vec![]));
            let given = assign(&mut reign, "n1");
            assert_eq!(given.len(), 1, "round {round}");
            let failure = TaskResult {
                key: given[0].key,
                outcome: Outcome::Exited { code: 3 },
                value: None,
                stderr_tail: "boom".into(),
                duration_ms: 1,
            };
            apply_report(&mut reign, &report("n1", 1, vec![], vec![failure]));
        }
        let run = &reign.jobs[&1];
        assert_eq!(run.record.state, JobState::Failed);
        let reason = run.record.reason.clone().unwrap_or_default();
        assert!(
            reason.contains("exit code 3") && reason.contains("boom"),
            "{reason}"
        );
        assert_eq!(run.record.failure_count, 2);
    }

    #[test]
    fn a_drained_node_gets_no_task_and_its_planned_share_goes_elsewhere() {
        let mut run = running_job(4, Policy::RoundRobin, 0);
        run.loaded_at = Instant::now() - Duration::from_secs(1);
        let mut reign = reign_with(run);
        apply_report(&mut reign, &report("n1", 1, vec![], vec![]));
        apply_report(&mut reign, &report("n2", 1, vec![], vec![]));
        let first = assign(&mut reign, "n1");
        assert_eq!(first.len(), 1, "planned over n1 and n2");
        reign.drained.insert("n1".to_string());
        let finished = vec![success(first[0].key, "1")];
        apply_report(&mut reign, &report("n1", 1, vec![], finished));
        assert!(assign(&mut reign, "n1").is_empty(), "n1 is drained");
        // n2 takes its own share and n1's, one slot at a time.
        let mut on_n2 = Vec::new();
        for _ in 0..3 {
            let given = assign(&mut reign, "n2");
            assert_eq!(given.len(), 1);
            let results = given.iter().map(|task| success(task.key, "1")).collect();
            apply_report(&mut reign, &report("n2", 1, vec![], results));
            on_n2.extend(given.into_iter().map(|task| task.key.index));
        }
        on_n2.sort_unstable();
        assert_eq!(on_n2, vec![1, 2, 3]);
        assert_eq!(reign.jobs[&1].record.state, JobState::Succeeded);
    }

    #[test]
    fn static_plans_respect_slots_and_policy() {
        let mut run = running_job(6, Policy::RoundRobin, 0);
        run.loaded_at = Instant::now() - Duration::from_secs(1);
        let mut reign = reign_with(run);
        apply_report(&mut reign, &report("n1", 1, vec![], vec![]));
        apply_report(&mut reign, &report("n2", 1, vec![], vec![]));
        let first = assign(&mut reign, "n1");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].key.index, 0);
        let second = assign(&mut reign, "n2");
        assert_eq!(second[0].key.index, 1);
        let plan = reign.jobs[&1].plan.clone().unwrap_or_default();
        assert_eq!(plan["n1"], VecDeque::from(vec![2, 4]));
        assert_eq!(plan["n2"], VecDeque::from(vec![3, 5]));
    }
}
