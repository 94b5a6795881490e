//! Small files read one after another in a directory, fetched a page at a time: reading
//! each of them then needs no call of its own to an agent.
//!
//! `cp -r` out of the mount opens and reads every file of a directory in name order: one
//! call per file, most of the time of a small file's read-back. The agent keeps a small
//! file's bytes in its catalog record, so a listing page can carry them
//! (`store.fs_list_content`). When a file is opened in a directory whose previous open,
//! less than [`FRESH_FOR`] ago, was of a name before it, the mount asks for the page of
//! [`READ_AHEAD_FILES`] entries that follows that name, and keeps the bytes it brings for
//! [`FRESH_FOR`] from the moment the page was asked for — the same second for which the
//! kernel keeps a file's attributes; opens within that second read them. This mount's own
//! changes to a path (a write, a truncate, a removal, a rename) drop what it held for it,
//! and a page asked for before such a change is not kept; a newer version seen by a
//! lookup drops the bytes too. A file another client rewrote less than [`FRESH_FOR`] ago
//! may be read as it was — the bargain GlusterFS's quick-read translator makes (on by
//! default, with a 1 s cache timeout by default).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use bramble_store::paths;

use super::inodes::child_path;
use super::lock;

/// How long listed bytes are read instead of the cluster's, after the listing was sent.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Most bytes held at once; a page past it brings no more until older ones expire.
pub const CAPACITY_BYTES: usize = 16 * 1024 * 1024;
/// Entries one read-ahead page lists (a catalog scan page also ends at 1 MiB of records,
/// about 250 small files).
pub const READ_AHEAD_FILES: u32 = 256;
/// Directories whose reading order is followed at once; the oldest is dropped beyond.
const MAX_SEQUENCES: usize = 16;

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
    /// Per directory, the files opened in it lately.
    sequences: HashMap<String, Sequence>,
}

/// The last open in a directory, and how far the last read-ahead page reached.
struct Sequence {
    last_opened: String,
    at: Instant,
    /// The page asked for at this instant covered the names up to this one (`None`: to
    /// the end of the directory).
    covered: Option<(Instant, Option<String>)>,
}

impl Sequence {
    /// Whether the last page, still fresh, already answered for `name` (a file it
    /// brought no bytes for is not small, or gone: it is asked for alone).
    fn covers(&self, name: &str) -> bool {
        match &self.covered {
            Some((asked, until)) if asked.elapsed() < FRESH_FOR => {
                until.as_deref().is_none_or(|until| name <= until)
            }
            _ => false,
        }
    }
}

/// What an open should do.
#[derive(Debug)]
pub enum Plan {
    /// Read these bytes: the whole file.
    Hit(Bytes),
    /// Ask for the page after `start_after` (a path) in `directory`, then look again.
    ReadAhead {
        directory: String,
        start_after: String,
        ticket: Ticket,
    },
    /// Read the file from the cluster.
    Ask,
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

    fn follow(&mut self, directory: &str, name: &str) {
        let now = Instant::now();
        if let Some(sequence) = self.sequences.get_mut(directory) {
            sequence.last_opened = name.to_string();
            sequence.at = now;
            return;
        }
        if self.sequences.len() >= MAX_SEQUENCES {
            let oldest = self
                .sequences
                .iter()
                .min_by_key(|(_, sequence)| sequence.at)
                .map(|(directory, _)| directory.clone());
            if let Some(oldest) = oldest {
                self.sequences.remove(&oldest);
            }
        }
        self.sequences.insert(
            directory.to_string(),
            Sequence {
                last_opened: name.to_string(),
                at: now,
                covered: None,
            },
        );
    }

    fn remove(&mut self, path: &str) {
        if let Some(held) = self.files.remove(path) {
            self.bytes -= held.bytes.len();
        }
    }

    fn fresh(&mut self, path: &str) -> Option<Bytes> {
        let fresh = self
            .files
            .get(path)
            .map(|held| held.since.elapsed() < FRESH_FOR)?;
        if !fresh {
            self.remove(path);
            return None;
        }
        self.files.get(path).map(|held| held.bytes.clone())
    }
}

impl QuickRead {
    /// What an open of `path` for reading should do (see the module documentation).
    pub fn open(&self, path: &str) -> Plan {
        let directory = paths::parent(path);
        let name = paths::file_name(path);
        let mut holding = lock(&self.held);
        if let Some(bytes) = holding.fresh(path) {
            holding.follow(directory, name);
            return Plan::Hit(bytes);
        }
        let read_ahead = holding.sequences.get(directory).and_then(|sequence| {
            let in_order = sequence.at.elapsed() < FRESH_FOR
                && sequence.last_opened.as_str() < name
                && !sequence.covers(name);
            in_order.then(|| child_path(directory, &sequence.last_opened))
        });
        holding.follow(directory, name);
        let Some(start_after) = read_ahead else {
            return Plan::Ask;
        };
        holding.drop_expired(Instant::now());
        if holding.bytes >= CAPACITY_BYTES || self.unsupported.load(Ordering::Relaxed) {
            return Plan::Ask;
        }
        Plan::ReadAhead {
            directory: directory.to_string(),
            start_after,
            ticket: Ticket {
                asked: Instant::now(),
                changes: holding.changes,
            },
        }
    }

