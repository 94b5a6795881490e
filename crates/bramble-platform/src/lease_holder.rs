//! Holding a platform lease for a role only one node may play at a time (the jobs
//! scheduler, the services reconciler): try to take the lease while it is free, renew it
//! while it is ours, and say until when this node may act. The balancer's VIP election
//! has its own participant (priorities, hand-overs); this is the plain case every other
//! subsystem shares.
//!
//! The guarantee comes from the lease protocol (`bramble_meta::lease`): a holder may act
//! until `sent + ttl` of its last granted or renewed request, and the catalog leader
//! grants the lease to another node only after that. A holder that acts on the catalog
//! can also fence its writes with a condition on the lease record's version
//! ([`HeldLease::grant_version`]), which changes at every new grant: a write from a node
//! whose lease moved on is refused by Raft itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_meta::Meta;
use bramble_meta::lease::{LeaseAnswer, LeaseOperation, LeaseRequest, lease_key};
use tracing::{info, warn};

/// What this node knows about its hold on the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// The catalog version of the grant (the record's version; it changes only at a new
    /// grant or a release).
    pub grant_version: u64,
    /// The lease's epoch: grows with every new holder.
    pub epoch: u64,
    /// This node may act until this instant.
    pub until: Instant,
}

/// One node's side of a lease.
pub struct HeldLease {
    meta: Arc<Meta>,
    name: String,
    node: String,
    ttl: Duration,
    hold: Option<Hold>,
}

impl HeldLease {
    pub fn new(meta: Arc<Meta>, name: &str, node: &str, ttl: Duration) -> HeldLease {
        HeldLease {
            meta,
            name: name.to_string(),
            node: node.to_string(),
            ttl,
            hold: None,
        }
    }

    /// The lease's name (`jobs/scheduler`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The catalog key of the lease record, for fencing conditions.
    pub fn record_key(&self) -> String {
        lease_key(&self.name)
    }

    /// How often [`HeldLease::step`] should run: three renewals per period.
    pub fn step_every(&self) -> Duration {
        self.ttl / 3
    }

    /// The hold, if it has not run out.
    pub fn hold(&self) -> Option<Hold> {
        self.hold.filter(|hold| hold.until > Instant::now())
    }

    /// The grant's catalog version while the lease is ours.
    pub fn grant_version(&self) -> Option<u64> {
        self.hold().map(|hold| hold.grant_version)
    }

    /// The holder as this node's replica records it (`None`: free or unknown).
    pub fn recorded_holder(&self) -> Option<String> {
        self.meta
            .lease_record(&self.name)
            .and_then(|(record, _)| record.holder)
    }

    /// Renews the lease if it is ours, or takes it if it is free; returns the hold after
    /// the step. Never waits longer than what is left of the hold (or one step period).
    pub async fn step(&mut self) -> Option<Hold> {
        let record = self.meta.lease_record(&self.name);
        let operation = match (&self.hold, &record) {
            (Some(hold), _) => LeaseOperation::Renew {
                version: hold.grant_version,
            },
            (None, Some((record, version))) if record.holder.as_deref() == Some(&self.node) => {
                // An earlier run of this node holds it: carry on with that grant.
                LeaseOperation::Renew { version: *version }
            }
            (None, Some((record, _))) if record.holder.is_some() => return None,
            _ => LeaseOperation::Acquire {
                ttl_ms: self.ttl.as_millis() as u32,
            },
        };
        let renewing = match &operation {
            LeaseOperation::Renew { version } => Some(*version),
            _ => None,
        };
        let request = LeaseRequest {
            name: self.name.clone(),
            holder: self.node.clone(),
            operation,
            forwarded: false,
        };
        let patience = self
            .hold()
            .map(|hold| hold.until.saturating_duration_since(Instant::now()))
            .unwrap_or(self.step_every())
            .max(Duration::from_millis(50));
        let sent = Instant::now();
        let answer = tokio::time::timeout(patience, self.meta.lease(request)).await;
        match answer {
            Ok(Ok(LeaseAnswer::Granted { version, epoch })) => {
                info!(lease = %self.name, epoch, "took the lease");
                self.hold = Some(Hold {
                    grant_version: version,
                    epoch,
                    until: sent + self.ttl,
                });
            }
            Ok(Ok(LeaseAnswer::Renewed)) => {
                let epoch = self
                    .hold
                    .map(|hold| hold.epoch)
                    .or_else(|| record.as_ref().map(|(record, _)| record.epoch))
                    .unwrap_or(0);
                if self.hold.is_none() {
                    info!(lease = %self.name, epoch, "holding the lease again");
                }
                self.hold = Some(Hold {
                    grant_version: renewing.unwrap_or(0),
                    epoch,
                    until: sent + self.ttl,
                });
            }
            Ok(Ok(LeaseAnswer::Refused { reason, .. })) => {
                if self.hold.take().is_some() {
                    warn!(lease = %self.name, %reason, "lost the lease");
                }
            }
            Ok(Ok(LeaseAnswer::Done)) => self.hold = None,
            Ok(Err(error)) => {
                if self.hold().is_some() {
                    warn!(lease = %self.name, %error, "could not renew the lease");
                }
            }
            Err(_) => {
                if self.hold().is_some() {
                    warn!(lease = %self.name, waited_ms = patience.as_millis() as u64, "the lease renewal got no answer in time");
                }
            }
        }
        self.hold()
    }

    /// Gives the lease up, so another node takes over at once instead of after the
    /// period. The caller has already stopped acting.
    pub async fn release(&mut self) {
        let Some(hold) = self.hold.take() else {
            return;
        };
        let request = LeaseRequest {
            name: self.name.clone(),
            holder: self.node.clone(),
            operation: LeaseOperation::Release {
                version: hold.grant_version,
            },
            forwarded: false,
        };
        match tokio::time::timeout(Duration::from_secs(2), self.meta.lease(request)).await {
            Ok(Ok(LeaseAnswer::Done)) => info!(lease = %self.name, "released the lease"),
            Ok(Ok(answer)) => {
                info!(lease = %self.name, ?answer, "the lease was not ours to release")
            }
            Ok(Err(error)) => {
                warn!(lease = %self.name, %error, "could not release the lease; another node takes over when it runs out")
            }
            Err(_) => {
                warn!(lease = %self.name, "releasing the lease timed out; another node takes over when it runs out")
            }
        }
    }
}
