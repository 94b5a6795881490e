//! The `services.*` RPC methods and their typed requests and answers.

use serde::{Deserialize, Serialize};

use super::spec::{FailureAction, HealthCheck, RestartPolicy, Rollout, ServiceSpec};
use super::supervisor::ReplicaStatus;

pub const SERVICE: &str = "services";
pub const METHOD_CREATE: &str = "services.create";
pub const METHOD_LIST: &str = "services.list";
pub const METHOD_INSPECT: &str = "services.inspect";
pub const METHOD_SCALE: &str = "services.scale";
pub const METHOD_REMOVE: &str = "services.remove";
pub const METHOD_PS: &str = "services.ps";
pub const METHOD_LOCAL: &str = "services.local";
pub const METHOD_LOGS: &str = "services.logs";
pub const METHOD_UPDATE: &str = "services.update";
pub const METHOD_ROLLBACK: &str = "services.rollback";
pub const METHOD_CREATE_WASM: &str = "services.create_wasm";

/// `services.create_wasm`: a service whose replicas run this WebAssembly module.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateWasm {
    pub spec: ServiceSpec,
    #[serde(with = "serde_bytes")]
    pub module: Vec<u8>,
}

/// `services.update`: what changes (`None` and empty lists keep what is there). A change of
/// what replicas run starts a rolling update; a change of the update policy alone does not.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateRequest {
    pub name: String,
    /// A new program and its arguments.
    pub command: Option<Vec<String>>,
    /// Variables to add or replace.
    pub env_add: Vec<(String, String)>,
    /// Variables to remove.
    pub env_remove: Vec<String>,
    pub user: Option<String>,
    pub stop_grace_ms: Option<u64>,
    pub restart: Option<RestartPolicy>,
    pub health: Option<HealthCheck>,
    pub remove_health: bool,
    /// New limits (`Some(None)` removes one).
    pub cpus_millis: Option<Option<u32>>,
    pub memory_bytes: Option<Option<u64>>,
    pub parallelism: Option<u32>,
    pub delay_ms: Option<u64>,
    pub on_failure: Option<FailureAction>,
    pub monitor_ms: Option<u64>,
    /// Replace every replica even if nothing they run changed (Swarm's `--force`).
    pub force: bool,
    /// A new WebAssembly module (then `command` holds only its arguments) and its name.
    #[serde(default)]
    pub module: Option<(String, Vec<u8>)>,
}

/// `services.scale`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub name: String,
    pub replicas: u32,
}

/// A row of `bramble service ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    /// The current version (generation).
    #[serde(default)]
    pub version: u64,
    /// A rolling update still running or paused.
    #[serde(default)]
    pub update: Option<String>,
    pub replicas: u32,
    pub running: u32,
    pub command: String,
    pub port: Option<u16>,
    pub restart: String,
    /// `0.5 CPU, 32 MiB`, empty without limits.
    #[serde(default)]
    pub limits: String,
}

/// `services.ps`: every replica of a service, wherever it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PsAnswer {
    pub spec: ServiceSpec,
    pub replicas: Vec<ReplicaStatus>,
    /// Replicas with no node: (index, why).
    pub pending: Vec<(u32, String)>,
    /// Nodes that did not answer.
    pub unreachable: Vec<String>,
    /// The latest rolling update, if there was one.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// Replicas kept out of the balancers (not yet healthy, or about to be replaced).
    #[serde(default)]
    pub withheld: Vec<u32>,
    /// Replicas moving off a drained node, whose old copy still runs there.
    #[serde(default)]
    pub handovers: Vec<HandoverView>,
}

/// A replica moving off a drained node (`bramble drain`), as `ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverView {
    pub index: u32,
    pub from_node: String,
    pub to_node: String,
    pub since_unix_ms: u64,
}

/// `services.logs`: a replica's log on the node that runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsRequest {
    pub name: String,
    pub index: u32,
    /// Only the last this many bytes (when `after` is not given).
    pub tail_bytes: u64,
    /// Only what was written after this position (`logs --follow` asks again with the
    /// position of its last answer).
    #[serde(default)]
    pub after: Option<LogPosition>,
}

/// A place in a replica's log: the file (by inode, so a rotation is noticed) and the
/// offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub file: u64,
    pub offset: u64,
}

/// What `services.logs` answers: the bytes, and where they end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogChunk {
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    pub position: Option<LogPosition>,
}
