//! The subsystem contract. A subsystem is a part of the agent that runs on the nodes with
//! certain roles (every node if none): it gets a [`Context`] with everything the layers
//! below offer, registers its background tasks as named workers, may offer an RPC service
//! and a streaming (mux) service under its name, reports a status, and stops when asked — in the reverse order of
//! starting, within a deadline, before the catalog and membership stop, so that what it
//! holds (a VIP lease) can be handed over while the cluster still listens.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bramble_cluster::{Membership, NodeDir};
use bramble_meta::Meta;
use bramble_net::rpc::Request;
use bramble_net::{
    ErrorKind, Handler, MuxClient, Router, RpcClient, RpcError, StreamHandler, StreamRouter,
};
use bramble_util::{Shutdown, Workers};
use tracing::{info, warn};

/// What a subsystem starts with.
#[derive(Clone)]
pub struct Context {
    pub node: Arc<NodeDir>,
    pub membership: Arc<Membership>,
    pub meta: Arc<Meta>,
    /// A client with this node's certificate, for calls to other agents.
    pub rpc: RpcClient,
    /// The same for streams (the mux): bulk bodies to and from other agents.
    pub mux: MuxClient,
    /// Fires when the agent stops (after every subsystem's own stop).
    pub shutdown: Shutdown,
    /// Where to register background tasks.
    pub workers: Workers,
    /// The running subsystems' own figures, for the one that reports on the others (the
    /// monitor's `/metrics`).
    pub figures: SubsystemFigures,
}

/// The other subsystems as a reporting subsystem sees them. The agent attaches the started
/// subsystems once all have started; held weakly, since each of them holds a `Context`.
#[derive(Clone, Default)]
pub struct SubsystemFigures {
    subsystems: Arc<OnceLock<Weak<Subsystems>>>,
}

impl SubsystemFigures {
    /// Called by the agent once, after [`Subsystems::start`].
    pub fn attach(&self, subsystems: &Arc<Subsystems>) {
        let _ = self.subsystems.set(Arc::downgrade(subsystems));
    }

    /// Every running subsystem's figures in the Prometheus text format, one after another
    /// (each subsystem's family names are its own, so they never interleave).
    pub fn prometheus(&self) -> String {
        let Some(subsystems) = self.subsystems.get().and_then(Weak::upgrade) else {
            return String::new();
        };
        let running: Vec<Arc<dyn Running>> = subsystems
            .started()
            .iter()
            .map(|started| started.running.clone())
            .collect();
        let mut text = String::new();
        for subsystem in running {
            if let Some(figures) = subsystem.prometheus() {
                text.push_str(&figures);
                if !text.ends_with('\n') {
                    text.push('\n');
                }
            }
        }
        text
    }

    /// Every running subsystem's alarms, one list (each subsystem's subjects are its own).
    pub fn alarms(&self) -> Vec<Alarm> {
        let Some(subsystems) = self.subsystems.get().and_then(Weak::upgrade) else {
            return Vec::new();
        };
        let running: Vec<Arc<dyn Running>> = subsystems
            .started()
            .iter()
            .map(|started| started.running.clone())
            .collect();
        running
            .iter()
            .flat_map(|subsystem| subsystem.alarms())
            .collect()
    }
}

/// Something a subsystem finds wrong right now, for the monitor's alerts: a balancer's
/// backend failing its health checks. The subsystem reports the condition for as long as
/// it lasts; the monitor decides when it becomes an alert, when it resolves, and who is
/// told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    /// The kind of trouble, in snake_case (`backend_down`): alerts are grouped by it.
    pub kind: &'static str,
    /// What it is about, unique within the kind on this node (`webfarm/web1`).
    pub subject: String,
    /// One line for people.
    pub message: String,
}

impl Context {
    pub fn node_name(&self) -> &str {
        &self.node.config.name
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.node.config.roles.iter().any(|own| own == role)
    }
}

/// A running subsystem.
#[async_trait::async_trait]
pub trait Running: Send + Sync {
    /// Its RPC service, registered under the subsystem's name (`lb.stats`, ...).
    fn service(&self) -> Option<Arc<dyn Handler>>;
    /// Its streaming service on the mux (bulk bodies: blocks, logs), registered under the
    /// subsystem's name; most subsystems have none.
    fn stream_service(&self) -> Option<Arc<dyn StreamHandler>> {
        None
    }
    /// Its state for `bramble status` and the API.
    fn status(&self) -> serde_json::Value;
    /// Its own figures in the Prometheus text format 0.0.4 (whole families, names starting
    /// `bramble_<subsystem>_`), for the monitor's `/metrics`; cheap, as it runs on every
    /// scrape. Most subsystems have none.
    fn prometheus(&self) -> Option<String> {
        None
    }
    /// What is wrong in it right now, for the monitor's alerts (asked once a second, so
    /// cheap). Most subsystems have nothing to report.
    fn alarms(&self) -> Vec<Alarm> {
        Vec::new()
    }
    /// Stops it: hand over what it holds, end its workers. Called once.
    async fn stop(&self);
}

