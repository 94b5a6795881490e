//! The one HTTP/1.1 server loop for Bramble's own pages and API (the stats page, the demo
//! web servers, the HTTP API to come). These are reachable from the network, so every
//! input is bounded: the request head (bytes and header count, 431 beyond), the body
//! (413 beyond, read whole before the handler runs, within a time limit), the number of
//! connections served at once (further clients wait in the listen backlog), the time a
//! request head may take (408 and closed), the time a connection may sit idle (closed),
//! and the lifetime of a kept-alive connection (closed gracefully after its request).
//!
//! The same loop serves HTTPS ([`serve_https1`]) for the API and the dashboard: the TLS
//! handshake must finish within the header-read timeout, and the client's certificate
//! chain, if it sent one, reaches handlers as a [`PeerCertificates`] request extension.
//! Over TLS a half-sent head is closed without the 408 (the answer would have to be
//! encrypted on a connection hyper has already given up).

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bramble_util::Shutdown;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::connection::{Activity, ClientIo, ClientTimeouts, InFlight, is_timeout};

/// hyper's smallest allowed read buffer, which is also the smallest head limit.
pub const MIN_HEAD_BYTES: usize = 8192;
/// How long open connections get to finish their request once shutdown is triggered.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (usually out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Bounds of one server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Time for a request head to arrive whole, from its first byte.
    pub header_read_timeout: Duration,
    /// A connection on which the client sends nothing for this long, while no request of
    /// it is being answered, is closed.
    pub idle_timeout: Duration,
    /// Most request headers accepted (more get 431).
    pub max_headers: usize,
    /// Longest request head in bytes (at least [`MIN_HEAD_BYTES`]; longer gets 431).
    pub max_head_bytes: usize,
    /// Largest request body; 0 refuses every body with 413.
    pub max_body_bytes: usize,
    /// Time for a request body to arrive whole once its head has.
    pub body_read_timeout: Duration,
    /// After this long a connection is closed gracefully (after its current request).
    pub connection_lifetime: Duration,
}

/// A request as handlers see it: the head and the whole body, already bounded.
pub type BoundedRequest = Request<Bytes>;
/// What handlers answer.
pub type SimpleResponse = Response<Full<Bytes>>;

/// What a handler's answer may carry: a whole body ([`SimpleResponse`]) or one written as
/// it goes (Server-Sent Events).
pub trait AnswerBody:
    hyper::body::Body<Data = Bytes, Error: Into<Box<dyn StdError + Send + Sync>>> + Send + 'static
{
}

impl<Body> AnswerBody for Body where
    Body: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn StdError + Send + Sync>>>
        + Send
        + 'static
{
}

/// The body the server sends: its own refusals, or the handler's answer.
type ServedBody<Answer> = Either<Full<Bytes>, Answer>;

/// The certificate chain a TLS client presented (leaf first), verified by the server's
/// TLS configuration before any request is read; absent when the client sent none.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// Serves HTTP/1.1 (with keep-alive) on `listener` until `shutdown`, answering every
/// request with `handler` (given the request and the client's address). `what` names
/// the server in logs.
pub async fn serve_http1<Handler, Answer, Body>(
    what: &'static str,
    listener: TcpListener,
    limits: ServerLimits,
    handler: Handler,
    shutdown: Shutdown,
) where
    Handler: Fn(BoundedRequest, SocketAddr) -> Answer + Clone + Send + Sync + 'static,
    Answer: Future<Output = Response<Body>> + Send + 'static,
    Body: AnswerBody,
{
    serve(what, listener, limits, None, handler, shutdown).await
}

/// [`serve_http1`] over TLS with `tls` (which decides whether client certificates are
/// asked for and against what they are verified).
pub async fn serve_https1<Handler, Answer, Body>(
    what: &'static str,
    listener: TcpListener,
    limits: ServerLimits,
    tls: Arc<rustls::ServerConfig>,
    handler: Handler,
    shutdown: Shutdown,
) where
    Handler: Fn(BoundedRequest, SocketAddr) -> Answer + Clone + Send + Sync + 'static,
    Answer: Future<Output = Response<Body>> + Send + 'static,
    Body: AnswerBody,
{
    let acceptor = TlsAcceptor::from(tls);
    serve(what, listener, limits, Some(acceptor), handler, shutdown).await
}

