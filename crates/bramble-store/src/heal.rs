//! The heal worker (`store-heal`): delivers the copies this node owes to bricks that were
//! away ([`crate::hints`]) as soon as gossip sees their node alive again. While it owes
//! copies it starts a round at every change gossip reports about live nodes (a node that
//! comes back is one), and polls twice a second besides — the cost of an idle check is one
//! read of a local database — and moves
//! blocks over bulk streams, a few at a time, so healing never delays Raft, gossip or
//! leases and leaves the volume serving.
//!
//! A hint is dropped, not delivered, when its file was overwritten or removed since (the
//! file's record no longer names the block's version), once the hint is old enough that
//! the write that made it must have committed or failed.

use std::collections::HashMap;

use std::sync::Arc;
use std::time::Duration;

use bramble_cluster::NodeState;
use bramble_meta::api::Consistency;
use bramble_net::{ErrorKind, RpcError};
use bramble_util::{Restart, WorkerContext, WorkerState, Workers};
use tokio::task::JoinSet;

use crate::file::{BlockId, StoredEntry, now_ns};
use crate::hints::Hint;
use crate::node::{Reach, Storage};

/// How often the worker looks for bricks that are back.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Copies moved at once.
const HEALS_IN_FLIGHT: usize = 4;
/// Hints read per batch.
const BATCH: usize = 256;
/// A hint younger than this whose file record does not show its version is kept (its
/// write may still be committing).
const UNCONFIRMED_GRACE_MS: u64 = 60_000;

/// What became of one hint.
enum Delivery {
    Copied,
    /// Not needed any more (file gone or replaced, volume removed).
    Dropped,
    /// Not yet decidable (the write that made it may still be committing).
    Kept,
}

