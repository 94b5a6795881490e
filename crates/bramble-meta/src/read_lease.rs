//! Linearizable reads that the leader serves from its own replica, without a quorum round
//! per read: a read lease, as TiKV's lease reads. Without it every `stat`, listing and
//! record lookup of a file costs a heartbeat round to a majority (openraft's
//! `ensure_linearizable`); with it, one such round covers every read on the leader for
//! half a leader lease (400 ms by default).
//!
//! # Why a read under the lease is linearizable
//!
//! A read is linearizable if it reflects every write acknowledged before it began and if
//! no other leader can have committed a write before it was served. Let a quorum round
//! (`ensure_linearizable`) begin at time `S` on this node's monotonic clock and succeed,
//! while this node saved no vote (the log store's `votes_saved` count did not change).
//!
//! 1. *No other leader before `S + leader_lease`.* The round's heartbeats were sent at
//!    `S` or later and a quorum of voters accepted them; each such follower refreshed its
//!    committed vote's time on receipt, so it refuses every vote request until a full
//!    `leader_lease` (openraft: `election_timeout_max`) has passed on its clock, and it
//!    does not stand itself before then. Any new leader needs a quorum of votes, which
//!    meets that quorum in at least one voter: either a follower that refuses, or this
//!    node. This node's vote is checked directly: granting any vote (or moving to a new
//!    term) saves a vote before anyone hears of it, which changes `votes_saved`.
//! 2. *Every acknowledged write is here.* The round waited until this replica had applied
//!    the read index (everything committed at `S`, and this leader's first entry of its
//!    term). A write committed later was committed by this node, which applies a write
//!    before it acknowledges it.
//! 3. *Served within the lease.* [`ReadLease::serve`] reads first and checks afterwards
//!    that the lease's window (half of `leader_lease`, leaving half for clock-rate
//!    differences and scheduling) has not run out and that `votes_saved` is unchanged. If
//!    both hold after the read, then at the read no other leader existed (point 1), so the
//!    value read is the latest committed one (point 2). Otherwise the caller does a quorum
//!    round as before.
//!
//! A node that stops being leader without a vote of its own (removed from the voters)
//! keeps its lease until it runs out; by point 1 no other leader exists until then, so it
//! is still right. A partitioned leader's lease runs out long before the majority can
//! elect another (`tests/netns_chaos.rs` reads through it after the majority committed).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One granted lease: when the quorum round that granted it began, and the vote count
/// then.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grant {
    began: Instant,
    votes: u64,
}

/// The read lease of one node.
#[derive(Debug)]
pub(crate) struct ReadLease {
    granted: Mutex<Option<Grant>>,
    window: Duration,
}

impl ReadLease {
    /// A lease that lasts half of `leader_lease` from the start of the round that grants
    /// it.
    pub(crate) fn new(leader_lease: Duration) -> ReadLease {
        ReadLease {
            granted: Mutex::new(None),
            window: leader_lease / 2,
        }
    }

    /// Taken just before a quorum round: the grant it will make if it succeeds.
    pub(crate) fn before_round(votes_saved: u64) -> Grant {
        Grant {
            began: Instant::now(),
            votes: votes_saved,
        }
    }

    /// After a successful quorum round: the lease runs from the round's start, unless a
    /// vote was saved meanwhile.
    pub(crate) fn after_round(&self, grant: Grant, votes_saved: u64) {
        if votes_saved != grant.votes {
            return;
        }
        let mut granted = self
            .granted
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // Keep the later of two grants.
        if granted.is_none_or(|current| current.began < grant.began) {
            *granted = Some(grant);
        }
    }

    /// Serves `read` under the lease if one holds before and after it; `None` when the
    /// caller must confirm with a quorum round instead.
    pub(crate) fn serve<T>(
        &self,
        votes_saved: impl Fn() -> u64,
        read: impl FnOnce() -> T,
    ) -> Option<T> {
        let grant = (*self
            .granted
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()))?;
        let holds =
            |grant: &Grant| grant.began.elapsed() < self.window && votes_saved() == grant.votes;
        if !holds(&grant) {
            return None;
        }
        let value = read();
        holds(&grant).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn no_lease_until_a_round_succeeds_without_a_vote() {
        let lease = ReadLease::new(Duration::from_secs(10));
        assert_eq!(lease.serve(|| 0, || 1), None);
        // A vote saved during the round: no lease.
        let grant = ReadLease::before_round(0);
        lease.after_round(grant, 1);
        assert_eq!(lease.serve(|| 1, || 1), None);
        let grant = ReadLease::before_round(1);
        lease.after_round(grant, 1);
        assert_eq!(lease.serve(|| 1, || 7), Some(7));
    }

    #[test]
    fn a_vote_saved_during_the_read_voids_it() {
        let lease = ReadLease::new(Duration::from_secs(10));
        lease.after_round(ReadLease::before_round(3), 3);
        let votes = Cell::new(3);
        let served = lease.serve(
            || votes.get(),
            || {
                votes.set(4);
                "stale?"
            },
        );
        assert_eq!(served, None);
        // And every read after it, until a new round.
        assert_eq!(lease.serve(|| votes.get(), || 1), None);
    }

    #[test]
    fn the_lease_runs_out_half_a_leader_lease_after_the_round_began() {
        let lease = ReadLease::new(Duration::from_millis(40));
        lease.after_round(ReadLease::before_round(0), 0);
        assert_eq!(lease.serve(|| 0, || 1), Some(1));
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(lease.serve(|| 0, || 1), None);
    }
}
