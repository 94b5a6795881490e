//! One balancer's VIP on one `lb` node, as an explicit state machine: [`VipParticipant`]
//! holds everything the node knows about the balancer's lease and what it serves, and
//! each [`VipParticipant::step`] (every renewal period, or sooner when the lease or the
//! spec changes) moves it on:
//!
//! 1. follow the spec's VIP interface (let go of an old address entirely first);
//! 2. check the interface's link (Keepalived's interface tracking);
//! 3. read the lease as known here and decide ([`crate::vip::VipElection`]);
//! 4. ask the catalog leader (renew, acquire, hand over), never waiting past the lease;
//! 5. serve the VIP while the lease is ours — add the address, bind, run the health
//!    checks, apply spec changes — and let go as soon as it is not.
//!
//! Between steps, [`VipParticipant::enforce_deadline`] lets go the moment the lease runs
//! out, so a late step never stretches the lease.
//!
//! [`VipParticipant::finish`] lets go and releases the lease, so a backup takes over at
//! once when this node stops. A drained node steps as an unhealthy one: it never takes a
//! free lease, and hands one it holds to the preferred other candidate (after letting go),
//! so the backup serves within a lease round trip instead of after the lease.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_meta::Meta;
use bramble_meta::lease::{LeaseAnswer, LeaseOperation, LeaseRecord, LeaseRequest};
use bramble_util::Shutdown;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::balancer::{Balancer, BalancerHandle};
use crate::config::BalancerSpec;
use crate::health::spawn_checks;
use crate::keys::vip_lease_name;
use crate::vip::{Candidate, Decision, LEASE_TTL, RENEW_EVERY, VipElection};
use crate::vip_interface::InterfaceVip;

/// A holder that cannot bind its VIP for this long gives the lease to another node.
const BIND_FAILURE_LIMIT: Duration = Duration::from_secs(2);
/// After taking a VIP that another node released or let lapse, do not hand it back to
/// that node by preemption until gossip has seen it down, or for this long: a node that
/// stops cleanly still looks alive for about a second after it released the VIP.
const PASS_OVER_LIMIT: Duration = Duration::from_secs(30);
/// How long a stopping holder waits for its release to commit.
pub const RELEASE_PATIENCE: Duration = Duration::from_secs(1);
/// In the emulator's loopback mode, how long a holder that hands its VIP over (or releases
/// it when stopping) keeps accepting after the lease moved: long enough for the new holder
/// to see the lease and bind beside it (both listeners share the port with SO_REUSEPORT),
/// so a planned switch refuses no connection. Only for planned moves: a holder whose
/// lease ran out lets go at once.
pub const HANDOVER_LINGER: Duration = Duration::from_secs(1);

/// What [`VipParticipant::step`] found, for the worker's row in `bramble workers`.
pub struct StepReport {
    pub serving: bool,
    pub holder: Option<String>,
}

