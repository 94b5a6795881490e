//! Rolling updates: which replicas move to a service's new version next, decided by the
//! reconciler on every pass as a pure function of the spec, the rollout record, the
//! placements and what the nodes report of their replicas (so it is tested without a
//! cluster, and a new reconciler continues where the last one stopped: all the state is in
//! the catalog).
//!
//! Balancers serve only placements that are not withheld. A placement new to a node (placed,
//! moved, or updated) is withheld until its replica runs and passes its health check; then
//! this returns it to the balancers. So no request goes to a process that is still starting.
//!
//! A replica is replaced in steps. Its placement is withheld, and the balancers drop it;
//! after [`DRAIN_MS`] it moves to the new version, and its node's supervisor stops the old
//! process and starts the new one; once that is ready it returns to the balancers. So no
//! request goes to a process about to stop either. `parallelism` replicas are replaced at a
//! time; the next batch waits until every replica of the batch has served for the monitor
//! period (healthy, with a health check), then `delay`. A replica of the new version that
//! restarts, fails to start or fails its checks fails the update: pause it, carry on, or
//! roll back to the previous version, as the policy says.
//!
//! A replica moving off a drained node (a hand-over, see `super::placement`) takes the same
//! path into the balancers; once it has served for [`DRAIN_MS`] (requests sent to the old
//! copy have ended), the hand-over ends here and the drained node stops the old copy.

use std::collections::BTreeMap;

use super::spec::*;
use super::supervisor::ReplicaStatus;

/// How long a replica is out of the balancers before its process is replaced: long
/// enough for every balancer to see the placement change and for requests in flight to
/// finish.
pub const DRAIN_MS: u64 = 1_000;
/// A replica of the new version that is neither healthy nor failed this long after it was
/// placed counts as failed (Nomad's `healthy_deadline`, 5 minutes).
pub const HEALTHY_DEADLINE_MS: u64 = 5 * 60 * 1000;

/// What the reconciler writes for one service.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Placements to rewrite (index → placement).
    pub assignments: BTreeMap<u32, Assignment>,
    /// The rollout record, when it changed.
    pub rollout: Option<Rollout>,
    /// Return to the previous version, for this reason (the reconciler swaps the versions
    /// and starts a rollback).
    pub roll_back: Option<String>,
    /// A rollout is under way: pass again soon.
    pub active: bool,
}

/// How one replica of the target version is doing.
#[derive(Debug, PartialEq)]
enum Verdict {
    Done,
    Pending,
    Failed(String),
}

/// Whether a replica may serve: it runs and, with a health check, is healthy.
fn ready(spec: &ServiceSpec, status: &ReplicaStatus) -> bool {
    status.state == "running"
        && (spec.health.is_none() || status.health.as_deref() == Some("healthy"))
}

fn judge(
    spec: &ServiceSpec,
    assignment: &Assignment,
    status: Option<&ReplicaStatus>,
    now: u64,
) -> Verdict {
    let past_deadline = assignment.updated_unix_ms != 0
        && now.saturating_sub(assignment.updated_unix_ms) > HEALTHY_DEADLINE_MS;
    let Some(status) = status else {
        if past_deadline {
            return Verdict::Failed(format!(
                "node {} did not start it within {} s",
                assignment.node,
                HEALTHY_DEADLINE_MS / 1000
            ));
        }
        return Verdict::Pending;
    };
    if status.state == "failed" || status.state == "backoff" || status.restarts > 0 {
        let reason = status
            .error
            .clone()
            .or_else(|| status.last_exit.clone())
            .unwrap_or_else(|| status.state.clone());
        return Verdict::Failed(reason);
    }
    if status.state == "exited" && spec.restart != RestartPolicy::Never {
        return Verdict::Failed(status.last_exit.clone().unwrap_or_default());
    }
    // Monitored from when it started or returned to the balancers, whichever is later.
    let serving_since = status.since_unix_ms.max(assignment.updated_unix_ms);
    if assignment.withheld_since_unix_ms.is_none()
        && ready(spec, status)
        && now.saturating_sub(serving_since) >= spec.update.monitor_ms
    {
        return Verdict::Done;
    }
    if past_deadline && assignment.withheld_since_unix_ms.is_some() {
        return Verdict::Failed(format!(
            "not healthy within {} s",
            HEALTHY_DEADLINE_MS / 1000
        ));
    }
    Verdict::Pending
}

