//! The Raft log and the state machine (the catalog), stored in one redb file.
//!
//! openraft does the consensus; this module only implements its storage traits
//! (`RaftLogStorage`, `RaftStateMachine`, `RaftSnapshotBuilder`) and gives the rest of the
//! agent a read-only view of the committed catalog ([`CatalogReader`]) plus a stream of its
//! changes.
//!
//! Why it is shaped this way:
//!
//! - One redb file (`<data-dir>/meta.redb`) holds everything: the log, the vote, the catalog
//!   and the state machine's bookkeeping. One file means one fsync discipline and one thing
//!   to back up; redb's transactions make each step atomic. The three handles share it
//!   through `Arc<redb::Database>`, and redb serializes their write transactions.
//! - The state machine is persistent: every `apply` batch writes the catalog changes, the
//!   last applied log id and the last membership in a single write transaction, so after a
//!   crash the catalog and `last_applied` never disagree. Snapshots are therefore only
//!   needed to bring lagging followers up to date and to let openraft purge the log; the
//!   current one is kept in a file next to the database (`<path>.snapshot`).
//! - The state machine is written without an fsync of its own (`Durability::None`): the
//!   log already holds every applied entry durably, and redb makes a non-durable
//!   transaction durable with the next durable one (the next log append, vote, truncation
//!   or purge), or rolls it back whole in a crash. A crash can therefore only take
//!   `last_applied` back to an earlier point whose entries are still in the log (a purge is
//!   durable, so it never removes entries whose application could still be lost), and
//!   openraft applies them again at startup, with the same results. This halves the
//!   fsyncs of every catalog write on every node (an SD card's wear, and one fsync less
//!   before the leader answers the client).
//! - The committed log id is saved too (without forcing an fsync of its own, see
//!   [`LogStore`]), so after a restart openraft re-applies committed entries the state
//!   machine had not reached yet.
//! - Records are postcard-encoded. Nothing read back from disk is trusted: corrupt bytes
//!   become a `StorageError` (openraft then stops the node) rather than a panic.
//! - redb calls block. Those made per log append or apply batch are short (a few pages and
//!   one fsync), so they run inline in the async functions, as openraft's own examples do;
//!   work proportional to the whole catalog (building, installing and reading snapshots)
//!   runs on tokio's blocking pool so it does not stall the runtime on a 2-core board.
//!
//! One concern a file: [`log`] (the Raft log and vote), [`state_machine`] (applying
//! commands to the catalog), [`snapshot`] (the snapshot format, building, saving and
//! installing), [`reader`] (local reads and watches); this file opens the database and
//! holds what they share.

