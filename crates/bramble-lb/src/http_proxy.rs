//! The HTTP data path: serves clients over HTTP/1.1 (keep-alive) and HTTP/2, and forwards
//! each request to a backend over pooled HTTP/1.1 keep-alive connections.
//!
//! Per request: the body is checked against `max_body_bytes`; the backend is chosen by
//! the sticky cookie when its server can take it, else by the balance algorithm;
//! hop-by-hop headers are dropped and X-Forwarded-For/-Proto set. A backend that refuses
//! the connection is recorded for passive ejection and the request goes to another one
//! (up to [`MAX_ATTEMPTS`]); so does an idempotent request with a replayable body whose
//! backend dies before answering, or has not answered within `timeouts.retry_ms` while
//! another server could take it (a hung server). What the balancer cannot deliver it answers itself, with
//! a plain-text body that says what went wrong: 413, 502, 503, 504.
//!
//! Client timeouts ([`ClientIo`], both `client_ms`): a request head must arrive whole
//! within the timeout of its first byte, or the client gets `408 Request Timeout` and the
//! connection closes (slowloris; HAProxy's `timeout http-request`); a connection on which
//! the client sends nothing while no request is under way is closed silently (idle
//! keep-alive, idle HTTP/2, and clients that connect and never speak).
//!
//! Memory: HTTP/2 streams, windows, frames and send buffers are bounded (see
//! [`memory_budget`]), and the connection, an HTTP/2 connection and each request reserve
//! their worst case from the node's data-plane budget; a request that finds no room is
//! answered 503 at once.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bramble_http::connection::{ClientTimeouts, is_timeout};
use bramble_http::{Activity, ClientIo, InFlight, Reservation};
use bramble_util::Shutdown;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::http::uri::PathAndQuery;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::backend_client::{BackendConnection, BoxError, ExchangeError, ProxyBody};
use crate::balance::{MAX_ATTEMPTS, hash_key_for};
use crate::config::{Limits, Sticky};
use crate::memory_budget::{
    self, COVERED_HEAD_BYTES, HTTP2_CONNECTION_WINDOW, HTTP2_MAX_CONCURRENT_STREAMS,
    HTTP2_MAX_FRAME_BYTES, HTTP2_MAX_SEND_BUFFER_BYTES, HTTP2_STREAM_WINDOW, REPLAY_BUFFER_BYTES,
    http2_connection_bytes,
};
use crate::pool::SessionGuard;
use crate::runtime::{FrontendCounters, Runtime, RuntimeCell};

