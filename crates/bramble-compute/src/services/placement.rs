//! Where replicas go: the reconciler's decision, as a pure function of the services, the
//! current placements and the nodes, so it can be tested without a cluster. A replica
//! stays where it is while its node is alive (or only suspected), not drained and still
//! allowed; otherwise it moves to the allowed node with the fewest replicas of the
//! service, then the fewest replicas overall (spread, as Swarm's scheduler), within
//! `max_per_node`. A drained node (`bramble drain`) keeps nothing and gets nothing.
//!
//! A replica leaving a drained node moves as a hand-over ([`Assignment::handover`]): its
//! old copy keeps running, and serving, until the new one is ready (the rolling-update step
//! in `super::rollout` ends the hand-over), where Swarm's drain stops the old task first.
//! A dead node's replica can only move after the fact. A hand-over whose old node is
//! undrained before the new copy is ready is called off: the replica stays where it was.
//! A replica that has moved is never moved back.
//!
//! Ports: replica i listens on the service's port + i, unless that port is already held
//! on its node's address — several nodes share one address in the emulator, and a
//! hand-over's old copy still holds its port — in which case it gets the first port free
//! there above every service's range. A replica keeps its port until it moves.
//! A new or moved replica runs the service's current version; which version a kept
//! replica runs is left to the rolling update (`super::rollout`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::spec::{Assignment, Handover, ServiceSpec};

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub roles: Vec<String>,
    /// Alive or suspected (not yet dead): replicas stay; only alive nodes get new ones.
    pub alive: bool,
    pub suspect: bool,
    /// Drained by the operator: its replicas move away (by hand-over), none come.
    pub drained: bool,
    /// Where its replicas listen; nodes sharing an address must not share ports.
    pub address: Option<IpAddr>,
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

/// The ports held on each address, for choosing new replicas' ports.
struct PortBook {
    held: BTreeMap<Option<IpAddr>, BTreeSet<u16>>,
    /// Each service's range, `port..port + replicas`: left to the replicas it belongs to.
    ranges: Vec<(u32, u32)>,
}

impl PortBook {
    fn new(
        specs: &BTreeMap<String, ServiceSpec>,
        current: &BTreeMap<(String, u32), Assignment>,
        address_of: &dyn Fn(&str) -> Option<IpAddr>,
    ) -> PortBook {
        let mut book = PortBook {
            held: BTreeMap::new(),
            ranges: specs
                .values()
                .filter_map(|spec| {
                    let base = u32::from(spec.port?);
                    Some((base, base + spec.replicas))
                })
                .collect(),
        };
        for ((service, index), assignment) in current {
            if specs
                .get(service)
                .is_none_or(|spec| *index >= spec.replicas)
            {
                continue;
            }
            if let Some(port) = assignment.port {
                book.hold(address_of(&assignment.node), port);
            }
            if let Some(handover) = &assignment.handover
                && let Some(port) = handover.from_port
            {
                book.hold(address_of(&handover.from_node), port);
            }
        }
        book
    }

    fn hold(&mut self, address: Option<IpAddr>, port: u16) {
        self.held.entry(address).or_default().insert(port);
    }

    fn release(&mut self, address: Option<IpAddr>, port: u16) {
        if let Some(ports) = self.held.get_mut(&address) {
            ports.remove(&port);
        }
    }

    /// `wanted` if it is free on `address`, else the first port free there above every
    /// service's range; `None` if there is none. The port is then held.
    fn take(&mut self, address: Option<IpAddr>, wanted: u16) -> Option<u16> {
        let held = self.held.entry(address).or_default();
        if !held.contains(&wanted) {
            held.insert(wanted);
            return Some(wanted);
        }
        let above = self.ranges.iter().map(|(_, end)| *end).max().unwrap_or(0);
        let ranges = &self.ranges;
        let port = (above..=u32::from(u16::MAX))
            .filter_map(|port| u16::try_from(port).ok())
            .find(|port| {
                !held.contains(port)
                    && !ranges
                        .iter()
                        .any(|(start, end)| (*start..*end).contains(&u32::from(*port)))
            })?;
        held.insert(port);
        Some(port)
    }
}

