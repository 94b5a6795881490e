//! The bytes of small files, as a directory listing brought them, so that reading such a
//! file right after listing its directory needs no call to an agent.
//!
//! `cp -r` out of the mount lists a directory, then opens and reads every file in it: one
//! call per file, most of the time of a small file's read-back. The agent keeps a small
//! file's bytes in its catalog record, and a listing reads those records anyway, so the
//! mount's listings ask for them (`store.fs_list_content`). They are kept for
//! [`FRESH_FOR`] from the moment the listing was sent, the same second for which the
//! kernel keeps the attributes (size, time) that came with them; an open within that
//! second reads them. This mount's own changes to a path (a write, a truncate, a removal,
//! a rename) drop what it held for it, and a newer version seen by a lookup does too. A
//! file another client rewrote less than [`FRESH_FOR`] ago may be read as it was — the
//! bargain GlusterFS's quick-read translator makes (on by default, 1 s by default).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::lock;

/// How long listed bytes are read instead of the cluster's, after the listing was sent.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Most bytes held at once; a listing past it brings no more until older ones expire.
pub const CAPACITY_BYTES: usize = 16 * 1024 * 1024;

/// When a listing that asks for bytes was sent, and what this mount had changed by then.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    asked: Instant,
    changes: u64,
}

struct Held {
    version: u64,
    bytes: Bytes,
    since: Instant,
}

/// Small files' bytes from recent listings (see the module documentation).
#[derive(Default)]
pub struct QuickRead {
    held: Mutex<Holding>,
    /// The agent answered that it sends no bytes with listings (an older version).
    unsupported: AtomicBool,
}

#[derive(Default)]
struct Holding {
    files: HashMap<String, Held>,
    bytes: usize,
    /// Counts this mount's changes: a listing sent before one may hold bytes it replaced.
    changes: u64,
}

impl Holding {
    fn drop_expired(&mut self, now: Instant) {
        let mut freed = 0;
        self.files.retain(|_, held| {
            let keep = now.saturating_duration_since(held.since) < FRESH_FOR;
            if !keep {
                freed += held.bytes.len();
            }
            keep
        });
        self.bytes -= freed;
    }

    fn remove(&mut self, path: &str) {
        if let Some(held) = self.files.remove(path) {
            self.bytes -= held.bytes.len();
        }
    }
}

impl QuickRead {
    /// Whether a listing should ask for bytes (there is room for some), and if so the
    /// ticket to hand to [`QuickRead::learn`] with its answer.
    pub fn ticket(&self) -> Option<Ticket> {
        if self.unsupported.load(Ordering::Relaxed) {
            return None;
        }
        let mut holding = lock(&self.held);
        holding.drop_expired(Instant::now());
        (holding.bytes < CAPACITY_BYTES).then(|| Ticket {
            asked: Instant::now(),
            changes: holding.changes,
        })
    }

    /// Keeps the bytes of files (path, version, bytes) a listing brought, as many as fit;
    /// none if this mount changed anything since the listing was sent (its answer may
    /// hold what the change replaced).
    pub fn learn(&self, ticket: Ticket, files: impl IntoIterator<Item = (String, u64, Bytes)>) {
        let mut holding = lock(&self.held);
        if holding.changes != ticket.changes {
            return;
        }
        holding.drop_expired(Instant::now());
        let asked = ticket.asked;
        for (path, version, bytes) in files {
            holding.remove(&path);
            if holding.bytes + bytes.len() > CAPACITY_BYTES {
                continue;
            }
            holding.bytes += bytes.len();
            holding.files.insert(
                path,
                Held {
                    version,
                    bytes,
                    since: asked,
                },
            );
        }
    }

    /// The agent does not send bytes with listings: stop asking.
    pub fn agent_lacks_content(&self) {
        self.unsupported.store(true, Ordering::Relaxed);
    }

