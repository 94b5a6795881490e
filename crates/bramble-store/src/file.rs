//! What the catalog keeps about each file and directory of a volume, and the names of
//! blocks.
//!
//! A file's record lists its blocks with their lengths and BLAKE3 hashes, so a reader
//! checks every block it gets, and a copy or heal can check what it moves. Blocks are
//! named by the file's *version* (a random 128-bit id drawn for each write) and their
//! index: an overwrite writes new blocks under a new version and swaps the record in one
//! catalog change, so a reader sees the old file or the new one, never a mix, and a write
//! that dies half-way leaves only unreferenced blocks, never a half-written file.
//!
//! A block of zeros is stored nowhere: its record names [`BlockId::ZEROS`] (version 0,
//! which [`new_version`] never draws), and readers make its bytes. So a sparse file, a
//! `truncate -s` up, or a disk image of zeros costs no disk and no copies.
//!
//! A small file (at most [`INLINE_MAX_BYTES`]) keeps its bytes in its record instead, with
//! their BLAKE3 hash, and has no blocks (Garage keeps objects under 3 KiB the same way).
//! For a file that size the block is the expensive part: a round trip to every brick and
//! a file created and fsynced on each, before the catalog commit that follows anyway. In
//! the record it costs that one commit, and it is read with the record. Its copies are
//! the catalog's (a majority of voters at the acknowledgement, every node's replica
//! after), which is used only where that is at least as many as the volume's write
//! quorum keeps (see `Storage::may_inline`).

use serde::{Deserialize, Serialize};

/// Most blocks one file may have: its record must fit a catalog value (1 MiB), at about
/// 40 bytes a block. At the default block size that is a file of about 23 GiB.
pub const MAX_FILE_BLOCKS: usize = 24_000;
/// Most user metadata pairs on a file (S3's `x-amz-meta-*`), and their total size.
pub const MAX_USER_METADATA: usize = 64;
pub const MAX_USER_METADATA_BYTES: usize = 2048;

/// A block of a file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockId {
    pub version: u128,
    pub index: u32,
}

impl BlockId {
    /// The block of zeros that no brick stores.
    pub const ZEROS: BlockId = BlockId {
        version: 0,
        index: 0,
    };

    /// Whether this names no stored block, only zeros.
    pub fn is_zeros(&self) -> bool {
        self.version == 0
    }

    /// Its file name in a brick: `<version, 32 hex digits>.<index, 8 hex digits>`.
    pub fn file_name(&self) -> String {
        format!("{:032x}.{:08x}", self.version, self.index)
    }

    /// Parses [`BlockId::file_name`]; `None` for any other name.
    pub fn parse_file_name(name: &str) -> Option<BlockId> {
        let (version, index) = name.split_once('.')?;
        if version.len() != 32 || index.len() != 8 {
            return None;
        }
        Some(BlockId {
            version: u128::from_str_radix(version, 16).ok()?,
            index: u32::from_str_radix(index, 16).ok()?,
        })
    }

    /// The brick subdirectory it lives in: 256 of them, so no directory grows huge.
    pub fn fan_out(&self) -> String {
        format!("{:02x}", (self.version >> 120) as u8)
    }
}

/// One block of a file: its length and BLAKE3 hash, and where it lives when it is not
/// the file's own block (the parts of a multipart upload keep their blocks, named by the
/// part's version: the completed object refers to them instead of copying them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub length: u32,
    pub hash: [u8; 32],
    /// `None`: the file's own block, `(file version, index)`.
    pub id: Option<BlockId>,
}

impl BlockRecord {
    /// A block of `length` zeros, stored nowhere. `hash` is the BLAKE3 hash of those
    /// zeros ([`zeros_hash`]), so the record reads like any other.
    pub fn zeros(length: u32, hash: [u8; 32]) -> BlockRecord {
        BlockRecord {
            length,
            hash,
            id: Some(BlockId::ZEROS),
        }
    }
}

/// The BLAKE3 hash of `length` zero bytes.
pub fn zeros_hash(length: u32) -> [u8; 32] {
    *blake3::hash(&vec![0u8; length as usize]).as_bytes()
}

/// Whether every byte is zero (such a block is recorded, not stored).
pub fn all_zeros(data: &[u8]) -> bool {
    // A page at a time with a fold the compiler vectorises; stops at the first page with
    // data, so a block of data costs almost nothing to tell apart.
    data.chunks(4096)
        .all(|page| page.iter().fold(0u8, |seen, byte| seen | byte) == 0)
}

/// Most bytes a file keeps in its record instead of blocks.
pub const INLINE_MAX_BYTES: usize = 4096;

/// The bytes of a small file, kept in its record, and their BLAKE3 hash, checked on every
/// read as a block's is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineData {
    pub hash: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl InlineData {
    pub fn new(bytes: Vec<u8>) -> InlineData {
        InlineData {
            hash: *blake3::hash(&bytes).as_bytes(),
            bytes,
        }
    }

    /// The bytes, once their hash is checked.
    pub fn checked(&self) -> Result<&[u8], String> {
        if blake3::hash(&self.bytes).as_bytes() == &self.hash {
            Ok(&self.bytes)
        } else {
            Err(format!(
                "the {} bytes kept in this file's record do not match their checksum",
                self.bytes.len()
            ))
        }
    }
}

