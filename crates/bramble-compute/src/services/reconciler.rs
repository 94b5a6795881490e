//! The reconciler: one node at a time (the holder of the `services/reconciler` lease)
//! turns the service specs into placements (`services/assign/...`) with
//! [`super::placement::reconcile`], whenever a spec or the membership changes and every
//! few seconds. Its writes are fenced by the lease grant's version, so a node whose lease
//! moved on cannot place anything. Nodes' supervisors then start and stop what is placed on
//! them. While a service has placements behind its current version, each pass also takes
//! the rolling update a step further (`super::rollout`), for which it asks the nodes how
//! the service's replicas are doing. A drained node (`bramble drain`) is a node placement
//! moves replicas off, by hand-over: the rollout step ends each hand-over once the new copy
//! has served for a moment, and only then does the drained node stop its copy.

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
use super::rollout::{decide, rollback_batch};
use super::service::gather_replicas;
use super::spec::*;
use super::supervisor::Supervisor;
use crate::jobs::scheduler::scan_all;

/// The lease period: a dead reconciler is replaced after about this long.
const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often membership is compared with what placement last saw.
const MEMBERSHIP_POLL: Duration = Duration::from_millis(200);
/// A pass at least this often, whatever changed.
const PERIODIC_PASS: Duration = Duration::from_secs(5);
/// A pass this often while a rolling update is under way.
const ROLLOUT_PASS: Duration = Duration::from_millis(250);

