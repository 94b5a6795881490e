//! The balancer subsystem of an agent with the `lb` role: it runs every balancer the
//! catalog describes (`lb/balancers/<name>`), serves each one's VIP only while this node
//! holds the VIP's lease ([`crate::vip`]), runs the active health checks where the
//! balancer runs, and serves the stats page.
//!
//! Every `lb` node runs an election task per balancer; the one holding the lease binds the
//! VIP and proxies; the others stand by, ready to take over when the lease goes quiet.
//! In the loopback mode (the emulator) the holder just binds the 127.x address; with
//! `vip.interface` it first adds the address to that interface ([`crate::vip_interface`])
//! and deletes it after closing the listener when it lets go.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_cluster::{Membership, NodeState};
use bramble_meta::Meta;
use bramble_meta::lease::{LeaseAnswer, LeaseOperation, LeaseRecord, LeaseRequest, lease_key};
use bramble_meta::types::Change;
use bramble_platform::subsystem::StartFuture;
use bramble_platform::{Context, Running, Subsystem};
use bramble_util::files;
use bramble_util::{Restart, Shutdown, ShutdownTrigger, WorkerContext, WorkerState, Workers};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::balancer::{Balancer, BalancerHandle};
use crate::config::{BalancerSpec, CATALOG_PREFIX};
use crate::health::spawn_checks;
use crate::pool::BalancerStats;
use crate::service::LbService;
use crate::stats::{StatsCredentials, serve_stats};
use crate::vip::{
    Candidate, DEFAULT_PRIORITY, Decision, LEASE_TTL, RENEW_EVERY, VipElection, lease_name,
};
use crate::vip_interface::InterfaceVip;

/// The role that makes a node run balancers.
pub const LB_ROLE: &str = "lb";
/// A holder that cannot bind its VIP for this long gives the lease to another node.
const BIND_FAILURE_LIMIT: Duration = Duration::from_secs(2);
/// After taking a VIP that another node released or let lapse, do not hand it back to
/// that node by preemption until gossip has seen it down, or for this long: a node that
/// stops cleanly still looks alive for about a second after it released the VIP.
const PASS_OVER_LIMIT: Duration = Duration::from_secs(30);
/// How long a stopping holder waits for its release to commit.
const RELEASE_PATIENCE: Duration = Duration::from_secs(1);

/// `<data-dir>/lb.toml`: this node's stats page.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbSettings {
    /// Where the stats page listens (HAProxy's `listen stats` / `bind :8880`). None: off.
    pub stats_listen: Option<SocketAddr>,
    pub stats_user: Option<String>,
    /// SHA-256 of the stats password, hex. The password itself is never stored here.
    pub stats_password_sha256: Option<String>,
}

impl LbSettings {
    pub fn path(data_dir: &Path) -> std::path::PathBuf {
        data_dir.join("lb.toml")
    }

    pub fn load(data_dir: &Path) -> Result<Self, files::FileError> {
        let path = Self::path(data_dir);
        if !path.exists() {
            return Ok(Self::default());
        }
        files::read_toml(&path)
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), files::FileError> {
        files::write_toml(&Self::path(data_dir), self, files::Visibility::Private)
    }

