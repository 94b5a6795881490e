//! Flush-behind, GlusterFS's `performance.flush-behind` (on by default there): with
//! `bramble mount --flush-behind`, closing a small file written whole returns as soon as
//! its bytes are handed to a commit that runs in the background, instead of after the
//! catalog commit (a Raft round with an fsync on a majority, about 5 ms here). A program
//! that copies many small files one after another (`cp -r`, `tar x`, `git checkout`) then
//! waits for its own work only, and the commits overlap (the catalog batches them).
//!
//! What a program sees, and why it stays correct:
//! - **Through this mount**, a file is there from its close on: until its commit lands
//!   the mount answers `stat`, `lookup` and listings for it itself (the `writing` map),
//!   and every operation that would read or change it on the cluster (open, read,
//!   truncate, rename, unlink, a listing of its directory) first waits for its commit
//!   ([`FlushBehind::settle`]). So one mount keeps the order its programs wrote in.
//! - **Through other mounts and clients** a file appears when its commit lands, a few
//!   milliseconds after the close (NFS's close-to-open then holds again).
//! - **Durability**: as on a local disk, only `fsync` promises it. `fsync` on an open file
//!   stores it synchronously; `fsync` on a directory waits for every commit under it;
//!   unmounting waits for all of them.
//! - **Errors**: a commit that fails (no catalog quorum, a full volume) is logged, the file
//!   is not there (it is never half there: a commit is atomic), and the next `fsync` of
//!   that file or of a directory above it returns EIO, as Linux reports a failed
//!   write-back at the next fsync.
//!
//! **Removals go behind too.** With the option, unlinking a file returns once its removal
//! has started (a local file system's unlink is not durable before the directory's fsync
//! either): until it lands, a lookup of the path waits for it and then finds nothing, a
//! listing of the directory waits for it, and a create of the same name waits for it
//! before storing the new file, so the order stays the program's. A removal that fails is
//! reported like a failed store, at the next fsync of the directory. Directories are
//! removed synchronously (whether one is empty is the cluster's answer).
//!
//! Only files that went through one handle from empty to at most
//! [`BEHIND_MAX_BYTES`] go behind, and at most [`MAX_PENDING`] at once (a close waits for
//! a slot), so the mount's memory stays bounded: the bytes waiting are at most
//! `MAX_PENDING * BEHIND_MAX_BYTES` (256 KiB).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use fuser::Errno;
use tokio::sync::{Semaphore, watch};

use super::lock;

/// The largest file whose close may return before its commit: the size the catalog keeps
/// in a file's record (`bramble_store::file::INLINE_MAX_BYTES`), where the commit is the
/// whole cost of a create.
pub const BEHIND_MAX_BYTES: usize = bramble_store::file::INLINE_MAX_BYTES;
/// Commits in flight at once; a close beyond them waits for one to finish.
const MAX_PENDING: usize = 64;
/// Failed commits remembered until an fsync reports them; past this, the oldest is
/// forgotten (it was logged).
const MAX_REMEMBERED_FAILURES: usize = 1024;

/// The commits of one mount that run behind closes.
pub struct FlushBehind {
    enabled: bool,
    /// Path to a receiver that turns true when that path's commit has ended.
    pending: Mutex<HashMap<String, watch::Receiver<bool>>>,
    slots: Arc<Semaphore>,
    /// Paths whose commit failed, with the errno, in the order they failed.
    failures: Mutex<VecDeque<(String, Errno)>>,
}

/// Whether `path` is `directory` or inside it ("" is the volume's root).
fn is_within(path: &str, directory: &str) -> bool {
    directory.is_empty()
        || path == directory
        || (path.starts_with(directory) && path.as_bytes().get(directory.len()) == Some(&b'/'))
}

