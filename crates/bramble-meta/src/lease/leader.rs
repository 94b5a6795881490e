//! The leader's side of the lease protocol ([`super`] has the safety argument): it answers
//! lease requests, confirms its leadership before saying yes to a renewal, takes over the
//! leases when it becomes leader, and commits the expiry of leases that ran out. Other
//! nodes forward lease requests to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_net::RpcError;
use bramble_util::{WorkerContext, WorkerState};
use openraft::ServerState;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::table::LeaseTable;
use super::{
    LEASE_PREFIX, LeaseAnswer, LeaseOperation, LeaseRecord, LeaseRequest, lease_key, lease_name,
};
use crate::node::{Meta, call_error, internal, unavailable};
use crate::types::{Command, CommandResult};

/// `meta.lease`.
pub const METHOD_LEASE: &str = "meta.lease";
/// How often the leader looks for leases that ran out.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_millis(50);
/// Longest wait for a quorum to confirm leadership before a renewal is answered "no".
const CONFIRM_PATIENCE: Duration = Duration::from_millis(500);
/// Longest wait for a lease command to commit.
const COMMIT_PATIENCE: Duration = Duration::from_secs(2);
/// More lease records than this are not read at a takeover (a bound, not an expectation).
const MAX_LEASES: usize = 100_000;

/// The leader's lease state, kept by every node (used only while it leads).
#[derive(Default)]
pub struct LeaseLeader {
    table: Mutex<LeaseTable>,
    /// When the last successful leadership confirmation started: renewals received
    /// before that instant are covered by it.
    last_confirmation_start: Mutex<Option<Instant>>,
}

impl Meta {
    /// The term this node leads, if it is the leader.
    fn leading_term(&self) -> Option<u64> {
        // Read in place: this runs every 50 ms on every node, and the metrics hold the
        // membership and the replication map.
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        (metrics.state == ServerState::Leader && metrics.current_leader == Some(self.self_id))
            .then_some(metrics.current_term)
    }

    /// The lease `name` as this node's replica has it, with its catalog version.
    pub fn lease_record(&self, name: &str) -> Option<(LeaseRecord, u64)> {
        let value = self.reader.get(&lease_key(name)).ok().flatten()?;
        let record = LeaseRecord::decode(&value.value).ok()?;
        Some((record, value.version))
    }

    /// Runs a lease operation on the leader: here, or forwarded once.
    pub async fn lease(&self, request: LeaseRequest) -> Result<LeaseAnswer, RpcError> {
        request.validate().map_err(RpcError::bad_request)?;
        if self.leading_term().is_some() {
            return self.lease_on_leader(request).await;
        }
        if request.forwarded {
            return Err(unavailable("this node is no longer the catalog leader"));
        }
        let leader = self.current_leader_address().ok_or_else(|| {
            unavailable("the catalog has no leader at the moment (an election is under way)")
        })?;
        let forwarded = LeaseRequest {
            forwarded: true,
            ..request
        };
        self.forwarder
            .call_reusing(leader, METHOD_LEASE, &forwarded)
            .await
            .map_err(call_error)
    }

    fn current_leader_address(&self) -> Option<SocketAddr> {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        let leader = metrics.current_leader?;
        if leader == self.self_id {
            return None;
        }
        metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .parse()
            .ok()
    }

