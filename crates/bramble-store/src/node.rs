//! This node's part in every volume: the bricks it holds, the nodes it reaches for the
//! others, and what it remembers about bricks that stopped answering.
//!
//! Any node serves any volume (it is a *gateway* for the CLI, the mount and S3): it reads
//! the volume's spec and the file records from the catalog, and moves blocks to and from
//! the bricks — its own through the file system, other nodes' over bulk mux streams, so
//! block traffic never delays Raft, gossip or leases.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_cluster::{Membership, NodeState};
use bramble_meta::Meta;
use bramble_meta::api::Consistency;
use bramble_meta::types::{Command, CommandResult};
use bramble_net::{ErrorKind, MuxClient, RpcClient, RpcError};
use tokio::sync::Semaphore;

use crate::brick::{BrickError, BrickStore};
use crate::keys;
use crate::volume::{VolumeSpec, VolumeState};

/// How long a brick that missed a deadline is left out of writes and tried last for
/// reads, before it is tried again. Short: a returning brick is used again within
/// seconds (and whatever it missed meanwhile is owed to it).
pub const AWAY_PERIOD: Duration = Duration::from_secs(3);
/// Block transfers served at once by this node (each holds up to one block in memory).
pub const MAX_BLOCK_TRANSFERS: usize = 32;
/// Bytes of blocks this node's own writes may hold in flight at once, all writes together.
/// One write keeps up to four blocks in flight; without a shared bound, an S3 client
/// sending ten parts at a time made its gateway hold about 80 MB of blocks (110 MB at the
/// peak, on a node that must fit in a Pi Zero's 512 MB beside the programs it runs).
/// The bound also holds on the bricks, which store what gateways send them. 8 MiB is many
/// times what a gigabit link carries in a round trip; measured on 3 emulated nodes with
/// aws-cli putting 1 GiB (ten parts at once), 16 MiB wrote 5-10 % faster and peaked 8 MB
/// higher on the gateway and 9 MB higher on each brick.
pub const WRITE_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// Bytes of blocks this node's reads may hold fetched ahead of what their clients have
/// taken, all reads together. Each read may always have one block of its own fetched
/// beyond the budget, so a read never waits for another (a slow client can only cost
/// the others their read-ahead); without a shared bound, aws-cli reading 1 GiB as ten
/// ranged GETs at once made its gateway hold up to ten blocks for each.
pub const READ_AHEAD_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// The storage subsystem of one agent.
pub struct Storage {
    pub(crate) node: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) meta: Arc<Meta>,
    pub(crate) membership: Arc<Membership>,
    pub(crate) mux: MuxClient,
    pub(crate) rpc: RpcClient,
    /// Local bricks opened so far, by volume id and directory (an index names different
    /// bricks before and after an add-brick or remove-brick).
    bricks: Mutex<HashMap<(u64, PathBuf), BrickStore>>,
    /// Nodes that missed a block deadline, until when they are considered away.
    away: Mutex<HashMap<String, Instant>>,
    /// Bounds the memory of block transfers served for other nodes.
    pub(crate) transfers: Arc<Semaphore>,
    /// Bounds the memory of the blocks this node's writes have in flight, in KiB; see
    /// [`WRITE_BUFFER_BYTES`]. Apart from `transfers`, so a write waiting for its turn
    /// never keeps a brick on this node from storing the copies it is sent.
    pub(crate) write_buffers: Arc<Semaphore>,
    /// Bounds the memory of the blocks reads fetch ahead, in KiB; see
    /// [`READ_AHEAD_BUFFER_BYTES`].
    pub(crate) read_ahead_buffers: Arc<Semaphore>,
    pub(crate) counters: Counters,
    /// Copies this node owes to bricks that missed them.
    pub(crate) hints: Arc<crate::hints::Hints>,
    /// Starts a scrub pass now.
    pub(crate) scrub_trigger: crate::scrub::ScrubTrigger,
    /// Patches of one file through this node, one at a time.
    pub(crate) patching: crate::patch::FileLocks,
    /// Blocks committed changes no longer refer to, for the reclaim worker.
    pub(crate) reclaim: crate::reclaim::Reclaim,
}

/// Events worth counting, shown in the subsystem's status.
#[derive(Default)]
pub struct Counters {
    pub corrupt_blocks_found: std::sync::atomic::AtomicU64,
    pub blocks_repaired: std::sync::atomic::AtomicU64,
    pub copies_missed: std::sync::atomic::AtomicU64,
    pub copies_healed: std::sync::atomic::AtomicU64,
    pub blocks_scrubbed: std::sync::atomic::AtomicU64,
    pub orphans_removed: std::sync::atomic::AtomicU64,
}

