//! How a balancer exchanges requests with its backends: HTTP/1.1 keep-alive connections
//! held per data-plane thread and per backend address, and the body type that flows
//! through the proxy.
//!
//! Each connection is hyper's low-level `client::conn::http1`: its `SendRequest` lives in
//! this pool and its connection future runs as a task on the data-plane thread that
//! dialled it, so a request, its backend connection and its response body never leave
//! that thread. The legacy pooled client this replaces did the same work with a shared
//! pool keyed by URI authority, a lock per checkout and per return, and one more spawned
//! task per exchange to put the connection back; measured in the load balancer section of
//! docs/ARCHITECTURE.md.
//!
//! A connection is taken for one exchange ([`BackendConnection`]) and comes back to its
//! thread's idle list only when the response body has been read to its end
//! ([`BackendConnection::release`]); one dropped earlier (client gone, error, timeout) is
//! closed with it, so a half-read response never meets the next request. Idle lists are
//! last-in-first-out (the warmest connection first, the cold ones age out), bounded, and
//! emptied of connections idle for [`BACKEND_POOL_IDLE`] by one sweeper task per
//! data-plane thread and balancer, which ends with the balancer.

use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bramble_util::Shutdown;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::memory_budget::BACKEND_BUFFER_BYTES;
use crate::workers;

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;
/// Bodies in both directions: streamed from the other side, buffered, or the balancer's own.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Idle backend connections are closed after this long: shorter than common backend
/// keep-alive timeouts (Apache's 5 s), so the balancer rarely reuses a connection the
/// backend is closing at that very moment.
const BACKEND_POOL_IDLE: Duration = Duration::from_secs(4);
/// How often the sweeper looks for connections idle past [`BACKEND_POOL_IDLE`].
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Idle connections kept per backend and data-plane thread; more are closed on return.
/// A burst opens as many connections as it has requests in flight, and keeping them all
/// would hold sockets (and the backend's workers) long after the burst.
const MAX_IDLE_PER_BACKEND: usize = 256;
/// How long a connection may take to finish its exchange once the balancer stops.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// No connection: nothing was sent, so the request may go to any other backend.
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The request may have reached the backend.
    #[error("the exchange with {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl ExchangeError {
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, ExchangeError::Connect { .. })
    }
}

/// The backend connections of one balancer: one idle list per data-plane thread.
pub(crate) struct BackendConnections {
    connect_timeout: Duration,
    threads: Vec<Arc<ThreadConnections>>,
    stop: Shutdown,
}

/// One data-plane thread's idle connections, by backend address. Only that thread takes
/// and returns them, so the mutex is never contended; it is there because a request can
/// end on another runtime when no data-plane thread could be started.
struct ThreadConnections {
    idle: Mutex<Vec<IdleList>>,
    sweeper_started: AtomicBool,
}

struct IdleList {
    addr: SocketAddr,
    /// Oldest first; taken from the end.
    connections: Vec<IdleConnection>,
}

struct IdleConnection {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

impl BackendConnections {
    pub(crate) fn new(connect_timeout: Duration, stop: Shutdown) -> BackendConnections {
        BackendConnections {
            connect_timeout,
            threads: (0..workers::workers().count())
                .map(|_| {
                    Arc::new(ThreadConnections {
                        idle: Mutex::new(Vec::new()),
                        sweeper_started: AtomicBool::new(false),
                    })
                })
                .collect(),
            stop,
        }
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    fn thread(&self) -> &Arc<ThreadConnections> {
        &self.threads[workers::current_index() % self.threads.len()]
    }

    /// Sends `request` to `addr` on an idle connection of this thread, or on a new one.
    /// The answer comes with its connection, to be released once its body is read.
    pub(crate) async fn exchange(
        &self,
        addr: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, BackendConnection), ExchangeError> {
        let thread = self.thread();
        // An idle connection the backend has closed (its keep-alive timeout) hands the
        // request back unsent; the next one, or a new connection, gets it.
        while let Some(mut sender) = thread.take(addr) {
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, self.taken(thread, addr, sender))),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => {
                        return Err(ExchangeError::Http {
                            addr,
                            source: error.into_error(),
                        });
                    }
                },
            }
        }
        let mut sender = self.connect(thread, addr).await?;
        match sender.send_request(request).await {
            Ok(response) => Ok((response, self.taken(thread, addr, sender))),
            Err(source) => Err(ExchangeError::Http { addr, source }),
        }
    }

    fn taken(
        &self,
        thread: &Arc<ThreadConnections>,
        addr: SocketAddr,
        sender: SendRequest<ProxyBody>,
    ) -> BackendConnection {
        BackendConnection {
            sender: Some(sender),
            addr,
            home: Arc::downgrade(thread),
            stop: self.stop.clone(),
        }
    }

    async fn connect(
        &self,
        thread: &Arc<ThreadConnections>,
        addr: SocketAddr,
    ) -> Result<SendRequest<ProxyBody>, ExchangeError> {
        let failed = |source| ExchangeError::Connect { addr, source };
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| failed(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
            .map_err(failed)?;
        // Small requests and answers should not wait for Nagle's algorithm.
        stream.set_nodelay(true).map_err(failed)?;
        let (sender, connection) = http1::Builder::new()
            // Bounded so a request's share of the data-plane memory budget covers it.
            .max_buf_size(BACKEND_BUFFER_BYTES)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ExchangeError::Http { addr, source })?;
        // On this data-plane thread's runtime: the connection's task and the requests
        // that use it run on the same thread.
        tokio::spawn(drive_connection(connection, self.stop.clone()));
        if !thread.sweeper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(thread), self.stop.clone()));
        }
        Ok(sender)
    }
}

