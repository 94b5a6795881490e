//! Where replicas go: the reconciler's decision, as a pure function of the services, the
//! current placements and the live nodes, so it can be tested without a cluster. A
//! replica stays where it is while its node is alive (or only suspected) and still allowed;
//! otherwise it moves to the allowed node with the fewest replicas of the service, then
//! the fewest replicas overall (spread, as Swarm's scheduler), within `max_per_node`.

use std::collections::BTreeMap;

use super::spec::{Assignment, ServiceSpec};

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub roles: Vec<String>,
    /// Alive or suspected (not yet dead): replicas stay; only alive nodes get new ones.
    pub alive: bool,
    pub suspect: bool,
}

/// What placement wants changed.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// (service, index) → new placement.
    pub place: BTreeMap<(String, u32), Assignment>,
    /// (service, index) to remove.
    pub remove: Vec<(String, u32)>,
    /// (service, index) that no node can take now, with the reason.
    pub unplaced: Vec<(String, u32, String)>,
}

/// Computes the changes that bring `current` to the specs' wishes.
pub fn reconcile(
    specs: &BTreeMap<String, ServiceSpec>,
    current: &BTreeMap<(String, u32), Assignment>,
    nodes: &[Candidate],
) -> Changes {
    let mut changes = Changes::default();
    // Replicas per node over all services, as they will be after the changes.
    let mut load: BTreeMap<String, u32> = BTreeMap::new();
    for ((service, index), assignment) in current {
        if specs
            .get(service)
            .is_some_and(|spec| *index < spec.replicas)
        {
            *load.entry(assignment.node.clone()).or_insert(0) += 1;
        }
    }
    for (service, index) in current.keys() {
        let wanted = specs
            .get(service)
            .is_some_and(|spec| *index < spec.replicas);
        if !wanted {
            changes.remove.push((service.clone(), *index));
        }
    }
    for (name, spec) in specs {
        let allowed = |node: &Candidate| {
            spec.constraints
                .iter()
                .all(|constraint| constraint.allows(&node.name, &node.roles))
        };
        let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
        for ((service, index), assignment) in current {
            if service == name && *index < spec.replicas {
                *per_node.entry(assignment.node.clone()).or_insert(0) += 1;
            }
        }
        for index in 0..spec.replicas {
            let key = (name.clone(), index);
            let port = spec.port.map(|base| base.saturating_add(index as u16));
            if let Some(assignment) = current.get(&key) {
                let node = nodes.iter().find(|node| node.name == assignment.node);
                let keeps = node.is_some_and(|node| (node.alive || node.suspect) && allowed(node));
                if keeps {
                    if assignment.port != port || assignment.generation != spec.generation {
                        changes.place.insert(
                            key,
                            Assignment {
                                node: assignment.node.clone(),
                                port,
                                generation: spec.generation,
                            },
                        );
                    }
                    continue;
                }
                // It moves: its old node no longer counts it.
                if let Some(count) = per_node.get_mut(&assignment.node) {
                    *count = count.saturating_sub(1);
                }
                if let Some(count) = load.get_mut(&assignment.node) {
                    *count = count.saturating_sub(1);
                }
            }
            let choice = nodes
                .iter()
                .filter(|node| node.alive && allowed(node))
                .filter(|node| {
                    spec.max_per_node == 0
                        || per_node.get(&node.name).copied().unwrap_or(0) < spec.max_per_node
                })
                .min_by_key(|node| {
                    (
                        per_node.get(&node.name).copied().unwrap_or(0),
                        load.get(&node.name).copied().unwrap_or(0),
                        node.name.clone(),
                    )
                });
            match choice {
                Some(node) => {
                    *per_node.entry(node.name.clone()).or_insert(0) += 1;
                    *load.entry(node.name.clone()).or_insert(0) += 1;
                    changes.place.insert(
                        key,
                        Assignment {
                            node: node.name.clone(),
                            port,
                            generation: spec.generation,
                        },
                    );
                }
                None => {
                    if current.contains_key(&key) {
                        changes.remove.push(key.clone());
                    }
                    let reason = if !nodes.iter().any(|node| node.alive && allowed(node)) {
                        format!(
                            "no live node satisfies {}",
                            if spec.constraints.is_empty() {
                                "it".to_string()
                            } else {
                                spec.constraints
                                    .iter()
                                    .map(|constraint| constraint.describe())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            }
                        )
                    } else {
                        format!(
                            "every allowed node already runs {} replica(s) (--max-per-node)",
                            spec.max_per_node
                        )
                    };
                    changes.unplaced.push((name.clone(), index, reason));
                }
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::spec::{Constraint, RestartPolicy};

    fn spec(name: &str, replicas: u32, max_per_node: u32) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            program: "sleep".into(),
            args: vec!["1000".into()],
            replicas,
            port: Some(8000),
            env: vec![],
            restart: RestartPolicy::Always,
            max_per_node,
            constraints: vec![],
            user: None,
            stop_grace_ms: 10_000,
            health: None,
            cpus_millis: None,
            memory_bytes: None,
            generation: 1,
            created_unix_ms: 0,
        }
    }

    fn node(name: &str, alive: bool) -> Candidate {
        Candidate {
            name: name.into(),
            roles: vec![],
            alive,
            suspect: false,
        }
    }

    fn apply(current: &mut BTreeMap<(String, u32), Assignment>, changes: &Changes) {
        for key in &changes.remove {
            current.remove(key);
        }
        for (key, assignment) in &changes.place {
            current.insert(key.clone(), assignment.clone());
        }
    }

    #[test]
    fn replicas_spread_move_off_dead_nodes_and_stay_put_otherwise() {
        let mut specs = BTreeMap::new();
        specs.insert("web".to_string(), spec("web", 2, 1));
        let nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
        let mut current = BTreeMap::new();
        let first = reconcile(&specs, &current, &nodes);
        apply(&mut current, &first);
        let on: Vec<&str> = current.values().map(|a| a.node.as_str()).collect();
        assert_eq!(on, vec!["n1", "n2"]);
        assert_eq!(current[&("web".to_string(), 1)].port, Some(8001));
        // Nothing to do while nothing changes.
        assert_eq!(reconcile(&specs, &current, &nodes), Changes::default());
        // n1 dies: its replica moves to n3, n2's stays.
        let nodes = vec![node("n1", false), node("n2", true), node("n3", true)];
        let moved = reconcile(&specs, &current, &nodes);
        assert_eq!(moved.place.len(), 1);
        assert_eq!(moved.place[&("web".to_string(), 0)].node, "n3");
        apply(&mut current, &moved);
        // n1 returns: nothing moves back (no duplicates).
        let nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
        assert_eq!(reconcile(&specs, &current, &nodes), Changes::default());
    }

    #[test]
    fn scaling_down_removes_and_impossible_replicas_are_explained() {
        let mut specs = BTreeMap::new();
        specs.insert("web".to_string(), spec("web", 5, 1));
        let nodes = vec![node("n1", true), node("n2", true)];
        let mut current = BTreeMap::new();
        let changes = reconcile(&specs, &current, &nodes);
        assert_eq!(changes.place.len(), 2);
        assert_eq!(changes.unplaced.len(), 3);
        assert!(changes.unplaced[0].2.contains("max-per-node"));
        apply(&mut current, &changes);
        specs.insert("web".to_string(), spec("web", 1, 1));
        let down = reconcile(&specs, &current, &nodes);
        assert_eq!(down.remove, vec![("web".to_string(), 1)]);
        let mut constrained = spec("api", 1, 0);
        constrained.constraints = vec![Constraint::Role("gpu".into())];
        specs.insert("api".to_string(), constrained);
        let none = reconcile(&specs, &current, &nodes);
        assert!(
            none.unplaced
                .iter()
                .any(|(name, _, why)| name == "api" && why.contains("role=gpu"))
        );
    }
}