async fn serve<Handler, Answer, Body>(
    what: &'static str,
    listener: TcpListener,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    handler: Handler,
    mut shutdown: Shutdown,
) where
    Handler: Fn(BoundedRequest, SocketAddr) -> Answer + Clone + Send + Sync + 'static,
    Answer: Future<Output = Response<Body>> + Send + 'static,
    Body: AnswerBody,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = shutdown.wait() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(serve_connection(
                    what,
                    stream,
                    peer,
                    limits,
                    tls.clone(),
                    handler.clone(),
                    shutdown.clone(),
                    permit,
                ));
            }
            Err(error) => {
                warn!(server = what, "accepting a connection failed: {error}");
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
    drop(listener);
    // Each connection saw the shutdown too and is finishing its request; wait a bounded
    // time, then the JoinSet's drop aborts whatever is left.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            server = what,
            "aborting connections that outlived the shutdown grace"
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<Handler, Answer, Body>(
    what: &'static str,
    stream: TcpStream,
    peer: SocketAddr,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    handler: Handler,
    shutdown: Shutdown,
    permit: OwnedSemaphorePermit,
) where
    Handler: Fn(BoundedRequest, SocketAddr) -> Answer + Send + Sync + 'static,
    Answer: Future<Output = Response<Body>> + Send + 'static,
    Body: AnswerBody,
{
    let activity = Arc::new(Activity::new());
    let timeouts = ClientTimeouts {
        idle: limits.idle_timeout,
        header_read: limits.header_read_timeout,
    };
    let io = ClientIo::new(stream, activity.clone(), timeouts);
    let handler = Arc::new(handler);
    match tls {
        None => {
            let (io, socket_return) = io.returning_socket();
            let result = serve_io(what, io, peer, limits, activity, handler, None, shutdown).await;
            if let Err(error) = result {
                if socket_return
                    .answer_timeout_if_owed(is_timeout(&error))
                    .await
                {
                    debug!(server = what, %peer, "answered 408: {error}");
                } else {
                    debug!(server = what, %peer, "connection ended: {error}");
                }
            }
        }
        Some(acceptor) => {
            // The handshake counts as the start of the first request head.
            let handshake =
                tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io)).await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    debug!(server = what, %peer, "TLS handshake failed: {error}");
                    return;
                }
                Err(_elapsed) => {
                    debug!(server = what, %peer, "TLS handshake did not finish in time");
                    return;
                }
            };
            let certificates = stream.get_ref().1.peer_certificates().map(|chain| {
                PeerCertificates(Arc::new(
                    chain
                        .iter()
                        .map(|certificate| certificate.clone().into_owned())
                        .collect(),
                ))
            });
            let result = serve_io(
                what,
                stream,
                peer,
                limits,
                activity,
                handler,
                certificates,
                shutdown,
            )
            .await;
            if let Err(error) = result {
                debug!(server = what, %peer, "connection ended: {error}");
            }
        }
    }
    drop(permit);
}

/// Serves one connection's requests over `io` (the client's socket, or TLS over it).
#[allow(clippy::too_many_arguments)]
async fn serve_io<Io, Handler, Answer, Body>(
    what: &'static str,
    io: Io,
    peer: SocketAddr,
    limits: ServerLimits,
    activity: Arc<Activity>,
    handler: Arc<Handler>,
    certificates: Option<PeerCertificates>,
    mut shutdown: Shutdown,
) -> Result<(), hyper::Error>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Handler: Fn(BoundedRequest, SocketAddr) -> Answer + Send + Sync + 'static,
    Answer: Future<Output = Response<Body>> + Send + 'static,
    Body: AnswerBody,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let in_flight = InFlight::new(activity.clone());
        let handler = handler.clone();
        let certificates = certificates.clone();
        async move {
            let response = match read_body(request, &limits).await {
                Ok(mut request) => {
                    if let Some(certificates) = certificates {
                        request.extensions_mut().insert(certificates);
                    }
                    handler(request, peer).await.map(Either::Right)
                }
                Err(refusal) => refusal.map(Either::Left),
            };
            drop(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The socket times request heads itself, from their first byte, so that an idle
        // keep-alive connection is governed by the idle timeout alone.
        .header_read_timeout(None)
        .max_buf_size(limits.max_head_bytes.max(MIN_HEAD_BYTES))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let lifetime = tokio::time::sleep(limits.connection_lifetime);
    tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.wait() => finish_gracefully(connection.as_mut(), what, peer).await,
        _ = lifetime => finish_gracefully(connection.as_mut(), what, peer).await,
    }
}

async fn finish_gracefully<Io, Connection, Body>(
    mut connection: std::pin::Pin<&mut http1::Connection<TokioIo<Io>, Connection>>,
    what: &'static str,
    peer: SocketAddr,
) -> Result<(), hyper::Error>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Connection: hyper::service::HttpService<Incoming, ResBody = ServedBody<Body>>,
    Body: AnswerBody,
{
    connection.as_mut().graceful_shutdown();
    match tokio::time::timeout(SHUTDOWN_GRACE, connection).await {
        Ok(result) => result,
        Err(_) => {
            debug!(server = what, %peer, "connection did not finish within the grace period");
            Ok(())
        }
    }
}

/// The request with its body read whole, or the answer refusing it.
async fn read_body(
    request: Request<Incoming>,
    limits: &ServerLimits,
) -> Result<BoundedRequest, SimpleResponse> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    let too_large = || {
        refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "413 Payload Too Large: request bodies are limited to {} bytes\n",
                limits.max_body_bytes
            ),
        )
    };
    if declared.is_some_and(|length| length > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(
        limits.body_read_timeout,
        Limited::new(body, limits.max_body_bytes).collect(),
    )
    .await;
    match collected {
        Ok(Ok(body)) => Ok(Request::from_parts(parts, body.to_bytes())),
        Ok(Err(error))
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(error)) => Err(refusal(
            StatusCode::BAD_REQUEST,
            format!("400 Bad Request: the request body could not be read: {error}\n"),
        )),
        Err(_elapsed) => Err(refusal(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "408 Request Timeout: the request body did not arrive within {} ms\n",
                limits.body_read_timeout.as_millis()
            ),
        )),
    }
}