/// How long open connections get to finish their requests when the balancer stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// When the balancer stops, how long a connection that has sent nothing yet gets to send
/// its first request (a client that connected a moment before the stop sends at once).
const FIRST_BYTES_GRACE: Duration = Duration::from_millis(500);
/// hyper refuses a smaller HTTP/1 read buffer; `max_header_bytes` may be as low as 1 KiB.
const MINIMUM_READ_BUFFER: usize = 8192;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1, plus
/// the older ones proxies still meet); they must not be passed on.
/// Known names, not strings: removing by a string parses and hashes it on every request.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Serves one client connection until it closes, times out or the balancer stops.
/// `memory` is the connection's reservation from the data-plane budget.
pub(crate) async fn serve_connection(
    cell: Arc<RuntimeCell>,
    stream: TcpStream,
    client: SocketAddr,
    memory: Reservation,
    mut stop: Shutdown,
) {
    // Connection-level settings come from the spec at accept time; every request loads
    // the spec current when it arrives.
    let (client_timeout, limits, frontend) = {
        let runtime = cell.load();
        (
            Duration::from_millis(runtime.spec.timeouts.client_ms),
            runtime.spec.limits.clone(),
            runtime.frontend.clone(),
        )
    };
    let activity = Arc::new(Activity::new());
    let activity_for_stop = activity.clone();
    let timeouts = ClientTimeouts {
        idle: client_timeout,
        header_read: client_timeout,
    };
    let http2_bytes = http2_connection_bytes(&limits);
    let (io, socket_return) = ClientIo::new(stream, activity.clone(), timeouts)
        .with_head_memory(memory, COVERED_HEAD_BYTES)
        .on_http2(move || memory_budget::budget().try_reserve(http2_bytes))
        .returning_socket();

    let builder = client_protocols(&limits);
    let service = service_fn(move |request: Request<Incoming>| {
        let runtime = cell.load();
        let in_flight = InFlight::new(activity.clone());
        let memory =
            memory_budget::budget().try_reserve(memory_budget::request_bytes(&runtime.spec.limits));
        async move {
            let response = match memory {
                Some(memory) => {
                    let request_in_progress = RequestInProgress {
                        _in_flight: in_flight,
                        _memory: memory,
                    };
                    proxy(runtime, client, request, request_in_progress).await
                }
                None => {
                    runtime.frontend.errors.fetch_add(1, Ordering::Relaxed);
                    ProxyError::OverMemoryBudget.response()
                }
            };
            Ok::<_, Infallible>(response)
        }
    });
    let result = {
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => result,
            _ = stop.wait() => {
                // Until its first bytes are read, hyper cannot tell which protocol the
                // connection speaks and would drop it unread: a client that connected
                // just before the stop would see its request answered with a reset. Its
                // first request is served (with `Connection: close`) instead.
                let first_bytes = tokio::time::timeout(FIRST_BYTES_GRACE, async {
                    tokio::select! {
                        result = connection.as_mut() => Some(result),
                        _ = activity_for_stop.first_bytes() => None,
                    }
                })
                .await;
                match first_bytes {
                    Ok(Some(result)) => result,
                    Ok(None) | Err(_) => {
                        connection.as_mut().graceful_shutdown();
                        tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await.unwrap_or(Ok(()))
                    }
                }
            }
        }
    };
    if let Err(error) = result {
        let timed_out = is_timeout(error.as_ref());
        if socket_return.answer_timeout_if_owed(timed_out).await {
            // HAProxy counts these as request errors too (`req_err`).
            frontend.errors.fetch_add(1, Ordering::Relaxed);
            debug!(%client, "answered 408: the request head did not arrive in time");
        } else {
            note_connection_error(&frontend, client, error.as_ref());
        }
    }
}