    /// The bytes of `path` if a listing brought them less than [`FRESH_FOR`] ago.
    pub fn bytes(&self, path: &str) -> Option<Bytes> {
        let mut holding = lock(&self.held);
        let fresh = holding
            .files
            .get(path)
            .map(|held| held.since.elapsed() < FRESH_FOR)?;
        if !fresh {
            holding.remove(path);
            return None;
        }
        holding.files.get(path).map(|held| held.bytes.clone())
    }

    /// A lookup saw `path` at `version`: bytes of another version are dropped.
    pub fn seen(&self, path: &str, version: u64) {
        let mut holding = lock(&self.held);
        if holding
            .files
            .get(path)
            .is_some_and(|held| held.version != version)
        {
            holding.remove(path);
        }
    }

    /// This mount is changing `path` (or has just changed it): what it held for it is no
    /// longer the file, and listings already on their way are not trusted either.
    pub fn forget(&self, path: &str) {
        let mut holding = lock(&self.held);
        holding.remove(path);
        holding.changes += 1;
    }

    /// A rename moves whole trees: nothing held is trusted.
    pub fn forget_all(&self) {
        let mut holding = lock(&self.held);
        holding.files.clear();
        holding.bytes = 0;
        holding.changes += 1;
    }

    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        lock(&self.held).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, version: u64, size: usize) -> (String, u64, Bytes) {
        (path.to_string(), version, Bytes::from(vec![7u8; size]))
    }

    fn ticket(quick: &QuickRead) -> Ticket {
        quick.ticket().expect("room")
    }

    #[test]
    fn listed_bytes_are_read_for_a_second_then_dropped() {
        let quick = QuickRead::default();
        quick.learn(ticket(&quick), [file("d/a", 3, 10)]);
        assert_eq!(quick.bytes("d/a").map(|bytes| bytes.len()), Some(10));
        assert_eq!(quick.bytes("d/b"), None);
        let mut old = ticket(&quick);
        old.asked -= FRESH_FOR + Duration::from_millis(1);
        quick.learn(old, [file("d/old", 1, 10)]);
        assert_eq!(quick.bytes("d/old"), None);
        assert_eq!(quick.held_bytes(), 10);
    }

    #[test]
    fn a_listing_sent_before_a_change_here_is_not_trusted() {
        let quick = QuickRead::default();
        let before = ticket(&quick);
        quick.forget("d/a");
        quick.learn(before, [file("d/a", 1, 10), file("d/b", 1, 10)]);
        assert_eq!(quick.bytes("d/a"), None);
        assert_eq!(quick.bytes("d/b"), None);
        quick.learn(ticket(&quick), [file("d/a", 2, 10)]);
        assert!(quick.bytes("d/a").is_some());
    }

    #[test]
    fn changes_and_newer_versions_drop_what_was_held() {
        let quick = QuickRead::default();
        quick.learn(
            ticket(&quick),
            [file("a", 1, 5), file("b", 1, 5), file("c", 1, 5)],
        );
        quick.seen("a", 1);
        assert!(quick.bytes("a").is_some(), "the same version stays");
        quick.seen("a", 2);
        assert_eq!(quick.bytes("a"), None);
        quick.forget("b");
        assert_eq!(quick.bytes("b"), None);
        assert_eq!(quick.held_bytes(), 5);
        quick.forget_all();
        assert_eq!(quick.bytes("c"), None);
        assert_eq!(quick.held_bytes(), 0);
    }

    #[test]
    fn never_holds_more_than_its_capacity() {
        let quick = QuickRead::default();
        let size = 4096;
        let files =
            (0..(CAPACITY_BYTES / size + 100)).map(|index| file(&format!("f{index}"), 1, size));
        let first = ticket(&quick);
        quick.learn(first, files);
        assert_eq!(quick.held_bytes(), CAPACITY_BYTES);
        assert!(
            quick.ticket().is_none(),
            "no room: listings ask for no bytes"
        );
        // Relearning a held file replaces it rather than counting it twice.
        quick.learn(first, [file("f0", 2, size)]);
        assert_eq!(quick.held_bytes(), CAPACITY_BYTES);
    }
}
