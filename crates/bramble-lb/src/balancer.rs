//! One running balancer: the listening socket, the accept loop with its connection limit,
//! and the current configuration that every request reads.
//!
//! The configuration lives in a [`Runtime`] behind an `Arc` that is swapped whole by
//! [`BalancerHandle::update`]: a request or TCP connection loads the current `Arc` once and
//! keeps it until it finishes, so a change never tears down open connections, and the
//! new pool inherits health and counters through [`Pool::carry_over`]. Only a changed
//! `listen` address rebinds the socket; connections accepted on the old one carry on.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bramble_util::{Shutdown, ShutdownTrigger};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::balance::Selector;
use crate::config::{BalancerSpec, Mode, SpecError};
use crate::http_proxy::{self, BackendClient};
use crate::pool::{BalancerStats, Pool};
use crate::tcp_proxy;
use crate::workers::{self, workers};

/// Pending connections the kernel queues for the accept loop.
const LISTEN_BACKLOG: u32 = 1024;
/// Pause after a failed accept (out of file descriptors, say), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("balancer {balancer}: cannot listen on {listen}: {source}")]
    Bind {
        balancer: String,
        listen: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("invalid balancer spec: {0}")]
    InvalidSpec(#[from] SpecError),
    #[error("balancer {balancer} is stopped")]
    Stopped { balancer: String },
}

/// Client-side counters, kept across configuration changes.
#[derive(Debug, Default)]
pub(crate) struct FrontendCounters {
    /// HTTP requests or TCP connections accepted.
    pub(crate) sessions: AtomicU64,
    /// Answers the balancer produced itself because something failed or a limit was hit,
    /// plus connections refused over `max_connections`.
    pub(crate) errors: AtomicU64,
    /// Client connections open now, for `max_connections`.
    pub(crate) open_connections: AtomicUsize,
}

/// Everything a request needs, for one version of the spec.
pub(crate) struct Runtime {
    pub(crate) spec: BalancerSpec,
    pub(crate) pool: Arc<Pool>,
    pub(crate) selector: Selector,
    /// Keep-alive connections to the backends (HTTP mode), one pool per data-plane
    /// thread so that a request and its backend connection share a thread.
    clients: Vec<BackendClient>,
    pub(crate) frontend: Arc<FrontendCounters>,
}

impl Runtime {
    fn new(
        spec: BalancerSpec,
        previous: Option<&Runtime>,
        frontend: Arc<FrontendCounters>,
    ) -> Runtime {
        let pool = match previous {
            Some(previous) => Pool::carry_over(&spec.backends, &previous.pool),
            None => Pool::new(&spec.backends),
        };
        // Reusing the clients keeps their idle backend connections warm across a change;
        // only their connect timeout is baked in.
        let clients = match previous {
            Some(previous) if previous.spec.timeouts.connect_ms == spec.timeouts.connect_ms => {
                previous.clients.clone()
            }
            _ => (0..workers().count())
                .map(|_| http_proxy::backend_client(&spec.timeouts))
                .collect(),
        };
        let selector = Selector::new(spec.balance.clone(), slow_start(&spec), pool.backends.len());
        Runtime {
            spec,
            pool: Arc::new(pool),
            selector,
            clients,
            frontend,
        }
    }

    /// The backend connection pool of the data-plane thread running the caller.
    pub(crate) fn client(&self) -> &BackendClient {
        &self.clients[workers::current_index() % self.clients.len()]
    }
}

/// The spec's slow-start period as a duration.
pub(crate) fn slow_start(spec: &BalancerSpec) -> Duration {
    Duration::from_secs(u64::from(spec.slow_start_secs))
}

/// The current [`Runtime`]. A read lock held just long enough to clone an `Arc` costs
/// the hot path next to nothing, and writers (configuration changes) are rare.
pub(crate) struct RuntimeCell {
    current: RwLock<Arc<Runtime>>,
}

impl RuntimeCell {
    pub(crate) fn load(&self) -> Arc<Runtime> {
        self.current
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    fn store(&self, runtime: Arc<Runtime>) {
        *self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = runtime;
    }
}

/// When the client last did something on a connection, and whether the balancer is busy
/// on its behalf; the idle timeouts of both modes read it.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }
}