/// hyper's server for both protocols, with every buffer and count bounded.
fn client_protocols(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The socket times request heads itself (from their first byte, with a 408).
        .header_read_timeout(None)
        // A request head larger than the read buffer is refused with 431.
        .max_buf_size(limits.max_header_bytes.max(MINIMUM_READ_BUFFER))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .adaptive_window(false)
        .max_frame_size(HTTP2_MAX_FRAME_BYTES)
        .max_send_buf_size(HTTP2_MAX_SEND_BUFFER_BYTES)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// What a request holds while it is served: its mark on the connection's activity (so
/// the idle timeout waits for it) and its share of the memory budget.
pub(crate) struct RequestInProgress {
    _in_flight: InFlight,
    _memory: Reservation,
}

/// Counts requests hyper refused before they reached [`proxy`] (malformed, or a head
/// over the limit: hyper has answered 400 or 431); timeouts and resets are not errors of
/// the balancer.
fn note_connection_error(
    frontend: &FrontendCounters,
    client: SocketAddr,
    error: &(dyn StdError + 'static),
) {
    let refused = source_chain(error)
        .find_map(|cause| cause.downcast_ref::<hyper::Error>())
        .is_some_and(hyper::Error::is_parse);
    if refused {
        frontend.errors.fetch_add(1, Ordering::Relaxed);
    }
    debug!(%client, error = %describe(error), "client connection ended with an error");
}

async fn proxy(
    runtime: Arc<Runtime>,
    client: SocketAddr,
    request: Request<Incoming>,
    in_flight: RequestInProgress,
) -> Response<ProxyBody> {
    runtime.frontend.sessions.fetch_add(1, Ordering::Relaxed);
    match forward(&runtime, client, request, in_flight).await {
        Ok(response) => response,
        Err(error) => {
            runtime.frontend.errors.fetch_add(1, Ordering::Relaxed);
            debug!(balancer = %runtime.spec.name, %client, %error, "request answered by the balancer");
            error.response()
        }
    }
}

/// What went wrong with a request that the balancer answers itself.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("the request body is larger than this balancer's limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the client did not send the request body within {timeout_ms} ms")]
    ClientTimeout { timeout_ms: u64 },
    #[error("the request body could not be read: {detail}")]
    BadRequestBody { detail: String },
    #[error("this balancer does not support the CONNECT method")]
    MethodNotAllowed,
    #[error("the balancer is at its memory budget; try again shortly")]
    OverMemoryBudget,
    #[error("no backend available for balancer {balancer}")]
    NoBackend { balancer: String },
    #[error(
        "no backend of balancer {balancer} could be reached; the last one tried, {backend}: {detail}"
    )]
    Unreachable {
        balancer: String,
        backend: String,
        detail: String,
    },
    #[error("backend {backend} sent an invalid HTTP response ({detail})")]
    InvalidResponse { backend: String, detail: String },
    #[error("backend {backend} failed before answering ({detail})")]
    BackendFailed { backend: String, detail: String },
    #[error("backend {backend} did not answer within {timeout_ms} ms")]
    GatewayTimeout { backend: String, timeout_ms: u64 },
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequestBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoBackend { .. }
            | ProxyError::Unreachable { .. }
            | ProxyError::OverMemoryBudget => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::InvalidResponse { .. } | ProxyError::BackendFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A plain-text answer a person can read in curl's output.
    fn response(&self) -> Response<ProxyBody> {
        let status = self.status();
        let text = format!(
            "{} {}: {self}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        );
        let mut response = Response::new(full_body(Bytes::from(text)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

async fn forward(
    runtime: &Runtime,
    client: SocketAddr,
    request: Request<Incoming>,
    in_flight: RequestInProgress,
) -> Result<Response<ProxyBody>, ProxyError> {
    let spec = &runtime.spec;
    let (mut parts, body) = request.into_parts();
    if parts.method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    let declared_length = declared_length(&parts.headers);
    if declared_length.is_some_and(|length| length > spec.limits.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge {
            limit: spec.limits.max_body_bytes,
        });
    }
    let hash_key = hash_key_for(
        &spec.balance,
        client.ip(),
        Some(&parts.headers),
        Some(parts.uri.path()),
    );
    let sticky_server = read_sticky_cookie(spec.sticky.as_ref(), &mut parts.headers);
    prepare_request_headers(&mut parts.headers, &parts.uri, client.ip());
    let body = RequestBody::read(
        body,
        declared_length,
        &spec.limits,
        Duration::from_millis(spec.timeouts.client_ms),
    )
    .await?;
    let replay_after_failure = is_idempotent(&parts.method);
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let response_timeout =
        Duration::from_millis(spec.timeouts.connect_ms + spec.timeouts.server_ms);

    let mut tried = Vec::with_capacity(MAX_ATTEMPTS);
    // What to answer if no attempt succeeds: the last failure, said as it was.
    let mut last_failure: Option<ProxyError> = None;
    while tried.len() < MAX_ATTEMPTS {
        let Some(index) = choose(
            runtime,
            sticky_server.as_deref(),
            hash_key.as_deref(),
            &tried,
        ) else {
            break;
        };
        tried.push(index);
        let backend = runtime.pool.backends[index].clone();
        let outgoing = build_request(
            &parts,
            &path_and_query,
            backend.spec.addr,
            body.for_attempt(),
        );
        let session = SessionGuard::new(backend.clone());
        // Cloned only on the error paths below: a request that succeeds allocates nothing for it.
        let name = || backend.spec.name.clone();
        // A hung server (stopped, deadlocked) accepts connections and never answers:
        // an idempotent request waits only `retry_ms` for it while another server could
        // take the request. The last possible attempt waits the full server timeout.
        let may_retry = replay_after_failure
            && body.can_replay()
            && spec.timeouts.retry_ms > 0
            && tried.len() < MAX_ATTEMPTS
            && runtime
                .pool
                .backends
                .iter()
                .enumerate()
                .any(|(other, state)| !tried.contains(&other) && state.accepts_new_sessions());
        let attempt_timeout = if may_retry {
            Duration::from_millis(spec.timeouts.retry_ms).min(response_timeout)
        } else {
            response_timeout
        };
        let exchange = runtime.connections.exchange(backend.spec.addr, outgoing);
        match tokio::time::timeout(attempt_timeout, exchange).await {
            Ok(Ok((response, connection))) => {
                backend.record_success();
                return Ok(respond(
                    runtime,
                    response,
                    connection,
                    session,
                    sticky_server.as_deref(),
                    in_flight,
                ));
            }
            Ok(Err(error)) => match Failure::of(&error, spec.limits.max_body_bytes) {
                Failure::RequestBody(error) => return Err(error),
                Failure::Connect(detail) => {
                    backend.record_connect_error();
                    debug!(backend = %backend.spec.name, %detail, "backend connection failed; trying another");
                    if !body.can_replay() {
                        return Err(ProxyError::BackendFailed {
                            backend: name(),
                            detail,
                        });
                    }
                    last_failure = Some(ProxyError::Unreachable {
                        balancer: spec.name.clone(),
                        backend: name(),
                        detail,
                    });
                }
                Failure::InvalidResponse(detail) => {
                    // The backend is up and took the request; sending it elsewhere could
                    // run it twice, and the fault is the application's, so no ejection.
                    backend.errors.fetch_add(1, Ordering::Relaxed);
                    return Err(ProxyError::InvalidResponse {
                        backend: name(),
                        detail,
                    });
                }
                Failure::Broken(detail) => {
                    backend.record_connect_error();
                    debug!(backend = %backend.spec.name, %detail, "backend failed before answering");
                    let failure = ProxyError::BackendFailed {
                        backend: name(),
                        detail,
                    };
                    if !(replay_after_failure && body.can_replay()) {
                        return Err(failure);
                    }
                    last_failure = Some(failure);
                }
            },
            Err(_elapsed) if may_retry => {
                // Counts toward passive ejection: a server that keeps not answering is
                // taken out of rotation until it answers checks again.
                backend.record_connect_error();
                debug!(backend = %backend.spec.name, "no answer within the retry timeout; trying another");
                last_failure = Some(ProxyError::GatewayTimeout {
                    backend: name(),
                    timeout_ms: attempt_timeout.as_millis() as u64,
                });
            }
            Err(_elapsed) => {
                backend.errors.fetch_add(1, Ordering::Relaxed);
                return Err(ProxyError::GatewayTimeout {
                    backend: name(),
                    timeout_ms: attempt_timeout.as_millis() as u64,
                });
            }
        }
    }
    Err(last_failure.unwrap_or_else(|| ProxyError::NoBackend {
        balancer: spec.name.clone(),
    }))
}

/// The sticky server when it can take the request, else the balance algorithm's pick.
fn choose(
    runtime: &Runtime,
    sticky_server: Option<&str>,
    hash_key: Option<&[u8]>,
    tried: &[usize],
) -> Option<usize> {
    if let Some(name) = sticky_server
        && let Some(index) = runtime
            .pool
            .backends
            .iter()
            .position(|backend| backend.spec.name == name)
        && !tried.contains(&index)
        && runtime.pool.backends[index].accepts_sticky_sessions()
    {
        return Some(index);
    }
    runtime.selector.pick(&runtime.pool, hash_key, tried)
}

fn build_request(
    parts: &Parts,
    path_and_query: &PathAndQuery,
    address: SocketAddr,
    body: ProxyBody,
) -> Request<ProxyBody> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    // Origin form (`/path?query`): what an HTTP/1.1 server expects from a client.
    *request.uri_mut() = Uri::from(path_and_query.clone());
    // Backends get HTTP/1.1 whatever the client spoke.
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = parts.headers.clone();
    // HTTP/1.1 requires a Host; an HTTP/1.0 client may not have sent one.
    if !request.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(&address.to_string())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    request
}

fn respond(
    runtime: &Runtime,
    response: Response<Incoming>,
    connection: BackendConnection,
    session: SessionGuard,
    sticky_server: Option<&str>,
    in_flight: RequestInProgress,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let server = session.backend().spec.name.as_str();
    match &runtime.spec.sticky {
        Some(Sticky::PrefixCookie(cookie)) => {
            prefix_set_cookies(&mut parts.headers, cookie, server)
        }
        Some(Sticky::InsertCookie(cookie)) if sticky_server != Some(server) => {
            insert_cookie(&mut parts.headers, cookie, server);
        }
        _ => {}
    }
    // The session lasts until the response body has been passed on.
    let idle = Duration::from_millis(runtime.spec.timeouts.server_ms);
    let mut body = TimedBody::new(body, idle, "backend").holding(session, in_flight);
    if body.is_end_stream() {
        // Nothing more will come on the connection for this exchange (and hyper may
        // never poll an empty body to its end).
        connection.release();
    } else {
        body.connection = Some(connection);
    }
    Response::from_parts(parts, body.boxed_unsync())
}

/// Why a forwarding attempt failed, which decides whether to try another backend.
enum Failure {
    /// The client's side failed (body over the limit, too slow, gone).
    RequestBody(ProxyError),
    /// No connection to the backend: nothing was sent, any request may go elsewhere.
    Connect(String),
    /// The backend answered, but not in HTTP.
    InvalidResponse(String),
    /// The connection broke before a response arrived; the request may have been sent.
    Broken(String),
}

impl Failure {
    fn of(error: &ExchangeError, body_limit: u64) -> Failure {
        if error.is_connect() {
            return Failure::Connect(describe(error));
        }
        for cause in source_chain(error) {
            if cause.is::<LengthLimitError>() || cause.is::<BodyTimeout>() {
                return Failure::RequestBody(request_body_error(cause, body_limit));
            }
        }
        match source_chain(error).find_map(|cause| cause.downcast_ref::<hyper::Error>()) {
            // A failure of the body hyper was sending for us: the client's.
            Some(hyper_error) if hyper_error.is_user() => {
                Failure::RequestBody(request_body_error(hyper_error, body_limit))
            }
            Some(hyper_error) if hyper_error.is_parse() => {
                Failure::InvalidResponse(describe(hyper_error))
            }
            _ => Failure::Broken(describe(error)),
        }
    }
}

fn request_body_error(error: &(dyn StdError + 'static), body_limit: u64) -> ProxyError {
    for cause in source_chain(error) {
        if cause.is::<LengthLimitError>() {
            return ProxyError::BodyTooLarge { limit: body_limit };
        }
        if let Some(timeout) = cause.downcast_ref::<BodyTimeout>() {
            return ProxyError::ClientTimeout {
                timeout_ms: timeout.timeout_ms,
            };
        }
    }
    ProxyError::BadRequestBody {
        detail: describe(error),
    }
}

fn source_chain<'error>(
    error: &'error (dyn StdError + 'static),
) -> impl Iterator<Item = &'error (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |cause: &&'error (dyn StdError + 'static)| {
        (*cause).source()
    })
}

