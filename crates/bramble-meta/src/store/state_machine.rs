//! The state machine: applying committed commands to the catalog in one transaction per
//! batch, and openraft's state machine and snapshot builder handles.

use super::*;

impl Shared {
    pub(super) fn applied_state(&self) -> Result<AppliedState, MetaStoreError> {
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
    pub(super) fn apply_entries(
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
        let mut transaction = self.database.begin_write().map_err(database_error(path))?;
        // Without an fsync of its own: see "The state machine is written without an fsync"
        // in the module's documentation.
        transaction
            .set_durability(Durability::None)
            .map_err(database_error(path))?;
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

    pub(super) fn announce(&self, changes: Vec<Change>) {
        self.watches.announce(&changes);
    }
}

/// Applies one command to the catalog inside the batch's transaction. Commands that break
/// a bound are rejected, not failed: the entry is committed either way, and failing would
/// stop the node on every replay.
pub(super) fn apply_command(
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
        Command::Group(commands) => {
            let mut results = Vec::with_capacity(commands.len());
            for command in commands {
                results.push(apply_command(catalog, path, command, version, changes)?);
            }
            Ok(CommandResult::Group(results))
        }
        Command::Put { key, value } => {
            write_key(catalog, path, key, value, version, changes)?;
            Ok(CommandResult::Written { version })
        }
        Command::PutIfVersion {
            key,
            value,
            expected_version,
        } => {
            let current_version = current_version(catalog, path, &key)?;
            if current_version != expected_version {
                return Ok(CommandResult::VersionMismatch { current_version });
            }
            write_key(catalog, path, key, value, version, changes)?;
            Ok(CommandResult::Written { version })
        }
        Command::Delete { key } => {
            // Deleting a missing key changes nothing, so watchers are not told about it.
            let existed = delete_key(catalog, path, key, version, changes)?;
            Ok(CommandResult::Deleted { existed })
        }
        Command::Batch {
            conditions,
            operations,
        } => {
            for condition in &conditions {
                let current_version = current_version(catalog, path, &condition.key)?;
                if current_version != condition.version {
                    return Ok(CommandResult::ConditionFailed {
                        key: condition.key.clone(),
                        current_version,
                    });
                }
            }
            let mut deleted = 0u64;
            for operation in operations {
                match operation {
                    Operation::Put { key, value } => {
                        write_key(catalog, path, key, value, version, changes)?;
                    }
                    Operation::Delete { key } => {
                        if delete_key(catalog, path, key, version, changes)? {
                            deleted += 1;
                        }
                    }
                    Operation::DeletePrefix { prefix } => {
                        let mut doomed = Vec::new();
                        for item in catalog
                            .range(prefix.as_str()..)
                            .map_err(database_error(path))?
                        {
                            let (key, _) = item.map_err(database_error(path))?;
                            let key = key.value();
                            if !key.starts_with(prefix.as_str()) {
                                break;
                            }
                            doomed.push(key.to_string());
                        }
                        for key in doomed {
                            if delete_key(catalog, path, key, version, changes)? {
                                deleted += 1;
                            }
                        }
                    }
                }
            }
            Ok(CommandResult::BatchApplied { version, deleted })
        }
    }
}

fn current_version(
    catalog: &redb::Table<&'static str, &'static [u8]>,
    path: &Path,
    key: &str,
) -> Result<u64, MetaStoreError> {
    match catalog.get(key).map_err(database_error(path))? {
        Some(guard) => {
            Ok(
                decode::<VersionedValue>(path, guard.value(), || format!("catalog key {key:?}"))?
                    .version,
            )
        }
        None => Ok(0),
    }
}

/// Removes `key`; true if it existed (only then are watchers told).
fn delete_key(
    catalog: &mut redb::Table<&'static str, &'static [u8]>,
    path: &Path,
    key: String,
    version: u64,
    changes: &mut Vec<Change>,
) -> Result<bool, MetaStoreError> {
    let existed = catalog
        .remove(key.as_str())
        .map_err(database_error(path))?
        .is_some();
    if existed {
        changes.push(Change::Key {
            key,
            value: None,
            version,
        });
    }
    Ok(existed)
}

pub(super) fn write_key(
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
pub(super) async fn run_blocking<T, Work>(work: Work) -> Result<T, MetaStoreError>
where
    T: Send + 'static,
    Work: FnOnce() -> Result<T, MetaStoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await?
}

/// The Raft state machine: the catalog. See the module documentation for why every apply
/// batch is one durable transaction.
pub struct StateMachineStore {
    pub(super) shared: Arc<Shared>,
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