impl Counters {
    pub fn events(&self) -> crate::admin::NodeEvents {
        use std::sync::atomic::Ordering::Relaxed;
        crate::admin::NodeEvents {
            corrupt_blocks_found: self.corrupt_blocks_found.load(Relaxed),
            blocks_repaired: self.blocks_repaired.load(Relaxed),
            copies_healed: self.copies_healed.load(Relaxed),
            blocks_scrubbed: self.blocks_scrubbed.load(Relaxed),
            orphans_removed: self.orphans_removed.load(Relaxed),
        }
    }
}

/// Where a node can be reached and what gossip thinks of it.
#[derive(Debug, Clone, Copy)]
pub struct Reach {
    pub address: SocketAddr,
    pub state: NodeState,
    /// The wire protocol it announces (0 before protocol numbers).
    pub protocol: u32,
}

impl Storage {
    pub fn new(
        node: &str,
        data_dir: PathBuf,
        meta: Arc<Meta>,
        membership: Arc<Membership>,
        mux: MuxClient,
        rpc: RpcClient,
        hints: crate::hints::Hints,
    ) -> Storage {
        Storage {
            hints: Arc::new(hints),
            scrub_trigger: crate::scrub::ScrubTrigger::default(),
            node: node.to_string(),
            data_dir,
            meta,
            membership,
            mux,
            rpc,
            bricks: Mutex::new(HashMap::new()),
            away: Mutex::new(HashMap::new()),
            transfers: Arc::new(Semaphore::new(MAX_BLOCK_TRANSFERS)),
            write_buffers: Arc::new(Semaphore::new(WRITE_BUFFER_BYTES / 1024)),
            read_ahead_buffers: Arc::new(Semaphore::new(READ_AHEAD_BUFFER_BYTES / 1024)),
            counters: Counters::default(),
            patching: crate::patch::FileLocks::default(),
            reclaim: crate::reclaim::Reclaim::default(),
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The volume's spec. `Linearizable` reads see a volume created a moment ago by any
    /// node; `Stale` ones are local.
    pub async fn volume(
        &self,
        name: &str,
        consistency: Consistency,
    ) -> Result<(VolumeSpec, u64), RpcError> {
        bramble_util::names::validate_name("volume name", name)
            .map_err(|error| RpcError::bad_request(error.to_string()))?;
        let found = self
            .meta
            .read(&keys::volume_key(name), consistency, false)
            .await?;
        let Some(found) = found else {
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!("there is no volume named {name:?} (see bramble volume ls)"),
            ));
        };
        let spec: VolumeSpec = postcard::from_bytes(&found.value).map_err(|error| {
            RpcError::internal(format!("the spec of volume {name} is unreadable: {error}"))
        })?;
        Ok((spec, found.version))
    }

    /// The volume's spec, if it is started; a stopped volume refuses reads and writes.
    pub async fn started_volume(&self, name: &str) -> Result<VolumeSpec, RpcError> {
        // Local first; a volume created a moment ago through another node may not have
        // reached this replica yet, so a miss asks the leader.
        let (spec, _) = match self.volume(name, Consistency::Stale).await {
            Err(error) if error.kind == ErrorKind::NotFound => {
                self.volume(name, Consistency::Linearizable).await?
            }
            other => other?,
        };
        if spec.state != VolumeState::Started {
            return Err(RpcError::new(
                ErrorKind::Unavailable,
                format!("volume {name} is stopped (bramble volume start {name})"),
            ));
        }
        Ok(spec)
    }

    /// The directory of brick `index` of `spec` on this node.
    pub fn brick_directory(&self, spec: &VolumeSpec, index: usize) -> PathBuf {
        match spec.bricks.get(index).and_then(|brick| brick.path.as_ref()) {
            Some(path) => PathBuf::from(path),
            None => self.data_dir.join("bricks").join(&spec.name),
        }
    }

    /// Brick `index` of `spec`, which must be on this node; opened (and created) once.
    pub fn local_brick(&self, spec: &VolumeSpec, index: usize) -> Result<BrickStore, RpcError> {
        let Some(brick) = spec.bricks.get(index) else {
            return Err(RpcError::bad_request(format!(
                "volume {} has no brick {index}",
                spec.name
            )));
        };
        if brick.node != self.node {
            return Err(RpcError::bad_request(format!(
                "brick {index} of volume {} is on {}, not on {}",
                spec.name, brick.node, self.node
            )));
        }
        let directory = self.brick_directory(spec, index);
        let mut bricks = self
            .bricks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(store) = bricks.get(&(spec.id, directory.clone())) {
            return Ok(store.clone());
        }
        let store = BrickStore::open(&directory, &spec.name, spec.id).map_err(brick_error)?;
        bricks.insert((spec.id, directory), store.clone());
        Ok(store)
    }

    /// Forgets the opened bricks of a volume (it was removed).
    pub fn forget_volume(&self, volume_id: u64) {
        self.bricks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .retain(|(id, _), _| *id != volume_id);
    }

    /// Every member's address and state, by name.
    pub async fn reach(&self) -> HashMap<String, Reach> {
        self.membership
            .nodes()
            .await
            .into_iter()
            .map(|node| {
                (
                    node.name,
                    Reach {
                        address: node.addr,
                        state: node.state,
                        protocol: node.protocol,
                    },
                )
            })
            .collect()
    }