/// An error and its causes on one line ("client error (Connect): tcp connect error: ...").
fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    for cause in source_chain(error).skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Methods a backend may receive twice without harm (RFC 9110 section 9.2.2).
fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
    ]
    .contains(method)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn full_body(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn prepare_request_headers(headers: &mut HeaderMap, uri: &Uri, client: IpAddr) {
    strip_hop_by_hop(headers);
    // HTTP/2 clients name the host in :authority; HTTP/1.1 backends expect Host.
    if !headers.contains_key(header::HOST)
        && let Some(authority) = uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, value);
    }
    if let Some(value) = forwarded_for(headers, client.to_canonical()) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

/// The X-Forwarded-For to send: the client's list with the address we saw appended, built
/// in one buffer that becomes the header value without another copy.
fn forwarded_for(headers: &HeaderMap, client: IpAddr) -> Option<HeaderValue> {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(64);
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        match prior.to_str() {
            Ok(prior) => {
                text.push_str(prior);
                text.push_str(", ");
            }
            // Not text, so not trustworthy either: only the address we saw.
            Err(_) => {
                text.clear();
                break;
            }
        }
    }
    // Writing to a String cannot fail.
    let _ = write!(text, "{client}");
    match HeaderValue::from_maybe_shared(Bytes::from(text)) {
        Ok(value) => Some(value),
        Err(_) => HeaderValue::from_str(&client.to_string()).ok(),
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Connection may name further headers that belong to this hop only.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Reads the sticky cookie (the server it names) and rewrites the Cookie header for the
/// backend: the prefix mode strips `<server>~` from the application's cookie, the insert
/// mode removes the balancer's cookie, which the application never set. Several Cookie
/// headers (as HTTP/2 clients send) become one, as HTTP/1.1 requires.
fn read_sticky_cookie(sticky: Option<&Sticky>, headers: &mut HeaderMap) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|value| value.to_str().map(str::to_string))
        .collect::<Result<_, _>>()
        .ok()?;
    if values.is_empty() {
        return None;
    }
    let mut server = None;
    let mut kept = Vec::new();
    for pair in values
        .iter()
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = name.trim();
        match sticky {
            Some(Sticky::PrefixCookie(cookie)) if name == cookie => {
                if let Some((prefix, original)) = value.split_once('~') {
                    server.get_or_insert_with(|| prefix.to_string());
                    kept.push(format!("{name}={original}"));
                    continue;
                }
            }
            Some(Sticky::InsertCookie(cookie)) if name == cookie => {
                server.get_or_insert_with(|| value.trim().to_string());
                continue;
            }
            _ => {}
        }
        kept.push(pair.to_string());
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, value);
    }
    server
}