/// The next step for `spec`'s placements: withheld replicas that are ready return to the
/// balancers, and a rolling update (if placements are behind the version) moves on.
/// `assignments` are the service's placements by index, `replicas` what the nodes report
/// of its replicas.
pub fn decide(
    spec: &ServiceSpec,
    rollout: Option<&Rollout>,
    assignments: &BTreeMap<u32, Assignment>,
    replicas: &[ReplicaStatus],
    now: u64,
) -> Decision {
    let mut decision = Decision::default();
    let target = spec.generation;
    let wanted = |index: &u32| *index < spec.replicas;
    let status_of = |index: u32, assignment: &Assignment| {
        let generation = spec.version(assignment.generation).generation;
        replicas.iter().find(|status| {
            status.index == index
                && status.node == assignment.node
                && status.generation == generation
        })
    };
    // Replicas on the current version join the balancers once they are ready.
    for (index, assignment) in assignments.iter().filter(|(index, assignment)| {
        wanted(index)
            && assignment.generation == target
            && assignment.withheld_since_unix_ms.is_some()
    }) {
        if status_of(*index, assignment).is_some_and(|status| ready(spec, status)) {
            decision.assignments.insert(
                *index,
                Assignment {
                    withheld_since_unix_ms: None,
                    updated_unix_ms: now,
                    ..assignment.clone()
                },
            );
        } else {
            // Watch it until it is.
            decision.active = true;
        }
    }
    // Hand-overs end once the new copy has served for DRAIN_MS: the balancers switched to
    // it and requests sent to the old copy have finished, so the drained node may stop it.
    for (index, original) in assignments
        .iter()
        .filter(|(index, assignment)| wanted(index) && assignment.handover.is_some())
    {
        let assignment = decision.assignments.get(index).unwrap_or(original);
        if assignment.withheld_since_unix_ms.is_none()
            && now.saturating_sub(assignment.updated_unix_ms) >= DRAIN_MS
        {
            let finished = Assignment {
                handover: None,
                ..assignment.clone()
            };
            decision.assignments.insert(*index, finished);
        } else {
            decision.active = true;
        }
    }
    let outdated: Vec<u32> = assignments
        .iter()
        .filter(|(index, assignment)| wanted(index) && assignment.generation != target)
        .map(|(index, _)| *index)
        .collect();
    // Replicas withheld for a replacement that is not going ahead serve again.
    let release_outdated = |decision: &mut Decision| {
        for index in &outdated {
            let assignment = &assignments[index];
            if assignment.withheld_since_unix_ms.is_some() {
                decision.assignments.insert(
                    *index,
                    Assignment {
                        withheld_since_unix_ms: None,
                        ..assignment.clone()
                    },
                );
            }
        }
    };
    let mut record = match rollout {
        Some(record) if record.to_generation == target => record.clone(),
        // Placements behind with no rollout for this version (a catalog from before
        // rollouts, or a record lost): update them as `service update` would.
        _ if !outdated.is_empty() => {
            let from = outdated
                .iter()
                .map(|index| assignments[index].generation)
                .min()
                .unwrap_or(target);
            Rollout::start(RolloutKind::Update, from, target, None)
        }
        _ => return decision,
    };
    let original = record.clone();
    let store = |decision: &mut Decision, record: Rollout| {
        if record != original || rollout.is_none() {
            decision.rollout = Some(record);
        }
    };
    if outdated.is_empty() {
        if record.state == RolloutState::Running {
            record.state = RolloutState::Completed;
            record.finished_unix_ms = Some(now);
            record.batch_open = false;
        }
        store(&mut decision, record);
        return decision;
    }
    if record.state != RolloutState::Running {
        release_outdated(&mut decision);
        store(&mut decision, record);
        return decision;
    }
    decision.active = true;
    let current = |index: &u32| -> Assignment {
        decision
            .assignments
            .get(index)
            .unwrap_or(&assignments[index])
            .clone()
    };
    // How the replicas already on the target version are doing.
    let mut in_flight = 0usize;
    let mut failure: Option<String> = None;
    let on_target: Vec<u32> = assignments
        .iter()
        .filter(|(index, assignment)| wanted(index) && assignment.generation == target)
        .map(|(index, _)| *index)
        .collect();
    for index in on_target {
        let assignment = current(&index);
        match judge(spec, &assignment, status_of(index, &assignment), now) {
            Verdict::Done => {}
            Verdict::Pending => in_flight += 1,
            Verdict::Failed(reason) => {
                if record.failures_let_pass.contains(&index) {
                    continue;
                }
                let described = format!(
                    "replica {}.{index} on {} failed: {reason}",
                    spec.name, assignment.node
                );
                let action = match record.kind {
                    RolloutKind::Update => spec.update.on_failure,
                    // A rollback that fails stops where it is.
                    RolloutKind::Rollback => FailureAction::Pause,
                };
                match action {
                    FailureAction::Continue => record.failures_let_pass.push(index),
                    FailureAction::Rollback if spec.previous.is_some() => {
                        decision.roll_back = Some(described);
                        return decision;
                    }
                    FailureAction::Rollback | FailureAction::Pause => {
                        failure.get_or_insert(described);
                    }
                }
            }
        }
    }
    if let Some(reason) = failure {
        record.state = RolloutState::Paused;
        record.finished_unix_ms = Some(now);
        record.message = Some(format!("paused: {reason}"));
        release_outdated(&mut decision);
        store(&mut decision, record);
        decision.active = false;
        return decision;
    }
    // Drained replicas move to the new version (still withheld until ready).
    for index in &outdated {
        let assignment = &assignments[index];
        match assignment.withheld_since_unix_ms {
            Some(since) if now.saturating_sub(since) >= DRAIN_MS => {
                decision.assignments.insert(
                    *index,
                    Assignment {
                        generation: target,
                        updated_unix_ms: now,
                        ..assignment.clone()
                    },
                );
                in_flight += 1;
            }
            Some(_) => in_flight += 1,
            None => {}
        }
    }
    if in_flight == 0 {
        if record.batch_open {
            record.batch_open = false;
            record.batch_done_unix_ms = now;
        }
        if now
            >= record
                .batch_done_unix_ms
                .saturating_add(spec.update.delay_ms)
        {
            let batch = match spec.update.parallelism {
                0 => usize::MAX,
                parallelism => parallelism as usize,
            };
            for index in outdated.iter().take(batch) {
                decision.assignments.insert(
                    *index,
                    Assignment {
                        withheld_since_unix_ms: Some(now),
                        ..assignments[index].clone()
                    },
                );
            }
            record.batch_open = true;
        }
    }
    store(&mut decision, record);
    decision
}

