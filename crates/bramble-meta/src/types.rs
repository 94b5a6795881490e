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

/// Longest key, in bytes: room for a volume's file paths (up to 4,096 bytes) under their
/// prefix (`fs/<volume>/`).
pub const MAX_KEY_BYTES: usize = 4608;
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

/// Most operations one [`Command::Batch`] may carry.
pub const MAX_BATCH_OPERATIONS: usize = 4096;
/// Most conditions one [`Command::Batch`] may carry.
pub const MAX_BATCH_CONDITIONS: usize = 64;
/// Most bytes of keys and values one [`Command::Batch`] may carry (one large value and
/// room for the keys that go with it).
pub const MAX_BATCH_BYTES: usize = MAX_VALUE_BYTES + 512 * 1024;
/// Most commands one [`Command::Group`] holds.
pub const MAX_GROUP_COMMANDS: usize = 128;
/// Most key and value bytes one [`Command::Group`] carries, all its commands together
/// (a lone command of any allowed size is never grouped past this).
pub const MAX_GROUP_BYTES: usize = 2 * MAX_VALUE_BYTES;
/// Most bytes one log entry takes encoded: a group's keys and values and room for what
/// encoding adds (lengths, tags, versions; a batch of 4,096 operations adds about 40 KiB).
pub const MAX_ENTRY_BYTES: usize = MAX_GROUP_BYTES + 64 * 1024;

/// A condition of a [`Command::Batch`]: `key` must be at `version` (0: must not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub key: String,
    pub version: u64,
}

/// One change inside a [`Command::Batch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Removes every key that starts with `prefix` (a volume's files when it is removed).
    DeletePrefix {
        prefix: String,
    },
}

impl Operation {
    pub fn key(&self) -> &str {
        match self {
            Operation::Put { key, .. } | Operation::Delete { key } => key,
            Operation::DeletePrefix { prefix } => prefix,
        }
    }
}

/// A change to the catalog, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets `key` to `value`.
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Sets `key` only if its current version is `expected_version` (0: the key must not
    /// exist). The compare-and-set subsystems use to update records safely.
    PutIfVersion {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        expected_version: u64,
    },
    /// Removes `key`.
    Delete { key: String },
    /// Applies every operation, in order, as one change — or none of them if any
    /// condition does not hold (etcd's transactions without the else branch). Every key
    /// it writes gets the same version. What volumes use for atomic renames and for a
    /// file's create-if-absent.
    Batch {
        conditions: Vec<Condition>,
        operations: Vec<Operation>,
    },
    /// Independent commands proposed at about the same time, committed as one log entry
    /// (one append and fsync on the leader instead of one each) and applied one after
    /// another, each with its own result ([`CommandResult::Group`]) as if committed
    /// alone; they share the entry's index as their version. Proposed only once every
    /// node speaks protocol 4 (older builds cannot decode it). Never nested.
    Group(Vec<Command>),
}

