//! Hints: the block copies a brick missed while it was away, remembered by the node that
//! wrote them, so that the brick is healed the moment it is back — no crawl, no timer
//! (GlusterFS finds what to heal by crawling its index every 600 s; the cookbook's recipe
//! waits five minutes).
//!
//! Each hint names the brick, the block, its hash, and the file path and version that
//! referenced it, so a hint whose file was overwritten or removed meanwhile is dropped
//! instead of copied. Hints are stored in `<data-dir>/store-hints.redb` and made durable
//! before the write that produced them is acknowledged: a gateway that crashes after
//! acknowledging still owes the copies when it restarts.
//!
//! The same file keeps the deletions a brick missed: the blocks a removal or an overwrite
//! stopped referring to while the brick's node was away. They are delivered when it is
//! back, as copies are, instead of waiting as orphans for scrub's hourly sweep. Block ids
//! are never reused, so a block once unreferenced stays so and deleting it later is safe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::file::BlockId;

/// Hint key (`<node>\0<volume id>\0<brick>\0<block>`) to a postcard-encoded [`Hint`].
const HINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hints");
/// The same keys to a postcard-encoded [`Deletion`].
const DELETIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("deletions");
/// Most missed deletions kept: past it (a node away for long while much was removed)
/// they are left to scrub's orphan sweep, and the file stays small.
pub const MAX_DELETIONS: u64 = 200_000;

/// A block copy a brick should delete (its file was removed or replaced meanwhile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub node: String,
    pub volume: String,
    pub volume_id: u64,
    pub brick: usize,
    pub block: BlockId,
}

impl Deletion {
    fn key(&self) -> String {
        hint_key(&self.node, self.volume_id, self.brick, &self.block)
    }
}

fn hint_key(node: &str, volume_id: u64, brick: usize, block: &BlockId) -> String {
    format!(
        "{node}\0{volume_id:016x}\0{brick:08x}\0{}",
        block.file_name()
    )
}

/// A block copy owed to a brick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    pub node: String,
    pub volume: String,
    pub volume_id: u64,
    pub brick: usize,
    /// The catalog key of the record that refers to the block.
    pub key: String,
    pub block: BlockId,
    pub hash: [u8; 32],
    /// When the hint was made (ms since the epoch): a hint whose file record does not
    /// show its version yet may belong to a write still committing, so it is dropped
    /// only once it is old.
    pub created_ms: u64,
}