    /// Keeps the bytes of files (path, version, bytes) a read-ahead page of `directory`
    /// brought, as many as fit, and how far it reached (`covered_until`, a name; `None`:
    /// the end of the directory); nothing if this mount changed anything since the page
    /// was asked for (its answer may hold what the change replaced). Returns how many
    /// files it kept.
    pub fn learn(
        &self,
        ticket: Ticket,
        directory: &str,
        covered_until: Option<String>,
        files: impl IntoIterator<Item = (String, u64, Bytes)>,
    ) -> usize {
        let mut holding = lock(&self.held);
        if holding.changes != ticket.changes {
            return 0;
        }
        if let Some(sequence) = holding.sequences.get_mut(directory) {
            sequence.covered = Some((ticket.asked, covered_until));
        }
        holding.drop_expired(Instant::now());
        let asked = ticket.asked;
        let mut kept = 0;
        for (path, version, bytes) in files {
            holding.remove(&path);
            if holding.bytes + bytes.len() > CAPACITY_BYTES {
                continue;
            }
            holding.bytes += bytes.len();
            kept += 1;
            holding.files.insert(
                path,
                Held {
                    version,
                    bytes,
                    since: asked,
                },
            );
        }
        kept
    }

    /// The agent does not send bytes with listings (an older version): stop asking.
    pub fn agent_lacks_content(&self) {
        self.unsupported.store(true, Ordering::Relaxed);
    }

    /// The bytes of `path` if a page brought them less than [`FRESH_FOR`] ago.
    pub fn bytes(&self, path: &str) -> Option<Bytes> {
        lock(&self.held).fresh(path)
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

    /// Opens `first` then `second` in one directory: the second asks for a page.
    fn read_ahead_after(quick: &QuickRead, first: &str, second: &str) -> (String, Ticket) {
        assert!(matches!(quick.open(first), Plan::Ask));
        match quick.open(second) {
            Plan::ReadAhead {
                start_after,
                ticket,
                ..
            } => (start_after, ticket),
            other => panic!("expected a read-ahead, got {other:?}"),
        }
    }

    #[test]
    fn files_opened_in_order_are_read_from_one_page_for_a_second() {
        let quick = QuickRead::default();
        let (start_after, ticket) = read_ahead_after(&quick, "d/a", "d/b");
        assert_eq!(start_after, "d/a");
        quick.learn(
            ticket,
            "d",
            Some("cz".to_string()),
            [file("d/b", 3, 10), file("d/c", 3, 10)],
        );
        assert_eq!(quick.bytes("d/b").map(|bytes| bytes.len()), Some(10));
        assert!(matches!(quick.open("d/c"), Plan::Hit(bytes) if bytes.len() == 10));
        // A name the page covered without bytes (a large file) is read alone, with no
        // second page; a name past the page asks for the next one.
        assert!(matches!(quick.open("d/ca"), Plan::Ask));
        assert!(
            matches!(quick.open("d/e"), Plan::ReadAhead { start_after, .. } if start_after == "d/ca")
        );
        // Out of order: no page.
        assert!(matches!(quick.open("d/0"), Plan::Ask));
        // Bytes from a page asked for over a second ago are not used.
        let (_, mut old) = read_ahead_after(&quick, "old/a", "old/b");
        old.asked -= FRESH_FOR + Duration::from_millis(1);
        quick.learn(old, "old", None, [file("old/c", 1, 10)]);
        assert_eq!(quick.bytes("old/c"), None);
        assert_eq!(quick.held_bytes(), 20);
    }

    #[test]
    fn a_page_asked_for_before_a_change_here_is_not_kept() {
        let quick = QuickRead::default();
        let (_, before) = read_ahead_after(&quick, "d/a", "d/b");
        quick.forget("d/c");
        quick.learn(before, "d", None, [file("d/b", 1, 10), file("d/c", 1, 10)]);
        assert_eq!(quick.bytes("d/b"), None);
        assert_eq!(quick.bytes("d/c"), None);
    }

    #[test]
    fn changes_and_newer_versions_drop_what_was_held() {
        let quick = QuickRead::default();
        let (_, ticket) = read_ahead_after(&quick, "a", "b");
        quick.learn(
            ticket,
            "",
            None,
            [file("b", 1, 5), file("c", 1, 5), file("d", 1, 5)],
        );
        quick.seen("b", 1);
        assert!(quick.bytes("b").is_some(), "the same version stays");
        quick.seen("b", 2);
        assert_eq!(quick.bytes("b"), None);
        quick.forget("c");
        assert_eq!(quick.bytes("c"), None);
        assert_eq!(quick.held_bytes(), 5);
        quick.forget_all();
        assert_eq!(quick.bytes("d"), None);
        assert_eq!(quick.held_bytes(), 0);
    }

    #[test]
    fn never_holds_more_than_its_capacity() {
        let quick = QuickRead::default();
        let size = 4096;
        let (_, first) = read_ahead_after(&quick, "d/a", "d/b");
        let files = (0..(CAPACITY_BYTES / size + 100))
            .map(|index| file(&format!("d/f{index:06}"), 1, size));
        quick.learn(first, "d", None, files);
        assert_eq!(quick.held_bytes(), CAPACITY_BYTES);
        // Relearning a held file replaces it rather than counting it twice.
        quick.learn(first, "d", None, [file("d/f000000", 2, size)]);
        assert_eq!(quick.held_bytes(), CAPACITY_BYTES);
        // Full: the next directory read in order asks for no page.
        assert!(matches!(quick.open("e/a"), Plan::Ask));
        assert!(matches!(quick.open("e/b"), Plan::Ask));
    }

    #[test]
    fn follows_a_bounded_number_of_directories() {
        let quick = QuickRead::default();
        for index in 0..(MAX_SEQUENCES + 10) {
            quick.open(&format!("dir{index}/a"));
        }
        assert_eq!(lock(&quick.held).sequences.len(), MAX_SEQUENCES);
    }
}