/// One balancer's VIP state on this node.
pub struct VipParticipant {
    balancer: String,
    node: String,
    lease: String,
    meta: Arc<Meta>,
    election: VipElection,
    /// The running balancer while this node holds the VIP (shared with the stats).
    running: Arc<Mutex<Option<BalancerHandle>>>,
    /// The holder as last known (shared with the stats).
    holder: Arc<Mutex<Option<String>>>,
    checks: Option<JoinHandle<()>>,
    bind_failing_since: Option<Instant>,
    served_spec: Option<BalancerSpec>,
    /// Our own last grant, newer than this node's replica until the replica applies it.
    last_granted: Option<(LeaseRecord, u64)>,
    /// The version of the grant the lease names us by, as last known.
    our_grant: Option<u64>,
    /// The node we took the VIP from, not to be preempted back to for a while.
    passed_over: Option<(String, Instant)>,
    interface_vip: Option<InterfaceVip>,
    link_was_ready: bool,
    /// Whether the last step found this node drained (for logging the change once).
    was_drained: bool,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl VipParticipant {
    pub fn new(
        balancer: &str,
        node: &str,
        meta: Arc<Meta>,
        running: Arc<Mutex<Option<BalancerHandle>>>,
        holder: Arc<Mutex<Option<String>>>,
    ) -> VipParticipant {
        VipParticipant {
            balancer: balancer.to_string(),
            node: node.to_string(),
            lease: vip_lease_name(balancer),
            meta,
            election: VipElection::new(node),
            running,
            holder,
            checks: None,
            bind_failing_since: None,
            served_spec: None,
            last_granted: None,
            our_grant: None,
            passed_over: None,
            interface_vip: None,
            link_was_ready: true,
            was_drained: false,
        }
    }

    /// While this node serves the VIP: the instant its lease runs out. The caller wakes
    /// then and calls [`VipParticipant::enforce_deadline`], so serving never outlasts the
    /// lease because a step was late (a busy CPU, a slow membership lookup).
    pub fn serving_deadline(&self) -> Option<Instant> {
        if !self.serving_anything() {
            return None;
        }
        Some(self.election.lease_deadline().unwrap_or_else(Instant::now))
    }

    /// Lets go at once if the lease ran out: no catalog or membership work first.
    pub async fn enforce_deadline(&mut self) {
        if self.serving_anything() && !self.election.holds(Instant::now()) {
            info!(balancer = %self.balancer, "the VIP lease ran out: releasing it");
            self.let_go().await;
        }
    }

    fn serving_anything(&self) -> bool {
        locked(&self.running).is_some()
            || self
                .interface_vip
                .as_ref()
                .is_some_and(InterfaceVip::is_present)
    }

    /// The lease this participant follows (`lb/vip/<balancer>`).
    pub fn lease(&self) -> &str {
        &self.lease
    }

    /// One round: see the module's list. `drained`: this node is drained (`bramble
    /// drain`), so it stands back as an unhealthy node would.
    pub async fn step(
        &mut self,
        spec: &BalancerSpec,
        candidates: Vec<Candidate>,
        drained: bool,
        agent_shutdown: &Shutdown,
    ) -> StepReport {
        self.follow_interface(spec).await;
        let link_ready = self.check_link();
        let known = self.known_lease();
        let candidates = self.without_passed_over(candidates);
        if drained != self.was_drained {
            self.was_drained = drained;
            if drained {
                info!(balancer = %self.balancer, "this node is drained: it hands over the VIP and stands back");
            } else {
                info!(balancer = %self.balancer, "this node is no longer drained: it stands for the VIP again");
            }
        }
        let healthy = link_ready
            && !drained
            && self
                .bind_failing_since
                .is_none_or(|since| since.elapsed() < BIND_FAILURE_LIMIT);
        let decision = self
            .election
            .decide(known.clone(), &candidates, spec.vip.preempt, healthy);
        self.act_on(decision, known.as_ref()).await;
        if self.election.holds(Instant::now()) && self.hold_address() {
            self.serve(spec, agent_shutdown);
        } else if self.serving_anything() {
            if !self.election.holds(Instant::now()) {
                info!(balancer = %self.balancer, "not holding the VIP: releasing it");
            }
            self.let_go().await;
        }
        StepReport {
            serving: locked(&self.running).is_some(),
            holder: locked(&self.holder).clone(),
        }
    }

    /// Stops serving and releases the lease if it is ours.
    pub async fn finish(&mut self) {
        let lingering = self.let_go_planned().await;
        let Some(version) = self.our_grant else {
            if let Some(lingering) = lingering {
                lingering.abort();
            }
            return;
        };
        // We have stopped serving: hand the VIP to the backup now rather than make it
        // wait for the lease to run out.
        let request = LeaseRequest {
            name: self.lease.clone(),
            holder: self.node.clone(),
            operation: LeaseOperation::Release { version },
            forwarded: false,
        };
        let balancer = &self.balancer;
        match tokio::time::timeout(RELEASE_PATIENCE, self.meta.lease(request)).await {
            Ok(Ok(LeaseAnswer::Done)) => info!(balancer = %balancer, "released the VIP lease"),
            Ok(Ok(answer)) => {
                info!(balancer = %balancer, ?answer, "the VIP lease was not ours to release")
            }
            Ok(Err(error)) => {
                warn!(balancer = %balancer, %error, "could not release the VIP lease; the backup takes over when it runs out")
            }
            Err(_) => {
                warn!(balancer = %balancer, "releasing the VIP lease timed out; the backup takes over when it runs out")
            }
        }
        // The agent is stopping: wait out the linger here, so the listener is still open
        // while the backup binds, and closed before the agent goes on.
        if let Some(lingering) = lingering {
            let _ = lingering.await;
        }
    }

    /// Lets go for a planned move. On a real interface, at once ([`Self::let_go`]). On the
    /// loopback VIP, the balancer keeps accepting for [`HANDOVER_LINGER`] in a task of its
    /// own (returned) while this node stops counting as serving, so the new holder can bind
    /// beside it first.
    async fn let_go_planned(&mut self) -> Option<JoinHandle<()>> {
        if self.interface_vip.is_some() {
            self.let_go().await;
            return None;
        }
        let checks = self.checks.take();
        let handle = locked(&self.running).take();
        self.served_spec = None;
        let handle = handle?;
        Some(tokio::spawn(async move {
            tokio::time::sleep(HANDOVER_LINGER).await;
            if let Some(checks) = checks {
                checks.abort();
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), handle.stop()).await;
        }))
    }

