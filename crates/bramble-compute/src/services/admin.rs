//! The `services.*` RPC methods and their typed requests and answers.

use serde::{Deserialize, Serialize};

use super::spec::ServiceSpec;
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
}

/// `services.logs`: a replica's log on the node that runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsRequest {
    pub name: String,
    pub index: u32,
    /// Only the last this many bytes.
    pub tail_bytes: u64,
}
