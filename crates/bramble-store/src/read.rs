//! Reading a file: the record comes from the catalog (linearizable, so a file written
//! through any node is seen), then the blocks of the requested range are fetched a few
//! at a time ahead of the client, each from the best copy — this node's own brick first,
//! then bricks whose nodes are up, bricks recently away last — and checked against the
//! record's hash. A copy that is missing, corrupt or slow is skipped for the next one; a
//! corrupt or missing copy is rewritten from the good one (read repair) and reported.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bramble_meta::api::Consistency;
use bramble_net::{BodySender, ErrorKind, RpcError};
use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use crate::admin::{FileGetHeader, FileGetReply};
use crate::blocks::mux_error;
use crate::file::{BlockRecord, FileRecord};
use crate::namespace::{Found, entry_of_file, lookup};
use crate::node::{Reach, Storage};
use crate::paths;
use crate::volume::VolumeSpec;

/// Blocks fetched ahead of the one being sent.
const READ_AHEAD: usize = 4;
/// How long one copy may take before the next copy is tried (a brick whose node was
/// SIGSTOPped answers nothing; the reader moves on after this).
pub const COPY_READ_TIMEOUT: Duration = Duration::from_millis(1500);

impl Storage {
    /// Looks the file up and says what range will be sent.
    pub async fn open_for_read(
        &self,
        header: &FileGetHeader,
    ) -> Result<(VolumeSpec, FileRecord, FileGetReply), RpcError> {
        let spec = self.started_volume(&header.volume).await?;
        let path = paths::normalize_entry(&header.path)
            .map_err(|error| RpcError::bad_request(error.to_string()))?;
        let (record, version) =
            match lookup(self, &spec.name, &path, Consistency::Linearizable).await? {
                Some(Found::File { record, version }) => (record, version),
                Some(_) => {
                    return Err(RpcError::new(
                        ErrorKind::WrongType,
                        format!("{}:/{path} is a directory", spec.name),
                    ));
                }
                None => {
                    return Err(RpcError::new(
                        ErrorKind::NotFound,
                        format!("{}:/{path} does not exist", spec.name),
                    ));
                }
            };
        let offset = header.offset.min(record.size);
        let length = header.length.unwrap_or(u64::MAX).min(record.size - offset);
        let reply = FileGetReply {
            entry: entry_of_file(&path, &record, version),
            offset,
            length,
        };
        Ok((spec, record, reply))
    }

    /// Sends `length` bytes from `offset` of the file into `sender`.
    pub async fn send_range(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        record: &FileRecord,
        offset: u64,
        length: u64,
        mut sender: BodySender,
    ) -> Result<(), RpcError> {
        let outcome = self
            .copy_range(spec, record, offset, length, &mut sender)
            .await;
        match outcome {
            Ok(()) => sender.finish().await.map_err(mux_error),
            Err(error) => {
                sender.reset(error.clone());
                Err(error)
            }
        }
    }

    /// Sends `length` bytes from `offset` of the file into `sink`, blocks fetched
    /// [`READ_AHEAD`] ahead of the one being sent.
    pub async fn copy_range(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        record: &FileRecord,
        offset: u64,
        length: u64,
        sink: &mut (dyn ChunkSink + Send),
    ) -> Result<(), RpcError> {
        if length == 0 {
            return Ok(());
        }
        if let Some(inline) = &record.inline {
            let bytes = inline.checked().map_err(RpcError::internal)?;
            let start = (offset as usize).min(bytes.len());
            let end = (offset.saturating_add(length) as usize).min(bytes.len());
            return sink.send(Bytes::copy_from_slice(&bytes[start..end])).await;
        }
        let starts = record.block_starts();
        let end = offset + length;
        // The blocks that overlap [offset, end).
        let first = starts
            .partition_point(|start| *start <= offset)
            .saturating_sub(1) as u32;
        let last = (starts
            .partition_point(|start| *start < end)
            .saturating_sub(1)) as u32;
        let reach = Arc::new(self.reach().await);
        // Each block fetched ahead, with its share of the node's read-ahead budget (none
        // for the one block a read may always have of its own).
        type Fetch = (
            u32,
            JoinHandle<Result<Bytes, RpcError>>,
            Option<OwnedSemaphorePermit>,
        );
        let mut ahead: VecDeque<Fetch> = VecDeque::new();
        let mut next = first;
        let fetch = |index: u32| {
            let storage = Arc::clone(self);
            let spec = spec.clone();
            let record_block = record.blocks[index as usize];
            let block = record.block_id(index);
            let reach = reach.clone();
            tokio::spawn(
                async move { storage.read_block(&spec, block, record_block, &reach).await },
            )
        };
        let outcome = async {
            while next <= last || !ahead.is_empty() {
                while next <= last && ahead.len() < READ_AHEAD {
                    let permit = if ahead.is_empty() {
                        None
                    } else {
                        let kib = record.blocks[next as usize].length.div_ceil(1024).max(1);
                        match Arc::clone(&self.read_ahead_buffers).try_acquire_many_owned(kib) {
                            Ok(permit) => Some(permit),
                            // The budget is spent: this read goes on without read-ahead.
                            Err(_) => break,
                        }
                    };
                    ahead.push_back((next, fetch(next), permit));
                    next += 1;
                }
                let Some((index, handle, permit)) = ahead.pop_front() else {
                    break;
                };
                let mut data = handle.await.map_err(|error| {
                    RpcError::internal(format!("a block read failed: {error}"))
                })??;
                if let Some(permit) = permit {
                    // The budget is held until the client has taken the last of the block.
                    data = Bytes::from_owner(Budgeted {
                        data,
                        _permit: permit,
                    });
                }
                let block_start = starts[index as usize];
                let from = offset.saturating_sub(block_start) as usize;
                let to = ((end - block_start).min(data.len() as u64)) as usize;
                if from < to {
                    sink.send(data.slice(from..to)).await?;
                }
            }
            Ok::<(), RpcError>(())
        }
        .await;
        for (_, handle, _) in &ahead {
            handle.abort();
        }
        outcome
    }