/// Marks a request in progress on a connection for as long as it lives (through the end
/// of the response body), so the client idle timeout does not fire while the client is
/// waiting for a slow backend.
#[derive(Debug)]
pub(crate) struct InFlight {
    activity: Arc<Activity>,
}

impl InFlight {
    pub(crate) fn new(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { activity }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One slot of `max_connections`, given back when the connection ends. A counter checked
/// against the current spec rather than a fixed semaphore, because the limit can change
/// with [`BalancerHandle::update`] while connections hold slots.
struct ConnectionSlot {
    frontend: Arc<FrontendCounters>,
}

impl ConnectionSlot {
    fn take(frontend: &Arc<FrontendCounters>, limit: usize) -> Option<ConnectionSlot> {
        let open = frontend.open_connections.fetch_add(1, Ordering::Relaxed);
        if open >= limit {
            frontend.open_connections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnectionSlot {
            frontend: frontend.clone(),
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.frontend
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts balancers; see [`Balancer::start`].
pub struct Balancer;

impl Balancer {
    /// Validates `spec`, binds `spec.listen` and starts serving. Must be called inside a
    /// Tokio runtime. Every task of the balancer ends when `shutdown` fires or
    /// [`BalancerHandle::stop`] is called.
    pub fn start(spec: BalancerSpec, shutdown: Shutdown) -> Result<BalancerHandle, LbError> {
        spec.validate()?;
        let listener = bind(&spec)?;
        let listen = spec.listen;
        let runtime = Runtime::new(spec, None, Arc::new(FrontendCounters::default()));
        let cell = Arc::new(RuntimeCell {
            current: RwLock::new(Arc::new(runtime)),
        });
        let (stop_trigger, stop) = ShutdownTrigger::new();
        let stop_trigger = Arc::new(stop_trigger);
        // Every task holds a clone of `running`; stop() waits for the channel to close,
        // which happens when the last task has ended.
        let (running, finished) = mpsc::channel::<()>(1);
        let (listener_trigger, listener_stop) = ShutdownTrigger::new();

        tokio::spawn(forward_shutdown(
            shutdown,
            stop.clone(),
            stop_trigger.clone(),
        ));
        tokio::spawn(accept_loop(
            listener,
            cell.clone(),
            stop.clone(),
            listener_stop,
            running.clone(),
        ));

        Ok(BalancerHandle {
            shared: Arc::new(Shared {
                cell,
                stop_trigger,
                stop,
                control: Mutex::new(Control {
                    listen,
                    listener_trigger,
                    running: Some(running),
                }),
                finished: tokio::sync::Mutex::new(Some(finished)),
            }),
        })
    }
}

/// Controls a running balancer. Cheap to clone; all clones control the same balancer.
#[derive(Clone)]
pub struct BalancerHandle {
    shared: Arc<Shared>,
}

struct Shared {
    cell: Arc<RuntimeCell>,
    stop_trigger: Arc<ShutdownTrigger>,
    stop: Shutdown,
    control: Mutex<Control>,
    finished: tokio::sync::Mutex<Option<mpsc::Receiver<()>>>,
}

/// What changes when the listening address does; under a mutex so updates are serial.
struct Control {
    listen: SocketAddr,
    /// Stops the current accept loop (and only it) on a rebind.
    listener_trigger: ShutdownTrigger,
    /// None once stopped.
    running: Option<mpsc::Sender<()>>,
}

impl BalancerHandle {
    /// Applies a new spec without dropping open connections: requests already under way
    /// finish with the configuration they started with, new ones use `spec`. Backends
    /// present before (same name and address) keep their health and counters. A new
    /// `listen` address is bound first, so a failed rebind leaves the balancer as it was.
    pub fn update(&self, spec: BalancerSpec) -> Result<(), LbError> {
        spec.validate()?;
        let mut control = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let Some(running) = control.running.clone() else {
            return Err(LbError::Stopped {
                balancer: spec.name,
            });
        };
        let new_listener = if spec.listen != control.listen {
            Some(bind(&spec)?)
        } else {
            None
        };
        let listen = spec.listen;
        let previous = self.shared.cell.load();
        let runtime = Runtime::new(spec, Some(&previous), previous.frontend.clone());
        self.shared.cell.store(Arc::new(runtime));
        if let Some(listener) = new_listener {
            let (listener_trigger, listener_stop) = ShutdownTrigger::new();
            std::mem::replace(&mut control.listener_trigger, listener_trigger).trigger();
            control.listen = listen;
            tokio::spawn(accept_loop(
                listener,
                self.shared.cell.clone(),
                self.shared.stop.clone(),
                listener_stop,
                running,
            ));
        }
        Ok(())
    }

    /// The current backends, for the health checker. A configuration change replaces the
    /// pool, so long-lived users should call this again rather than keep the `Arc`.
    pub fn pool(&self) -> Arc<Pool> {
        self.shared.cell.load().pool.clone()
    }

    /// The spec in force.
    pub fn spec(&self) -> BalancerSpec {
        self.shared.cell.load().spec.clone()
    }

    pub fn stats(&self) -> BalancerStats {
        let runtime = self.shared.cell.load();
        let spec = &runtime.spec;
        BalancerStats {
            name: spec.name.clone(),
            listen: spec.listen.to_string(),
            mode: match spec.mode {
                Mode::Http => "http".to_string(),
                Mode::Tcp => "tcp".to_string(),
            },
            balance: spec.balance.to_string(),
            vip_holder: None,
            frontend_sessions: runtime.frontend.sessions.load(Ordering::Relaxed),
            frontend_errors: runtime.frontend.errors.load(Ordering::Relaxed),
            backends: runtime
                .pool
                .backends
                .iter()
                .map(|backend| backend.stats(slow_start(spec)))
                .collect(),
        }
    }

    /// Stops accepting, asks open connections to finish (HTTP connections get a graceful
    /// close, bounded by [`http_proxy::SHUTDOWN_GRACE`]) and waits until every task of
    /// this balancer has ended.
    pub async fn stop(&self) {
        self.shared.stop_trigger.trigger();
        drop(
            self.shared
                .control
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .running
                .take(),
        );
        let mut finished = self.shared.finished.lock().await;
        if let Some(receiver) = finished.as_mut() {
            while receiver.recv().await.is_some() {}
        }
        *finished = None;
    }
}

fn bind(spec: &BalancerSpec) -> Result<TcpListener, LbError> {
    let failed = |source: io::Error| LbError::Bind {
        balancer: spec.name.clone(),
        listen: spec.listen,
        source,
    };
    let socket = if spec.listen.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(failed)?;
    // So a restarted agent can bind again while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(failed)?;
    socket.bind(spec.listen).map_err(failed)?;
    socket.listen(LISTEN_BACKLOG).map_err(failed)
}

/// Turns the agent-wide shutdown into this balancer's stop; ends with either.
async fn forward_shutdown(
    mut shutdown: Shutdown,
    mut stop: Shutdown,
    stop_trigger: Arc<ShutdownTrigger>,
) {
    tokio::select! {
        _ = shutdown.wait() => stop_trigger.trigger(),
        _ = stop.wait() => {}
    }
}

async fn accept_loop(
    listener: TcpListener,
    cell: Arc<RuntimeCell>,
    mut stop: Shutdown,
    mut listener_stop: Shutdown,
    running: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait() => break,
            _ = listener_stop.wait() => break,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accepting a client connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let runtime = cell.load();
        let Some(slot) =
            ConnectionSlot::take(&runtime.frontend, runtime.spec.limits.max_connections)
        else {
            // Over the limit: closing at once tells the client to go elsewhere (another
            // balancer node) instead of queueing behind connections that may never end.
            runtime.frontend.errors.fetch_add(1, Ordering::Relaxed);
            debug!(balancer = %runtime.spec.name, %client, "connection refused: max_connections reached");
            continue;
        };
        // Small requests and answers should not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        // The connection moves to a data-plane thread, whose runtime registers it anew.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                debug!(%error, %client, "could not hand a connection over to a worker");
                continue;
            }
        };
        let stop = stop.clone();
        let running = running.clone();
        let cell = cell.clone();
        workers().spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => match runtime.spec.mode {
                    Mode::Http => http_proxy::serve_connection(cell, stream, client, stop).await,
                    Mode::Tcp => tcp_proxy::serve_connection(runtime, stream, client, stop).await,
                },
                Err(error) => debug!(%error, %client, "a worker could not take a connection"),
            }
            drop((slot, running));
        });
    }
    // The socket closes before this task counts as ended, so once stop() returns the
    // address refuses connections and can be bound again.
    drop(listener);
    drop(running);
}
