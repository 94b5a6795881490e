//! The client side of the mux: [`MuxClient`] keeps one connection per peer address and
//! priority class and opens streams on it; [`MuxConnection`] is one such connection.
//!
//! Bulk streams get a connection of their own (ALPN `bramble-mux-bulk/1`) that runs on the
//! process's [`crate::mux::bulk_threads`], from the TCP connect on, so that decrypting a
//! download or encrypting an upload never delays a control call, which takes the
//! control connection on the caller's runtime. Separate connections also keep bulk bytes
//! queued in socket buffers out of a control frame's way.
//!
//! A call is a stream: [`MuxConnection::open`] returns the request body's
//! [`BodySender`] and a [`ResponseReceiver`]; the response is a header and a
//! [`BodyReader`]. [`MuxConnection::call`] wraps that for small unary calls (postcard
//! request in, postcard reply out), the shape of today's RPC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bramble_util::Shutdown;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::mux::body::{BodyReader, BodySender};
use crate::mux::bulk_threads::bulk_threads;
use crate::mux::connection::{self, Inbound, Shared, Side};
use crate::mux::frame::Priority;
use crate::mux::{MUX_ALPN, MUX_BULK_ALPN, MuxError, MuxLimits};
use crate::tls::CLUSTER_SERVER_NAME;

/// Connections (peer and class) a client keeps; beyond it, slots of closed connections are
/// forgotten. A cluster of boards has far fewer members.
const MAX_KEPT_CONNECTIONS: usize = 2048;

/// How long a client keeps a connection without streams: half the server's default.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A response: the header the handler sent and its body.
#[derive(Debug)]
pub struct Response {
    pub header: Vec<u8>,
    pub body: BodyReader,
}

/// The pending response of a stream.
#[derive(Debug)]
pub struct ResponseReceiver {
    body: BodyReader,
    timeout: Duration,
}

impl ResponseReceiver {
    /// Waits for the response header (up to the stream idle timeout). A handler error
    /// arrives here as [`MuxError::Remote`].
    pub async fn wait(self) -> Result<Response, MuxError> {
        let mut body = self.body;
        match body.next_inbound(self.timeout).await? {
            Inbound::Head(header) => Ok(Response {
                header: header.to_vec(),
                body,
            }),
            Inbound::Data(_) | Inbound::End | Inbound::Reset(_) => Err(MuxError::Protocol(
                "the response began without a Head".to_string(),
            )),
        }
    }
}

/// One mux connection to a peer. Cheap to clone; every clone opens streams on the same
/// connection, which stays up until it idles out, either side closes it, or shutdown.
#[derive(Debug, Clone)]
pub struct MuxConnection {
    shared: Arc<Shared>,
}

impl MuxConnection {
    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Streams open on this connection right now.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams()
    }

    /// Closes the connection; every stream on it fails.
    pub fn close(&self) {
        self.shared.close("closed by the client", true);
    }

    /// Opens a stream to `method` with a request `header` (at most a frame's payload with
    /// the method name). Waits for a free stream slot if `max_client_streams` are open.
    /// Send the request body with the returned sender and `finish` it; wait for the
    /// response with the receiver (both may run concurrently).
    pub async fn open(
        &self,
        method: &str,
        header: &[u8],
        priority: Priority,
    ) -> Result<(BodySender, ResponseReceiver), MuxError> {
        let (sender, body) = self.shared.open_stream(method, header, priority).await?;
        Ok((
            sender,
            ResponseReceiver {
                body,
                timeout: self.shared.limits.stream_idle_timeout,
            },
        ))
    }

    /// A unary call with raw bytes: sends `request` as the body, returns the whole
    /// response body (at most `max_reply` bytes) within `timeout`.
    pub async fn call_bytes(
        &self,
        method: &str,
        request: Bytes,
        priority: Priority,
        max_reply: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, MuxError> {
        let exchange = async {
            let (mut sender, response) = self.open(method, &[], priority).await?;
            let sent = match sender.send(request).await {
                Ok(()) => sender.finish().await,
                Err(error) => Err(error),
            };
            match sent {
                // The handler answered without reading everything (or before the end
                // arrived); its answer is what counts.
                Ok(()) | Err(MuxError::Stopped) => {}
                Err(error) => return Err(error),
            }
            let mut response = response.wait().await?;
            response.body.read_to_end(max_reply).await
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| MuxError::Timeout(timeout))?
    }

    /// A unary call: `request` and the reply are postcard, like [`crate::RpcClient`].
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        request: &Req,
        priority: Priority,
        max_reply: usize,
        timeout: Duration,
    ) -> Result<Resp, MuxError> {
        let body = postcard::to_allocvec(request)
            .map_err(|error| MuxError::Decode(format!("could not encode the request: {error}")))?;
        let reply = self
            .call_bytes(method, Bytes::from(body), priority, max_reply, timeout)
            .await?;
        postcard::from_bytes(&reply).map_err(|error| MuxError::Decode(error.to_string()))
    }
}

