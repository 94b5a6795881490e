//! The server side of a mux connection: the [`StreamHandler`] trait that streaming
//! services implement, the [`StreamRouter`] that maps `service.method` names to them (and
//! can serve the unary [`crate::rpc::Handler`]s of an RPC [`Router`] as well), and the
//! loop that runs one handler task per stream a peer opens.
//!
//! Only members and admins reach the mux: a peer without a client certificate gets a
//! `GoAway` right after the handshake. Joining nodes use the framed RPC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bramble_util::Shutdown;
use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::info;

use crate::identity::Caller;
use crate::mux::body::{BodyReader, BodySender, SendCredit};
use crate::mux::connection::{self, OpenedStream, Shared, Side};
use crate::mux::frame::{Frame, FrameKind, Priority};
use crate::mux::{MuxError, MuxLimits};
use crate::rpc::{ErrorKind, Router, RpcError, noisy_event_may_log};

/// A stream a peer opened, as a handler sees it.
#[derive(Debug)]
pub struct IncomingCall {
    pub caller: Caller,
    pub peer_address: SocketAddr,
    /// The full `service.method` name.
    pub method: String,
    /// The request header the caller sent with the open (method-specific bytes).
    pub header: Vec<u8>,
    pub priority: Priority,
    /// The request body, in chunks.
    pub body: BodyReader,
}

impl IncomingCall {
    /// The part after the service name: `get` for `blocks.get`.
    pub fn method_name(&self) -> &str {
        self.method
            .split_once('.')
            .map(|(_, method)| method)
            .unwrap_or("")
    }

    /// Decodes the request header (postcard), turning malformed input into `BadRequest`.
    pub fn decode_header<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        postcard::from_bytes(&self.header).map_err(|error| {
            RpcError::bad_request(format!("malformed {} request header: {error}", self.method))
        })
    }
}

/// Where a handler writes its response: a header, then a body.
#[derive(Debug)]
pub struct ResponseWriter {
    shared: Arc<Shared>,
    id: u32,
    priority: Priority,
    credit: Arc<SendCredit>,
    progress: Arc<ResponseProgress>,
}

/// What the handler did with its response, read by the task that ran it.
#[derive(Debug, Default)]
struct ResponseProgress {
    started: AtomicBool,
    /// The body sender was dropped without `finish`.
    abandoned: Arc<AtomicBool>,
}

impl ResponseWriter {
    /// Sends the response header and returns the sender of the response body, which the
    /// handler must [`BodySender::finish`].
    pub async fn start(self, header: &[u8]) -> Result<BodySender, MuxError> {
        if header.len() > self.shared.limits.max_frame_payload as usize {
            return Err(MuxError::TooLarge(format!(
                "a response header of {} bytes exceeds the {}-byte frame limit",
                header.len(),
                self.shared.limits.max_frame_payload
            )));
        }
        self.credit.check_open()?;
        let sender = BodySender::new(
            self.shared.clone(),
            self.id,
            self.priority,
            self.credit.clone(),
        )
        .report_drop_to(self.progress.abandoned.clone());
        self.progress.started.store(true, Ordering::Release);
        self.shared.queue(Frame::new(
            self.id,
            FrameKind::Head,
            self.priority,
            Bytes::copy_from_slice(header),
        ));
        Ok(sender)
    }

    /// Sends a whole small response: the header, then `body`, then the end.
    pub async fn send_all(self, header: &[u8], body: Bytes) -> Result<(), MuxError> {
        let mut sender = self.start(header).await?;
        sender.send(body).await?;
        sender.finish().await
    }
}

/// A streaming service: one per subsystem that moves bulk data (blocks, logs, ...).
#[async_trait::async_trait]
pub trait StreamHandler: Send + Sync + 'static {
    /// Serves one stream. An `Err` resets the stream with that error (the caller reads
    /// it as [`MuxError::Remote`]); `Ok` without a response sends an empty one.
    async fn handle(&self, call: IncomingCall, response: ResponseWriter) -> Result<(), RpcError>;

    /// Whether `method` (the part after the service name) is one of its streams. A
    /// service with both unary methods (in the RPC [`Router`]) and streams answers false
    /// for the unary ones, which the router then serves through its unary fallback.
    fn streams(&self, _method: &str) -> bool {
        true
    }
}

/// Maps `service.method` names to streaming handlers, and optionally falls back to the
/// unary handlers of an RPC [`Router`] (the whole request read first, bounded by
/// [`MuxLimits::max_unary_request`], the reply sent as the response body), so existing
/// services are reachable over the mux without change.
#[derive(Default)]
pub struct StreamRouter {
    services: HashMap<String, Arc<dyn StreamHandler>>,
    unary: Option<Arc<Router>>,
}