/// What placement decides from: every spec, every placement, every member with its
/// drained flag (read from the leader, so a decision never rests on a lagging replica).
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
    let drained = bramble_platform::drain::drained(meta).await?;
    let nodes: Vec<Candidate> = membership
        .nodes()
        .await
        .into_iter()
        .map(|node| Candidate {
            alive: node.state == NodeState::Alive,
            suspect: node.state == NodeState::Suspect,
            drained: drained.contains_key(&node.name),
            address: Some(node.addr.ip()),
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
    rpc: bramble_net::RpcClient,
    /// This node's replicas, reported with the others' during a rolling update.
    supervisor: Arc<Supervisor>,
    holding: std::sync::atomic::AtomicBool,
}

impl Reconciler {
    pub fn new(
        node: &str,
        meta: Arc<Meta>,
        membership: Arc<Membership>,
        rpc: bramble_net::RpcClient,
        supervisor: Arc<Supervisor>,
    ) -> Arc<Reconciler> {
        Arc::new(Reconciler {
            node: node.to_string(),
            meta,
            membership,
            rpc,
            supervisor,
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
        let mut drains = self.meta.watch(bramble_platform::drain::PREFIX);
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
                    let mut period = PERIODIC_PASS;
                    match self.pass(grant_version).await {
                        Ok(rolling) => {
                            dirty = false;
                            if rolling {
                                period = ROLLOUT_PASS;
                            }
                        }
                        Err(error) => worker.report_error(&error),
                    }
                    next_pass = Instant::now() + period;
                }
            }
            // Until the next lease step, and while holding also the next membership look and
            // periodic pass. (A standby node has no pass due: waiting for one made its loop
            // spin through zero-length sleeps, a thousand wake-ups a second.)
            let now = Instant::now();
            let mut wait = next_step.saturating_duration_since(now);
            if lease.grant_version().is_some() {
                wait = wait
                    .min(MEMBERSHIP_POLL)
                    .min(next_pass.saturating_duration_since(now));
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
                change = drains.next() => {
                    if change.is_none() {
                        return Ok(());
                    }
                    dirty = true;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One reconciliation: read specs and placements, place, write what changed, then take
    /// every rolling update a step. Returns whether one is under way.
    async fn pass(&self, grant_version: u64) -> Result<bool, String> {
        let (specs, mut current, nodes) = placement_inputs(&self.meta, &self.membership)
            .await
            .map_err(|error| format!("reading the services and placements: {error}"))?;
        let now = bramble_util::time::unix_millis();
        let changes = reconcile(&specs, &current, &nodes, now);
        let mut operations = Vec::new();
        for key in &changes.remove {
            if !changes.place.contains_key(key) {
                operations.push(Operation::Delete {
                    key: assign_key(&key.0, key.1),
                });
                current.remove(key);
            }
        }
        for ((service, index), assignment) in &changes.place {
            let previous_node = current
                .get(&(service.clone(), *index))
                .map(|old| old.node.clone());
            let mut assignment = assignment.clone();
            if previous_node.as_ref() != Some(&assignment.node) {
                // New on its node: out of the balancers until it runs and is healthy.
                assignment.withheld_since_unix_ms = Some(now);
                match (&previous_node, &assignment.handover) {
                    (Some(_), Some(handover)) => {
                        info!(service, index, from = %handover.from_node, node = %assignment.node, "handing a replica over (its old copy serves until the new one is ready)")
                    }
                    (Some(_), None) => {
                        info!(service, index, node = %assignment.node, "moving a replica")
                    }
                    (None, _) => {}
                }
            }
            operations.push(Operation::Put {
                key: assign_key(service, *index),
                value: serde_json::to_vec(&assignment).unwrap_or_default(),
            });
            current.insert((service.clone(), *index), assignment);
        }
        for chunk in operations.chunks(1000) {
            self.fenced_write(grant_version, Vec::new(), chunk.to_vec())
                .await?;
        }
        self.roll_out(grant_version, &specs, &current).await
    }

    /// Takes each service whose placements are behind its version or withheld from the
    /// balancers (or whose rollout is still open) one step further.
    async fn roll_out(
        &self,
        grant_version: u64,
        specs: &BTreeMap<String, ServiceSpec>,
        current: &BTreeMap<(String, u32), Assignment>,
    ) -> Result<bool, String> {
        let records: BTreeMap<String, Rollout> = scan_all(&self.meta, ROLLOUT_PREFIX)
            .await
            .map_err(|error| format!("reading the rollouts: {error}"))?
            .into_iter()
            .filter_map(|(key, value)| {
                let name = key.strip_prefix(ROLLOUT_PREFIX)?.to_string();
                Some((name, serde_json::from_slice(&value).ok()?))
            })
            .collect();
        let mut rolling = false;
        for (name, spec) in specs {
            let assignments: BTreeMap<u32, Assignment> = current
                .iter()
                .filter(|((service, _), _)| service == name)
                .map(|((_, index), assignment)| (*index, assignment.clone()))
                .collect();
            let record = records.get(name);
            let behind = assignments.iter().any(|(index, assignment)| {
                *index < spec.replicas
                    && (assignment.generation != spec.generation
                        || assignment.withheld_since_unix_ms.is_some()
                        || assignment.handover.is_some())
            });
            let open = record.is_some_and(|record| record.state == RolloutState::Running);
            if !behind && !open {
                continue;
            }
            let (replicas, _) = gather_replicas(
                &self.node,
                &self.membership,
                &self.rpc,
                &self.supervisor,
                Some(name),
            )
            .await;
            let decision = decide(
                spec,
                record,
                &assignments,
                &replicas,
                bramble_util::time::unix_millis(),
            );
            rolling |= decision.active;
            if let Some(reason) = decision.roll_back {
                warn!(service = %name, %reason, "the update failed; rolling back");
                let stored = self
                    .meta
                    .read(
                        &spec_key(name),
                        bramble_meta::api::Consistency::Linearizable,
                        false,
                    )
                    .await
                    .map_err(|error| format!("reading service {name}: {error}"))?;
                let Some(stored) = stored else { continue };
                let Ok(latest) = serde_json::from_slice::<ServiceSpec>(&stored.value) else {
                    continue;
                };
                if latest.generation != spec.generation {
                    continue;
                }
                if let Some((conditions, operations)) =
                    rollback_batch(&latest, stored.version, format!("rolling back: {reason}"))
                {
                    self.fenced_write(grant_version, conditions, operations)
                        .await?;
                }
                rolling = true;
                continue;
            }
            let mut operations: Vec<Operation> = decision
                .assignments
                .iter()
                .map(|(index, assignment)| Operation::Put {
                    key: assign_key(name, *index),
                    value: serde_json::to_vec(assignment).unwrap_or_default(),
                })
                .collect();
            if let Some(rollout) = &decision.rollout {
                if rollout.state != RolloutState::Running {
                    info!(service = %name, rollout = %rollout.describe(), "a rollout ended");
                }
                operations.push(Operation::Put {
                    key: rollout_key(name),
                    value: serde_json::to_vec(rollout).unwrap_or_default(),
                });
            }
            if !operations.is_empty() {
                self.fenced_write(grant_version, Vec::new(), operations)
                    .await?;
            }
        }
        Ok(rolling)
    }

    /// A catalog batch that applies only while this node's lease grant stands (and the
    /// extra `conditions` hold).
    async fn fenced_write(
        &self,
        grant_version: u64,
        mut conditions: Vec<Condition>,
        operations: Vec<Operation>,
    ) -> Result<(), String> {
        conditions.push(Condition {
            key: bramble_meta::lease::lease_key(RECONCILER_LEASE),
            version: grant_version,
        });
        match self
            .meta
            .write(
                Command::Batch {
                    conditions,
                    operations,
                },
                false,
            )
            .await
        {
            Ok(CommandResult::BatchApplied { .. }) => Ok(()),
            Ok(CommandResult::ConditionFailed { .. }) => {
                warn!("a reconciler write was refused: the lease (or the service) moved on");
                Err("the reconciler lease or the service moved on".to_string())
            }
            Ok(other) => Err(format!("writing placements: {other:?}")),
            Err(error) => Err(format!("writing placements: {error}")),
        }
    }
}
