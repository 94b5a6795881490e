//! Scrub (worker `store-scrub`): re-reads every block on this node's bricks in the
//! background, checks it against the hash in its header, and rewrites a corrupt or
//! unreadable one from the good copies (or, in an erasure-coded set, from the other
//! shards). A pass runs at start-up after a short delay, then every
//! [`SCRUB_INTERVAL`], or at once when asked (`volume scrub`); it reads at most
//! `BRAMBLE_SCRUB_MIB_PER_SECOND` (default 32) so it never crowds out the node's real
//! work, and reports what it found in the log, in `bramble workers` and in the
//! subsystem's counters.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bramble_meta::api::Consistency;
use bramble_net::{ErrorKind, RpcError};
use bramble_util::{Restart, WorkerContext, WorkerState, Workers};
use bytes::Bytes;
use tokio::sync::Notify;

use crate::brick::BrickError;
use crate::file::BlockId;
use crate::keys;
use crate::node::{Reach, Storage, blocking};
use crate::volume::{Layout, VolumeSpec};

/// Time between scheduled passes.
pub const SCRUB_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// A block no record refers to is deleted by scrub once it is this old: younger ones may
/// belong to a write still in progress (its record is committed last).
/// `BRAMBLE_ORPHAN_GRACE_SECS` changes it (the drills use 0).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

fn orphan_grace() -> Duration {
    std::env::var("BRAMBLE_ORPHAN_GRACE_SECS")
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(ORPHAN_GRACE)
}
/// Delay before the first pass after start-up (a restarting node has other work first).
const FIRST_PASS_AFTER: Duration = Duration::from_secs(600);
const DEFAULT_RATE_MIB: u64 = 32;

/// Asks the scrub worker to start a pass now.
#[derive(Default)]
pub struct ScrubTrigger {
    notify: Notify,
}

impl ScrubTrigger {
    pub fn start_now(&self) {
        self.notify.notify_one();
    }
}

fn rate_bytes_per_second() -> u64 {
    std::env::var("BRAMBLE_SCRUB_MIB_PER_SECOND")
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .filter(|rate| *rate > 0)
        .unwrap_or(DEFAULT_RATE_MIB)
        * 1024
        * 1024
}

pub fn start_worker(storage: &Arc<Storage>, workers: &Workers) {
    let storage = storage.clone();
    workers.spawn("store-scrub", Restart::OnFailure, move |worker| {
        let storage = storage.clone();
        async move {
            let mut shutdown = worker.shutdown();
            let mut wait = FIRST_PASS_AFTER;
            loop {
                worker.set_state(WorkerState::Idle);
                tokio::select! {
                    _ = shutdown.wait() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                    _ = storage.scrub_trigger.notify.notified() => {}
                }
                storage.scrub_pass(&worker).await;
                wait = SCRUB_INTERVAL;
            }
        }
    });
}

