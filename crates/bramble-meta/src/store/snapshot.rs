//! Snapshots: the whole state machine in one file (`<path>.snapshot`, a header with a
//! magic, lengths and a SHA-256, then postcard), built from one read transaction, saved
//! atomically, installed from a leader, and guarded by a floor against stale files.

use super::*;

impl Shared {
    /// Reads the whole state machine from one read transaction, so the snapshot is a
    /// consistent point in time even while entries keep being applied.
    pub(super) fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, MetaStoreError> {
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
    pub(super) fn next_snapshot_id(
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
    pub(super) fn install_snapshot(
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

    pub(super) fn save_snapshot(
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

    pub(super) fn snapshot_floor(&self) -> Result<Option<LogId<NodeId>>, MetaStoreError> {
        let path = &*self.path;
        let transaction = self.database.begin_read().map_err(database_error(path))?;
        let state = transaction
            .open_table(STATE_META)
            .map_err(database_error(path))?;
        Ok(get_record::<Option<LogId<NodeId>>, _>(&state, path, SNAPSHOT_FLOOR_KEY)?.flatten())
    }

    pub(super) fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, MetaStoreError> {
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
pub(super) enum SaveRule {
    /// An installed snapshot is the state machine's new state: it is always saved.
    Always,
    /// A built snapshot is dropped if a snapshot further along was saved meanwhile.
    UnlessNewerSaved,
}

/// Checks the magic and returns the metadata length; None for a foreign or short file.
pub(super) fn parse_snapshot_header(contents: &[u8]) -> Option<u64> {
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
pub(super) fn read_saved_snapshot_log_id(path: &Path) -> Option<Option<LogId<NodeId>>> {
    let mut file = File::open(path).ok()?;
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    file.read_exact(&mut header).ok()?;
    let meta_length = parse_snapshot_header(&header)?;
    let mut meta_bytes = Vec::new();
    file.take(meta_length).read_to_end(&mut meta_bytes).ok()?;
    let meta: SnapshotMeta<NodeId, MetaNode> = postcard::from_bytes(&meta_bytes).ok()?;
    Some(meta.last_log_id)
}
