//! Changing part of an existing file: a range of bytes replaced or added, the file cut or
//! extended to a size, without sending the file whole. `bramble mount` needs it for
//! `dd conv=notrunc`, `truncate -s`, appends to large files, and programs that write in
//! place (databases, editors, `pwrite`).
//!
//! A patch is copy-on-write at block granularity. The blocks the change touches are
//! rebuilt — old bytes read (and checked against their hashes), new bytes laid over them,
//! zeros where a hole opens — and stored under a new version (a rebuilt block that is all
//! zeros is recorded as [`BlockId::ZEROS`] and stored nowhere); every block the change does
//! not touch is kept by reference (`BlockRecord::id` names the block of the version that
//! wrote it, as a completed multipart upload refers to its parts' blocks). The new record
//! replaces the old one in one catalog change, conditional on the old record's catalog
//! version, so a reader sees the file before or after the patch, never a mix. When another
//! writer changed the file meanwhile, the patch is rebuilt on the new record: its bytes
//! are held (bounded by [`MAX_PATCH_BYTES`]), so concurrent patches of one file apply one
//! after the other, each byte range last-writer-wins. Blocks the old record referred to
//! and the new one does not are deleted after the commit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bramble_meta::api::Consistency;
use bramble_meta::types::{Command, CommandResult, Condition, Operation};
use bramble_net::{BodyReader, ErrorKind, Priority, RpcError};
use bytes::{Bytes, BytesMut};

use crate::admin::{FilePatchHeader, FilePutReply, METHOD_FILE_PATCH};
use crate::blocks::mux_error;
use crate::file::{
    BlockId, BlockRecord, FileRecord, INLINE_MAX_BYTES, InlineData, MAX_FILE_BLOCKS, StoredEntry,
    all_zeros, new_version, now_ns, zeros_hash,
};
use crate::keys;
use crate::namespace::entry_of_file;
use crate::node::{Reach, Storage};
use crate::paths;
use crate::volume::VolumeSpec;
use crate::write::{BlockOutcome, hints_for};

/// The wire protocol that brought patches and blocks of zeros: neither is used while a
/// node that speaks an older one is in the cluster (it could not apply the one or read the
/// other).
pub const PATCH_PROTOCOL: u32 = 2;

/// Most bytes one patch carries (the mount sends its dirty ranges in pieces this size).
pub const MAX_PATCH_BYTES: usize = 16 * 1024 * 1024;
/// How many times a patch is rebuilt when other nodes keep changing the file under it.
const PATCH_ATTEMPTS: usize = 12;
/// Files whose lock entries are kept before the unused ones are swept.
const LOCKS_BEFORE_SWEEP: usize = 1024;