/// Computes the changes that bring `current` to the specs' wishes (`now` dates a new
/// hand-over).
pub fn reconcile(
    specs: &BTreeMap<String, ServiceSpec>,
    current: &BTreeMap<(String, u32), Assignment>,
    nodes: &[Candidate],
    now: u64,
) -> Changes {
    let mut changes = Changes::default();
    let node_of = |name: &str| nodes.iter().find(|node| node.name == name);
    // Whether a node still runs what it was given (alive, or suspected but not yet dead).
    let runs = |name: &str| node_of(name).is_some_and(|node| node.alive || node.suspect);
    let address_of = |name: &str| node_of(name).and_then(|node| node.address);
    let mut ports = PortBook::new(specs, current, &address_of);
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
            let mut handover = None;
            if let Some(assignment) = current.get(&key) {
                let node = node_of(&assignment.node);
                let keeps = node.is_some_and(|node| {
                    (node.alive || node.suspect) && !node.drained && allowed(node)
                });
                if keeps {
                    let mut kept = assignment.clone();
                    // Its version is the rolling update's business, not placement's; its
                    // port is its own, unless the service gained or lost one.
                    if kept.port.is_some() != port.is_some() {
                        kept.port = port;
                    }
                    // A hand-over whose old copy died with its node is over.
                    if kept
                        .handover
                        .as_ref()
                        .is_some_and(|handover| !runs(&handover.from_node))
                    {
                        kept.handover = None;
                    }
                    // One whose old node was undrained before the new copy got ready is
                    // called off: the old copy, still serving, stays where it is (a
                    // replica that has moved is never moved back, one still moving may).
                    if let Some(handover) = &kept.handover
                        && kept.withheld_since_unix_ms.is_some()
                        && let Some(home) = node_of(&handover.from_node)
                        && (home.alive || home.suspect)
                        && !home.drained
                        && allowed(home)
                    {
                        for counts in [&mut per_node, &mut load] {
                            if let Some(count) = counts.get_mut(&kept.node) {
                                *count = count.saturating_sub(1);
                            }
                            *counts.entry(home.name.clone()).or_insert(0) += 1;
                        }
                        if let Some(new_port) = kept.port {
                            ports.release(address_of(&kept.node), new_port);
                        }
                        kept = Assignment {
                            node: home.name.clone(),
                            port: handover.from_port,
                            generation: handover.from_generation,
                            withheld_since_unix_ms: None,
                            updated_unix_ms: now,
                            handover: None,
                        };
                    }
                    if kept != *assignment {
                        changes.place.insert(key, kept);
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
                handover = match &assignment.handover {
                    // Moving again before an earlier hand-over ended: the first old copy
                    // still serves.
                    Some(earlier) if runs(&earlier.from_node) => Some(earlier.clone()),
                    // Off a drained node that still runs it: make before break.
                    _ if node.is_some_and(|node| node.drained) && runs(&assignment.node) => {
                        Some(Handover {
                            from_node: assignment.node.clone(),
                            from_port: assignment.port,
                            from_generation: assignment.generation,
                            since_unix_ms: now,
                        })
                    }
                    _ => None,
                };
                if let Some(old) = assignment.port
                    && handover
                        .as_ref()
                        .is_none_or(|handover| handover.from_node != assignment.node)
                {
                    // Nothing keeps running on its old port.
                    ports.release(address_of(&assignment.node), old);
                }
            }
            let choice = nodes
                .iter()
                .filter(|node| node.alive && !node.drained && allowed(node))
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
                    let chosen_port = match port {
                        Some(port) => match ports.take(node.address, port) {
                            Some(free) => Some(free),
                            None => {
                                // No port free beside the old copy: it must stop first.
                                handover = None;
                                Some(port)
                            }
                        },
                        None => None,
                    };
                    changes.place.insert(
                        key,
                        Assignment {
                            node: node.name.clone(),
                            port: chosen_port,
                            generation: spec.generation,
                            withheld_since_unix_ms: None,
                            updated_unix_ms: 0,
                            handover,
                        },
                    );
                }
                None => {
                    if current.contains_key(&key) {
                        changes.remove.push(key.clone());
                    }
                    let rules = if spec.constraints.is_empty() {
                        "it".to_string()
                    } else {
                        spec.constraints
                            .iter()
                            .map(|constraint| constraint.describe())
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let drained: Vec<&str> = nodes
                        .iter()
                        .filter(|node| node.alive && node.drained && allowed(node))
                        .map(|node| node.name.as_str())
                        .collect();
                    let reason = if !nodes.iter().any(|node| node.alive && allowed(node)) {
                        format!("no live node satisfies {rules}")
                    } else if !nodes
                        .iter()
                        .any(|node| node.alive && !node.drained && allowed(node))
                    {
                        format!(
                            "every live node that satisfies {rules} is drained ({})",
                            drained.join(", ")
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
    use crate::services::spec::Constraint;

    fn spec(name: &str, replicas: u32, max_per_node: u32) -> ServiceSpec {
        let mut spec = ServiceSpec::example(name, replicas);
        spec.max_per_node = max_per_node;
        spec
    }

    fn node(name: &str, alive: bool) -> Candidate {
        Candidate {
            name: name.into(),
            roles: vec![],
            alive,
            suspect: false,
            drained: false,
            // Every node on one address, as in the emulator.
            address: Some(std::net::IpAddr::from([127, 0, 0, 1])),
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
        let first = reconcile(&specs, &current, &nodes, 0);
        apply(&mut current, &first);
        let on: Vec<&str> = current.values().map(|a| a.node.as_str()).collect();
        assert_eq!(on, vec!["n1", "n2"]);
        assert_eq!(current[&("web".to_string(), 1)].port, Some(8001));
        // Nothing to do while nothing changes.
        assert_eq!(reconcile(&specs, &current, &nodes, 0), Changes::default());
        // n1 dies: its replica moves to n3, n2's stays.
        let nodes = vec![node("n1", false), node("n2", true), node("n3", true)];
        let moved = reconcile(&specs, &current, &nodes, 0);
        assert_eq!(moved.place.len(), 1);
        assert_eq!(moved.place[&("web".to_string(), 0)].node, "n3");
        apply(&mut current, &moved);
        // n1 returns: nothing moves back (no duplicates).
        let nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
        assert_eq!(reconcile(&specs, &current, &nodes, 0), Changes::default());
    }

    #[test]
    fn a_drained_node_hands_its_replicas_over_on_a_free_port_and_gets_none() {
        let mut specs = BTreeMap::new();
        specs.insert("web".to_string(), spec("web", 2, 1));
        let mut nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
        let mut current = BTreeMap::new();
        let first = reconcile(&specs, &current, &nodes, 0);
        apply(&mut current, &first);
        assert_eq!(current[&("web".to_string(), 0)].node, "n1");
        // n1 is drained: replica 0 moves to n3 while n1's copy keeps its port 8000, so the
        // new copy (same address) gets the first port above the range, 8002.
        nodes[0].drained = true;
        let moved = reconcile(&specs, &current, &nodes, 7);
        let placed = &moved.place[&("web".to_string(), 0)];
        assert_eq!(placed.node, "n3");
        assert_eq!(placed.port, Some(8002));
        assert_eq!(
            placed.handover,
            Some(Handover {
                from_node: "n1".into(),
                from_port: Some(8000),
                from_generation: 1,
                since_unix_ms: 7,
            })
        );
        assert_eq!(moved.place.len(), 1, "replica 1 stays on n2: {moved:?}");
        apply(&mut current, &moved);
        // The reconciler withholds a placement new to its node until its copy is ready.
        if let Some(moving) = current.get_mut(&("web".to_string(), 0)) {
            moving.withheld_since_unix_ms = Some(7);
        }
        // Undrained before the new copy is ready: the hand-over is called off, the
        // replica stays on n1 (its old copy, port and version), in the balancers.
        let mut undrained = nodes.clone();
        undrained[0].drained = false;
        let called_off = reconcile(&specs, &current, &undrained, 8);
        let back = &called_off.place[&("web".to_string(), 0)];
        assert_eq!((back.node.as_str(), back.port), ("n1", Some(8000)));
        assert_eq!(
            (back.handover.as_ref(), back.withheld_since_unix_ms),
            (None, None)
        );
        // Once the new copy is ready (out of withholding), the move stands.
        let mut ready = current.clone();
        if let Some(moving) = ready.get_mut(&("web".to_string(), 0)) {
            moving.withheld_since_unix_ms = None;
        }
        let stands = reconcile(&specs, &ready, &undrained, 8);
        assert!(
            stands
                .place
                .get(&("web".to_string(), 0))
                .is_none_or(|kept| kept.node == "n3"),
            "{stands:?}"
        );
        // Nothing more while the hand-over runs, and n1 gets nothing new.
        specs.insert("web".to_string(), spec("web", 3, 0));
        let grown = reconcile(&specs, &current, &nodes, 8);
        assert_eq!(grown.place.len(), 1);
        assert_ne!(grown.place[&("web".to_string(), 2)].node, "n1");
        assert_eq!(grown.place[&("web".to_string(), 2)].port, Some(8003));
        specs.insert("web".to_string(), spec("web", 2, 1));
        // n1 dies mid-hand-over: the hand-over is over, the new copy stays.
        nodes[0].alive = false;
        let over = reconcile(&specs, &current, &nodes, 9);
        assert_eq!(over.place[&("web".to_string(), 0)].handover, None);
        assert_eq!(over.place[&("web".to_string(), 0)].node, "n3");
        // On nodes with addresses of their own, the moved replica keeps its port.
        let mut own = vec![node("n1", true), node("n2", true), node("n3", true)];
        for (octet, candidate) in own.iter_mut().enumerate() {
            candidate.address = Some(std::net::IpAddr::from([10, 0, 0, octet as u8 + 1]));
        }
        let mut placed = BTreeMap::new();
        let first = reconcile(&specs, &placed, &own, 0);
        apply(&mut placed, &first);
        own[0].drained = true;
        let moved = reconcile(&specs, &placed, &own, 1);
        assert_eq!(moved.place[&("web".to_string(), 0)].port, Some(8000));
        // Every node drained: nowhere to go, and the reason says so.
        for candidate in &mut own {
            candidate.drained = true;
        }
        let stuck = reconcile(&specs, &placed, &own, 2);
        assert!(
            stuck
                .unplaced
                .iter()
                .all(|(_, _, why)| why.contains("drained")),
            "{stuck:?}"
        );
    }

    #[test]
    fn scaling_down_removes_and_impossible_replicas_are_explained() {
        let mut specs = BTreeMap::new();
        specs.insert("web".to_string(), spec("web", 5, 1));
        let nodes = vec![node("n1", true), node("n2", true)];
        let mut current = BTreeMap::new();
        let changes = reconcile(&specs, &current, &nodes, 0);
        assert_eq!(changes.place.len(), 2);
        assert_eq!(changes.unplaced.len(), 3);
        assert!(changes.unplaced[0].2.contains("max-per-node"));
        apply(&mut current, &changes);
        specs.insert("web".to_string(), spec("web", 1, 1));
        let down = reconcile(&specs, &current, &nodes, 0);
        assert_eq!(down.remove, vec![("web".to_string(), 1)]);
        let mut constrained = spec("api", 1, 0);
        constrained.constraints = vec![Constraint::Role("gpu".into())];
        specs.insert("api".to_string(), constrained);
        let none = reconcile(&specs, &current, &nodes, 0);
        assert!(
            none.unplaced
                .iter()
                .any(|(name, _, why)| name == "api" && why.contains("role=gpu"))
        );
    }
}
