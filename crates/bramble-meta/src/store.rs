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
//!   last applied log id and the last membership in a single durable write transaction, so
//!   after a crash the catalog and `last_applied` never disagree. Snapshots are therefore
//!   only needed to bring lagging followers up to date and to let openraft purge the log;
//!   the current one is kept in a file next to the database (`<path>.snapshot`).
//! - The committed log id is saved too (without forcing an fsync of its own, see
//!   [`LogStore`]), so after a restart openraft re-applies committed entries the state
//!   machine had not reached yet.
//! - Records are postcard-encoded. Nothing read back from disk is trusted: corrupt bytes
//!   become a `StorageError` (openraft then stops the node) rather than a panic.
//! - redb calls block. Those made per log append or apply batch are short (a few pages and
//!   one fsync), so they run inline in the async functions, as openraft's own examples do;
//!   work proportional to the whole catalog (building, installing and reading snapshots)
//!   runs on tokio's blocking pool so it does not stall the runtime on a 2-core board.

use std::fmt::Debug;
use std::fs::File;
use std::io::{self, Cursor, Read};
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
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{
    Change, Command, CommandResult, MetaNode, NodeId, StorageError, TypeConfig, VersionedValue,
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
pub const CATALOG_CACHE_BYTES: usize = 16 * 1024 * 1024;

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
    let shared = Arc::new(Shared {
        database: Arc::clone(&database),
        snapshot_path: snapshot_path_for(&path),
        path: Arc::clone(&path),
        snapshot_file_lock: Mutex::new(()),
        watches: WatchRegistry::default(),
        last_applied_index: AtomicU64::new(last_applied.map_or(0, |log_id| log_id.index)),
    });
    let log_store = LogStore { database, path };
    let state_machine = StateMachineStore {
        shared: Arc::clone(&shared),
    };
    Ok((log_store, state_machine, CatalogReader { shared }))
}

// ---------------------------------------------------------------------------------------
// The log

/// The Raft log and vote. Cloning is cheap (it shares the database), which is how
/// [`RaftLogStorage::get_log_reader`] hands replication tasks their own reader.
///
/// Every method commits its own redb write transaction before returning, which gives the
/// ordering openraft requires (a later write is never durable before an earlier one). The
/// vote, appended entries, truncation and purges are durable when the method returns; the
/// committed log id is written without an fsync of its own and becomes durable with the
/// next durable commit (an append or an apply), because losing the latest one in a crash
/// only means fewer entries are re-applied at startup.
#[derive(Clone)]
pub struct LogStore {
    database: Arc<Database>,
    path: Arc<Path>,
}

