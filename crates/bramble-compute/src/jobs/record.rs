//! What the catalog keeps of a job besides its spec: the checkpoint the scheduler writes
//! (which task indices are finished and the reduction over exactly those — so a new
//! scheduler counts every task once), the final state, and the per-task table in chunks.
//! The task table of a running job lives in the scheduler's memory; the chunks are its
//! durable copy, written with the checkpoints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::index_set::IndexSet;
use super::reduce::Reduction;
use super::spec::JobId;

pub const PREFIX: &str = "jobs/";
pub const NEXT_ID_KEY: &str = "jobs/next-id";
pub const SPEC_PREFIX: &str = "jobs/spec/";
pub const STATE_PREFIX: &str = "jobs/state/";
pub const TASKS_PREFIX: &str = "jobs/tasks/";
pub const CANCEL_PREFIX: &str = "jobs/cancel/";
/// Tasks per chunk of the task table.
pub const TASKS_PER_CHUNK: u32 = 1000;
/// The most failures a record keeps (the latest).
pub const MAX_FAILURES_KEPT: usize = 20;
/// The name of the scheduler's lease.
pub const SCHEDULER_LEASE: &str = "jobs/scheduler";

pub fn spec_key(id: JobId) -> String {
    format!("{SPEC_PREFIX}{id:012}")
}

pub fn state_key(id: JobId) -> String {
    format!("{STATE_PREFIX}{id:012}")
}

pub fn tasks_prefix(id: JobId) -> String {
    format!("{TASKS_PREFIX}{id:012}/")
}

pub fn tasks_key(id: JobId, chunk: u32) -> String {
    format!("{TASKS_PREFIX}{id:012}/{chunk:06}")
}

pub fn cancel_key(id: JobId) -> String {
    format!("{CANCEL_PREFIX}{id:012}")
}

/// The job id a `jobs/<kind>/<id>...` key names.
pub fn id_of_key(key: &str, prefix: &str) -> Option<JobId> {
    key.strip_prefix(prefix)?.get(..12)?.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its dependency (`--after`) or for the scheduler to pick it up.
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// One failed attempt, kept with the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub index: u32,
    pub attempt: u32,
    pub node: String,
    pub reason: String,
}

/// A job's checkpoint and, once it ends, its final state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub state: JobState,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    /// Tasks whose result is counted in `reduction`.
    pub done: IndexSet,
    pub reduction: Reduction,
    /// The node that wrote this checkpoint, and its lease epoch.
    pub scheduler: Option<String>,
    pub scheduler_epoch: u64,
    pub started_unix_ms: Option<u64>,
    pub first_task_unix_ms: Option<u64>,
    pub finished_unix_ms: Option<u64>,
    /// Attempts started, over every task (retries and speculative copies included).
    pub attempts: u64,
    pub failure_count: u64,
    pub failures: Vec<Failure>,
    /// Counted results by the node that produced them.
    pub per_node: BTreeMap<String, u32>,
    /// A static policy's weights at planning time (greedy: speed x free slots).
    pub weights: BTreeMap<String, f64>,
    pub speculative_copies: u32,
    /// Scheduler changes the job lived through.
    pub scheduler_changes: u32,
}

impl JobRecord {
    pub fn queued() -> JobRecord {
        JobRecord {
            state: JobState::Queued,
            reason: None,
            done: IndexSet::default(),
            reduction: Reduction::default(),
            scheduler: None,
            scheduler_epoch: 0,
            started_unix_ms: None,
            first_task_unix_ms: None,
            finished_unix_ms: None,
            attempts: 0,
            failure_count: 0,
            failures: Vec::new(),
            per_node: BTreeMap::new(),
            weights: BTreeMap::new(),
            speculative_copies: 0,
            scheduler_changes: 0,
        }
    }

    pub fn note_failure(&mut self, failure: Failure) {
        self.failure_count += 1;
        if self.failures.len() >= MAX_FAILURES_KEPT {
            self.failures.remove(0);
        }
        self.failures.push(failure);
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<JobRecord, String> {
        serde_json::from_slice(bytes).map_err(|error| format!("unreadable job record: {error}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    #[default]
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

/// One row of `bramble job <id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TaskRow {
    pub state: TaskState,
    /// The node of the counted result, or of the latest attempt.
    pub node: String,
    /// Attempts started (speculative copies included).
    pub attempts: u32,
    /// The attempt whose result counted (its output is kept under that number).
    pub attempt: u32,
    pub exit_code: Option<i32>,
    pub duration_ms: u32,
}
