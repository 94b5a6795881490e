//! Virtual-IP failover without split brain: who may hold a balancer's VIP.
//!
//! Gossip alone cannot decide this safely (in a partition each side sees the other dead),
//! so the VIP is held under a **lease in the Raft catalog**, which only a majority can
//! grant. The key `lb/vip/<balancer>` names the holder; its catalog version changes with
//! every renewal.
//!
//! - The holder renews with a compare-and-set on the version it last saw, every
//!   [`RENEW_EVERY`]. It keeps the VIP only while its last successful renewal was **sent**
//!   less than [`LEASE`] ago, on its own monotonic clock. Cut off from the majority, it
//!   cannot renew, and lets go when that time runs out.
//! - Another node may take over only after it has seen no new version for
//!   [`LEASE`] + [`MARGIN`] on its own monotonic clock, counted from when it **received**
//!   the last renewal (which is after the holder sent it), and only by a compare-and-set
//!   on that version, so at most one challenger wins.
//! - Hence the old holder always lets go at least [`MARGIN`] before anyone else can take
//!   the VIP. Only bounded clock *rate* drift is assumed, never synchronised clocks.
//! - Priorities and preemption (Keepalived's): among live `lb` nodes whose balancer is
//!   healthy, the highest priority (then the smallest name) is the preferred holder. With
//!   preemption, a holder hands the lease to a preferred node that is up — after it has
//!   stopped serving the VIP itself, so there is never a moment with two holders.
//!
//! This module is the decision logic only, driven by the caller's clock, so it can be
//! tested exhaustively; [`crate::subsystem`] does the catalog writes and the binding.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long a renewal keeps the VIP.
pub const LEASE: Duration = Duration::from_millis(600);
/// Extra wait before a challenger may take over a lease it saw go quiet.
pub const MARGIN: Duration = Duration::from_millis(200);
/// How often the holder renews (and everyone re-evaluates).
pub const RENEW_EVERY: Duration = Duration::from_millis(150);
/// Priority of a node the balancer's `vip.priorities` does not list.
pub const DEFAULT_PRIORITY: u8 = 100;

pub fn lease_key(balancer: &str) -> String {
    format!("lb/vip/{balancer}")
}

/// The value stored under [`lease_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipLease {
    pub holder: String,
    /// Incremented at every change of holder: tells handovers apart in logs.
    pub epoch: u64,
}

/// A node that could hold the VIP: alive, with the `lb` role, balancer healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub priority: u8,
}

/// What the caller should write to the catalog now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to write.
    Idle,
    /// Renew our own lease: compare-and-set on `expected_version`.
    Renew {
        expected_version: u64,
        lease: VipLease,
    },
    /// Take the lease: compare-and-set on `expected_version` (0: the key must not exist).
    Acquire {
        expected_version: u64,
        lease: VipLease,
    },
    /// Give the lease to a preferred node. The caller must have stopped serving the VIP
    /// before writing.
    HandOver {
        expected_version: u64,
        lease: VipLease,
    },
}

