//! Gossip and failure-detection settings (`[membership]` in `node.toml`): read by the data
//! directory, used by membership. Their own module so that neither depends on the other.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ClusterError, Result};

/// Gossip and failure-detection settings (`[membership]` in node.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipSettings {
    /// Time between gossip rounds. Each round also bumps this node's heartbeat.
    pub gossip_interval_ms: u64,
    /// A node is declared dead when its heartbeat is this many mean intervals late.
    pub phi_threshold: f64,
    /// How long a dead node stays in the table before it is forgotten.
    pub dead_node_grace_secs: u64,
}

impl Default for MembershipSettings {
    fn default() -> Self {
        // 150 ms x 8 declares a node dead about 1.2-1.4 s after its last heartbeat,
        // inside the 2 s goal, with room for scheduling jitter on a loaded board.
        MembershipSettings {
            gossip_interval_ms: 150,
            phi_threshold: 8.0,
            dead_node_grace_secs: 24 * 3600,
        }
    }
}

impl MembershipSettings {
    pub fn validate(&self) -> Result<()> {
        if !(20..=10_000).contains(&self.gossip_interval_ms) {
            return Err(ClusterError::Invalid(format!(
                "membership.gossip_interval_ms must be between 20 and 10000, not {}",
                self.gossip_interval_ms
            )));
        }
        if !(2.0..=100.0).contains(&self.phi_threshold) {
            return Err(ClusterError::Invalid(format!(
                "membership.phi_threshold must be between 2 and 100, not {}",
                self.phi_threshold
            )));
        }
        if self.dead_node_grace_secs < 60 {
            return Err(ClusterError::Invalid(format!(
                "membership.dead_node_grace_secs must be at least 60, not {}",
                self.dead_node_grace_secs
            )));
        }
        Ok(())
    }

    pub fn gossip_interval(&self) -> Duration {
        Duration::from_millis(self.gossip_interval_ms)
    }
}