/// Makes mux connections with one TLS configuration (a member's or an admin's) and keeps
/// one per peer address and priority class.
#[derive(Clone)]
pub struct MuxClient {
    tls: Arc<rustls::ClientConfig>,
    /// The same configuration offering `bramble-mux-bulk/1`.
    tls_bulk: Arc<rustls::ClientConfig>,
    limits: MuxLimits,
    pub connect_timeout: Duration,
    /// Bound of a whole unary call ([`MuxClient::call`]).
    pub call_timeout: Duration,
    /// Largest unary reply accepted.
    pub max_reply: usize,
    kept: Arc<Mutex<HashMap<(SocketAddr, Priority), KeptSlot>>>,
    shutdown: Shutdown,
}

/// The kept connection to one address; the async lock makes concurrent callers share one
/// dial instead of racing several.
type KeptSlot = Arc<tokio::sync::Mutex<Option<MuxConnection>>>;

impl std::fmt::Debug for MuxClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MuxClient")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl MuxClient {
    /// A client over `tls` (offering ALPN `bramble-mux/1`); its connections' tasks end
    /// when `shutdown` fires.
    pub fn new(tls: Arc<rustls::ClientConfig>, shutdown: Shutdown) -> Self {
        let mut config = (*tls).clone();
        config.alpn_protocols = vec![MUX_ALPN.to_vec()];
        let mut bulk_config = (*tls).clone();
        bulk_config.alpn_protocols = vec![MUX_BULK_ALPN.to_vec()];
        MuxClient {
            tls: Arc::new(config),
            tls_bulk: Arc::new(bulk_config),
            // Idle connections are closed by the client well before the server's idle
            // timeout, so a call is rarely opened on a connection the server is closing.
            limits: MuxLimits {
                connection_idle_timeout: CLIENT_IDLE_TIMEOUT,
                ..MuxLimits::default()
            },
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(10),
            max_reply: 64 * 1024 * 1024,
            kept: Arc::new(Mutex::new(HashMap::new())),
            shutdown,
        }
    }

    /// Replaces the client's limits (sanitized); keep `max_frame_payload` at or below the
    /// server's, which refuses larger frames.
    pub fn with_limits(mut self, limits: MuxLimits) -> Self {
        self.limits = limits.sanitized();
        self
    }

    /// Opens a new control connection (TCP, TLS with ALPN), bounded by the connect
    /// timeout. Fails if the server does not speak the mux (an agent that predates it).
    pub async fn connect(&self, address: SocketAddr) -> Result<MuxConnection, MuxError> {
        self.connect_class(address, Priority::Control).await
    }

    /// Opens a new connection for streams of `class`: a bulk connection is made and run
    /// on a bulk thread (see the module's comment).
    pub async fn connect_class(
        &self,
        address: SocketAddr,
        class: Priority,
    ) -> Result<MuxConnection, MuxError> {
        match class {
            Priority::Control => self.dial(address, &self.tls, MUX_ALPN).await,
            Priority::Bulk => {
                let client = self.clone();
                bulk_threads()
                    .spawn(
                        async move { client.dial(address, &client.tls_bulk, MUX_BULK_ALPN).await },
                    )
                    .await
                    .map_err(|error| {
                        MuxError::LocalIo(format!("the bulk thread failed: {error}"))
                    })?
            }
        }
    }

    async fn dial(
        &self,
        address: SocketAddr,
        tls: &Arc<rustls::ClientConfig>,
        alpn: &[u8],
    ) -> Result<MuxConnection, MuxError> {
        let timeout = self.connect_timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| MuxError::Connect {
                address,
                message: format!("no answer within {timeout:?}"),
            })?
            .map_err(|error| MuxError::Connect {
                address,
                message: error.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let server_name =
            rustls_pki_types::ServerName::try_from(CLUSTER_SERVER_NAME).map_err(|error| {
                MuxError::Tls {
                    address,
                    message: error.to_string(),
                }
            })?;
        let connector = TlsConnector::from(tls.clone());
        let stream = tokio::time::timeout(timeout, connector.connect(server_name, tcp))
            .await
            .map_err(|_| MuxError::Tls {
                address,
                message: format!("no handshake within {timeout:?}"),
            })?
            .map_err(|error| MuxError::Tls {
                address,
                message: error.to_string(),
            })?;
        if stream.get_ref().1.alpn_protocol() != Some(alpn) {
            return Err(MuxError::Tls {
                address,
                message: format!(
                    "the server does not offer {}",
                    String::from_utf8_lossy(alpn)
                ),
            });
        }
        let (shared, read_half) = connection::start(
            stream,
            address,
            Side::Client,
            self.limits.clone(),
            self.shutdown.clone(),
        );
        let reader_shared = shared.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // A server never opens streams; `read_frames` refuses an `Open` itself.
            connection::read_frames(&reader_shared, read_half, shutdown, |_| {}).await;
        });
        Ok(MuxConnection { shared })
    }

    /// The kept control connection to `address`, dialled if there is none or it has
    /// closed.
    pub async fn connection(&self, address: SocketAddr) -> Result<MuxConnection, MuxError> {
        self.connection_for(address, Priority::Control).await
    }

    /// The kept connection to `address` for streams of `class`, dialled if there is none
    /// or it has closed.
    pub async fn connection_for(
        &self,
        address: SocketAddr,
        class: Priority,
    ) -> Result<MuxConnection, MuxError> {
        let key = (address, class);
        let slot = {
            let mut kept = self
                .kept
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if kept.len() >= MAX_KEPT_CONNECTIONS && !kept.contains_key(&key) {
                kept.retain(|_, slot| match slot.try_lock() {
                    Ok(connection) => connection.as_ref().is_some_and(|c| !c.is_closed()),
                    Err(_) => true,
                });
            }
            kept.entry(key).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref()
            && !connection.is_closed()
        {
            return Ok(connection.clone());
        }
        let connection = self.connect_class(address, class).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Opens a stream on the kept connection to `address` for its `priority` class (see
    /// [`MuxConnection::open`]). If the kept connection turns out to be closed, dials once
    /// more.
    pub async fn open(
        &self,
        address: SocketAddr,
        method: &str,
        header: &[u8],
        priority: Priority,
    ) -> Result<(BodySender, ResponseReceiver), MuxError> {
        let connection = self.connection_for(address, priority).await?;
        match connection.open(method, header, priority).await {
            Err(MuxError::ConnectionClosed { .. }) => {
                self.connection_for(address, priority)
                    .await?
                    .open(method, header, priority)
                    .await
            }
            outcome => outcome,
        }
    }

    /// A unary call on the kept connection to `address` for its `priority` class (see
    /// [`MuxConnection::call`]), bounded by `call_timeout` and `max_reply`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        address: SocketAddr,
        method: &str,
        request: &Req,
        priority: Priority,
    ) -> Result<Resp, MuxError> {
        let connection = self.connection_for(address, priority).await?;
        connection
            .call(method, request, priority, self.max_reply, self.call_timeout)
            .await
    }
}