    /// The VIP moved to another address or interface: let go of the old one entirely; the
    /// next steps serve the new one.
    async fn follow_interface(&mut self, spec: &BalancerSpec) {
        let wanted = spec
            .vip
            .interface
            .as_deref()
            .map(|interface| (interface, spec.listen.ip()));
        let current = self
            .interface_vip
            .as_ref()
            .map(|vip| (vip.interface(), vip.address()));
        if current == wanted {
            return;
        }
        if self.interface_vip.is_some() {
            self.let_go().await;
        }
        self.interface_vip = match wanted {
            None => None,
            Some((interface, address)) => match InterfaceVip::new(interface, address) {
                Ok(vip) => Some(vip),
                Err(error) => {
                    warn!(balancer = %self.balancer, %error, "cannot hold this VIP");
                    None
                }
            },
        };
    }

    /// Keepalived's interface tracking: a node whose VIP interface is down or has no
    /// carrier gives the VIP away.
    fn check_link(&mut self) -> bool {
        let link_ready = match &self.interface_vip {
            None => true,
            Some(vip) => match vip.link_ready() {
                Ok(ready) => ready,
                Err(error) => {
                    if self.link_was_ready {
                        warn!(balancer = %self.balancer, %error, "cannot read the VIP interface's state");
                    }
                    false
                }
            },
        };
        if link_ready != self.link_was_ready {
            match (link_ready, &self.interface_vip) {
                (false, Some(vip)) => {
                    warn!(balancer = %self.balancer, interface = vip.interface(), "VIP interface is down: standing back")
                }
                _ => info!(balancer = %self.balancer, "VIP interface is up again"),
            }
            self.link_was_ready = link_ready;
        }
        link_ready
    }

    /// The lease as this node knows it: its replica, or our own newer grant.
    fn known_lease(&mut self) -> Option<(LeaseRecord, u64)> {
        let known = match (self.meta.lease_record(&self.lease), &self.last_granted) {
            (Some(seen), Some(granted)) if granted.1 > seen.1 => Some(granted.clone()),
            (None, Some(granted)) => Some(granted.clone()),
            (seen, _) => seen,
        };
        let holder = known.as_ref().and_then(|(record, _)| record.holder.clone());
        self.our_grant = known
            .as_ref()
            .filter(|_| holder.as_deref() == Some(self.node.as_str()))
            .map(|(_, version)| *version);
        *locked(&self.holder) = holder;
        known
    }

    /// Leaves out the node we took the VIP from, until gossip has seen it down or for
    /// [`PASS_OVER_LIMIT`].
    fn without_passed_over(&mut self, mut candidates: Vec<Candidate>) -> Vec<Candidate> {
        if let Some((previous, since)) = &self.passed_over {
            let seen_down = !candidates
                .iter()
                .any(|candidate| &candidate.name == previous);
            if self.our_grant.is_none() || seen_down || since.elapsed() > PASS_OVER_LIMIT {
                self.passed_over = None;
            } else {
                candidates.retain(|candidate| &candidate.name != previous);
            }
        }
        candidates
    }

    /// Asks the catalog leader what the decision needs, never waiting past our lease.
    async fn act_on(&mut self, decision: Decision, known: Option<&(LeaseRecord, u64)>) {
        let operation = match decision {
            Decision::Idle => return,
            Decision::HandOver { version, to } => {
                // Stop serving before the lease names someone else (on the loopback VIP:
                // a moment after, while the new holder binds beside us).
                self.let_go_planned().await;
                info!(balancer = %self.balancer, %to, "handing the VIP over");
                LeaseOperation::HandOver { version, to }
            }
            Decision::Renew { version } => LeaseOperation::Renew { version },
            Decision::Acquire => {
                info!(balancer = %self.balancer, "taking the VIP lease");
                LeaseOperation::Acquire {
                    ttl_ms: LEASE_TTL.as_millis() as u32,
                }
            }
        };
        let extends_our_lease = matches!(
            operation,
            LeaseOperation::Renew { .. } | LeaseOperation::Acquire { .. }
        );
        let request = LeaseRequest {
            name: self.lease.clone(),
            holder: self.node.clone(),
            operation,
            forwarded: false,
        };
        let now = Instant::now();
        let patience = self
            .election
            .lease_remaining(now)
            .unwrap_or(RENEW_EVERY * 2)
            .min(RENEW_EVERY * 2);
        let was_holding = self.election.holds(now);
        let sent_at = Instant::now();
        let outcome = tokio::time::timeout(patience, self.meta.lease(request)).await;
        let took = sent_at.elapsed();
        let granted = match &outcome {
            Ok(Ok(LeaseAnswer::Granted { version, epoch })) => {
                self.last_granted = Some((
                    LeaseRecord {
                        holder: Some(self.node.clone()),
                        epoch: *epoch,
                        ttl_ms: LEASE_TTL.as_millis() as u32,
                        previous: None,
                    },
                    *version,
                ));
                self.passed_over = known
                    .and_then(|(record, _)| record.previous.clone())
                    .filter(|previous| *previous != self.node)
                    .map(|previous| (previous, Instant::now()));
                true
            }
            Ok(Ok(LeaseAnswer::Renewed)) => true,
            Ok(Ok(LeaseAnswer::Done)) => {
                self.last_granted = None;
                false
            }
            Ok(Ok(LeaseAnswer::Refused { .. })) => {
                self.election.record_refusal();
                self.last_granted = None;
                false
            }
            Ok(Err(_)) | Err(_) => false,
        };
        if extends_our_lease && was_holding && (!granted || took > RENEW_EVERY) {
            // The lease is in danger: say why, for whoever finds the VIP moved.
            let reason = match &outcome {
                Ok(Ok(LeaseAnswer::Refused { reason, .. })) => format!("refused: {reason}"),
                Ok(Ok(_)) => "answered late".to_string(),
                Ok(Err(error)) => format!("failed: {error}"),
                Err(_) => format!("gave up after {} ms", patience.as_millis()),
            };
            warn!(balancer = %self.balancer, took_ms = took.as_millis() as u64, %reason, "slow VIP lease renewal");
        }
        if extends_our_lease {
            self.election.record_answer(sent_at, granted);
        }
    }