/// A plain-text error answer after which the connection closes (its body may be unread).
fn refusal(status: StatusCode, text: String) -> SimpleResponse {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_util::ShutdownTrigger;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: ServerLimits = ServerLimits {
        max_connections: 4,
        header_read_timeout: Duration::from_millis(600),
        idle_timeout: Duration::from_millis(900),
        max_headers: 16,
        max_head_bytes: MIN_HEAD_BYTES,
        max_body_bytes: 16,
        body_read_timeout: Duration::from_millis(600),
        connection_lifetime: Duration::from_secs(60),
    };

    async fn start() -> (SocketAddr, ShutdownTrigger, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (trigger, shutdown) = ShutdownTrigger::new();
        let handler = |request: BoundedRequest, _peer: SocketAddr| async move {
            let text = format!("{} {} bytes", request.uri().path(), request.body().len());
            Response::new(Full::new(Bytes::from(text)))
        };
        let server = tokio::spawn(serve_http1("test", listener, LIMITS, handler, shutdown));
        (address, trigger, server)
    }

    /// Sends `request` and reads until the server closes (or 5 s pass).
    async fn exchange(address: SocketAddr, request: &[u8]) -> (String, Duration) {
        let started = std::time::Instant::now();
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(request).await.expect("send");
        let mut received = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
        (
            String::from_utf8_lossy(&received).into_owned(),
            started.elapsed(),
        )
    }

    #[tokio::test]
    async fn bodies_heads_and_slow_clients_are_bounded() {
        let (address, trigger, server) = start().await;

        let (answer, _) = exchange(
            address,
            b"POST /small HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("/small 5 bytes"), "{answer}");

        let (answer, _) = exchange(
            address,
            b"POST /big HTTP/1.1\r\nhost: t\r\ncontent-length: 17\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("limited to 16 bytes"), "{answer}");

        let chunked_over = b"POST /chunked HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n20\r\n0123456789abcdef0123456789abcdef\r\n0\r\n\r\n";
        let (answer, _) = exchange(address, chunked_over).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

        let huge_head = format!(
            "GET / HTTP/1.1\r\nhost: t\r\nx-big: {}\r\n\r\n",
            "a".repeat(MIN_HEAD_BYTES)
        );
        let (answer, _) = exchange(address, huge_head.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

        // A head that stops halfway gets a 408 at the header-read timeout.
        let (answer, elapsed) = exchange(address, b"GET /half HTTP/1.1\r\nhost: t\r\nx-a: ").await;
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout"),
            "{answer}"
        );
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(
            elapsed >= Duration::from_millis(550) && elapsed < Duration::from_millis(3000),
            "{elapsed:?}"
        );

        // A body that stops halfway gets a 408 too, from the body timeout.
        let (answer, _) = exchange(
            address,
            b"POST /slow-body HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nabc",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

        // A connection that never speaks is closed silently at the idle timeout.
        let (answer, elapsed) = exchange(address, b"").await;
        assert!(answer.is_empty(), "{answer}");
        assert!(
            elapsed >= Duration::from_millis(850) && elapsed < Duration::from_millis(3000),
            "{elapsed:?}"
        );

        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops in time")
            .expect("the server task ends cleanly");
    }

    #[tokio::test]
    async fn kept_alive_connections_serve_several_requests_then_close_when_idle() {
        let (address, trigger, _server) = start().await;
        let mut stream = TcpStream::connect(address).await.expect("connect");
        for path in ["/one", "/two"] {
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
                .await
                .expect("send");
            let mut buffer = vec![0u8; 1024];
            let read = stream.read(&mut buffer).await.expect("answer");
            let answer = String::from_utf8_lossy(&buffer[..read]).into_owned();
            assert!(answer.ends_with(&format!("{path} 0 bytes")), "{answer}");
        }
        // Idle after its answers: closed without a 408, since no request was started.
        let mut rest = Vec::new();
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .expect("clean close");
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        assert!(started.elapsed() >= Duration::from_millis(800));
        trigger.trigger();
    }

    #[tokio::test]
    async fn connections_over_the_limit_wait_for_a_slot() {
        let (address, trigger, _server) = start().await;
        // Fill every slot with connections that say nothing.
        let mut idle = Vec::new();
        for _ in 0..LIMITS.max_connections {
            idle.push(TcpStream::connect(address).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let (answer, _) = exchange(
            address,
            b"GET /late HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.ends_with("/late 0 bytes"), "{answer}");
        // It was served only once the idle ones timed out.
        assert!(
            started.elapsed() >= Duration::from_millis(700),
            "{:?}",
            started.elapsed()
        );
        trigger.trigger();
    }
}
