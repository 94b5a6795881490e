//! The static policies' plans: which node runs which task, decided once when the job
//! starts (the overview article's static load balancing). The dynamic policy has no plan:
//! a node takes the next task whenever a slot frees (see the scheduler). A node's plan
//! queue is drained only as fast as its slots allow, so no node ever runs more tasks than
//! it has slots, whatever the plan gave it.

use std::collections::{BTreeMap, VecDeque};

use super::spec::Policy;

/// A node as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCapacity {
    pub name: String,
    pub slots: u32,
    /// Slots already busy with other jobs' tasks.
    pub used: u32,
    /// Relative speed (1.0: the reference).
    pub speed: f64,
    pub load1: f32,
    pub cpus: u32,
}

/// A plan: each node's queue of task indices, and the weights it was made with.
#[derive(Debug, Default)]
pub struct Plan {
    pub queues: BTreeMap<String, VecDeque<u32>>,
    pub weights: BTreeMap<String, f64>,
}

/// Plans `tasks` over the nodes that can run a task of `cpus_per_task` slots. An empty
/// plan means no node can.
pub fn plan(policy: Policy, tasks: &[u32], nodes: &[NodeCapacity], cpus_per_task: u32) -> Plan {
    let mut eligible: Vec<&NodeCapacity> = nodes
        .iter()
        .filter(|node| node.slots >= cpus_per_task)
        .collect();
    eligible.sort_by(|a, b| a.name.cmp(&b.name));
    let mut plan = Plan::default();
    if eligible.is_empty() {
        return plan;
    }
    for node in &eligible {
        plan.queues.insert(node.name.clone(), VecDeque::new());
    }
    match policy {
        Policy::RoundRobin | Policy::Dynamic => {
            for node in &eligible {
                plan.weights.insert(node.name.clone(), 1.0);
            }
            for (position, index) in tasks.iter().enumerate() {
                let node = &eligible[position % eligible.len()].name;
                push(&mut plan, node, *index);
            }
        }
        Policy::LeastLoad => {
            // Load per core now, plus what this plan has given the node so far, per slot.
            let mut given: Vec<u32> = vec![0; eligible.len()];
            let base: Vec<f64> = eligible
                .iter()
                .map(|node| {
                    f64::from(node.load1) / f64::from(node.cpus.max(1))
                        + f64::from(node.used) / f64::from(node.slots.max(1))
                })
                .collect();
            for (name, load) in eligible.iter().zip(&base) {
                plan.weights.insert(name.name.clone(), *load);
            }
            for index in tasks {
                let score = |position: usize| {
                    base[position]
                        + f64::from(given[position] * cpus_per_task)
                            / f64::from(eligible[position].slots.max(1))
                };
                let best = (0..eligible.len())
                    .min_by(|a, b| score(*a).total_cmp(&score(*b)))
                    .unwrap_or(0);
                given[best] += 1;
                push(&mut plan, &eligible[best].name, *index);
            }
        }
        Policy::Greedy => {
            // Capacity: speed times the slots free for this job (all slots if none are).
            let any_free = eligible.iter().any(|node| node.slots > node.used);
            let weights: Vec<f64> = eligible
                .iter()
                .map(|node| {
                    let free = if any_free {
                        node.slots.saturating_sub(node.used)
                    } else {
                        node.slots
                    };
                    node.speed.max(0.0) * f64::from(free / cpus_per_task)
                })
                .collect();
            let total: f64 = weights.iter().sum();
            let weights: Vec<f64> = if total > 0.0 {
                weights
            } else {
                vec![1.0; eligible.len()]
            };
            for (node, weight) in eligible.iter().zip(&weights) {
                plan.weights.insert(node.name.clone(), *weight);
            }
            // Smooth weighted round robin: proportional counts, interleaved in task order.
            let total: f64 = weights.iter().sum();
            let mut current = vec![0.0f64; eligible.len()];
            for index in tasks {
                for (position, weight) in weights.iter().enumerate() {
                    current[position] += weight;
                }
                let best = (0..eligible.len())
                    .max_by(|a, b| current[*a].total_cmp(&current[*b]).then(b.cmp(a)))
                    .unwrap_or(0);
                current[best] -= total;
                push(&mut plan, &eligible[best].name, *index);
            }
        }
    }
    plan
}

fn push(plan: &mut Plan, node: &str, index: u32) {
    if let Some(queue) = plan.queues.get_mut(node) {
        queue.push_back(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, slots: u32, used: u32, speed: f64, load1: f32) -> NodeCapacity {
        NodeCapacity {
            name: name.into(),
            slots,
            used,
            speed,
            load1,
            cpus: slots,
        }
    }

    fn counts(plan: &Plan) -> Vec<usize> {
        plan.queues.values().map(VecDeque::len).collect()
    }

    #[test]
    fn round_robin_deals_in_name_order() {
        let nodes = [node("n2", 2, 0, 1.0, 0.0), node("n1", 2, 0, 1.0, 0.0)];
        let tasks: Vec<u32> = (0..5).collect();
        let plan = plan(Policy::RoundRobin, &tasks, &nodes, 1);
        assert_eq!(plan.queues["n1"], VecDeque::from(vec![0, 2, 4]));
        assert_eq!(plan.queues["n2"], VecDeque::from(vec![1, 3]));
    }

    #[test]
    fn least_load_favours_the_idle_node() {
        let nodes = [node("n1", 2, 2, 1.0, 2.0), node("n2", 2, 0, 1.0, 0.0)];
        let tasks: Vec<u32> = (0..10).collect();
        let plan = plan(Policy::LeastLoad, &tasks, &nodes, 1);
        // n1 starts two tasks' worth of load per slot behind.
        assert_eq!(counts(&plan), vec![3, 7]);
    }

    #[test]
    fn greedy_follows_speed_times_free_slots() {
        let nodes = [
            node("fast", 4, 0, 2.0, 0.0),
            node("slow", 4, 0, 1.0, 0.0),
            node("busy", 4, 4, 3.0, 0.0),
        ];
        let tasks: Vec<u32> = (0..300).collect();
        let plan = plan(Policy::Greedy, &tasks, &nodes, 1);
        assert_eq!(plan.queues["fast"].len(), 200);
        assert_eq!(plan.queues["slow"].len(), 100);
        assert_eq!(plan.queues["busy"].len(), 0);
    }

    #[test]
    fn nodes_too_small_for_a_task_get_nothing() {
        let nodes = [node("small", 1, 0, 1.0, 0.0), node("big", 4, 0, 1.0, 0.0)];
        let plan = plan(Policy::RoundRobin, &[0, 1, 2], &nodes, 2);
        assert_eq!(plan.queues.len(), 1);
        assert_eq!(plan.queues["big"].len(), 3);
    }
}