    async fn lease_on_leader(&self, request: LeaseRequest) -> Result<LeaseAnswer, RpcError> {
        let received_at = Instant::now();
        let term = self
            .leading_term()
            .ok_or_else(|| unavailable("this node is no longer the catalog leader"))?;
        let mut table = self.leases.table.lock().await;
        if !table.is_ready_for(term) {
            return Err(unavailable(
                "the new catalog leader is still taking over the leases; retry shortly",
            ));
        }
        let name = request.name.as_str();
        let holder = request.holder.as_str();
        let current = self.lease_record(name);
        let refused = |reason: String, table: &LeaseTable| LeaseAnswer::Refused {
            reason,
            holder: table.holder(name).map(str::to_string),
        };
        match request.operation {
            LeaseOperation::Renew { version } => {
                if let Err(refusal) = table.renew(name, holder, version, received_at) {
                    return Ok(refused(refusal.to_string(), &table));
                }
                drop(table);
                self.confirm_leadership(received_at).await?;
                Ok(LeaseAnswer::Renewed)
            }
            LeaseOperation::Acquire { ttl_ms } => {
                if let Some(current_holder) = table.holder(name) {
                    return Ok(refused(
                        format!("the lease is held by {current_holder}"),
                        &table,
                    ));
                }
                let (epoch, expected_version) = match &current {
                    Some((record, version)) => (record.epoch + 1, *version),
                    None => (1, 0),
                };
                let record = LeaseRecord {
                    holder: Some(holder.to_string()),
                    epoch,
                    ttl_ms,
                    previous: None,
                };
                let ttl = record.ttl();
                match self.commit_lease(name, &record, expected_version).await? {
                    Some(version) => {
                        table.granted(name, holder, version, ttl, Instant::now());
                        info!(lease = %name, %holder, epoch, "lease granted");
                        Ok(LeaseAnswer::Granted { version, epoch })
                    }
                    None => Ok(refused(
                        "the lease changed while it was being granted".to_string(),
                        &table,
                    )),
                }
            }
            LeaseOperation::Release { version } | LeaseOperation::HandOver { version, .. } => {
                let Some((record, current_version)) = current else {
                    return Ok(refused("the lease does not exist".to_string(), &table));
                };
                if record.holder.as_deref() != Some(holder) || current_version != version {
                    return Ok(refused(
                        format!("{holder} does not hold the lease granted at version {version}"),
                        &table,
                    ));
                }
                let ttl = record.ttl();
                let successor = match &request.operation {
                    LeaseOperation::HandOver { to, .. } => Some(to.clone()),
                    _ => None,
                };
                let next = LeaseRecord {
                    holder: successor.clone(),
                    epoch: if successor.is_some() {
                        record.epoch + 1
                    } else {
                        record.epoch
                    },
                    ttl_ms: record.ttl_ms,
                    previous: Some(holder.to_string()),
                };
                match self.commit_lease(name, &next, version).await? {
                    Some(new_version) => {
                        match &successor {
                            Some(to) => {
                                table.granted(name, to, new_version, ttl, Instant::now());
                                info!(lease = %name, from = %holder, %to, "lease handed over");
                            }
                            None => {
                                table.freed(name);
                                info!(lease = %name, %holder, "lease released");
                            }
                        }
                        Ok(LeaseAnswer::Done)
                    }
                    None => Ok(refused(
                        "the lease changed concurrently".to_string(),
                        &table,
                    )),
                }
            }
        }
    }

    /// Commits `record` for lease `name` if its version is still `expected_version`;
    /// returns the new version, or None if the version had changed.
    async fn commit_lease(
        &self,
        name: &str,
        record: &LeaseRecord,
        expected_version: u64,
    ) -> Result<Option<u64>, RpcError> {
        let command = Command::PutIfVersion {
            key: lease_key(name),
            value: record.encode(),
            expected_version,
        };
        match tokio::time::timeout(COMMIT_PATIENCE, self.raft.client_write(command)).await {
            Err(_) => Err(unavailable(
                "the lease change did not commit in time (no quorum?)",
            )),
            Ok(Ok(response)) => match response.data {
                CommandResult::Written { version } => Ok(Some(version)),
                CommandResult::VersionMismatch { .. } => Ok(None),
                other => Err(internal(format!(
                    "unexpected lease commit result {other:?}"
                ))),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(unavailable("this node is no longer the catalog leader"))
            }
            Ok(Err(other)) => Err(internal(other)),
        }
    }

