//! The Raft leader's in-memory lease table: when each held lease runs out, on the leader's
//! own monotonic clock. Renewals only move these deadlines; nothing here is written to
//! disk. This file is the decision logic alone, driven by the caller's clock, so every
//! rule of the safety argument in [`super`] can be tested step by step.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{LeaseRecord, MARGIN};

/// One held lease, as the leader tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Deadline {
    holder: String,
    /// The catalog version of the grant: renewals must name it.
    version: u64,
    ttl: Duration,
    /// After this instant the leader may commit the lease's expiry.
    expires_at: Instant,
    /// An expiry has been proposed: renewals are refused from then on, even if the
    /// proposal fails, because the holder's own deadline has already passed.
    expiring: bool,
}

/// Why a renewal was refused. The holder must stop using the lease at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewRefusal {
    /// The lease names another holder, or none.
    NotHolder { current: Option<String> },
    /// The lease was granted again since (the holder's grant is older).
    Superseded { current_version: u64 },
    /// The lease ran out on the leader's clock; its expiry is being committed.
    Expired,
}

impl std::fmt::Display for RenewRefusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenewRefusal::NotHolder {
                current: Some(holder),
            } => {
                write!(formatter, "the lease is held by {holder}")
            }
            RenewRefusal::NotHolder { current: None } => write!(formatter, "the lease is free"),
            RenewRefusal::Superseded { current_version } => write!(
                formatter,
                "the lease was granted again since (version {current_version})"
            ),
            RenewRefusal::Expired => write!(formatter, "the lease ran out before this renewal"),
        }
    }
}

/// The table of one leadership term. Empty and not ready on a node that is not leader.
#[derive(Debug, Default)]
pub struct LeaseTable {
    /// The term whose leases this table tracks; `None` until the leader has taken over.
    term: Option<u64>,
    deadlines: HashMap<String, Deadline>,
}

impl LeaseTable {
    /// Whether the table belongs to `term` (the leader has taken over its leases).
    pub fn is_ready_for(&self, term: u64) -> bool {
        self.term == Some(term)
    }

    /// Forgets everything: this node is no longer the leader, or a new term began.
    pub fn clear(&mut self) {
        self.term = None;
        self.deadlines.clear();
    }

    /// A new leader takes over: every lease the catalog says is held is honoured for a
    /// full lease period (plus the margin) from `now`, whatever the old leader knew.
    /// `records` must come from a state machine that has applied every entry of earlier
    /// terms.
    pub fn take_over(
        &mut self,
        term: u64,
        records: impl IntoIterator<Item = (String, LeaseRecord, u64)>,
        now: Instant,
    ) {
        self.deadlines.clear();
        for (name, record, version) in records {
            let ttl = record.ttl();
            if let Some(holder) = record.holder {
                self.deadlines.insert(
                    name,
                    Deadline {
                        holder,
                        version,
                        ttl,
                        expires_at: now + ttl + MARGIN,
                        expiring: false,
                    },
                );
            }
        }
        self.term = Some(term);
    }

    /// A grant or hand-over committed at `version`: the new holder's period starts at
    /// `now` (after the commit, so after the holder sent its request).
    pub fn granted(&mut self, name: &str, holder: &str, version: u64, ttl: Duration, now: Instant) {
        self.deadlines.insert(
            name.to_string(),
            Deadline {
                holder: holder.to_string(),
                version,
                ttl,
                expires_at: now + ttl + MARGIN,
                expiring: false,
            },
        );
    }

    /// A release or expiry was committed: nobody holds the lease.
    pub fn freed(&mut self, name: &str) {
        self.deadlines.remove(name);
    }

    /// Records a renewal received at `received_at`: the lease now runs until
    /// `received_at + ttl + MARGIN` on this clock. Extending before the leadership check
    /// is conservative: a longer deadline only delays a later grant.
    pub fn renew(
        &mut self,
        name: &str,
        holder: &str,
        version: u64,
        received_at: Instant,
    ) -> Result<(), RenewRefusal> {
        let Some(deadline) = self.deadlines.get_mut(name) else {
            return Err(RenewRefusal::NotHolder { current: None });
        };
        if deadline.holder != holder {
            return Err(RenewRefusal::NotHolder {
                current: Some(deadline.holder.clone()),
            });
        }
        if deadline.version != version {
            return Err(RenewRefusal::Superseded {
                current_version: deadline.version,
            });
        }
        if deadline.expiring || received_at > deadline.expires_at {
            deadline.expiring = true;
            return Err(RenewRefusal::Expired);
        }
        deadline.expires_at = deadline.expires_at.max(received_at + deadline.ttl + MARGIN);
        Ok(())
    }

    /// The holder of a lease the table still honours, if any.
    pub fn holder(&self, name: &str) -> Option<&str> {
        self.deadlines
            .get(name)
            .map(|deadline| deadline.holder.as_str())
    }

    /// How long until the lease runs out on this clock (None when nobody holds it).
    pub fn remaining(&self, name: &str, now: Instant) -> Option<Duration> {
        self.deadlines
            .get(name)
            .map(|deadline| deadline.expires_at.saturating_duration_since(now))
    }