    fn credentials(&self) -> Option<StatsCredentials> {
        let user = self.stats_user.clone()?;
        let digest = self.stats_password_sha256.as_ref()?;
        let mut password_sha256 = [0u8; 32];
        if digest.len() != 64 {
            return None;
        }
        for (index, chunk) in digest.as_bytes().chunks(2).enumerate() {
            let text = std::str::from_utf8(chunk).ok()?;
            password_sha256[index] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(StatsCredentials {
            user,
            password_sha256,
        })
    }
}

/// A balancer this node takes part in.
struct Participation {
    spec: watch::Sender<BalancerSpec>,
    stop: ShutdownTrigger,
    /// Becomes true when its worker has let go of the VIP and ended.
    finished: watch::Receiver<bool>,
    /// The running balancer while this node holds the VIP.
    running: Arc<Mutex<Option<BalancerHandle>>>,
    holder: Arc<Mutex<Option<String>>>,
}

/// The subsystem; `stats()` serves `lb.stats` and the stats page.
pub struct LoadBalancers {
    node: String,
    meta: Arc<Meta>,
    membership: Arc<Membership>,
    workers: Workers,
    shutdown: Shutdown,
    participations: Mutex<BTreeMap<String, Participation>>,
    /// Set by [`LoadBalancers::stop`]: no new participation starts after it.
    stopping: std::sync::atomic::AtomicBool,
}

impl LoadBalancers {
    /// Starts the subsystem on an `lb` node: the stats page (if `lb.toml` asks for it) and
    /// the worker that follows the catalog's balancers.
    pub async fn start(context: &Context) -> Result<Arc<LoadBalancers>, files::FileError> {
        let subsystem = Arc::new(LoadBalancers {
            node: context.node_name().to_string(),
            meta: context.meta.clone(),
            membership: context.membership.clone(),
            workers: context.workers.clone(),
            shutdown: context.shutdown.clone(),
            participations: Mutex::new(BTreeMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        let settings = LbSettings::load(&context.node.path)?;
        if let (Some(listen), Some(credentials)) = (settings.stats_listen, settings.credentials()) {
            match tokio::net::TcpListener::bind(listen).await {
                Ok(listener) => {
                    let source_subsystem = subsystem.clone();
                    let source: Arc<dyn Fn() -> Vec<BalancerStats> + Send + Sync> =
                        Arc::new(move || source_subsystem.stats());
                    // The listener cannot be rebound by a restart: one run only.
                    let listener = Arc::new(Mutex::new(Some(listener)));
                    context
                        .workers
                        .spawn("lb-stats-page", Restart::Never, move |worker| {
                            let listener = listener
                                .lock()
                                .unwrap_or_else(|poison| poison.into_inner())
                                .take();
                            let source = source.clone();
                            let credentials = credentials.clone();
                            async move {
                                let listener =
                                    listener.ok_or("the stats page's listener is gone")?;
                                serve_stats(listener, source, credentials, worker.shutdown()).await;
                                Ok(())
                            }
                        });
                    info!(%listen, "stats page listening");
                }
                Err(error) => warn!(%listen, %error, "could not start the stats page"),
            }
        }
        let follower = subsystem.clone();
        context
            .workers
            .spawn("lb-catalog", Restart::OnFailure, move |worker| {
                let follower = follower.clone();
                async move {
                    follower.follow_catalog(worker.shutdown()).await;
                    Ok(())
                }
            });
        Ok(subsystem)
    }

    /// Stops every balancer this node takes part in and releases the VIPs it holds, so the
    /// backups take over at once (Keepalived's priority-0 advert on shutdown) instead of
    /// waiting out the lease. Call before the catalog stops.
    pub async fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let participations: Vec<Participation> = {
            let mut map = self
                .participations
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            std::mem::take(&mut *map).into_values().collect()
        };
        for participation in &participations {
            participation.stop.trigger();
        }
        for mut participation in participations {
            let _ = tokio::time::timeout(
                RELEASE_PATIENCE * 2,
                participation.finished.wait_for(|finished| *finished),
            )
            .await;
        }
    }

    /// Stats of the balancers this node serves now (as VIP holder), and the configured
    /// ones it stands by for.
    pub fn stats(&self) -> Vec<BalancerStats> {
        let participations = self
            .participations
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        participations
            .values()
            .map(|participation| {
                let holder = participation
                    .holder
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .clone();
                let running = participation
                    .running
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .clone();
                let mut stats = match running {
                    Some(handle) => handle.stats(),
                    None => {
                        let spec = participation.spec.borrow();
                        BalancerStats {
                            name: spec.name.clone(),
                            listen: spec.listen.to_string(),
                            mode: format!("{:?}", spec.mode).to_lowercase(),
                            balance: spec.balance.to_string(),
                            vip_holder: None,
                            frontend_sessions: 0,
                            frontend_errors: 0,
                            backends: Vec::new(),
                        }
                    }
                };
                stats.vip_holder = holder;
                stats
            })
            .collect()
    }

    /// Applies the catalog's balancer specs now and after every change.
    async fn follow_catalog(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut changes = self.meta.watch(CATALOG_PREFIX);
        loop {
            self.reconcile();
            tokio::select! {
                _ = shutdown.wait() => break,
                change = changes.next() => match change {
                    Some(Change::Key { .. } | Change::Reset) => {}
                    None => break,
                },
            }
        }
        let participations: Vec<Participation> = {
            let mut map = self
                .participations
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            std::mem::take(&mut *map).into_values().collect()
        };
        for mut participation in participations {
            participation.stop.trigger();
            let _ = participation.finished.wait_for(|finished| *finished).await;
        }
    }

    fn reconcile(self: &Arc<Self>) {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let specs: BTreeMap<String, BalancerSpec> =
            match self.meta.reader().list(CATALOG_PREFIX, 10_000) {
                Ok(entries) => entries
                    .into_iter()
                    .filter_map(|(key, value)| {
                        let spec: BalancerSpec = match serde_json::from_slice(&value.value) {
                            Ok(spec) => spec,
                            Err(error) => {
                                warn!(%key, %error, "ignoring an unreadable balancer spec");
                                return None;
                            }
                        };
                        match spec.validate() {
                            Ok(()) => Some((spec.name.clone(), spec)),
                            Err(error) => {
                                warn!(%key, %error, "ignoring an invalid balancer spec");
                                None
                            }
                        }
                    })
                    .collect(),
                Err(error) => {
                    warn!(%error, "could not read balancer specs from the catalog");
                    return;
                }
            };
        let mut participations = self
            .participations
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        participations.retain(|name, participation| {
            let keep = specs.contains_key(name);
            if !keep {
                info!(balancer = %name, "balancer removed from the catalog; stopping");
                participation.stop.trigger();
            }
            keep
        });
        for (name, spec) in specs {
            match participations.get(&name) {
                Some(participation) => {
                    if *participation.spec.borrow() != spec {
                        participation.spec.send_replace(spec);
                    }
                }
                None => {
                    let (spec_sender, spec_receiver) = watch::channel(spec);
                    let (stop, stop_signal) = ShutdownTrigger::new();
                    let running = Arc::new(Mutex::new(None));
                    let holder = Arc::new(Mutex::new(None));
                    let (finished_sender, finished) = watch::channel(false);
                    let finished_sender = Arc::new(finished_sender);
                    let subsystem = self.clone();
                    let balancer = name.clone();
                    let (task_running, task_holder) = (running.clone(), holder.clone());
                    let agent_shutdown = self.shutdown.clone();
                    self.workers.spawn_until(
                        format!("lb-vip/{name}"),
                        Restart::OnFailure,
                        stop_signal,
                        move |worker| {
                            let subsystem = subsystem.clone();
                            let finished_sender = finished_sender.clone();
                            let participation = subsystem.participate(
                                balancer.clone(),
                                spec_receiver.clone(),
                                task_running.clone(),
                                task_holder.clone(),
                                worker,
                                agent_shutdown.clone(),
                            );
                            async move {
                                participation.await;
                                finished_sender.send_replace(true);
                                Ok(())
                            }
                        },
                    );
                    participations.insert(
                        name,
                        Participation {
                            spec: spec_sender,
                            stop,
                            finished,
                            running,
                            holder,
                        },
                    );
                }
            }
        }
    }

    /// The candidates for a balancer's VIP: live `lb` nodes, with their priorities.
    async fn candidates(&self, spec: &BalancerSpec) -> Vec<Candidate> {
        self.membership
            .nodes()
            .await
            .into_iter()
            .filter(|node| {
                node.state == NodeState::Alive && node.roles.iter().any(|role| role == LB_ROLE)
            })
            .map(|node| Candidate {
                priority: spec
                    .vip
                    .priorities
                    .get(&node.name)
                    .copied()
                    .unwrap_or(DEFAULT_PRIORITY),
                name: node.name,
            })
            .collect()
    }

    /// One balancer's election loop on this node: renew or take the lease, serve the VIP
    /// while holding it, let go in time when not.
    async fn participate(
        self: Arc<Self>,
        name: String,
        mut spec: watch::Receiver<BalancerSpec>,
        running: Arc<Mutex<Option<BalancerHandle>>>,
        holder: Arc<Mutex<Option<String>>>,
        worker: WorkerContext,
        agent_shutdown: Shutdown,
    ) {
        let mut stop = worker.shutdown();
        let lease = lease_name(&name);
        let mut lease_changes = self.meta.watch(&lease_key(&lease));
        let mut watching_lease = true;
        let mut election = VipElection::new(self.node.clone());
        let mut ticker = tokio::time::interval(RENEW_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checks: Option<JoinHandle<()>> = None;
        let mut bind_failing_since: Option<Instant> = None;
        let mut served_spec: Option<BalancerSpec> = None;
        // Our own last grant, newer than this node's replica until the replica applies it.
        let mut last_granted: Option<(LeaseRecord, u64)> = None;
        // The version of the grant the lease names us by, as last known.
        let mut our_grant: Option<u64> = None;
        let mut passed_over: Option<(String, Instant)> = None;
        let mut interface_vip: Option<InterfaceVip> = None;
        let mut link_was_ready = true;
        loop {
            tokio::select! {
                _ = stop.wait() => break,
                _ = ticker.tick() => {}
                _ = spec.changed() => {}
                change = lease_changes.next(), if watching_lease => {
                    // A lease that became free is taken at once, not at the next tick.
                    watching_lease = change.is_some();
                }
            }
            let current_spec = spec.borrow().clone();
            let wanted_interface = current_spec
                .vip
                .interface
                .as_deref()
                .map(|interface| (interface, current_spec.listen.ip()));
            let current_interface = interface_vip
                .as_ref()
                .map(|vip| (vip.interface(), vip.address()));
            if current_interface != wanted_interface {
                // The VIP moved to another address or interface: let go of the old one
                // entirely; the next round serves the new one.
                if interface_vip.is_some() {
                    let_go(&name, &running, &mut checks, &mut interface_vip).await;
                    served_spec = None;
                }
                interface_vip = match wanted_interface {
                    None => None,
                    Some((interface, address)) => match InterfaceVip::new(interface, address) {
                        Ok(vip) => Some(vip),
                        Err(error) => {
                            warn!(balancer = %name, %error, "cannot hold this VIP");
                            None
                        }
                    },
                };
            }
            // Keepalived's interface tracking: a node whose VIP interface is down or has
            // no carrier gives the VIP away.
            let link_ready = match &interface_vip {
                None => true,
                Some(vip) => match vip.link_ready() {
                    Ok(ready) => ready,
                    Err(error) => {
                        if link_was_ready {
                            warn!(balancer = %name, %error, "cannot read the VIP interface's state");
                        }
                        false
                    }
                },
            };
            if link_ready != link_was_ready {
                match (link_ready, &interface_vip) {
                    (false, Some(vip)) => {
                        warn!(balancer = %name, interface = vip.interface(), "VIP interface is down: standing back")
                    }
                    _ => info!(balancer = %name, "VIP interface is up again"),
                }
                link_was_ready = link_ready;
            }
            let known = match (self.meta.lease_record(&lease), &last_granted) {
                (Some(seen), Some(granted)) if granted.1 > seen.1 => Some(granted.clone()),
                (None, Some(granted)) => Some(granted.clone()),
                (seen, _) => seen,
            };
            let holder_name = known.as_ref().and_then(|(record, _)| record.holder.clone());
            our_grant = known
                .as_ref()
                .filter(|_| holder_name.as_deref() == Some(self.node.as_str()))
                .map(|(_, version)| *version);
            *holder.lock().unwrap_or_else(|poison| poison.into_inner()) = holder_name;
            let mut candidates = self.candidates(&current_spec).await;
            if let Some((previous, since)) = &passed_over {
                let seen_down = !candidates
                    .iter()
                    .any(|candidate| &candidate.name == previous);
                if our_grant.is_none() || seen_down || since.elapsed() > PASS_OVER_LIMIT {
                    passed_over = None;
                } else {
                    candidates.retain(|candidate| &candidate.name != previous);
                }
            }
            let healthy = link_ready
                && bind_failing_since.is_none_or(|since| since.elapsed() < BIND_FAILURE_LIMIT);
            let now = Instant::now();
            let decision = election.decide(
                known.clone(),
                &candidates,
                current_spec.vip.preempt,
                healthy,
            );
            let operation = match decision {
                Decision::Idle => None,
                Decision::HandOver { version, to } => {
                    // Stop serving before the lease names someone else.
                    let_go(&name, &running, &mut checks, &mut interface_vip).await;
                    served_spec = None;
                    info!(balancer = %name, %to, "handing the VIP over");
                    Some(LeaseOperation::HandOver { version, to })
                }
                Decision::Renew { version } => Some(LeaseOperation::Renew { version }),
                Decision::Acquire => {
                    info!(balancer = %name, "taking the VIP lease");
                    Some(LeaseOperation::Acquire {
                        ttl_ms: LEASE_TTL.as_millis() as u32,
                    })
                }
            };
            if let Some(operation) = operation {
                let extends_our_lease = matches!(
                    operation,
                    LeaseOperation::Renew { .. } | LeaseOperation::Acquire { .. }
                );
                let request = LeaseRequest {
                    name: lease.clone(),
                    holder: self.node.clone(),
                    operation,
                    forwarded: false,
                };
                // Never wait past our own lease: the VIP must be released on time.
                let patience = election
                    .lease_remaining(now)
                    .unwrap_or(RENEW_EVERY * 2)
                    .min(RENEW_EVERY * 2);
                let was_holding = election.holds(now);
                let sent_at = Instant::now();
                let outcome = tokio::time::timeout(patience, self.meta.lease(request)).await;
                let took = sent_at.elapsed();
                let granted = match &outcome {
                    Ok(Ok(LeaseAnswer::Granted { version, epoch })) => {
                        last_granted = Some((
                            LeaseRecord {
                                holder: Some(self.node.clone()),
                                epoch: *epoch,
                                ttl_ms: LEASE_TTL.as_millis() as u32,
                                previous: None,
                            },
                            *version,
                        ));
                        passed_over = known
                            .as_ref()
                            .and_then(|(record, _)| record.previous.clone())
                            .filter(|previous| *previous != self.node)
                            .map(|previous| (previous, Instant::now()));
                        true
                    }
                    Ok(Ok(LeaseAnswer::Renewed)) => true,
                    Ok(Ok(LeaseAnswer::Done)) => {
                        last_granted = None;
                        false
                    }
                    Ok(Ok(LeaseAnswer::Refused { .. })) => {
                        election.record_refusal();
                        last_granted = None;
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
                    warn!(balancer = %name, took_ms = took.as_millis() as u64, %reason, "slow VIP lease renewal");
                }
                if extends_our_lease {
                    election.record_answer(sent_at, granted);
                }
            }
            let mut holds = election.holds(Instant::now());
            if holds && let Some(vip) = &mut interface_vip {
                // Add the address (or refresh its kernel lifetime) before binding it.
                match vip.hold() {
                    Ok(true) => {
                        info!(balancer = %name, interface = vip.interface(), address = %vip.address(), "VIP added to the interface; announced by gratuitous ARP")
                    }
                    Ok(false) => {}
                    Err(error) => {
                        if bind_failing_since.is_none() {
                            warn!(balancer = %name, %error, "holding the VIP but cannot add it to the interface");
                        }
                        bind_failing_since.get_or_insert_with(Instant::now);
                        holds = false;
                    }
                }
            }
            if holds {
                let needs_start = running
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .is_none();
                if needs_start {
                    match Balancer::start(current_spec.clone(), agent_shutdown.clone()) {
                        Ok(handle) => {
                            info!(balancer = %name, listen = %current_spec.listen, "holding the VIP: serving");
                            checks = current_spec.check.clone().map(|check| {
                                spawn_checks(
                                    handle.pool(),
                                    check,
                                    current_spec.timeouts.clone(),
                                    agent_shutdown.clone(),
                                )
                            });
                            *running.lock().unwrap_or_else(|poison| poison.into_inner()) =
                                Some(handle);
                            served_spec = Some(current_spec.clone());
                            bind_failing_since = None;
                        }
                        Err(error) => {
                            if bind_failing_since.is_none() {
                                warn!(balancer = %name, %error, "holding the VIP but cannot serve it yet");
                            }
                            bind_failing_since.get_or_insert_with(Instant::now);
                        }
                    }
                } else if served_spec.as_ref() != Some(&current_spec) {
                    let handle = running
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner())
                        .clone();
                    if let Some(handle) = handle {
                        match handle.update(current_spec.clone()) {
                            Ok(()) => {
                                // The pool was rebuilt: point the checks at the new one.
                                if let Some(old) = checks.take() {
                                    old.abort();
                                }
                                checks = current_spec.check.clone().map(|check| {
                                    spawn_checks(
                                        handle.pool(),
                                        check,
                                        current_spec.timeouts.clone(),
                                        agent_shutdown.clone(),
                                    )
                                });
                                served_spec = Some(current_spec.clone());
                            }
                            Err(error) => {
                                warn!(balancer = %name, %error, "could not apply the new configuration")
                            }
                        }
                    }
                }
            } else if running
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .is_some()
                || interface_vip.as_ref().is_some_and(InterfaceVip::is_present)
            {
                if !election.holds(Instant::now()) {
                    info!(balancer = %name, "not holding the VIP: releasing it");
                }
                let_go(&name, &running, &mut checks, &mut interface_vip).await;
                served_spec = None;
            }
            let serving = running
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .is_some();
            worker.set_state(if serving {
                WorkerState::Busy
            } else {
                WorkerState::Idle
            });
            let holder_now = holder
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone();
            worker.set_progress(match (serving, holder_now) {
                (true, _) => format!("serving {}", current_spec.listen),
                (false, Some(holder)) => format!("standing by; {holder} holds the VIP"),
                (false, None) => "standing by; nobody holds the VIP".to_string(),
            });
        }
        let_go(&name, &running, &mut checks, &mut interface_vip).await;
        if let Some(version) = our_grant {
            // We have stopped serving: hand the VIP to the backup now rather than make it
            // wait for the lease to run out.
            let request = LeaseRequest {
                name: lease.clone(),
                holder: self.node.clone(),
                operation: LeaseOperation::Release { version },
                forwarded: false,
            };
            match tokio::time::timeout(RELEASE_PATIENCE, self.meta.lease(request)).await {
                Ok(Ok(LeaseAnswer::Done)) => info!(balancer = %name, "released the VIP lease"),
                Ok(Ok(answer)) => {
                    info!(balancer = %name, ?answer, "the VIP lease was not ours to release")
                }
                Ok(Err(error)) => {
                    warn!(balancer = %name, %error, "could not release the VIP lease; the backup takes over when it runs out")
                }
                Err(_) => {
                    warn!(balancer = %name, "releasing the VIP lease timed out; the backup takes over when it runs out")
                }
            }
        }
    }
}

/// Stops serving the VIP: closes the listener and stops the checks, then deletes the
/// address from its interface. Called before the lease may pass to another node, so that
/// two nodes never hold the address at once.
async fn let_go(
    name: &str,
    running: &Arc<Mutex<Option<BalancerHandle>>>,
    checks: &mut Option<JoinHandle<()>>,
    interface_vip: &mut Option<InterfaceVip>,
) {
    stop_serving(running, checks).await;
    if let Some(vip) = interface_vip
        && let Err(error) = vip.release()
    {
        // The kernel lifetime removes it within seconds anyway.
        warn!(balancer = %name, %error, "could not delete the VIP from its interface");
    }
}

/// Stops the balancer (closing the VIP's listener) and its health checks.
async fn stop_serving(
    running: &Arc<Mutex<Option<BalancerHandle>>>,
    checks: &mut Option<JoinHandle<()>>,
) {
    if let Some(task) = checks.take() {
        task.abort();
    }
    let handle = running
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .take();
    if let Some(handle) = handle {
        // The listener closes at once; open connections get their grace period in the
        // background rather than delaying a handover.
        let _ = tokio::time::timeout(Duration::from_millis(100), handle.stop()).await;
    }
}

/// The balancer subsystem as the agent declares it: on `lb` nodes, with the `lb.*` RPC
/// service; stopping it releases the VIPs this node holds.
pub const SUBSYSTEM: Subsystem = Subsystem {
    name: "lb",
    roles: &[LB_ROLE],
    start: start_subsystem,
    stop_deadline: Duration::from_secs(3),
};

fn start_subsystem(context: Context) -> StartFuture {
    Box::pin(async move {
        let balancers = LoadBalancers::start(&context)
            .await
            .map_err(|error| error.to_string())?;
        Ok(Arc::new(RunningBalancers { balancers }) as Arc<dyn Running>)
    })
}

struct RunningBalancers {
    balancers: Arc<LoadBalancers>,
}

#[async_trait::async_trait]
impl Running for RunningBalancers {
    fn service(&self) -> Option<Arc<dyn bramble_net::Handler>> {
        Some(Arc::new(LbService::new(self.balancers.clone())))
    }

    fn status(&self) -> serde_json::Value {
        let balancers: Vec<serde_json::Value> = self
            .balancers
            .stats()
            .into_iter()
            .map(|stats| {
                serde_json::json!({
                    "name": stats.name,
                    "listen": stats.listen,
                    "vip_holder": stats.vip_holder,
                    "serving_here": !stats.backends.is_empty(),
                })
            })
            .collect();
        serde_json::json!({ "balancers": balancers })
    }

    async fn stop(&self) {
        self.balancers.stop().await;
    }
}
