//! The names in a volume: looking a path up, listing a directory, creating directories,
//! removing and renaming — every change one catalog batch, so it is atomic: a rename
//! never shows the file at both names or at neither, and a remove never leaves half a
//! directory. Blocks of removed or replaced files are deleted from their bricks after the
//! change commits (a brick that is away keeps them until a later clean-up; they are
//! unreferenced, never visible).
//!
//! Reads here are linearizable (through the Raft leader): a file written through one
//! node is seen at once through every other.

use bramble_meta::api::{Consistency, ScanRequest};
use bramble_meta::types::{Command, CommandResult, Condition, MAX_BATCH_OPERATIONS, Operation};
use bramble_net::{ErrorKind, RpcError};

use crate::admin::{ContentListing, EntryKind, FsEntry, ListedContent, Listing, MAX_LIST_PAGE};
use crate::file::{DirectoryRecord, FileRecord, StoredEntry, now_ns};
use crate::keys;
use crate::node::Storage;
use crate::paths;

/// What a path names.
#[derive(Debug, Clone)]
pub enum Found {
    File {
        record: FileRecord,
        version: u64,
    },
    /// Made by `mkdir`; it may hold entries too.
    ExplicitDirectory {
        record: DirectoryRecord,
        version: u64,
    },
    /// A directory only because entries live below it (or the root).
    ImplicitDirectory,
}

