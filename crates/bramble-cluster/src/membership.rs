//! Membership: who is in the cluster and in what state, as this node sees it.
//!
//! chitchat does the gossip (scuttlebutt reconciliation) and the failure detection (a phi
//! accrual detector over heartbeat arrival times). On top of it this module:
//! - publishes this node's facts as gossip keys (`rpc`, `roles`, `version`, `state`,
//!   `load`);
//! - folds restarts together: each start of an agent is a new chitchat generation, and the
//!   table shows a name once, with its newest generation;
//! - adds `suspect` (heartbeats late by half the detection timeout, not yet declared dead)
//!   and `left` (the node said goodbye) to chitchat's live/dead;
//! - remembers the addresses of live members in `peers.toml`, so a restarted node finds the
//!   cluster again without a token or a seed flag.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_util::files::{self, Visibility};
use bramble_util::{Restart, Shutdown, Workers};
use chitchat::transport::Transport;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, Heartbeat,
    spawn_chitchat,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::gossip::{GossipCounters, SealedUdpTransport};
use crate::load::LoadSummary;
use crate::node_dir::{KnownPeers, NodeDir};
use crate::protocol::Speaks;
use crate::settings::MembershipSettings;
use crate::{ClusterError, Result};

const KEY_RPC: &str = "rpc";
const KEY_ROLES: &str = "roles";
const KEY_VERSION: &str = "version";
const KEY_STATE: &str = "state";
const KEY_LOAD: &str = "load";
/// `<protocol>/<oldest compatible protocol>` (see [`crate::protocol`]).
const KEY_PROTOCOL: &str = "protocol";
const KEY_ARCHITECTURE: &str = "arch";
/// The first 16 hex digits of the BLAKE3 hash of the agent's executable, once computed.
const KEY_BUILD: &str = "build";

/// How often the load summary is refreshed in gossip.
const LOAD_INTERVAL: Duration = Duration::from_secs(5);
/// How often `peers.toml` is brought up to date.
const PEERS_INTERVAL: Duration = Duration::from_secs(10);

/// A member's state as one node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Alive,
    /// Heartbeats are late; not yet declared dead.
    Suspect,
    Dead,
    /// Left the cluster on purpose (`bramble leave`).
    Left,
}

impl NodeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Suspect => "suspect",
            NodeState::Dead => "dead",
            NodeState::Left => "left",
        }
    }
}

/// One row of `bramble nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    /// RPC (TCP) and gossip (UDP) address.
    pub addr: SocketAddr,
    pub state: NodeState,
    pub roles: Vec<String>,
    pub version: String,
    /// The wire protocol it speaks, and the oldest it still speaks (0: a build from before
    /// protocol numbers).
    #[serde(default)]
    pub protocol: u32,
    #[serde(default)]
    pub oldest_compatible_protocol: u32,
    /// Its build's architecture (`x86_64`, `aarch64`, `arm`).
    #[serde(default)]
    pub architecture: String,
    /// The first 16 hex digits of its executable's BLAKE3 hash (empty until known).
    #[serde(default)]
    pub build: String,
    /// Distinguishes restarts of the same node; grows with each start.
    pub generation: u64,
    pub load: Option<LoadSummary>,
    /// Time since this observer last saw the node's heartbeat advance.
    pub heartbeat_age_ms: Option<u64>,
}

/// See [`Membership::live_changes`].
pub struct LiveChanges {
    receiver: Option<
        tokio::sync::watch::Receiver<std::collections::BTreeMap<ChitchatId, chitchat::NodeState>>,
    >,
}

impl LiveChanges {
    /// Waits for the next change; once gossip has stopped, never returns.
    pub async fn changed(&mut self) {
        if let Some(receiver) = self.receiver.as_mut()
            && receiver.changed().await.is_ok()
        {
            return;
        }
        self.receiver = None;
        std::future::pending::<()>().await;
    }
}

