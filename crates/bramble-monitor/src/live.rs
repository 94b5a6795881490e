//! The live picture of the cluster, one second of it at a time: every node as gossip sees
//! it (state, roles, load, memory), with the point its last second makes — the monitor's
//! own [`Point::between`] of two consecutive `monitor.sample`s, so live views show the
//! figures `bramble metrics` and the history show. The dashboard's event stream
//! (`bramble-api`'s `dashboard/events.rs`) and `bramble top` both draw it.
//!
//! A node whose sample does not come within [`SAMPLE_WAIT`] is `reachable: false` in that
//! snapshot: a power-cut board turns red on the next second, before gossip has decided it
//! is dead. Alive and suspect nodes are asked, at most [`MAX_SAMPLED_NODES`] of them;
//! beyond, and for dead or departed nodes, gossip's figures alone (no `reachable`).

use std::collections::HashMap;
use std::time::Duration;

use bramble_cluster::{NodeState, NodeView};
use bramble_net::RpcClient;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::history::{Point, SERIES};
use crate::sample::Sample;
use crate::service::{METHOD_SAMPLE, SampleResponse};

/// Nodes asked for their sample in one snapshot.
pub const MAX_SAMPLED_NODES: usize = 64;
/// How long a node's sample may take before it counts as unreachable this second.
pub const SAMPLE_WAIT: Duration = Duration::from_millis(800);
/// At or above this temperature a board is a warning (the alert's threshold).
pub const HOT_CELSIUS: f32 = 80.0;
/// At or above this use of `/` a board is a warning (the alert's threshold).
pub const FULL_ROOT_PERCENT: f32 = 90.0;
/// The get_throttled bits that say a condition holds now (under-voltage, frequency capped,
/// throttled, soft temperature limit); bits 16-19 say "since boot".
const THROTTLED_NOW_MASK: u32 = 0xf;

/// One snapshot: every node with its last second. Its JSON is the dashboard's event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSnapshot {
    /// When it was taken, on the taker's clock.
    pub unix_ms: u64,
    /// The names of a point's values, in order: the monitor's [`SERIES`].
    pub series: Vec<String>,
    pub nodes: Vec<LiveNode>,
}

/// One node of a snapshot: gossip's row and, for a node that was asked, its last second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveNode {
    #[serde(flatten)]
    pub view: NodeView,
    /// The [`SERIES`] values of its last second, absent ones null; rates and the CPU's
    /// busy share need the previous second, so they are null in a node's first snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<Vec<Option<f32>>>,
    /// Whether it answered in time; absent when it was not asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// Why it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A node at a glance, by the dashboard's colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Green.
    Ok,
    /// Amber: suspect, throttled now, hot, or `/` nearly full.
    Warn,
    /// Red: dead, departed, or not answering.
    Down,
}

impl LiveNode {
    /// The figure of one of the [`SERIES`] by name, if present this second.
    pub fn figure(&self, series: &str) -> Option<f32> {
        let index = SERIES.iter().position(|name| *name == series)?;
        self.point
            .as_ref()?
            .get(index)
            .copied()
            .flatten()
            .filter(|value| value.is_finite())
    }

    /// Asked this second and did not answer in time.
    pub fn unreachable(&self) -> bool {
        self.reachable == Some(false)
    }

    /// The state for people: gossip's, or "unreachable" for an alive node that did not
    /// answer this second.
    pub fn state_text(&self) -> &'static str {
        if self.unreachable() && self.view.state == NodeState::Alive {
            "unreachable"
        } else {
            self.view.state.as_str()
        }
    }

    /// The dashboard's health rule: red for dead, left or unreachable; amber for suspect,
    /// throttled now, at or over 80 °C, or `/` at or over 90 % full; green otherwise.
    pub fn health(&self) -> Health {
        if matches!(self.view.state, NodeState::Dead | NodeState::Left) || self.unreachable() {
            return Health::Down;
        }
        let throttled_now = self
            .figure("throttled_bits")
            .is_some_and(|bits| (bits as u32) & THROTTLED_NOW_MASK != 0);
        let hot = self
            .figure("temperature_celsius")
            .is_some_and(|celsius| celsius >= HOT_CELSIUS);
        let full = self
            .figure("root_filesystem_used_percent")
            .is_some_and(|percent| percent >= FULL_ROOT_PERCENT);
        if self.view.state == NodeState::Suspect || throttled_now || hot || full {
            Health::Warn
        } else {
            Health::Ok
        }
    }
}

/// Takes snapshots one after another, keeping each node's last sample for the rates of
/// the next second.
#[derive(Debug, Default)]
pub struct Live {
    previous: HashMap<String, Sample>,
}

impl Live {
    pub fn new() -> Live {
        Live::default()
    }

