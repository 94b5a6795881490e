//! A small RPC protocol over mutual-TLS connections.
//!
//! Wire format: each message is a 4-byte big-endian length followed by that many bytes of
//! postcard. A request names a method as `service.method` (for example `cluster.nodes`);
//! the [`Router`] hands it to the [`Handler`] registered for the service. Requests on one
//! connection are answered in order; callers that want concurrency open more connections,
//! or use the multiplexed streams of [`crate::mux`] on the same port.
//!
//! Everything a peer sends is bounded: frame sizes (smaller for anonymous peers), the time
//! to finish a TLS handshake, to send a whole request, to stay idle, and the number of
//! connections served at once. A peer that breaks a bound gets an error frame where one
//! can still be sent and is disconnected; the agent carries on.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_util::Shutdown;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::StartHandshake;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

use crate::identity::Caller;
use crate::mux::bulk_threads::bulk_threads;
use crate::mux::{MUX_ALPN, MUX_BULK_ALPN, MuxLimits, RPC_ALPN, StreamRouter};
use crate::tls::CLUSTER_SERVER_NAME;

/// Bounds a server applies to every connection.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Largest request from an authenticated member or admin.
    pub max_frame: u32,
    /// Largest request from a peer without a certificate (a join request is ~1 KiB).
    pub max_anonymous_frame: u32,
    pub handshake_timeout: Duration,
    /// Time allowed to deliver a whole request once its first byte arrived.
    pub request_timeout: Duration,
    /// Time a connection may sit without a request before it is closed.
    pub idle_timeout: Duration,
    /// Time a handler may take before the caller gets a timeout error.
    pub handler_timeout: Duration,
}

/// [`ServerLimits::max_frame`] by default: the largest request a member may send.
pub const MAX_MEMBER_FRAME: u32 = 16 * 1024 * 1024;

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 512,
            max_frame: MAX_MEMBER_FRAME,
            max_anonymous_frame: 16 * 1024,
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            handler_timeout: Duration::from_secs(30),
        }
    }
}

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request could not be decoded or failed validation.
    BadRequest,
    /// The caller may not call this method (no or wrong credential).
    Unauthorized,
    /// The request was understood and refused (a wrong join token, a taken name).
    Refused,
    /// No such service or method.
    NotFound,
    /// The request is larger than the server accepts.
    TooLarge,
    /// The server cannot serve it right now (shutting down, no quorum, ...).
    Unavailable,
    /// The handler did not finish in time.
    Timeout,
    /// A bug or I/O failure on the server.
    Internal,
    /// What the request would create exists already (a file, a volume).
    AlreadyExists,
    /// A directory that must be empty is not.
    NotEmpty,
    /// The path names a file where a directory is needed, or the reverse.
    WrongType,
    /// No room left to store it.
    Full,
}

/// An error returned by a remote handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RpcError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RpcError {
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

#[derive(Serialize, Deserialize)]
struct RequestFrame {
    method: String,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
enum ResponseFrame {
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    Err(RpcError),
}

/// A request as a handler sees it.
pub struct Request<'a> {
    pub caller: &'a Caller,
    pub peer_address: SocketAddr,
    /// The part after the service name: `nodes` for `cluster.nodes`.
    pub method: &'a str,
    pub body: &'a [u8],
}

impl Request<'_> {
    /// Decodes the body, turning malformed input into a clear `BadRequest`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        postcard::from_bytes(self.body).map_err(|error| {
            RpcError::bad_request(format!("malformed {} request: {error}", self.method))
        })
    }

    /// Refuses callers without a cluster certificate.
    pub fn require_authenticated(&self) -> Result<(), RpcError> {
        if self.caller.is_authenticated() {
            Ok(())
        } else {
            Err(RpcError::new(
                ErrorKind::Unauthorized,
                "this method needs a cluster certificate",
            ))
        }
    }
}

/// Encodes a handler's reply.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RpcError> {
    postcard::to_allocvec(value)
        .map_err(|error| RpcError::internal(format!("could not encode the reply: {error}")))
}

/// A service: one per subsystem (`cluster`, later `meta`, `lb`, ...).
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError>;
}