    /// Whether every node still in the cluster speaks wire protocol `wanted`
    /// (`bramble_cluster::protocol`): what older builds cannot read waits until then.
    pub fn cluster_speaks(&self, wanted: u32, reach: &HashMap<String, Reach>) -> bool {
        bramble_cluster::protocol::everyone_speaks(
            reach
                .values()
                .filter(|node| !matches!(node.state, NodeState::Left))
                .map(|node| node.protocol),
            wanted,
        )
    }

    /// Whether `node` is away: declared dead or gone by gossip, or it missed a block
    /// deadline within the last [`AWAY_PERIOD`].
    pub fn is_away(&self, node: &str, reach: &HashMap<String, Reach>) -> bool {
        match reach.get(node) {
            None => return true,
            Some(found) if matches!(found.state, NodeState::Dead | NodeState::Left) => {
                return true;
            }
            _ => {}
        }
        let mut away = self
            .away
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match away.get(node) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                away.remove(node);
                false
            }
            None => false,
        }
    }

    /// Records that `node` missed a deadline.
    pub fn mark_away(&self, node: &str) {
        if node == self.node {
            return;
        }
        tracing::warn!(
            node,
            "a brick's node missed a block deadline; leaving it out for {}s",
            AWAY_PERIOD.as_secs()
        );
        self.away
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(node.to_string(), Instant::now() + AWAY_PERIOD);
    }

    /// A unary call to another agent on a kept connection; a kept connection that turns
    /// out dead (its agent restarted) is replaced once.
    pub async fn call_node<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        address: SocketAddr,
        method: &str,
        request: &Req,
    ) -> Result<Resp, RpcError> {
        let as_rpc_error = |error: bramble_net::CallError| {
            error
                .remote()
                .cloned()
                .unwrap_or_else(|| RpcError::new(ErrorKind::Unavailable, error.to_string()))
        };
        match self.rpc.call_reusing(address, method, request).await {
            Ok(answer) => Ok(answer),
            Err(bramble_net::CallError::Transport { .. }) => self
                .rpc
                .call(address, method, request)
                .await
                .map_err(as_rpc_error),
            Err(error) => Err(as_rpc_error(error)),
        }
    }

    /// Every key under `prefix` with its value, read page by page through the leader; at
    /// most `most` + 1 (a caller that bounds the result can tell it was exceeded).
    pub async fn scan_all(
        &self,
        prefix: &str,
        most: usize,
    ) -> Result<Vec<(String, bramble_meta::types::VersionedValue)>, RpcError> {
        let mut found = Vec::new();
        let mut start_after = None;
        loop {
            let page = self
                .meta
                .scan(bramble_meta::api::ScanRequest {
                    prefix: prefix.to_string(),
                    start_after: start_after.take(),
                    delimiter: None,
                    limit: bramble_meta::api::MAX_SCAN_LIMIT,
                    consistency: Consistency::Linearizable,
                    forwarded: false,
                })
                .await?;
            for entry in page.entries {
                found.push(entry);
                if found.len() > most {
                    return Ok(found);
                }
            }
            match page.next_start_after {
                Some(next) => start_after = Some(next),
                None => return Ok(found),
            }
        }
    }

    /// Every file record of a volume (records that cannot be read are skipped).
    pub async fn file_records(
        &self,
        volume: &str,
    ) -> Result<Vec<(String, crate::file::FileRecord)>, RpcError> {
        Ok(self
            .scan_all(&keys::files_prefix(volume), usize::MAX - 1)
            .await?
            .into_iter()
            .filter_map(
                |(key, value)| match crate::file::StoredEntry::decode(&value.value) {
                    Ok(crate::file::StoredEntry::File(record)) => Some((key, record)),
                    _ => None,
                },
            )
            .collect())
    }

    /// Proposes a catalog command and returns what applying it did.
    pub async fn commit(&self, command: Command) -> Result<CommandResult, RpcError> {
        match self.meta.write(command, false).await? {
            CommandResult::Rejected { reason } => Err(RpcError::bad_request(reason)),
            other => Ok(other),
        }
    }
}

/// A brick error as the caller should see it.
pub fn brick_error(error: BrickError) -> RpcError {
    let kind = match &error {
        BrickError::Full { .. } => ErrorKind::Full,
        BrickError::Missing { .. } => ErrorKind::NotFound,
        BrickError::HashMismatch { .. } => ErrorKind::BadRequest,
        BrickError::Foreign { .. } => ErrorKind::Refused,
        BrickError::Corrupt { .. } | BrickError::Io { .. } => ErrorKind::Internal,
    };
    RpcError::new(kind, error.to_string())
}

/// Runs blocking brick work on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BrickError> + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| RpcError::internal(format!("a brick task failed: {error}")))?
        .map_err(brick_error)
}