    /// On a real interface: adds the address (or refreshes its kernel lifetime) before
    /// binding it. False if that failed.
    fn hold_address(&mut self) -> bool {
        let Some(vip) = &mut self.interface_vip else {
            return true;
        };
        match vip.hold() {
            Ok(true) => {
                info!(balancer = %self.balancer, interface = vip.interface(), address = %vip.address(), "VIP added to the interface; announced by gratuitous ARP");
                true
            }
            Ok(false) => true,
            Err(error) => {
                if self.bind_failing_since.is_none() {
                    warn!(balancer = %self.balancer, %error, "holding the VIP but cannot add it to the interface");
                }
                self.bind_failing_since.get_or_insert_with(Instant::now);
                false
            }
        }
    }

    /// Serves the VIP: starts the balancer and its checks, or applies a changed spec.
    fn serve(&mut self, spec: &BalancerSpec, agent_shutdown: &Shutdown) {
        let running = locked(&self.running).clone();
        let Some(handle) = running else {
            match Balancer::start(spec.clone(), agent_shutdown.clone()) {
                Ok(handle) => {
                    info!(balancer = %self.balancer, listen = %spec.listen, "holding the VIP: serving");
                    self.restart_checks(&handle, spec, agent_shutdown);
                    *locked(&self.running) = Some(handle);
                    self.served_spec = Some(spec.clone());
                    self.bind_failing_since = None;
                }
                Err(error) => {
                    if self.bind_failing_since.is_none() {
                        warn!(balancer = %self.balancer, %error, "holding the VIP but cannot serve it yet");
                    }
                    self.bind_failing_since.get_or_insert_with(Instant::now);
                }
            }
            return;
        };
        if self.served_spec.as_ref() == Some(spec) {
            return;
        }
        match handle.update(spec.clone()) {
            Ok(()) => {
                // The pool was rebuilt: point the checks at the new one.
                self.restart_checks(&handle, spec, agent_shutdown);
                self.served_spec = Some(spec.clone());
            }
            Err(error) => {
                warn!(balancer = %self.balancer, %error, "could not apply the new configuration")
            }
        }
    }

    fn restart_checks(
        &mut self,
        handle: &BalancerHandle,
        spec: &BalancerSpec,
        agent_shutdown: &Shutdown,
    ) {
        if let Some(old) = self.checks.take() {
            old.abort();
        }
        self.checks = spec.check.clone().map(|check| {
            spawn_checks(
                handle.pool(),
                check,
                spec.timeouts.clone(),
                agent_shutdown.clone(),
            )
        });
    }

    /// Stops serving the VIP: closes the listener and stops the checks, then deletes the
    /// address from its interface. Called before the lease may pass to another node, so
    /// that two nodes never hold the address at once.
    async fn let_go(&mut self) {
        if let Some(task) = self.checks.take() {
            task.abort();
        }
        let handle = locked(&self.running).take();
        if let Some(handle) = handle {
            // The listener closes at once; open connections get their grace period in the
            // background rather than delaying a handover.
            let _ = tokio::time::timeout(Duration::from_millis(100), handle.stop()).await;
        }
        self.served_spec = None;
        if let Some(vip) = &mut self.interface_vip
            && let Err(error) = vip.release()
        {
            // The kernel lifetime removes it within seconds anyway.
            warn!(balancer = %self.balancer, %error, "could not delete the VIP from its interface");
        }
    }
}