/// HAProxy's `cookie <name> prefix`: the application's cookie leaves as `<server>~<value>`.
fn prefix_set_cookies(headers: &mut HeaderMap, cookie: &str, server: &str) {
    if !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let values: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in values {
        let prefixed = value
            .to_str()
            .ok()
            .and_then(|text| text.split_once('='))
            .filter(|(name, _)| name.trim() == cookie)
            .and_then(|(name, rest)| {
                HeaderValue::from_str(&format!("{}={server}~{rest}", name.trim())).ok()
            });
        headers.append(header::SET_COOKIE, prefixed.unwrap_or(value));
    }
}

/// HAProxy's `cookie <name> insert`: a cookie naming the server that answered.
fn insert_cookie(headers: &mut HeaderMap, cookie: &str, server: &str) {
    if let Ok(value) = HeaderValue::from_str(&format!("{cookie}={server}; Path=/; HttpOnly")) {
        headers.append(header::SET_COOKIE, value);
    }
}

/// The client's request body, ready to be sent to one backend or more.
enum RequestBody {
    /// Small or empty: held whole, so a failed attempt can be replayed elsewhere.
    Buffered(Bytes),
    /// Large or of unknown length: streamed as it arrives. The first attempt that starts
    /// reading it takes it; until then (say, while connections are refused) it can still
    /// go to another backend.
    Streaming {
        slot: Arc<Mutex<Option<ClientBody>>>,
        size_hint: SizeHint,
    },
}