impl ThreadConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<IdleList>> {
        self.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The most recently returned live connection to `addr`, if any.
    fn take(&self, addr: SocketAddr) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.lock();
        let list = idle.iter_mut().find(|list| list.addr == addr)?;
        while let Some(connection) = list.connections.pop() {
            if !connection.sender.is_closed() && connection.since.elapsed() < BACKEND_POOL_IDLE {
                return Some(connection.sender);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, sender: SendRequest<ProxyBody>) {
        let mut idle = self.lock();
        let index = match idle.iter().position(|list| list.addr == addr) {
            Some(index) => index,
            None => {
                idle.push(IdleList {
                    addr,
                    connections: Vec::new(),
                });
                idle.len() - 1
            }
        };
        let list = &mut idle[index].connections;
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(IdleConnection {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle too long (their tasks end when the sender goes), and
    /// forgets backends without connections.
    fn sweep(&self) {
        let mut idle = self.lock();
        for list in idle.iter_mut() {
            list.connections.retain(|connection| {
                !connection.sender.is_closed() && connection.since.elapsed() < BACKEND_POOL_IDLE
            });
        }
        idle.retain(|list| !list.connections.is_empty());
    }

    fn clear(&self) {
        self.lock().clear();
    }
}

/// A backend connection taken for one exchange.
pub(crate) struct BackendConnection {
    sender: Option<SendRequest<ProxyBody>>,
    addr: SocketAddr,
    home: Weak<ThreadConnections>,
    stop: Shutdown,
}

impl BackendConnection {
    /// The exchange is over, its response body read to the end: the connection may
    /// carry the next request. Dropping a connection without this closes it.
    pub(crate) fn release(mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        if self.stop.is_triggered() || sender.is_closed() {
            return;
        }
        if let Some(home) = self.home.upgrade() {
            home.put(self.addr, sender);
        }
    }
}

/// Runs one backend connection until its sender is dropped and it is idle, the backend
/// closes it, or the balancer stops (then it gets [`STOP_GRACE`] to finish its exchange).
async fn drive_connection(
    connection: http1::Connection<TokioIo<TcpStream>, ProxyBody>,
    mut stop: Shutdown,
) {
    tokio::pin!(connection);
    let result = tokio::select! {
        biased;
        result = connection.as_mut() => result,
        _ = stop.wait() => match tokio::time::timeout(STOP_GRACE, connection.as_mut()).await {
            Ok(result) => result,
            Err(_elapsed) => return,
        },
    };
    if let Err(error) = result {
        debug!(%error, "backend connection ended with an error");
    }
}

/// Closes one data-plane thread's connections that have been idle too long, until the
/// balancer stops (then it closes every idle one) or drops its connections.
async fn sweep(thread: Weak<ThreadConnections>, mut stop: Shutdown) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait() => {
                if let Some(thread) = thread.upgrade() {
                    thread.clear();
                }
                return;
            }
        }
        match thread.upgrade() {
            Some(thread) => thread.sweep(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use bramble_util::ShutdownTrigger;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::server::conn::http1 as server_http1;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// A backend answering "hello" that counts the connections it accepts.
    async fn backend(keep_alive: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|_request| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
                    });
                    let _ = server_http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn request() -> Request<ProxyBody> {
        let body = Empty::<Bytes>::new()
            .map_err(|never: Infallible| match never {})
            .boxed_unsync();
        Request::builder()
            .uri("/")
            .header(hyper::header::HOST, "backend")
            .body(body)
            .unwrap()
    }

    async fn exchange_whole(connections: &BackendConnections, addr: SocketAddr) {
        let (response, connection) = connections.exchange(addr, request()).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        connection.release();
    }

    #[tokio::test]
    async fn a_connection_carries_the_next_request_once_its_answer_is_read() {
        let (addr, accepted) = backend(true).await;
        let (_trigger, stop) = ShutdownTrigger::new();
        let connections = BackendConnections::new(Duration::from_secs(5), stop);
        for _ in 0..3 {
            exchange_whole(&connections, addr).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_dropped_mid_exchange_is_not_reused() {
        let (addr, accepted) = backend(true).await;
        let (_trigger, stop) = ShutdownTrigger::new();
        let connections = BackendConnections::new(Duration::from_secs(5), stop);
        let (response, connection) = connections.exchange(addr, request()).await.unwrap();
        drop((response, connection));
        exchange_whole(&connections, addr).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn requests_survive_backends_that_close_after_each_answer() {
        let (addr, accepted) = backend(false).await;
        let (_trigger, stop) = ShutdownTrigger::new();
        let connections = BackendConnections::new(Duration::from_secs(5), stop);
        for _ in 0..3 {
            exchange_whole(&connections, addr).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (_trigger, stop) = ShutdownTrigger::new();
        let connections = BackendConnections::new(Duration::from_secs(5), stop);
        let error = connections.exchange(addr, request()).await.err().unwrap();
        assert!(error.is_connect(), "{error}");
    }

    #[tokio::test]
    async fn a_stopped_balancer_keeps_no_idle_connections() {
        let (addr, _accepted) = backend(true).await;
        let (trigger, stop) = ShutdownTrigger::new();
        let connections = BackendConnections::new(Duration::from_secs(5), stop);
        exchange_whole(&connections, addr).await;
        trigger.trigger();
        let (response, connection) = connections.exchange(addr, request()).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
        connection.release();
        assert_eq!(
            connections
                .thread()
                .lock()
                .iter()
                .map(|list| list.connections.len())
                .sum::<usize>(),
            0
        );
    }
}