/// One lock per file key being patched through this node; entries go when unused.
#[derive(Default)]
pub struct FileLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl FileLocks {
    /// Waits for this node's other patches of `key` to finish.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if locks.len() >= LOCKS_BEFORE_SWEEP {
                locks.retain(|_, lock| lock.strong_count() > 0);
            }
            match locks.get(key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(key.to_string(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

/// What a patch does to a file: first `resize` (cut or extend with zeros), then `data`
/// written at `offset` (zeros fill any gap between the end and `offset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub resize: Option<u64>,
    pub offset: u64,
    pub data: Bytes,
}

/// A piece of the patched file: an old block kept as it is, or a byte range rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Kept(usize),
    Rebuilt { start: u64, end: u64 },
}

impl Change {
    /// The file's size after the change to a file of `old_size` bytes.
    pub fn final_size(&self, old_size: u64) -> u64 {
        let base = self.resize.unwrap_or(old_size);
        if self.data.is_empty() {
            base
        } else {
            base.max(self.offset + self.data.len() as u64)
        }
    }

    /// Whether `[position, position + length)` of the patched file is only zeros made by
    /// the change (past the old bytes that survive, away from the written range).
    fn is_hole(&self, old: &FileRecord, position: u64, length: u64) -> bool {
        let surviving_end = old.size.min(self.resize.unwrap_or(old.size));
        let write_end = self.offset + self.data.len() as u64;
        position >= surviving_end
            && (self.data.is_empty() || position >= write_end || position + length <= self.offset)
    }

    /// The patched file as pieces in order: old blocks that keep every byte at the same
    /// place, and merged runs of bytes to rebuild (touched by the write, cut by a shrink,
    /// or a short last block that an extension fills up).
    fn pieces(&self, old: &FileRecord, block_size: u64) -> Vec<Piece> {
        let base = self.resize.unwrap_or(old.size);
        let final_size = self.final_size(old.size);
        let write_end = self.offset + self.data.len() as u64;
        let mut pieces: Vec<Piece> = Vec::new();
        let push_rebuilt = |pieces: &mut Vec<Piece>, start: u64, end: u64| {
            if end <= start {
                return;
            }
            if let Some(Piece::Rebuilt { end: last_end, .. }) = pieces.last_mut()
                && *last_end == start
            {
                *last_end = end;
                return;
            }
            pieces.push(Piece::Rebuilt { start, end });
        };
        let starts = old.block_starts();
        let mut covered = 0u64;
        for (index, (block, start)) in old.blocks.iter().zip(starts).enumerate() {
            if start >= base {
                break;
            }
            let end = start + u64::from(block.length);
            let written = !self.data.is_empty() && self.offset < end && write_end > start;
            let cut = end > base;
            let filled = final_size > end
                && index + 1 == old.blocks.len()
                && u64::from(block.length) < block_size;
            if written || cut || filled {
                push_rebuilt(&mut pieces, start, end.min(base));
            } else {
                pieces.push(Piece::Kept(index));
            }
            covered = end.min(base);
        }
        push_rebuilt(&mut pieces, covered, final_size);
        pieces
    }
}

impl Storage {
    /// Applies a `store.file_patch` stream: its body is the bytes to write.
    pub async fn patch_file(
        self: &Arc<Self>,
        header: FilePatchHeader,
        mut body: BodyReader,
    ) -> Result<FilePutReply, RpcError> {
        let path = paths::normalize_entry(&header.path)
            .map_err(|error| RpcError::bad_request(error.to_string()))?;
        let data = body
            .read_to_end(MAX_PATCH_BYTES)
            .await
            .map_err(|error| match error {
                bramble_net::MuxError::TooLarge(_) => RpcError::new(
                    ErrorKind::TooLarge,
                    format!("a patch carries at most {MAX_PATCH_BYTES} bytes"),
                ),
                other => mux_error(other),
            })?;
        let spec = self.started_volume(&header.volume).await?;
        let key = keys::file_key(&spec.name, &path);
        if !header.forwarded {
            let reach = self.reach().await;
            if let Some(home) = self.home_of(&spec, &key, &reach) {
                return self.forward_patch(home, header, data).await;
            }
        }
        let change = Change {
            resize: header.resize,
            offset: header.offset,
            data: Bytes::from(data),
        };
        let (record, catalog_version, missed) = self.apply_change(&spec, &key, &change).await?;
        Ok(FilePutReply {
            entry: entry_of_file(&path, &record, catalog_version),
            missed_copies: missed,
        })
    }

    /// The address of the node that applies patches of `key`, when that is not this node:
    /// of the volume's brick nodes that are up, the highest rendezvous score.
    fn home_of(
        &self,
        spec: &VolumeSpec,
        key: &str,
        reach: &HashMap<String, Reach>,
    ) -> Option<std::net::SocketAddr> {
        let home = spec
            .bricks
            .iter()
            .map(|brick| brick.node.as_str())
            .filter(|node| !self.is_away(node, reach))
            .filter(|node| {
                reach
                    .get(*node)
                    .is_some_and(|found| found.protocol >= PATCH_PROTOCOL)
            })
            .max_by_key(|node| {
                let mut hasher = blake3::Hasher::new();
                hasher.update(key.as_bytes());
                hasher.update(&[0]);
                hasher.update(node.as_bytes());
                *hasher.finalize().as_bytes()
            })?;
        if home == self.node {
            return None;
        }
        reach.get(home).map(|found| found.address)
    }

    /// Hands a patch to the file's home node and relays its answer.
    async fn forward_patch(
        &self,
        home: std::net::SocketAddr,
        mut header: FilePatchHeader,
        data: Vec<u8>,
    ) -> Result<FilePutReply, RpcError> {
        header.forwarded = true;
        let encoded = postcard::to_allocvec(&header)
            .map_err(|error| RpcError::internal(error.to_string()))?;
        let exchange = async {
            let (mut sender, response) = self
                .mux
                .open(home, METHOD_FILE_PATCH, &encoded, Priority::Bulk)
                .await?;
            let data = Bytes::from(data);
            let mut sent = 0;
            while sent < data.len() {
                let end = data.len().min(sent + 1024 * 1024);
                sender.send(data.slice(sent..end)).await?;
                sent = end;
            }
            sender.finish().await?;
            response.wait().await
        };
        let answer = exchange.await.map_err(mux_error)?;
        postcard::from_bytes(&answer.header).map_err(|error| {
            RpcError::internal(format!(
                "the home node's answer to a patch is unreadable: {error}"
            ))
        })
    }

    /// Applies `change` to the file at `key`: rebuilds the touched blocks, commits the new
    /// record if the file did not change meanwhile (else starts again on the new one), and
    /// deletes the blocks no longer referred to. Returns the record, its catalog version
    /// and the copies owed to absent bricks.
    pub async fn apply_change(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        key: &str,
        change: &Change,
    ) -> Result<(FileRecord, u64, u64), RpcError> {
        let path = keys::path_of_key(&spec.name, key)
            .unwrap_or(key)
            .to_string();
        let block_size = u64::from(spec.block_size.max(1));
        let largest = MAX_FILE_BLOCKS as u64 * block_size;
        // Offsets come from the network: bounded before any arithmetic on them.
        let write_end = change.offset.checked_add(change.data.len() as u64);
        if write_end.is_none_or(|end| end > largest)
            || change.resize.is_some_and(|size| size > largest)
        {
            return Err(RpcError::new(
                ErrorKind::TooLarge,
                format!(
                    "{}:/{path}: a patch may not reach past {largest} bytes (at most {MAX_FILE_BLOCKS} blocks of {block_size} bytes)",
                    spec.name
                ),
            ));
        }
        let _turn = self.patching.lock(key).await;
        for attempt in 0..PATCH_ATTEMPTS {
            if attempt > 0 {
                // Another node's patch won: let it finish before reading the file again.
                let jitter = (new_version() % 40) as u64;
                tokio::time::sleep(Duration::from_millis(5 + jitter + 10 * attempt as u64)).await;
            }
            // This node's replica first (the condition makes that safe); the leader after
            // a failed condition, or when the replica has no file there (it may not have
            // the create that the writer just saw acknowledged).
            let mut consistency = if attempt == 0 {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            };
            let (found, old) = loop {
                let found = self.meta.read(key, consistency, false).await?;
                let decoded = found
                    .as_ref()
                    .map(|found| StoredEntry::decode(&found.value));
                match (found, decoded) {
                    (Some(found), Some(Ok(StoredEntry::File(old)))) => break (found, old),
                    _ if consistency == Consistency::Stale => {
                        consistency = Consistency::Linearizable;
                    }
                    (None, _) => {
                        return Err(RpcError::new(
                            ErrorKind::NotFound,
                            format!(
                                "{}:/{path} does not exist (a patch changes an existing file)",
                                spec.name
                            ),
                        ));
                    }
                    (_, Some(Err(error))) => return Err(RpcError::internal(error)),
                    _ => {
                        return Err(RpcError::new(
                            ErrorKind::WrongType,
                            format!("{}:/{path} is a directory", spec.name),
                        ));
                    }
                }
            };
            let final_size = change.final_size(old.size);
            if final_size > largest {
                return Err(RpcError::new(
                    ErrorKind::TooLarge,
                    format!(
                        "{}:/{path} would be {final_size} bytes; a file may have at most {MAX_FILE_BLOCKS} blocks of {block_size} bytes",
                        spec.name
                    ),
                ));
            }
            let reach = self.reach().await;
            // A file small after the change is rewritten in its record: a 4 KiB write
            // into a small file costs one catalog commit, not a block.
            let small = final_size <= INLINE_MAX_BYTES as u64 && self.may_inline(spec, &reach);
            let rebuilt = if small {
                self.rebuild_inline(spec, &old, change, &reach)
                    .await
                    .map(|record| (record, Vec::new()))
            } else {
                self.rebuild(spec, &old, change, block_size, &reach).await
            };
            let (record, outcomes) = match rebuilt {
                Ok(rebuilt) => rebuilt,
                // The old record's blocks may have gone under us (another node changed
                // the file and deleted them): if the file changed, start again on what
                // is there now; if not, the error is real.
                Err(error) if attempt + 1 < PATCH_ATTEMPTS => {
                    let now = self
                        .meta
                        .read(key, Consistency::Linearizable, false)
                        .await?;
                    if now.map(|found| found.version) != Some(found.version) {
                        continue;
                    }
                    return Err(error);
                }
                Err(error) => return Err(error),
            };
            let new_blocks: Vec<BlockId> = outcomes.iter().map(|outcome| outcome.block).collect();
            let missed: usize = outcomes.iter().map(|outcome| outcome.missed.len()).sum();
            if let Err(error) = self.record_hints(hints_for(spec, key, &outcomes)).await {
                self.discard_blocks(spec, new_blocks, &reach).await;
                return Err(error);
            }
            let value = StoredEntry::File(record.clone()).encode();
            if value.len() > bramble_meta::types::MAX_VALUE_BYTES {
                self.discard_blocks(spec, new_blocks, &reach).await;
                return Err(RpcError::new(
                    ErrorKind::TooLarge,
                    format!(
                        "the record of {}:/{path} would be {} bytes, over a catalog value's {}: the file has too many blocks",
                        spec.name,
                        value.len(),
                        bramble_meta::types::MAX_VALUE_BYTES
                    ),
                ));
            }
            let command = Command::Batch {
                conditions: vec![Condition {
                    key: key.to_string(),
                    version: found.version,
                }],
                operations: vec![Operation::Put {
                    key: key.to_string(),
                    value,
                }],
            };
            match self.commit(command).await {
                Ok(CommandResult::BatchApplied { version, .. }) => {
                    let kept: HashSet<BlockId> = record.block_ids().into_iter().collect();
                    let unreferenced: Vec<BlockId> = old
                        .block_ids()
                        .into_iter()
                        .filter(|block| !kept.contains(block))
                        .collect();
                    self.discard_committed(spec, unreferenced, &reach).await;
                    if missed > 0 {
                        self.counters
                            .copies_missed
                            .fetch_add(missed as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Ok((record, version, missed as u64));
                }
                Ok(CommandResult::ConditionFailed { .. }) => {
                    self.discard_blocks(spec, new_blocks, &reach).await;
                }
                Ok(other) => {
                    self.discard_blocks(spec, new_blocks, &reach).await;
                    return Err(RpcError::internal(format!(
                        "unexpected catalog answer {other:?}"
                    )));
                }
                Err(error) => {
                    self.discard_blocks(spec, new_blocks, &reach).await;
                    return Err(error);
                }
            }
        }
        Err(RpcError::new(
            ErrorKind::Unavailable,
            format!(
                "{}:/{path} kept changing under this write; try again",
                spec.name
            ),
        ))
    }

    /// Stores the rebuilt blocks of `change` over `old` under a new version; returns the
    /// new (uncommitted) record and what writing each new block achieved. On failure the
    /// new blocks already stored are deleted.
    async fn rebuild(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        old: &FileRecord,
        change: &Change,
        block_size: u64,
        reach: &HashMap<String, Reach>,
    ) -> Result<(FileRecord, Vec<BlockOutcome>), RpcError> {
        let version = new_version();
        let starts = old.block_starts();
        let mut blocks: Vec<BlockRecord> = Vec::new();
        let mut outcomes: Vec<BlockOutcome> = Vec::new();
        // The old block last read, by index: rebuilt runs read each old block once.
        let mut last_read: Option<(usize, Bytes)> = None;
        let mut zero_hashes: HashMap<u32, [u8; 32]> = HashMap::new();
        let record_zeros = self.cluster_speaks(PATCH_PROTOCOL, reach);
        let stored = async {
            for piece in change.pieces(old, block_size) {
                match piece {
                    Piece::Kept(index) => blocks.push(BlockRecord {
                        id: Some(old.block_id(index as u32)),
                        ..old.blocks[index]
                    }),
                    Piece::Rebuilt { start, end } => {
                        let mut position = start;
                        while position < end {
                            if blocks.len() >= MAX_FILE_BLOCKS {
                                return Err(RpcError::new(
                                    ErrorKind::TooLarge,
                                    format!("a file may have at most {MAX_FILE_BLOCKS} blocks"),
                                ));
                            }
                            let length = (end - position).min(block_size);
                            if record_zeros && change.is_hole(old, position, length) {
                                let hash = *zero_hashes
                                    .entry(length as u32)
                                    .or_insert_with(|| zeros_hash(length as u32));
                                blocks.push(BlockRecord::zeros(length as u32, hash));
                                position += length;
                                continue;
                            }
                            let data = self
                                .rebuilt_bytes(
                                    spec,
                                    old,
                                    &starts,
                                    change,
                                    position,
                                    length,
                                    &mut last_read,
                                    reach,
                                )
                                .await?;
                            if record_zeros && all_zeros(&data) {
                                // A hole: recorded, not stored.
                                let hash = *zero_hashes
                                    .entry(length as u32)
                                    .or_insert_with(|| zeros_hash(length as u32));
                                blocks.push(BlockRecord::zeros(length as u32, hash));
                                position += length;
                                continue;
                            }
                            let hash = *blake3::hash(&data).as_bytes();
                            let index = blocks.len() as u32;
                            let block = BlockId { version, index };
                            let outcome = self.write_block(spec, block, hash, data, reach).await?;
                            outcomes.push(outcome);
                            blocks.push(BlockRecord {
                                length: length as u32,
                                hash,
                                id: None,
                            });
                            position += length;
                        }
                    }
                }
            }
            Ok::<(), RpcError>(())
        }
        .await;
        if let Err(error) = stored {
            let written = outcomes.iter().map(|outcome| outcome.block).collect();
            self.discard_blocks(spec, written, reach).await;
            return Err(error);
        }
        let record = FileRecord {
            size: change.final_size(old.size),
            version,
            block_size: spec.block_size,
            blocks,
            modified_ns: now_ns(),
            mode: old.mode,
            user_metadata: old.user_metadata.clone(),
            // The body changed: an S3 ETag (its MD5) no longer describes it.
            etag: None,
            content_type: old.content_type.clone(),
            inline: None,
        };
        Ok((record, outcomes))
    }

    /// The patched file as a record with its bytes inline (its size is at most
    /// [`INLINE_MAX_BYTES`]); the old file's bytes come from its record or its blocks.
    async fn rebuild_inline(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        old: &FileRecord,
        change: &Change,
        reach: &HashMap<String, Reach>,
    ) -> Result<FileRecord, RpcError> {
        let size = change.final_size(old.size);
        let starts = old.block_starts();
        let bytes = self
            .rebuilt_bytes(spec, old, &starts, change, 0, size, &mut None, reach)
            .await?;
        Ok(FileRecord {
            size,
            version: new_version(),
            block_size: spec.block_size,
            blocks: Vec::new(),
            modified_ns: now_ns(),
            mode: old.mode,
            user_metadata: old.user_metadata.clone(),
            // The body changed: an S3 ETag (its MD5) no longer describes it.
            etag: None,
            content_type: old.content_type.clone(),
            inline: Some(InlineData::new(bytes.to_vec())),
        })
    }

    /// The bytes `[position, position + length)` of the patched file: the change's data
    /// where it writes, the old file's bytes where it keeps them, zeros elsewhere.
    #[allow(clippy::too_many_arguments)]
    async fn rebuilt_bytes(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        old: &FileRecord,
        starts: &[u64],
        change: &Change,
        position: u64,
        length: u64,
        last_read: &mut Option<(usize, Bytes)>,
        reach: &HashMap<String, Reach>,
    ) -> Result<Bytes, RpcError> {
        let end = position + length;
        let mut out = BytesMut::zeroed(length as usize);
        // Old bytes that survive the resize.
        let old_end = old.size.min(change.resize.unwrap_or(old.size));
        let write_start = change.offset;
        let write_end = change.offset + change.data.len() as u64;
        let needs_old =
            position < old_end && !(write_start <= position && write_end >= end.min(old_end));
        if needs_old && let Some(inline) = &old.inline {
            let bytes = inline.checked().map_err(RpcError::internal)?;
            let to = end.min(old_end).min(bytes.len() as u64);
            if position < to {
                out[..(to - position) as usize]
                    .copy_from_slice(&bytes[position as usize..to as usize]);
            }
        } else if needs_old {
            for (index, (block, start)) in old.blocks.iter().zip(starts).enumerate() {
                let block_end = start + u64::from(block.length);
                let from = position.max(*start);
                let to = end.min(block_end).min(old_end);
                if from >= to {
                    continue;
                }
                let bytes = match last_read {
                    Some((read_index, bytes)) if *read_index == index => bytes.clone(),
                    _ => {
                        let bytes = self
                            .read_block(spec, old.block_id(index as u32), *block, reach)
                            .await?;
                        *last_read = Some((index, bytes.clone()));
                        bytes
                    }
                };
                let source = &bytes[(from - start) as usize..(to - start) as usize];
                out[(from - position) as usize..(to - position) as usize].copy_from_slice(source);
            }
        }
        let from = position.max(write_start);
        let to = end.min(write_end);
        if from < to {
            out[(from - position) as usize..(to - position) as usize].copy_from_slice(
                &change.data[(from - write_start) as usize..(to - write_start) as usize],
            );
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(lengths: &[u32]) -> FileRecord {
        FileRecord {
            size: lengths.iter().map(|length| u64::from(*length)).sum(),
            version: 1,
            block_size: 100,
            blocks: lengths
                .iter()
                .map(|length| BlockRecord {
                    length: *length,
                    hash: [0; 32],
                    id: None,
                })
                .collect(),
            modified_ns: 0,
            mode: 0o644,
            user_metadata: Vec::new(),
            etag: None,
            content_type: None,
            inline: None,
        }
    }

    fn write(offset: u64, length: usize) -> Change {
        Change {
            resize: None,
            offset,
            data: Bytes::from(vec![1u8; length]),
        }
    }

    #[test]
    fn a_write_in_the_middle_rebuilds_only_the_blocks_it_touches() {
        let old = file(&[100, 100, 100, 50]);
        assert_eq!(
            write(150, 10).pieces(&old, 100),
            vec![
                Piece::Kept(0),
                Piece::Rebuilt {
                    start: 100,
                    end: 200
                },
                Piece::Kept(2),
                Piece::Kept(3)
            ]
        );
        // Across a block boundary: both blocks, as one run.
        assert_eq!(
            write(190, 20).pieces(&old, 100),
            vec![
                Piece::Kept(0),
                Piece::Rebuilt {
                    start: 100,
                    end: 300
                },
                Piece::Kept(3)
            ]
        );
    }

    #[test]
    fn an_append_fills_the_short_last_block_first() {
        let old = file(&[100, 30]);
        let change = write(130, 200);
        assert_eq!(change.final_size(old.size), 330);
        assert_eq!(
            change.pieces(&old, 100),
            vec![
                Piece::Kept(0),
                Piece::Rebuilt {
                    start: 100,
                    end: 330
                }
            ]
        );
        // A full last block stays; the append starts new blocks.
        let old = file(&[100, 100]);
        assert_eq!(
            write(200, 10).pieces(&old, 100),
            vec![
                Piece::Kept(0),
                Piece::Kept(1),
                Piece::Rebuilt {
                    start: 200,
                    end: 210
                }
            ]
        );
    }

    #[test]
    fn a_write_past_the_end_leaves_a_hole_of_zeros() {
        let old = file(&[100]);
        let change = write(1000, 10);
        assert_eq!(change.final_size(old.size), 1010);
        assert_eq!(
            change.pieces(&old, 100),
            vec![
                Piece::Kept(0),
                Piece::Rebuilt {
                    start: 100,
                    end: 1010
                }
            ]
        );
    }

    #[test]
    fn a_resize_cuts_or_extends() {
        let old = file(&[100, 100, 100]);
        let cut = Change {
            resize: Some(150),
            offset: 0,
            data: Bytes::new(),
        };
        assert_eq!(cut.final_size(old.size), 150);
        assert_eq!(
            cut.pieces(&old, 100),
            vec![
                Piece::Kept(0),
                Piece::Rebuilt {
                    start: 100,
                    end: 150
                }
            ]
        );
        let on_a_boundary = Change {
            resize: Some(200),
            ..cut.clone()
        };
        assert_eq!(
            on_a_boundary.pieces(&old, 100),
            vec![Piece::Kept(0), Piece::Kept(1)]
        );
        let to_nothing = Change {
            resize: Some(0),
            ..cut.clone()
        };
        assert_eq!(to_nothing.final_size(old.size), 0);
        assert!(to_nothing.pieces(&old, 100).is_empty());
        let grow = Change {
            resize: Some(450),
            ..cut
        };
        assert_eq!(
            grow.pieces(&old, 100),
            vec![
                Piece::Kept(0),
                Piece::Kept(1),
                Piece::Kept(2),
                Piece::Rebuilt {
                    start: 300,
                    end: 450
                }
            ]
        );
    }

    #[test]
    fn holes_are_told_apart_from_written_and_kept_bytes() {
        let old = file(&[100, 100]);
        let change = write(500, 10);
        assert!(!change.is_hole(&old, 100, 100), "old bytes");
        assert!(change.is_hole(&old, 200, 100));
        assert!(
            change.is_hole(&old, 400, 100),
            "ends where the write starts"
        );
        assert!(!change.is_hole(&old, 450, 100), "overlaps the write");
        assert!(change.is_hole(&old, 510, 100));
        let cut = Change {
            resize: Some(50),
            offset: 0,
            data: Bytes::new(),
        };
        assert!(!cut.is_hole(&old, 0, 100));
        assert!(cut.is_hole(&old, 50, 100), "cut away, then grown: zeros");
    }

    #[test]
    fn an_empty_file_grows_from_nothing() {
        let old = file(&[]);
        assert_eq!(
            write(0, 250).pieces(&old, 100),
            vec![Piece::Rebuilt { start: 0, end: 250 }]
        );
        assert!(write(0, 0).pieces(&old, 100).is_empty());
    }
}
