//! Watches on the catalog, filtered on the replica that applies the changes: each watcher
//! names a key prefix and receives only changes under it, into a queue of its own with a
//! bound on entries and bytes. A watcher that stops reading is cut off when its queue
//! fills: its queue is dropped and the next thing it reads is [`Change::Reset`] ("re-read
//! what you follow"), after which it receives new changes again. One stalled watcher can
//! therefore hold at most [`MAX_QUEUED_BYTES`], whatever goes by.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::types::Change;

/// Most changes a watcher's queue holds before it is cut off.
pub const MAX_QUEUED_CHANGES: usize = 1024;
/// Most bytes of keys and values a watcher's queue holds before it is cut off.
pub const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;

fn change_bytes(change: &Change) -> usize {
    match change {
        Change::Key { key, value, .. } => key.len() + value.as_ref().map_or(0, Vec::len) + 16,
        Change::Reset => 16,
    }
}

#[derive(Default)]
struct Queue {
    changes: VecDeque<Change>,
    bytes: usize,
    /// The queue overflowed and was dropped: the watcher reads a Reset next.
    cut_off: bool,
    closed: bool,
}

struct Watcher {
    prefix: String,
    queue: Mutex<Queue>,
    ready: Notify,
}

impl Watcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Every live watcher of one replica.
#[derive(Default)]
pub struct WatchRegistry {
    watchers: Mutex<Vec<Weak<Watcher>>>,
}

impl WatchRegistry {
    /// A new watcher of the changes under `prefix`, from now on.
    pub fn watch(&self, prefix: &str) -> Watch {
        let watcher = Arc::new(Watcher {
            prefix: prefix.to_string(),
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
        });
        self.watchers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(Arc::downgrade(&watcher));
        Watch { watcher }
    }

    /// Hands each change to the watchers whose prefix it falls under (a Reset to all).
    pub fn announce(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let mut watchers = self
            .watchers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        watchers.retain(|watcher| watcher.strong_count() > 0);
        for watcher in watchers.iter().filter_map(Weak::upgrade) {
            let mut queue = watcher.lock();
            let mut added = false;
            for change in changes {
                let wanted = match change {
                    Change::Key { key, .. } => key.starts_with(&watcher.prefix),
                    Change::Reset => true,
                };
                if !wanted || queue.cut_off {
                    continue;
                }
                let bytes = change_bytes(change);
                if queue.changes.len() >= MAX_QUEUED_CHANGES
                    || queue.bytes + bytes > MAX_QUEUED_BYTES
                {
                    queue.changes = VecDeque::new();
                    queue.bytes = 0;
                    queue.cut_off = true;
                } else {
                    queue.changes.push_back(change.clone());
                    queue.bytes += bytes;
                }
                added = true;
            }
            drop(queue);
            if added {
                watcher.ready.notify_one();
            }
        }
    }

    /// How many watchers are open (for status and tests).
    pub fn len(&self) -> usize {
        self.watchers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .filter(|watcher| watcher.strong_count() > 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for WatchRegistry {
    /// The replica is gone (Raft stopped): every watcher reads `None`.
    fn drop(&mut self) {
        let watchers = self
            .watchers
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner());
        for watcher in watchers.iter().filter_map(Weak::upgrade) {
            watcher.lock().closed = true;
            watcher.ready.notify_one();
        }
    }
}

/// Changes under a key prefix, read from this node's replica, in log order.
pub struct Watch {
    watcher: Arc<Watcher>,
}

impl Watch {
    /// The next change under the prefix. A watcher that fell behind, or whose replica was
    /// replaced by a snapshot, gets [`Change::Reset`] and should re-read what it follows.
    /// `None` once the replica is closed.
    pub async fn next(&mut self) -> Option<Change> {
        loop {
            {
                let mut queue = self.watcher.lock();
                if queue.cut_off {
                    queue.cut_off = false;
                    return Some(Change::Reset);
                }
                if let Some(change) = queue.changes.pop_front() {
                    queue.bytes -= change_bytes(&change);
                    return Some(change);
                }
                if queue.closed {
                    return None;
                }
            }
            self.watcher.ready.notified().await;
        }
    }

    /// The next change if one is queued, without waiting.
    pub fn try_next(&mut self) -> Option<Change> {
        let mut queue = self.watcher.lock();
        if queue.cut_off {
            queue.cut_off = false;
            return Some(Change::Reset);
        }
        let change = queue.changes.pop_front()?;
        queue.bytes -= change_bytes(&change);
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, value: &[u8], version: u64) -> Change {
        Change::Key {
            key: name.to_string(),
            value: Some(value.to_vec()),
            version,
        }
    }

    #[test]
    fn watchers_receive_only_their_prefix_and_every_reset() {
        let registry = WatchRegistry::default();
        let mut lb = registry.watch("lb/");
        let mut everything = registry.watch("");
        registry.announce(&[key("lb/a", b"1", 1), key("jobs/b", b"2", 2), Change::Reset]);
        assert_eq!(lb.try_next(), Some(key("lb/a", b"1", 1)));
        assert_eq!(lb.try_next(), Some(Change::Reset));
        assert_eq!(lb.try_next(), None);
        assert_eq!(everything.try_next(), Some(key("lb/a", b"1", 1)));
        assert_eq!(everything.try_next(), Some(key("jobs/b", b"2", 2)));
        assert_eq!(everything.try_next(), Some(Change::Reset));
    }

    #[test]
    fn a_watcher_that_stops_reading_is_cut_off_then_resumes() {
        let registry = WatchRegistry::default();
        let mut stalled = registry.watch("k");
        let value = vec![7u8; 64 * 1024];
        for version in 1..=1_000u64 {
            registry.announce(&[key("k", &value, version)]);
            let queue = stalled.watcher.lock();
            assert!(queue.bytes <= MAX_QUEUED_BYTES);
            assert!(queue.changes.len() <= MAX_QUEUED_CHANGES);
        }
        assert_eq!(stalled.try_next(), Some(Change::Reset));
        assert_eq!(stalled.try_next(), None, "the backlog was dropped");
        registry.announce(&[key("k", b"new", 1_001)]);
        assert_eq!(stalled.try_next(), Some(key("k", b"new", 1_001)));
    }

    #[tokio::test]
    async fn waiting_watchers_wake_and_closed_registries_end_them() {
        let registry = WatchRegistry::default();
        let mut watch = registry.watch("");
        let waiter = tokio::spawn(async move {
            let first = watch.next().await;
            let second = watch.next().await;
            (first, second)
        });
        tokio::task::yield_now().await;
        registry.announce(&[key("a", b"1", 1)]);
        drop(registry);
        let (first, second) = waiter.await.unwrap();
        assert_eq!(first, Some(key("a", b"1", 1)));
        assert_eq!(second, None);
    }

    #[test]
    fn dropped_watchers_are_forgotten() {
        let registry = WatchRegistry::default();
        let watch = registry.watch("a");
        assert_eq!(registry.len(), 1);
        drop(watch);
        registry.announce(&[key("a", b"1", 1)]);
        assert!(registry.is_empty());
    }
}