impl FlushBehind {
    pub fn new(enabled: bool) -> FlushBehind {
        FlushBehind {
            enabled,
            pending: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(MAX_PENDING)),
            failures: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether closes may return before their commit (`--flush-behind`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Runs `commit` (what `change` does to `path`: "store", "remove") in the background
    /// once a slot is free; `finished` runs after it, success or not, before anyone
    /// waiting on the path goes on.
    pub async fn commit<C, F>(
        self: &Arc<Self>,
        change: &'static str,
        path: String,
        commit: C,
        finished: F,
    ) where
        C: Future<Output = Result<(), Errno>> + Send + 'static,
        F: FnOnce() + Send + 'static,
    {
        // Closed only when the mount is dropped, and then nothing waits here.
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return;
        };
        let (done, receiver) = watch::channel(false);
        lock(&self.pending).insert(path.clone(), receiver.clone());
        let behind = self.clone();
        tokio::spawn(async move {
            let outcome = commit.await;
            if let Err(error) = outcome {
                tracing::warn!(
                    path,
                    change,
                    ?error,
                    "a change that went behind (--flush-behind) failed; the next fsync of the file or of its directory reports EIO"
                );
                let mut failures = lock(&behind.failures);
                if failures.len() >= MAX_REMEMBERED_FAILURES {
                    failures.pop_front();
                }
                failures.push_back((path.clone(), error));
            }
            finished();
            {
                let mut pending = lock(&behind.pending);
                // A later commit of the same path replaces the entry only after waiting
                // for this one, so the entry here is this commit's.
                if pending
                    .get(&path)
                    .is_some_and(|current| current.same_channel(&receiver))
                {
                    pending.remove(&path);
                }
            }
            let _ = done.send(true);
            drop(slot);
        });
    }

    /// Waits until the commit of `path` running behind a close (if any) has ended.
    pub async fn settle(&self, path: &str) {
        let waiting = lock(&self.pending).get(path).cloned();
        if let Some(mut receiver) = waiting {
            let _ = receiver.wait_for(|done| *done).await;
        }
    }

    /// Waits for every commit of a path within `directory` ("" for all of them).
    pub async fn settle_within(&self, directory: &str) {
        let waiting: Vec<watch::Receiver<bool>> = lock(&self.pending)
            .iter()
            .filter(|(path, _)| is_within(path, directory))
            .map(|(_, receiver)| receiver.clone())
            .collect();
        for mut receiver in waiting {
            let _ = receiver.wait_for(|done| *done).await;
        }
    }

    /// Whether a commit of `path` is running behind a close.
    pub fn is_pending(&self, path: &str) -> bool {
        lock(&self.pending).contains_key(path)
    }

    /// Commits running now.
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Takes the first failure of a commit of a path within `directory` (and forgets the
    /// others there: one EIO says the directory lost writes, the log names them).
    pub fn take_failure_within(&self, directory: &str) -> Option<Errno> {
        let mut failures = lock(&self.failures);
        let first = failures
            .iter()
            .find(|(path, _)| is_within(path, directory))
            .map(|(_, error)| *error);
        failures.retain(|(path, _)| !is_within(path, directory));
        first.map(|_| Errno::EIO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn within_matches_whole_path_components() {
        assert!(is_within("a/b", ""));
        assert!(is_within("a/b", "a"));
        assert!(is_within("a", "a"));
        assert!(!is_within("ab/c", "a"));
        assert!(!is_within("a", "a/b"));
    }

    #[tokio::test]
    async fn settle_waits_for_the_commit_and_its_finish() {
        let behind = Arc::new(FlushBehind::new(true));
        let finished = Arc::new(AtomicBool::new(false));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let marker = finished.clone();
        behind
            .commit(
                "store",
                "dir/file".to_string(),
                async move {
                    let _ = released.await;
                    Ok(())
                },
                move || marker.store(true, Ordering::SeqCst),
            )
            .await;
        assert_eq!(behind.pending(), 1);
        // Another path does not wait.
        tokio::time::timeout(Duration::from_secs(1), behind.settle("dir/other"))
            .await
            .expect("an unrelated path does not wait");
        let waiter = {
            let behind = behind.clone();
            tokio::spawn(async move { behind.settle_within("dir").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "settle returned before the commit ended"
        );
        release.send(()).unwrap();
        waiter.await.unwrap();
        assert!(finished.load(Ordering::SeqCst));
        assert_eq!(behind.pending(), 0);
        assert!(behind.take_failure_within("").is_none());
    }

    #[tokio::test]
    async fn a_failed_commit_is_reported_once_within_its_directory() {
        let behind = Arc::new(FlushBehind::new(true));
        behind
            .commit(
                "remove",
                "a/x".to_string(),
                async { Err(Errno::ENOSPC) },
                || {},
            )
            .await;
        behind.settle("a/x").await;
        assert!(behind.take_failure_within("b").is_none());
        assert!(behind.take_failure_within("a").is_some());
        assert!(behind.take_failure_within("a").is_none());
    }
}