    /// One block: from the best whole copy of a replicated set, or rebuilt from enough
    /// shards of an erasure-coded one; repairs the copies or shards found missing or
    /// corrupt on the way.
    pub async fn read_block(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        block: crate::file::BlockId,
        record: BlockRecord,
        reach: &HashMap<String, Reach>,
    ) -> Result<Bytes, RpcError> {
        if block.is_zeros() {
            return Ok(Bytes::from(vec![0u8; record.length as usize]));
        }
        match self.read_block_in(spec, block, record, reach).await {
            Ok(data) => Ok(data),
            // While data moves to new bricks, a block not moved yet is in the old layout.
            Err(error) => match spec.previous() {
                Some(previous) => self
                    .read_block_in(&previous, block, record, reach)
                    .await
                    .map_err(|_| error),
                None => Err(error),
            },
        }
    }

    /// [`Storage::read_block`] in one layout.
    async fn read_block_in(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        block: crate::file::BlockId,
        record: BlockRecord,
        reach: &HashMap<String, Reach>,
    ) -> Result<Bytes, RpcError> {
        match spec.layout {
            crate::volume::Layout::Replicated { .. } => {
                self.read_replica(spec, block, record, reach).await
            }
            crate::volume::Layout::Erasure { data, parity } => {
                self.read_shards(
                    spec,
                    block,
                    record,
                    reach,
                    usize::from(data),
                    usize::from(parity),
                )
                .await
            }
        }
    }

