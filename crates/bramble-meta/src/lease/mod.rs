//! Leases that never touch the disk: who may act for the cluster (hold a VIP, coordinate
//! jobs, reconcile services) without two nodes ever doing it at once, and without writing
//! the disks of an idle cluster.
//!
//! A lease named `lb/vip/web` lives in the catalog at `leases/lb/vip/web` as a
//! [`LeaseRecord`] (holder, epoch, period). Only **grants, hand-overs, releases and
//! expiries** are Raft commands. **Renewals** go to the Raft leader and change only its
//! in-memory [`table::LeaseTable`] (etcd's lease keep-alives work the same way), so an idle
//! cluster holding a VIP commits nothing.
//!
//! ## Why two nodes never hold a lease at once
//!
//! Clocks are monotonic and only their *rates* are assumed close (any drift within
//! [`MARGIN`] over one period); they are never compared across nodes.
//!
//! 1. **The holder** sends each renewal at `sent` (its clock) and, once the leader says
//!    yes, may act until `sent + ttl`. A refused or unanswered renewal extends nothing; a
//!    holder that cannot renew stops acting when its period runs out.
//! 2. **The leader** receives the renewal at `received`, after `sent`, and keeps the lease
//!    until `received + ttl + MARGIN` on its clock. It grants the lease to another node
//!    only after committing the lease's expiry, which it proposes only after that
//!    deadline: by then the holder has stopped, with `MARGIN` to spare.
//! 3. **Only a real leader says yes.** Before answering a renewal, the leader confirms with
//!    a quorum of voters that it is still leader (openraft's `ensure_linearizable`: a
//!    round of heartbeats, no disk). The confirmation starts after `received`, so any
//!    newer leader was elected after `received`, hence after `sent`. Concurrent
//!    renewals share one confirmation round.
//! 4. **A new leader** first applies every entry of earlier terms (the same
//!    `ensure_linearizable`), then honours every lease the catalog says is held for a full
//!    `ttl + MARGIN` from *its own* takeover, which is later than any renewal an old leader
//!    confirmed (by 3). Until it has taken over, it refuses lease requests.
//! 5. An expiry proposed by an old leader but committed under a new one is harmless: the
//!    old leader refused renewals from the moment it proposed it (the holder's period
//!    had run out), and the new leader builds its table only after applying it.
//! 6. Grants, hand-overs, releases and expiries are compare-and-set on the record's catalog
//!    version, executed one at a time by the leader, so at most one grant wins.
//! 7. A hand-over names the next holder only after the old one has stopped acting; the
//!    next holder acts only after its own first successful renewal.
//!
//! A lease is therefore at most as available as the catalog: without a quorum nobody can
//! renew, and every holder stops within its period.

pub mod leader;
pub mod table;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where lease records live in the catalog; clients cannot write under it.
pub const LEASE_PREFIX: &str = "leases/";
/// Extra time the leader waits past a lease's period before expiring it: the allowance
/// for clock-rate drift and for the holder noticing its own deadline.
pub const MARGIN: Duration = Duration::from_millis(200);
/// Shortest and longest lease periods accepted.
pub const MIN_TTL: Duration = Duration::from_millis(300);
pub const MAX_TTL: Duration = Duration::from_secs(60);
/// Longest lease name, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// The catalog key of the lease `name`.
pub fn lease_key(name: &str) -> String {
    format!("{LEASE_PREFIX}{name}")
}

/// The lease name a catalog key holds, if it is a lease key.
pub fn lease_name(key: &str) -> Option<&str> {
    key.strip_prefix(LEASE_PREFIX)
}

/// Lease names are paths of lowercase ASCII letters, digits, `-`, `_` and `.`, separated
/// by `/`, with no empty segment (`lb/vip/web`, `jobs/coordinator`).
pub fn validate_lease_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "a lease name has 1 to {MAX_NAME_BYTES} bytes; {:?} has {}",
            name.chars().take(40).collect::<String>(),
            name.len()
        ));
    }
    for segment in name.split('/') {
        let allowed = |character: char| {
            character.is_ascii_lowercase()
                || character.is_ascii_digit()
                || matches!(character, '-' | '_' | '.')
        };
        if segment.is_empty() || segment == "." || segment == ".." || !segment.chars().all(allowed)
        {
            return Err(format!(
                "lease name {name:?}: segments must be non-empty and use only a-z, 0-9, '-', '_' and '.'"
            ));
        }
    }
    Ok(())
}