impl Command {
    /// Every key (or prefix) the command touches or tests.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Command::Put { key, .. }
            | Command::PutIfVersion { key, .. }
            | Command::Delete { key } => vec![key.as_str()],
            Command::Batch {
                conditions,
                operations,
            } => conditions
                .iter()
                .map(|condition| condition.key.as_str())
                .chain(operations.iter().map(Operation::key))
                .collect(),
            Command::Group(commands) => commands.iter().flat_map(Command::keys).collect(),
        }
    }

    /// The key and value bytes the command carries (what [`MAX_GROUP_BYTES`] bounds).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Command::Put { key, value } | Command::PutIfVersion { key, value, .. } => {
                key.len() + value.len()
            }
            Command::Delete { key } => key.len(),
            Command::Batch {
                conditions,
                operations,
            } => {
                conditions
                    .iter()
                    .map(|condition| condition.key.len())
                    .sum::<usize>()
                    + operations
                        .iter()
                        .map(|operation| match operation {
                            Operation::Put { key, value } => key.len() + value.len(),
                            other => other.key().len(),
                        })
                        .sum::<usize>()
            }
            Command::Group(commands) => commands.iter().map(Command::payload_bytes).sum(),
        }
    }

    /// Every key (or prefix) the command changes; a batch's conditions only test theirs.
    pub fn written_keys(&self) -> Vec<&str> {
        match self {
            Command::Batch { operations, .. } => operations.iter().map(Operation::key).collect(),
            Command::Group(commands) => commands.iter().flat_map(Command::written_keys).collect(),
            other => other.keys(),
        }
    }

    /// Checks the bounds every command must respect.
    pub fn validate(&self) -> Result<(), String> {
        if let Command::Group(commands) = self {
            // Only the group's own bounds: each command is checked, and rejected alone,
            // when it is applied, so one bad command cannot sink the others.
            if commands.is_empty() {
                return Err("the group has no command".to_string());
            }
            if commands.len() > MAX_GROUP_COMMANDS {
                return Err(format!(
                    "the group has {} commands; at most {MAX_GROUP_COMMANDS} are allowed",
                    commands.len()
                ));
            }
            if commands
                .iter()
                .any(|command| matches!(command, Command::Group(_)))
            {
                return Err("a group may not hold another group".to_string());
            }
            let bytes = self.payload_bytes();
            if bytes > MAX_GROUP_BYTES {
                return Err(format!(
                    "the group carries {bytes} bytes; at most {MAX_GROUP_BYTES} are allowed"
                ));
            }
            return Ok(());
        }
        for key in self.keys() {
            validate_key(key)?;
        }
        match self {
            Command::Put { value, .. } | Command::PutIfVersion { value, .. } => {
                validate_value(value)
            }
            Command::Delete { .. } | Command::Group(_) => Ok(()),
            Command::Batch {
                conditions,
                operations,
            } => {
                if operations.is_empty() {
                    return Err("the batch has no operation".to_string());
                }
                if operations.len() > MAX_BATCH_OPERATIONS {
                    return Err(format!(
                        "the batch has {} operations; at most {MAX_BATCH_OPERATIONS} are allowed",
                        operations.len()
                    ));
                }
                if conditions.len() > MAX_BATCH_CONDITIONS {
                    return Err(format!(
                        "the batch has {} conditions; at most {MAX_BATCH_CONDITIONS} are allowed",
                        conditions.len()
                    ));
                }
                let mut bytes = 0usize;
                for operation in operations {
                    bytes += operation.key().len();
                    if let Operation::Put { value, .. } = operation {
                        validate_value(value)?;
                        bytes += value.len();
                    }
                }
                if bytes > MAX_BATCH_BYTES {
                    return Err(format!(
                        "the batch carries {bytes} bytes; at most {MAX_BATCH_BYTES} are allowed"
                    ));
                }
                Ok(())
            }
        }
    }
}

fn validate_key(key: &str) -> Result<(), String> {
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
    Ok(())
}

fn validate_value(value: &[u8]) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value is {} bytes; at most {MAX_VALUE_BYTES} are allowed",
            value.len()
        ));
    }
    Ok(())
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
    /// A batch was applied: the keys it wrote have `version`; `deleted` keys went away.
    BatchApplied { version: u64, deleted: u64 },
    /// A batch's condition on `key` did not hold (it is at `current_version`, 0 if
    /// absent); nothing changed.
    ConditionFailed { key: String, current_version: u64 },
    /// A [`Command::Group`] was applied: one result per command, in order.
    Group(Vec<CommandResult>),
}

/// A value in the catalog with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedValue {
    #[serde(with = "serde_bytes")]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// How values were encoded before they were marked as bytes: element by element.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct ValueAsSequence {
        value: Vec<u8>,
        version: u64,
    }

    /// Marking values as bytes (one copy instead of a visit per byte) must not change a
    /// byte of the encoding: Raft logs, snapshots and peers of the previous version hold it.
    #[test]
    fn byte_values_keep_the_encoding_of_a_sequence() {
        let value: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let as_bytes = VersionedValue {
            value: value.clone(),
            version: 77,
        };
        let as_sequence = ValueAsSequence { value, version: 77 };
        let encoded = postcard::to_allocvec(&as_bytes).expect("encodes");
        assert_eq!(
            encoded,
            postcard::to_allocvec(&as_sequence).expect("encodes")
        );
        let decoded: VersionedValue = postcard::from_bytes(&encoded).expect("decodes");
        assert_eq!(decoded, as_bytes);
        let old: ValueAsSequence = postcard::from_bytes(&encoded).expect("decodes");
        assert_eq!(old, as_sequence);
        // JSON (`--json` output, JSON-encoded records) reads the same both ways too.
        let json = serde_json::to_string(&as_bytes).expect("encodes");
        assert_eq!(json, serde_json::to_string(&as_sequence).expect("encodes"));
        let from_json: VersionedValue = serde_json::from_str(&json).expect("decodes");
        assert_eq!(from_json, as_bytes);

        let command = Command::Put {
            key: "k".to_string(),
            value: vec![1, 2, 3],
        };
        #[derive(Serialize)]
        enum OldCommand {
            Put { key: String, value: Vec<u8> },
        }
        let old_command = OldCommand::Put {
            key: "k".to_string(),
            value: vec![1, 2, 3],
        };
        assert_eq!(
            postcard::to_allocvec(&command).expect("encodes"),
            postcard::to_allocvec(&old_command).expect("encodes")
        );
    }
}
