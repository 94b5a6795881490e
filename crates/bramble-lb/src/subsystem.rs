//! The balancer subsystem of an agent with the `lb` role: it runs every balancer the
//! catalog describes (`lb/balancers/<name>`), serves each one's VIP only while this node
//! holds the VIP's lease ([`crate::vip`]), runs the active health checks where the
//! balancer runs, and serves the stats page.
//!
//! Every `lb` node runs one worker per balancer (`lb-vip/<name>`) that steps a
//! [`crate::participant::VipParticipant`]: the node holding the lease binds the VIP and
//! proxies; the others stand by, ready to take over when the lease is released or
//! expires. In the loopback mode (the emulator) the holder just binds the 127.x address;
//! with `vip.interface` it first adds the address to that interface
//! ([`crate::vip_interface`]) and deletes it after closing the listener when it lets go.
//!
//! A drained node (`bramble drain`, [`bramble_platform::drain`]) is no candidate for any
//! VIP: its participants stop contending and, where it holds a VIP, hand it to the
//! preferred other node at once (the path an unhealthy holder takes), unless no other
//! live `lb` node could take it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bramble_cluster::{Membership, NodeState};
use bramble_compute::services::spec::{ASSIGN_PREFIX, Assignment, assign_prefix, parse_assign_key};
use bramble_meta::Meta;
use bramble_meta::lease::lease_key;
use bramble_meta::types::Change;
use bramble_platform::subsystem::StartFuture;
use bramble_platform::{Context, Running, Subsystem};
use bramble_util::files;
use bramble_util::{Restart, Shutdown, ShutdownTrigger, WorkerContext, WorkerState, Workers};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::balancer::BalancerHandle;
use crate::config::{AdminState, BackendSpec, BalancerSpec};
use crate::keys::BALANCERS_PREFIX;
use crate::participant::{RELEASE_PATIENCE, VipParticipant};
use crate::pool::BalancerStats;
use crate::service::LbService;
use crate::stats::{StatsLogin, serve_stats};
use crate::vip::{Candidate, DEFAULT_PRIORITY, RENEW_EVERY};

/// The role that makes a node run balancers.
pub const LB_ROLE: &str = "lb";