/// A file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub size: u64,
    pub version: u128,
    pub block_size: u32,
    pub blocks: Vec<BlockRecord>,
    /// Modification time, nanoseconds since the Unix epoch.
    pub modified_ns: i64,
    /// Permission bits (`0o644`).
    pub mode: u32,
    /// Extra metadata clients attach (S3's `x-amz-meta-*`; rclone keeps mtimes there).
    pub user_metadata: Vec<(String, String)>,
    /// S3's ETag when the file came through S3 (the MD5 of the body, or of the parts'
    /// MD5s followed by `-<parts>`); files written otherwise have none and show one made
    /// from their version.
    pub etag: Option<String>,
    pub content_type: Option<String>,
    /// A small file's bytes (then `blocks` is empty).
    pub inline: Option<InlineData>,
}

/// [`FileRecord`] as protocol-2 builds wrote it (no inline bytes): records without inline
/// bytes are still written this way, so those builds can read them during an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileRecordV1 {
    size: u64,
    version: u128,
    block_size: u32,
    blocks: Vec<BlockRecord>,
    modified_ns: i64,
    mode: u32,
    user_metadata: Vec<(String, String)>,
    etag: Option<String>,
    content_type: Option<String>,
}

impl FileRecordV1 {
    fn from_record(record: &FileRecord) -> FileRecordV1 {
        FileRecordV1 {
            size: record.size,
            version: record.version,
            block_size: record.block_size,
            blocks: record.blocks.clone(),
            modified_ns: record.modified_ns,
            mode: record.mode,
            user_metadata: record.user_metadata.clone(),
            etag: record.etag.clone(),
            content_type: record.content_type.clone(),
        }
    }

    fn into_record(self) -> FileRecord {
        FileRecord {
            size: self.size,
            version: self.version,
            block_size: self.block_size,
            blocks: self.blocks,
            modified_ns: self.modified_ns,
            mode: self.mode,
            user_metadata: self.user_metadata,
            etag: self.etag,
            content_type: self.content_type,
            inline: None,
        }
    }
}

impl FileRecord {
    /// Where block `index` lives.
    pub fn block_id(&self, index: u32) -> BlockId {
        self.blocks
            .get(index as usize)
            .and_then(|block| block.id)
            .unwrap_or(BlockId {
                version: self.version,
                index,
            })
    }

    /// Every block's id, in order.
    pub fn block_ids(&self) -> Vec<BlockId> {
        (0..self.blocks.len() as u32)
            .map(|index| self.block_id(index))
            .collect()
    }

    /// The offset in the file where each block starts.
    pub fn block_starts(&self) -> Vec<u64> {
        let mut starts = Vec::with_capacity(self.blocks.len());
        let mut offset = 0u64;
        for block in &self.blocks {
            starts.push(offset);
            offset += u64::from(block.length);
        }
        starts
    }

    /// The ETag S3 clients see (quoted).
    pub fn etag(&self) -> String {
        match &self.etag {
            Some(etag) => format!("\"{etag}\""),
            // Not an MD5: the `-1` suffix tells clients not to compare it with one.
            None => format!("\"{:032x}-1\"", self.version),
        }
    }
}

/// A directory made explicitly (`mkdir`); directories that only hold files need none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryRecord {
    pub modified_ns: i64,
    pub mode: u32,
}

/// A catalog value under `fs/<volume>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredEntry {
    File(FileRecord),
    Directory(DirectoryRecord),
}

/// How a [`StoredEntry`] is written: versioned as a whole, so a later format can be told
/// apart from an earlier one (postcard is not self-describing). Variants are only ever
/// added at the end.
#[derive(Serialize, Deserialize)]
enum WireEntry {
    FileV1(FileRecordV1),
    DirectoryV1(DirectoryRecord),
    /// A file with inline bytes (protocol 3).
    FileV2(FileRecord),
}

