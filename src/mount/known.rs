//! What this mount knows a directory holds, so that a lookup of a name that is not there
//! is answered without asking the cluster.
//!
//! `cp -r` into the mount looks up every name before it creates it, and each of those
//! lookups was a call to an agent (a third of a create's time with `--flush-behind`). A
//! directory this mount has just made, or has just listed, is known: its names are kept
//! for [`KNOWN_FOR`] from the moment the request was sent, and this mount's own creates
//! and removals keep the set current. Within that time a name missing from the set is
//! absent. Past it, the next lookup lists the directory again (one call for every name)
//! and the set is known anew. A name another client created less than [`KNOWN_FOR`] ago
//! may therefore be reported absent — the same second for which the kernel already keeps
//! names and attributes (`TTL`), and the same bargain as GlusterFS's negative-lookup
//! cache (`performance.nl-cache`, 60 s by default when on). Names that are present are
//! always asked for, so their attributes are the cluster's.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bramble_store::paths;

use super::lock;

/// How long a directory's names are trusted after the request that learned them.
pub const KNOWN_FOR: Duration = Duration::from_secs(1);
/// Directories with more names than this are not kept (a listing to refresh them would
/// cost more than the lookups it saves).
pub const MAX_KNOWN_NAMES: usize = 20_000;
/// Directories known at once; the oldest is dropped beyond this.
pub const MAX_KNOWN_DIRECTORIES: usize = 64;

struct Known {
    since: Instant,
    names: HashSet<String>,
}

/// The directories this mount knows (see the module documentation).
#[derive(Default)]
pub struct KnownDirectories {
    directories: Mutex<HashMap<String, Known>>,
}

/// What the set says about one name.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Known absent: answer ENOENT.
    Absent,
    /// Present, or the directory is not known: ask the cluster.
    Ask,
    /// The directory was known but its time ran out: list it again, then ask the set.
    Refresh,
}

impl KnownDirectories {
    /// Records every name of `directory`, as a listing (or the making of an empty
    /// directory) sent at `asked` found them. A directory too large to keep is forgotten.
    pub fn learn(&self, directory: &str, asked: Instant, names: impl IntoIterator<Item = String>) {
        let names: HashSet<String> = names.into_iter().take(MAX_KNOWN_NAMES + 1).collect();
        let mut directories = lock(&self.directories);
        if names.len() > MAX_KNOWN_NAMES {
            directories.remove(directory);
            return;
        }
        if !directories.contains_key(directory) && directories.len() >= MAX_KNOWN_DIRECTORIES {
            let oldest = directories
                .iter()
                .min_by_key(|(_, known)| known.since)
                .map(|(path, _)| path.clone());
            if let Some(oldest) = oldest {
                directories.remove(&oldest);
            }
        }
        directories.insert(
            directory.to_string(),
            Known {
                since: asked,
                names,
            },
        );
    }

    /// Whether `name` in `directory` is known absent.
    pub fn answer(&self, directory: &str, name: &str) -> Answer {
        match lock(&self.directories).get(directory) {
            None => Answer::Ask,
            Some(known) if known.names.contains(name) => Answer::Ask,
            Some(known) if known.since.elapsed() < KNOWN_FOR => Answer::Absent,
            Some(_) => Answer::Refresh,
        }
    }

    /// This mount made `path`.
    pub fn added(&self, path: &str) {
        let directory = paths::parent(path);
        let mut directories = lock(&self.directories);
        if let Some(known) = directories.get_mut(directory) {
            known.names.insert(paths::file_name(path).to_string());
            if known.names.len() > MAX_KNOWN_NAMES {
                directories.remove(directory);
            }
        }
    }

    /// This mount removed `path` (and, if it was a directory, what it knew of it).
    pub fn removed(&self, path: &str) {
        let mut directories = lock(&self.directories);
        if let Some(known) = directories.get_mut(paths::parent(path)) {
            known.names.remove(paths::file_name(path));
        }
        directories.remove(path);
    }

    /// Forgets everything (a rename moves names this mount may know under other paths).
    pub fn forget_all(&self) {
        lock(&self.directories).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_known_absent_only_while_fresh_and_not_made_here() {
        let known = KnownDirectories::default();
        assert_eq!(known.answer("d", "a"), Answer::Ask);
        known.learn("d", Instant::now(), ["a".to_string()]);
        assert_eq!(known.answer("d", "a"), Answer::Ask);
        assert_eq!(known.answer("d", "b"), Answer::Absent);
        known.added("d/b");
        assert_eq!(known.answer("d", "b"), Answer::Ask);
        known.removed("d/a");
        assert_eq!(known.answer("d", "a"), Answer::Absent);
        let old = Instant::now() - KNOWN_FOR;
        known.learn("d", old, Vec::new());
        assert_eq!(known.answer("d", "a"), Answer::Refresh);
        known.forget_all();
        assert_eq!(known.answer("d", "a"), Answer::Ask);
    }

    #[test]
    fn large_directories_and_many_directories_are_bounded() {
        let known = KnownDirectories::default();
        known.learn(
            "big",
            Instant::now(),
            (0..=MAX_KNOWN_NAMES).map(|number| number.to_string()),
        );
        assert_eq!(known.answer("big", "absent"), Answer::Ask);
        for number in 0..MAX_KNOWN_DIRECTORIES + 5 {
            known.learn(&format!("dir{number}"), Instant::now(), Vec::new());
        }
        assert!(lock(&known.directories).len() <= MAX_KNOWN_DIRECTORIES);
        assert_eq!(
            known.answer(&format!("dir{}", MAX_KNOWN_DIRECTORIES + 4), "x"),
            Answer::Absent
        );
    }
}
