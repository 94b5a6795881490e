//! A volume's spec as the catalog keeps it (`store/volumes/<name>`): its layout, its
//! bricks in order, its state and block size; and where each block goes.
//!
//! Bricks are grouped in order into *sets* of the layout's width, as GlusterFS groups them
//! into replica sets: with `--replica 2` over `n1 n2 n3 n4`, `n1 n2` is one set and
//! `n3 n4` the other. Every block of a file lives on exactly one set (on each of its
//! bricks), and the blocks of a file are spread over all the sets in turn — the recipe's
//! `stripe 2 replica 2`: each brick holds its part of every file. A volume with one set
//! is plainly replicated.
//!
//! Placement is computed, never stored per block: the sets are ranked by rendezvous
//! hashing of the file's version id ([`VolumeSpec::set_of_block`]), and block `i` goes to
//! the `i mod sets`-th of that ranking. So files start on different sets (no set fills
//! first), a file's blocks are spread evenly, and any node computes the same answer from
//! the spec alone. Two bricks of one set on the same node are refused at creation, so no
//! block ever has two copies on one node.

use serde::{Deserialize, Serialize};

use crate::file::BlockId;

/// Default size of a block: big enough for sequential bandwidth and a small block list,
/// small enough that a block in flight costs little memory on a 512 MB board.
pub const DEFAULT_BLOCK_SIZE: u32 = 1024 * 1024;
pub const MIN_BLOCK_SIZE: u32 = 64 * 1024;
pub const MAX_BLOCK_SIZE: u32 = 8 * 1024 * 1024;
/// Most bricks a volume may have.
pub const MAX_BRICKS: usize = 64;
/// Most copies of a block.
pub const MAX_REPLICA: u8 = 8;
/// Longest brick directory, in bytes.
pub const MAX_BRICK_PATH_BYTES: usize = 1024;

/// How blocks are kept redundant within a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Every brick of a set holds a full copy of each of the set's blocks.
    Replicated { replica: u8 },
    /// Each block is cut into `data` shards plus `parity` shards, one per brick of the
    /// set; any `data` of them rebuild it ([`crate::erasure`]).
    Erasure { data: u8, parity: u8 },
}

impl Layout {
    /// Bricks per set.
    pub fn set_width(&self) -> usize {
        match *self {
            Layout::Replicated { replica } => usize::from(replica),
            Layout::Erasure { data, parity } => usize::from(data) + usize::from(parity),
        }
    }

    /// Copies (or shards) of a block that must be durable before a write is
    /// acknowledged. A majority of the copies; for two copies one, so that a volume of
    /// two copies keeps taking writes while one brick is away (GlusterFS's `quorum-type
    /// auto` would stop writes when the first brick of a pair is down); the copy it
    /// missed is recorded and healed when it returns.
    pub fn write_quorum(&self) -> usize {
        match *self {
            Layout::Replicated { replica } if replica <= 2 => 1,
            Layout::Replicated { replica } => usize::from(replica) / 2 + 1,
            Layout::Erasure { data, parity } => usize::from(data) + usize::from(parity.min(1)),
        }
    }

    /// How many whole copies a write acknowledged under this layout is worth: the copies
    /// of the write quorum when replicated; when erasure coded, one more than the parity
    /// shards the write quorum holds beyond the data shards (the losses it survives, plus
    /// one).
    pub fn copies_at_acknowledgement(&self) -> usize {
        match *self {
            Layout::Replicated { .. } => self.write_quorum(),
            Layout::Erasure { data, .. } => self.write_quorum() - usize::from(data) + 1,
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            Layout::Replicated { replica } => format!("replica {replica}"),
            Layout::Erasure { data, parity } => format!("erasure {data}+{parity}"),
        }
    }
}

/// One brick: a directory on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brick {
    pub node: String,
    /// An absolute directory chosen by the operator (`node:/srv/brick1`); `None`: the
    /// node's `<data-dir>/bricks/<volume>`.
    pub path: Option<String>,
}