/// Maps `service.method` names to handlers and says which methods anonymous peers may use.
#[derive(Default)]
pub struct Router {
    services: HashMap<String, Arc<dyn Handler>>,
    anonymous_methods: HashSet<String>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, service: &str, handler: Arc<dyn Handler>) {
        self.services.insert(service.to_string(), handler);
    }

    /// Lets peers without a certificate call `service.method` (only the join).
    pub fn open_to_anonymous(&mut self, full_method: &str) {
        self.anonymous_methods.insert(full_method.to_string());
    }

    pub(crate) async fn dispatch(
        &self,
        caller: &Caller,
        peer_address: SocketAddr,
        full_method: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, RpcError> {
        if !caller.is_authenticated() && !self.anonymous_methods.contains(full_method) {
            return Err(RpcError::new(
                ErrorKind::Unauthorized,
                format!("{full_method} needs a cluster certificate"),
            ));
        }
        let (service, method) = full_method.split_once('.').unwrap_or((full_method, ""));
        let handler = self.services.get(service).ok_or_else(|| {
            RpcError::new(ErrorKind::NotFound, format!("no service named {service:?}"))
        })?;
        handler
            .handle(Request {
                caller,
                peer_address,
                method,
                body,
            })
            .await
    }
}

/// Logging budget for events a hostile peer can trigger at will (failed handshakes,
/// oversized frames, refused joins): at most `PER_WINDOW` lines every ten seconds, so
/// garbage cannot flood the disk through the log. Services use it for their own refusals.
pub fn noisy_event_may_log() -> bool {
    const PER_WINDOW: u64 = 20;
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let now = bramble_util::time::unix_millis() / 10_000;
    if WINDOW.swap(now, Ordering::Relaxed) != now {
        COUNT.store(0, Ordering::Relaxed);
    }
    COUNT.fetch_add(1, Ordering::Relaxed) < PER_WINDOW
}

/// Serves RPC on `listener` until `shutdown` fires. Each connection runs in its own task
/// which also watches `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Arc<Router>,
    limits: ServerLimits,
    shutdown: Shutdown,
) {
    serve_listener(listener, tls, router, None, limits, shutdown).await;
}

/// Serves RPC and the multiplexed streams of [`crate::mux`] on the same `listener`. The
/// TLS handshake tells them apart by ALPN: a client offering `bramble-mux/1` gets the mux
/// (members and admins only), every other client (`bramble-rpc/1`, or no ALPN as older
/// clients send) the framed RPC exactly as [`serve`] does. Both share the connection
/// limit and the handshake timeout of `limits`. A client offering `bramble-mux-bulk/1` gets
/// the mux too, handed to one of the process's [`crate::mux::bulk_threads`] as soon as its
/// ClientHello is read (the socket, the rest of the handshake, the encryption and the
/// handlers all live there), so that bulk traffic never holds up the control plane.
pub async fn serve_with_streams(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Arc<Router>,
    streams: Arc<StreamRouter>,
    limits: ServerLimits,
    mux_limits: MuxLimits,
    shutdown: Shutdown,
) {
    let mut config = (*tls).clone();
    config.alpn_protocols = vec![MUX_ALPN.to_vec(), MUX_BULK_ALPN.to_vec(), RPC_ALPN.to_vec()];
    let mux = MuxService {
        router: streams,
        limits: mux_limits.sanitized(),
    };
    serve_listener(
        listener,
        Arc::new(config),
        router,
        Some(Arc::new(mux)),
        limits,
        shutdown,
    )
    .await;
}

/// The mux side of a listener that serves both protocols.
struct MuxService {
    router: Arc<StreamRouter>,
    limits: MuxLimits,
}

async fn serve_listener(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Arc<Router>,
    mux: Option<Arc<MuxService>>,
    limits: ServerLimits,
    mut shutdown: Shutdown,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let limits = Arc::new(limits);
    loop {
        let (stream, peer_address) = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(%error, "accepting an RPC connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if noisy_event_may_log() {
                warn!(peer = %peer_address, limit = limits.max_connections, "too many RPC connections; closing a new one");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let mux = mux.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(
                stream,
                peer_address,
                acceptor,
                router,
                mux,
                limits,
                shutdown,
            )
            .await;
            drop(permit);
        });
    }
    debug!("RPC listener stopped");
}

