//! The reclaim worker (`store-reclaim`): deletes the block copies a committed change no
//! longer refers to (a removed file's, an overwritten file's, the blocks a patch
//! replaced) after the change has been answered, so a removal or an in-place write does
//! not wait for the deletions on every brick.
//!
//! Nothing depends on the deletion for correctness: block ids are never reused (each
//! write draws a new version), and a block left behind — the agent stopped with the queue
//! not empty, a brick was away — is an orphan, which scrub removes once it is an hour old,
//! as it does for writes that died. When the worker is not running or its queue is full,
//! the blocks are deleted at once, as before, so the queue never holds more than
//! [`QUEUE_LENGTH`] changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bramble_meta::api::Consistency;
use bramble_util::{Restart, WorkerState, Workers};
use tokio::sync::mpsc;

use crate::file::BlockId;
use crate::node::{Reach, Storage};
use crate::volume::VolumeSpec;

/// Changes whose blocks may wait for the worker at once.
pub const QUEUE_LENGTH: usize = 4096;

/// The blocks of one committed change, to delete from their volume's bricks.
struct Unreferenced {
    spec: VolumeSpec,
    blocks: Vec<BlockId>,
}

/// The queue between the storage paths and the worker.
pub struct Reclaim {
    sender: mpsc::Sender<Unreferenced>,
    receiver: tokio::sync::Mutex<mpsc::Receiver<Unreferenced>>,
    /// Whether a worker is taking from the queue (none in a `Storage` without workers).
    running: AtomicBool,
}

impl Default for Reclaim {
    fn default() -> Reclaim {
        let (sender, receiver) = mpsc::channel(QUEUE_LENGTH);
        Reclaim {
            sender,
            receiver: tokio::sync::Mutex::new(receiver),
            running: AtomicBool::new(false),
        }
    }
}

/// Marks the worker stopped when its run ends, however it ends.
struct RunningFlag<'a>(&'a AtomicBool);

impl Drop for RunningFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Storage {
    /// Deletes the blocks a committed change stopped referring to: handed to the reclaim
    /// worker, or deleted now when it cannot take them.
    pub(crate) async fn discard_committed(
        &self,
        spec: &VolumeSpec,
        blocks: Vec<BlockId>,
        reach: &HashMap<String, Reach>,
    ) {
        if blocks.iter().all(BlockId::is_zeros) {
            return;
        }
        let blocks = if self.reclaim.running.load(Ordering::Acquire) {
            let unreferenced = Unreferenced {
                spec: spec.clone(),
                blocks,
            };
            match self.reclaim.sender.try_send(unreferenced) {
                Ok(()) => return,
                Err(
                    mpsc::error::TrySendError::Full(unreferenced)
                    | mpsc::error::TrySendError::Closed(unreferenced),
                ) => unreferenced.blocks,
            }
        } else {
            blocks
        };
        self.discard_blocks(spec, blocks, reach).await;
    }
}

pub fn start_worker(storage: &Arc<Storage>, workers: &Workers) {
    let storage = storage.clone();
    workers.spawn("store-reclaim", Restart::OnFailure, move |worker| {
        let storage = storage.clone();
        async move {
            let mut receiver = storage.reclaim.receiver.lock().await;
            storage.reclaim.running.store(true, Ordering::Release);
            let _running = RunningFlag(&storage.reclaim.running);
            let mut shutdown = worker.shutdown();
            loop {
                worker.set_queue(receiver.len() as u64);
                if receiver.is_empty() {
                    worker.set_state(WorkerState::Idle);
                }
                let unreferenced = tokio::select! {
                    _ = shutdown.wait() => return Ok(()),
                    next = receiver.recv() => match next {
                        Some(unreferenced) => unreferenced,
                        None => return Ok(()),
                    },
                };
                worker.set_state(WorkerState::Busy);
                // A volume removed meanwhile has had its bricks cleared whole: deleting
                // from them again could only bring back directories of a gone volume.
                match storage
                    .volume(&unreferenced.spec.name, Consistency::Stale)
                    .await
                {
                    Ok((current, _)) if current.id == unreferenced.spec.id => {}
                    _ => continue,
                }
                let reach = storage.reach().await;
                storage
                    .discard_blocks(&unreferenced.spec, unreferenced.blocks, &reach)
                    .await;
            }
        }
    });
}