    /// Leases that ran out by `now` and whose expiry has not been proposed yet, as
    /// `(name, version)`; each is marked expiring, so its renewals are refused from now on.
    pub fn take_expired(&mut self, now: Instant) -> Vec<(String, u64)> {
        let mut expired = Vec::new();
        for (name, deadline) in &mut self.deadlines {
            if !deadline.expiring && now > deadline.expires_at {
                deadline.expiring = true;
                expired.push((name.clone(), deadline.version));
            }
        }
        expired.sort();
        expired
    }

    /// Leases whose expiry was proposed but not committed (the proposal failed): proposed
    /// again at the next round.
    pub fn pending_expiries(&self) -> Vec<(String, u64)> {
        let mut pending: Vec<(String, u64)> = self
            .deadlines
            .iter()
            .filter(|(_, deadline)| deadline.expiring)
            .map(|(name, deadline)| (name.clone(), deadline.version))
            .collect();
        pending.sort();
        pending
    }

    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(600);

    fn held_by(holder: &str) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.to_string()),
            epoch: 1,
            ttl_ms: TTL.as_millis() as u32,
            previous: None,
        }
    }

    #[test]
    fn a_renewed_lease_does_not_expire_and_an_abandoned_one_does() {
        let start = Instant::now();
        let mut table = LeaseTable::default();
        table.take_over(3, [("vip".to_string(), held_by("n2"), 10)], start);
        for step in 1..=20u64 {
            let now = start + Duration::from_millis(step * 150);
            assert_eq!(table.renew("vip", "n2", 10, now), Ok(()));
            assert!(table.take_expired(now).is_empty());
        }
        let last_renewal = start + Duration::from_millis(20 * 150);
        assert!(
            table
                .take_expired(last_renewal + TTL + MARGIN - Duration::from_millis(1))
                .is_empty()
        );
        let after = last_renewal + TTL + MARGIN + Duration::from_millis(1);
        assert_eq!(table.take_expired(after), vec![("vip".to_string(), 10)]);
        assert!(
            table.take_expired(after).is_empty(),
            "an expiry is proposed once"
        );
        assert_eq!(table.pending_expiries(), vec![("vip".to_string(), 10)]);
        assert_eq!(
            table.renew("vip", "n2", 10, after),
            Err(RenewRefusal::Expired),
            "a lease whose expiry is proposed cannot be renewed any more"
        );
    }

    #[test]
    fn the_holder_always_lets_go_before_the_leader_expires_its_lease() {
        // The holder serves until `sent + TTL` on its clock; the leader receives the
        // renewal later than it was sent, and expires it only after `received + TTL +
        // MARGIN`. Check every send-to-receive delay on a 1 ms grid.
        let start = Instant::now();
        for delay_ms in 0..300u64 {
            let mut table = LeaseTable::default();
            table.take_over(1, [("vip".to_string(), held_by("n2"), 4)], start);
            let sent = start + Duration::from_millis(100);
            let received = sent + Duration::from_millis(delay_ms);
            table.renew("vip", "n2", 4, received).unwrap();
            let holder_stops = sent + TTL;
            let mut expired_at = None;
            for step in 0..3_000u64 {
                let now = start + Duration::from_millis(step);
                if !table.take_expired(now).is_empty() {
                    expired_at = Some(now);
                    break;
                }
            }
            let expired_at = expired_at.expect("the lease expires");
            assert!(expired_at >= holder_stops + MARGIN, "delay {delay_ms} ms");
        }
    }

    #[test]
    fn a_new_leader_honours_every_held_lease_for_a_full_period() {
        let start = Instant::now();
        let mut table = LeaseTable::default();
        let free = LeaseRecord {
            holder: None,
            ..held_by("n2")
        };
        table.take_over(
            7,
            [
                ("a".to_string(), held_by("n2"), 5),
                ("b".to_string(), free, 6),
            ],
            start,
        );
        assert!(table.is_ready_for(7));
        assert!(!table.is_ready_for(8));
        assert_eq!(table.holder("a"), Some("n2"));
        assert_eq!(table.holder("b"), None);
        assert_eq!(table.remaining("a", start), Some(TTL + MARGIN));
        assert!(table.take_expired(start + TTL + MARGIN).is_empty());
        assert_eq!(
            table.take_expired(start + TTL + MARGIN + Duration::from_millis(1)),
            vec![("a".to_string(), 5)]
        );
    }

    #[test]
    fn renewals_must_name_the_holder_and_the_grant() {
        let start = Instant::now();
        let mut table = LeaseTable::default();
        table.take_over(1, [("vip".to_string(), held_by("n2"), 4)], start);
        assert_eq!(
            table.renew("vip", "n3", 4, start),
            Err(RenewRefusal::NotHolder {
                current: Some("n2".to_string())
            })
        );
        assert_eq!(
            table.renew("vip", "n2", 3, start),
            Err(RenewRefusal::Superseded { current_version: 4 })
        );
        assert_eq!(
            table.renew("other", "n2", 4, start),
            Err(RenewRefusal::NotHolder { current: None })
        );
        table.freed("vip");
        assert_eq!(
            table.renew("vip", "n2", 4, start),
            Err(RenewRefusal::NotHolder { current: None })
        );
        table.granted("vip", "n3", 9, TTL, start);
        assert_eq!(table.renew("vip", "n3", 9, start), Ok(()));
        table.clear();
        assert!(table.is_empty());
        assert!(!table.is_ready_for(1));
    }
}
