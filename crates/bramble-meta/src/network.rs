//! Raft's network: openraft's RPCs (append entries, vote, install snapshot) carried over the
//! cluster's mutual-TLS RPC as `meta.append`, `meta.vote` and `meta.snapshot`.
//!
//! Each replication stream keeps one connection open to its target and reconnects after
//! an error; short-lived clients borrow connections from a shared pool. A peer that
//! cannot be reached is reported as `Unreachable`, which makes openraft back off instead
//! of hammering a dead board.

use bramble_net::{CallError, Connection, RpcClient};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use std::time::Duration;

use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{MetaNode, NodeId, TypeConfig};

pub const METHOD_APPEND: &str = "meta.append";
pub const METHOD_VOTE: &str = "meta.vote";
pub const METHOD_SNAPSHOT: &str = "meta.snapshot";

/// Makes one [`PeerConnection`] per replication target.
#[derive(Clone)]
pub struct Network {
    rpc: RpcClient,
}

impl Network {
    /// `rpc` must present this node's certificate: peers accept Raft traffic only from
    /// members.
    pub fn new(rpc: RpcClient) -> Self {
        Network { rpc }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MetaNode) -> PeerConnection {
        PeerConnection {
            rpc: self.rpc.clone(),
            target,
            node: node.clone(),
            connection: None,
        }
    }
}

/// The connection to one Raft peer.
pub struct PeerConnection {
    rpc: RpcClient,
    target: NodeId,
    node: MetaNode,
    connection: Option<Connection>,
}

impl PeerConnection {
    /// Sends one request and returns the peer's answer, which is itself the result of the
    /// peer's Raft call.
    async fn call<Request, Response, Error>(
        &mut self,
        method: &str,
        request: &Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, MetaNode, Error>>
    where
        Request: Serialize,
        Response: DeserializeOwned,
        Error: std::error::Error + DeserializeOwned,
    {
        let address = self.node.addr.parse().map_err(|error| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                "node {} has a bad address {:?}: {error}",
                self.node.name, self.node.addr
            ))))
        })?;
        // The connection is taken out for the duration of the exchange and put back only
        // after a complete reply. openraft cancels an append that outlives its heartbeat
        // interval; had the connection stayed in `self`, the cancelled request's reply would
        // still be in flight and the next request would read it as its own answer.
        let mut connection = match self
            .connection
            .take()
            .or_else(|| self.rpc.take_idle(address))
        {
            Some(connection) => connection,
            None => self
                .rpc
                .connect(address)
                .await
                .map_err(|error| match error {
                    // Too slow to connect (a loaded peer, or this node starved for a moment):
                    // retried at the next heartbeat like a slow answer. Counted as unreachable,
                    // it would stop replication to the peer for the back-off, long enough for
                    // it to call an election.
                    CallError::Timeout { .. } => RPCError::Network(NetworkError::new(&error)),
                    other => RPCError::Unreachable(Unreachable::new(&other)),
                })?,
        };
        let outcome = tokio::time::timeout(
            option.soft_ttl(),
            connection.call::<_, Result<Response, Error>>(method, request),
        )
        .await;
        // Only a peer that cannot be connected to is "unreachable", which makes openraft
        // back off for a second (see `backoff`). A slow answer is a network error, retried
        // at the next heartbeat: on a loaded board one append over its time budget must not
        // stop replication to that follower for a whole second, or the catalog stops
        // committing long enough for the VIP lease to lapse.
        let reply = match outcome {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::new(&std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} did not answer {method} in {:?}",
                        self.node,
                        option.soft_ttl()
                    ),
                ))));
            }
            Ok(Err(error)) => {
                return Err(match error {
                    CallError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&error)),
                    other => RPCError::Network(NetworkError::new(&other)),
                });
            }
            Ok(Ok(reply)) => {
                self.connection = Some(connection);
                reply
            }
        };
        reply.map_err(|error| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                error,
            ))
        })
    }
}

/// openraft makes a short-lived client for each leadership confirmation (a linearizable
/// read, a lease renewal): its connection goes back to the shared pool instead of being
/// closed, so the next confirmation costs no TLS handshake.
impl Drop for PeerConnection {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.rpc.keep_idle(connection);
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MetaNode, RaftError<NodeId>>> {
        self.call(METHOD_APPEND, &request, &option).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MetaNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(METHOD_SNAPSHOT, &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MetaNode, RaftError<NodeId>>> {
        self.call(METHOD_VOTE, &request, &option).await
    }

    /// A peer that refused a connection is usually down, and a board that is down stays
    /// down for seconds: retry at 0.2, then 0.4 and 0.8 s, then about once a second,
    /// rather than filling the log and the network with attempts. The short first steps
    /// matter when the refusal was a passing one (an agent restarting): a follower that
    /// hears nothing for its election timeout (0.4-0.8 s) calls an election.
    fn backoff(&self) -> Backoff {
        Backoff::new(
            [200, 400, 800]
                .into_iter()
                .map(Duration::from_millis)
                .chain(std::iter::repeat(Duration::from_secs(1))),
        )
    }
}