async fn serve_connection(
    stream: TcpStream,
    peer_address: SocketAddr,
    acceptor: TlsAcceptor,
    router: Arc<Router>,
    mux: Option<Arc<MuxService>>,
    limits: Arc<ServerLimits>,
    shutdown: Shutdown,
) {
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    let Some(mux) = mux else {
        let accepted = tokio::time::timeout_at(deadline, acceptor.accept(stream)).await;
        if let Some(stream) = handshake_outcome(accepted, peer_address) {
            let caller = caller_of(&stream);
            serve_requests(stream, peer_address, caller, router, limits, shutdown).await;
        }
        return;
    };
    // The ClientHello first: a bulk connection is handed to a bulk thread before the rest
    // of its handshake, so that its socket is registered there and this runtime never
    // hears of its traffic.
    let hello = tokio::time::timeout_at(
        deadline,
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream),
    )
    .await;
    let start = match hello {
        Ok(Ok(start)) => start,
        Ok(Err(error)) => {
            if noisy_event_may_log() {
                info!(peer = %peer_address, %error, "refused a connection: no valid TLS ClientHello");
            }
            return;
        }
        Err(_) => {
            if noisy_event_may_log() {
                info!(peer = %peer_address, "refused a connection: no TLS handshake in time");
            }
            return;
        }
    };
    let wants_bulk = start
        .client_hello()
        .alpn()
        .is_some_and(|mut offered| offered.any(|protocol| protocol == MUX_BULK_ALPN));
    let config = acceptor.config().clone();
    if wants_bulk {
        let accepted = start.accepted;
        let socket = match start.io.into_std() {
            Ok(socket) => socket,
            Err(error) => {
                warn!(peer = %peer_address, %error, "could not hand a bulk connection over");
                return;
            }
        };
        // Awaited here so the connection keeps its slot among `max_connections` for as
        // long as it runs on the bulk thread.
        let _ = bulk_threads()
            .spawn(async move {
                let socket = match TcpStream::from_std(socket) {
                    Ok(socket) => socket,
                    Err(error) => {
                        warn!(peer = %peer_address, %error, "could not adopt a bulk connection");
                        return;
                    }
                };
                let handshake = StartHandshake::from_parts(accepted, socket).into_stream(config);
                let finished = tokio::time::timeout_at(deadline, handshake).await;
                let Some(stream) = handshake_outcome(finished, peer_address) else {
                    return;
                };
                let caller = caller_of(&stream);
                crate::mux::server::serve_connection(
                    stream,
                    peer_address,
                    caller,
                    mux.router.clone(),
                    mux.limits.clone(),
                    shutdown,
                )
                .await;
            })
            .await;
        return;
    }
    let finished = tokio::time::timeout_at(deadline, start.into_stream(config)).await;
    let Some(stream) = handshake_outcome(finished, peer_address) else {
        return;
    };
    let caller = caller_of(&stream);
    if stream.get_ref().1.alpn_protocol() == Some(MUX_ALPN) {
        crate::mux::server::serve_connection(
            stream,
            peer_address,
            caller,
            mux.router.clone(),
            mux.limits.clone(),
            shutdown,
        )
        .await;
        return;
    }
    serve_requests(stream, peer_address, caller, router, limits, shutdown).await;
}

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// The stream of a finished handshake; a failed or late one is logged (rate-limited) and
/// the connection dropped.
fn handshake_outcome(
    outcome: Result<std::io::Result<ServerTls>, tokio::time::error::Elapsed>,
    peer_address: SocketAddr,
) -> Option<ServerTls> {
    match outcome {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            if noisy_event_may_log() {
                info!(peer = %peer_address, %error, "refused a connection: TLS handshake failed");
            }
            None
        }
        Err(_) => {
            if noisy_event_may_log() {
                info!(peer = %peer_address, "refused a connection: no TLS handshake in time");
            }
            None
        }
    }
}

fn caller_of(stream: &ServerTls) -> Caller {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(Caller::from_verified_certificate)
        .unwrap_or(Caller::Anonymous)
}

