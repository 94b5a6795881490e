//! The Raft type configuration and the catalog's commands.
//!
//! The catalog is a versioned key-value map: keys are UTF-8 paths such as
//! `lb/web/config`, values are opaque bytes (each subsystem encodes its own records), and
//! every key carries the Raft log index of the command that last changed it as its
//! version. Versions give subsystems compare-and-set and let watchers order changes.

use std::fmt;
use std::io::Cursor;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes. The catalog holds configuration, not data.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// A Raft member: the node's name and its RPC address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaNode {
    pub name: String,
    pub addr: String,
}

impl fmt::Display for MetaNode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}@{}", self.name, self.addr)
    }
}

impl MetaNode {
    pub fn new(name: &str, addr: SocketAddr) -> Self {
        MetaNode {
            name: name.to_string(),
            addr: addr.to_string(),
        }
    }
}

/// Raft node ids are derived from node names (the first 8 bytes of SHA-256), so every node
/// computes every other node's id without coordination and a restarted node keeps its id.
pub fn node_id_of(name: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_ref()[..8]);
    // Zero is avoided only for readability of logs; any value is a valid id.
    u64::from_be_bytes(bytes).max(1)
}

/// A change to the catalog, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets `key` to `value`.
    Put { key: String, value: Vec<u8> },
    /// Sets `key` only if its current version is `expected_version` (0: the key must not
    /// exist). The compare-and-set subsystems use to update records safely.
    PutIfVersion {
        key: String,
        value: Vec<u8>,
        expected_version: u64,
    },
    /// Removes `key`.
    Delete { key: String },
}

impl Command {
    pub fn key(&self) -> &str {
        match self {
            Command::Put { key, .. }
            | Command::PutIfVersion { key, .. }
            | Command::Delete { key } => key,
        }
    }

    /// Checks the bounds every command must respect.
    pub fn validate(&self) -> Result<(), String> {
        let key = self.key();
        if key.is_empty() {
            return Err("the key is empty".to_string());
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "the key is {} bytes; at most {MAX_KEY_BYTES} are allowed",
                key.len()
            ));
        }
        if key.chars().any(char::is_control) {
            return Err("the key contains control characters".to_string());
        }
        if let Command::Put { value, .. } | Command::PutIfVersion { value, .. } = self
            && value.len() > MAX_VALUE_BYTES
        {
            return Err(format!(
                "the value is {} bytes; at most {MAX_VALUE_BYTES} are allowed",
                value.len()
            ));
        }
        Ok(())
    }
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Entries that are not commands (blank, membership) produce this.
    #[default]
    Nothing,
    /// The key now has `version`.
    Written { version: u64 },
    /// `PutIfVersion` found another version; nothing changed.
    VersionMismatch { current_version: u64 },
    /// The key was removed (`existed` says whether it was there).
    Deleted { existed: bool },
    /// The command broke a bound (checked again at apply time, defensively).
    Rejected { reason: String },
}

/// A value in the catalog with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedValue {
    pub value: Vec<u8>,
    /// Log index of the command that last wrote this key.
    pub version: u64,
}

/// A change observed by watchers, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `key` was written (`value` is Some) or deleted (`value` is None) at `version`.
    Key {
        key: String,
        value: Option<Vec<u8>>,
        version: u64,
    },
    /// A snapshot replaced the whole catalog: watchers must re-read what they care about.
    Reset,
}

openraft::declare_raft_types!(
    /// Bramble's Raft types.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = MetaNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type StorageError = openraft::StorageError<NodeId>;
