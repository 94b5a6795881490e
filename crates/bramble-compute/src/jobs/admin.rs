//! The `jobs.*` RPC methods and their typed requests and answers: what the CLI (and the
//! coming API) call, and what workers exchange with the scheduler.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::{JobRecord, TaskRow};
use super::spec::{JobId, JobSpec, Work};

pub const SERVICE: &str = "jobs";
pub const METHOD_SUBMIT: &str = "jobs.submit";
pub const METHOD_SUBMIT_WASM: &str = "jobs.submit_wasm";
pub const METHOD_LIST: &str = "jobs.list";
pub const METHOD_JOB: &str = "jobs.job";
pub const METHOD_CANCEL: &str = "jobs.cancel";
pub const METHOD_OUTPUT: &str = "jobs.output";
pub const METHOD_EXCHANGE: &str = "jobs.exchange";
pub const METHOD_NODES: &str = "jobs.nodes";
pub const METHOD_LAUNCH: &str = "jobs.launch";
/// `bramble bench cpu` on one node (admin only): a [`crate::cpu_bench::CpuBenchRequest`].
pub const METHOD_BENCH_CPU: &str = "jobs.bench_cpu";
pub const METHOD_BENCH_DISK: &str = "jobs.bench_disk";
/// Where a node's measured speed is kept, so a restart keeps it.
pub fn speed_key(node: &str) -> String {
    format!("jobs/speed/{node}")
}

/// `jobs.submit_wasm`: a job whose tasks run `module`; the spec's `Work::Wasm` names the
/// module by hash (the node checks it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitWasm {
    pub spec: JobSpec,
    #[serde(with = "serde_bytes")]
    pub module: Vec<u8>,
}

/// `jobs.job`: one job, with its task table when asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobQuery {
    pub id: JobId,
    pub with_tasks: bool,
    /// Set by a node that forwards the query to the scheduler.
    pub forwarded: bool,
}

/// What is known of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    pub spec: JobSpec,
    pub record: JobRecord,
    /// From the scheduler's memory (`false`: from the last checkpoint in the catalog).
    pub live: bool,
    pub running: u32,
    pub pending: u32,
    /// Running tasks by node.
    pub running_by_node: BTreeMap<String, u32>,
    pub tasks: Vec<TaskRow>,
}

/// `jobs.list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListJobs {
    /// Also the finished jobs still kept.
    pub all: bool,
}

/// A row of `bramble jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: JobId,
    pub work: String,
    pub tasks: u32,
    pub done: u64,
    pub state: super::record::JobState,
    pub policy: String,
    pub submitted_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub scheduler: Option<String>,
}

/// `jobs.output`: a task's kept output, read on the node that ran it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputRequest {
    pub job: JobId,
    pub index: u32,
    pub attempt: u32,
    /// Bytes to skip (for `--follow`).
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputAnswer {
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// Bytes the task wrote beyond what is kept.
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
    /// The attempt is still running (more may come).
    pub running: bool,
}

/// A task attempt, as the scheduler and a worker name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    pub job: JobId,
    pub index: u32,
    pub attempt: u32,
}

/// What a worker needs to run one attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub key: TaskKey,
    pub count: u32,
    pub work: Work,
    pub seed: u64,
    pub env: Vec<(String, String)>,
    pub timeout_ms: Option<u64>,
    pub cpus: u32,
    /// The reduction, so the worker keeps the right part of the output as the value.
    pub reduce: super::spec::Reduce,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Exited {
        code: i32,
    },
    Signalled {
        signal: i32,
    },
    TimedOut {
        after_ms: u64,
    },
    /// It never ran (no such program, permission denied, ...).
    NotStarted {
        reason: String,
    },
    /// Stopped on the scheduler's word (cancelled, or another copy won).
    Stopped,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        matches!(self, Outcome::Exited { code: 0 })
    }

    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Exited { code } => Some(*code),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Outcome::Exited { code } => format!("exit code {code}"),
            Outcome::Signalled { signal } => format!("killed by signal {signal}"),
            Outcome::TimedOut { after_ms } => format!("timed out after {} ms", after_ms),
            Outcome::NotStarted { reason } => format!("could not start: {reason}"),
            Outcome::Stopped => "stopped".to_string(),
        }
    }
}

/// A finished attempt, reported until a checkpoint covers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    pub key: TaskKey,
    pub outcome: Outcome,
    /// The value for the reduction (see `reduce::task_value`).
    pub value: Option<String>,
    /// The last lines of standard error, for a failure's reason (at most 512 bytes).
    pub stderr_tail: String,
    pub duration_ms: u32,
}

/// `jobs.exchange`: a worker's report and request for work.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExchangeRequest {
    pub node: String,
    pub slots: u32,
    /// Relative speed from the start-up calibration (or `jobs.toml`).
    pub speed: f64,
    pub load1: f32,
    pub cpus: u32,
    pub running: Vec<TaskKey>,
    pub finished: Vec<TaskResult>,
    /// The scheduler epoch the worker talked to last (0: none).
    pub epoch: u64,
    /// Whether it wants work (it has free slots); with `true`, the scheduler may hold the
    /// call for up to a second until work appears.
    pub wants_work: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExchangeAnswer {
    pub epoch: u64,
    pub start: Vec<Assignment>,
    /// Attempts to kill: cancelled, lost to another copy, or no longer the worker's.
    pub stop: Vec<TaskKey>,
    /// Finished attempts a committed checkpoint covers: forget them.
    pub durable: Vec<TaskKey>,
}

/// `jobs.nodes`: each worker's slots as the scheduler sees them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSummary {
    pub node: String,
    pub slots: u32,
    pub used: u32,
    pub speed: f64,
    pub load1: f32,
    pub seen_ms_ago: u64,
}
