//! Virtual-IP failover without split brain: who may hold a balancer's VIP.
//!
//! Gossip alone cannot decide this safely (in a partition each side sees the other dead),
//! so the VIP is held under a **catalog lease** named `lb/vip/<balancer>`
//! ([`bramble_meta::lease`], which carries the safety argument): only a majority's leader
//! grants it, renewals are confirmed by a quorum but never written to disk, and the leader
//! expires a lease only after its holder has stopped using it.
//!
//! - The holder renews every [`RENEW_EVERY`] and serves only while its last successful
//!   renewal was **sent** less than [`LEASE_TTL`] ago, on its own monotonic clock. Cut off
//!   from the majority, it cannot renew, and lets go when that time runs out.
//! - When the holder stops renewing, the catalog leader commits the lease's expiry; when
//!   the holder stops cleanly (SIGTERM, the balancer removed, unhealthy) it releases the
//!   lease itself. Either way the record becomes free, naming the last holder, and the
//!   preferred candidate takes it (a compare-and-set on the leader: one wins).
//! - Priorities and preemption (Keepalived's): among live `lb` nodes, the highest priority
//!   (then the smallest name) is preferred; the last holder of a free lease is passed
//!   over while anyone else can take it (it is probably dead, not yet declared so). With
//!   preemption, a holder hands the lease to a preferred live node — after it has stopped
//!   serving the VIP itself, so there is never a moment with two holders; the new holder
//!   serves only after its own first renewal.
//!
//! This module is the decision logic only, driven by the caller's clock, so it can be
//! tested exhaustively; [`crate::subsystem`] does the catalog requests and the binding.

use std::time::{Duration, Instant};

use bramble_meta::lease::LeaseRecord;

/// How long a renewal keeps the VIP.
pub const LEASE_TTL: Duration = Duration::from_millis(600);
/// How often the holder renews (and everyone re-evaluates).
pub const RENEW_EVERY: Duration = Duration::from_millis(150);
/// Priority of a node the balancer's `vip.priorities` does not list.
pub const DEFAULT_PRIORITY: u8 = 100;

/// A node that could hold the VIP: alive, with the `lb` role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub priority: u8,
}

/// What the caller should ask of the lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    Idle,
    /// Renew our lease, granted at `version`.
    Renew { version: u64 },
    /// Take the free lease.
    Acquire,
    /// Give the lease to `to`. The caller must have stopped serving the VIP before asking.
    HandOver { version: u64, to: String },
}

/// One node's view of one balancer's VIP election.
#[derive(Debug)]
pub struct VipElection {
    me: String,
    /// When our last successful renewal or acquisition was sent.
    renewed_sent_at: Option<Instant>,
    /// Whether the lease, as last seen, names us.
    named_holder: bool,
}

fn preferred<'a>(candidates: &'a [Candidate], excluded: Option<&str>) -> Option<&'a Candidate> {
    candidates
        .iter()
        .filter(|candidate| Some(candidate.name.as_str()) != excluded)
        .max_by(|left, right| {
            left.priority
                .cmp(&right.priority)
                .then_with(|| right.name.cmp(&left.name))
        })
}

impl VipElection {
    pub fn new(me: impl Into<String>) -> Self {
        VipElection {
            me: me.into(),
            renewed_sent_at: None,
            named_holder: false,
        }
    }

    /// May this node serve the VIP at `now`? Only while the lease names it and its last
    /// successful renewal was sent less than [`LEASE_TTL`] ago.
    pub fn holds(&self, now: Instant) -> bool {
        self.named_holder
            && self
                .renewed_sent_at
                .is_some_and(|sent| now.saturating_duration_since(sent) < LEASE_TTL)
    }

    /// When the lease this node holds runs out (None if it holds none): the caller must
    /// have stopped serving by then, whatever else it is doing.
    pub fn lease_deadline(&self) -> Option<Instant> {
        if !self.named_holder {
            return None;
        }
        self.renewed_sent_at.map(|sent| sent + LEASE_TTL)
    }

    /// Time left before the lease this node holds runs out (None if it holds none). A
    /// request that could outlast it must be given up in time to release the VIP.
    pub fn lease_remaining(&self, now: Instant) -> Option<Duration> {
        if !self.holds(now) {
            return None;
        }
        self.renewed_sent_at
            .map(|sent| LEASE_TTL.saturating_sub(now.saturating_duration_since(sent)))
    }

    /// Decides what to ask, given the lease record as known here (with its version), the
    /// candidates, whether preemption is on and whether our own balancer is healthy.
    pub fn decide(
        &mut self,
        lease: Option<(LeaseRecord, u64)>,
        candidates: &[Candidate],
        preempt: bool,
        self_healthy: bool,
    ) -> Decision {
        let record = lease.as_ref().map(|(record, _)| record);
        let version = lease.as_ref().map(|(_, version)| *version).unwrap_or(0);
        self.named_holder = record.is_some_and(|record| record.holder.as_deref() == Some(&self.me));
        if self.named_holder {
            let mine = candidates
                .iter()
                .find(|candidate| candidate.name == self.me);
            let best_other = preferred(candidates, Some(&self.me));
            let hand_to = match (self_healthy, mine, best_other) {
                // Our balancer cannot serve: give way to anyone who can.
                (false, _, Some(other)) => Some(other),
                // Preemption: a preferred node is back.
                (true, Some(mine), Some(other))
                    if preempt
                        && (other.priority, std::cmp::Reverse(&other.name))
                            > (mine.priority, std::cmp::Reverse(&mine.name)) =>
                {
                    Some(other)
                }
                _ => None,
            };
            if let Some(other) = hand_to {
                self.named_holder = false;
                self.renewed_sent_at = None;
                return Decision::HandOver {
                    version,
                    to: other.name.clone(),
                };
            }
            return Decision::Renew { version };
        }
        self.renewed_sent_at = None;
        if !self_healthy || record.is_some_and(|record| record.holder.is_some()) {
            return Decision::Idle;
        }
        let last_holder = record.and_then(|record| record.previous.as_deref());
        let best = preferred(candidates, last_holder).or_else(|| preferred(candidates, None));
        match best {
            Some(best) if best.name == self.me => Decision::Acquire,
            _ => Decision::Idle,
        }
    }

