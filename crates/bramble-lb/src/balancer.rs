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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bramble_util::{Shutdown, ShutdownTrigger};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::{BalancerSpec, Mode, SpecError};
use crate::http_proxy;
use crate::memory_budget::{self, CONNECTION_BYTES};
use crate::pool::{BalancerStats, Pool};
use crate::runtime::{FrontendCounters, Runtime, RuntimeCell, slow_start};
use crate::tcp_proxy;
use crate::workers::workers;

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
        memory_budget::prepare();
        let listener = bind(&spec)?;
        let listen = spec.listen;
        let (stop_trigger, stop) = ShutdownTrigger::new();
        let runtime = Runtime::new(spec, None, Arc::new(FrontendCounters::default()), &stop);
        let cell = Arc::new(RuntimeCell::new(runtime));
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
        let runtime = Runtime::new(
            spec,
            Some(&previous),
            previous.frontend.clone(),
            &self.shared.stop,
        );
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
    if spec.vip.interface.is_none() {
        // The emulator's loopback VIP: every node shares the host's 127.x address, so a
        // planned hand-over can be make-before-break — the new holder binds while the old
        // one still accepts for a moment (`participant::HANDOVER_LINGER`), and no client
        // meets a closed port. (On a real interface the address itself moves.)
        socket.set_reuseport(true).map_err(failed)?;
    }
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
        match accepted.and_then(|(stream, client)| Ok((stream.into_std()?, client))) {
            Ok((stream, client)) => admit(stream, client, &cell, &stop, &running),
            Err(error) => {
                warn!(%error, "accepting a client connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    // Connections the kernel has already completed wait in the listener's queue, and
    // closing the listener would reset them: serve them first. (During a planned VIP
    // hand-over the new holder's listener shares the port, so these are the last few
    // the kernel gave this one.)
    match listener.into_std() {
        Ok(listener) => {
            while let Ok((stream, client)) = listener.accept() {
                if stream.set_nonblocking(true).is_ok() {
                    admit(stream, client, &cell, &stop, &running);
                }
            }
            drop(listener);
        }
        Err(error) => debug!(%error, "could not take the listener back to empty its queue"),
    }
    // The socket is closed before this task counts as ended, so once stop() returns the
    // address refuses connections and can be bound again.
    drop(running);
}

/// Takes one accepted connection within the limits and hands it to a data-plane thread,
/// or closes it when the connection limit or the memory budget is reached.
fn admit(
    stream: std::net::TcpStream,
    client: SocketAddr,
    cell: &Arc<RuntimeCell>,
    stop: &Shutdown,
    running: &mpsc::Sender<()>,
) {
    let runtime = cell.load();
    let Some(slot) = ConnectionSlot::take(&runtime.frontend, runtime.spec.limits.max_connections)
    else {
        // Over the limit: closing at once tells the client to go elsewhere (another
        // balancer node) instead of queueing behind connections that may never end.
        runtime.frontend.errors.fetch_add(1, Ordering::Relaxed);
        debug!(balancer = %runtime.spec.name, %client, "connection refused: max_connections reached");
        return;
    };
    let connection_bytes = match runtime.spec.mode {
        Mode::Http => CONNECTION_BYTES,
        Mode::Tcp => CONNECTION_BYTES + tcp_proxy::BUFFER_BYTES,
    };
    let Some(memory) = memory_budget::budget().try_reserve(connection_bytes) else {
        // The node's data-plane budget is spent: refused like the connection limit.
        runtime.frontend.errors.fetch_add(1, Ordering::Relaxed);
        debug!(balancer = %runtime.spec.name, %client, "connection refused: data-plane memory budget reached");
        return;
    };
    // Small requests and answers should not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let stop = stop.clone();
    let running = running.clone();
    let cell = cell.clone();
    // The connection moves to a data-plane thread, whose runtime registers it anew.
    workers().spawn(async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => match runtime.spec.mode {
                Mode::Http => {
                    http_proxy::serve_connection(cell, stream, client, memory, stop).await
                }
                Mode::Tcp => {
                    tcp_proxy::serve_connection(runtime, stream, client, stop).await;
                    drop(memory);
                }
            },
            Err(error) => debug!(%error, %client, "a worker could not take a connection"),
        }
        drop((slot, running));
    });
}
