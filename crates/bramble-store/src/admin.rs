//! The requests and answers of the storage subsystem, shared by the agent, the CLI and
//! (later) the HTTP API, so no view is built twice. Unary methods go over the RPC
//! (`store.volume_create`, ...); streaming ones over the mux's bulk streams
//! (`store.file_put`, `store.file_get`, and the node-to-node `store.block_put` and
//! `store.block_get`).

use serde::{Deserialize, Serialize};

use crate::brick::BrickUsage;
use crate::file::BlockId;
use crate::volume::{Brick, Layout, VolumeSpec, VolumeState};

pub const SERVICE: &str = "store";
pub const METHOD_VOLUME_CREATE: &str = "store.volume_create";
pub const METHOD_VOLUME_LIST: &str = "store.volume_list";
pub const METHOD_VOLUME_INFO: &str = "store.volume_info";
pub const METHOD_VOLUME_SET_STATE: &str = "store.volume_set_state";
pub const METHOD_VOLUME_REMOVE: &str = "store.volume_remove";
pub const METHOD_VOLUME_STATUS: &str = "store.volume_status";
pub const METHOD_BRICK_USAGE: &str = "store.brick_usage";
pub const METHOD_BLOCK_DELETE: &str = "store.block_delete";
/// Node to node: delete a removed volume's brick (request: `(BrickRequest, VolumeSpec)`).
pub const METHOD_BRICK_CLEAR: &str = "store.brick_clear";
pub const METHOD_HEAL_INFO: &str = "store.heal_info";
/// Node to node: this node's hints for a volume (request: [`VolumeName`]).
pub const METHOD_HINT_COUNTS: &str = "store.hint_counts";
/// Node to node: the blocks on a brick (request: [`BrickRequest`]).
pub const METHOD_BRICK_BLOCKS: &str = "store.brick_blocks";
/// Start a full heal pass of a volume on the node asked (request: [`VolumeName`]).
pub const METHOD_HEAL_START: &str = "store.heal_start";
/// Start a scrub pass on every node holding a brick of a volume (request: [`VolumeName`]);
/// answers the nodes asked.
pub const METHOD_SCRUB_START: &str = "store.scrub_start";
/// Node to node: start this node's scrub pass now.
pub const METHOD_SCRUB_HERE: &str = "store.scrub_here";
pub const METHOD_S3_KEY_CREATE: &str = "store.s3_key_create";
pub const METHOD_S3_KEY_LIST: &str = "store.s3_key_list";
pub const METHOD_S3_KEY_REMOVE: &str = "store.s3_key_remove";
/// A key with a scope (`S3KeyRequest` → `ScopedS3Key`).
pub const METHOD_S3_KEY_MAKE: &str = "store.s3_key_make";
/// Every key with its scope (→ `Vec<S3KeyDescription>`).
pub const METHOD_S3_KEYS: &str = "store.s3_keys";
/// Aborts multipart uploads older than a limit (`CleanupUploads` → aborted count, `u64`).
pub const METHOD_S3_CLEANUP_UPLOADS: &str = "store.s3_cleanup_uploads";

/// `store.s3_cleanup_uploads`'s request: uploads started more than this long ago, in these
/// volumes (none named: every volume).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CleanupUploads {
    pub older_than_seconds: u64,
    pub volumes: Vec<String>,
}
pub const METHOD_VOLUME_CHANGE_BRICKS: &str = "store.volume_change_bricks";
pub const METHOD_VOLUME_REPLACE_BRICK: &str = "store.volume_replace_brick";
pub const METHOD_FS_STAT: &str = "store.fs_stat";
pub const METHOD_FS_LIST: &str = "store.fs_list";
/// `fs_list` whose page also carries the bytes of the small files kept in their records
/// (`ListRequest` → [`ContentListing`]): a mount reads them back without a call each.
pub const METHOD_FS_LIST_CONTENT: &str = "store.fs_list_content";
pub const METHOD_FS_REMOVE: &str = "store.fs_remove";
pub const METHOD_FS_RENAME: &str = "store.fs_rename";
pub const METHOD_FS_MKDIR: &str = "store.fs_mkdir";
pub const METHOD_FILE_PUT: &str = "store.file_put";
pub const METHOD_FILE_GET: &str = "store.file_get";
/// Changes part of an existing file (a stream: the body is the bytes to write).
pub const METHOD_FILE_PATCH: &str = "store.file_patch";
pub const METHOD_BLOCK_PUT: &str = "store.block_put";
pub const METHOD_BLOCK_GET: &str = "store.block_get";

/// Most entries one `fs_list` page returns.
pub const MAX_LIST_PAGE: u32 = 5_000;
/// Most blocks one `block_delete` names.
pub const MAX_DELETE_BLOCKS: usize = 4_096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeCreateRequest {
    pub name: String,
    pub layout: Layout,
    pub bricks: Vec<Brick>,
    /// `None`: [`crate::volume::DEFAULT_BLOCK_SIZE`].
    pub block_size: Option<u32>,
    /// When given, the number of sets must be this (the recipe's `stripe 2`).
    pub stripe: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeName {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSetState {
    pub name: String,
    pub state: VolumeState,
}

/// One brick in `volume status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickStatus {
    pub index: usize,
    pub set: usize,
    pub node: String,
    /// The directory on its node.
    pub path: String,
    /// Gossip's view of the node: alive, suspect, dead, left, unknown.
    pub node_state: String,
    pub usage: Option<BrickUsage>,
    pub events: Option<NodeEvents>,
    /// Why the brick could not be asked or opened.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub spec: VolumeSpec,
    pub bricks: Vec<BrickStatus>,
}

/// Asked of the node that holds brick `brick` of `volume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickRequest {
    pub volume: String,
    pub volume_id: u64,
    pub brick: usize,
    /// The index is in the layout data is moving from ([`VolumeSpec::moving_from`]).
    pub previous_layout: bool,
}