impl StreamRouter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, service: &str, handler: Arc<dyn StreamHandler>) {
        self.services.insert(service.to_string(), handler);
    }

    /// Serves every service of `router` not registered here as a streaming service.
    pub fn serve_unary_from(&mut self, router: Arc<Router>) {
        self.unary = Some(router);
    }

    async fn dispatch(
        &self,
        limits: &MuxLimits,
        mut call: IncomingCall,
        response: ResponseWriter,
    ) -> Result<(), RpcError> {
        let service = call
            .method
            .split_once('.')
            .map(|(service, _)| service)
            .unwrap_or(&call.method);
        if let Some(handler) = self.services.get(service)
            && handler.streams(call.method_name())
        {
            return handler.handle(call, response).await;
        }
        let Some(router) = &self.unary else {
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!("no streaming service named {service:?}"),
            ));
        };
        let request = call
            .body
            .read_to_end(limits.max_unary_request)
            .await
            .map_err(|error| match error {
                MuxError::TooLarge(message) => RpcError::new(ErrorKind::TooLarge, message),
                other => RpcError::bad_request(format!("reading the request failed: {other}")),
            })?;
        let reply = tokio::time::timeout(
            limits.unary_handler_timeout,
            router.dispatch(&call.caller, call.peer_address, &call.method, &request),
        )
        .await
        .map_err(|_| {
            RpcError::new(
                ErrorKind::Timeout,
                format!("{} did not finish in time", call.method),
            )
        })??;
        response
            .send_all(&[], Bytes::from(reply))
            .await
            .map_err(|error| RpcError::internal(format!("sending the reply failed: {error}")))
    }
}

/// Serves one mux connection whose TLS handshake chose `bramble-mux/1`, until the peer
/// leaves, breaks the protocol, the connection idles out, or `shutdown` fires.
pub(crate) async fn serve_connection<S>(
    mut stream: S,
    peer_address: SocketAddr,
    caller: Caller,
    router: Arc<StreamRouter>,
    limits: MuxLimits,
    shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !caller.is_authenticated() {
        // Joining nodes have the RPC; nothing on the mux is for a peer without a
        // certificate, so it is told so and nothing it sends is read.
        let mut buffer = BytesMut::new();
        Frame::go_away("the mux needs a cluster certificate").encode_into(&mut buffer);
        let _ = tokio::time::timeout(limits.frame_timeout, async {
            stream.write_all(&buffer).await?;
            stream.shutdown().await
        })
        .await;
        if noisy_event_may_log() {
            info!(peer = %peer_address, "refused a mux connection without a certificate");
        }
        return;
    }
    let limits = limits.sanitized();
    let (shared, read_half) = connection::start(
        stream,
        peer_address,
        Side::Server,
        limits.clone(),
        shutdown.clone(),
    );
    let outcome = connection::read_frames(&shared, read_half, shutdown.clone(), |opened| {
        let task = HandlerTask {
            router: router.clone(),
            shared: shared.clone(),
            caller: caller.clone(),
            peer_address,
            shutdown: shutdown.clone(),
        };
        tokio::spawn(task.run(opened));
    })
    .await;
    if let MuxError::Protocol(reason) = &outcome
        && noisy_event_may_log()
    {
        info!(peer = %peer_address, %caller, %reason, "closed a mux connection that broke the protocol");
    }
}

/// What one handler task needs besides its stream.
struct HandlerTask {
    router: Arc<StreamRouter>,
    shared: Arc<Shared>,
    caller: Caller,
    peer_address: SocketAddr,
    shutdown: Shutdown,
}

impl HandlerTask {
    async fn run(mut self, opened: OpenedStream) {
        let OpenedStream {
            id,
            priority,
            open,
            body,
            credit,
        } = opened;
        let progress = Arc::new(ResponseProgress::default());
        let call = IncomingCall {
            caller: self.caller.clone(),
            peer_address: self.peer_address,
            method: open.method,
            header: open.header,
            priority,
            body,
        };
        let response = ResponseWriter {
            shared: self.shared.clone(),
            id,
            priority,
            credit,
            progress: progress.clone(),
        };
        let mut closed = self.shared.closed_signal();
        let limits = self.shared.limits.clone();
        let outcome = tokio::select! {
            // The connection or the agent is going away; dropping the handler is all
            // that is left to do.
            _ = self.shutdown.wait() => return,
            _ = closed.wait() => return,
            outcome = self.router.dispatch(&limits, call, response) => outcome,
        };
        match outcome {
            Err(error) => self.shared.reset_stream(id, &error),
            Ok(()) if !progress.started.load(Ordering::Acquire) => {
                self.shared
                    .queue(Frame::new(id, FrameKind::Head, priority, Bytes::new()));
                self.shared
                    .queue(Frame::empty(id, FrameKind::End, priority));
                self.shared.finish_outbound(id);
            }
            Ok(()) if progress.abandoned.load(Ordering::Acquire) => self.shared.reset_stream(
                id,
                &RpcError::internal("the handler ended without finishing the response body"),
            ),
            Ok(()) => {}
        }
    }
}