impl Found {
    pub fn is_directory(&self) -> bool {
        !matches!(self, Found::File { .. })
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<StoredEntry, RpcError> {
    StoredEntry::decode(bytes).map_err(|error| RpcError::internal(format!("{key}: {error}")))
}

/// Looks `path` up (normalized; empty for the root).
pub async fn lookup(
    storage: &Storage,
    volume: &str,
    path: &str,
    consistency: Consistency,
) -> Result<Option<Found>, RpcError> {
    if path.is_empty() {
        return Ok(Some(Found::ImplicitDirectory));
    }
    let file_key = keys::file_key(volume, path);
    let directory_key = keys::directory_key(volume, path);
    // One scan answers in one quorum round: the file's own key, its directory marker and
    // its first entries all start with the file key. Siblings whose names extend this one
    // with a character sorting before '/' (`b-2`, `b.txt` next to `b`) come between; if
    // a page of them hides the answer, two exact reads settle it. A key past the
    // directory's range ends the search (keys come in order). The page is short because
    // a small file's record carries its bytes: 64 siblings were 256 KiB read for one
    // lookup.
    const PAGE: u32 = 8;
    let page = storage
        .meta
        .scan(ScanRequest {
            prefix: file_key.clone(),
            start_after: None,
            delimiter: None,
            limit: PAGE,
            consistency,
            forwarded: false,
        })
        .await?;
    for (key, value) in &page.entries {
        if *key == file_key || *key == directory_key {
            return Ok(Some(match decode(key, &value.value)? {
                StoredEntry::File(record) => Found::File {
                    record,
                    version: value.version,
                },
                StoredEntry::Directory(record) => Found::ExplicitDirectory {
                    record,
                    version: value.version,
                },
            }));
        }
        if key.starts_with(&directory_key) {
            return Ok(Some(Found::ImplicitDirectory));
        }
        if key.as_str() > directory_key.as_str() {
            // Past where the file's key and its directory's keys would be.
            return Ok(None);
        }
    }
    if page.next_start_after.is_none() {
        return Ok(None);
    }
    if let Some(found) = storage.meta.read(&file_key, consistency, false).await? {
        return Ok(Some(match decode(&file_key, &found.value)? {
            StoredEntry::File(record) => Found::File {
                record,
                version: found.version,
            },
            StoredEntry::Directory(record) => Found::ExplicitDirectory {
                record,
                version: found.version,
            },
        }));
    }
    let page = storage
        .meta
        .scan(ScanRequest {
            prefix: directory_key.clone(),
            start_after: None,
            delimiter: None,
            limit: 1,
            consistency,
            forwarded: false,
        })
        .await?;
    Ok(match page.entries.first() {
        None => None,
        Some((key, value)) if *key == directory_key => match decode(key, &value.value)? {
            StoredEntry::Directory(record) => Some(Found::ExplicitDirectory {
                record,
                version: value.version,
            }),
            StoredEntry::File(_) => Some(Found::ImplicitDirectory),
        },
        Some(_) => Some(Found::ImplicitDirectory),
    })
}

pub fn entry_of_file(path: &str, record: &FileRecord, version: u64) -> FsEntry {
    FsEntry {
        path: path.to_string(),
        kind: EntryKind::File,
        size: record.size,
        modified_ns: record.modified_ns,
        mode: record.mode,
        blocks: record.blocks.len() as u32,
        version,
        user_metadata: record.user_metadata.clone(),
    }
}

fn entry_of_found(path: &str, found: &Found) -> FsEntry {
    match found {
        Found::File { record, version } => entry_of_file(path, record, *version),
        Found::ExplicitDirectory { record, version } => FsEntry {
            path: path.to_string(),
            kind: EntryKind::Directory,
            size: 0,
            modified_ns: record.modified_ns,
            mode: record.mode,
            blocks: 0,
            version: *version,
            user_metadata: Vec::new(),
        },
        Found::ImplicitDirectory => FsEntry::bare_directory(path),
    }
}

/// The bytes a listing carries for a file: those kept in its record, when they match
/// their hash.
fn inline_bytes(record: &FileRecord) -> Option<Vec<u8>> {
    Some(record.inline.as_ref()?.checked().ok()?.to_vec())
}

fn not_found(volume: &str, path: &str) -> RpcError {
    RpcError::new(
        ErrorKind::NotFound,
        format!("{volume}:/{path} does not exist"),
    )
}

fn normalize(path: &str) -> Result<String, RpcError> {
    paths::normalize(path).map_err(|error| RpcError::bad_request(error.to_string()))
}

impl Storage {
    pub async fn stat(&self, volume: &str, path: &str) -> Result<FsEntry, RpcError> {
        let spec = self.started_volume(volume).await?;
        let path = normalize(path)?;
        match lookup(self, &spec.name, &path, Consistency::Linearizable).await? {
            Some(found) => Ok(entry_of_found(&path, &found)),
            None => Err(not_found(volume, &path)),
        }
    }

    /// One page of a directory's entries, in name order.
    pub async fn list(
        &self,
        volume: &str,
        path: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Listing, RpcError> {
        Ok(self
            .list_page(volume, path, start_after, limit, false)
            .await?
            .listing)
    }

    /// One page of a directory's entries, in name order, and with `with_content` the
    /// bytes of the small files whose records keep them (checked against their hash; a
    /// record whose bytes fail the check is listed without them, and a read of it reports
    /// the damage).
    pub async fn list_page(
        &self,
        volume: &str,
        path: &str,
        start_after: Option<&str>,
        limit: u32,
        with_content: bool,
    ) -> Result<ContentListing, RpcError> {
        let spec = self.started_volume(volume).await?;
        let path = normalize(path)?;
        if !(1..=MAX_LIST_PAGE).contains(&limit) {
            return Err(RpcError::bad_request(format!(
                "a listing page holds 1 to {MAX_LIST_PAGE} entries"
            )));
        }
        match lookup(self, &spec.name, &path, Consistency::Linearizable).await? {
            None => return Err(not_found(volume, &path)),
            Some(Found::File { record, version }) => {
                let contents = with_content
                    .then(|| inline_bytes(&record))
                    .flatten()
                    .map(|bytes| ListedContent { entry: 0, bytes })
                    .into_iter()
                    .collect();
                return Ok(ContentListing {
                    listing: Listing {
                        entries: vec![entry_of_file(&path, &record, version)],
                        next_start_after: None,
                    },
                    contents,
                });
            }
            Some(_) => {}
        }
        let prefix = keys::directory_key(&spec.name, &path);
        let start_after = match start_after {
            Some(after) => Some(keys::file_key(&spec.name, &normalize(after)?)),
            None => None,
        };
        let page = self
            .meta
            .scan(ScanRequest {
                prefix: prefix.clone(),
                start_after,
                delimiter: Some('/'),
                limit,
                consistency: Consistency::Linearizable,
                forwarded: false,
            })
            .await?;
        // Each entry with the bytes it carries (small files, when asked for).
        let mut listed: Vec<(FsEntry, Option<Vec<u8>>)> = Vec::new();
        for (key, value) in &page.entries {
            if *key == prefix {
                continue;
            }
            let Some(entry_path) = keys::path_of_key(&spec.name, key) else {
                continue;
            };
            if let StoredEntry::File(record) = decode(key, &value.value)? {
                let bytes = with_content.then(|| inline_bytes(&record)).flatten();
                listed.push((entry_of_file(entry_path, &record, value.version), bytes));
            }
        }
        for common in &page.common_prefixes {
            let Some(entry_path) = keys::path_of_key(&spec.name, common) else {
                continue;
            };
            let entry_path = entry_path.trim_end_matches('/');
            // An explicit directory's record holds its time; a local read is enough.
            let found = match self.meta.read(common, Consistency::Stale, false).await? {
                Some(value) => match decode(common, &value.value)? {
                    StoredEntry::Directory(record) => Found::ExplicitDirectory {
                        record,
                        version: value.version,
                    },
                    StoredEntry::File(_) => Found::ImplicitDirectory,
                },
                None => Found::ImplicitDirectory,
            };
            listed.push((entry_of_found(entry_path, &found), None));
        }
        // Directories join the files in name order, and the bytes stay with their entry.
        listed.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        let mut entries = Vec::with_capacity(listed.len());
        let mut contents = Vec::new();
        for (index, (entry, bytes)) in listed.into_iter().enumerate() {
            entries.push(entry);
            if let Some(bytes) = bytes {
                contents.push(ListedContent {
                    entry: index as u32,
                    bytes,
                });
            }
        }
        Ok(ContentListing {
            listing: Listing {
                entries,
                next_start_after: page
                    .next_start_after
                    .as_deref()
                    .and_then(|key| keys::path_of_key(&spec.name, key))
                    .map(|path| path.trim_end_matches('/').to_string()),
            },
            contents,
        })
    }

    pub async fn mkdir(
        &self,
        volume: &str,
        path: &str,
        exist_ok: bool,
        mode: u32,
    ) -> Result<FsEntry, RpcError> {
        let spec = self.started_volume(volume).await?;
        let path = paths::normalize_entry(path)
            .map_err(|error| RpcError::bad_request(error.to_string()))?;
        match lookup(self, &spec.name, &path, Consistency::Linearizable).await? {
            Some(found @ (Found::ExplicitDirectory { .. } | Found::ImplicitDirectory))
                if exist_ok =>
            {
                return Ok(entry_of_found(&path, &found));
            }
            Some(_) => {
                return Err(RpcError::new(
                    ErrorKind::AlreadyExists,
                    format!("{volume}:/{path} exists"),
                ));
            }
            None => {}
        }
        self.check_parents_are_directories(&spec, &path).await?;
        let record = DirectoryRecord {
            modified_ns: now_ns(),
            mode: mode & 0o7777,
        };
        let marker = keys::directory_key(&spec.name, &path);
        let command = Command::Batch {
            conditions: vec![
                Condition {
                    key: keys::file_key(&spec.name, &path),
                    version: 0,
                },
                Condition {
                    key: marker.clone(),
                    version: 0,
                },
            ],
            operations: vec![Operation::Put {
                key: marker,
                value: StoredEntry::Directory(record.clone()).encode(),
            }],
        };
        match self.commit(command).await? {
            CommandResult::BatchApplied { version, .. } => Ok(entry_of_found(
                &path,
                &Found::ExplicitDirectory { record, version },
            )),
            _ => Err(RpcError::new(
                ErrorKind::AlreadyExists,
                format!("{volume}:/{path} was created meanwhile"),
            )),
        }
    }

    /// Every key under `prefix` with its record, in pages (for removals and renames).
    async fn keys_under(
        &self,
        prefix: &str,
        most: usize,
    ) -> Result<Vec<(String, u64, StoredEntry)>, RpcError> {
        self.scan_all(prefix, most)
            .await?
            .into_iter()
            .map(|(key, value)| {
                let entry = decode(&key, &value.value)?;
                Ok((key, value.version, entry))
            })
            .collect()
    }

    /// Removes a file, or a directory (`recursive` for one that is not empty). Returns the
    /// number of files removed.
    pub async fn remove(&self, volume: &str, path: &str, recursive: bool) -> Result<u64, RpcError> {
        self.remove_checked(volume, path, recursive, None, false)
            .await
    }

    /// [`Storage::remove`], refusing with `WrongType` when the path is not of the
    /// `expect`ed kind (`unlink` of a directory, `rmdir` of a file). `confirmed`: the
    /// lookup goes through the leader (a retry after a stale answer).
    pub async fn remove_checked(
        &self,
        volume: &str,
        path: &str,
        recursive: bool,
        expect: Option<EntryKind>,
        confirmed: bool,
    ) -> Result<u64, RpcError> {
        let spec = self.started_volume(volume).await?;
        let path = normalize(path)?;
        let reach = self.reach().await;
        // This node's replica first: removing a file is a change conditioned on the
        // version found, so a stale answer only costs a retry through the leader.
        let first = if confirmed {
            Consistency::Linearizable
        } else {
            Consistency::Stale
        };
        let mut found = lookup(self, &spec.name, &path, first).await?;
        if !confirmed && !matches!(found, Some(Found::File { .. })) {
            found = lookup(self, &spec.name, &path, Consistency::Linearizable).await?;
        }
        if let Some(expected) = expect {
            let is_directory = found.as_ref().is_some_and(Found::is_directory);
            match (expected, is_directory, &found) {
                (_, _, None) => {}
                (EntryKind::File, true, _) => {
                    return Err(RpcError::new(
                        ErrorKind::WrongType,
                        format!("{volume}:/{path} is a directory"),
                    ));
                }
                (EntryKind::Directory, false, _) => {
                    return Err(RpcError::new(
                        ErrorKind::WrongType,
                        format!("{volume}:/{path} is not a directory"),
                    ));
                }
                _ => {}
            }
        }
        match found {
            None => Err(not_found(volume, &path)),
            Some(Found::File { record, version }) => {
                let key = keys::file_key(&spec.name, &path);
                let command = Command::Batch {
                    conditions: vec![Condition {
                        key: key.clone(),
                        version,
                    }],
                    operations: vec![Operation::Delete { key }],
                };
                match self.commit(command).await? {
                    CommandResult::BatchApplied { .. } => {
                        self.discard_committed(&spec, record.block_ids(), &reach)
                            .await;
                        Ok(1)
                    }
                    // Replaced meanwhile (or this replica was behind): decide again
                    // through the leader.
                    _ if !confirmed => {
                        Box::pin(self.remove_checked(volume, &path, recursive, expect, true)).await
                    }
                    _ => Err(RpcError::new(
                        ErrorKind::Unavailable,
                        format!("{volume}:/{path} changed meanwhile; try again"),
                    )),
                }
            }
            Some(_) => {
                let prefix = keys::directory_key(&spec.name, &path);
                let inside = self.keys_under(&prefix, usize::MAX - 1).await?;
                let holds_entries = inside.iter().any(|(key, _, _)| *key != prefix);
                if holds_entries && !recursive {
                    return Err(RpcError::new(
                        ErrorKind::NotEmpty,
                        format!("{volume}:/{path} is not empty (use --recursive)"),
                    ));
                }
                if path.is_empty() && !recursive {
                    return Err(RpcError::bad_request("the root cannot be removed"));
                }
                if inside.is_empty() {
                    // An implicit directory with nothing in it is already gone.
                    return Ok(0);
                }
                let command = Command::Batch {
                    conditions: Vec::new(),
                    operations: vec![Operation::DeletePrefix { prefix }],
                };
                self.commit(command).await?;
                let mut removed = 0;
                for (_, _, entry) in inside {
                    if let StoredEntry::File(record) = entry {
                        removed += 1;
                        self.discard_committed(&spec, record.block_ids(), &reach)
                            .await;
                    }
                }
                Ok(removed)
            }
        }
    }

    /// Renames a file or a directory. A directory moves with everything in it in one
    /// change, up to what one catalog batch holds; a larger one is refused
    /// (`TooLarge`), which a mount reports as EXDEV so `mv` copies instead.
    pub async fn rename(
        &self,
        volume: &str,
        from: &str,
        to: &str,
        replace: bool,
    ) -> Result<FsEntry, RpcError> {
        let spec = self.started_volume(volume).await?;
        let bad = |error: paths::PathError| RpcError::bad_request(error.to_string());
        let from = paths::normalize_entry(from).map_err(bad)?;
        let to = paths::normalize_entry(to).map_err(bad)?;
        if from == to {
            return self.stat(volume, &from).await;
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(RpcError::bad_request(format!(
                "cannot move {from} into itself ({to})"
            )));
        }
        let source = lookup(self, &spec.name, &from, Consistency::Linearizable)
            .await?
            .ok_or_else(|| not_found(volume, &from))?;
        let target = lookup(self, &spec.name, &to, Consistency::Linearizable).await?;
        self.check_parents_are_directories(&spec, &to).await?;
        let reach = self.reach().await;
        match source {
            Found::File { record, version } => {
                let (target_version, replaced) = match target {
                    None => (0, None),
                    Some(Found::File {
                        record: old,
                        version,
                    }) if replace => (version, Some(old)),
                    Some(Found::File { .. }) => {
                        return Err(RpcError::new(
                            ErrorKind::AlreadyExists,
                            format!("{volume}:/{to} exists"),
                        ));
                    }
                    Some(_) => {
                        return Err(RpcError::new(
                            ErrorKind::WrongType,
                            format!("{volume}:/{to} is a directory"),
                        ));
                    }
                };
                let from_key = keys::file_key(&spec.name, &from);
                let to_key = keys::file_key(&spec.name, &to);
                let command = Command::Batch {
                    conditions: vec![
                        Condition {
                            key: from_key.clone(),
                            version,
                        },
                        Condition {
                            key: to_key.clone(),
                            version: target_version,
                        },
                    ],
                    operations: vec![
                        Operation::Put {
                            key: to_key,
                            value: StoredEntry::File(record.clone()).encode(),
                        },
                        Operation::Delete { key: from_key },
                    ],
                };
                match self.commit(command).await? {
                    CommandResult::BatchApplied { version, .. } => {
                        if let Some(old) = replaced {
                            self.discard_committed(&spec, old.block_ids(), &reach).await;
                        }
                        Ok(entry_of_file(&to, &record, version))
                    }
                    _ => Err(RpcError::new(
                        ErrorKind::Unavailable,
                        format!("{volume}:/{from} or {to} changed meanwhile; try again"),
                    )),
                }
            }
            Found::ExplicitDirectory { .. } | Found::ImplicitDirectory => {
                if target.is_some() {
                    return Err(RpcError::new(
                        ErrorKind::AlreadyExists,
                        format!("{volume}:/{to} exists"),
                    ));
                }
                let from_prefix = keys::directory_key(&spec.name, &from);
                let to_prefix = keys::directory_key(&spec.name, &to);
                let most = MAX_BATCH_OPERATIONS / 2;
                let inside = self.keys_under(&from_prefix, most).await?;
                if inside.len() > most {
                    return Err(RpcError::new(
                        ErrorKind::TooLarge,
                        format!(
                            "{volume}:/{from} holds over {most} entries, more than one atomic rename moves"
                        ),
                    ));
                }
                let mut operations = Vec::with_capacity(inside.len() * 2);
                for (key, _, entry) in &inside {
                    let renamed = format!("{to_prefix}{}", &key[from_prefix.len()..]);
                    operations.push(Operation::Put {
                        key: renamed,
                        value: entry.encode(),
                    });
                    operations.push(Operation::Delete { key: key.clone() });
                }
                let command = Command::Batch {
                    conditions: vec![
                        Condition {
                            key: keys::file_key(&spec.name, &to),
                            version: 0,
                        },
                        Condition {
                            key: to_prefix.clone(),
                            version: 0,
                        },
                    ],
                    operations,
                };
                if let Err(error) = bramble_meta::types::Command::validate(&command) {
                    return Err(RpcError::new(
                        ErrorKind::TooLarge,
                        format!("{volume}:/{from} is too large to rename at once: {error}"),
                    ));
                }
                match self.commit(command).await? {
                    CommandResult::BatchApplied { .. } => self.stat(volume, &to).await,
                    _ => Err(RpcError::new(
                        ErrorKind::AlreadyExists,
                        format!("{volume}:/{to} was created meanwhile"),
                    )),
                }
            }
        }
    }
}
