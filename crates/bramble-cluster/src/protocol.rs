//! Which builds of the agent can share a cluster, so that `bramble upgrade` can replace the
//! agents one node at a time with old and new builds talking meanwhile, and refuse a build
//! that could not.
//!
//! Agents exchange gossip datagrams, RPC and mux frames, and Raft messages, all encoded with
//! postcard, which is not self-describing: a field added to a message is a different
//! message. Each build therefore carries a wire **protocol number** ([`PROTOCOL`]), raised
//! whenever any message between agents changes incompatibly, and the **oldest protocol it
//! still speaks** ([`OLDEST_COMPATIBLE_PROTOCOL`]): a build that raises its protocol keeps
//! answering in the old one until every node runs the new build (the usual rule of rolling
//! upgrades, as in Kubernetes' version-skew policy). Two builds can share a cluster when
//! the newer one's range still holds the older one's protocol ([`can_share_a_cluster`]). Every
//! agent announces both numbers in gossip; a build from before protocol numbers announces
//! none and counts as protocol 0, which nothing speaks.

use serde::{Deserialize, Serialize};

/// The wire protocol this build speaks. 1: the first build that announces it (and that can
/// receive `bramble upgrade`). 2: storage patches (`store.file_patch`) and blocks of zeros
/// recorded without a stored copy (`BlockId::ZEROS`), which a protocol-1 agent could not
/// read; a protocol-2 agent uses neither until every node speaks 2
/// ([`everyone_speaks`]). 3: small files kept in their catalog record (inline bytes,
/// a record format protocol-2 agents cannot decode), written only once every node
/// speaks 3. 4: grouped catalog commands (`Command::Group`, several writes in one Raft
/// entry), proposed only once every node speaks 4.
pub const PROTOCOL: u32 = 4;

/// The oldest protocol this build still speaks, so nodes running it can share a cluster
/// with this build during a rolling upgrade.
pub const OLDEST_COMPATIBLE_PROTOCOL: u32 = 1;

/// Whether every node of `protocols` (each node's announced protocol) speaks `wanted`:
/// a feature that older builds could not follow waits until the last of them is upgraded.
pub fn everyone_speaks(protocols: impl IntoIterator<Item = u32>, wanted: u32) -> bool {
    protocols.into_iter().all(|protocol| protocol >= wanted)
}

/// What a build says about itself (`bramble version --json`), and what each agent announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// The package version (`0.1.0`).
    pub version: String,
    pub protocol: u32,
    pub oldest_compatible_protocol: u32,
    /// `std::env::consts::ARCH` of the build: `x86_64`, `aarch64`, `arm`.
    pub architecture: String,
}

impl BuildInfo {
    /// This build.
    pub fn current() -> BuildInfo {
        BuildInfo {
            version: crate::VERSION.to_string(),
            protocol: PROTOCOL,
            oldest_compatible_protocol: OLDEST_COMPATIBLE_PROTOCOL,
            architecture: std::env::consts::ARCH.to_string(),
        }
    }

    /// `0.1.0 (protocol 1, speaks 1..=1)`.
    pub fn describe(&self) -> String {
        format!(
            "{} (protocol {}, speaks {}..={})",
            self.version, self.protocol, self.oldest_compatible_protocol, self.protocol
        )
    }
}

/// What one running agent announces: its protocol and the oldest it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Speaks {
    pub protocol: u32,
    pub oldest_compatible: u32,
}

impl Speaks {
    pub fn of(build: &BuildInfo) -> Speaks {
        Speaks {
            protocol: build.protocol,
            oldest_compatible: build.oldest_compatible_protocol,
        }
    }

    /// An agent from before protocol numbers: protocol 0, which no build speaks.
    pub fn unannounced() -> Speaks {
        Speaks {
            protocol: 0,
            oldest_compatible: 0,
        }
    }

    fn understands(&self, protocol: u32) -> bool {
        protocol != 0 && (self.oldest_compatible..=self.protocol).contains(&protocol)
    }
}