/// `spec` returned to its previous version (keeping its scale and update policy), with
/// the failed version kept as the previous one. `None` when there is nothing to return to.
pub fn rolled_back(spec: &ServiceSpec) -> Option<ServiceSpec> {
    let previous = spec.previous.as_deref()?;
    let mut failed = spec.clone();
    failed.previous = None;
    let mut restored = previous.clone();
    restored.replicas = spec.replicas;
    restored.max_per_node = spec.max_per_node;
    restored.constraints = spec.constraints.clone();
    restored.update = spec.update.clone();
    restored.created_unix_ms = spec.created_unix_ms;
    restored.previous = Some(Box::new(failed));
    Some(restored)
}

/// The catalog batch that returns `spec` (stored at `spec_version`) to its previous
/// version and opens a rollback rollout; `None` when there is no previous version.
pub fn rollback_batch(
    spec: &ServiceSpec,
    spec_version: u64,
    message: String,
) -> Option<(
    Vec<bramble_meta::types::Condition>,
    Vec<bramble_meta::types::Operation>,
)> {
    use bramble_meta::types::{Condition, Operation};
    let restored = rolled_back(spec)?;
    let rollout = Rollout::start(
        RolloutKind::Rollback,
        spec.generation,
        restored.generation,
        Some(message),
    );
    Some((
        vec![Condition {
            key: spec_key(&spec.name),
            version: spec_version,
        }],
        vec![
            Operation::Put {
                key: spec_key(&spec.name),
                value: serde_json::to_vec(&restored).unwrap_or_default(),
            },
            Operation::Put {
                key: rollout_key(&spec.name),
                value: serde_json::to_vec(&rollout).unwrap_or_default(),
            },
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(node: &str, generation: u64) -> Assignment {
        Assignment {
            node: node.into(),
            port: None,
            generation,
            withheld_since_unix_ms: None,
            updated_unix_ms: 0,
            handover: None,
        }
    }

    fn replica(index: u32, node: &str, generation: u64, state: &str, since: u64) -> ReplicaStatus {
        ReplicaStatus {
            service: "web".into(),
            index,
            node: node.into(),
            state: state.into(),
            pid: Some(1),
            port: None,
            user: "nobody".into(),
            restarts: 0,
            last_exit: None,
            error: None,
            since_unix_ms: since,
            health: None,
            warning: None,
            generation,
        }
    }

    /// Version 2 of a two-replica service, one replica at a time, 1 s monitor.
    fn updated_spec() -> ServiceSpec {
        let mut previous = ServiceSpec::example("web", 2);
        previous.generation = 1;
        let mut spec = previous.clone();
        spec.args = vec!["2000".into()];
        spec.generation = 2;
        spec.update.monitor_ms = 1_000;
        spec.update.on_failure = FailureAction::Rollback;
        spec.previous = Some(Box::new(previous));
        spec
    }

    fn apply(assignments: &mut BTreeMap<u32, Assignment>, decision: &Decision) {
        for (index, assignment) in &decision.assignments {
            assignments.insert(*index, assignment.clone());
        }
    }

    #[test]
    fn replicas_are_drained_then_replaced_one_batch_at_a_time() {
        let spec = updated_spec();
        let mut assignments = BTreeMap::from([(0, placed("n1", 1)), (1, placed("n2", 1))]);
        let old = vec![
            replica(0, "n1", 1, "running", 0),
            replica(1, "n2", 1, "running", 0),
        ];
        // The first batch: replica 0 leaves the balancers.
        let first = decide(&spec, None, &assignments, &old, 10_000);
        assert!(first.active);
        assert_eq!(first.assignments.len(), 1);
        assert_eq!(first.assignments[&0].withheld_since_unix_ms, Some(10_000));
        let mut record = first.rollout.clone().expect("a rollout record");
        assert!(record.batch_open);
        apply(&mut assignments, &first);
        // Still draining: nothing moves.
        let waiting = decide(&spec, Some(&record), &assignments, &old, 10_500);
        assert!(waiting.assignments.is_empty() && waiting.active);
        // Drained: replica 0 moves to version 2, still withheld; replica 1 waits.
        let switched = decide(&spec, Some(&record), &assignments, &old, 11_000);
        assert_eq!(switched.assignments.len(), 1);
        assert_eq!(switched.assignments[&0].generation, 2);
        assert!(switched.assignments[&0].withheld_since_unix_ms.is_some());
        apply(&mut assignments, &switched);
        if let Some(changed) = switched.rollout {
            record = changed;
        }
        // Its new process runs: it returns to the balancers, and is monitored from then.
        let young = vec![
            replica(0, "n1", 2, "running", 11_200),
            replica(1, "n2", 1, "running", 0),
        ];
        let returned = decide(&spec, Some(&record), &assignments, &young, 11_300);
        assert_eq!(returned.assignments.len(), 1);
        assert_eq!(returned.assignments[&0].withheld_since_unix_ms, None);
        assert_eq!(returned.assignments[&0].updated_unix_ms, 11_300);
        apply(&mut assignments, &returned);
        let monitoring = decide(&spec, Some(&record), &assignments, &young, 12_000);
        assert!(monitoring.assignments.is_empty());
        // Served for the monitor period: the next batch (replica 1) leaves the balancers.
        let next = decide(&spec, Some(&record), &assignments, &young, 12_400);
        assert_eq!(next.assignments.len(), 1);
        assert!(next.assignments[&1].withheld_since_unix_ms.is_some());
        apply(&mut assignments, &next);
        record = next.rollout.expect("the batch closes and another opens");
        let drained = decide(&spec, Some(&record), &assignments, &young, 13_400);
        apply(&mut assignments, &drained);
        let all_new = vec![
            replica(0, "n1", 2, "running", 11_200),
            replica(1, "n2", 2, "running", 13_500),
        ];
        // Every placement on version 2: the rollout completes as the last one returns.
        let done = decide(&spec, Some(&record), &assignments, &all_new, 15_000);
        assert_eq!(done.assignments[&1].withheld_since_unix_ms, None);
        let finished = done.rollout.clone().expect("the record is completed");
        assert_eq!(finished.state, RolloutState::Completed);
        assert!(!done.active);
        apply(&mut assignments, &done);
        // And nothing more happens after that.
        assert_eq!(
            decide(&spec, Some(&finished), &assignments, &all_new, 16_000),
            Decision::default()
        );
    }

    #[test]
    fn a_new_replica_joins_the_balancers_once_healthy() {
        let mut spec = ServiceSpec::example("web", 1);
        spec.health = Some(HealthCheck {
            probe: Probe::Http { path: "/".into() },
            interval_ms: 1_000,
            timeout_ms: 1_000,
            retries: 3,
            start_period_ms: 0,
        });
        let mut new = placed("n1", 1);
        new.withheld_since_unix_ms = Some(1_000);
        let assignments = BTreeMap::from([(0, new)]);
        let mut starting = replica(0, "n1", 1, "running", 1_100);
        starting.health = Some("starting".into());
        let watching = decide(&spec, None, &assignments, &[starting.clone()], 1_200);
        assert!(watching.active && watching.assignments.is_empty());
        starting.health = Some("healthy".into());
        let joined = decide(&spec, None, &assignments, &[starting], 2_200);
        assert_eq!(joined.assignments[&0].withheld_since_unix_ms, None);
        assert!(!joined.active && joined.rollout.is_none());
    }

    #[test]
    fn a_failing_new_version_rolls_back_pauses_or_continues_as_asked() {
        let spec = updated_spec();
        let assignments = BTreeMap::from([(0, placed("n1", 2)), (1, placed("n2", 1))]);
        let mut crashed = replica(0, "n1", 2, "backoff", 11_000);
        crashed.restarts = 1;
        crashed.last_exit = Some("exit code 3".into());
        let replicas = vec![crashed, replica(1, "n2", 1, "running", 0)];
        let record = Rollout::start(RolloutKind::Update, 1, 2, None);
        let rollback = decide(&spec, Some(&record), &assignments, &replicas, 12_000);
        let reason = rollback.roll_back.expect("a rollback");
        assert!(reason.contains("web.0 on n1") && reason.contains("exit code 3"));
        // Rolled back: version 1 is current again, version 2 kept as the previous one.
        let restored = rolled_back(&spec).expect("a previous version");
        assert_eq!(restored.generation, 1);
        assert_eq!(restored.previous.as_ref().map(|p| p.generation), Some(2));
        assert!(restored.validate().is_ok());

        let mut pausing = spec.clone();
        pausing.update.on_failure = FailureAction::Pause;
        let paused = decide(&pausing, Some(&record), &assignments, &replicas, 12_000);
        let paused_record = paused.rollout.expect("a paused record");
        assert_eq!(paused_record.state, RolloutState::Paused);
        assert!(paused.assignments.is_empty() && paused.roll_back.is_none());
        // A paused rollout stays paused.
        let still = decide(
            &pausing,
            Some(&paused_record),
            &assignments,
            &replicas,
            20_000,
        );
        assert_eq!(still, Decision::default());

        let mut continuing = spec.clone();
        continuing.update.on_failure = FailureAction::Continue;
        let carried_on = decide(&continuing, Some(&record), &assignments, &replicas, 12_000);
        let carried_record = carried_on.rollout.expect("the failure is remembered");
        assert_eq!(carried_record.failures_let_pass, vec![0]);
        assert_eq!(carried_record.state, RolloutState::Running);
        assert!(carried_on.assignments[&1].withheld_since_unix_ms.is_some());
    }

    #[test]
    fn a_hand_over_ends_once_the_new_copy_has_served_for_the_drain_time() {
        let spec = ServiceSpec::example("web", 1);
        let mut moving = placed("n3", 1);
        moving.withheld_since_unix_ms = Some(1_000);
        moving.handover = Some(Handover {
            from_node: "n1".into(),
            from_port: Some(8000),
            from_generation: 1,
            since_unix_ms: 1_000,
        });
        let mut assignments = BTreeMap::from([(0, moving)]);
        // The new copy is starting: the old one keeps serving; passes continue.
        let waiting = decide(&spec, None, &assignments, &[], 1_200);
        assert!(waiting.active && waiting.assignments.is_empty());
        // Running: it joins the balancers, the old copy still runs.
        let running = vec![replica(0, "n3", 1, "running", 1_300)];
        let joined = decide(&spec, None, &assignments, &running, 1_400);
        assert_eq!(joined.assignments[&0].withheld_since_unix_ms, None);
        assert!(joined.assignments[&0].handover.is_some() && joined.active);
        apply(&mut assignments, &joined);
        let soon = decide(&spec, None, &assignments, &running, 1_400 + DRAIN_MS - 1);
        assert!(soon.assignments.is_empty() && soon.active);
        // Served for the drain time: the hand-over ends (the drained node stops its copy).
        let ended = decide(&spec, None, &assignments, &running, 1_400 + DRAIN_MS);
        assert_eq!(ended.assignments[&0].handover, None);
        apply(&mut assignments, &ended);
        assert_eq!(
            decide(&spec, None, &assignments, &running, 10_000),
            Decision::default()
        );
    }

    #[test]
    fn versions_are_chosen_by_generation() {
        let spec = updated_spec();
        assert_eq!(spec.version(2).args, vec!["2000".to_string()]);
        assert_eq!(spec.version(1).args, vec!["1000".to_string()]);
        // Older than the previous version: the current one.
        assert_eq!(spec.version(0).generation, 2);
        assert!(spec.runs_differently(spec.version(1)));
    }
}
