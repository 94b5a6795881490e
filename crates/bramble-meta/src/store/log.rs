//! The Raft log and vote in redb.

use super::*;

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
    pub(super) database: Arc<Database>,
    pub(super) path: Arc<Path>,
    /// Counts every vote saved (shared with the reader): a leader's read lease holds only
    /// while this node has saved no vote since the lease began (see `Meta`'s read lease).
    pub(super) votes_saved: Arc<AtomicU64>,
}

impl LogStore {
    pub(super) fn read_record<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, MetaStoreError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(database_error(&self.path))?;
        let table = transaction
            .open_table(LOG_META)
            .map_err(database_error(&self.path))?;
        get_record(&table, &self.path, key)
    }

    pub(super) fn write_record<T: Serialize>(
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

    pub(super) fn read_entries(
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

    pub(super) fn log_state(&self) -> Result<LogState<TypeConfig>, MetaStoreError> {
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

    pub(super) fn append_entries(
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
    pub(super) fn remove_from(&self, index: u64) -> Result<(), MetaStoreError> {
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
    pub(super) fn remove_through(&self, log_id: LogId<NodeId>) -> Result<(), MetaStoreError> {
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
pub(super) fn decode_entry(
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
        // Counted before the vote is stored, and so before anyone can be told of it.
        self.votes_saved.fetch_add(1, Ordering::SeqCst);
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
