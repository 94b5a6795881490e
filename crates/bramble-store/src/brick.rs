//! A brick on this node: the directory that holds this node's blocks of one volume.
//!
//! Layout: `<brick>/.bramble-brick` (which volume the directory belongs to, by name and
//! id) and `<brick>/blocks/<2 hex>/<version>.<index>`, one file per block. Each block
//! file starts with a header — a magic number, the block's BLAKE3 hash and its length —
//! so a brick can check its own blocks (scrub) without asking the catalog.
//!
//! Writes are durable before they are acknowledged: a new block is written under its
//! name and fsynced, and its directory is fsynced; a block that is there already is
//! replaced through a temporary file and a rename. After a power cut a block may be
//! short or torn, never silently wrong: every read checks the hash, and a mismatch is an
//! error ([`BrickError::Corrupt`]) that readers answer from another copy, never data.
//!
//! The calls block (file I/O and fsync): async callers run them on tokio's blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::file::BlockId;

const MAGIC: &[u8; 8] = b"BRBLOCK1";
const HEADER_BYTES: usize = 8 + 32 + 4;
const MARKER: &str = ".bramble-brick";
const BLOCKS: &str = "blocks";
/// Largest block a brick accepts (the largest block size, with room to spare).
pub const MAX_STORED_BLOCK: usize = crate::volume::MAX_BLOCK_SIZE as usize;

#[derive(Debug, thiserror::Error)]
pub enum BrickError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the disk of brick {path} is full")]
    Full { path: PathBuf },
    #[error("block {block} is not on this brick")]
    Missing { block: String },
    #[error("block {block} on this brick is corrupt: {reason}")]
    Corrupt { block: String, reason: String },
    #[error("the data sent for block {block} does not match its hash")]
    HashMismatch { block: String },
    #[error("{path} belongs to another volume ({other}); remove it or choose another directory")]
    Foreign { path: PathBuf, other: String },
}

impl BrickError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> BrickError + '_ {
        move |source| {
            if source.raw_os_error() == Some(libc_enospc()) {
                BrickError::Full {
                    path: path.to_path_buf(),
                }
            } else {
                BrickError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        }
    }
}

/// ENOSPC on Linux (every architecture Bramble runs on).
const fn libc_enospc() -> i32 {
    28
}

/// Which volume a brick directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    volume: String,
    volume_id: u64,
}

/// What a brick holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickUsage {
    pub blocks: u64,
    pub bytes: u64,
    /// Free bytes on the brick's file system (for unprivileged users).
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// One brick directory.
#[derive(Debug, Clone)]
pub struct BrickStore {
    root: PathBuf,
}