/// The RPC request loop of one connection: one request, one reply, in order.
async fn serve_requests(
    mut stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer_address: SocketAddr,
    caller: Caller,
    router: Arc<Router>,
    limits: Arc<ServerLimits>,
    mut shutdown: Shutdown,
) {
    let frame_limit = if caller.is_authenticated() {
        limits.max_frame
    } else {
        limits.max_anonymous_frame
    };
    // An anonymous peer (a joining node) sends its one request right after the handshake;
    // letting it idle for the full idle timeout would let a few hundred silent connections
    // hold every slot and lock members out.
    let idle_timeout = if caller.is_authenticated() {
        limits.idle_timeout
    } else {
        limits.handshake_timeout
    };
    loop {
        let length = tokio::select! {
            _ = shutdown.wait() => return,
            read = tokio::time::timeout(idle_timeout, stream.read_u32()) => match read {
                Ok(Ok(length)) => length,
                // Closed, reset, or idle too long: nothing to answer.
                _ => return,
            },
        };
        if length > frame_limit {
            if noisy_event_may_log() {
                info!(peer = %peer_address, %caller, length, limit = frame_limit, "refused an oversized request");
            }
            let error = RpcError::new(
                ErrorKind::TooLarge,
                format!("a request of {length} bytes exceeds the {frame_limit}-byte limit"),
            );
            let _ = write_frame(&mut stream, &ResponseFrame::Err(error)).await;
            return;
        }
        let mut body = vec![0u8; length as usize];
        match tokio::time::timeout(limits.request_timeout, stream.read_exact(&mut body)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let response = match postcard::from_bytes::<RequestFrame>(&body) {
            Err(error) => {
                let error = RpcError::bad_request(format!("malformed request frame: {error}"));
                let _ = write_frame(&mut stream, &ResponseFrame::Err(error)).await;
                return;
            }
            Ok(request) => {
                let outcome = tokio::time::timeout(
                    limits.handler_timeout,
                    router.dispatch(&caller, peer_address, &request.method, &request.body),
                )
                .await;
                match outcome {
                    Ok(Ok(reply)) => ResponseFrame::Ok(reply),
                    Ok(Err(error)) => ResponseFrame::Err(error),
                    Err(_) => ResponseFrame::Err(RpcError::new(
                        ErrorKind::Timeout,
                        format!("{} did not finish in time", request.method),
                    )),
                }
            }
        };
        if write_frame(&mut stream, &response).await.is_err() {
            return;
        }
        if !caller.is_authenticated() {
            // An anonymous peer gets one request per connection.
            let _ = stream.shutdown().await;
            return;
        }
    }
}

async fn write_frame<S: AsyncWrite + Unpin, T: Serialize>(
    stream: &mut S,
    value: &T,
) -> std::io::Result<()> {
    // Serialized once, straight after room for its length: a Raft append to a follower
    // that has stopped reading stays in memory until it times out, and a second copy of
    // it doubled what a leader held for every such follower.
    let mut buffer = postcard::to_extend(value, vec![0u8; 4]).map_err(std::io::Error::other)?;
    let length = u32::try_from(buffer.len() - 4).map_err(std::io::Error::other)?;
    buffer[..4].copy_from_slice(&length.to_be_bytes());
    stream.write_all(&buffer).await?;
    stream.flush().await
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S, limit: u32) -> Result<Vec<u8>, String> {
    let length = stream
        .read_u32()
        .await
        .map_err(|error| describe_read_error(&error))?;
    if length > limit {
        return Err(format!(
            "the reply of {length} bytes exceeds the {limit}-byte limit"
        ));
    }
    let mut body = vec![0u8; length as usize];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|error| describe_read_error(&error))?;
    Ok(body)
}

fn describe_read_error(error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        "the connection was closed before a reply arrived".to_string()
    } else {
        error.to_string()
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("could not connect to {address}: {source}")]
    Connect {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {address} failed: {message}")]
    Tls {
        address: SocketAddr,
        message: String,
    },
    #[error("{address} did not answer within {after:?}")]
    Timeout {
        address: SocketAddr,
        after: Duration,
    },
    #[error("talking to {address} failed: {message}")]
    Transport {
        address: SocketAddr,
        message: String,
    },
    #[error("{address} answered with a reply that could not be decoded: {message}")]
    Decode {
        address: SocketAddr,
        message: String,
    },
    #[error("{address}: {error}")]
    Remote {
        address: SocketAddr,
        error: RpcError,
    },
}

impl CallError {
    /// The remote error, if the server answered with one.
    pub fn remote(&self) -> Option<&RpcError> {
        match self {
            CallError::Remote { error, .. } => Some(error),
            _ => None,
        }
    }

    /// True when the peer could not be reached at all (down, stopped or unreachable), as
    /// opposed to a peer that answered with an error.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            CallError::Connect { .. } | CallError::Timeout { .. } | CallError::Transport { .. }
        )
    }
}

/// Makes RPC connections with one TLS configuration (a member's, an admin's, or a joining
/// node's pinned-CA configuration).
#[derive(Clone)]
pub struct RpcClient {
    tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
    pub max_reply: u32,
    /// Idle connections kept by [`RpcClient::call_reusing`], shared by clones.
    idle: Arc<Mutex<IdleConnections>>,
}

/// Connections kept for reuse, by address, with when each went idle.
type IdleConnections = HashMap<SocketAddr, Vec<(Connection, Instant)>>;

/// Idle connections [`RpcClient::call_reusing`] keeps per address.
const IDLE_PER_ADDRESS: usize = 4;
/// How long an idle connection is kept: well under the server's idle timeout (120 s), so
/// a kept connection is rarely one the server has just closed.
const KEEP_IDLE: Duration = Duration::from_secs(30);

