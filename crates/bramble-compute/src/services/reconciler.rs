//! The reconciler: one node at a time (the holder of the `services/reconciler` lease)
//! turns the service specs into placements (`services/assign/...`) with
//! [`super::placement::reconcile`], whenever a spec or the membership changes and every
//! few seconds. Its writes are fenced by the lease grant's version, so a node whose lease
//! moved on cannot place anything. Nodes' supervisors then start and stop what is placed on
//! them; the reconciler never talks to them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_cluster::{Membership, NodeState};
use bramble_meta::Meta;
use bramble_meta::types::{Command, CommandResult, Condition, Operation};
use bramble_platform::lease_holder::HeldLease;
use bramble_util::WorkerContext;
use tracing::{info, warn};

use super::placement::{Candidate, reconcile};
use super::spec::*;
use crate::jobs::scheduler::scan_all;

/// The lease period: a dead reconciler is replaced after about this long.
const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often membership is compared with what placement last saw.
const MEMBERSHIP_POLL: Duration = Duration::from_millis(200);
/// A pass at least this often, whatever changed.
const PERIODIC_PASS: Duration = Duration::from_secs(5);

/// What placement decides from: every spec, every placement, every member (read from the
/// leader, so a decision never rests on a lagging replica).
pub type PlacementInputs = (
    BTreeMap<String, ServiceSpec>,
    BTreeMap<(String, u32), Assignment>,
    Vec<Candidate>,
);

pub async fn placement_inputs(
    meta: &Meta,
    membership: &Membership,
) -> Result<PlacementInputs, bramble_net::RpcError> {
    let specs: BTreeMap<String, ServiceSpec> = scan_all(meta, SPEC_PREFIX)
        .await?
        .into_iter()
        .filter_map(|(_, value)| serde_json::from_slice::<ServiceSpec>(&value).ok())
        .map(|spec| (spec.name.clone(), spec))
        .collect();
    let mut current = BTreeMap::new();
    for (key, value) in scan_all(meta, ASSIGN_PREFIX).await? {
        if let (Some(key), Ok(assignment)) = (
            parse_assign_key(&key),
            serde_json::from_slice::<Assignment>(&value),
        ) {
            current.insert(key, assignment);
        }
    }
    let nodes: Vec<Candidate> = membership
        .nodes()
        .await
        .into_iter()
        .map(|node| Candidate {
            alive: node.state == NodeState::Alive,
            suspect: node.state == NodeState::Suspect,
            name: node.name,
            roles: node.roles,
        })
        .collect();
    Ok((specs, current, nodes))
}

pub struct Reconciler {
    node: String,
    meta: Arc<Meta>,
    membership: Arc<Membership>,
    holding: std::sync::atomic::AtomicBool,
}

impl Reconciler {
    pub fn new(node: &str, meta: Arc<Meta>, membership: Arc<Membership>) -> Arc<Reconciler> {
        Arc::new(Reconciler {
            node: node.to_string(),
            meta,
            membership,
            holding: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn is_holding(&self) -> bool {
        self.holding.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The worker `services-reconciler`.
    pub async fn run(self: Arc<Self>, worker: WorkerContext) -> Result<(), String> {
        let mut shutdown = worker.shutdown();
        let mut lease = HeldLease::new(self.meta.clone(), RECONCILER_LEASE, &self.node, LEASE_TTL);
        let mut watch = self.meta.watch(SPEC_PREFIX);
        let mut next_step = Instant::now();
        let mut next_pass = Instant::now();
        let mut seen_members: Vec<(String, NodeState)> = Vec::new();
        let mut dirty = true;
        loop {
            if Instant::now() >= next_step {
                next_step = Instant::now() + lease.step_every();
                let holding = lease.step().await.is_some();
                if holding && !self.is_holding() {
                    info!("this node reconciles the services");
                    dirty = true;
                }
                self.holding
                    .store(holding, std::sync::atomic::Ordering::Relaxed);
                worker.set_progress(if holding { "reconciling" } else { "standby" });
            }
            if let Some(grant_version) = lease.grant_version() {
                let members: Vec<(String, NodeState)> = self
                    .membership
                    .nodes()
                    .await
                    .into_iter()
                    .map(|node| (node.name, node.state))
                    .collect();
                if members != seen_members {
                    seen_members = members;
                    dirty = true;
                }
                if dirty || Instant::now() >= next_pass {
                    match self.pass(grant_version).await {
                        Ok(()) => dirty = false,
                        Err(error) => worker.report_error(&error),
                    }
                    next_pass = Instant::now() + PERIODIC_PASS;
                }
            }
            tokio::select! {
                _ = shutdown.wait() => {
                    if lease.hold().is_some() {
                        lease.release().await;
                    }
                    return Ok(());
                }
                change = watch.next() => {
                    if change.is_none() {
                        return Ok(());
                    }
                    dirty = true;
                }
                _ = tokio::time::sleep(MEMBERSHIP_POLL) => {}
            }
        }
    }

    /// One reconciliation: read specs and placements, place, write what changed.
    async fn pass(&self, grant_version: u64) -> Result<(), String> {
        let (specs, current, nodes) = placement_inputs(&self.meta, &self.membership)
            .await
            .map_err(|error| format!("reading the services and placements: {error}"))?;
        let changes = reconcile(&specs, &current, &nodes);
        if changes.place.is_empty() && changes.remove.is_empty() {
            return Ok(());
        }
        let mut operations = Vec::new();
        for (service, index) in &changes.remove {
            if !changes.place.contains_key(&(service.clone(), *index)) {
                operations.push(Operation::Delete {
                    key: assign_key(service, *index),
                });
            }
        }
        for ((service, index), assignment) in &changes.place {
            let moved = current
                .get(&(service.clone(), *index))
                .is_some_and(|old| old.node != assignment.node);
            if moved {
                info!(service, index, node = %assignment.node, "moving a replica");
            }
            operations.push(Operation::Put {
                key: assign_key(service, *index),
                value: serde_json::to_vec(assignment).unwrap_or_default(),
            });
        }
        let lease_key = bramble_meta::lease::lease_key(RECONCILER_LEASE);
        for chunk in operations.chunks(1000) {
            let command = Command::Batch {
                conditions: vec![Condition {
                    key: lease_key.clone(),
                    version: grant_version,
                }],
                operations: chunk.to_vec(),
            };
            match self.meta.write(command, false).await {
                Ok(CommandResult::BatchApplied { .. }) => {}
                Ok(CommandResult::ConditionFailed { .. }) => {
                    warn!("placements refused: the reconciler lease moved on");
                    return Err("the reconciler lease moved on".to_string());
                }
                Ok(other) => return Err(format!("placing replicas: {other:?}")),
                Err(error) => return Err(format!("placing replicas: {error}")),
            }
        }
        Ok(())
    }
}