impl BrickStore {
    /// Opens (creating if needed) the brick at `root` for volume `volume`/`volume_id`. A
    /// directory marked for another volume is refused.
    pub fn open(root: &Path, volume: &str, volume_id: u64) -> Result<BrickStore, BrickError> {
        fs::create_dir_all(root).map_err(BrickError::io(root))?;
        let marker_path = root.join(MARKER);
        let wanted = Marker {
            volume: volume.to_string(),
            volume_id,
        };
        match fs::read(&marker_path) {
            Ok(bytes) => {
                let found: Option<Marker> = serde_json::from_slice(&bytes).ok();
                if found.as_ref() != Some(&wanted) {
                    return Err(BrickError::Foreign {
                        path: root.to_path_buf(),
                        other: found
                            .map(|marker| format!("{} #{:x}", marker.volume, marker.volume_id))
                            .unwrap_or_else(|| "an unreadable marker".to_string()),
                    });
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let bytes = serde_json::to_vec(&wanted).unwrap_or_default();
                bramble_util::files::write_atomic(
                    &marker_path,
                    &bytes,
                    bramble_util::files::Visibility::Public,
                )
                .map_err(|error| BrickError::Io {
                    path: marker_path.clone(),
                    source: io::Error::other(error.to_string()),
                })?;
            }
            Err(error) => return Err(BrickError::io(&marker_path)(error)),
        }
        let blocks = root.join(BLOCKS);
        for fan in 0..=255u8 {
            let directory = blocks.join(format!("{fan:02x}"));
            fs::create_dir_all(&directory).map_err(BrickError::io(&directory))?;
        }
        Ok(BrickStore {
            root: root.to_path_buf(),
        })
    }

    /// Deletes a brick's blocks and marker (its volume was removed). Only what Bramble
    /// made is touched: the `blocks` tree and the marker; the directory itself and
    /// anything else in it stay.
    /// The marker must name `volume`/`volume_id`: a directory that is not that volume's
    /// brick is never touched.
    pub fn clear(root: &Path, volume: &str, volume_id: u64) -> Result<(), BrickError> {
        let marker_path = root.join(MARKER);
        let found: Option<Marker> = fs::read(&marker_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        match found {
            None => return Ok(()),
            Some(marker) if marker.volume == volume && marker.volume_id == volume_id => {}
            Some(marker) => {
                return Err(BrickError::Foreign {
                    path: root.to_path_buf(),
                    other: format!("{} #{:x}", marker.volume, marker.volume_id),
                });
            }
        }
        let blocks = root.join(BLOCKS);
        match fs::remove_dir_all(&blocks) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(BrickError::io(&blocks)(error)),
        }
        let marker = root.join(MARKER);
        match fs::remove_file(&marker) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(BrickError::io(&marker)(error)),
        }
        // The default location (`<data-dir>/bricks/<volume>`) was made by Bramble too.
        let _ = fs::remove_dir(root);
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn block_path(&self, block: &BlockId) -> PathBuf {
        self.root
            .join(BLOCKS)
            .join(block.fan_out())
            .join(block.file_name())
    }

    /// Stores a block durably, after checking `data` against `hash`. Storing a block that
    /// is already there replaces it (a heal rewriting a corrupt copy).
    pub fn put(&self, block: &BlockId, hash: &[u8; 32], data: &[u8]) -> Result<(), BrickError> {
        if blake3::hash(data).as_bytes() != hash {
            return Err(BrickError::HashMismatch {
                block: block.file_name(),
            });
        }
        let target = self.block_path(block);
        let directory = target.parent().unwrap_or(&self.root).to_path_buf();
        // A block new to the brick (nearly every put: a write makes a new version) is
        // written where it stays. A temporary file and a rename cost a second journal
        // commit per block (the file's fsync, then the directory's after the rename); in
        // place, the directory's fsync finds the entry already committed with the file.
        // A power cut mid-write can leave a short file under the block's name, which is
        // no worse than a torn copy: every read checks the header's hash and length, a
        // write is acknowledged only after the fsyncs, and a block that is there already
        // is replaced through a temporary file, as before.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
        {
            Ok(file) => {
                let written = write_block_file(&file, hash, data, &target)
                    .and_then(|()| sync_directory(&directory));
                if written.is_err() && is_same_file(&file, &target) {
                    let _ = fs::remove_file(&target);
                }
                written
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                self.replace(block, hash, data, &target, &directory)
            }
            Err(error) => Err(BrickError::io(&target)(error)),
        }
    }

    /// Replaces a block file that exists through a temporary file and a rename, so a
    /// reader sees the old copy or the new one, never a mixture.
    fn replace(
        &self,
        block: &BlockId,
        hash: &[u8; 32],
        data: &[u8],
        target: &Path,
        directory: &Path,
    ) -> Result<(), BrickError> {
        let temporary = directory.join(format!(
            ".tmp-{}-{:x}",
            block.file_name(),
            crate::file::new_version() as u64
        ));
        let written = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temporary)
                .map_err(BrickError::io(&temporary))?;
            write_block_file(&file, hash, data, &temporary)?;
            fs::rename(&temporary, target).map_err(BrickError::io(target))?;
            sync_directory(directory)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        written
    }