/// One node's view of one balancer's VIP election.
#[derive(Debug)]
pub struct VipElection {
    me: String,
    /// The lease version last seen and when it was first seen (for staleness).
    last_seen: Option<(u64, Instant)>,
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
            last_seen: None,
            renewed_sent_at: None,
            named_holder: false,
        }
    }

    /// May this node serve the VIP at `now`? Only while the lease names it and its last
    /// successful renewal was sent less than [`LEASE`] ago.
    pub fn holds(&self, now: Instant) -> bool {
        self.named_holder
            && self
                .renewed_sent_at
                .is_some_and(|sent| now.saturating_duration_since(sent) < LEASE)
    }

    /// Time left before the lease this node holds runs out (None if it holds none). A
    /// write that could outlast it must be given up in time to release the VIP.
    pub fn lease_remaining(&self, now: Instant) -> Option<Duration> {
        if !self.holds(now) {
            return None;
        }
        self.renewed_sent_at
            .map(|sent| LEASE.saturating_sub(now.saturating_duration_since(sent)))
    }

    /// Decides what to write, given the lease as read from the local replica (with its
    /// version), the candidates, whether preemption is on and whether our own balancer
    /// is healthy.
    pub fn decide(
        &mut self,
        lease: Option<(VipLease, u64)>,
        candidates: &[Candidate],
        preempt: bool,
        self_healthy: bool,
        now: Instant,
    ) -> Decision {
        let version = lease.as_ref().map(|(_, version)| *version).unwrap_or(0);
        match self.last_seen {
            Some((seen, _)) if seen == version => {}
            _ => self.last_seen = Some((version, now)),
        }
        let current = lease.as_ref().map(|(lease, _)| lease);
        self.named_holder = current.is_some_and(|lease| lease.holder == self.me);
        let epoch = current.map(|lease| lease.epoch).unwrap_or(0);
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
                    expected_version: version,
                    lease: VipLease {
                        holder: other.name.clone(),
                        epoch: epoch + 1,
                    },
                };
            }
            return Decision::Renew {
                expected_version: version,
                lease: VipLease {
                    holder: self.me.clone(),
                    epoch,
                },
            };
        }
        self.renewed_sent_at = None;
        if !self_healthy {
            return Decision::Idle;
        }
        let stale = match (current, self.last_seen) {
            (None, _) => true,
            (Some(_), Some((_, since))) => now.saturating_duration_since(since) > LEASE + MARGIN,
            (Some(_), None) => false,
        };
        if !stale {
            return Decision::Idle;
        }
        let stale_holder = current.map(|lease| lease.holder.as_str());
        match preferred(candidates, stale_holder) {
            Some(best) if best.name == self.me => Decision::Acquire {
                expected_version: version,
                lease: VipLease {
                    holder: self.me.clone(),
                    epoch: epoch + 1,
                },
            },
            _ => Decision::Idle,
        }
    }

    /// Records the outcome of a `Renew` or `Acquire` write sent at `sent_at`: `true` if
    /// it was committed. A refused or failed write does not extend the lease.
    pub fn record_write(&mut self, sent_at: Instant, committed: bool) {
        if committed {
            self.named_holder = true;
            self.renewed_sent_at = Some(sent_at);
        }
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

    fn lease(holder: &str, epoch: u64, version: u64) -> Option<(VipLease, u64)> {
        Some((
            VipLease {
                holder: holder.into(),
                epoch,
            },
            version,
        ))
    }

    #[test]
    fn with_no_lease_only_the_preferred_candidate_acquires() {
        let start = Instant::now();
        let both = candidates(&[("lb1", 101), ("lb2", 100)]);
        let mut lb1 = VipElection::new("lb1");
        let mut lb2 = VipElection::new("lb2");
        assert!(matches!(
            lb1.decide(None, &both, true, true, start),
            Decision::Acquire {
                expected_version: 0,
                ..
            }
        ));
        assert_eq!(lb2.decide(None, &both, true, true, start), Decision::Idle);
    }

    #[test]
    fn the_holder_lets_go_before_a_challenger_may_take_over() {
        let start = Instant::now();
        let both = candidates(&[("lb1", 101), ("lb2", 100)]);
        let mut holder = VipElection::new("lb1");
        let mut challenger = VipElection::new("lb2");
        // lb1 renewed at `start` (version 7); lb2 saw version 7 a little later.
        assert!(matches!(
            holder.decide(lease("lb1", 1, 7), &both, true, true, start),
            Decision::Renew { .. }
        ));
        holder.record_write(start, true);
        let seen_at = start + Duration::from_millis(5);
        assert_eq!(
            challenger.decide(lease("lb1", 1, 7), &both, true, true, seen_at),
            Decision::Idle
        );
        // From here on lb1 cannot renew (partitioned, or dead). Step through time.
        let mut holder_released_at = None;
        let mut challenger_acquired_at = None;
        for step in 0..200u64 {
            let now = start + Duration::from_millis(step * 10);
            if holder_released_at.is_none() && !holder.holds(now) {
                holder_released_at = Some(now);
            }
            let healthy_others = candidates(&[("lb2", 100)]);
            if challenger_acquired_at.is_none()
                && matches!(
                    challenger.decide(lease("lb1", 1, 7), &healthy_others, true, true, now),
                    Decision::Acquire { .. }
                )
            {
                challenger_acquired_at = Some(now);
            }
        }
        let released = holder_released_at.expect("the holder lets go");
        let acquired = challenger_acquired_at.expect("the challenger takes over");
        assert!(
            acquired >= released + MARGIN,
            "released {released:?}, acquired {acquired:?}"
        );
    }

    #[test]
    fn a_holder_whose_renewals_fail_keeps_the_vip_only_for_the_lease() {
        let start = Instant::now();
        let me = candidates(&[("lb1", 101)]);
        let mut holder = VipElection::new("lb1");
        holder.decide(lease("lb1", 1, 3), &me, true, true, start);
        holder.record_write(start, true);
        holder.decide(
            lease("lb1", 1, 4),
            &me,
            true,
            true,
            start + Duration::from_millis(150),
        );
        holder.record_write(start + Duration::from_millis(150), false);
        assert!(holder.holds(start + LEASE - Duration::from_millis(1)));
        assert!(!holder.holds(start + LEASE));
    }

    #[test]
    fn a_recovered_higher_priority_node_gets_the_vip_back_only_with_preemption() {
        let now = Instant::now();
        let both = candidates(&[("lb1", 101), ("lb2", 100)]);
        let mut lb2 = VipElection::new("lb2");
        lb2.decide(lease("lb2", 2, 9), &both, true, true, now);
        lb2.record_write(now, true);
        match lb2.decide(lease("lb2", 2, 10), &both, true, true, now) {
            Decision::HandOver {
                expected_version: 10,
                lease,
            } => {
                assert_eq!(lease.holder, "lb1");
                assert_eq!(lease.epoch, 3);
            }
            other => panic!("expected a handover, got {other:?}"),
        }
        assert!(
            !lb2.holds(now),
            "the holder stops serving before it hands over"
        );
        let mut keeper = VipElection::new("lb2");
        assert!(matches!(
            keeper.decide(lease("lb2", 2, 10), &both, false, true, now),
            Decision::Renew { .. }
        ));
    }

    #[test]
    fn an_unhealthy_holder_gives_way_and_unhealthy_nodes_never_acquire() {
        let now = Instant::now();
        let both = candidates(&[("lb1", 101), ("lb2", 100)]);
        let mut lb1 = VipElection::new("lb1");
        assert!(matches!(
            lb1.decide(lease("lb1", 1, 5), &both, true, false, now),
            Decision::HandOver { .. }
        ));
        let mut lb1_again = VipElection::new("lb1");
        assert_eq!(
            lb1_again.decide(None, &both, true, false, now),
            Decision::Idle
        );
    }

    #[test]
    fn a_node_named_holder_by_handover_serves_only_after_its_own_renewal() {
        let now = Instant::now();
        let both = candidates(&[("lb1", 101), ("lb2", 100)]);
        let mut lb1 = VipElection::new("lb1");
        assert!(matches!(
            lb1.decide(lease("lb1", 3, 11), &both, true, true, now),
            Decision::Renew {
                expected_version: 11,
                ..
            }
        ));
        assert!(!lb1.holds(now));
        lb1.record_write(now, true);
        assert!(lb1.holds(now));
    }
}