pub fn start_worker(storage: &Arc<Storage>, workers: &Workers) {
    let storage = storage.clone();
    workers.spawn("store-heal", Restart::OnFailure, move |worker| {
        let storage = storage.clone();
        async move {
            let mut shutdown = worker.shutdown();
            let mut live_changes = storage.membership.live_changes().await;
            loop {
                let owed = storage.heal_round(&worker).await;
                // A returning node is a change of the live set: with copies owed, the
                // round starts then, not at the next poll (which alone cost up to 0.5 s
                // of every heal).
                let returned = async {
                    if owed {
                        live_changes.changed().await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    _ = shutdown.wait() => return Ok(()),
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                    _ = returned => {}
                }
            }
        }
    });
}

impl Storage {
    /// One pass over every node this node owes copies to; returns whether copies are still
    /// owed after it.
    async fn heal_round(self: &Arc<Self>, worker: &WorkerContext) -> bool {
        let listed = self
            .with_hints(|hints| {
                let mut nodes = hints.nodes()?;
                for node in hints.deletion_nodes()? {
                    if !nodes.contains(&node) {
                        nodes.push(node);
                    }
                }
                Ok(nodes)
            })
            .await;
        let nodes = match listed {
            Ok(nodes) => nodes,
            Err(error) => {
                worker.report_error(&error.message);
                return true;
            }
        };
        if nodes.is_empty() {
            worker.set_state(WorkerState::Idle);
            worker.set_queue(0);
            return false;
        }
        let reach = Arc::new(self.reach().await);
        for node in nodes {
            let back = reach
                .get(&node)
                .is_some_and(|found| found.state == NodeState::Alive);
            if !back {
                continue;
            }
            worker.set_state(WorkerState::Busy);
            worker.set_progress(format!("healing bricks on {node}"));
            if let Err(error) = self.heal_node(&node, &reach).await {
                worker.report_error(&format!("healing bricks on {node}: {error}"));
                continue;
            }
            if let Err(error) = self.deliver_deletions(&node, &reach).await {
                worker.report_error(&format!("deleting what bricks on {node} missed: {error}"));
            }
        }
        let mut owed = true;
        let queued = self
            .with_hints(|hints| {
                Ok(hints.counts(None)?.values().sum::<u64>() + hints.pending_deletions()?)
            })
            .await;
        if let Ok(queue) = queued {
            worker.set_queue(queue);
            owed = queue > 0;
        }
        worker.set_state(WorkerState::Idle);
        owed
    }

    /// Delivers every copy owed to `node`; stops at the first sign that it is away again.
    async fn heal_node(
        self: &Arc<Self>,
        node: &str,
        reach: &Arc<HashMap<String, Reach>>,
    ) -> Result<(), RpcError> {
        loop {
            let owned = node.to_string();
            let batch = self
                .with_hints(move |hints| hints.for_node(&owned, BATCH))
                .await?;
            if batch.is_empty() {
                return Ok(());
            }
            let mut finished = Vec::new();
            let mut kept = 0usize;
            let mut failure = None;
            let mut running: JoinSet<(Hint, Result<Delivery, RpcError>)> = JoinSet::new();
            let mut pending = batch.into_iter();
            loop {
                while running.len() < HEALS_IN_FLIGHT
                    && let Some(hint) = pending.next()
                {
                    let storage = Arc::clone(self);
                    let reach = reach.clone();
                    running.spawn(async move {
                        let outcome = storage.deliver(&hint, &reach).await;
                        (hint, outcome)
                    });
                }
                let Some(joined) = running.join_next().await else {
                    break;
                };
                let Ok((hint, outcome)) = joined else {
                    continue;
                };
                match outcome {
                    Ok(Delivery::Copied) | Ok(Delivery::Dropped) => finished.push(hint),
                    Ok(Delivery::Kept) => kept += 1,
                    Err(error) => {
                        failure = Some(error);
                        running.abort_all();
                        break;
                    }
                }
            }
            let count = finished.len();
            self.with_hints(move |hints| hints.remove(&finished))
                .await?;
            if count > 0 {
                self.counters
                    .copies_healed
                    .fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(error) = failure {
                return Err(error);
            }
            if count == 0 && kept > 0 {
                // Only undecidable hints are left; try them on a later round.
                return Ok(());
            }
        }
    }

    /// Runs `work` on this node's hints file on a blocking thread (redb waits on the disk).
    async fn with_hints<T: Send + 'static>(
        &self,
        work: impl FnOnce(&crate::hints::Hints) -> Result<T, crate::hints::HintError> + Send + 'static,
    ) -> Result<T, RpcError> {
        let hints = self.hints.clone();
        tokio::task::spawn_blocking(move || work(&hints))
            .await
            .map_err(|error| RpcError::internal(error.to_string()))?
            .map_err(|error| RpcError::internal(error.to_string()))
    }

    /// Deletes on `node`'s bricks the blocks that were dropped while it was away; stops at
    /// the first failure (the node is away again).
    async fn deliver_deletions(
        self: &Arc<Self>,
        node: &str,
        reach: &Arc<HashMap<String, Reach>>,
    ) -> Result<(), RpcError> {
        loop {
            let owned = node.to_string();
            let batch = self
                .with_hints(move |hints| {
                    hints.deletions_for_node(&owned, crate::admin::MAX_DELETE_BLOCKS)
                })
                .await?;
            if batch.is_empty() {
                return Ok(());
            }
            let mut per_brick: HashMap<(String, u64, usize), Vec<BlockId>> = HashMap::new();
            for deletion in &batch {
                per_brick
                    .entry((deletion.volume.clone(), deletion.volume_id, deletion.brick))
                    .or_default()
                    .push(deletion.block);
            }
            let mut deleted = 0u64;
            for ((volume, volume_id, brick), blocks) in per_brick {
                let spec = match self.volume(&volume, Consistency::Stale).await {
                    Ok((spec, _)) if spec.id == volume_id => spec,
                    // The volume is gone or made anew: its bricks were cleared with it.
                    Ok(_) => continue,
                    Err(error) if error.kind == ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                };
                // The brick must still be on that node (a replace-brick clears a brick
                // moved elsewhere; an add- or remove-brick renumbers them).
                if spec.bricks.get(brick).map(|found| found.node.as_str()) != Some(node) {
                    continue;
                }
                deleted += self.delete_copies(&spec, brick, blocks, reach).await?;
            }
            self.with_hints(move |hints| hints.remove_deletions(&batch))
                .await?;
            if deleted > 0 {
                tracing::info!(node, deleted, "deleted the blocks a returning brick missed");
            }
        }
    }

    /// Copies one owed block from a good copy to the brick that missed it.
    async fn deliver(
        self: &Arc<Self>,
        hint: &Hint,
        reach: &HashMap<String, Reach>,
    ) -> Result<Delivery, RpcError> {
        let spec = match self.volume(&hint.volume, Consistency::Stale).await {
            Ok((spec, _)) if spec.id == hint.volume_id => spec,
            Ok(_) => return Ok(Delivery::Dropped),
            Err(error) if error.kind == ErrorKind::NotFound => return Ok(Delivery::Dropped),
            Err(error) => return Err(error),
        };
        // The brick must still be the one the hint was for (an add-brick or remove-brick
        // renumbers bricks; the rebalance moves those blocks instead).
        if spec.bricks.get(hint.brick).map(|brick| &brick.node) != Some(&hint.node) {
            return Ok(Delivery::Dropped);
        }
        let record = self.meta.read(&hint.key, Consistency::Stale, false).await?;
        let current = record.and_then(|found| match StoredEntry::decode(&found.value) {
            Ok(StoredEntry::File(record)) => Some(record),
            _ => None,
        });
        let found = current.as_ref().and_then(|record| {
            (0..record.blocks.len() as u32)
                .find(|index| record.block_id(*index) == hint.block)
                .map(|index| record.blocks[index as usize])
        });
        let Some(block_record) = found else {
            let age_ms = ((now_ns() / 1_000_000).max(0) as u64).saturating_sub(hint.created_ms);
            return Ok(if age_ms > UNCONFIRMED_GRACE_MS {
                Delivery::Dropped
            } else {
                Delivery::Kept
            });
        };
        if let crate::volume::Layout::Erasure { .. } = spec.layout {
            // The missing shard is computed again from the block rebuilt from the others.
            let block = self
                .read_block(&spec, hint.block, block_record, reach)
                .await?;
            let pieces = crate::write::pieces_of(&spec, block_record.hash, block)?;
            let set = spec.set_of_block(&hint.block);
            let Some(position) = spec
                .set_brick_indexes(set)
                .position(|brick| brick == hint.brick)
            else {
                return Ok(Delivery::Dropped);
            };
            let (hash, shard) = pieces[position].clone();
            self.put_copy(&spec, hint.brick, hint.block, hash, shard, reach)
                .await?;
            return Ok(Delivery::Copied);
        }
        let set = spec.set_of_block(&hint.block);
        let mut errors = Vec::new();
        for source in spec.set_brick_indexes(set) {
            if source == hint.brick {
                continue;
            }
            match self
                .get_copy(
                    &spec,
                    source,
                    hint.block,
                    Some(block_record.hash),
                    block_record.length as usize,
                    reach,
                    crate::read::COPY_READ_TIMEOUT,
                )
                .await
            {
                Ok(data) => {
                    self.put_copy(
                        &spec,
                        hint.brick,
                        hint.block,
                        block_record.hash,
                        data,
                        reach,
                    )
                    .await?;
                    return Ok(Delivery::Copied);
                }
                Err(error) => errors.push(format!("brick {source}: {error}")),
            }
        }
        Err(RpcError::new(
            ErrorKind::Unavailable,
            format!(
                "no good copy of block {} of {} to heal from: {}",
                hint.block.index,
                hint.key,
                errors.join("; ")
            ),
        ))
    }
}

impl Storage {
    /// This node's pending copies for `volume`, by brick.
    pub async fn hint_counts(&self, volume: &str) -> Result<Vec<(usize, u64)>, RpcError> {
        let volume = volume.to_string();
        let counts = self
            .with_hints(move |hints| hints.counts(Some(&volume)))
            .await?;
        Ok(counts
            .into_iter()
            .map(|((_, brick), count)| (brick, count))
            .collect())
    }

    /// `volume heal-info`: every live node's pending copies for the volume.
    pub async fn heal_info(&self, volume: &str) -> Result<crate::admin::HealInfo, RpcError> {
        let (spec, _) = self.volume(volume, Consistency::Linearizable).await?;
        let reach = self.reach().await;
        let mut pending = Vec::new();
        let mut unanswered = Vec::new();
        let request = crate::admin::VolumeName {
            name: spec.name.clone(),
        };
        for (node, found) in &reach {
            if matches!(found.state, NodeState::Left) {
                continue;
            }
            let counts = if *node == self.node {
                self.hint_counts(&spec.name).await
            } else if found.state != NodeState::Alive {
                Err(RpcError::new(ErrorKind::Unavailable, "not alive"))
            } else {
                self.call_node(found.address, crate::admin::METHOD_HINT_COUNTS, &request)
                    .await
            };
            match counts {
                Ok(counts) => {
                    for (brick, copies) in counts {
                        pending.push(crate::admin::PendingHeal {
                            brick,
                            node: spec
                                .bricks
                                .get(brick)
                                .map(|brick| brick.node.clone())
                                .unwrap_or_default(),
                            owed_by: node.clone(),
                            copies,
                        });
                    }
                }
                Err(_) => unanswered.push(node.clone()),
            }
        }
        pending.sort_by(|a, b| (a.brick, &a.owed_by).cmp(&(b.brick, &b.owed_by)));
        unanswered.sort();
        Ok(crate::admin::HealInfo {
            volume: spec.name,
            pending,
            unanswered,
        })
    }
}

/// Most blocks one brick may list for a full heal pass (one reply of the RPC).
const MAX_LISTED_BLOCKS: usize = 600_000;

impl Storage {
    /// The blocks on a brick of this node (for a full heal pass elsewhere).
    pub async fn brick_blocks(
        &self,
        request: &crate::admin::BrickRequest,
    ) -> Result<Vec<crate::file::BlockId>, RpcError> {
        let spec = self.spec_for_brick(request).await?;
        let store = self.local_brick(&spec, request.brick)?;
        let blocks = crate::node::blocking(move || store.blocks()).await?;
        if blocks.len() > MAX_LISTED_BLOCKS {
            return Err(RpcError::new(
                ErrorKind::TooLarge,
                format!(
                    "the brick holds {} blocks, more than a heal pass lists ({MAX_LISTED_BLOCKS})",
                    blocks.len()
                ),
            ));
        }
        Ok(blocks)
    }

    /// Starts a full heal pass of `volume` on this node, as a worker
    /// (`store-heal-pass/<volume>`): every block of every file is checked on every brick
    /// of its set, and copied (or its shard rebuilt) where it is missing. It finds what
    /// hints cannot: copies owed by a node that was lost, and a brick replaced empty.
    pub fn start_heal_pass(self: &Arc<Self>, volume: &str, workers: &Workers) {
        let storage = self.clone();
        let volume = volume.to_string();
        // A pass that could not reach every brick runs again (back-off 1 s, doubling to
        // 60 s) until it completes: a move to new bricks must end, and a lost brick's
        // copies must be made once it answers.
        workers.spawn(
            format!("store-heal-pass/{volume}"),
            Restart::OnFailure,
            move |worker| {
                let storage = storage.clone();
                let volume = volume.clone();
                async move { storage.heal_pass(&volume, &worker).await }
            },
        );
    }

    async fn heal_pass(
        self: &Arc<Self>,
        volume: &str,
        worker: &WorkerContext,
    ) -> Result<(), String> {
        worker.set_state(WorkerState::Busy);
        let spec = match self.volume(volume, Consistency::Linearizable).await {
            Ok((spec, _)) => spec,
            // Removed meanwhile: nothing left to heal.
            Err(error) if error.kind == ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error.to_string()),
        };
        let reach = Arc::new(self.reach().await);
        // What each brick holds (None: the brick could not be asked; it is skipped).
        let mut held: Vec<Option<std::collections::HashSet<crate::file::BlockId>>> = Vec::new();
        let mut unlisted = 0u64;
        for (index, brick) in spec.bricks.iter().enumerate() {
            let request = crate::admin::BrickRequest {
                volume: spec.name.clone(),
                volume_id: spec.id,
                brick: index,
                previous_layout: spec.is_previous_layout,
            };
            let listed = if brick.node == self.node {
                self.brick_blocks(&request).await
            } else {
                match reach.get(&brick.node) {
                    Some(found) if found.state == NodeState::Alive => {
                        self.call_node(found.address, crate::admin::METHOD_BRICK_BLOCKS, &request)
                            .await
                    }
                    _ => Err(RpcError::new(ErrorKind::Unavailable, "away")),
                }
            };
            match listed {
                Ok(blocks) => held.push(Some(blocks.into_iter().collect())),
                Err(error) => {
                    worker.report_error(&format!("brick {index} ({}): {error}", brick.node));
                    held.push(None);
                    // What that brick lacks is unknown: the pass is not complete (and a
                    // move to new bricks must not be declared done).
                    unlisted += 1;
                }
            }
        }
        // Read once, for the copies and for the end of a move.
        let records = self
            .file_records(&spec.name)
            .await
            .map_err(|error| error.to_string())?;
        let mut files = 0u64;
        let mut copied = 0u64;
        let mut failed = 0u64;
        for (_, record) in &records {
            files += 1;
            for (index, block_record) in record.blocks.iter().enumerate() {
                let block = record.block_id(index as u32);
                if block.is_zeros() {
                    continue;
                }
                let set = spec.set_of_block(&block);
                let missing: Vec<(usize, usize)> = spec
                    .set_brick_indexes(set)
                    .enumerate()
                    .filter(|(_, brick)| {
                        held[*brick]
                            .as_ref()
                            .is_some_and(|blocks| !blocks.contains(&block))
                    })
                    .collect();
                if missing.is_empty() {
                    continue;
                }
                let data = match self.read_block(&spec, block, *block_record, &reach).await {
                    Ok(data) => data,
                    Err(error) => {
                        failed += missing.len() as u64;
                        worker.report_error(&error.to_string());
                        continue;
                    }
                };
                let pieces = crate::write::pieces_of(&spec, block_record.hash, data)
                    .map_err(|error| error.to_string())?;
                for (position, brick) in missing {
                    let (hash, piece) = pieces[position].clone();
                    match self
                        .put_copy(&spec, brick, block, hash, piece, &reach)
                        .await
                    {
                        Ok(()) => copied += 1,
                        Err(error) => {
                            failed += 1;
                            worker.report_error(&format!("brick {brick}: {error}"));
                        }
                    }
                }
            }
            worker.set_progress(format!(
                "{files} files checked, {copied} copies made, {failed} failed"
            ));
        }
        failed += unlisted;
        // A move to new bricks (add-brick, remove-brick) ends by deleting the copies the
        // old layout placed on bricks that no longer hold those blocks, then forgetting
        // the old layout; only once every block has its copies in the new one.
        if failed == 0
            && let Some(previous) = spec.previous()
        {
            let mut leftovers: HashMap<usize, Vec<crate::file::BlockId>> = HashMap::new();
            for (_, record) in &records {
                for block in record
                    .block_ids()
                    .into_iter()
                    .filter(|block| !block.is_zeros())
                {
                    let now: Vec<&crate::volume::Brick> = spec
                        .set_brick_indexes(spec.set_of_block(&block))
                        .map(|brick| &spec.bricks[brick])
                        .collect();
                    for old in previous.set_brick_indexes(previous.set_of_block(&block)) {
                        if !now.contains(&&previous.bricks[old]) {
                            leftovers.entry(old).or_default().push(block);
                        }
                    }
                }
            }
            for (old, blocks) in leftovers {
                if let Err(error) = self.delete_copies(&previous, old, blocks, &reach).await {
                    worker.report_error(&format!(
                        "deleting moved blocks from {}: {error}",
                        previous.bricks[old].describe(&spec.name)
                    ));
                }
            }
            self.finish_move(&spec)
                .await
                .map_err(|error| error.to_string())?;
            tracing::info!(volume = %spec.name, "data moved to the new bricks; the old layout is forgotten");
        }
        tracing::info!(volume = %spec.name, files, copied, failed, "full heal pass finished");
        worker.set_progress(format!(
            "done: {files} files checked, {copied} copies made, {failed} failed"
        ));
        if failed > 0 {
            return Err(format!("{failed} copies could not be made"));
        }
        Ok(())
    }
}