/// The answer to `brick_usage`: the brick's directory on its node and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickReport {
    pub path: String,
    pub usage: BrickUsage,
    /// What the brick's node has found and fixed since its agent started (all its bricks).
    pub events: NodeEvents,
}

/// A node's storage events since its agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvents {
    pub corrupt_blocks_found: u64,
    pub blocks_repaired: u64,
    pub copies_healed: u64,
    pub blocks_scrubbed: u64,
    pub orphans_removed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDeleteRequest {
    pub brick: BrickRequest,
    pub blocks: Vec<BlockId>,
}

/// The header of `block_put` (the body is the block's bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockPutHeader {
    pub brick: BrickRequest,
    pub block: BlockId,
    pub hash: [u8; 32],
    pub length: u32,
}

/// The header of `block_get` (the response body is the block's bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockGetHeader {
    pub brick: BrickRequest,
    pub block: BlockId,
    /// The hash the copy must have (a replica's: the record's); `None` for an erasure
    /// shard, which is checked against the hash in its brick header only.
    pub expected: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRequest {
    pub volume: String,
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Directory,
}

/// A file or directory as `fs stat` and `fs ls` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsEntry {
    /// Its path in the volume, without a leading `/` (empty for the root).
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    pub modified_ns: i64,
    pub mode: u32,
    pub blocks: u32,
    /// The catalog version of its record (0 for a directory that only holds files).
    pub version: u64,
    pub user_metadata: Vec<(String, String)>,
}

impl FsEntry {
    /// A directory with no record of its own (one implied by the paths under it): no
    /// modification time, mode 0755, version 0.
    pub fn bare_directory(path: &str) -> FsEntry {
        FsEntry {
            path: path.to_string(),
            kind: EntryKind::Directory,
            size: 0,
            modified_ns: 0,
            mode: 0o755,
            blocks: 0,
            version: 0,
            user_metadata: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    pub volume: String,
    pub path: String,
    pub start_after: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub entries: Vec<FsEntry>,
    /// Pass as `start_after` for the next page.
    pub next_start_after: Option<String>,
}

/// A listing page with the bytes of its small files: those kept in their catalog record
/// (at most [`crate::file::INLINE_MAX_BYTES`] each), checked against their hash by the
/// agent. A page's records come from one catalog scan page, which ends at
/// `MAX_SCAN_PAGE_BYTES` of values, so the bytes a page carries are bounded by it too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentListing {
    pub listing: Listing,
    pub contents: Vec<ListedContent>,
}

/// The bytes of one listed file: `entry` indexes the page's entries (whose `version`
/// they are of).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedContent {
    pub entry: u32,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub volume: String,
    pub path: String,
    /// Remove a directory and everything in it (`rm -r`).
    pub recursive: bool,
    /// Refuse (`WrongType`) unless the path is of this kind: `unlink` expects a file,
    /// `rmdir` a directory.
    pub expect: Option<EntryKind>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameRequest {
    pub volume: String,
    pub from: String,
    pub to: String,
    /// Replace an existing file at `to` (POSIX `rename` does; `mv -n` does not).
    pub replace: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkdirRequest {
    pub volume: String,
    pub path: String,
    /// No error if it exists (`mkdir -p`).
    pub exist_ok: bool,
    pub mode: u32,
}

/// The header of `file_put`; the body is the file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePutHeader {
    pub volume: String,
    pub path: String,
    /// Replace an existing file (otherwise an existing file is an error).
    pub overwrite: bool,
    pub mode: u32,
    /// `None`: now.
    pub modified_ns: Option<i64>,
    pub user_metadata: Vec<(String, String)>,
}

/// The header of `file_patch`: the file is first cut or extended (with zeros) to
/// `resize`, then the body is written at `offset` (zeros fill a gap past the end). The
/// answer is a [`FilePutReply`], once the changed file is durable and visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePatchHeader {
    pub volume: String,
    pub path: String,
    pub offset: u64,
    pub resize: Option<u64>,
    /// Sent on by another node to this file's home node (which applies it, whatever its
    /// own view of who is home).
    pub forwarded: bool,
}

/// The answer to `file_put`, once the file is durable and visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePutReply {
    pub entry: FsEntry,
    /// Copies that could not be written (bricks away); they are owed to those bricks.
    pub missed_copies: u64,
}

/// The header of `file_get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileGetHeader {
    pub volume: String,
    pub path: String,
    pub offset: u64,
    /// `None`: to the end.
    pub length: Option<u64>,
}

/// The response header of `file_get`; the body is the requested range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileGetReply {
    pub entry: FsEntry,
    pub offset: u64,
    pub length: u64,
}

/// Copies owed to one brick, by the node that owes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingHeal {
    pub brick: usize,
    pub node: String,
    /// The node that holds the hints and will deliver them.
    pub owed_by: String,
    pub copies: u64,
}

/// `volume heal-info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealInfo {
    pub volume: String,
    pub pending: Vec<PendingHeal>,
    /// Nodes that could not be asked (their hints are unknown).
    pub unanswered: Vec<String>,
}

/// `volume replace-brick`: `old` is taken out of the volume and `new` takes its place (its
/// set and position); a full heal pass then fills it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceBrickRequest {
    pub name: String,
    pub old: Brick,
    pub new: Brick,
}

/// `volume add-brick` / `remove-brick`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeBricksRequest {
    pub name: String,
    pub add: Vec<Brick>,
    pub remove: Vec<Brick>,
}