type ClientBody = TimedBody<Limited<Incoming>>;

impl RequestBody {
    async fn read(
        body: Incoming,
        declared_length: Option<u64>,
        limits: &Limits,
        client_timeout: Duration,
    ) -> Result<RequestBody, ProxyError> {
        if body.is_end_stream() {
            return Ok(RequestBody::Buffered(Bytes::new()));
        }
        let limited = Limited::new(
            body,
            usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX),
        );
        if declared_length.is_some_and(|length| length <= REPLAY_BUFFER_BYTES as u64) {
            let collected = tokio::time::timeout(client_timeout, limited.collect())
                .await
                .map_err(|_| ProxyError::ClientTimeout {
                    timeout_ms: client_timeout.as_millis() as u64,
                })?
                .map_err(|error| request_body_error(error.as_ref(), limits.max_body_bytes))?;
            return Ok(RequestBody::Buffered(collected.to_bytes()));
        }
        let size_hint = limited.size_hint();
        let body = TimedBody::new(limited, client_timeout, "client");
        Ok(RequestBody::Streaming {
            slot: Arc::new(Mutex::new(Some(body))),
            size_hint,
        })
    }

    fn for_attempt(&self) -> ProxyBody {
        match self {
            // Boxing a zero-sized body allocates nothing; most requests have no body.
            RequestBody::Buffered(bytes) if bytes.is_empty() => Empty::new()
                .map_err(|never: Infallible| match never {})
                .boxed_unsync(),
            RequestBody::Buffered(bytes) => full_body(bytes.clone()),
            RequestBody::Streaming { slot, size_hint } => DeferredBody {
                slot: slot.clone(),
                taken: None,
                size_hint: *size_hint,
            }
            .boxed_unsync(),
        }
    }

    fn can_replay(&self) -> bool {
        match self {
            RequestBody::Buffered(_) => true,
            RequestBody::Streaming { slot, .. } => slot
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .is_some(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body was already sent to another backend")]
struct BodyAlreadySent;

/// A streamed request body that stays with the [`RequestBody`] until a backend reads it.
struct DeferredBody {
    slot: Arc<Mutex<Option<ClientBody>>>,
    taken: Option<ClientBody>,
    size_hint: SizeHint,
}

impl Body for DeferredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.taken.is_none() {
            this.taken = this
                .slot
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .take();
        }
        match this.taken.as_mut() {
            Some(body) => Pin::new(body).poll_frame(context),
            None => Poll::Ready(Some(Err(Box::new(BodyAlreadySent)))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no data from the {side} for {timeout_ms} ms")]
struct BodyTimeout {
    side: &'static str,
    timeout_ms: u64,
}

/// A body that fails when its sender goes quiet for longer than `idle` (the client's
/// upload, the backend's response), and that can hold what must live as long as the
/// transfer: the backend session and the request's in-flight mark.
pub(crate) struct TimedBody<B> {
    inner: B,
    idle: Duration,
    side: &'static str,
    deadline: Pin<Box<Sleep>>,
    last_frame: Option<Instant>,
    session: Option<SessionGuard>,
    in_flight: Option<RequestInProgress>,
    /// The backend connection a response arrives on, released when it has arrived whole.
    connection: Option<BackendConnection>,
}

impl<B> TimedBody<B> {
    fn new(inner: B, idle: Duration, side: &'static str) -> TimedBody<B> {
        TimedBody {
            inner,
            idle,
            side,
            deadline: Box::pin(tokio::time::sleep(idle)),
            last_frame: None,
            session: None,
            in_flight: None,
            connection: None,
        }
    }

    fn holding(mut self, session: SessionGuard, in_flight: RequestInProgress) -> TimedBody<B> {
        self.session = Some(session);
        self.in_flight = Some(in_flight);
        self
    }
}

impl<B> TimedBody<B> {
    /// The body has arrived whole: the backend session and the request end now, not
    /// whenever the server gets round to dropping the body, and the backend connection
    /// may carry another request.
    fn finish(&mut self) {
        self.session = None;
        self.in_flight = None;
        if let Some(connection) = self.connection.take() {
            connection.release();
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // The clock starts at the first poll: a request body may wait in its slot while
        // connections are attempted, which is not the client's delay.
        let last_frame = *this.last_frame.get_or_insert_with(Instant::now);
        match Pin::new(&mut this.inner).poll_frame(context) {
            Poll::Ready(Some(Ok(frame))) => {
                // Only the time is noted here; the timer is moved lazily when it fires,
                // which keeps a busy transfer from resetting a timer per frame.
                this.last_frame = Some(Instant::now());
                // hyper stops polling a body that says it has ended, so a body of known
                // length never sees the `None` below.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                ready!(this.deadline.as_mut().poll(context));
                let quiet_until = last_frame + this.idle;
                if Instant::now() < quiet_until {
                    this.deadline.as_mut().reset(quiet_until);
                    continue;
                }
                let timeout_ms = this.idle.as_millis() as u64;
                return Poll::Ready(Some(Err(Box::new(BodyTimeout {
                    side: this.side,
                    timeout_ms,
                }))));
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn prefix_cookies_are_read_stripped_and_joined() {
        let sticky = Sticky::PrefixCookie("JSESSIONID".into());
        let mut request = headers(&[
            ("cookie", "theme=dark; JSESSIONID=web1~abc"),
            ("cookie", "lang=en"),
        ]);
        assert_eq!(
            read_sticky_cookie(Some(&sticky), &mut request).as_deref(),
            Some("web1")
        );
        assert_eq!(request.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(
            request[header::COOKIE],
            "theme=dark; JSESSIONID=abc; lang=en"
        );

        let mut unprefixed = headers(&[("cookie", "JSESSIONID=abc")]);
        assert_eq!(read_sticky_cookie(Some(&sticky), &mut unprefixed), None);
        assert_eq!(unprefixed[header::COOKIE], "JSESSIONID=abc");

        let mut response = headers(&[
            ("set-cookie", "JSESSIONID=abc; Path=/"),
            ("set-cookie", "theme=dark"),
        ]);
        prefix_set_cookies(&mut response, "JSESSIONID", "web2");
        let cookies: Vec<&str> = response
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|value| value.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["JSESSIONID=web2~abc; Path=/", "theme=dark"]);
    }

    #[test]
    fn inserted_cookies_are_read_and_removed() {
        let sticky = Sticky::InsertCookie("SERVERID".into());
        let mut request = headers(&[("cookie", "SERVERID=web2; theme=dark")]);
        assert_eq!(
            read_sticky_cookie(Some(&sticky), &mut request).as_deref(),
            Some("web2")
        );
        assert_eq!(request[header::COOKIE], "theme=dark");
        let mut only = headers(&[("cookie", "SERVERID=web2")]);
        read_sticky_cookie(Some(&sticky), &mut only);
        assert!(!only.contains_key(header::COOKIE));
    }

    #[test]
    fn hop_by_hop_headers_go_and_forwarding_headers_come() {
        let mut request = headers(&[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-kept", "1"),
        ]);
        let uri: Uri = "http://example.org/path".parse().unwrap();
        prepare_request_headers(&mut request, &uri, "::ffff:192.0.2.7".parse().unwrap());
        for gone in ["connection", "x-hop", "keep-alive", "transfer-encoding"] {
            assert!(!request.contains_key(gone), "{gone} was passed on");
        }
        assert_eq!(request["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(request["x-forwarded-proto"], "http");
        assert_eq!(request[header::HOST], "example.org");
        assert_eq!(request["x-kept"], "1");
    }

    #[test]
    fn error_answers_say_what_went_wrong() {
        let response = ProxyError::NoBackend {
            balancer: "webfarm".into(),
        }
        .response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }
}
