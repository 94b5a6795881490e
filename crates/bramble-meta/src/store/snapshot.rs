//! Snapshots: the whole state machine in one file (`<path>.snapshot`, a header with a
//! magic, lengths and a SHA-256, then postcard), built from one read transaction, saved
//! atomically, installed from a leader, and guarded by a floor against stale files.

use super::*;

impl Shared {
    /// Writes the whole state machine, from one read transaction, straight into the
    /// snapshot file, so the snapshot is a consistent point in time even while entries
    /// keep being applied. Entries are streamed one at a time: holding a large catalog
    /// whole (decoded, then encoded, then framed) took about six times its size at once,
    /// and the allocator kept that peak as the agent's resident memory afterwards.
    pub(super) fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, MetaStoreError> {
        let path = &*self.path;
        let transaction = self.database.begin_read().map_err(database_error(path))?;
        let state = transaction
            .open_table(STATE_META)
            .map_err(database_error(path))?;
        let last_applied = get_last_applied(&state, path)?;
        let last_membership: StoredMembership<NodeId, MetaNode> =
            get_record(&state, path, LAST_MEMBERSHIP_KEY)?.unwrap_or_default();
        let table = transaction
            .open_table(CATALOG)
            .map_err(database_error(path))?;
        let keys = table.len().map_err(database_error(path))?;
        let write_body = |out: &mut dyn Write| -> Result<(), MetaStoreError> {
            let mut record = Vec::new();
            let put = |record: &mut Vec<u8>, out: &mut dyn Write| {
                out.write_all(record)
                    .map_err(|source| self.snapshot_write_error(source))?;
                record.clear();
                Ok::<(), MetaStoreError>(())
            };
            // The same bytes as postcard-encoding a `SnapshotContents`: postcard writes a
            // struct as its fields in order, and a sequence as its length (a varint, like
            // a `usize`) followed by its elements.
            encode_into(&mut record, path, &last_applied, || "last applied".into())?;
            encode_into(&mut record, path, &last_membership, || "membership".into())?;
            let count = usize::try_from(keys).map_err(|_| MetaStoreError::Inconsistent {
                path: path.to_path_buf(),
                reason: format!("the catalog holds {keys} keys"),
            })?;
            encode_into(&mut record, path, &count, || "the key count".into())?;
            put(&mut record, out)?;
            let mut written = 0u64;
            for item in table.iter().map_err(database_error(path))? {
                let (key, bytes) = item.map_err(database_error(path))?;
                let key = key.value();
                // Decoded, not copied, so a corrupt record stops the build here instead of
                // spreading to every follower.
                let value: VersionedValue =
                    decode(path, bytes.value(), || format!("catalog key {key:?}"))?;
                encode_into(&mut record, path, &(key, &value), || {
                    format!("catalog key {key:?}")
                })?;
                put(&mut record, out)?;
                written += 1;
            }
            if written != keys {
                return Err(MetaStoreError::Inconsistent {
                    path: path.to_path_buf(),
                    reason: format!("the catalog said {keys} keys but held {written}"),
                });
            }
            Ok(())
        };

        let snapshot_id = self.next_snapshot_id(last_applied)?;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: last_membership.clone(),
            snapshot_id,
        };
        self.save_snapshot_with(&meta, SaveRule::UnlessNewerSaved, &write_body)?;
        // openraft keeps only the metadata of a built snapshot, but the data must match
        // it: read back from the file just written, or, if a newer snapshot replaced it
        // meanwhile, encoded again from the same read transaction.
        let data = match self.read_snapshot_file()? {
            Some(saved) if saved.meta.snapshot_id == meta.snapshot_id => {
                saved.snapshot.into_inner()
            }
            _ => {
                let mut body = Vec::new();
                write_body(&mut body)?;
                body
            }
        };
        tracing::info!(
            snapshot = %meta.snapshot_id,
            keys,
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
        let corrupt = |source| MetaStoreError::Corrupt {
            path: path.to_path_buf(),
            what: format!("the received snapshot {}", meta.snapshot_id),
            source,
        };
        // Decoded one entry at a time, straight into the new catalog table, so installing
        // holds the received bytes and one entry, never the whole catalog decoded.
        let (last_applied, rest): (Option<LogId<NodeId>>, _) =
            postcard::take_from_bytes(&data).map_err(corrupt)?;
        let (last_membership, rest): (StoredMembership<NodeId, MetaNode>, _) =
            postcard::take_from_bytes(rest).map_err(corrupt)?;
        let (count, mut rest): (usize, _) = postcard::take_from_bytes(rest).map_err(corrupt)?;
        if last_applied != meta.last_log_id || last_membership != meta.last_membership {
            return Err(MetaStoreError::Inconsistent {
                path: path.to_path_buf(),
                reason: format!(
                    "snapshot {} holds state up to {:?}, but its metadata says {:?}",
                    meta.snapshot_id, last_applied, meta.last_log_id
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
            // Each entry consumes at least a byte, so a forged count cannot loop for
            // longer than the data lasts.
            let mut record = Vec::new();
            for _ in 0..count {
                let ((key, value), remaining): ((&str, VersionedValue), _) =
                    postcard::take_from_bytes(rest).map_err(corrupt)?;
                rest = remaining;
                record.clear();
                encode_into(&mut record, path, &value, || format!("catalog key {key:?}"))?;
                catalog
                    .insert(key, record.as_slice())
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
            keys = count,
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
        self.save_snapshot_with(meta, rule, &|out: &mut dyn Write| {
            out.write_all(data)
                .map_err(|source| self.snapshot_write_error(source))
        })
    }

    /// An I/O error while writing the snapshot file, naming it.
    fn snapshot_write_error(&self, source: io::Error) -> MetaStoreError {
        FileError::Io {
            path: self.snapshot_path.clone(),
            source,
        }
        .into()
    }

    /// Saves a snapshot file whose body `write_body` streams: the header's digest is
    /// computed on the way and filled in last, and the file replaces the saved one
    /// atomically, unless `rule` keeps a newer one.
    pub(super) fn save_snapshot_with(
        &self,
        meta: &SnapshotMeta<NodeId, MetaNode>,
        rule: SaveRule,
        write_body: &dyn Fn(&mut dyn Write) -> Result<(), MetaStoreError>,
    ) -> Result<(), MetaStoreError> {
        let meta_bytes = encode(&self.snapshot_path, meta, || {
            "the snapshot metadata".to_string()
        })?;
        let meta_length =
            u32::try_from(meta_bytes.len()).map_err(|_| MetaStoreError::Inconsistent {
                path: self.snapshot_path.clone(),
                reason: format!("the snapshot metadata is {} bytes", meta_bytes.len()),
            })?;

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
        let io_error = |source| self.snapshot_write_error(source);
        files::write_atomic_with(&self.snapshot_path, Visibility::Private, |file| {
            file.write_all(&[0; SNAPSHOT_HEADER_BYTES])
                .map_err(io_error)?;
            let digest = {
                let mut out = DigestingWriter {
                    inner: io::BufWriter::new(&mut *file),
                    digest: ring::digest::Context::new(&ring::digest::SHA256),
                };
                out.write_all(&meta_bytes).map_err(io_error)?;
                write_body(&mut out)?;
                out.inner.flush().map_err(io_error)?;
                out.digest.finish()
            };
            let mut header = Vec::with_capacity(SNAPSHOT_HEADER_BYTES);
            header.extend_from_slice(SNAPSHOT_MAGIC);
            header.extend_from_slice(&meta_length.to_le_bytes());
            header.extend_from_slice(digest.as_ref());
            file.seek(io::SeekFrom::Start(0)).map_err(io_error)?;
            file.write_all(&header).map_err(io_error)?;
            Ok::<(), MetaStoreError>(())
        })
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
        let Some(snapshot) = self.read_snapshot_file()? else {
            return Ok(None);
        };
        if snapshot.meta.last_log_id < self.snapshot_floor()? {
            tracing::warn!(
                snapshot = %snapshot.meta.snapshot_id,
                "ignoring a snapshot file older than the last installed snapshot"
            );
            return Ok(None);
        }
        Ok(Some(snapshot))
    }

    /// The saved snapshot file's metadata and data, checked against its digest; None if
    /// there is no file.
    fn read_snapshot_file(&self) -> Result<Option<Snapshot<TypeConfig>>, MetaStoreError> {
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
        // Keep only the data, without copying it into a new buffer.
        contents.drain(..SNAPSHOT_HEADER_BYTES + meta_length);
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(contents)),
        }))
    }
}

/// Passes writes through while hashing them, for the snapshot header's digest.
struct DigestingWriter<W: Write> {
    inner: W,
    digest: ring::digest::Context,
}

impl<W: Write> Write for DigestingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.digest.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
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