use std::fmt::Debug;
use std::fs::File;
use std::io::{self, Cursor, Read, Seek, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bramble_util::files::{self, FileError, Visibility};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend,
    RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError, StoredMembership,
    Vote,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{
    Change, Command, CommandResult, MetaNode, NodeId, Operation, StorageError, TypeConfig,
    VersionedValue,
};
use crate::watch::{Watch, WatchRegistry};

/// Raft log entries by index, each a postcard-encoded `openraft::Entry<TypeConfig>`.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// The log's own records: the vote, the committed log id and the last purged log id.
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");
/// The catalog: key to postcard-encoded [`VersionedValue`].
const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
/// The state machine's records: last applied log id, last membership, snapshot bookkeeping.
const STATE_META: TableDefinition<&str, &[u8]> = TableDefinition::new("state_meta");

const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const LAST_PURGED_KEY: &str = "last_purged";
const LAST_APPLIED_KEY: &str = "last_applied";
const LAST_MEMBERSHIP_KEY: &str = "last_membership";
const SNAPSHOT_COUNTER_KEY: &str = "snapshot_counter";
/// The last log id of the last installed snapshot: the saved snapshot must reach at least
/// this far (see [`Shared::install_snapshot`]).
const SNAPSHOT_FLOOR_KEY: &str = "snapshot_floor";

/// Snapshot files start with this, so a foreign or truncated file is recognized as such.
const SNAPSHOT_MAGIC: &[u8; 8] = b"BRSNAP01";
/// Magic, metadata length (u32, little endian), SHA-256 of everything after the header.
const SNAPSHOT_HEADER_BYTES: usize = 8 + 4 + 32;
/// Largest snapshot metadata we read: it holds the membership, a few KiB at most.
const MAX_SNAPSHOT_META_BYTES: u64 = 1024 * 1024;
/// Largest snapshot file we read. The catalog holds configuration, so real snapshots are a
/// few MiB; the bound only stops a corrupted file from exhausting memory.
const MAX_SNAPSHOT_FILE_BYTES: u64 = 1024 * 1024 * 1024;

/// Errors of the catalog store. Each names the file involved; the Raft storage traits wrap
/// them in an `openraft::StorageError` that says what was being read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetaStoreError {
    #[error("cannot open the catalog database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("catalog database {path}: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("{path}: {what} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        what: String,
        #[source]
        source: postcard::Error,
    },
    #[error("{path}: cannot encode {what}: {source}")]
    Encode {
        path: PathBuf,
        what: String,
        #[source]
        source: postcard::Error,
    },
    #[error("{path}: {reason}")]
    Inconsistent { path: PathBuf, reason: String },
    #[error(transparent)]
    SnapshotFile(#[from] FileError),
    #[error("a blocking catalog storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Turns any redb error into a [`MetaStoreError`] naming the database file.
fn database_error<E: Into<redb::Error>>(path: &Path) -> impl FnOnce(E) -> MetaStoreError + '_ {
    move |error| MetaStoreError::Database {
        path: path.to_path_buf(),
        source: error.into(),
    }
}

/// Wraps a store error for openraft, saying what was being done to what.
fn storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
) -> impl FnOnce(MetaStoreError) -> StorageError {
    move |error| StorageIOError::new(subject, verb, AnyError::new(&error)).into()
}

/// Decodes a record read from disk; `what` names it in the error (built only on failure).
fn decode<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, MetaStoreError> {
    postcard::from_bytes(bytes).map_err(|source| MetaStoreError::Corrupt {
        path: path.to_path_buf(),
        what: what(),
        source,
    })
}

