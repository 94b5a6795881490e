//! The inode numbers the kernel knows a mount's files by, and the volume paths they stand
//! for. FUSE speaks inodes; volumes speak paths (their records are keyed by path), so the
//! mount keeps the two-way map, counts the kernel's lookups, and forgets an inode when
//! the kernel does. A rename moves the paths of the entry and of everything below it.

use std::collections::HashMap;

/// The root's inode, fixed by FUSE.
pub const ROOT: u64 = 1;

#[derive(Default)]
pub struct Inodes {
    by_path: HashMap<String, u64>,
    /// Path and lookup count of each inode.
    by_inode: HashMap<u64, (String, u64)>,
    next: u64,
}

impl Inodes {
    pub fn new() -> Inodes {
        let mut inodes = Inodes {
            next: ROOT + 1,
            ..Inodes::default()
        };
        inodes.by_path.insert(String::new(), ROOT);
        inodes.by_inode.insert(ROOT, (String::new(), 1));
        inodes
    }

    pub fn path(&self, inode: u64) -> Option<String> {
        self.by_inode.get(&inode).map(|(path, _)| path.clone())
    }

    /// The inode of `path`, if the kernel knows it.
    pub fn known(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The inode of `path`, made if new, with one more kernel lookup counted.
    pub fn remember(&mut self, path: &str) -> u64 {
        if let Some(inode) = self.by_path.get(path) {
            if let Some((_, lookups)) = self.by_inode.get_mut(inode) {
                *lookups += 1;
            }
            return *inode;
        }
        let inode = self.next;
        self.next += 1;
        self.by_path.insert(path.to_string(), inode);
        self.by_inode.insert(inode, (path.to_string(), 1));
        inode
    }

    /// The kernel dropped `count` lookups of `inode`.
    pub fn forget(&mut self, inode: u64, count: u64) {
        if inode == ROOT {
            return;
        }
        let gone = match self.by_inode.get_mut(&inode) {
            Some((_, lookups)) => {
                *lookups = lookups.saturating_sub(count);
                *lookups == 0
            }
            None => false,
        };
        if gone
            && let Some((path, _)) = self.by_inode.remove(&inode)
            && self.by_path.get(&path) == Some(&inode)
        {
            self.by_path.remove(&path);
        }
    }

    /// `from` (and everything below it) is now at `to`.
    pub fn rename(&mut self, from: &str, to: &str) {
        let below = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(path, _)| *path == from || path.starts_with(&below))
            .map(|(path, inode)| (path.clone(), *inode))
            .collect();
        // Whatever was at the target is replaced.
        if let Some(inode) = self.by_path.remove(to)
            && let Some(entry) = self.by_inode.get_mut(&inode)
        {
            entry.0 = format!("\0replaced/{inode}");
        }
        for (path, inode) in moved {
            let new_path = format!("{to}{}", &path[from.len()..]);
            self.by_path.remove(&path);
            self.by_path.insert(new_path.clone(), inode);
            if let Some(entry) = self.by_inode.get_mut(&inode) {
                entry.0 = new_path;
            }
        }
    }
}

/// `parent/name` as a volume path (the root's children have no leading slash).
pub fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_follow_lookups_forgets_and_renames() {
        let mut inodes = Inodes::new();
        let a = inodes.remember("a");
        let b = inodes.remember("a/b");
        assert_eq!(inodes.remember("a"), a);
        inodes.rename("a", "z");
        assert_eq!(inodes.path(a).as_deref(), Some("z"));
        assert_eq!(inodes.path(b).as_deref(), Some("z/b"));
        inodes.forget(a, 1);
        assert_eq!(inodes.path(a).as_deref(), Some("z"));
        inodes.forget(a, 1);
        assert_eq!(inodes.path(a), None);
        assert_eq!(inodes.path(ROOT).as_deref(), Some(""));
        assert_eq!(child_path("", "x"), "x");
        assert_eq!(child_path("d", "x"), "d/x");
    }
}
