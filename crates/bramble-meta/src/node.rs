//! A node's part in the control plane: its Raft instance, its replica of the catalog, and
//! the routing that lets any node serve any request.
//!
//! Every node replicates the catalog (voters, and every other node as a learner), so stale
//! reads and watches are local everywhere. Writes and linearizable reads go to the leader:
//! a node that is not the leader forwards them, once, and retries through elections until
//! a deadline, after which the caller gets a "no quorum" error rather than a hang.
//!
//! Voter management runs on the leader (see [`Meta::reconcile_voters`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_cluster::{Membership, NodeDir, NodeState, NodeView};
use bramble_net::{ErrorKind, MAX_MEMBER_FRAME, RpcClient, RpcError};
use bramble_util::{Restart, WorkerContext, WorkerState, Workers};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use tracing::{info, warn};

use crate::api::*;
use crate::group::Grouper;
use crate::lease::LEASE_PREFIX;
use crate::lease::leader::LeaseLeader;
use crate::network::Network;
use crate::read_lease::ReadLease;
use crate::settings::MetaSettings;
use crate::store::{self, CatalogReader};
use crate::types::{
    Command, CommandResult, MAX_ENTRY_BYTES, MetaNode, NodeId, Operation, Raft, VersionedValue,
    node_id_of,
};
use crate::watch::Watch;

/// How long a write or linearizable read may wait for a leader with a quorum.
pub const QUORUM_WAIT: Duration = Duration::from_secs(5);
/// How often the leader reconsiders who should vote.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// A learner this close to the leader's log may be promoted.
const PROMOTABLE_LAG: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("opening the catalog store: {0}")]
    Store(#[from] store::MetaStoreError),
    #[error("{0}")]
    Settings(String),
    #[error("starting Raft: {0}")]
    Raft(String),
}

/// The number of voters for a cluster of `members` nodes (not counting nodes that left).
/// One voter until there are three nodes: two voters would make either node's failure stop
/// all writes, while one voter keeps writes going when the other node fails.
pub fn desired_voters(members: usize) -> usize {
    match members {
        0..=2 => 1,
        3..=4 => 3,
        _ => 5,
    }
}

/// Log entries a leader sends a follower in one append. With openraft's default, 300,
/// a leader rebuilding its replication (on election and on every voter change, when it
/// sends each follower batches from the middle of its log to find where they agree) sent
/// 8.5 MB appends of small-file groups. An append to a follower that has stopped reading
/// stays in memory until it times out: in bench/storage.sh's stall step (one node
/// SIGSTOPped) the gateway, leading the catalog, went from 51 to 100 MB for a moment.
/// 300 entries of up to [`MAX_ENTRY_BYTES`] could also outgrow the 16 MiB a member's
/// request may take, and that follower would never catch up: this many always fit.
const APPEND_BATCH_ENTRIES: u64 = (MAX_MEMBER_FRAME as usize / MAX_ENTRY_BYTES) as u64;
const _: () = assert!(
    APPEND_BATCH_ENTRIES >= 4,
    "a follower catches up a few entries per append at least"
);

/// The control plane of one node.
pub struct Meta {
    pub(crate) raft: Raft,
    pub(crate) reader: CatalogReader,
    pub(crate) self_id: NodeId,
    self_name: String,
    pub(crate) forwarder: RpcClient,
    membership: Arc<Membership>,
    settings: MetaSettings,
    pub(crate) leases: LeaseLeader,
    /// Lets this node, while leader, serve linearizable reads without a quorum round each.
    read_lease: ReadLease,
    /// Commits concurrent writes together, in shared log entries.
    grouper: Arc<Grouper>,
}

pub(crate) fn unavailable(message: impl Into<String>) -> RpcError {
    RpcError::new(ErrorKind::Unavailable, message)
}

pub(crate) fn internal(error: impl std::fmt::Display) -> RpcError {
    RpcError::internal(error.to_string())
}