fn encode<T: Serialize>(
    path: &Path,
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<Vec<u8>, MetaStoreError> {
    postcard::to_stdvec(value).map_err(|source| MetaStoreError::Encode {
        path: path.to_path_buf(),
        what: what(),
        source,
    })
}

/// Appends the postcard encoding of `value` to `buffer`, for records written one by one.
fn encode_into<T: Serialize + ?Sized>(
    buffer: &mut Vec<u8>,
    path: &Path,
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<(), MetaStoreError> {
    let taken = std::mem::take(buffer);
    *buffer = postcard::to_extend(value, taken).map_err(|source| MetaStoreError::Encode {
        path: path.to_path_buf(),
        what: what(),
        source,
    })?;
    Ok(())
}

/// Reads a postcard record from one of the small `&str`-keyed tables.
fn get_record<T, Table>(table: &Table, path: &Path, key: &str) -> Result<Option<T>, MetaStoreError>
where
    T: DeserializeOwned,
    Table: ReadableTable<&'static str, &'static [u8]>,
{
    match table.get(key).map_err(database_error(path))? {
        Some(guard) => decode(path, guard.value(), || format!("the {key} record")).map(Some),
        None => Ok(None),
    }
}

fn put_record<T: Serialize>(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    path: &Path,
    key: &str,
    value: &T,
) -> Result<(), MetaStoreError> {
    let bytes = encode(path, value, || format!("the {key} record"))?;
    table
        .insert(key, bytes.as_slice())
        .map_err(database_error(path))?;
    Ok(())
}

/// The last applied log id, stored as an `Option` (a snapshot of an empty state machine
/// has none); a missing record means nothing was applied yet.
fn get_last_applied<Table>(
    table: &Table,
    path: &Path,
) -> Result<Option<LogId<NodeId>>, MetaStoreError>
where
    Table: ReadableTable<&'static str, &'static [u8]>,
{
    Ok(get_record::<Option<LogId<NodeId>>, _>(table, path, LAST_APPLIED_KEY)?.flatten())
}

/// `<path>.snapshot`: the current snapshot lives next to the database.
fn snapshot_path_for(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".snapshot");
    PathBuf::from(name)
}

/// Memory redb may use to cache pages of `meta.redb`.
pub const CATALOG_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Opens (or creates) the catalog database at `path` and returns the Raft log store, the
/// state machine and a reader of the committed catalog, all sharing the one file.
///
/// Only one process may hold the file: a second `open` of the same path fails until every
/// handle of the first has been dropped.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore, CatalogReader), MetaStoreError> {
    // redb caches up to 1 GiB of pages by default; a Pi Zero has 512 MB in all. The
    // catalog is small and its hot part (recent log, live keys) fits in a few MiB.
    let database = Database::builder()
        .set_cache_size(CATALOG_CACHE_BYTES)
        .create(path)
        .map_err(|source| MetaStoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    // Create every table up front, so read transactions never meet a missing table.
    let transaction = database.begin_write().map_err(database_error(path))?;
    for table in [LOG_META, CATALOG, STATE_META] {
        transaction
            .open_table(table)
            .map_err(database_error(path))?;
    }
    transaction.open_table(LOG).map_err(database_error(path))?;
    transaction.commit().map_err(database_error(path))?;

    let last_applied = {
        let transaction = database.begin_read().map_err(database_error(path))?;
        let state = transaction
            .open_table(STATE_META)
            .map_err(database_error(path))?;
        get_last_applied(&state, path)?
    };

    let database = Arc::new(database);
    let path: Arc<Path> = Arc::from(path);
    let votes_saved = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Shared {
        database: Arc::clone(&database),
        snapshot_path: snapshot_path_for(&path),
        path: Arc::clone(&path),
        snapshot_file_lock: Mutex::new(()),
        watches: WatchRegistry::default(),
        last_applied_index: AtomicU64::new(last_applied.map_or(0, |log_id| log_id.index)),
        votes_saved: Arc::clone(&votes_saved),
    });
    let log_store = LogStore {
        database,
        path,
        votes_saved,
    };
    let state_machine = StateMachineStore {
        shared: Arc::clone(&shared),
    };
    Ok((log_store, state_machine, CatalogReader { shared }))
}

/// The last applied log id and the last membership, as openraft asks for them.
type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, MetaNode>);

/// What the state machine, its snapshot builders and the catalog readers share.
struct Shared {
    database: Arc<Database>,
    path: Arc<Path>,
    snapshot_path: PathBuf,
    /// Held while the snapshot file is compared and replaced. Snapshot builds run in their
    /// own task, concurrently with applies and installs; without the lock two writers would
    /// also share `write_atomic`'s temporary file name.
    snapshot_file_lock: Mutex<()>,
    watches: WatchRegistry,
    /// A copy of the durable last applied index, so readers get it without a transaction.
    last_applied_index: AtomicU64,
    /// The log store's count of votes saved.
    votes_saved: Arc<AtomicU64>,
}

/// The bytes of a snapshot: the whole state machine. Snapshots are written and read one
/// entry at a time (see [`snapshot`]); this type states the format they produce.
#[cfg(test)]
#[derive(Serialize, serde::Deserialize)]
struct SnapshotContents {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, MetaNode>,
    catalog: Vec<(String, VersionedValue)>,
}

mod log;
mod reader;
mod snapshot;
mod state_machine;
#[cfg(test)]
mod tests;

pub use log::LogStore;
pub use reader::CatalogReader;
pub use state_machine::{CatalogSnapshotBuilder, StateMachineStore};