impl Hint {
    fn key(&self) -> String {
        hint_key(&self.node, self.volume_id, self.brick, &self.block)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the hints database {path}: {message}")]
pub struct HintError {
    path: PathBuf,
    message: String,
}

/// Memory redb may use to cache pages of the hints file.
const HINTS_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// This node's hints.
pub struct Hints {
    database: Database,
    path: PathBuf,
}

impl Hints {
    pub fn open(path: &Path) -> Result<Hints, HintError> {
        let error = |message: String| HintError {
            path: path.to_path_buf(),
            message,
        };
        // redb would cache up to 1 GiB of pages; hints are written once and read when a
        // brick returns, so a few MiB keep the agent small on a 512 MB board.
        let database = Database::builder()
            .set_cache_size(HINTS_CACHE_BYTES)
            .create(path)
            .map_err(|e| error(e.to_string()))?;
        let transaction = database.begin_write().map_err(|e| error(e.to_string()))?;
        transaction
            .open_table(HINTS)
            .map_err(|e| error(e.to_string()))?;
        transaction
            .open_table(DELETIONS)
            .map_err(|e| error(e.to_string()))?;
        transaction.commit().map_err(|e| error(e.to_string()))?;
        Ok(Hints {
            database,
            path: path.to_path_buf(),
        })
    }

    fn error(&self, error: impl std::fmt::Display) -> HintError {
        HintError {
            path: self.path.clone(),
            message: error.to_string(),
        }
    }

    /// Records hints durably (one transaction, fsynced).
    pub fn add(&self, hints: &[Hint]) -> Result<(), HintError> {
        if hints.is_empty() {
            return Ok(());
        }
        let transaction = self.database.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = transaction.open_table(HINTS).map_err(|e| self.error(e))?;
            for hint in hints {
                let value = postcard::to_allocvec(hint).map_err(|e| self.error(e))?;
                table
                    .insert(hint.key().as_str(), value.as_slice())
                    .map_err(|e| self.error(e))?;
            }
        }
        transaction.commit().map_err(|e| self.error(e))
    }

    /// Up to `limit` hints for `node`, in key order.
    pub fn for_node(&self, node: &str, limit: usize) -> Result<Vec<Hint>, HintError> {
        self.for_node_in(HINTS, node, limit, "hint")
    }

    /// Up to `limit` values of `definition` for `node`, in key order; one that cannot be
    /// decoded (`what` names it in the log) is skipped.
    fn for_node_in<V: serde::de::DeserializeOwned>(
        &self,
        definition: TableDefinition<&str, &[u8]>,
        node: &str,
        limit: usize,
        what: &str,
    ) -> Result<Vec<V>, HintError> {
        let prefix = format!("{node}\0");
        let transaction = self.database.begin_read().map_err(|e| self.error(e))?;
        let table = transaction
            .open_table(definition)
            .map_err(|e| self.error(e))?;
        let mut found = Vec::new();
        for item in table.range(prefix.as_str()..).map_err(|e| self.error(e))? {
            let (key, value) = item.map_err(|e| self.error(e))?;
            if !key.value().starts_with(&prefix) || found.len() >= limit {
                break;
            }
            match postcard::from_bytes::<V>(value.value()) {
                Ok(decoded) => found.push(decoded),
                Err(error) => tracing::warn!(%error, "an unreadable {what} is skipped"),
            }
        }
        Ok(found)
    }

    /// The nodes that are owed copies.
    pub fn nodes(&self) -> Result<Vec<String>, HintError> {
        self.nodes_in(HINTS)
    }

    /// The nodes that owe deletions.
    pub fn deletion_nodes(&self) -> Result<Vec<String>, HintError> {
        self.nodes_in(DELETIONS)
    }

    fn nodes_in(&self, definition: TableDefinition<&str, &[u8]>) -> Result<Vec<String>, HintError> {
        let transaction = self.database.begin_read().map_err(|e| self.error(e))?;
        let table = transaction
            .open_table(definition)
            .map_err(|e| self.error(e))?;
        let mut nodes: Vec<String> = Vec::new();
        let mut start = String::new();
        // One seek per node: jump past every key of the node just seen.
        loop {
            let mut range = table.range(start.as_str()..).map_err(|e| self.error(e))?;
            let Some(item) = range.next() else { break };
            let (key, _) = item.map_err(|e| self.error(e))?;
            let node = key.value().split('\0').next().unwrap_or("").to_string();
            start = format!("{node}\u{1}");
            nodes.push(node);
        }
        Ok(nodes)
    }

    /// Forgets hints (done or no longer needed).
    pub fn remove(&self, hints: &[Hint]) -> Result<(), HintError> {
        self.remove_keys(HINTS, hints.iter().map(Hint::key))
    }

    /// Removes `keys` from `definition` in one transaction.
    fn remove_keys(
        &self,
        definition: TableDefinition<&str, &[u8]>,
        keys: impl ExactSizeIterator<Item = String>,
    ) -> Result<(), HintError> {
        if keys.len() == 0 {
            return Ok(());
        }
        let transaction = self.database.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = transaction
                .open_table(definition)
                .map_err(|e| self.error(e))?;
            for key in keys {
                table.remove(key.as_str()).map_err(|e| self.error(e))?;
            }
        }
        transaction.commit().map_err(|e| self.error(e))
    }

    /// Records deletions bricks missed, durably, up to [`MAX_DELETIONS`] in all; returns
    /// how many were kept.
    pub fn add_deletions(&self, deletions: &[Deletion]) -> Result<usize, HintError> {
        if deletions.is_empty() {
            return Ok(0);
        }
        let transaction = self.database.begin_write().map_err(|e| self.error(e))?;
        let mut kept = 0;
        {
            let mut table = transaction
                .open_table(DELETIONS)
                .map_err(|e| self.error(e))?;
            let mut held = table.len().map_err(|e| self.error(e))?;
            for deletion in deletions {
                if held >= MAX_DELETIONS {
                    break;
                }
                let value = postcard::to_allocvec(deletion).map_err(|e| self.error(e))?;
                let before = table
                    .insert(deletion.key().as_str(), value.as_slice())
                    .map_err(|e| self.error(e))?;
                if before.is_none() {
                    held += 1;
                }
                kept += 1;
            }
        }
        transaction.commit().map_err(|e| self.error(e))?;
        Ok(kept)
    }

    /// Up to `limit` deletions `node` owes, in key order.
    pub fn deletions_for_node(&self, node: &str, limit: usize) -> Result<Vec<Deletion>, HintError> {
        self.for_node_in(DELETIONS, node, limit, "deletion")
    }