impl fmt::Debug for RpcClient {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RpcClient")
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        RpcClient {
            tls,
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(10),
            max_reply: 64 * 1024 * 1024,
            idle: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn with_timeouts(mut self, connect: Duration, call: Duration) -> Self {
        self.connect_timeout = connect;
        self.call_timeout = call;
        self
    }

    /// Opens a connection (TCP + TLS handshake), bounded by the connect timeout.
    pub async fn connect(&self, address: SocketAddr) -> Result<Connection, CallError> {
        let timeout = self.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| CallError::Timeout {
                address,
                after: timeout,
            })?
            .map_err(|source| CallError::Connect { address, source })?;
        let _ = stream.set_nodelay(true);
        let server_name =
            rustls_pki_types::ServerName::try_from(CLUSTER_SERVER_NAME).map_err(|error| {
                CallError::Tls {
                    address,
                    message: error.to_string(),
                }
            })?;
        let connector = TlsConnector::from(self.tls.clone());
        let stream = tokio::time::timeout(timeout, connector.connect(server_name, stream))
            .await
            .map_err(|_| CallError::Timeout {
                address,
                after: timeout,
            })?
            .map_err(|error| CallError::Tls {
                address,
                message: error.to_string(),
            })?;
        Ok(Connection {
            stream,
            address,
            call_timeout: self.call_timeout,
            max_reply: self.max_reply,
            exchange_in_progress: false,
        })
    }

    /// Connects, makes one call, and closes.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        address: SocketAddr,
        method: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        self.connect(address).await?.call(method, request).await
    }

    /// Makes one call on an idle connection to `address` kept from an earlier call, or on
    /// a new one, and keeps the connection afterwards. For hot paths (a follower forwards
    /// the VIP lease renewals to the leader several times a second): a TLS handshake per
    /// call costs CPU and round trips that a loaded board cannot spare. A connection that
    /// fails, or whose call is cancelled, is dropped, never reused.
    pub async fn call_reusing<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        address: SocketAddr,
        method: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        let kept = self.take_idle(address);
        let mut connection = match kept {
            Some(connection) => connection,
            None => self.connect(address).await?,
        };
        let outcome = connection.call(method, request).await;
        // A remote error is an answer: the exchange completed and the connection is fine.
        if matches!(outcome, Ok(_) | Err(CallError::Remote { .. })) {
            self.keep_idle(connection);
        }
        outcome
    }

    /// An idle connection to `address` kept from an earlier exchange, if any.
    pub fn take_idle(&self, address: SocketAddr) -> Option<Connection> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let kept = idle.get_mut(&address)?;
        while let Some((connection, since)) = kept.pop() {
            if since.elapsed() < KEEP_IDLE {
                return Some(connection);
            }
        }
        None
    }

    /// Keeps a connection whose last exchange completed, for a later call to reuse.
    pub fn keep_idle(&self, connection: Connection) {
        if connection.exchange_in_progress {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let kept = idle.entry(connection.address).or_default();
        kept.retain(|(_, since)| since.elapsed() < KEEP_IDLE);
        if kept.len() < IDLE_PER_ADDRESS {
            kept.push((connection, Instant::now()));
        }
    }
}

/// An open connection to one agent; calls on it run one after another.
pub struct Connection {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    address: SocketAddr,
    call_timeout: Duration,
    max_reply: u32,
    /// Set while a call is between sending its request and reading its reply. If a call
    /// is cancelled (its future dropped) in that window, the reply is still on its way, and
    /// the connection must not be used again: the next call would read it as its own.
    exchange_in_progress: bool,
}

impl Connection {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        let address = self.address;
        if self.exchange_in_progress {
            return Err(CallError::Transport {
                address,
                message: "an earlier call on this connection was cancelled mid-exchange; open a new connection".to_string(),
            });
        }
        let body = postcard::to_allocvec(request).map_err(|error| CallError::Transport {
            address,
            message: format!("could not encode the request: {error}"),
        })?;
        let frame = RequestFrame {
            method: method.to_string(),
            body,
        };
        let timeout = self.call_timeout;
        self.exchange_in_progress = true;
        let exchange = async {
            write_frame(&mut self.stream, &frame)
                .await
                .map_err(|error| describe_read_error(&error))?;
            read_frame(&mut self.stream, self.max_reply).await
        };
        let reply = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout {
                address,
                after: timeout,
            })?
            .map_err(|message| CallError::Transport { address, message })?;
        self.exchange_in_progress = false;
        let response: ResponseFrame =
            postcard::from_bytes(&reply).map_err(|error| CallError::Decode {
                address,
                message: error.to_string(),
            })?;
        match response {
            ResponseFrame::Ok(body) => {
                postcard::from_bytes(&body).map_err(|error| CallError::Decode {
                    address,
                    message: error.to_string(),
                })
            }
            ResponseFrame::Err(error) => Err(CallError::Remote { address, error }),
        }
    }
}