    /// Reads a block and checks it against the hash in its header and, if given, the
    /// hash the caller expects (the catalog's).
    pub fn get(&self, block: &BlockId, expected: Option<&[u8; 32]>) -> Result<Vec<u8>, BrickError> {
        let path = self.block_path(block);
        let corrupt = |reason: String| BrickError::Corrupt {
            block: block.file_name(),
            reason,
        };
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(BrickError::Missing {
                    block: block.file_name(),
                });
            }
            Err(error) => return Err(BrickError::io(&path)(error)),
        };
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact(&mut header)
            .map_err(|_| corrupt("the file is shorter than its header".to_string()))?;
        if &header[..8] != MAGIC {
            return Err(corrupt("the header's magic number is wrong".to_string()));
        }
        let mut stored_hash = [0u8; 32];
        stored_hash.copy_from_slice(&header[8..40]);
        let length = u32::from_le_bytes([header[40], header[41], header[42], header[43]]) as usize;
        if length > MAX_STORED_BLOCK {
            return Err(corrupt(format!("the header claims {length} bytes")));
        }
        let mut data = bramble_util::buffers::take(length);
        (&mut file)
            .take(length as u64 + 1)
            .read_to_end(&mut data)
            .map_err(BrickError::io(&path))?;
        if data.len() != length {
            return Err(corrupt(format!(
                "{} bytes where the header says {length}",
                data.len()
            )));
        }
        if blake3::hash(&data).as_bytes() != &stored_hash {
            return Err(corrupt("its contents do not match its hash".to_string()));
        }
        if let Some(expected) = expected
            && expected != &stored_hash
        {
            return Err(corrupt(
                "its hash differs from the one the file's record holds".to_string(),
            ));
        }
        Ok(data)
    }

    /// Removes a block; true if it was there.
    pub fn delete(&self, block: &BlockId) -> Result<bool, BrickError> {
        let path = self.block_path(block);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(BrickError::io(&path)(error)),
        }
    }

    /// How long ago the block was written (`None` if it is not there).
    pub fn block_age(&self, block: &BlockId) -> Option<std::time::Duration> {
        let modified = fs::metadata(self.block_path(block)).ok()?.modified().ok()?;
        Some(modified.elapsed().unwrap_or_default())
    }

    /// Every block on the brick (leftover temporary files are not blocks).
    pub fn blocks(&self) -> Result<Vec<BlockId>, BrickError> {
        let mut found = Vec::new();
        let blocks = self.root.join(BLOCKS);
        for fan in fs::read_dir(&blocks).map_err(BrickError::io(&blocks))? {
            let fan = fan.map_err(BrickError::io(&blocks))?.path();
            let Ok(entries) = fs::read_dir(&fan) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Some(block) = entry
                    .file_name()
                    .to_str()
                    .and_then(BlockId::parse_file_name)
                {
                    found.push(block);
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// What the brick holds and the room left on its file system.
    pub fn usage(&self) -> Result<BrickUsage, BrickError> {
        let mut usage = BrickUsage::default();
        for block in self.blocks()? {
            if let Ok(metadata) = fs::metadata(self.block_path(&block)) {
                usage.blocks += 1;
                usage.bytes += metadata.len().saturating_sub(HEADER_BYTES as u64);
            }
        }
        let (free, total) = bramble_util::files::file_system_space(&self.root)
            .map_err(BrickError::io(&self.root))?;
        usage.free_bytes = free;
        usage.total_bytes = total;
        Ok(usage)
    }
}

/// Writes a block file's header and data and fsyncs it.
fn write_block_file(
    mut file: &File,
    hash: &[u8; 32],
    data: &[u8],
    path: &Path,
) -> Result<(), BrickError> {
    let mut header = [0u8; HEADER_BYTES];
    header[..8].copy_from_slice(MAGIC);
    header[8..40].copy_from_slice(hash);
    header[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
    file.write_all(&header).map_err(BrickError::io(path))?;
    file.write_all(data).map_err(BrickError::io(path))?;
    file.sync_all().map_err(BrickError::io(path))
}

/// Makes a directory's entries durable.
fn sync_directory(directory: &Path) -> Result<(), BrickError> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(BrickError::io(directory))
}

/// Whether `path` still names the file open as `file` (and not one a concurrent put
/// renamed over it), so a failed write removes only what it made.
fn is_same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(ours), Ok(named)) => ours.dev() == named.dev() && ours.ino() == named.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(index: u32) -> BlockId {
        BlockId {
            version: 0xabcdef,
            index,
        }
    }

    #[test]
    fn blocks_round_trip_and_corruption_is_caught() {
        let directory = tempfile::tempdir().unwrap();
        let brick = BrickStore::open(directory.path(), "vol0", 7).unwrap();
        let data = vec![0x42u8; 100_000];
        let hash = *blake3::hash(&data).as_bytes();
        brick.put(&block(0), &hash, &data).unwrap();
        assert_eq!(brick.get(&block(0), Some(&hash)).unwrap(), data);
        assert!(matches!(
            brick.get(&block(1), None),
            Err(BrickError::Missing { .. })
        ));
        assert!(matches!(
            brick.put(&block(2), &hash, b"other bytes"),
            Err(BrickError::HashMismatch { .. })
        ));
        assert_eq!(brick.blocks().unwrap(), vec![block(0)]);
        let usage = brick.usage().unwrap();
        assert_eq!((usage.blocks, usage.bytes), (1, 100_000));

        // Flip one byte of the stored data.
        let path = brick.block_path(&block(0));
        let mut raw = fs::read(&path).unwrap();
        raw[HEADER_BYTES + 500] ^= 0x01;
        fs::write(&path, raw).unwrap();
        assert!(matches!(
            brick.get(&block(0), Some(&hash)),
            Err(BrickError::Corrupt { .. })
        ));
        // A heal rewrites it.
        brick.put(&block(0), &hash, &data).unwrap();
        assert_eq!(brick.get(&block(0), Some(&hash)).unwrap(), data);
        assert!(brick.delete(&block(0)).unwrap());
        assert!(!brick.delete(&block(0)).unwrap());
    }

    /// What a power cut in the middle of writing a new block leaves: a short file under
    /// the block's name. Reads call it corrupt rather than return it, and the heal's put
    /// replaces it whole; no temporary file is left behind either way.
    #[test]
    fn a_torn_block_file_is_corrupt_and_a_put_replaces_it() {
        let directory = tempfile::tempdir().unwrap();
        let brick = BrickStore::open(directory.path(), "vol0", 7).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|number| (number % 251) as u8).collect();
        let hash = *blake3::hash(&data).as_bytes();
        brick.put(&block(0), &hash, &data).unwrap();
        let path = brick.block_path(&block(0));
        let whole = fs::read(&path).unwrap();
        for torn_length in [0, HEADER_BYTES - 1, HEADER_BYTES + 4096] {
            fs::write(&path, &whole[..torn_length]).unwrap();
            assert!(
                matches!(
                    brick.get(&block(0), Some(&hash)),
                    Err(BrickError::Corrupt { .. })
                ),
                "a block file cut at {torn_length} bytes"
            );
            brick.put(&block(0), &hash, &data).unwrap();
            assert_eq!(brick.get(&block(0), Some(&hash)).unwrap(), data);
        }
        let names: Vec<String> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![block(0).file_name()]);
    }

    #[test]
    fn a_brick_of_another_volume_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        BrickStore::open(directory.path(), "vol0", 7).unwrap();
        BrickStore::open(directory.path(), "vol0", 7).unwrap();
        assert!(matches!(
            BrickStore::open(directory.path(), "vol0", 8),
            Err(BrickError::Foreign { .. })
        ));
    }
}