impl LogStore {
    fn read_record<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, MetaStoreError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(database_error(&self.path))?;
        let table = transaction
            .open_table(LOG_META)
            .map_err(database_error(&self.path))?;
        get_record(&table, &self.path, key)
    }

    fn write_record<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), MetaStoreError> {
        let path = &*self.path;
        let mut transaction = self.database.begin_write().map_err(database_error(path))?;
        transaction
            .set_durability(durability)
            .map_err(database_error(path))?;
        {
            let mut table = transaction
                .open_table(LOG_META)
                .map_err(database_error(path))?;
            put_record(&mut table, path, key, value)?;
        }
        transaction.commit().map_err(database_error(path))
    }

    fn read_entries(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, MetaStoreError> {
        let path = &*self.path;
        let transaction = self.database.begin_read().map_err(database_error(path))?;
        let table = transaction.open_table(LOG).map_err(database_error(path))?;
        let mut entries = Vec::new();
        for item in table
            .range::<u64>((start, end))
            .map_err(database_error(path))?
        {
            let (index, bytes) = item.map_err(database_error(path))?;
            entries.push(decode_entry(path, index.value(), bytes.value())?);
        }
        Ok(entries)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, MetaStoreError> {
        let path = &*self.path;
        let transaction = self.database.begin_read().map_err(database_error(path))?;
        let meta = transaction
            .open_table(LOG_META)
            .map_err(database_error(path))?;
        let last_purged_log_id: Option<LogId<NodeId>> = get_record(&meta, path, LAST_PURGED_KEY)?;
        let log = transaction.open_table(LOG).map_err(database_error(path))?;
        let last_entry = match log.last().map_err(database_error(path))? {
            Some((index, bytes)) => Some(decode_entry(path, index.value(), bytes.value())?),
            None => None,
        };
        // With no entry left, the last log id is the last purged one (openraft's contract).
        let last_log_id = last_entry.map(|entry| entry.log_id).or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    fn append_entries(
        &self,
        entries: impl Iterator<Item = Entry<TypeConfig>>,
    ) -> Result<(), MetaStoreError> {
        let path = &*self.path;
        let transaction = self.database.begin_write().map_err(database_error(path))?;
        {
            let mut table = transaction.open_table(LOG).map_err(database_error(path))?;
            for entry in entries {
                let index = entry.log_id.index;
                let bytes = encode(path, &entry, || format!("log entry {index}"))?;
                table
                    .insert(index, bytes.as_slice())
                    .map_err(database_error(path))?;
            }
        }
        transaction.commit().map_err(database_error(path))
    }

    /// Removes entries at `index` and after, in one transaction, so no hole can appear.
    fn remove_from(&self, index: u64) -> Result<(), MetaStoreError> {
        let path = &*self.path;
        let transaction = self.database.begin_write().map_err(database_error(path))?;
        {
            let mut table = transaction.open_table(LOG).map_err(database_error(path))?;
            table
                .retain_in::<u64, _>(index.., |_, _| false)
                .map_err(database_error(path))?;
        }
        transaction.commit().map_err(database_error(path))
    }

    /// Removes entries up to `log_id` and records it as the last purged log id, in one
    /// transaction: a crash cannot leave entries gone without the record saying so.
    fn remove_through(&self, log_id: LogId<NodeId>) -> Result<(), MetaStoreError> {
        let path = &*self.path;
        let transaction = self.database.begin_write().map_err(database_error(path))?;
        {
            let mut meta = transaction
                .open_table(LOG_META)
                .map_err(database_error(path))?;
            put_record(&mut meta, path, LAST_PURGED_KEY, &log_id)?;
            let mut table = transaction.open_table(LOG).map_err(database_error(path))?;
            table
                .retain_in::<u64, _>(..=log_id.index, |_, _| false)
                .map_err(database_error(path))?;
        }
        transaction.commit().map_err(database_error(path))
    }
}

/// Decodes a log entry and checks it sits under its own index: an entry under another
/// index would silently reorder the log.
fn decode_entry(
    path: &Path,
    index: u64,
    bytes: &[u8],
) -> Result<Entry<TypeConfig>, MetaStoreError> {
    let entry: Entry<TypeConfig> = decode(path, bytes, || format!("log entry {index}"))?;
    if entry.log_id.index != index {
        return Err(MetaStoreError::Inconsistent {
            path: path.to_path_buf(),
            reason: format!(
                "the log entry stored at index {index} says it is entry {}",
                entry.log_id.index
            ),
        });
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<Bounds>(
        &mut self,
        range: Bounds,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError>
    where
        Bounds: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        self.read_entries(range.start_bound().cloned(), range.end_bound().cloned())
            .map_err(storage_error(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.log_state()
            .map_err(storage_error(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_record(VOTE_KEY, vote, Durability::Immediate)
            .map_err(storage_error(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_record(VOTE_KEY)
            .map_err(storage_error(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        // No fsync of its own: see the type's documentation.
        self.write_record(COMMITTED_KEY, &committed, Durability::None)
            .map_err(storage_error(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        self.read_record::<Option<LogId<NodeId>>>(COMMITTED_KEY)
            .map(Option::flatten)
            .map_err(storage_error(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<Entries>(
        &mut self,
        entries: Entries,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        Entries: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        Entries::IntoIter: OptionalSend,
    {
        // The commit is durable when it returns, so the entries are both readable and
        // flushed by the time we report completion.
        match self.append_entries(entries.into_iter()) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(io::Error::other(error.to_string())));
                Err(storage_error(ErrorSubject::Logs, ErrorVerb::Write)(error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.remove_from(log_id.index)
            .map_err(storage_error(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.remove_through(log_id)
            .map_err(storage_error(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

// ---------------------------------------------------------------------------------------
// The state machine

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
}

/// The bytes of a snapshot: the whole state machine.
#[derive(Serialize, Deserialize)]
struct SnapshotContents {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, MetaNode>,
    catalog: Vec<(String, VersionedValue)>,
}

impl Shared {
    fn applied_state(&self) -> Result<AppliedState, MetaStoreError> {
        let path = &*self.path;
        let transaction = self.database.begin_read().map_err(database_error(path))?;
        let state = transaction
            .open_table(STATE_META)
            .map_err(database_error(path))?;
        let last_applied = get_last_applied(&state, path)?;
        let last_membership = get_record(&state, path, LAST_MEMBERSHIP_KEY)?.unwrap_or_default();
        Ok((last_applied, last_membership))
    }

    /// Applies a batch in one write transaction; returns one result per entry and the
    /// changes to announce once the transaction is committed.
    fn apply_entries(
        &self,
        entries: impl Iterator<Item = Entry<TypeConfig>>,
    ) -> Result<(Vec<CommandResult>, Vec<Change>), MetaStoreError> {
        let path = &*self.path;
        let mut entries = entries.peekable();
        if entries.peek().is_none() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut results = Vec::new();
        let mut changes = Vec::new();
        let mut last_applied = None;
        let mut last_membership = None;
        let transaction = self.database.begin_write().map_err(database_error(path))?;
        {
            let mut catalog = transaction
                .open_table(CATALOG)
                .map_err(database_error(path))?;
            for Entry { log_id, payload } in entries {
                let result = match payload {
                    EntryPayload::Blank => CommandResult::Nothing,
                    EntryPayload::Normal(command) => {
                        apply_command(&mut catalog, path, command, log_id.index, &mut changes)?
                    }
                    EntryPayload::Membership(membership) => {
                        last_membership = Some(StoredMembership::new(Some(log_id), membership));
                        CommandResult::Nothing
                    }
                };
                results.push(result);
                last_applied = Some(log_id);
            }
            let mut state = transaction
                .open_table(STATE_META)
                .map_err(database_error(path))?;
            put_record(&mut state, path, LAST_APPLIED_KEY, &last_applied)?;
            if let Some(membership) = &last_membership {
                put_record(&mut state, path, LAST_MEMBERSHIP_KEY, membership)?;
            }
        }
        transaction.commit().map_err(database_error(path))?;
        if let Some(log_id) = last_applied {
            self.last_applied_index
                .store(log_id.index, Ordering::Release);
        }
        Ok((results, changes))
    }

    fn announce(&self, changes: Vec<Change>) {
        self.watches.announce(&changes);
    }

    /// Reads the whole state machine from one read transaction, so the snapshot is a
    /// consistent point in time even while entries keep being applied.
    fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, MetaStoreError> {
        let path = &*self.path;
        let contents = {
            let transaction = self.database.begin_read().map_err(database_error(path))?;
            let state = transaction
                .open_table(STATE_META)
                .map_err(database_error(path))?;
            let last_applied = get_last_applied(&state, path)?;
            let last_membership =
                get_record(&state, path, LAST_MEMBERSHIP_KEY)?.unwrap_or_default();
            let table = transaction
                .open_table(CATALOG)
                .map_err(database_error(path))?;
            let length = table.len().map_err(database_error(path))?;
            let mut catalog = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
            for item in table.iter().map_err(database_error(path))? {
                let (key, bytes) = item.map_err(database_error(path))?;
                let key = key.value();
                let value = decode(path, bytes.value(), || format!("catalog key {key:?}"))?;
                catalog.push((key.to_string(), value));
            }
            SnapshotContents {
                last_applied,
                last_membership,
                catalog,
            }
        };
        let snapshot_id = self.next_snapshot_id(contents.last_applied)?;
        let data = encode(path, &contents, || "the snapshot".to_string())?;
        let meta = SnapshotMeta {
            last_log_id: contents.last_applied,
            last_membership: contents.last_membership,
            snapshot_id,
        };
        self.save_snapshot(&meta, &data, SaveRule::UnlessNewerSaved)?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            keys = contents.catalog.len(),
            bytes = data.len(),
            "built a catalog snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    /// `<term>-<index>-<counter>`: the counter is durable, so two snapshots at the same log
    /// id (which openraft allows to differ in bytes) never share an id, even across
    /// restarts.
    fn next_snapshot_id(
        &self,
        last_applied: Option<LogId<NodeId>>,
    ) -> Result<String, MetaStoreError> {
        let path = &*self.path;
        let transaction = self.database.begin_write().map_err(database_error(path))?;
        let counter = {
            let mut state = transaction
                .open_table(STATE_META)
                .map_err(database_error(path))?;
            let counter =
                get_record::<u64, _>(&state, path, SNAPSHOT_COUNTER_KEY)?.unwrap_or(0) + 1;
            put_record(&mut state, path, SNAPSHOT_COUNTER_KEY, &counter)?;
            counter
        };
        transaction.commit().map_err(database_error(path))?;
        Ok(match last_applied {
            Some(log_id) => format!("{}-{}-{counter}", log_id.leader_id.term, log_id.index),
            None => format!("0-0-{counter}"),
        })
    }

    /// Replaces the catalog, last applied and membership with a snapshot's, in one
    /// transaction, then saves the snapshot as the current one.
    fn install_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, MetaNode>,
        data: Vec<u8>,
    ) -> Result<(), MetaStoreError> {
        let path = &*self.path;
        let contents: SnapshotContents = decode(path, &data, || {
            format!("the received snapshot {}", meta.snapshot_id)
        })?;
        if contents.last_applied != meta.last_log_id
            || contents.last_membership != meta.last_membership
        {
            return Err(MetaStoreError::Inconsistent {
                path: path.to_path_buf(),
                reason: format!(
                    "snapshot {} holds state up to {:?}, but its metadata says {:?}",
                    meta.snapshot_id, contents.last_applied, meta.last_log_id
                ),
            });
        }
        let transaction = self.database.begin_write().map_err(database_error(path))?;
        {
            // Deleting the table drops every old key at once, whatever their number.
            transaction
                .delete_table(CATALOG)
                .map_err(database_error(path))?;
            let mut catalog = transaction
                .open_table(CATALOG)
                .map_err(database_error(path))?;
            for (key, value) in &contents.catalog {
                let bytes = encode(path, value, || format!("catalog key {key:?}"))?;
                catalog
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(database_error(path))?;
            }
            let mut state = transaction
                .open_table(STATE_META)
                .map_err(database_error(path))?;
            put_record(&mut state, path, LAST_APPLIED_KEY, &meta.last_log_id)?;
            put_record(&mut state, path, LAST_MEMBERSHIP_KEY, &meta.last_membership)?;
            put_record(&mut state, path, SNAPSHOT_FLOOR_KEY, &meta.last_log_id)?;
        }
        transaction.commit().map_err(database_error(path))?;
        self.last_applied_index.store(
            meta.last_log_id.map_or(0, |log_id| log_id.index),
            Ordering::Release,
        );
        // The file is written after the commit. Written first, a crash could leave a
        // snapshot ahead of the state machine, which openraft never re-installs. Written
        // after, a crash leaves the previous snapshot file behind while the log entries it
        // would lead into are gone; the floor recorded above makes `current_snapshot`
        // ignore that file, and openraft then builds a fresh snapshot at startup.
        self.save_snapshot(meta, &data, SaveRule::Always)?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            keys = contents.catalog.len(),
            "installed a catalog snapshot"
        );
        Ok(())
    }

    fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, MetaNode>,
        data: &[u8],
        rule: SaveRule,
    ) -> Result<(), MetaStoreError> {
        let meta_bytes = encode(&self.snapshot_path, meta, || {
            "the snapshot metadata".to_string()
        })?;
        let meta_length =
            u32::try_from(meta_bytes.len()).map_err(|_| MetaStoreError::Inconsistent {
                path: self.snapshot_path.clone(),
                reason: format!("the snapshot metadata is {} bytes", meta_bytes.len()),
            })?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(&meta_bytes);
        digest.update(data);
        let mut file = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + meta_bytes.len() + data.len());
        file.extend_from_slice(SNAPSHOT_MAGIC);
        file.extend_from_slice(&meta_length.to_le_bytes());
        file.extend_from_slice(digest.finish().as_ref());
        file.extend_from_slice(&meta_bytes);
        file.extend_from_slice(data);

        let _guard = self
            .snapshot_file_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if rule == SaveRule::UnlessNewerSaved
            && let Some(saved) = read_saved_snapshot_log_id(&self.snapshot_path)
            && saved > meta.last_log_id
        {
            // An install (or a later build) finished while this build ran: keeping the
            // older snapshot would offer followers state whose following entries may
            // already be purged.
            tracing::info!(
                snapshot = %meta.snapshot_id,
                "kept the newer saved snapshot instead of the one just built"
            );
            return Ok(());
        }
        files::write_atomic(&self.snapshot_path, &file, Visibility::Private)?;
        Ok(())
    }

    fn snapshot_floor(&self) -> Result<Option<LogId<NodeId>>, MetaStoreError> {
        let path = &*self.path;
        let transaction = self.database.begin_read().map_err(database_error(path))?;
        let state = transaction
            .open_table(STATE_META)
            .map_err(database_error(path))?;
        Ok(get_record::<Option<LogId<NodeId>>, _>(&state, path, SNAPSHOT_FLOOR_KEY)?.flatten())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, MetaStoreError> {
        let path = &self.snapshot_path;
        let mut contents = match files::read_bounded(path, MAX_SNAPSHOT_FILE_BYTES) {
            Ok(contents) => contents,
            Err(FileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        let inconsistent = |reason: &str| MetaStoreError::Inconsistent {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let meta_length = parse_snapshot_header(&contents)
            .ok_or_else(|| inconsistent("not a catalog snapshot file, or truncated"))?;
        let body = &contents[SNAPSHOT_HEADER_BYTES..];
        if (body.len() as u64) < meta_length {
            return Err(inconsistent("the snapshot file is truncated"));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, body);
        if digest.as_ref() != &contents[12..SNAPSHOT_HEADER_BYTES] {
            return Err(inconsistent("the snapshot file fails its checksum"));
        }
        // Bounded by the body length just checked.
        let meta_length = meta_length as usize;
        let meta: SnapshotMeta<NodeId, MetaNode> = decode(path, &body[..meta_length], || {
            "the snapshot metadata".to_string()
        })?;
        if meta.last_log_id < self.snapshot_floor()? {
            tracing::warn!(
                snapshot = %meta.snapshot_id,
                "ignoring a snapshot file older than the last installed snapshot"
            );
            return Ok(None);
        }
        // Keep only the data, without copying it into a new buffer.
        contents.drain(..SNAPSHOT_HEADER_BYTES + meta_length);
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(contents)),
        }))
    }
}

/// Whether a snapshot replaces the saved one unconditionally.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SaveRule {
    /// An installed snapshot is the state machine's new state: it is always saved.
    Always,
    /// A built snapshot is dropped if a snapshot further along was saved meanwhile.
    UnlessNewerSaved,
}

/// Checks the magic and returns the metadata length; None for a foreign or short file.
fn parse_snapshot_header(contents: &[u8]) -> Option<u64> {
    let header = contents.get(..SNAPSHOT_HEADER_BYTES)?;
    if &header[..8] != SNAPSHOT_MAGIC {
        return None;
    }
    let length = u32::from_le_bytes(header[8..12].try_into().ok()?);
    let length = u64::from(length);
    (length <= MAX_SNAPSHOT_META_BYTES).then_some(length)
}

/// The last log id of the saved snapshot, reading only the file's header and metadata.
/// None if there is no usable file, in which case any new snapshot may replace it.
fn read_saved_snapshot_log_id(path: &Path) -> Option<Option<LogId<NodeId>>> {
    let mut file = File::open(path).ok()?;
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    file.read_exact(&mut header).ok()?;
    let meta_length = parse_snapshot_header(&header)?;
    let mut meta_bytes = Vec::new();
    file.take(meta_length).read_to_end(&mut meta_bytes).ok()?;
    let meta: SnapshotMeta<NodeId, MetaNode> = postcard::from_bytes(&meta_bytes).ok()?;
    Some(meta.last_log_id)
}

/// Applies one command to the catalog inside the batch's transaction. Commands that break
/// a bound are rejected, not failed: the entry is committed either way, and failing would
/// stop the node on every replay.
fn apply_command(
    catalog: &mut redb::Table<&'static str, &'static [u8]>,
    path: &Path,
    command: Command,
    version: u64,
    changes: &mut Vec<Change>,
) -> Result<CommandResult, MetaStoreError> {
    if let Err(reason) = command.validate() {
        return Ok(CommandResult::Rejected { reason });
    }
    match command {
        Command::Put { key, value } => {
            write_key(catalog, path, key, value, version, changes)?;
            Ok(CommandResult::Written { version })
        }
        Command::PutIfVersion {
            key,
            value,
            expected_version,
        } => {
            let current_version = match catalog.get(key.as_str()).map_err(database_error(path))? {
                Some(guard) => {
                    decode::<VersionedValue>(path, guard.value(), || {
                        format!("catalog key {key:?}")
                    })?
                    .version
                }
                None => 0,
            };
            if current_version != expected_version {
                return Ok(CommandResult::VersionMismatch { current_version });
            }
            write_key(catalog, path, key, value, version, changes)?;
            Ok(CommandResult::Written { version })
        }
        Command::Delete { key } => {
            let existed = catalog
                .remove(key.as_str())
                .map_err(database_error(path))?
                .is_some();
            // Deleting a missing key changes nothing, so watchers are not told about it.
            if existed {
                changes.push(Change::Key {
                    key,
                    value: None,
                    version,
                });
            }
            Ok(CommandResult::Deleted { existed })
        }
    }
}

fn write_key(
    catalog: &mut redb::Table<&'static str, &'static [u8]>,
    path: &Path,
    key: String,
    value: Vec<u8>,
    version: u64,
    changes: &mut Vec<Change>,
) -> Result<(), MetaStoreError> {
    let record = VersionedValue { value, version };
    let bytes = encode(path, &record, || format!("catalog key {key:?}"))?;
    catalog
        .insert(key.as_str(), bytes.as_slice())
        .map_err(database_error(path))?;
    changes.push(Change::Key {
        key,
        value: Some(record.value),
        version,
    });
    Ok(())
}

/// Runs catalog-sized work on tokio's blocking pool.
async fn run_blocking<T, Work>(work: Work) -> Result<T, MetaStoreError>
where
    T: Send + 'static,
    Work: FnOnce() -> Result<T, MetaStoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await?
}

/// The Raft state machine: the catalog. See the module documentation for why every apply
/// batch is one durable transaction.
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

impl StateMachineStore {
    /// A reader of the committed catalog, like the one [`open`] returns.
    pub fn reader(&self) -> CatalogReader {
        CatalogReader {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = CatalogSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<AppliedState, StorageError> {
        self.shared
            .applied_state()
            .map_err(storage_error(ErrorSubject::StateMachine, ErrorVerb::Read))
    }

    async fn apply<Entries>(&mut self, entries: Entries) -> Result<Vec<CommandResult>, StorageError>
    where
        Entries: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        Entries::IntoIter: OptionalSend,
    {
        let (results, changes) = self
            .shared
            .apply_entries(entries.into_iter())
            .map_err(storage_error(ErrorSubject::StateMachine, ErrorVerb::Write))?;
        // Only after the commit: watchers must never see a change that could be lost.
        self.shared.announce(changes);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        CatalogSnapshotBuilder {
            shared: Arc::clone(&self.shared),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MetaNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.shared);
        let owned_meta = meta.clone();
        run_blocking(move || shared.install_snapshot(&owned_meta, snapshot.into_inner()))
            .await
            .map_err(storage_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
            ))?;
        self.shared.announce(vec![Change::Reset]);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let shared = Arc::clone(&self.shared);
        run_blocking(move || shared.current_snapshot())
            .await
            .map_err(storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}

/// Builds snapshots of the catalog; openraft runs it in its own task.
pub struct CatalogSnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for CatalogSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = Arc::clone(&self.shared);
        run_blocking(move || shared.build_snapshot())
            .await
            .map_err(storage_error(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
            ))
    }
}

// ---------------------------------------------------------------------------------------
// Local reads

/// Reads the committed catalog on this node. Reads are local and may be stale (this node
/// may lag the leader); use them for watching and for state that tolerates staleness, and
/// go through the leader for anything that must be current.
#[derive(Clone)]
pub struct CatalogReader {
    shared: Arc<Shared>,
}

impl CatalogReader {
    fn read_catalog<T>(
        &self,
        read: impl FnOnce(
            &redb::ReadOnlyTable<&'static str, &'static [u8]>,
        ) -> Result<T, MetaStoreError>,
    ) -> Result<T, MetaStoreError> {
        let path = &*self.shared.path;
        let transaction = self
            .shared
            .database
            .begin_read()
            .map_err(database_error(path))?;
        let table = transaction
            .open_table(CATALOG)
            .map_err(database_error(path))?;
        read(&table)
    }

    /// The value of `key` and its version, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<VersionedValue>, MetaStoreError> {
        let path = &*self.shared.path;
        self.read_catalog(
            |table| match table.get(key).map_err(database_error(path))? {
                Some(guard) => {
                    decode(path, guard.value(), || format!("catalog key {key:?}")).map(Some)
                }
                None => Ok(None),
            },
        )
    }

    /// Up to `limit` keys starting with `prefix`, in key order, with their values.
    pub fn list(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, VersionedValue)>, MetaStoreError> {
        let path = &*self.shared.path;
        self.read_catalog(|table| {
            let mut found = Vec::new();
            for item in table.range(prefix..).map_err(database_error(path))? {
                if found.len() >= limit {
                    break;
                }
                let (key, bytes) = item.map_err(database_error(path))?;
                let key = key.value();
                // Keys sharing the prefix are contiguous in key order: the first one that
                // does not share it ends the list.
                if !key.starts_with(prefix) {
                    break;
                }
                let value = decode(path, bytes.value(), || format!("catalog key {key:?}"))?;
                found.push((key.to_string(), value));
            }
            Ok(found)
        })
    }

    /// The number of keys in the catalog.
    pub fn len(&self) -> Result<usize, MetaStoreError> {
        let path = &*self.shared.path;
        let count = self.read_catalog(|table| table.len().map_err(database_error(path)))?;
        // Only a 32-bit board with over four billion keys would saturate.
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// Whether the catalog has no key.
    pub fn is_empty(&self) -> Result<bool, MetaStoreError> {
        Ok(self.len()? == 0)
    }

    /// The log index of the last applied entry (0 before anything is applied): the catalog
    /// reflects every command up to it.
    pub fn last_applied_index(&self) -> u64 {
        self.shared.last_applied_index.load(Ordering::Acquire)
    }

    /// Changes under `prefix`, in log order, from now on (deleting a missing key is not a
    /// change). To follow a part of the catalog, watch first, then read it: a change whose
    /// version is not above the version read for its key is already reflected. A watcher
    /// that falls behind, like one that sees [`Change::Reset`], must read again
    /// ([`crate::watch`]).
    pub fn watch(&self, prefix: &str) -> Watch {
        self.shared.watches.watch(prefix)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, Membership};
    use tempfile::TempDir;

    use super::*;

    struct TempStoreBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempStoreBuilder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
            let directory = TempDir::new().map_err(|error| {
                StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, error)
            })?;
            let (log_store, state_machine, _) = open(&directory.path().join("meta.redb"))
                .map_err(storage_error(ErrorSubject::Store, ErrorVerb::Write))?;
            Ok((directory, log_store, state_machine))
        }
    }

    #[test]
    fn handles_can_move_between_tasks() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<LogStore>();
        assert_send_sync::<StateMachineStore>();
        assert_send_sync::<CatalogReader>();
        assert_send_sync::<MetaStoreError>();
    }

    /// openraft's own conformance suite. It builds a runtime per test, so this test must
    /// not run inside one.
    #[test]
    fn passes_openraft_storage_suite() {
        Suite::<TypeConfig, LogStore, StateMachineStore, TempStoreBuilder, TempDir>::test_all(
            TempStoreBuilder,
        )
        .unwrap();
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn command_entry(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn put(index: u64, key: &str, value: &[u8]) -> Entry<TypeConfig> {
        command_entry(
            index,
            Command::Put {
                key: key.to_string(),
                value: value.to_vec(),
            },
        )
    }

    fn delete(index: u64, key: &str) -> Entry<TypeConfig> {
        command_entry(
            index,
            Command::Delete {
                key: key.to_string(),
            },
        )
    }

    fn membership_entry(index: u64) -> Entry<TypeConfig> {
        let voters = BTreeSet::from([1u64]);
        let nodes = [(
            1u64,
            MetaNode::new("alpha", "127.0.0.1:7000".parse().unwrap()),
        )];
        Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Membership(Membership::new(
                vec![voters],
                nodes
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )),
        }
    }

    fn open_in(directory: &TempDir) -> (LogStore, StateMachineStore, CatalogReader) {
        open(&directory.path().join("meta.redb")).unwrap()
    }

    #[tokio::test]
    async fn catalog_survives_reopening() {
        let directory = TempDir::new().unwrap();
        {
            let (_, mut state_machine, reader) = open_in(&directory);
            let results = state_machine
                .apply([
                    membership_entry(1),
                    put(2, "lb/web/config", b"one"),
                    put(3, "dns/zone", b"two"),
                    put(4, "lb/web/config", b"three"),
                    delete(5, "dns/zone"),
                    put(6, "dns/other", b"four"),
                ])
                .await
                .unwrap();
            assert_eq!(results[3], CommandResult::Written { version: 4 });
            assert_eq!(results[4], CommandResult::Deleted { existed: true });
            assert_eq!(reader.last_applied_index(), 6);
        }
        let (_, mut state_machine, reader) = open_in(&directory);
        assert_eq!(reader.last_applied_index(), 6);
        assert_eq!(
            reader.get("lb/web/config").unwrap(),
            Some(VersionedValue {
                value: b"three".to_vec(),
                version: 4
            })
        );
        assert_eq!(reader.get("dns/zone").unwrap(), None);
        assert_eq!(reader.get("dns/other").unwrap().unwrap().version, 6);
        assert_eq!(reader.len().unwrap(), 2);
        let (last_applied, membership) = state_machine.applied_state().await.unwrap();
        assert_eq!(last_applied, Some(log_id(1, 6)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
        assert_eq!(
            membership
                .nodes()
                .next()
                .map(|(_, node)| node.name.as_str()),
            Some("alpha")
        );
    }

    #[tokio::test]
    async fn log_vote_and_committed_survive_reopening() {
        let directory = TempDir::new().unwrap();
        {
            let (mut log_store, _, _) = open_in(&directory);
            log_store.save_vote(&Vote::new(3, 7)).await.unwrap();
            log_store.save_committed(Some(log_id(3, 2))).await.unwrap();
            let entries = vec![put(1, "a", b"1"), put(2, "b", b"2"), put(3, "c", b"3")];
            log_store.append_entries(entries.into_iter()).unwrap();
            log_store.purge(log_id(1, 1)).await.unwrap();
        }
        let (mut log_store, _, _) = open_in(&directory);
        assert_eq!(log_store.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
        // The non-durable committed record was made durable by the later commits.
        assert_eq!(
            log_store.read_committed().await.unwrap(),
            Some(log_id(3, 2))
        );
        let state = log_store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
        assert_eq!(state.last_log_id, Some(log_id(1, 3)));
        let entries = log_store.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].log_id.index, 2);
        // A reversed range is empty, not a panic.
        assert!(
            log_store
                .try_get_log_entries((Bound::Included(5), Bound::Excluded(3)))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn snapshot_moves_the_catalog_to_a_fresh_store() {
        let leader_directory = TempDir::new().unwrap();
        let follower_directory = TempDir::new().unwrap();
        let (_, mut leader, leader_reader) = open_in(&leader_directory);
        leader
            .apply([
                membership_entry(1),
                put(2, "a/1", b"x"),
                put(3, "a/2", b"y"),
                put(4, "b/1", b"z"),
                delete(5, "a/1"),
            ])
            .await
            .unwrap();
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 5)));
        assert_eq!(snapshot.meta.snapshot_id, "1-5-1");
        // The id counter makes a second build at the same log id distinct.
        let again = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(again.meta.snapshot_id, "1-5-2");

        let (_, mut follower, follower_reader) = open_in(&follower_directory);
        follower.apply([put(1, "stale", b"gone")]).await.unwrap();
        let mut watcher = follower_reader.watch("");
        let current = leader.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, again.meta);
        follower
            .install_snapshot(&current.meta, current.snapshot)
            .await
            .unwrap();

        assert_eq!(watcher.next().await.unwrap(), Change::Reset);
        assert_eq!(
            follower_reader.list("", usize::MAX).unwrap(),
            leader_reader.list("", usize::MAX).unwrap()
        );
        assert_eq!(follower_reader.get("stale").unwrap(), None);
        assert_eq!(follower_reader.last_applied_index(), 5);
        assert_eq!(
            follower.applied_state().await.unwrap(),
            leader.applied_state().await.unwrap()
        );
        let saved = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(saved.meta, again.meta);
        assert_eq!(saved.snapshot.into_inner(), again.snapshot.into_inner());
        // The snapshot file is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(snapshot_path_for(
            &follower_directory.path().join("meta.redb"),
        ))
        .unwrap()
        .permissions()
        .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn an_older_build_does_not_replace_a_newer_snapshot() {
        let directory = TempDir::new().unwrap();
        let (_, mut state_machine, _) = open_in(&directory);
        state_machine.apply([put(1, "a", b"1")]).await.unwrap();
        let older = state_machine.shared.build_snapshot().unwrap();
        state_machine.apply([put(2, "b", b"2")]).await.unwrap();
        let newer = state_machine.shared.build_snapshot().unwrap();
        // Simulate the older build finishing last.
        let data = older.snapshot.into_inner();
        state_machine
            .shared
            .save_snapshot(&older.meta, &data, SaveRule::UnlessNewerSaved)
            .unwrap();
        let current = state_machine.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, newer.meta);
    }

    #[tokio::test]
    async fn a_snapshot_file_older_than_the_last_install_is_ignored() {
        let leader_directory = TempDir::new().unwrap();
        let follower_directory = TempDir::new().unwrap();
        let (_, mut leader, _) = open_in(&leader_directory);
        leader.apply([put(1, "a", b"1")]).await.unwrap();
        let older = leader.shared.build_snapshot().unwrap();
        leader.apply([put(2, "b", b"2")]).await.unwrap();
        let newer = leader.shared.build_snapshot().unwrap();

        let (_, mut follower, _) = open_in(&follower_directory);
        follower
            .install_snapshot(&newer.meta, newer.snapshot)
            .await
            .unwrap();
        // A crash between the install's commit and its file write leaves the previous
        // snapshot file in place.
        let data = older.snapshot.into_inner();
        follower
            .shared
            .save_snapshot(&older.meta, &data, SaveRule::Always)
            .unwrap();
        assert!(follower.get_current_snapshot().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn watchers_see_changes_in_log_order() {
        let directory = TempDir::new().unwrap();
        let (_, mut state_machine, reader) = open_in(&directory);
        let mut watcher = reader.watch("");
        state_machine
            .apply([put(1, "k", b"1"), put(2, "j", b"2"), delete(3, "missing")])
            .await
            .unwrap();
        state_machine
            .apply([delete(4, "k"), put(5, "j", b"3")])
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Some(change) = watcher.try_next() {
            seen.push(change);
        }
        let key = |key: &str, value: Option<&[u8]>, version| Change::Key {
            key: key.to_string(),
            value: value.map(<[u8]>::to_vec),
            version,
        };
        assert_eq!(
            seen,
            vec![
                key("k", Some(b"1"), 1),
                key("j", Some(b"2"), 2),
                key("k", None, 4),
                key("j", Some(b"3"), 5),
            ]
        );
    }

    #[tokio::test]
    async fn compare_and_set_with_a_wrong_version_changes_nothing() {
        let directory = TempDir::new().unwrap();
        let (_, mut state_machine, reader) = open_in(&directory);
        let put_if = |index, expected_version, value: &[u8]| {
            command_entry(
                index,
                Command::PutIfVersion {
                    key: "lock".to_string(),
                    value: value.to_vec(),
                    expected_version,
                },
            )
        };
        let mut watcher = reader.watch("");
        let results = state_machine
            .apply([
                put_if(1, 0, b"first"),
                put_if(2, 7, b"second"),
                put_if(3, 0, b"third"),
            ])
            .await
            .unwrap();
        assert_eq!(
            results,
            vec![
                CommandResult::Written { version: 1 },
                CommandResult::VersionMismatch { current_version: 1 },
                CommandResult::VersionMismatch { current_version: 1 },
            ]
        );
        assert_eq!(
            reader.get("lock").unwrap(),
            Some(VersionedValue {
                value: b"first".to_vec(),
                version: 1
            })
        );
        // Only the successful write is announced; the entries are applied all the same.
        assert!(matches!(
            watcher.try_next(),
            Some(Change::Key { version: 1, .. })
        ));
        assert!(watcher.try_next().is_none());
        assert_eq!(reader.last_applied_index(), 3);

        let results = state_machine
            .apply([
                put_if(4, 1, b"fourth"),
                command_entry(
                    5,
                    Command::Put {
                        key: String::new(),
                        value: Vec::new(),
                    },
                ),
            ])
            .await
            .unwrap();
        assert_eq!(results[0], CommandResult::Written { version: 4 });
        assert!(matches!(results[1], CommandResult::Rejected { .. }));
        assert_eq!(reader.len().unwrap(), 1);
    }

    #[tokio::test]
    async fn list_returns_keys_with_the_prefix_in_order() {
        let directory = TempDir::new().unwrap();
        let (_, mut state_machine, reader) = open_in(&directory);
        state_machine
            .apply([
                put(1, "lb/b", b""),
                put(2, "lb/a", b""),
                put(3, "lc", b""),
                put(4, "la", b""),
                put(5, "lb/c", b""),
            ])
            .await
            .unwrap();
        let keys = |prefix, limit| {
            reader
                .list(prefix, limit)
                .unwrap()
                .into_iter()
                .map(|(key, _)| key)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys("lb/", 10), ["lb/a", "lb/b", "lb/c"]);
        assert_eq!(keys("lb/", 2), ["lb/a", "lb/b"]);
        assert_eq!(keys("", 10).len(), 5);
        assert!(keys("zz", 10).is_empty());
    }

    #[tokio::test]
    async fn corrupt_records_are_errors_not_panics() {
        let directory = TempDir::new().unwrap();
        let path = directory.path().join("meta.redb");
        let (mut log_store, mut state_machine, reader) = open(&path).unwrap();
        {
            let transaction = log_store.database.begin_write().unwrap();
            {
                let mut log = transaction.open_table(LOG).unwrap();
                log.insert(1, [0xffu8; 3].as_slice()).unwrap();
                let mut catalog = transaction.open_table(CATALOG).unwrap();
                catalog.insert("bad", [0xffu8; 3].as_slice()).unwrap();
                let mut meta = transaction.open_table(LOG_META).unwrap();
                meta.insert(VOTE_KEY, [0xffu8].as_slice()).unwrap();
            }
            transaction.commit().unwrap();
        }
        let error = log_store.try_get_log_entries(0..5).await.unwrap_err();
        assert!(error.to_string().contains("log entry 1"), "{error}");
        assert!(log_store.read_vote().await.is_err());
        let error = reader.get("bad").unwrap_err();
        assert!(error.to_string().contains("meta.redb"), "{error}");
        assert!(
            state_machine
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .is_err()
        );

        std::fs::write(snapshot_path_for(&path), b"BRSNAP01 not really").unwrap();
        assert!(state_machine.get_current_snapshot().await.is_err());
    }

    #[tokio::test]
    async fn a_large_catalog_builds_a_snapshot() {
        const KEYS: u64 = 100_000;
        const BATCH: u64 = 10_000;
        let directory = TempDir::new().unwrap();
        let (_, mut state_machine, reader) = open_in(&directory);
        for start in (1..=KEYS).step_by(BATCH as usize) {
            let batch = (start..start + BATCH)
                .map(|index| put(index, &format!("service/{index:08}"), &index.to_le_bytes()));
            state_machine.apply(batch).await.unwrap();
        }
        assert_eq!(reader.len().unwrap(), KEYS as usize);
        let snapshot = state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, KEYS)));

        let other_directory = TempDir::new().unwrap();
        let (_, mut other, other_reader) = open_in(&other_directory);
        other
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(other_reader.len().unwrap(), KEYS as usize);
        assert_eq!(
            other_reader
                .get("service/00054321")
                .unwrap()
                .unwrap()
                .version,
            54321
        );
    }
}