impl Brick {
    pub fn describe(&self, volume: &str) -> String {
        match &self.path {
            Some(path) => format!("{}:{path}", self.node),
            None => format!("{}:<data-dir>/bricks/{volume}", self.node),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeState {
    /// Serving reads and writes.
    Started,
    /// Refusing reads and writes (`volume stop`); a volume must be stopped to be removed.
    Stopped,
}

/// A volume, as stored in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    /// Random, fixed at creation: ties a brick directory to this volume, so a volume
    /// created again under the same name never mistakes the old one's blocks for its own.
    pub id: u64,
    pub layout: Layout,
    pub bricks: Vec<Brick>,
    pub state: VolumeState,
    pub block_size: u32,
    pub created_unix: u64,
    /// While data moves to a new set of bricks (`add-brick`, `remove-brick`): the brick
    /// list before the change. Reads that miss in the new placement look in the old one;
    /// the rebalance worker clears it when every block is where the new list puts it.
    pub moving_from: Option<Vec<Brick>>,
    /// Not stored: marks the view of the old layout that [`VolumeSpec::previous`] makes,
    /// so brick requests name the brick in that layout.
    #[serde(skip)]
    pub is_previous_layout: bool,
}

impl VolumeSpec {
    /// Checks everything a spec must respect; the error names the problem.
    pub fn validate(&self) -> Result<(), String> {
        bramble_util::names::validate_name("volume name", &self.name)
            .map_err(|error| error.to_string())?;
        let width = self.layout.set_width();
        match self.layout {
            Layout::Replicated { replica } => {
                if replica == 0 || replica > MAX_REPLICA {
                    return Err(format!(
                        "--replica must be 1 to {MAX_REPLICA}, not {replica}"
                    ));
                }
            }
            Layout::Erasure { data, parity } => {
                if data == 0 || parity == 0 || usize::from(data) + usize::from(parity) > 32 {
                    return Err(format!(
                        "erasure coding needs at least 1 data and 1 parity shard and at most 32 in all, not {data}+{parity}"
                    ));
                }
            }
        }
        if self.bricks.is_empty() {
            return Err("a volume needs at least one brick".to_string());
        }
        if self.bricks.len() > MAX_BRICKS {
            return Err(format!(
                "a volume has at most {MAX_BRICKS} bricks, not {}",
                self.bricks.len()
            ));
        }
        if !self.bricks.len().is_multiple_of(width) {
            return Err(format!(
                "{} bricks cannot be grouped into sets of {width} ({}): give a multiple of {width}",
                self.bricks.len(),
                self.layout.describe()
            ));
        }
        for brick in &self.bricks {
            bramble_util::names::validate_name("node name", &brick.node)
                .map_err(|error| error.to_string())?;
            if let Some(path) = &brick.path {
                validate_brick_path(path)?;
            }
        }
        for set in 0..self.sets() {
            let bricks = self.set_bricks(set);
            for (index, brick) in bricks.iter().enumerate() {
                if bricks[..index].iter().any(|other| other.node == brick.node) {
                    return Err(format!(
                        "set {} ({}) has two bricks on node {}: two copies of a block would share one node; list the bricks so that each group of {width} has {width} different nodes",
                        set + 1,
                        bricks
                            .iter()
                            .map(|brick| brick.describe(&self.name))
                            .collect::<Vec<_>>()
                            .join(" "),
                        brick.node
                    ));
                }
            }
        }
        for (index, brick) in self.bricks.iter().enumerate() {
            if self.bricks[..index].contains(brick) {
                return Err(format!(
                    "brick {} is listed twice{}",
                    brick.describe(&self.name),
                    if brick.path.is_none() {
                        " (two bricks on one node need a directory each: node:/path)"
                    } else {
                        ""
                    }
                ));
            }
        }
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size) {
            return Err(format!(
                "the block size must be {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE} bytes, not {}",
                self.block_size
            ));
        }
        Ok(())
    }

    /// The layout data is moving from, as a spec of its own (see [`VolumeSpec::moving_from`]).
    pub fn previous(&self) -> Option<VolumeSpec> {
        let bricks = self.moving_from.clone()?;
        Some(VolumeSpec {
            bricks,
            moving_from: None,
            is_previous_layout: true,
            ..self.clone()
        })
    }

    /// Number of sets.
    pub fn sets(&self) -> usize {
        self.bricks.len() / self.layout.set_width().max(1)
    }

    /// The bricks of set `set`, in order.
    pub fn set_bricks(&self, set: usize) -> &[Brick] {
        let width = self.layout.set_width();
        &self.bricks[set * width..(set + 1) * width]
    }

    /// The brick indexes (into `bricks`) of set `set`.
    pub fn set_brick_indexes(&self, set: usize) -> std::ops::Range<usize> {
        let width = self.layout.set_width();
        set * width..(set + 1) * width
    }

    /// The set that holds `block` (see the module documentation).
    pub fn set_of_block(&self, block: &BlockId) -> usize {
        let sets = self.sets();
        if sets <= 1 {
            return 0;
        }
        let mut ranking: Vec<(u64, usize)> = (0..sets)
            .map(|set| (self.rendezvous_score(block.version, set), set))
            .collect();
        ranking.sort_unstable_by(|a, b| b.cmp(a));
        ranking[block.index as usize % sets].1
    }

    fn rendezvous_score(&self, version: u128, set: usize) -> u64 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.id.to_le_bytes());
        hasher.update(&version.to_le_bytes());
        hasher.update(&(set as u64).to_le_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest.as_bytes()[..8]);
        u64::from_le_bytes(bytes)
    }

    /// Indexes of the bricks on `node`.
    pub fn bricks_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.bricks
            .iter()
            .enumerate()
            .filter(move |(_, brick)| brick.node == node)
            .map(|(index, _)| index)
    }
}