impl Meta {
    /// Opens `<data-dir>/meta.redb`, starts Raft, creates the group on the bootstrap node,
    /// and starts the voter reconciler. Tasks end on `shutdown`.
    pub async fn start(
        node: &NodeDir,
        membership: Arc<Membership>,
        workers: &Workers,
    ) -> Result<Arc<Meta>, MetaError> {
        let settings = MetaSettings::load(&node.path)
            .map_err(|error| MetaError::Settings(error.to_string()))?;
        settings.validate().map_err(MetaError::Settings)?;
        let (log_store, state_machine, reader) = store::open(&node.path.join("meta.redb"))?;
        let config = Config {
            cluster_name: node.config.cluster_id.clone(),
            heartbeat_interval: settings.heartbeat_ms,
            election_timeout_min: settings.election_timeout_min_ms,
            election_timeout_max: settings.election_timeout_max_ms,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every_entries),
            // Keep some log past the snapshot so a briefly absent follower catches up from
            // the log; one away for longer gets the snapshot.
            max_in_snapshot_log_to_keep: (settings.snapshot_every_entries / 2).min(1_000),
            max_payload_entries: APPEND_BATCH_ENTRIES,
            ..Default::default()
        }
        .validate()
        .map_err(|error| MetaError::Settings(error.to_string()))?;
        let client_tls = node
            .credential
            .client_config()
            .map_err(|error| MetaError::Raft(error.to_string()))?;
        let peer_rpc = RpcClient::new(client_tls.clone())
            .with_timeouts(Duration::from_secs(1), Duration::from_secs(10));
        let self_id = node_id_of(&node.config.name);
        let raft = Raft::new(
            self_id,
            Arc::new(config),
            Network::new(peer_rpc),
            log_store,
            state_machine,
        )
        .await
        .map_err(|error| MetaError::Raft(error.to_string()))?;
        if settings.bootstrap {
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|error| MetaError::Raft(error.to_string()))?;
            if !initialized {
                let mut members = BTreeMap::new();
                members.insert(
                    self_id,
                    MetaNode::new(&node.config.name, node.config.advertise),
                );
                raft.initialize(members)
                    .await
                    .map_err(|error| MetaError::Raft(error.to_string()))?;
                info!(name = %node.config.name, "created the catalog's Raft group with this node as its first voter");
            }
        }
        let grouper = Grouper::new(raft.clone(), membership.clone());
        let meta = Arc::new(Meta {
            raft,
            grouper,
            reader,
            self_id,
            self_name: node.config.name.clone(),
            forwarder: RpcClient::new(client_tls)
                .with_timeouts(Duration::from_secs(1), QUORUM_WAIT),
            membership,
            read_lease: ReadLease::new(Duration::from_millis(settings.election_timeout_max_ms)),
            settings,
            leases: LeaseLeader::default(),
        });
        let reconciler = meta.clone();
        workers.spawn("catalog-voters", Restart::OnFailure, move |worker| {
            reconciler.clone().run_reconciler(worker)
        });
        let lease_keeper = meta.clone();
        workers.spawn("catalog-leases", Restart::OnFailure, move |worker| {
            lease_keeper.clone().run_lease_keeper(worker)
        });
        Ok(meta)
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The local replica, for callers that accept stale reads and for watches.
    pub fn reader(&self) -> &CatalogReader {
        &self.reader
    }

    /// Changes under `prefix`, in log order, from now on (filtered here, queued per
    /// watcher with a bound: [`crate::watch`]).
    pub fn watch(&self, prefix: &str) -> Watch {
        self.reader.watch(prefix)
    }

    /// Stops Raft.
    pub async fn stop(&self) {
        if let Err(error) = self.raft.shutdown().await {
            warn!(%error, "Raft did not stop cleanly");
        }
    }

    fn leader_address(&self, forward: &ForwardToLeader<NodeId, MetaNode>) -> Option<SocketAddr> {
        let node = forward.leader_node.as_ref()?;
        if forward.leader_id == Some(self.self_id) {
            return None;
        }
        node.addr.parse().ok()
    }

    /// The "no quorum" explanation: which voters gossip says are down.
    async fn no_quorum(&self, what: &str) -> RpcError {
        let metrics = self.raft.metrics().borrow().clone();
        let voters: Vec<(NodeId, MetaNode)> = metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| {
                metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|voter| voter == **id)
            })
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        let view = self.membership.nodes().await;
        let is_up = |name: &str| {
            view.iter().any(|member| {
                member.name == name && matches!(member.state, NodeState::Alive | NodeState::Suspect)
            })
        };
        let (up, down): (Vec<_>, Vec<_>) = voters.iter().partition(|(_, node)| is_up(&node.name));
        let names = |list: &[&(NodeId, MetaNode)]| {
            list.iter()
                .map(|(_, node)| node.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let needed = voters.len() / 2 + 1;
        unavailable(format!(
            "no quorum: the catalog cannot {what}: {} of {} voters are reachable ({}), {needed} are needed; down: {}. It resumes when enough voters return (a write that timed out may still be applied then)",
            up.len(),
            voters.len(),
            if up.is_empty() {
                "none".to_string()
            } else {
                names(&up)
            },
            if down.is_empty() {
                "none".to_string()
            } else {
                names(&down)
            },
        ))
    }

    /// Applies a command through Raft; returns once it is committed and applied.
    pub async fn write(
        &self,
        command: Command,
        forwarded: bool,
    ) -> Result<CommandResult, RpcError> {
        command.validate().map_err(RpcError::bad_request)?;
        if matches!(command, Command::Group(_)) {
            return Err(RpcError::bad_request(
                "groups of commands are formed by the leader, not sent to it",
            ));
        }
        // A batch may *test* a lease record (a holder fencing its writes with the grant's
        // version), but only the lease protocol changes one.
        let touches_leases = command
            .written_keys()
            .iter()
            .any(|key| key.starts_with(LEASE_PREFIX))
            || matches!(&command, Command::Batch { operations, .. } if operations.iter().any(
                |operation| matches!(operation, Operation::DeletePrefix { prefix } if LEASE_PREFIX.starts_with(prefix.as_str()))
            ));
        if touches_leases {
            return Err(RpcError::bad_request(format!(
                "keys under {LEASE_PREFIX} are changed only by the lease protocol, not by writes"
            )));
        }
        let deadline = Instant::now() + QUORUM_WAIT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.no_quorum("commit writes").await);
            }
            let attempt =
                tokio::time::timeout(remaining, self.grouper.propose(command.clone())).await;
            match attempt {
                Err(_) => return Err(self.no_quorum("commit writes").await),
                Ok(Ok(result)) => return Ok(result),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                    if forwarded {
                        return Err(unavailable("this node is no longer the leader"));
                    }
                    if let Some(leader) = self.leader_address(&forward) {
                        let request = WriteRequest {
                            command: command.clone(),
                            forwarded: true,
                        };
                        match self
                            .forwarder
                            .call_reusing::<_, CommandResult>(leader, METHOD_WRITE, &request)
                            .await
                        {
                            Ok(result) => return Ok(result),
                            Err(error) => {
                                if let Some(remote) = error.remote()
                                    && remote.kind != ErrorKind::Unavailable
                                {
                                    return Err(remote.clone());
                                }
                            }
                        }
                    }
                }
                Ok(Err(other)) => return Err(internal(other)),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True when this node holds a replica (it is in the Raft membership).
    fn is_replica(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&self.self_id)
            .is_some()
    }

    /// Waits until a read on this node would be linearizable, or says where to forward.
    async fn linearizable_here(&self) -> Result<Option<SocketAddr>, RpcError> {
        let deadline = Instant::now() + QUORUM_WAIT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.no_quorum("serve a linearizable read").await);
            }
            let grant = ReadLease::before_round(self.reader.votes_saved());
            match tokio::time::timeout(remaining, self.raft.ensure_linearizable()).await {
                Err(_) => return Err(self.no_quorum("serve a linearizable read").await),
                Ok(Ok(_)) => {
                    self.read_lease
                        .after_round(grant, self.reader.votes_saved());
                    return Ok(None);
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                    if let Some(leader) = self.leader_address(&forward) {
                        return Ok(Some(leader));
                    }
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {}
                Ok(Err(other)) => return Err(internal(other)),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A linearizable read served from this replica under the read lease
    /// ([`crate::read_lease`]), when this node is the leader and holds one; `None` when it
    /// must go the usual way (a quorum round here, or the leader).
    fn under_read_lease<T>(
        &self,
        consistency: Consistency,
        read: impl FnOnce() -> Result<T, store::MetaStoreError>,
    ) -> Option<Result<T, RpcError>> {
        if consistency != Consistency::Linearizable {
            return None;
        }
        self.read_lease
            .serve(|| self.reader.votes_saved(), read)
            .map(|value| value.map_err(internal))
    }

    /// Where a read is served: here (`None`), or by the leader at the returned address.
    /// Stale reads are local on any replica; a node that holds no replica yet, and every
    /// linearizable read, goes through the leader.
    async fn read_route(
        &self,
        consistency: Consistency,
        forwarded: bool,
    ) -> Result<Option<SocketAddr>, RpcError> {
        if consistency == Consistency::Stale && self.is_replica() {
            return Ok(None);
        }
        let leader = self.linearizable_here().await?;
        if leader.is_some() && forwarded {
            return Err(unavailable("this node is no longer the leader"));
        }
        Ok(leader)
    }

    pub async fn read(
        &self,
        key: &str,
        consistency: Consistency,
        forwarded: bool,
    ) -> Result<Option<VersionedValue>, RpcError> {
        if let Some(served) = self.under_read_lease(consistency, || self.reader.get(key)) {
            return served;
        }
        if let Some(leader) = self.read_route(consistency, forwarded).await? {
            let request = ReadRequest {
                key: key.to_string(),
                consistency: Consistency::Linearizable,
                forwarded: true,
            };
            return self
                .forwarder
                .call_reusing(leader, METHOD_READ, &request)
                .await
                .map_err(call_error);
        }
        self.reader.get(key).map_err(internal)
    }

    pub async fn list(
        &self,
        prefix: &str,
        limit: u32,
        consistency: Consistency,
        forwarded: bool,
    ) -> Result<ListResponse, RpcError> {
        if let Some(served) =
            self.under_read_lease(consistency, || self.reader.list(prefix, limit as usize))
        {
            return served;
        }
        if let Some(leader) = self.read_route(consistency, forwarded).await? {
            let request = ListRequest {
                prefix: prefix.to_string(),
                limit,
                consistency: Consistency::Linearizable,
                forwarded: true,
            };
            return self
                .forwarder
                .call_reusing(leader, METHOD_LIST, &request)
                .await
                .map_err(call_error);
        }
        self.reader.list(prefix, limit as usize).map_err(internal)
    }

    /// A page of keys under a prefix, grouped by a delimiter (see [`ScanRequest`]).
    pub async fn scan(&self, request: ScanRequest) -> Result<ScanPage, RpcError> {
        if request.limit == 0 || request.limit > MAX_SCAN_LIMIT {
            return Err(RpcError::bad_request(format!(
                "a scan returns 1 to {MAX_SCAN_LIMIT} items, not {}",
                request.limit
            )));
        }
        if let Some(delimiter) = request.delimiter
            && (!delimiter.is_ascii() || delimiter.is_ascii_control())
        {
            return Err(RpcError::bad_request(
                "a scan's delimiter must be a printable ASCII character",
            ));
        }
        if request.prefix.len() > crate::types::MAX_KEY_BYTES
            || request
                .start_after
                .as_ref()
                .is_some_and(|after| after.len() > crate::types::MAX_KEY_BYTES)
        {
            return Err(RpcError::bad_request(
                "the scan's prefix or start is too long",
            ));
        }
        let scan_here = || {
            self.reader.scan(
                &request.prefix,
                request.start_after.as_deref(),
                request.delimiter,
                request.limit as usize,
            )
        };
        if let Some(served) = self.under_read_lease(request.consistency, scan_here) {
            return served;
        }
        if let Some(leader) = self
            .read_route(request.consistency, request.forwarded)
            .await?
        {
            let forwarded = ScanRequest {
                consistency: Consistency::Linearizable,
                forwarded: true,
                ..request
            };
            return self
                .forwarder
                .call_reusing(leader, METHOD_SCAN, &forwarded)
                .await
                .map_err(call_error);
        }
        self.reader
            .scan(
                &request.prefix,
                request.start_after.as_deref(),
                request.delimiter,
                request.limit as usize,
            )
            .map_err(internal)
    }

    /// The group's state; asked of the leader when there is one, so lags are known.
    pub async fn status(&self, forwarded: bool) -> Result<ClusterStatus, RpcError> {
        let metrics = self.raft.metrics().borrow().clone();
        if !forwarded
            && let Some(leader) = metrics.current_leader
            && leader != self.self_id
            && let Some(node) = metrics.membership_config.membership().get_node(&leader)
            && let Ok(address) = node.addr.parse::<SocketAddr>()
            && let Ok(status) = self
                .forwarder
                .call_reusing::<_, ClusterStatus>(
                    address,
                    METHOD_STATUS,
                    &StatusRequest { forwarded: true },
                )
                .await
        {
            return Ok(status);
        }
        let view = self.membership.nodes().await;
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let mut members: Vec<MemberStatus> = membership
            .nodes()
            .map(|(id, node)| {
                let matched_index = metrics
                    .replication
                    .as_ref()
                    .and_then(|replication| replication.get(id).cloned())
                    .map(|log_id| log_id.map(|log_id| log_id.index).unwrap_or(0));
                let matched_index = if *id == self.self_id && metrics.state == ServerState::Leader {
                    Some(last_log_index)
                } else {
                    matched_index
                };
                MemberStatus {
                    name: node.name.clone(),
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    state: view
                        .iter()
                        .find(|member| member.name == node.name)
                        .map(|member| member.state.as_str().to_string())
                        .unwrap_or_else(|| "unknown".to_string()),
                    matched_index,
                    lag: matched_index.map(|matched| last_log_index.saturating_sub(matched)),
                }
            })
            .collect();
        members.sort_by(|left, right| left.name.cmp(&right.name));
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower if voters.contains(&self.self_id) => "follower",
            ServerState::Follower | ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        Ok(ClusterStatus {
            reporter: self.self_name.clone(),
            role: role.to_string(),
            leader: metrics
                .current_leader
                .and_then(|leader| membership.get_node(&leader))
                .map(|node| node.name.clone()),
            term: metrics.current_term,
            last_log_index,
            commit_index: metrics.last_applied.map(|log_id| log_id.index).unwrap_or(0),
            last_applied: self.reader.last_applied_index(),
            snapshot_index: metrics.snapshot.map(|log_id| log_id.index),
            keys: self.reader.len().unwrap_or(0) as u64,
            members,
        })
    }

    /// Takes a snapshot now (and purges the log it covers).
    pub async fn snapshot_now(&self) -> Result<(), RpcError> {
        self.raft.trigger().snapshot().await.map_err(internal)
    }

    async fn run_reconciler(self: Arc<Self>, worker: WorkerContext) -> Result<(), String> {
        let mut shutdown = worker.shutdown();
        let mut ticker = tokio::time::interval(RECONCILE_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut down_since: HashMap<NodeId, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.wait() => return Ok(()),
                _ = ticker.tick() => {}
            }
            // Snapshots of a large catalog are built and sent as one buffer, and bursts of
            // writes free many buffers: give the memory back to the kernel once a second
            // when enough of it is free, instead of keeping it resident. Pooled block
            // buffers that went unused for a second go first.
            bramble_util::buffers::release_idle();
            bramble_util::memory::release_free_memory_if_worthwhile();
            if self.raft.metrics().borrow().current_leader != Some(self.self_id) {
                down_since.clear();
                worker.set_state(WorkerState::Idle);
                continue;
            }
            worker.set_state(WorkerState::Busy);
            let view = self.membership.nodes().await;
            if let Err(error) = self.reconcile_voters(&view, &mut down_since).await {
                worker.report_error(&format!("could not update the catalog's voters: {error}"));
            }
        }
    }

    /// On the leader: makes every live node a learner, and keeps the voter count at
    /// [`desired_voters`] by promoting caught-up learners — in place of voters that have
    /// been down for longer than the grace period, or to grow the group as nodes join.
    /// Voters are never removed without a replacement: shrinking the group would let a
    /// minority keep committing.
    async fn reconcile_voters(
        &self,
        view: &[NodeView],
        down_since: &mut HashMap<NodeId, Instant>,
    ) -> Result<(), String> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        let is_up = |state: NodeState| matches!(state, NodeState::Alive | NodeState::Suspect);

        // Every live node that is not a member yet joins as a learner, all in one
        // membership change (one log entry), so a large cluster forms in one round.
        let newcomers: BTreeMap<NodeId, MetaNode> = view
            .iter()
            .filter(|member| is_up(member.state))
            .map(|member| (node_id_of(&member.name), member))
            .filter(|(id, _)| !known.contains(id))
            .map(|(id, member)| (id, MetaNode::new(&member.name, member.addr)))
            .collect();
        if !newcomers.is_empty() {
            info!(
                count = newcomers.len(),
                "adding nodes to the catalog as learners"
            );
            self.raft
                .change_membership(ChangeMembers::AddNodes(newcomers), true)
                .await
                .map_err(|error| format!("adding learners: {error}"))?;
            return Ok(());
        }

        let state_of = |id: NodeId| {
            membership
                .get_node(&id)
                .and_then(|node| view.iter().find(|member| member.name == node.name))
                .map(|member| member.state)
        };
        let now = Instant::now();
        for id in &known {
            if state_of(*id).is_some_and(is_up) {
                down_since.remove(id);
            } else {
                down_since.entry(*id).or_insert(now);
            }
        }
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let mut candidates: Vec<(String, NodeId)> = known
            .iter()
            .filter(|id| !voters.contains(id) && state_of(**id) == Some(NodeState::Alive))
            .filter(|id| {
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|replication| replication.get(id).cloned())
                    .flatten()
                    .map(|log_id| log_id.index)
                    .unwrap_or(0);
                matched + PROMOTABLE_LAG >= last_log_index
            })
            .filter_map(|id| membership.get_node(id).map(|node| (node.name.clone(), *id)))
            .collect();
        // Deterministic choice: the alphabetically last candidate is promoted first.
        candidates.sort();
        let members_not_left = view
            .iter()
            .filter(|member| member.state != NodeState::Left)
            .count();
        let desired = desired_voters(members_not_left.max(1));
        let mut new_voters = voters.clone();
        let grace = self.settings.voter_grace();
        for voter in &voters {
            let expired = down_since
                .get(voter)
                .is_some_and(|since| now.duration_since(*since) > grace);
            if expired && let Some((name, candidate)) = candidates.pop() {
                let gone = membership
                    .get_node(voter)
                    .map(|node| node.name.clone())
                    .unwrap_or_default();
                info!(%gone, promoted = %name, "replacing a voter that has been down past the grace period");
                new_voters.remove(voter);
                new_voters.insert(candidate);
            }
        }
        while new_voters.len() < desired {
            let Some((name, candidate)) = candidates.pop() else {
                break;
            };
            info!(promoted = %name, "promoting a learner to voter");
            new_voters.insert(candidate);
        }
        if new_voters != voters {
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(new_voters), true)
                .await
                .map_err(|error| format!("changing voters: {error}"))?;
        }
        Ok(())
    }
}

pub(crate) fn call_error(error: bramble_net::CallError) -> RpcError {
    match error.remote() {
        Some(remote) => remote.clone(),
        None => unavailable(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voter_counts_follow_cluster_size() {
        assert_eq!(desired_voters(1), 1);
        assert_eq!(desired_voters(2), 1);
        assert_eq!(desired_voters(3), 3);
        assert_eq!(desired_voters(4), 3);
        assert_eq!(desired_voters(5), 5);
        assert_eq!(desired_voters(100), 5);
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id_of("n1"), node_id_of("n1"));
        let ids: BTreeSet<u64> = (1..=1000)
            .map(|index| node_id_of(&format!("n{index}")))
            .collect();
        assert_eq!(ids.len(), 1000);
    }
}
