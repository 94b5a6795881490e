//! `<data-dir>/meta.toml`: the control plane's settings for this node. Kept apart from
//! `node.toml` because the cluster layer below must not know about Raft.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bramble_util::files::{self, FileError, Visibility};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetaSettings {
    /// Set on the node that ran `bramble init`: it creates the Raft group with itself as
    /// the first voter. Every other node is added by the leader.
    pub bootstrap: bool,
    /// A voter dead for longer than this is replaced by a healthy non-voter, if one exists.
    pub voter_grace_secs: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot is taken after this many log entries; older entries are then purged.
    pub snapshot_every_entries: u64,
}

impl Default for MetaSettings {
    fn default() -> Self {
        // Elections start 400-800 ms after the last heartbeat: a dead leader is replaced
        // in about a second, and a loaded board's 100 ms heartbeats have 4x headroom.
        MetaSettings {
            bootstrap: false,
            voter_grace_secs: 30,
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_every_entries: 10_000,
        }
    }
}

impl MetaSettings {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("meta.toml")
    }

    /// Reads `meta.toml`, or the defaults when it does not exist.
    pub fn load(data_dir: &Path) -> Result<Self, FileError> {
        let path = Self::path(data_dir);
        if !path.exists() {
            return Ok(Self::default());
        }
        files::read_toml(&path)
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), FileError> {
        files::write_toml(&Self::path(data_dir), self, Visibility::Public)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(20..=5_000).contains(&self.heartbeat_ms) {
            return Err(format!(
                "meta.toml: heartbeat_ms must be 20-5000, not {}",
                self.heartbeat_ms
            ));
        }
        if self.election_timeout_min_ms < self.heartbeat_ms * 2
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            return Err(format!(
                "meta.toml: need heartbeat_ms x 2 <= election_timeout_min_ms < election_timeout_max_ms (got {}, {}, {})",
                self.heartbeat_ms, self.election_timeout_min_ms, self.election_timeout_max_ms
            ));
        }
        if self.voter_grace_secs == 0 {
            return Err("meta.toml: voter_grace_secs must be at least 1".to_string());
        }
        if self.snapshot_every_entries < 100 {
            return Err("meta.toml: snapshot_every_entries must be at least 100".to_string());
        }
        Ok(())
    }

    pub fn voter_grace(&self) -> Duration {
        Duration::from_secs(self.voter_grace_secs)
    }
}
