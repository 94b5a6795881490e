//! The `agent.*` RPC methods, answered by every agent about itself: `agent.workers` (its
//! named background workers, for `bramble workers`) and `agent.subsystems` (the status of
//! each subsystem running on it).

use std::sync::Arc;

use bramble_net::rpc::{Request, encode};
use bramble_net::{ErrorKind, Handler, RpcError};
use bramble_util::{WorkerInfo, Workers};

use crate::subsystem::Subsystems;

pub const METHOD_WORKERS: &str = "agent.workers";
pub const METHOD_SUBSYSTEMS: &str = "agent.subsystems";

/// `agent.workers`: the answering node and its workers.
pub type WorkersResponse = (String, Vec<WorkerInfo>);

pub struct AgentService {
    node: String,
    workers: Workers,
    subsystems: Arc<Subsystems>,
}

impl AgentService {
    pub fn new(node: &str, workers: Workers, subsystems: Arc<Subsystems>) -> Self {
        AgentService {
            node: node.to_string(),
            workers,
            subsystems,
        }
    }
}

#[async_trait::async_trait]
impl Handler for AgentService {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError> {
        request.require_authenticated()?;
        match request.method {
            "workers" => encode(&(self.node.clone(), self.workers.list())),
            "subsystems" => {
                // JSON text: each subsystem's status has a shape of its own.
                let statuses: Vec<(String, String)> = self
                    .subsystems
                    .statuses()
                    .into_iter()
                    .map(|(name, status)| (name, status.to_string()))
                    .collect();
                encode(&statuses)
            }
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("the agent service has no method {other:?}"),
            )),
        }
    }
}
