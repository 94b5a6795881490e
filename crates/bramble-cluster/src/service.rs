//! The `cluster.*` RPC methods an agent serves:
//!
//! | method | who may call | answer |
//! |---|---|---|
//! | `cluster.join` | anyone (the token secret is the credential) | a node certificate and the cluster secrets |
//! | `cluster.nodes` | members, admins | this agent's view of the node table |
//! | `cluster.info` | members, admins | this agent's name, pid, memory, gossip counters |
//! | `cluster.leave` | admins, the node itself | leaves gracefully, then the agent exits |

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bramble_net::rpc::{Request, encode};
use bramble_net::{Caller, ErrorKind, Handler, RpcError};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::join;
use crate::load::own_rss_kib;
use crate::membership::Membership;
use crate::node_dir::NodeDir;

/// What `cluster.info` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInfo {
    pub name: String,
    pub cluster_id: String,
    pub version: String,
    pub pid: u32,
    pub advertise: SocketAddr,
    pub uptime_ms: u64,
    pub rss_kib: u64,
    pub gossip_datagrams_received: u64,
    pub gossip_datagrams_rejected: u64,
}

pub struct ClusterService {
    node: Arc<NodeDir>,
    membership: Arc<Membership>,
    started: Instant,
    /// Notified when the agent should exit (after a leave).
    exit: Arc<Notify>,
}

impl ClusterService {
    pub fn new(node: Arc<NodeDir>, membership: Arc<Membership>, exit: Arc<Notify>) -> Self {
        ClusterService {
            node,
            membership,
            started: Instant::now(),
            exit,
        }
    }
}

#[async_trait::async_trait]
impl Handler for ClusterService {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError> {
        match request.method {
            "join" => encode(&join::admit(&self.node, &self.membership, &request).await?),
            "nodes" => {
                request.require_authenticated()?;
                encode(&self.membership.nodes().await)
            }
            "info" => {
                request.require_authenticated()?;
                encode(&AgentInfo {
                    name: self.node.config.name.clone(),
                    cluster_id: self.node.config.cluster_id.clone(),
                    version: crate::VERSION.to_string(),
                    pid: std::process::id(),
                    advertise: self.node.config.advertise,
                    uptime_ms: self.started.elapsed().as_millis() as u64,
                    rss_kib: own_rss_kib(),
                    gossip_datagrams_received: self
                        .membership
                        .counters
                        .received
                        .load(Ordering::Relaxed),
                    gossip_datagrams_rejected: self
                        .membership
                        .counters
                        .rejected
                        .load(Ordering::Relaxed),
                })
            }
            "leave" => {
                let allowed = match request.caller {
                    Caller::Admin(_) => true,
                    Caller::Node(name) => *name == self.node.config.name,
                    Caller::Anonymous => false,
                };
                if !allowed {
                    return Err(RpcError::new(
                        ErrorKind::Unauthorized,
                        format!(
                            "only an admin or node {} itself may make it leave",
                            self.node.config.name
                        ),
                    ));
                }
                self.membership.leave().await;
                self.exit.notify_one();
                encode(&())
            }
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("the cluster service has no method {other:?}"),
            )),
        }
    }
}