/// The committed state of one lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it; `None` when it is free (released or expired).
    pub holder: Option<String>,
    /// Incremented at every new holder: tells holders apart in logs and records.
    pub epoch: u64,
    /// The lease period, in milliseconds.
    pub ttl_ms: u32,
    /// The last holder, when the lease became free: candidates prefer someone else, so a
    /// node whose lease lapsed (likely dead, not yet declared so by gossip) is not waited
    /// for.
    #[serde(default)]
    pub previous: Option<String>,
}

impl LeaseRecord {
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.ttl_ms)).clamp(MIN_TTL, MAX_TTL)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<LeaseRecord, String> {
        serde_json::from_slice(bytes).map_err(|error| format!("unreadable lease record: {error}"))
    }
}

/// What a node asks of a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOperation {
    /// Take the lease if it is free, for periods of `ttl_ms`.
    Acquire { ttl_ms: u32 },
    /// Keep the lease granted at `version`.
    Renew { version: u64 },
    /// Give the lease up (the holder has already stopped acting).
    Release { version: u64 },
    /// Give the lease to `to` (the holder has already stopped acting).
    HandOver { version: u64, to: String },
}

/// `meta.lease`: an operation on the lease `name` by `holder`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub name: String,
    pub holder: String,
    pub operation: LeaseOperation,
    /// Set by a node that forwards the request to the leader, so it is not forwarded again.
    pub forwarded: bool,
}

impl LeaseRequest {
    pub fn validate(&self) -> Result<(), String> {
        validate_lease_name(&self.name)?;
        bramble_util::names::validate_name("the lease holder", &self.holder)
            .map_err(|error| error.to_string())?;
        match &self.operation {
            LeaseOperation::Acquire { ttl_ms } => {
                let ttl = Duration::from_millis(u64::from(*ttl_ms));
                if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
                    return Err(format!(
                        "a lease period is {} ms to {} s; {ttl_ms} ms was asked",
                        MIN_TTL.as_millis(),
                        MAX_TTL.as_secs()
                    ));
                }
            }
            LeaseOperation::HandOver { to, .. } => {
                bramble_util::names::validate_name("the hand-over target", to)
                    .map_err(|error| error.to_string())?;
            }
            LeaseOperation::Renew { .. } | LeaseOperation::Release { .. } => {}
        }
        Ok(())
    }
}

/// The leader's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseAnswer {
    /// The lease is the caller's, granted at `version`: it may act after this answer
    /// until `sent + ttl`, where `sent` is when it sent the request.
    Granted { version: u64, epoch: u64 },
    /// The renewal holds: the caller may act until `sent + ttl`.
    Renewed,
    /// The release or hand-over is committed.
    Done,
    /// Refused; the caller must not act under the lease. `holder` is the current holder.
    Refused {
        reason: String,
        holder: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_bounded_paths() {
        assert!(validate_lease_name("lb/vip/webfarm").is_ok());
        assert!(validate_lease_name("jobs/coordinator-1.a_b").is_ok());
        for bad in ["", "/a", "a/", "a//b", "A", "a/../b", "a b", "a\n", "ä"] {
            assert!(validate_lease_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_lease_name(&"a".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn requests_are_validated() {
        let request = |operation| LeaseRequest {
            name: "lb/vip/web".to_string(),
            holder: "n2".to_string(),
            operation,
            forwarded: false,
        };
        assert!(
            request(LeaseOperation::Acquire { ttl_ms: 600 })
                .validate()
                .is_ok()
        );
        assert!(
            request(LeaseOperation::Acquire { ttl_ms: 10 })
                .validate()
                .is_err()
        );
        assert!(
            request(LeaseOperation::Acquire { ttl_ms: u32::MAX })
                .validate()
                .is_err()
        );
        assert!(
            request(LeaseOperation::HandOver {
                version: 3,
                to: "bad name".to_string()
            })
            .validate()
            .is_err()
        );
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_errors() {
        let record = LeaseRecord {
            holder: Some("n2".to_string()),
            epoch: 4,
            ttl_ms: 600,
            previous: None,
        };
        assert_eq!(LeaseRecord::decode(&record.encode()), Ok(record));
        assert!(LeaseRecord::decode(b"\xff").is_err());
        assert_eq!(lease_name(&lease_key("a/b")), Some("a/b"));
    }
}