impl Storage {
    /// One pass over every brick on this node.
    async fn scrub_pass(self: &Arc<Self>, worker: &WorkerContext) {
        let volumes = match self
            .meta
            .list(keys::VOLUMES_PREFIX, 1_000, Consistency::Stale, false)
            .await
        {
            Ok(found) => found,
            Err(error) => {
                worker.report_error(&format!("listing volumes: {error}"));
                return;
            }
        };
        let rate = rate_bytes_per_second();
        let started = Instant::now();
        let mut checked = 0u64;
        let mut bytes = 0u64;
        let mut bad = 0u64;
        for (_, value) in volumes {
            let Ok(spec) = postcard::from_bytes::<VolumeSpec>(&value.value) else {
                continue;
            };
            // The versions the volume's records refer to, read once per pass; a block of
            // any other version is an orphan (a write that died, a file removed while
            // this brick was away) and is deleted once it is old enough.
            let referenced = match self.referenced_versions(&spec).await {
                Ok(versions) => Some(versions),
                Err(error) => {
                    worker.report_error(&format!("reading the records of {}: {error}", spec.name));
                    None
                }
            };
            for brick in spec.bricks_on(&self.node).collect::<Vec<_>>() {
                let store = match self.local_brick(&spec, brick) {
                    Ok(store) => store,
                    Err(error) => {
                        worker.report_error(&format!("brick {brick} of {}: {error}", spec.name));
                        continue;
                    }
                };
                let listing = store.clone();
                let blocks = match blocking(move || listing.blocks()).await {
                    Ok(blocks) => blocks,
                    Err(error) => {
                        worker.report_error(&format!("brick {brick} of {}: {error}", spec.name));
                        continue;
                    }
                };
                let total = blocks.len();
                for (done, block) in blocks.into_iter().enumerate() {
                    worker.set_state(WorkerState::Busy);
                    worker.set_progress(format!(
                        "{} brick {}: {done}/{total} blocks",
                        spec.name,
                        brick + 1
                    ));
                    if let Some(referenced) = &referenced
                        && !referenced.contains(&block.version)
                    {
                        let brick_store = store.clone();
                        let grace = orphan_grace();
                        let removed = tokio::task::spawn_blocking(move || {
                            match brick_store.block_age(&block) {
                                Some(age) if age >= grace => {
                                    brick_store.delete(&block).unwrap_or(false)
                                }
                                _ => false,
                            }
                        })
                        .await
                        .unwrap_or(false);
                        if removed {
                            self.counters
                                .orphans_removed
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        // No record reads it, so there is nothing to check: a young one
                        // may be a write still under way (written in place, so short
                        // until it is done), or a torn one that will go when old enough.
                        continue;
                    }
                    let reader = store.clone();
                    let outcome = tokio::task::spawn_blocking(move || reader.get(&block, None))
                        .await
                        .unwrap_or_else(|error| {
                            Err(BrickError::Corrupt {
                                block: block.file_name(),
                                reason: error.to_string(),
                            })
                        });
                    checked += 1;
                    match outcome {
                        Ok(data) => bytes += data.len() as u64,
                        // Deleted since the listing (a file removed meanwhile).
                        Err(BrickError::Missing { .. }) => {}
                        Err(error) => {
                            bad += 1;
                            let error = crate::node::brick_error(error);
                            self.report_corrupt(&spec, brick, &block, &error);
                            match self.repair_local(&spec, brick, block).await {
                                Ok(()) => {
                                    self.counters
                                        .blocks_repaired
                                        .fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!(volume = %spec.name, brick, block = %block.file_name(), "scrub repaired a corrupt block copy");
                                }
                                Err(error) => worker.report_error(&format!(
                                    "could not repair block {} of {} brick {brick}: {error}",
                                    block.file_name(),
                                    spec.name
                                )),
                            }
                        }
                    }
                    self.counters
                        .blocks_scrubbed
                        .fetch_add(1, Ordering::Relaxed);
                    // Throttle: never ahead of the rate since the pass began.
                    let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
                    let elapsed = started.elapsed();
                    if due > elapsed {
                        worker.set_state(WorkerState::Throttled);
                        tokio::time::sleep(due - elapsed).await;
                    }
                }
            }
        }
        tracing::info!(
            blocks = checked,
            corrupt = bad,
            seconds = started.elapsed().as_secs_f64(),
            "scrub pass finished"
        );
        worker.set_progress(format!(
            "last pass: {checked} blocks, {bad} corrupt, {:.1} s",
            started.elapsed().as_secs_f64()
        ));
    }

    /// Rewrites this node's copy (or shard) of `block` on brick `brick` from the others.
    pub async fn repair_local(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        brick: usize,
        block: BlockId,
    ) -> Result<(), RpcError> {
        let reach: HashMap<String, Reach> = self.reach().await;
        let set = spec.set_of_block(&block);
        let members: Vec<usize> = spec.set_brick_indexes(set).collect();
        let Some(position) = members.iter().position(|member| *member == brick) else {
            return Err(RpcError::internal("the brick is not in the block's set"));
        };
        let mut errors = Vec::new();
        match spec.layout {
            Layout::Replicated { .. } => {
                for other in members.iter().filter(|other| **other != brick) {
                    match self
                        .get_copy(
                            spec,
                            *other,
                            block,
                            None,
                            // The length is not known here; the buffer grows.
                            0,
                            &reach,
                            crate::read::COPY_READ_TIMEOUT,
                        )
                        .await
                    {
                        Ok(data) => {
                            let hash = *blake3::hash(&data).as_bytes();
                            return self.put_copy(spec, brick, block, hash, data, &reach).await;
                        }
                        Err(error) => errors.push(format!("brick {other}: {error}")),
                    }
                }
            }
            Layout::Erasure { data, parity } => {
                let (data, parity) = (usize::from(data), usize::from(parity));
                let mut shards: Vec<Option<Bytes>> = vec![None; members.len()];
                for (index, other) in members.iter().enumerate() {
                    if index == position {
                        continue;
                    }
                    match self
                        .get_copy(
                            spec,
                            *other,
                            block,
                            None,
                            // The length is not known here; the buffer grows.
                            0,
                            &reach,
                            crate::read::COPY_READ_TIMEOUT,
                        )
                        .await
                    {
                        Ok(shard) => shards[index] = Some(shard),
                        Err(error) => errors.push(format!("brick {other}: {error}")),
                    }
                    if shards.iter().flatten().count() >= data {
                        break;
                    }
                }
                if let Some(length) = shards.iter().flatten().map(Bytes::len).next() {
                    // The padded block (shard length x data) encodes to the same shards.
                    let padded = crate::erasure::decode(length * data, data, parity, &shards)
                        .map_err(RpcError::internal)?;
                    let pieces = crate::erasure::encode(&padded, data, parity)
                        .map_err(RpcError::internal)?;
                    let shard = pieces[position].clone();
                    let hash = *blake3::hash(&shard).as_bytes();
                    return self.put_copy(spec, brick, block, hash, shard, &reach).await;
                }
            }
        }
        Err(RpcError::new(
            ErrorKind::Unavailable,
            format!("no good copy to repair from: {}", errors.join("; ")),
        ))
    }
}

impl Storage {
    /// Starts a scrub pass now on every live node holding a brick of `volume`; returns
    /// the nodes asked.
    pub async fn start_scrub(&self, volume: &str) -> Result<Vec<String>, RpcError> {
        let (spec, _) = self.volume(volume, Consistency::Linearizable).await?;
        let reach = self.reach().await;
        let mut nodes: Vec<String> = spec.bricks.iter().map(|brick| brick.node.clone()).collect();
        nodes.sort();
        nodes.dedup();
        let mut asked = Vec::new();
        for node in nodes {
            if node == self.node {
                self.scrub_trigger.start_now();
                asked.push(node);
                continue;
            }
            let Some(found) = reach.get(&node) else {
                continue;
            };
            if self
                .call_node::<_, ()>(found.address, crate::admin::METHOD_SCRUB_HERE, &())
                .await
                .is_ok()
            {
                asked.push(node);
            }
        }
        Ok(asked)
    }
}

impl Storage {
    /// Every version the records of `spec`'s volume (files and multipart parts) refer to.
    async fn referenced_versions(
        &self,
        spec: &VolumeSpec,
    ) -> Result<std::collections::HashSet<u128>, RpcError> {
        let mut versions = std::collections::HashSet::new();
        for prefix in [
            keys::files_prefix(&spec.name),
            format!("store/uploads/{}/", spec.name),
        ] {
            for (_, value) in self.scan_all(&prefix, usize::MAX - 1).await? {
                if let Ok(crate::file::StoredEntry::File(record)) =
                    crate::file::StoredEntry::decode(&value.value)
                {
                    versions.insert(record.version);
                    versions.extend(record.block_ids().iter().map(|block| block.version));
                }
            }
        }
        Ok(versions)
    }
}