    /// One snapshot of `nodes` (gossip's table): asks every alive or suspect node for its
    /// sample at once, each within [`SAMPLE_WAIT`].
    pub async fn snapshot(&mut self, nodes: Vec<NodeView>, client: &RpcClient) -> LiveSnapshot {
        let mut asked = JoinSet::new();
        for node in nodes
            .iter()
            .filter(|node| matches!(node.state, NodeState::Alive | NodeState::Suspect))
            .take(MAX_SAMPLED_NODES)
        {
            let client = client.clone();
            let (name, address) = (node.name.clone(), node.addr);
            asked.spawn(async move {
                let answer = tokio::time::timeout(
                    SAMPLE_WAIT,
                    client.call::<_, SampleResponse>(address, METHOD_SAMPLE, &()),
                )
                .await;
                let sample = match answer {
                    Ok(Ok((_, sample))) => Ok(sample),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!("no sample within {} ms", SAMPLE_WAIT.as_millis())),
                };
                (name, sample)
            });
        }
        let mut samples: HashMap<String, Result<Option<Sample>, String>> = HashMap::new();
        while let Some(joined) = asked.join_next().await {
            if let Ok((name, sample)) = joined {
                samples.insert(name, sample);
            }
        }
        self.previous
            .retain(|name, _| nodes.iter().any(|node| &node.name == name));
        let rows = nodes
            .into_iter()
            .map(|view| {
                let answer = samples.remove(&view.name);
                self.row(view, answer)
            })
            .collect();
        LiveSnapshot {
            unix_ms: bramble_util::time::unix_millis(),
            series: SERIES.iter().map(|name| (*name).to_string()).collect(),
            nodes: rows,
        }
    }

    /// A node's row from its answer (None: not asked), remembering its sample.
    fn row(&mut self, view: NodeView, answer: Option<Result<Option<Sample>, String>>) -> LiveNode {
        let mut row = LiveNode {
            view,
            point: None,
            reachable: None,
            problem: None,
        };
        match answer {
            Some(Ok(Some(sample))) => {
                let point = Point::between(self.previous.get(&row.view.name), &sample);
                row.point = Some(
                    point
                        .values
                        .iter()
                        .map(|value| value.is_finite().then_some(*value))
                        .collect(),
                );
                row.reachable = Some(true);
                self.previous.insert(row.view.name.clone(), sample);
            }
            // Answering, but with no sample taken yet (just started, or monitoring off).
            Some(Ok(None)) => row.reachable = Some(true),
            Some(Err(problem)) => {
                row.reachable = Some(false);
                row.problem = Some(problem);
                self.previous.remove(&row.view.name);
            }
            None => {}
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_cluster::load::LoadSummary;

    fn node(state: NodeState, figures: &[(&str, f32)]) -> LiveNode {
        let mut point = vec![None; SERIES.len()];
        for (name, value) in figures {
            let index = SERIES
                .iter()
                .position(|series| series == name)
                .expect("a series");
            point[index] = Some(*value);
        }
        LiveNode {
            view: NodeView {
                name: "n1".into(),
                addr: "127.0.0.1:7946".parse().expect("an address"),
                state,
                roles: vec!["lb".into()],
                version: "0.1.0".into(),
                protocol: 1,
                oldest_compatible_protocol: 1,
                architecture: "x86_64".into(),
                build: String::new(),
                generation: 1,
                load: Some(LoadSummary {
                    load1: 0.5,
                    memory_used_percent: 40.0,
                    cpus: 4,
                    agent_rss_kib: 20_480,
                }),
                heartbeat_age_ms: Some(100),
            },
            point: Some(point),
            reachable: Some(true),
            problem: None,
        }
    }

    #[test]
    fn health_follows_the_dashboards_rule() {
        assert_eq!(node(NodeState::Alive, &[]).health(), Health::Ok);
        assert_eq!(node(NodeState::Dead, &[]).health(), Health::Down);
        assert_eq!(node(NodeState::Left, &[]).health(), Health::Down);
        let mut silent = node(NodeState::Alive, &[]);
        silent.reachable = Some(false);
        assert_eq!(silent.health(), Health::Down);
        assert_eq!(silent.state_text(), "unreachable");
        assert_eq!(node(NodeState::Suspect, &[]).health(), Health::Warn);
        // Throttled now (bit 2) is a warning; only since boot (bits 16 and 18) is not.
        let throttled = node(NodeState::Alive, &[("throttled_bits", 4.0)]);
        assert_eq!(throttled.health(), Health::Warn);
        let earlier = node(NodeState::Alive, &[("throttled_bits", 327_680.0)]);
        assert_eq!(earlier.health(), Health::Ok);
        let hot = node(NodeState::Alive, &[("temperature_celsius", 80.0)]);
        assert_eq!(hot.health(), Health::Warn);
        let warm = node(NodeState::Alive, &[("temperature_celsius", 79.9)]);
        assert_eq!(warm.health(), Health::Ok);
        let full = node(NodeState::Alive, &[("root_filesystem_used_percent", 90.0)]);
        assert_eq!(full.health(), Health::Warn);
        // Not asked (beyond the sampled nodes): gossip's state alone decides.
        let mut unasked = node(NodeState::Alive, &[]);
        unasked.reachable = None;
        unasked.point = None;
        assert_eq!(unasked.health(), Health::Ok);
        assert_eq!(unasked.figure("cpu_busy_percent"), None);
    }

    #[test]
    fn the_json_is_the_dashboards_event() {
        let mut row = node(NodeState::Alive, &[("cpu_busy_percent", 12.5)]);
        let snapshot = LiveSnapshot {
            unix_ms: 5,
            series: SERIES.iter().map(|name| (*name).to_string()).collect(),
            nodes: vec![row.clone()],
        };
        let value = serde_json::to_value(&snapshot).expect("JSON");
        assert_eq!(value["series"][0], "cpu_busy_percent");
        let first = &value["nodes"][0];
        assert_eq!(first["name"], "n1");
        assert_eq!(first["state"], "alive");
        assert_eq!(first["roles"][0], "lb");
        assert_eq!(first["load"]["cpus"], 4);
        assert_eq!(first["point"][0], 12.5);
        assert!(first["point"][1].is_null());
        assert_eq!(first["reachable"], true);
        assert!(first.get("problem").is_none());
        let back: LiveSnapshot = serde_json::from_value(value).expect("read back");
        assert_eq!(back, snapshot);
        // A node not asked has neither a point nor `reachable`.
        row.point = None;
        row.reachable = None;
        let value = serde_json::to_value(&row).expect("JSON");
        assert!(value.get("point").is_none() && value.get("reachable").is_none());
    }
}