/// Membership of a running agent.
pub struct Membership {
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    handle: Mutex<Option<ChitchatHandle>>,
    self_id: ChitchatId,
    settings: MembershipSettings,
    /// When each node's heartbeat was last seen to advance.
    heartbeats: Mutex<HashMap<ChitchatId, (Heartbeat, Instant)>>,
    leaving: AtomicBool,
    pub counters: Arc<GossipCounters>,
    peers_file: PathBuf,
}

/// Reads `<protocol>/<oldest compatible>`; a malformed value is not trusted.
fn parse_protocol(text: &str) -> Option<Speaks> {
    let (protocol, oldest) = text.split_once('/')?;
    let speaks = Speaks {
        protocol: protocol.parse().ok()?,
        oldest_compatible: oldest.parse().ok()?,
    };
    (speaks.oldest_compatible <= speaks.protocol).then_some(speaks)
}

/// Returns a generation that is larger than the last one this data directory used, even if
/// the board's clock went backwards (a Pi without a real-time clock before NTP).
fn next_generation(node: &NodeDir) -> Result<u64> {
    let path = node.path.join("generation");
    let previous: u64 = files::read_small_text(&path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    let generation = bramble_util::time::unix_millis().max(previous + 1);
    files::write_atomic(&path, generation.to_string().as_bytes(), Visibility::Public)?;
    Ok(generation)
}

impl Membership {
    /// Binds the gossip socket and starts gossiping; background tasks end on `shutdown`.
    /// Starts gossip; its background tasks run as `workers` (ending on their shutdown).
    pub async fn start(node: &NodeDir, workers: &Workers) -> Result<Arc<Membership>> {
        let config = &node.config;
        let settings = config.membership.clone();
        let self_id = ChitchatId::new(
            config.name.clone(),
            next_generation(node)?,
            config.advertise,
        );
        let mut seeds: Vec<SocketAddr> = config.seeds.clone();
        seeds.extend(node.known_peers().peers);
        seeds.sort();
        seeds.dedup();
        seeds.retain(|seed| *seed != config.advertise);
        let chitchat_config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: settings.gossip_interval(),
            listen_addr: config.listen,
            seed_nodes: seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: settings.phi_threshold,
                sampling_window_size: 200,
                max_interval: Duration::from_secs(10),
                initial_interval: settings.gossip_interval(),
                dead_node_grace_period: Duration::from_secs(settings.dead_node_grace_secs),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let load = LoadSummary::sample();
        let initial_keys = vec![
            (KEY_RPC.to_string(), config.advertise.to_string()),
            (KEY_ROLES.to_string(), config.roles.join(",")),
            (KEY_VERSION.to_string(), crate::VERSION.to_string()),
            (
                KEY_PROTOCOL.to_string(),
                format!(
                    "{}/{}",
                    crate::protocol::PROTOCOL,
                    crate::protocol::OLDEST_COMPATIBLE_PROTOCOL
                ),
            ),
            (
                KEY_ARCHITECTURE.to_string(),
                std::env::consts::ARCH.to_string(),
            ),
            (KEY_STATE.to_string(), "alive".to_string()),
            (
                KEY_LOAD.to_string(),
                serde_json::to_string(&load).unwrap_or_default(),
            ),
        ];
        let counters = Arc::new(GossipCounters::default());
        let transport: Box<dyn Transport> = Box::new(SealedUdpTransport::new(
            &node.secrets.gossip_key()?,
            counters.clone(),
        ));
        let handle = spawn_chitchat(chitchat_config, initial_keys, transport.as_ref())
            .await
            .map_err(|error| ClusterError::Io {
                what: format!("starting gossip on {}", config.listen),
                source: std::io::Error::other(format!("{error:#}")),
            })?;
        let membership = Arc::new(Membership {
            chitchat: handle.chitchat(),
            handle: Mutex::new(Some(handle)),
            self_id,
            settings,
            heartbeats: Mutex::new(HashMap::new()),
            leaving: AtomicBool::new(false),
            counters,
            peers_file: node.layout().peers(),
        });
        info!(name = %config.name, listen = %config.listen, advertise = %config.advertise, seeds = seeds.len(), "gossip started");
        let tracker = membership.clone();
        workers.spawn("gossip-heartbeats", Restart::OnFailure, move |worker| {
            let tracker = tracker.clone();
            async move {
                tracker.track_heartbeats(worker.shutdown()).await;
                Ok(())
            }
        });
        let publisher = membership.clone();
        workers.spawn("gossip-load", Restart::OnFailure, move |worker| {
            let publisher = publisher.clone();
            async move {
                publisher.publish_load(worker.shutdown()).await;
                Ok(())
            }
        });
        let saver = membership.clone();
        workers.spawn("peers-file", Restart::OnFailure, move |worker| {
            let saver = saver.clone();
            async move {
                saver.remember_peers(worker.shutdown()).await;
                Ok(())
            }
        });
        Ok(membership)
    }

    pub fn settings(&self) -> &MembershipSettings {
        &self.settings
    }

    pub fn self_name(&self) -> &str {
        &self.self_id.node_id
    }

    /// Announces this agent's build hash (computed after start: hashing the executable takes
    /// a moment on a small board).
    pub async fn announce_build(&self, build: &str) {
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(KEY_BUILD, build.to_string());
    }

    /// Samples heartbeats each round so `suspect` can be told from `alive`.
    async fn track_heartbeats(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut ticker = tokio::time::interval(self.settings.gossip_interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = ticker.tick() => {}
            }
            let now = Instant::now();
            let chitchat = self.chitchat.lock().await;
            let mut heartbeats = self
                .heartbeats
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            heartbeats.retain(|id, _| chitchat.node_state(id).is_some());
            for (id, state) in chitchat.node_states() {
                let heartbeat = state.heartbeat();
                let entry = heartbeats.entry(id.clone()).or_insert((heartbeat, now));
                if entry.0 != heartbeat {
                    *entry = (heartbeat, now);
                }
            }
        }
    }

    async fn publish_load(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut ticker = tokio::time::interval(LOAD_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = ticker.tick() => {}
            }
            let load = LoadSummary::sample();
            if let Ok(json) = serde_json::to_string(&load) {
                self.chitchat
                    .lock()
                    .await
                    .self_node_state()
                    .set(KEY_LOAD, json);
            }
        }
    }

    async fn remember_peers(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut ticker = tokio::time::interval(PEERS_INTERVAL);
        let mut last_saved: Option<KnownPeers> = None;
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = ticker.tick() => {}
            }
            let mut peers: Vec<SocketAddr> = self
                .nodes()
                .await
                .into_iter()
                .filter(|node| {
                    node.name != self.self_name()
                        && matches!(node.state, NodeState::Alive | NodeState::Suspect)
                })
                .map(|node| node.addr)
                .collect();
            if peers.is_empty() {
                continue;
            }
            peers.sort();
            let current = KnownPeers { peers };
            if last_saved.as_ref() != Some(&current) {
                // On a blocking thread: a crash-safe write syncs a new file and its
                // directory, which under load can take seconds (writeback competes with
                // the load for the CPU), and a runtime thread blocked that long delays
                // gossip, Raft heartbeats and lease renewals of the whole agent.
                let path = self.peers_file.clone();
                let saving = current.clone();
                let written = tokio::task::spawn_blocking(move || {
                    files::write_toml(&path, &saving, Visibility::Public)
                })
                .await;
                match written {
                    Ok(Ok(())) => last_saved = Some(current),
                    Ok(Err(error)) => warn!(%error, "could not save the list of known peers"),
                    Err(error) => warn!(%error, "saving the list of known peers failed"),
                }
            }
        }
    }

    /// Changes of the gossip state of live nodes (a node joined, came back, was declared
    /// dead, or changed a key), for work that should start at once when a node returns
    /// rather than at its next poll.
    pub async fn live_changes(&self) -> LiveChanges {
        LiveChanges {
            receiver: Some(self.chitchat.lock().await.live_nodes_watcher()),
        }
    }

    /// The node table as this node sees it, sorted by name.
    pub async fn nodes(&self) -> Vec<NodeView> {
        let chitchat = self.chitchat.lock().await;
        let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        let heartbeats = self
            .heartbeats
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        let now = Instant::now();
        let mut newest: BTreeMap<&str, NodeView> = BTreeMap::new();
        for (id, node_state) in chitchat.node_states() {
            let heartbeat_age = heartbeats
                .get(id)
                .map(|(_, since)| now.duration_since(*since));
            let is_self = *id == self.self_id;
            let announced_left = node_state.get(KEY_STATE) == Some("left");
            let state = if announced_left {
                NodeState::Left
            } else if is_self {
                NodeState::Alive
            } else if live.contains(id) {
                // Half-way to the detector's verdict (heartbeats arrive about once a round,
                // and death is declared phi_threshold rounds after the last one), but never
                // less than a few rounds so ordinary jitter does not flap nodes to suspect.
                let suspect_after = self
                    .settings
                    .gossip_interval()
                    .mul_f64(self.settings.phi_threshold / 2.0)
                    .max(self.settings.gossip_interval() * 4);
                match heartbeat_age {
                    Some(age) if age > suspect_after => NodeState::Suspect,
                    _ => NodeState::Alive,
                }
            } else {
                NodeState::Dead
            };
            let addr = node_state
                .get(KEY_RPC)
                .and_then(|text| text.parse().ok())
                .unwrap_or(id.gossip_advertise_addr);
            let speaks = node_state
                .get(KEY_PROTOCOL)
                .and_then(parse_protocol)
                .unwrap_or_else(Speaks::unannounced);
            let view = NodeView {
                name: id.node_id.to_string(),
                addr,
                state,
                roles: node_state
                    .get(KEY_ROLES)
                    .unwrap_or_default()
                    .split(',')
                    .filter(|role| !role.is_empty())
                    .map(str::to_string)
                    .collect(),
                version: node_state.get(KEY_VERSION).unwrap_or("unknown").to_string(),
                protocol: speaks.protocol,
                oldest_compatible_protocol: speaks.oldest_compatible,
                architecture: node_state
                    .get(KEY_ARCHITECTURE)
                    .unwrap_or_default()
                    .to_string(),
                build: node_state.get(KEY_BUILD).unwrap_or_default().to_string(),
                generation: id.generation_id,
                load: node_state
                    .get(KEY_LOAD)
                    .and_then(|json| serde_json::from_str(json).ok()),
                heartbeat_age_ms: if is_self {
                    Some(0)
                } else {
                    heartbeat_age.map(|age| age.as_millis() as u64)
                },
            };
            match newest.get(&*id.node_id) {
                Some(existing) if existing.generation >= view.generation => {}
                _ => {
                    newest.insert(&id.node_id, view);
                }
            }
        }
        newest.into_values().collect()
    }

    /// Announces that this node leaves, and pushes the news to every live member at once
    /// rather than waiting for random gossip rounds to carry it.
    pub async fn leave(&self) {
        if self.leaving.swap(true, Ordering::SeqCst) {
            return;
        }
        let peers: Vec<SocketAddr> = {
            let mut chitchat = self.chitchat.lock().await;
            chitchat.self_node_state().set(KEY_STATE, "left");
            chitchat
                .live_nodes()
                .filter(|id| **id != self.self_id)
                .map(|id| id.gossip_advertise_addr)
                .collect()
        };
        for _ in 0..3 {
            if let Some(handle) = self
                .handle
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .as_ref()
            {
                for peer in &peers {
                    let _ = handle.gossip(*peer);
                }
            }
            tokio::time::sleep(self.settings.gossip_interval() * 2).await;
        }
        info!("left the cluster");
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::SeqCst)
    }

    /// Stops gossip and waits for the chitchat task to end.
    pub async fn stop(&self) {
        let handle = self
            .handle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(handle) = handle
            && let Err(error) = handle.shutdown().await
        {
            warn!(%error, "gossip did not stop cleanly");
        }
    }
}