/// How a subsystem starts.
pub type StartFuture =
    Pin<Box<dyn Future<Output = Result<Arc<dyn Running>, String>> + Send + 'static>>;

/// A subsystem's declaration.
pub struct Subsystem {
    pub name: &'static str,
    /// The roles it runs on (any of them); empty: every node.
    pub roles: &'static [&'static str],
    pub start: fn(Context) -> StartFuture,
    /// Longest its stop may take before the agent moves on.
    pub stop_deadline: Duration,
}

#[derive(Clone)]
struct Started {
    name: &'static str,
    running: Arc<dyn Running>,
    stop_deadline: Duration,
}

/// The agent's subsystems, in start order.
#[derive(Default)]
pub struct Subsystems {
    started: Mutex<Vec<Started>>,
    /// Declared subsystems that this node's roles do not run, with the roles they need.
    absent: Vec<(&'static str, &'static [&'static str])>,
}

impl Subsystems {
    /// Starts each declared subsystem whose roles this node has, in order. A failure stops
    /// the ones already started and is returned.
    pub async fn start(context: &Context, declared: &[Subsystem]) -> Result<Subsystems, String> {
        let mut subsystems = Subsystems::default();
        let mut started = Vec::new();
        for subsystem in declared {
            let runs_here = subsystem.roles.is_empty()
                || subsystem.roles.iter().any(|role| context.has_role(role));
            if !runs_here {
                subsystems.absent.push((subsystem.name, subsystem.roles));
                continue;
            }
            match (subsystem.start)(context.clone()).await {
                Ok(running) => {
                    info!(subsystem = subsystem.name, "subsystem started");
                    started.push(Started {
                        name: subsystem.name,
                        running,
                        stop_deadline: subsystem.stop_deadline,
                    });
                }
                Err(error) => {
                    subsystems.started = Mutex::new(started);
                    subsystems.stop().await;
                    return Err(format!(
                        "starting the {} subsystem: {error}",
                        subsystem.name
                    ));
                }
            }
        }
        subsystems.started = Mutex::new(started);
        Ok(subsystems)
    }

    fn started(&self) -> std::sync::MutexGuard<'_, Vec<Started>> {
        self.started
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Registers every subsystem's RPC service; a subsystem that does not run here
    /// answers with an error that names the roles it needs.
    pub fn register_services(&self, router: &mut Router) {
        for started in self.started().iter() {
            if let Some(service) = started.running.service() {
                router.register(started.name, service);
            }
        }
        for (name, roles) in &self.absent {
            router.register(
                name,
                Arc::new(NotHere {
                    name,
                    roles: roles.join(" or "),
                }),
            );
        }
    }

    /// Registers every running subsystem's streaming service. (A subsystem that does not
    /// run here has none; its name falls through to the unary services, where
    /// [`Subsystems::register_services`] registered the error that names its roles.)
    pub fn register_stream_services(&self, router: &mut StreamRouter) {
        for started in self.started().iter() {
            if let Some(service) = started.running.stream_service() {
                router.register(started.name, service);
            }
        }
    }

    /// Each running subsystem's status, by name.
    pub fn statuses(&self) -> Vec<(String, serde_json::Value)> {
        self.started()
            .iter()
            .map(|started| (started.name.to_string(), started.running.status()))
            .collect()
    }

    /// Stops the subsystems in reverse start order, each within its deadline.
    pub async fn stop(&self) {
        loop {
            let Some(started) = self.started().pop() else {
                break;
            };
            let stopped = tokio::time::timeout(started.stop_deadline, started.running.stop()).await;
            match stopped {
                Ok(()) => info!(subsystem = started.name, "subsystem stopped"),
                Err(_) => warn!(
                    subsystem = started.name,
                    deadline_ms = started.stop_deadline.as_millis() as u64,
                    "subsystem did not stop within its deadline"
                ),
            }
        }
    }
}

/// The service of a subsystem that does not run on this node.
struct NotHere {
    name: &'static str,
    roles: String,
}

#[async_trait::async_trait]
impl Handler for NotHere {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError> {
        request.require_authenticated()?;
        Err(RpcError::new(
            ErrorKind::NotFound,
            format!(
                "the {} subsystem does not run on this node (it needs the role {})",
                self.name, self.roles
            ),
        ))
    }
}