    /// Rebuilds a block from the first `data` shards that can be read: data shards first
    /// (no decoding when they all answer), bricks away last, one more brick asked for each
    /// that fails.
    async fn read_shards(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        block: crate::file::BlockId,
        record: BlockRecord,
        reach: &HashMap<String, Reach>,
        data: usize,
        parity: usize,
    ) -> Result<Bytes, RpcError> {
        let set = spec.set_of_block(&block);
        let bricks: Vec<usize> = spec.set_brick_indexes(set).collect();
        let mut candidates: Vec<usize> = (0..bricks.len()).collect();
        candidates
            .sort_by_key(|position| self.is_away(&spec.bricks[bricks[*position]].node, reach));
        let mut candidates = candidates.into_iter();
        let shard_length = crate::erasure::shard_length(record.length as usize, data);
        let mut shards: Vec<Option<Bytes>> = vec![None; bricks.len()];
        let mut damaged = Vec::new();
        let mut errors = Vec::new();
        let mut fetching: tokio::task::JoinSet<(usize, Result<Bytes, RpcError>)> =
            tokio::task::JoinSet::new();
        let start =
            |position: usize,
             fetching: &mut tokio::task::JoinSet<(usize, Result<Bytes, RpcError>)>| {
                let storage = Arc::clone(self);
                let spec = spec.clone();
                let reach = reach.clone();
                let brick = bricks[position];
                fetching.spawn(async move {
                    let outcome = storage
                        .get_copy(
                            &spec,
                            brick,
                            block,
                            None,
                            shard_length,
                            &reach,
                            COPY_READ_TIMEOUT,
                        )
                        .await;
                    (position, outcome)
                });
            };
        for position in candidates.by_ref().take(data) {
            start(position, &mut fetching);
        }
        let mut have = 0;
        while have < data {
            let Some(joined) = fetching.join_next().await else {
                break;
            };
            let Ok((position, outcome)) = joined else {
                continue;
            };
            let brick = bricks[position];
            match outcome {
                Ok(shard) if shard.len() == shard_length => {
                    shards[position] = Some(shard);
                    have += 1;
                    continue;
                }
                Ok(_) => {
                    damaged.push(position);
                    errors.push(format!("brick {brick}: a shard of the wrong length"));
                }
                Err(error) => {
                    if matches!(error.kind, ErrorKind::NotFound | ErrorKind::Internal) {
                        damaged.push(position);
                    }
                    if error.kind == ErrorKind::Timeout {
                        self.mark_away(&spec.bricks[brick].node);
                    }
                    errors.push(format!(
                        "brick {brick} ({}): {error}",
                        spec.bricks[brick].node
                    ));
                }
            }
            if let Some(next) = candidates.next() {
                start(next, &mut fetching);
            }
        }
        fetching.abort_all();
        let rebuilt = crate::erasure::decode(record.length as usize, data, parity, &shards)
            .map_err(|reason| {
                RpcError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "block {} of this file could not be rebuilt: {reason}; {}",
                        block.index,
                        errors.join("; ")
                    ),
                )
            })?;
        if blake3::hash(&rebuilt).as_bytes() != &record.hash {
            return Err(RpcError::new(
                ErrorKind::Internal,
                format!(
                    "block {} rebuilt from its shards does not match its hash",
                    block.index
                ),
            ));
        }
        let rebuilt = Bytes::from(rebuilt);
        if !damaged.is_empty()
            && let Ok(pieces) = crate::write::pieces_of(spec, record.hash, rebuilt.clone())
        {
            for position in damaged {
                let (hash, shard) = pieces[position].clone();
                self.repair_copy(spec, bricks[position], block, hash, shard, reach);
            }
        }
        Ok(rebuilt)
    }

    /// One block from the best copy that is whole (replicated sets); repairs the copies
    /// found missing or corrupt on the way.
    async fn read_replica(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        block: crate::file::BlockId,
        record: BlockRecord,
        reach: &HashMap<String, Reach>,
    ) -> Result<Bytes, RpcError> {
        let set = spec.set_of_block(&block);
        let mut order: Vec<usize> = spec.set_brick_indexes(set).collect();
        // This node's brick first, then the others in order, bricks away last.
        order.sort_by_key(|brick| {
            let node = &spec.bricks[*brick].node;
            (*node != self.node, self.is_away(node, reach))
        });
        let mut damaged = Vec::new();
        let mut errors = Vec::new();
        for brick in order {
            match self
                .get_copy(
                    spec,
                    brick,
                    block,
                    Some(record.hash),
                    record.length as usize,
                    reach,
                    COPY_READ_TIMEOUT,
                )
                .await
            {
                Ok(data) => {
                    if data.len() != record.length as usize {
                        errors.push(format!("brick {brick}: wrong length"));
                        continue;
                    }
                    for damaged_brick in damaged {
                        self.repair_copy(
                            spec,
                            damaged_brick,
                            block,
                            record.hash,
                            data.clone(),
                            reach,
                        );
                    }
                    return Ok(data);
                }
                Err(error) => {
                    if matches!(error.kind, ErrorKind::NotFound | ErrorKind::Internal) {
                        if error.kind == ErrorKind::Internal && spec.bricks[brick].node == self.node
                        {
                            self.report_corrupt(spec, brick, &block, &error);
                        }
                        damaged.push(brick);
                    }
                    if error.kind == ErrorKind::Timeout {
                        self.mark_away(&spec.bricks[brick].node);
                    }
                    errors.push(format!(
                        "brick {brick} ({}): {error}",
                        spec.bricks[brick].node
                    ));
                }
            }
        }
        Err(RpcError::new(
            ErrorKind::Unavailable,
            format!(
                "no copy of block {} of this file could be read: {}",
                block.index,
                errors.join("; ")
            ),
        ))
    }

    /// Rewrites a missing or corrupt copy from a good one, in the background.
    fn repair_copy(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        brick: usize,
        block: crate::file::BlockId,
        hash: [u8; 32],
        data: Bytes,
        reach: &HashMap<String, Reach>,
    ) {
        let storage = Arc::clone(self);
        let spec = spec.clone();
        let reach = reach.clone();
        tokio::spawn(async move {
            match storage
                .put_copy(&spec, brick, block, hash, data, &reach)
                .await
            {
                Ok(()) => {
                    storage
                        .counters
                        .blocks_repaired
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        volume = %spec.name,
                        brick,
                        node = %spec.bricks[brick].node,
                        block = %block.file_name(),
                        "repaired a missing or corrupt block copy from a good one"
                    );
                }
                Err(error) => tracing::warn!(
                    volume = %spec.name,
                    brick,
                    %error,
                    "could not repair a block copy"
                ),
            }
        });
    }
}

/// A block's bytes with the read-ahead budget they hold, given back when the last slice
/// of them is dropped.
struct Budgeted {
    data: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// Where a body goes: a mux stream, an S3 response.
#[async_trait::async_trait]
pub trait ChunkSink {
    async fn send(&mut self, chunk: Bytes) -> Result<(), RpcError>;
}

#[async_trait::async_trait]
impl ChunkSink for BodySender {
    async fn send(&mut self, chunk: Bytes) -> Result<(), RpcError> {
        BodySender::send(self, chunk).await.map_err(mux_error)
    }
}