/// Whether two builds can run in one cluster at once: the newer one still speaks the
/// older one's protocol (and speaks down to it; the older cannot know what came after it).
pub fn can_share_a_cluster(one: Speaks, other: Speaks) -> bool {
    let (older, newer) = if one.protocol <= other.protocol {
        (one, other)
    } else {
        (other, one)
    };
    older.protocol != 0 && newer.understands(older.protocol)
}

/// Why a build may not join the running nodes, naming the nodes it could not talk to, or
/// `None` when it can share the cluster with every one of them.
pub fn refusal(new: Speaks, running: &[(String, Speaks)]) -> Option<String> {
    let mut blocking: Vec<String> = running
        .iter()
        .filter(|(_, speaks)| !can_share_a_cluster(new, *speaks))
        .map(|(name, speaks)| {
            if speaks.protocol == 0 {
                format!("{name} (a build from before protocol numbers)")
            } else {
                format!(
                    "{name} (protocol {}, speaks {}..={})",
                    speaks.protocol, speaks.oldest_compatible, speaks.protocol
                )
            }
        })
        .collect();
    if blocking.is_empty() {
        return None;
    }
    blocking.sort();
    Some(format!(
        "a build of protocol {} (speaks {}..={}) cannot share the cluster with {}",
        new.protocol,
        new.oldest_compatible,
        new.protocol,
        blocking.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speaks(protocol: u32, oldest_compatible: u32) -> Speaks {
        Speaks {
            protocol,
            oldest_compatible,
        }
    }

    #[test]
    fn a_feature_waits_for_the_last_old_node() {
        assert!(everyone_speaks([2, 2, 3], 2));
        assert!(!everyone_speaks([2, 1, 2], 2), "one node still speaks 1");
        assert!(
            !everyone_speaks([2, 0], 2),
            "a build from before protocol numbers"
        );
        assert!(everyone_speaks([], 2));
        assert!(
            can_share_a_cluster(speaks(PROTOCOL, OLDEST_COMPATIBLE_PROTOCOL), speaks(1, 1)),
            "this build can replace protocol-1 agents one at a time"
        );
    }

    #[test]
    fn equal_protocols_share_a_cluster() {
        assert!(can_share_a_cluster(speaks(1, 1), speaks(1, 1)));
    }

    #[test]
    fn a_newer_build_that_still_speaks_the_old_protocol_shares_it() {
        assert!(can_share_a_cluster(speaks(3, 2), speaks(2, 1)));
        assert!(can_share_a_cluster(speaks(2, 1), speaks(3, 2)));
    }

    #[test]
    fn a_newer_build_that_dropped_the_old_protocol_does_not() {
        assert!(!can_share_a_cluster(speaks(3, 3), speaks(2, 1)));
        assert!(!can_share_a_cluster(speaks(4, 3), speaks(2, 2)));
    }

    #[test]
    fn a_build_from_before_protocol_numbers_shares_with_nothing() {
        assert!(!can_share_a_cluster(speaks(1, 1), Speaks::unannounced()));
        assert!(!can_share_a_cluster(
            Speaks::unannounced(),
            Speaks::unannounced()
        ));
    }

    #[test]
    fn the_refusal_names_every_node_in_the_way() {
        let running = vec![
            ("n2".to_string(), speaks(1, 1)),
            ("n1".to_string(), speaks(2, 1)),
            ("n3".to_string(), Speaks::unannounced()),
        ];
        assert_eq!(refusal(speaks(2, 1), &running[..2]), None);
        let refused = refusal(speaks(3, 2), &running).unwrap_or_default();
        assert!(refused.contains("protocol 3 (speaks 2..=3)"), "{refused}");
        assert!(
            refused.contains("n2 (protocol 1, speaks 1..=1)"),
            "{refused}"
        );
        assert!(refused.contains("n3 (a build from before"), "{refused}");
        assert!(!refused.contains("n1"), "{refused}");
    }
}