/// A brick directory given by the operator: absolute, at most [`MAX_BRICK_PATH_BYTES`],
/// no `.`/`..`/empty components, not the root, nothing under the kernel's pseudo file
/// systems.
pub fn validate_brick_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "the brick directory {path:?} must be an absolute path"
        ));
    }
    if path.len() > MAX_BRICK_PATH_BYTES {
        return Err(format!(
            "the brick directory is over {MAX_BRICK_PATH_BYTES} bytes"
        ));
    }
    if path.chars().any(char::is_control) {
        return Err("the brick directory contains a control character".to_string());
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("the root directory cannot be a brick".to_string());
    }
    for component in trimmed[1..].split('/') {
        if matches!(component, "" | "." | "..") {
            return Err(format!(
                "the brick directory {path:?} has a {component:?} component"
            ));
        }
    }
    for system in ["/proc", "/sys", "/dev", "/run"] {
        if trimmed == system || trimmed.starts_with(&format!("{system}/")) {
            return Err(format!("a brick cannot live under {system}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(replica: u8, nodes: &[&str]) -> VolumeSpec {
        VolumeSpec {
            name: "vol0".to_string(),
            id: 42,
            layout: Layout::Replicated { replica },
            bricks: nodes
                .iter()
                .map(|node| Brick {
                    node: node.to_string(),
                    path: None,
                })
                .collect(),
            state: VolumeState::Started,
            block_size: DEFAULT_BLOCK_SIZE,
            created_unix: 0,
            moving_from: None,
            is_previous_layout: false,
        }
    }

    #[test]
    fn the_recipes_layout_is_valid_and_spreads_each_file() {
        let volume = spec(2, &["n1", "n2", "n3", "n4"]);
        volume.validate().unwrap();
        assert_eq!(volume.sets(), 2);
        assert_eq!(volume.set_bricks(1)[0].node, "n3");
        // A file of four blocks puts two on each set, whatever its version id.
        for version in 0..200u128 {
            let mut per_set = [0; 2];
            for index in 0..4 {
                per_set[volume.set_of_block(&BlockId { version, index })] += 1;
            }
            assert_eq!(per_set, [2, 2]);
        }
        // And files start on either set.
        let starts: std::collections::BTreeSet<_> = (0..50u128)
            .map(|version| volume.set_of_block(&BlockId { version, index: 0 }))
            .collect();
        assert_eq!(starts.len(), 2);
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let error = spec(2, &["n1", "n1", "n2", "n3"]).validate().unwrap_err();
        assert!(error.contains("two bricks on node n1"), "{error}");
        let error = spec(2, &["n1", "n2", "n3"]).validate().unwrap_err();
        assert!(error.contains("multiple of 2"), "{error}");
        let error = spec(0, &["n1"]).validate().unwrap_err();
        assert!(error.contains("--replica"), "{error}");
        let mut twice = spec(1, &["n1", "n1"]);
        twice.bricks[1] = twice.bricks[0].clone();
        assert!(twice.validate().unwrap_err().contains("listed twice"));
        assert!(validate_brick_path("relative/dir").is_err());
        assert!(validate_brick_path("/srv/../etc").is_err());
        assert!(validate_brick_path("/").is_err());
        assert!(validate_brick_path("/proc/self").is_err());
        assert!(validate_brick_path("/srv/brick1").is_ok());
        // Two bricks on one node in different sets are fine, each in its own directory.
        let mut shared = spec(2, &["n1", "n2", "n2", "n1"]);
        assert!(shared.validate().unwrap_err().contains("a directory each"));
        shared.bricks[3].path = Some("/srv/second".to_string());
        shared.bricks[2].path = Some("/srv/second".to_string());
        shared.validate().unwrap();
    }

    #[test]
    fn quorums_keep_pairs_writable() {
        assert_eq!(Layout::Replicated { replica: 1 }.write_quorum(), 1);
        assert_eq!(Layout::Replicated { replica: 2 }.write_quorum(), 1);
        assert_eq!(Layout::Replicated { replica: 3 }.write_quorum(), 2);
        assert_eq!(Layout::Erasure { data: 4, parity: 2 }.write_quorum(), 5);
    }
}