    /// Records the outcome of a renewal or acquisition sent at `sent_at`: `true` if the
    /// leader said yes. A refused or failed request does not extend the lease.
    pub fn record_answer(&mut self, sent_at: Instant, granted: bool) {
        if granted {
            self.named_holder = true;
            self.renewed_sent_at = Some(sent_at);
        }
    }

    /// The leader refused our renewal: the lease is not ours any more. Stop at once.
    pub fn record_refusal(&mut self) {
        self.named_holder = false;
        self.renewed_sent_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(list: &[(&str, u8)]) -> Vec<Candidate> {
        list.iter()
            .map(|(name, priority)| Candidate {
                name: name.to_string(),
                priority: *priority,
            })
            .collect()
    }

    fn held(holder: &str, version: u64) -> Option<(LeaseRecord, u64)> {
        Some((
            LeaseRecord {
                holder: Some(holder.into()),
                epoch: 1,
                ttl_ms: LEASE_TTL.as_millis() as u32,
                previous: None,
            },
            version,
        ))
    }

    fn free(previous: Option<&str>, version: u64) -> Option<(LeaseRecord, u64)> {
        Some((
            LeaseRecord {
                holder: None,
                epoch: 1,
                ttl_ms: LEASE_TTL.as_millis() as u32,
                previous: previous.map(str::to_string),
            },
            version,
        ))
    }

    #[test]
    fn with_no_lease_only_the_preferred_candidate_acquires() {
        let both = candidates(&[("lb1", 101), ("lb2", 100)]);
        let mut lb1 = VipElection::new("lb1");
        let mut lb2 = VipElection::new("lb2");
        assert_eq!(lb1.decide(None, &both, true, true), Decision::Acquire);
        assert_eq!(lb2.decide(None, &both, true, true), Decision::Idle);
        assert_eq!(
            lb2.decide(held("lb1", 4), &both, true, true),
            Decision::Idle,
            "nobody acquires a held lease"
        );
    }

    #[test]
    fn the_last_holder_of_a_free_lease_is_passed_over_unless_it_is_alone() {
        let both = candidates(&[("lb1", 101), ("lb2", 100)]);
        let mut lb1 = VipElection::new("lb1");
        let mut lb2 = VipElection::new("lb2");
        assert_eq!(
            lb1.decide(free(Some("lb1"), 9), &both, true, true),
            Decision::Idle
        );
        assert_eq!(
            lb2.decide(free(Some("lb1"), 9), &both, true, true),
            Decision::Acquire
        );
        let alone = candidates(&[("lb1", 101)]);
        assert_eq!(
            lb1.decide(free(Some("lb1"), 9), &alone, true, true),
            Decision::Acquire
        );
    }

    #[test]
    fn a_holder_serves_only_for_the_lease_after_its_last_granted_renewal() {
        let start = Instant::now();
        let me = candidates(&[("lb1", 101)]);
        let mut holder = VipElection::new("lb1");
        assert_eq!(
            holder.decide(held("lb1", 3), &me, true, true),
            Decision::Renew { version: 3 }
        );
        assert!(!holder.holds(start), "named, but not renewed yet");
        holder.record_answer(start, true);
        holder.decide(held("lb1", 3), &me, true, true);
        holder.record_answer(start + Duration::from_millis(150), false);
        assert!(holder.holds(start + LEASE_TTL - Duration::from_millis(1)));
        assert!(!holder.holds(start + LEASE_TTL));
        assert_eq!(
            holder.lease_deadline(),
            Some(start + LEASE_TTL),
            "a refused renewal does not move the deadline"
        );
        assert_eq!(
            holder.lease_remaining(start + Duration::from_millis(100)),
            Some(LEASE_TTL - Duration::from_millis(100))
        );
        holder.record_refusal();
        assert!(!holder.holds(start), "a refusal ends the lease at once");
    }

    #[test]
    fn a_recovered_higher_priority_node_gets_the_vip_back_only_with_preemption() {
        let now = Instant::now();
        let both = candidates(&[("lb1", 101), ("lb2", 100)]);
        let mut lb2 = VipElection::new("lb2");
        lb2.decide(held("lb2", 9), &both, true, true);
        lb2.record_answer(now, true);
        assert_eq!(
            lb2.decide(held("lb2", 10), &both, true, true),
            Decision::HandOver {
                version: 10,
                to: "lb1".to_string()
            }
        );
        assert!(
            !lb2.holds(now),
            "the holder stops serving before it hands over"
        );
        let mut keeper = VipElection::new("lb2");
        assert_eq!(
            keeper.decide(held("lb2", 10), &both, false, true),
            Decision::Renew { version: 10 }
        );
    }

    #[test]
    fn an_unhealthy_holder_gives_way_and_unhealthy_nodes_never_acquire() {
        let both = candidates(&[("lb1", 101), ("lb2", 100)]);
        let mut lb1 = VipElection::new("lb1");
        assert!(matches!(
            lb1.decide(held("lb1", 5), &both, true, false),
            Decision::HandOver { .. }
        ));
        let mut lb1_again = VipElection::new("lb1");
        assert_eq!(lb1_again.decide(None, &both, true, false), Decision::Idle);
    }
}