    /// Forgets deletions (done, or no longer anyone's to do).
    pub fn remove_deletions(&self, deletions: &[Deletion]) -> Result<(), HintError> {
        self.remove_keys(DELETIONS, deletions.iter().map(Deletion::key))
    }

    /// Deletions still waiting for their brick on this node.
    pub fn pending_deletions(&self) -> Result<u64, HintError> {
        let transaction = self.database.begin_read().map_err(|e| self.error(e))?;
        let table = transaction
            .open_table(DELETIONS)
            .map_err(|e| self.error(e))?;
        table.len().map_err(|e| self.error(e))
    }

    /// Every copy still waiting for its brick on this node: the heal queue's length. The
    /// table's own count, so it costs no scan (it runs on every `/metrics` scrape).
    pub fn pending(&self) -> Result<u64, HintError> {
        let transaction = self.database.begin_read().map_err(|e| self.error(e))?;
        let table = transaction.open_table(HINTS).map_err(|e| self.error(e))?;
        table.len().map_err(|e| self.error(e))
    }

    /// Pending copies per (volume, brick) for volume `volume` (all volumes if `None`).
    pub fn counts(
        &self,
        volume: Option<&str>,
    ) -> Result<BTreeMap<(String, usize), u64>, HintError> {
        let transaction = self.database.begin_read().map_err(|e| self.error(e))?;
        let table = transaction.open_table(HINTS).map_err(|e| self.error(e))?;
        let mut counts = BTreeMap::new();
        for item in table.iter().map_err(|e| self.error(e))? {
            let (_, value) = item.map_err(|e| self.error(e))?;
            if let Ok(hint) = postcard::from_bytes::<Hint>(value.value())
                && volume.is_none_or(|wanted| wanted == hint.volume)
            {
                *counts.entry((hint.volume, hint.brick)).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(node: &str, index: u32) -> Hint {
        Hint {
            node: node.to_string(),
            volume: "vol0".to_string(),
            volume_id: 9,
            brick: 1,
            key: "fs/vol0/a".to_string(),
            block: BlockId { version: 5, index },
            hash: [0; 32],
            created_ms: 0,
        }
    }

    #[test]
    fn hints_are_kept_per_node_until_removed() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("hints.redb");
        {
            let hints = Hints::open(&path).unwrap();
            hints
                .add(&[hint("n2", 0), hint("n2", 1), hint("n3", 0), hint("n20", 4)])
                .unwrap();
        }
        let hints = Hints::open(&path).unwrap();
        assert_eq!(hints.nodes().unwrap(), ["n2", "n20", "n3"]);
        assert_eq!(hints.for_node("n2", 10).unwrap().len(), 2);
        assert!(hints.pending().unwrap() >= 2, "the queue counts them");
        assert_eq!(hints.for_node("n2", 1).unwrap().len(), 1);
        hints.remove(&[hint("n2", 0)]).unwrap();
        assert_eq!(hints.for_node("n2", 10).unwrap(), [hint("n2", 1)]);
        assert_eq!(
            hints.counts(Some("vol0")).unwrap()[&("vol0".to_string(), 1)],
            3
        );
    }

    fn deletion(node: &str, index: u32) -> Deletion {
        Deletion {
            node: node.to_string(),
            volume: "vol0".to_string(),
            volume_id: 9,
            brick: 1,
            block: BlockId { version: 6, index },
        }
    }

    #[test]
    fn missed_deletions_are_kept_apart_from_copies_and_survive_a_restart() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("hints.redb");
        {
            let hints = Hints::open(&path).unwrap();
            hints.add(&[hint("n2", 0)]).unwrap();
            let kept = hints
                .add_deletions(&[deletion("n3", 0), deletion("n3", 1), deletion("n3", 1)])
                .unwrap();
            assert_eq!(kept, 3, "a repeated deletion is one entry, counted as kept");
        }
        let hints = Hints::open(&path).unwrap();
        assert_eq!(hints.nodes().unwrap(), ["n2"]);
        assert_eq!(hints.deletion_nodes().unwrap(), ["n3"]);
        assert_eq!(hints.pending().unwrap(), 1);
        assert_eq!(hints.pending_deletions().unwrap(), 2);
        assert_eq!(
            hints.deletions_for_node("n3", 10).unwrap(),
            [deletion("n3", 0), deletion("n3", 1)]
        );
        hints.remove_deletions(&[deletion("n3", 0)]).unwrap();
        assert_eq!(
            hints.deletions_for_node("n3", 10).unwrap(),
            [deletion("n3", 1)]
        );
        assert!(hints.deletions_for_node("n2", 10).unwrap().is_empty());
    }
}
