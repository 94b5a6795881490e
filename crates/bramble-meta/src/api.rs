//! The requests and answers of the catalog's client surface (`meta.write`, `meta.read`,
//! `meta.list`, `meta.status`, `meta.snapshot_now`), shared by the agent and the CLI.

use serde::{Deserialize, Serialize};

use crate::types::{Command, VersionedValue};

pub const METHOD_WRITE: &str = "meta.write";
pub const METHOD_READ: &str = "meta.read";
pub const METHOD_LIST: &str = "meta.list";
pub const METHOD_SCAN: &str = "meta.scan";
pub const METHOD_STATUS: &str = "meta.status";
pub const METHOD_SNAPSHOT_NOW: &str = "meta.snapshot_now";

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Confirmed with a quorum by the leader: reflects every write acknowledged before it.
    Linearizable,
    /// This node's replica as it is: cheap, possibly behind by a few heartbeats.
    Stale,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteRequest {
    pub command: Command,
    /// Set by a node that forwards the request to the leader, so it is not forwarded again.
    pub forwarded: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadRequest {
    pub key: String,
    pub consistency: Consistency,
    pub forwarded: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListRequest {
    pub prefix: String,
    pub limit: u32,
    pub consistency: Consistency,
    pub forwarded: bool,
}

pub type ListResponse = Vec<(String, VersionedValue)>;

/// Most entries and common prefixes one scan returns.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
/// Once a page's values reach this many bytes it ends (with `next_start_after`), however
/// many entries were asked for: 5,000 small files keep 20 MB of bytes in their records, and
/// a page of them, decoded and copied on the way, was 40 MB of one agent's memory (and
/// over the 16 MiB an RPC frame may carry when the scan is forwarded to the leader).
pub const MAX_SCAN_PAGE_BYTES: usize = 1024 * 1024;

/// A page of the keys under a prefix, grouped by a delimiter like S3's `ListObjectsV2`:
/// what a directory listing and a bucket listing both are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRequest {
    pub prefix: String,
    /// Start after this key (or common prefix); `None`: from the first key.
    pub start_after: Option<String>,
    /// Keys whose remainder after the prefix holds this character are rolled up into one
    /// common prefix (up to and including the character) instead of being listed. Must be
    /// ASCII, not a control character.
    pub delimiter: Option<char>,
    /// Entries plus common prefixes to return (1 to [`MAX_SCAN_LIMIT`]).
    pub limit: u32,
    pub consistency: Consistency,
    pub forwarded: bool,
}

/// One page of a scan, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanPage {
    pub entries: Vec<(String, VersionedValue)>,
    pub common_prefixes: Vec<String>,
    /// Pass as `start_after` for the next page; `None` when the listing is complete.
    pub next_start_after: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusRequest {
    pub forwarded: bool,
}

/// One member of the Raft group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub addr: String,
    pub voter: bool,
    /// Gossip's view of the node: alive, suspect, dead, left (or unknown).
    pub state: String,
    /// Last log index known to be replicated on it (leader's view).
    pub matched_index: Option<u64>,
    /// How many entries it is behind the leader's log.
    pub lag: Option<u64>,
}

/// `bramble cluster status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub reporter: String,
    /// The reporter's role: leader, follower, learner, candidate.
    pub role: String,
    pub leader: Option<String>,
    pub term: u64,
    /// Leader's last log index (the reporter's, if there is no leader).
    pub last_log_index: u64,
    pub commit_index: u64,
    pub last_applied: u64,
    pub snapshot_index: Option<u64>,
    pub keys: u64,
    pub members: Vec<MemberStatus>,
}