impl StoredEntry {
    pub fn encode(&self) -> Vec<u8> {
        let wire = match self {
            StoredEntry::File(record) if record.inline.is_none() => {
                WireEntry::FileV1(FileRecordV1::from_record(record))
            }
            StoredEntry::File(record) => WireEntry::FileV2(record.clone()),
            StoredEntry::Directory(record) => WireEntry::DirectoryV1(record.clone()),
        };
        // Encoding plain structs into a Vec cannot fail.
        postcard::to_allocvec(&wire).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<StoredEntry, String> {
        let wire: WireEntry = postcard::from_bytes(bytes)
            .map_err(|error| format!("a file record in the catalog is unreadable: {error}"))?;
        Ok(match wire {
            WireEntry::FileV1(record) => StoredEntry::File(record.into_record()),
            WireEntry::FileV2(record) => StoredEntry::File(record),
            WireEntry::DirectoryV1(record) => StoredEntry::Directory(record),
        })
    }
}

/// Draws a fresh random version id.
pub fn new_version() -> u128 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // The system's random source does not fail on Linux once booted; if it ever did, a
    // time-derived id still keeps versions apart.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0);
        return now ^ (u128::from(std::process::id()) << 96);
    }
    // Version 0 names the block of zeros.
    u128::from_le_bytes(bytes).max(1)
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Checks user metadata against its bounds.
pub fn validate_user_metadata(pairs: &[(String, String)]) -> Result<(), String> {
    if pairs.len() > MAX_USER_METADATA {
        return Err(format!(
            "at most {MAX_USER_METADATA} metadata entries are allowed, not {}",
            pairs.len()
        ));
    }
    let bytes: usize = pairs
        .iter()
        .map(|(key, value)| key.len() + value.len())
        .sum();
    if bytes > MAX_USER_METADATA_BYTES {
        return Err(format!(
            "metadata is {bytes} bytes; at most {MAX_USER_METADATA_BYTES} are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_are_told_apart_from_data() {
        assert!(all_zeros(&[]));
        assert!(all_zeros(&vec![0u8; 1024 * 1024 + 3]));
        let mut data = vec![0u8; 1024 * 1024 + 3];
        data[1024 * 1024 + 2] = 1;
        assert!(!all_zeros(&data));
        data[1024 * 1024 + 2] = 0;
        data[5000] = 0x80;
        assert!(!all_zeros(&data));
        assert!(BlockId::ZEROS.is_zeros());
        assert!((0..100).all(|_| new_version() != 0));
        assert_eq!(zeros_hash(3), *blake3::hash(&[0, 0, 0]).as_bytes());
    }

    #[test]
    fn block_names_round_trip() {
        let block = BlockId {
            version: 0xfeed_0000_0000_0000_0000_0000_0000_beef,
            index: 7,
        };
        let name = block.file_name();
        assert_eq!(name, "feed000000000000000000000000beef.00000007");
        assert_eq!(BlockId::parse_file_name(&name), Some(block));
        assert_eq!(block.fan_out(), "fe");
        assert_eq!(BlockId::parse_file_name("../../etc/passwd"), None);
        assert_eq!(BlockId::parse_file_name("x.y"), None);
    }

    #[test]
    fn a_file_of_the_largest_size_fits_a_catalog_value() {
        let record = StoredEntry::File(FileRecord {
            size: u64::MAX,
            version: u128::MAX,
            block_size: u32::MAX,
            blocks: vec![
                BlockRecord {
                    length: u32::MAX,
                    hash: [0xff; 32],
                    id: None,
                };
                MAX_FILE_BLOCKS
            ],
            modified_ns: i64::MAX,
            mode: 0o644,
            user_metadata: vec![("k".repeat(1000), "v".repeat(1000))],
            etag: Some("0".repeat(40)),
            content_type: Some("application/octet-stream".to_string()),
            inline: None,
        });
        let bytes = record.encode();
        assert!(bytes.len() <= bramble_meta::types::MAX_VALUE_BYTES);
        assert_eq!(StoredEntry::decode(&bytes).unwrap(), record);
    }

    #[test]
    fn records_without_inline_bytes_keep_the_format_older_builds_read() {
        let record = FileRecord {
            size: 5,
            version: 7,
            block_size: 1024,
            blocks: vec![BlockRecord {
                length: 5,
                hash: [1; 32],
                id: None,
            }],
            modified_ns: 3,
            mode: 0o644,
            user_metadata: vec![("mtime".to_string(), "1".to_string())],
            etag: None,
            content_type: None,
            inline: None,
        };
        // What a protocol-2 build wrote and reads: the first variant, the old struct.
        let old_format =
            postcard::to_allocvec(&WireEntry::FileV1(FileRecordV1::from_record(&record))).unwrap();
        assert_eq!(StoredEntry::File(record.clone()).encode(), old_format);
        assert_eq!(
            StoredEntry::decode(&old_format).unwrap(),
            StoredEntry::File(record.clone())
        );
        let small = FileRecord {
            size: 3,
            blocks: Vec::new(),
            inline: Some(InlineData::new(b"abc".to_vec())),
            ..record
        };
        let bytes = StoredEntry::File(small.clone()).encode();
        assert_ne!(bytes[0], old_format[0], "a new variant, not the old one");
        assert_eq!(
            StoredEntry::decode(&bytes).unwrap(),
            StoredEntry::File(small)
        );
        let directory = StoredEntry::Directory(DirectoryRecord {
            modified_ns: 1,
            mode: 0o755,
        });
        assert_eq!(StoredEntry::decode(&directory.encode()).unwrap(), directory);
        assert!(StoredEntry::decode(&[9, 1, 2]).is_err());
    }

    #[test]
    fn inline_bytes_are_checked_against_their_hash() {
        let mut data = InlineData::new(b"hello".to_vec());
        assert_eq!(data.checked().unwrap(), b"hello");
        data.bytes[0] = b'j';
        let error = data.checked().unwrap_err();
        assert!(error.contains("do not match their checksum"), "{error}");
    }
}