    /// Confirms with a quorum of voters that this node still leads, by a confirmation
    /// round that started after `received_at` (shared by concurrent renewals).
    async fn confirm_leadership(&self, received_at: Instant) -> Result<(), RpcError> {
        let mut last_start = self.leases.last_confirmation_start.lock().await;
        if last_start.is_some_and(|start| start >= received_at) {
            return Ok(());
        }
        let start = Instant::now();
        match tokio::time::timeout(CONFIRM_PATIENCE, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {
                *last_start = Some(start);
                Ok(())
            }
            Ok(Err(error)) => Err(unavailable(format!(
                "could not confirm the catalog leadership: {error}"
            ))),
            Err(_) => Err(unavailable(
                "a quorum of voters did not confirm the catalog leadership in time",
            )),
        }
    }

    /// On every node: while it leads, take over the leases at the start of each term and
    /// commit the expiry of leases that ran out. Ends on `shutdown`.
    pub(crate) async fn run_lease_keeper(
        self: Arc<Self>,
        worker: WorkerContext,
    ) -> Result<(), String> {
        let mut shutdown = worker.shutdown();
        let mut ticker = tokio::time::interval(EXPIRY_CHECK_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return Ok(()),
                _ = ticker.tick() => {}
            }
            let Some(term) = self.leading_term() else {
                self.leases.table.lock().await.clear();
                worker.set_state(WorkerState::Idle);
                worker.set_progress("not the catalog leader");
                continue;
            };
            worker.set_state(WorkerState::Busy);
            let ready = self.leases.table.lock().await.is_ready_for(term);
            if !ready {
                self.take_over_leases(term).await;
                continue;
            }
            self.expire_leases(term).await;
            let held = self.leases.table.lock().await.len();
            worker.set_progress(format!("leading term {term}: {held} leases held"));
        }
    }

    /// A new leader: apply everything from earlier terms, then honour every held lease for
    /// a full period from now.
    async fn take_over_leases(&self, term: u64) {
        match tokio::time::timeout(COMMIT_PATIENCE, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                warn!(%error, "cannot take over the leases yet");
                return;
            }
            Err(_) => return,
        }
        let entries = match self.reader.list(LEASE_PREFIX, MAX_LEASES) {
            Ok(entries) => entries,
            Err(error) => {
                warn!(%error, "cannot read the lease records");
                return;
            }
        };
        let records: Vec<(String, LeaseRecord, u64)> = entries
            .into_iter()
            .filter_map(|(key, value)| {
                let name = lease_name(&key)?.to_string();
                match LeaseRecord::decode(&value.value) {
                    Ok(record) => Some((name, record, value.version)),
                    Err(error) => {
                        warn!(%key, %error, "ignoring an unreadable lease record");
                        None
                    }
                }
            })
            .collect();
        let mut table = self.leases.table.lock().await;
        if self.leading_term() != Some(term) {
            return;
        }
        table.take_over(term, records, Instant::now());
        info!(
            term,
            held = table.len(),
            "catalog leader took over the leases"
        );
    }

    /// Commits the expiry of every lease that ran out on this leader's clock.
    async fn expire_leases(&self, term: u64) {
        let mut table = self.leases.table.lock().await;
        if !table.is_ready_for(term) {
            return;
        }
        table.take_expired(Instant::now());
        for (name, version) in table.pending_expiries() {
            let Some((record, current_version)) = self.lease_record(&name) else {
                table.freed(&name);
                continue;
            };
            if current_version != version || record.holder.is_none() {
                // Changed under us (cannot happen while only the leader writes leases):
                // follow the catalog.
                match &record.holder {
                    Some(holder) => {
                        table.granted(&name, holder, current_version, record.ttl(), Instant::now())
                    }
                    None => table.freed(&name),
                }
                continue;
            }
            let expired = LeaseRecord {
                holder: None,
                previous: record.holder.clone(),
                ..record.clone()
            };
            match self.commit_lease(&name, &expired, version).await {
                Ok(Some(_)) => {
                    table.freed(&name);
                    info!(lease = %name, holder = ?record.holder, "lease expired: its holder stopped renewing");
                }
                Ok(None) => {}
                // Proposed again at the next round; renewals stay refused meanwhile.
                Err(error) => warn!(lease = %name, %error, "could not commit a lease expiry"),
            }
        }
    }
}