/// `<data-dir>/lb.toml`: this node's stats page.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbSettings {
    /// Where the stats page listens (HAProxy's `listen stats` / `bind :8880`). None: off.
    pub stats_listen: Option<SocketAddr>,
    pub stats_user: Option<String>,
    /// The stats password as an argon2id hash in the PHC string format
    /// (`bramble_lb::stats::StoredPassword::hash`). The password itself is never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_password_argon2id: Option<String>,
    /// The unsalted SHA-256 of the stats password (hex) that earlier versions wrote; still
    /// accepted, with a warning to re-hash, when no argon2id hash is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

    fn credentials(&self) -> Option<StatsLogin> {
        StatsLogin::from_settings(
            self.stats_user.as_deref(),
            self.stats_password_argon2id.as_deref(),
            self.stats_password_sha256.as_deref(),
        )
        .unwrap_or_else(|error| {
            warn!(%error, "the stats page stays off");
            None
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
    /// The drained nodes as this node's catalog replica has them; the VIP workers wake
    /// when it changes.
    drained: watch::Sender<BTreeSet<String>>,
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
            drained: watch::channel(BTreeSet::new()).0,
        });
        subsystem.refresh_drained();
        let settings = LbSettings::load(&context.node.path)?;
        if let (Some(listen), Some(credentials)) = (settings.stats_listen, settings.credentials()) {
            match tokio::net::TcpListener::bind(listen).await {
                Ok(listener) => {
                    let source_subsystem = subsystem.clone();
                    let source: Arc<dyn Fn() -> Vec<BalancerStats> + Send + Sync> =
                        Arc::new(move || source_subsystem.stats());
                    // The listener cannot be rebound by a restart: one run only.
                    let listener = Arc::new(Mutex::new(Some((listener, credentials))));
                    context
                        .workers
                        .spawn("lb-stats-page", Restart::Never, move |worker| {
                            let listener = listener
                                .lock()
                                .unwrap_or_else(|poison| poison.into_inner())
                                .take();
                            let source = source.clone();
                            async move {
                                let (listener, credentials) =
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

    /// Reads the drained nodes from this node's replica; the VIP workers hear of a change.
    fn refresh_drained(&self) {
        match bramble_platform::drain::drained_here(self.meta.reader()) {
            Ok(records) => {
                let now: BTreeSet<String> = records.into_keys().collect();
                self.drained.send_if_modified(|drained| {
                    let changed = *drained != now;
                    *drained = now;
                    changed
                });
            }
            Err(error) => warn!(%error, "could not read the drained nodes"),
        }
    }

    /// Applies the catalog's balancer specs now and after every change — of the specs,
    /// of the placements of services that are backends, of the drained nodes, and of the
    /// members' addresses.
    async fn follow_catalog(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut changes = self.meta.watch(BALANCERS_PREFIX);
        let mut placements = self.meta.watch(ASSIGN_PREFIX);
        let mut drains = self.meta.watch(bramble_platform::drain::PREFIX);
        let mut addresses = BTreeMap::new();
        loop {
            self.refresh_drained();
            let now: BTreeMap<String, IpAddr> = self
                .membership
                .nodes()
                .await
                .into_iter()
                .map(|node| (node.name, node.addr.ip()))
                .collect();
            if now != addresses {
                addresses = now;
            }
            self.reconcile(&addresses);
            tokio::select! {
                _ = shutdown.wait() => break,
                change = changes.next() => match change {
                    Some(Change::Key { .. } | Change::Reset) => {}
                    None => break,
                },
                change = placements.next() => match change {
                    Some(Change::Key { .. } | Change::Reset) => {}
                    None => break,
                },
                change = drains.next() => match change {
                    Some(Change::Key { .. } | Change::Reset) => {}
                    None => break,
                },
                // A member that joins (or moves) may be where a service replica runs.
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        self.stop().await;
    }

    /// Adds the replicas of `spec`'s services as backends: `<service>-<index>` at its
    /// node's address and the replica's port, from this node's catalog replica: those
    /// not withheld (a replica joins once it runs and is healthy, and leaves before a
    /// rolling update replaces it).
    fn expand_services(&self, spec: &mut BalancerSpec, addresses: &BTreeMap<String, IpAddr>) {
        for service in spec.services.clone() {
            let entries = match self.meta.reader().list(&assign_prefix(&service), 10_000) {
                Ok(entries) => entries,
                Err(error) => {
                    warn!(%service, %error, "could not read a service's placements");
                    continue;
                }
            };
            for (key, value) in entries {
                let Some((_, index)) = parse_assign_key(&key) else {
                    continue;
                };
                let Ok(assignment) = serde_json::from_slice::<Assignment>(&value.value) else {
                    continue;
                };
                // Not yet healthy, or about to be replaced by a rolling update: left out,
                // unless it is moving off a drained node, whose copy serves meanwhile.
                let (node, port) = match (&assignment.withheld_since_unix_ms, &assignment.handover)
                {
                    (None, _) => (&assignment.node, assignment.port),
                    (Some(_), Some(handover)) => (&handover.from_node, handover.from_port),
                    (Some(_), None) => continue,
                };
                let (Some(ip), Some(port)) = (addresses.get(node), port) else {
                    continue;
                };
                let name = format!("{service}-{index}");
                if spec.backends.iter().any(|backend| backend.name == name) {
                    continue;
                }
                spec.backends.push(BackendSpec {
                    name,
                    addr: SocketAddr::new(*ip, port),
                    weight: 1,
                    admin: AdminState::Enabled,
                });
            }
        }
    }

    fn reconcile(self: &Arc<Self>, addresses: &BTreeMap<String, IpAddr>) {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let specs: BTreeMap<String, BalancerSpec> =
            match self.meta.reader().list(BALANCERS_PREFIX, 10_000) {
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
                            Ok(()) => {
                                let mut spec = spec;
                                self.expand_services(&mut spec, addresses);
                                Some((spec.name.clone(), spec))
                            }
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

    /// The candidates for a balancer's VIP: live `lb` nodes that are not drained, with
    /// their priorities.
    async fn candidates(&self, spec: &BalancerSpec) -> Vec<Candidate> {
        let drained = self.drained.borrow().clone();
        self.membership
            .nodes()
            .await
            .into_iter()
            .filter(|node| {
                node.state == NodeState::Alive
                    && node.roles.iter().any(|role| role == LB_ROLE)
                    && !drained.contains(&node.name)
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

    /// One balancer's VIP on this node: a [`VipParticipant`] stepped every renewal period,
    /// and sooner when the lease or the spec changes; it lets go and releases the lease
    /// when told to stop.
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
        let mut participant =
            VipParticipant::new(&name, &self.node, self.meta.clone(), running, holder);
        let mut lease_changes = self.meta.watch(&lease_key(participant.lease()));
        let mut watching_lease = true;
        let mut drained = self.drained.subscribe();
        let mut ticker = tokio::time::interval(RENEW_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = participant.serving_deadline();
            tokio::select! {
                _ = stop.wait() => break,
                _ = ticker.tick() => {}
                _ = spec.changed() => {}
                // A drain hands the VIP over now, not at the next tick.
                _ = drained.changed() => {}
                change = lease_changes.next(), if watching_lease => {
                    // A lease that became free is taken at once, not at the next tick.
                    watching_lease = change.is_some();
                }
                _ = sleep_until_instant(deadline), if deadline.is_some() => {}
            }
            participant.enforce_deadline().await;
            let current_spec = spec.borrow().clone();
            let candidates = self.candidates(&current_spec).await;
            let drained_here = drained.borrow_and_update().contains(&self.node);
            participant.enforce_deadline().await;
            let report = participant
                .step(&current_spec, candidates, drained_here, &agent_shutdown)
                .await;
            worker.set_state(if report.serving {
                WorkerState::Busy
            } else {
                WorkerState::Idle
            });
            worker.set_progress(match (report.serving, report.holder) {
                (true, _) => format!("serving {}", current_spec.listen),
                (false, Some(holder)) => format!("standing by; {holder} holds the VIP"),
                (false, None) => "standing by; nobody holds the VIP".to_string(),
            });
        }
        participant.finish().await;
    }
}

/// Sleeps until `deadline` (forever without one; the select guards that case).
async fn sleep_until_instant(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => std::future::pending().await,
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

    fn prometheus(&self) -> Option<String> {
        let balancers = self.balancers.stats();
        if balancers.is_empty() {
            return None;
        }
        Some(crate::stats::prometheus_text(balancers))
    }

    /// A backend that fails its health checks, on the node serving its balancer (the VIP
    /// holder: the others run no checks). The checks' own rise and fall counts already
    /// keep one bad answer from reporting a backend down.
    fn alarms(&self) -> Vec<bramble_platform::Alarm> {
        let mut alarms = Vec::new();
        for balancer in self.balancers.stats() {
            for backend in balancer
                .backends
                .iter()
                .filter(|backend| backend.status == "down")
            {
                alarms.push(bramble_platform::Alarm {
                    kind: "backend_down",
                    subject: format!("{}/{}", balancer.name, backend.name),
                    message: format!(
                        "backend {} ({}) of balancer {} is down: {}",
                        backend.name, backend.addr, balancer.name, backend.last_check
                    ),
                });
            }
        }
        alarms
    }

    async fn stop(&self) {
        self.balancers.stop().await;
    }
}
