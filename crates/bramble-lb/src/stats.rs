//! The statistics page, what the recipe's `listen stats` section gives HAProxy on :8880:
//! one table per balancer with every backend's status in colour (green up, red down),
//! sessions, request rate, errors and the last health-check result. The same data is
//! served as JSON (`/stats.json`, for scripts and `lb show`) and in the Prometheus text
//! format (`/metrics`, for scraping).
//!
//! Everything sits behind HTTP Basic authentication like the recipe's `stats auth`. Only
//! the SHA-256 digest of the password is kept, and digests are compared in constant time.
//! The page is reachable from the network, so requests are bounded: small headers, a
//! header read timeout, a connection limit and GET/HEAD only.
//!
//! The small HTTP/1 server loop ([`serve_http1`]) and [`escape_html`] are shared with the
//! built-in demo web servers in `demo_web`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_util::Shutdown;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::pool::{BackendStats, BalancerStats};

/// The realm browsers show in their password prompt.
pub const REALM: &str = "Bramble statistics";
/// How often the HTML page reloads itself, in seconds.
pub const REFRESH_SECONDS: u32 = 2;

/// Connections the stats server serves at once; a browser or two and a scraper need few.
const STATS_MAX_CONNECTIONS: usize = 64;
/// A client must send a request's headers within this time, also while a kept-alive
/// connection sits idle (hyper starts the timer when it waits for the next request).
const STATS_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests to the stats page carry a handful of headers.
const STATS_MAX_HEADERS: usize = 32;
/// Kept-alive connections are closed (gracefully) after this long, so a client that stops
/// reading cannot hold a connection slot forever; browsers simply reconnect.
const STATS_CONNECTION_LIFETIME: Duration = Duration::from_secs(600);
/// The longest `Authorization` header considered; anything longer is refused unread.
const MAX_AUTHORIZATION_BYTES: usize = 1024;

/// Who may see the stats page: a user name and the SHA-256 digest of the password (the
/// plain password is never stored, logged or printed).
#[derive(Clone)]
pub struct StatsCredentials {
    pub user: String,
    pub password_sha256: [u8; 32],
}

impl StatsCredentials {
    /// Credentials from a plain password, which is hashed at once and not kept.
    pub fn from_password(user: impl Into<String>, password: &str) -> StatsCredentials {
        StatsCredentials {
            user: user.into(),
            password_sha256: sha256(password.as_bytes()),
        }
    }

    /// Whether an `Authorization` header carries these credentials. Both the user and the
    /// password are always checked (no early return on a wrong user), and compared as
    /// digests in constant time, so timing tells an attacker nothing about either.
    pub fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic_authorization) else {
            return false;
        };
        let user_matches = digests_equal(&sha256(&user), &sha256(self.user.as_bytes()));
        let password_matches = digests_equal(&sha256(&password), &self.password_sha256);
        user_matches & password_matches
    }
}

impl fmt::Debug for StatsCredentials {
    /// Leaves the digest out: it is password-equivalent for anyone who can guess.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("StatsCredentials")
            .field("user", &self.user)
            .field("password_sha256", &"<redacted>")
            .finish()
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(digest.as_ref());
    bytes
}

/// Compares two digests without branching on their content.
fn digests_equal(first: &[u8; 32], second: &[u8; 32]) -> bool {
    let difference = first
        .iter()
        .zip(second)
        .fold(0u8, |accumulated, (left, right)| {
            accumulated | (left ^ right)
        });
    // black_box keeps the optimiser from turning the fold back into an early exit.
    std::hint::black_box(difference) == 0
}

/// `Basic <base64(user:password)>` → (user, password) as raw bytes.
fn parse_basic_authorization(value: &HeaderValue) -> Option<(Vec<u8>, Vec<u8>)> {
    let bytes = value.as_bytes();
    if bytes.len() > MAX_AUTHORIZATION_BYTES {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = decode_base64(encoded.trim())?;
    let colon = decoded.iter().position(|&byte| byte == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

/// Standard base64 (RFC 4648, `+/`, padding optional). None on any other character.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value_of(symbol: u8) -> Option<u32> {
        Some(match symbol {
            b'A'..=b'Z' => symbol - b'A',
            b'a'..=b'z' => symbol - b'a' + 26,
            b'0'..=b'9' => symbol - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let symbols = text.trim_end_matches('=').as_bytes();
    if text.len() - symbols.len() > 2 || symbols.len() % 4 == 1 {
        return None;
    }
    let mut output = Vec::with_capacity(symbols.len() * 3 / 4);
    for chunk in symbols.chunks(4) {
        let mut accumulated = 0u32;
        for &symbol in chunk {
            accumulated = (accumulated << 6) | value_of(symbol)?;
        }
        // A partial chunk of n symbols holds n*6 bits, of which the whole bytes count.
        let bits = chunk.len() as u32 * 6;
        accumulated <<= 24 - bits;
        let bytes = accumulated.to_be_bytes();
        output.extend_from_slice(&bytes[1..1 + (bits / 8) as usize]);
    }
    Some(output)
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Serves the stats page on `listener` until `shutdown`. `source` is asked for a fresh
/// snapshot of every balancer on each request.
pub async fn serve_stats(
    listener: TcpListener,
    source: Arc<dyn Fn() -> Vec<BalancerStats> + Send + Sync>,
    credentials: StatsCredentials,
    shutdown: Shutdown,
) {
    let state = Arc::new(StatsState {
        source,
        credentials,
        rates: Mutex::new(RateHistory::default()),
    });
    let limits = ServerLimits {
        max_connections: STATS_MAX_CONNECTIONS,
        header_read_timeout: STATS_HEADER_READ_TIMEOUT,
        max_headers: STATS_MAX_HEADERS,
        connection_lifetime: STATS_CONNECTION_LIFETIME,
    };
    serve_http1(
        "stats",
        listener,
        limits,
        move |request: &Request<Incoming>, _peer: SocketAddr| state.respond(request),
        shutdown,
    )
    .await;
}

struct StatsState {
    source: Arc<dyn Fn() -> Vec<BalancerStats> + Send + Sync>,
    credentials: StatsCredentials,
    /// Earlier counter values, to turn totals into per-second rates.
    rates: Mutex<RateHistory>,
}

impl StatsState {
    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        // Authentication comes first so nothing, not even which paths exist, is revealed.
        if !self
            .credentials
            .accepts(request.headers().get(header::AUTHORIZATION))
        {
            let mut response = text_response(StatusCode::UNAUTHORIZED, "authentication required\n");
            let challenge = format!("Basic realm=\"{REALM}\", charset=\"UTF-8\"");
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
            return response;
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are allowed\n",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let path = request.uri().path();
        if !["/", "/stats.json", "/metrics"].contains(&path) {
            return text_response(
                StatusCode::NOT_FOUND,
                "not found; try /, /stats.json or /metrics\n",
            );
        }
        let snapshot = self.snapshot();
        match path {
            "/stats.json" => {
                let body = serde_json::to_string_pretty(&StatsDocument {
                    balancers: &snapshot,
                })
                .unwrap_or_else(|error| {
                    serde_json::json!({ "error": error.to_string() }).to_string()
                });
                response_with(StatusCode::OK, "application/json", body)
            }
            "/metrics" => response_with(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                render_metrics(&snapshot),
            ),
            _ => {
                let mut response = response_with(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    render_html(&snapshot),
                );
                // Defence in depth behind the escaping: the page needs no scripts at all.
                response.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
                );
                response
            }
        }
    }

    /// The source's data with request rates worked out against earlier scrapes.
    fn snapshot(&self) -> Vec<BalancerView> {
        let balancers = (self.source)();
        let now = Instant::now();
        let mut rates = self
            .rates
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut previous = std::mem::take(&mut rates.series);
        let mut rate_of = |key: RateKey, total: u64| {
            let mut samples = previous.remove(&key).unwrap_or_default();
            let rate = observe_rate(&mut samples, now, total);
            rates.series.insert(key, samples);
            rate
        };
        // Series of balancers or backends that are gone are left in `previous` and dropped,
        // so the history never outgrows the configuration.
        balancers
            .into_iter()
            .map(|balancer| {
                let frontend_rate_per_second = rate_of(
                    RateKey::Frontend(balancer.name.clone()),
                    balancer.frontend_sessions,
                );
                let backends = balancer
                    .backends
                    .into_iter()
                    .map(|backend| {
                        let key = RateKey::Backend(balancer.name.clone(), backend.name.clone());
                        BackendView {
                            rate_per_second: rate_of(key, backend.total_sessions),
                            stats: backend,
                        }
                    })
                    .collect();
                BalancerView {
                    name: balancer.name,
                    listen: balancer.listen,
                    mode: balancer.mode,
                    balance: balancer.balance,
                    vip_holder: balancer.vip_holder,
                    frontend_sessions: balancer.frontend_sessions,
                    frontend_errors: balancer.frontend_errors,
                    frontend_rate_per_second,
                    backends,
                }
            })
            .collect()
    }
}

/// One balancer as the stats page shows it: the pool's numbers plus rates.
#[derive(Debug, Clone, Serialize)]
struct BalancerView {
    name: String,
    listen: String,
    mode: String,
    balance: String,
    vip_holder: Option<String>,
    frontend_sessions: u64,
    frontend_errors: u64,
    frontend_rate_per_second: f64,
    backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Serialize)]
struct BackendView {
    #[serde(flatten)]
    stats: BackendStats,
    rate_per_second: f64,
}

#[derive(Serialize)]
struct StatsDocument<'a> {
    balancers: &'a [BalancerView],
}

// --- Request rates -------------------------------------------------------------------

/// Rates are averaged over about this long.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// A new sample is stored at most this often, however often the page is scraped, so the
/// window keeps its length when several clients watch the page.
const RATE_SAMPLE_SPACING: Duration = Duration::from_secs(1);
/// Samples kept per series (the window and spacing need about 11).
const RATE_MAX_SAMPLES: usize = 16;
/// Below this span a rate would be mostly noise; report 0 until the history is longer.
const RATE_MIN_SPAN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RateKey {
    Frontend(String),
    Backend(String, String),
}

#[derive(Default)]
struct RateHistory {
    series: HashMap<RateKey, VecDeque<(Instant, u64)>>,
}

/// Records `total` at `now` in `samples` and returns the rate per second since the oldest
/// sample in the window.
fn observe_rate(samples: &mut VecDeque<(Instant, u64)>, now: Instant, total: u64) -> f64 {
    // A counter that went backwards belongs to a new pool: the old history means nothing.
    if samples.back().is_some_and(|&(_, last)| total < last) {
        samples.clear();
    }
    // Keep one sample older than the window as the baseline, drop the ones before it.
    while samples.len() >= 2
        && samples
            .get(1)
            .is_some_and(|&(time, _)| now.saturating_duration_since(time) >= RATE_WINDOW)
    {
        samples.pop_front();
    }
    let rate = match samples.front() {
        Some(&(time, oldest)) if now.saturating_duration_since(time) >= RATE_MIN_SPAN => {
            (total - oldest) as f64 / now.saturating_duration_since(time).as_secs_f64()
        }
        _ => 0.0,
    };
    let due = samples
        .back()
        .is_none_or(|&(time, _)| now.saturating_duration_since(time) >= RATE_SAMPLE_SPACING);
    if due {
        samples.push_back((now, total));
        while samples.len() > RATE_MAX_SAMPLES {
            samples.pop_front();
        }
    }
    rate
}

// --- Rendering -----------------------------------------------------------------------

/// CSS class and label of a backend status. The class comes from this fixed list, never
/// from the data, and unknown statuses show grey.
fn status_style(status: &str) -> (&'static str, &'static str) {
    match status {
        "up" => ("up", "UP"),
        "down" => ("down", "DOWN"),
        "ejected" => ("down", "EJECTED"),
        "drain" => ("drain", "DRAIN"),
        "disabled" => ("disabled", "DISABLED"),
        _ => ("disabled", "UNKNOWN"),
    }
}

const STYLE: &str = "\
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #999; padding: 0.25em 0.6em; text-align: right; }
th { background: #ddd; }
td.text { text-align: left; }
td.status { text-align: center; font-weight: bold; }
td.status.up { background: #4caf50; color: #fff; }
td.status.down { background: #e53935; color: #fff; }
td.status.drain { background: #fb8c00; color: #fff; }
td.status.disabled { background: #9e9e9e; color: #fff; }
p.summary { color: #444; }
";

fn render_html(balancers: &[BalancerView]) -> String {
    let mut page = String::with_capacity(4096);
    // Writing to a String cannot fail, so the results of write! are ignored throughout.
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>Bramble statistics</title><style>\n{STYLE}</style></head>\n<body>\n\
         <h1>Bramble load balancer statistics</h1>\n\
         <p class=\"summary\">Refreshes every {REFRESH_SECONDS} s. \
         Also as <a href=\"/stats.json\">JSON</a> and <a href=\"/metrics\">Prometheus metrics</a>.</p>\n"
    );
    if balancers.is_empty() {
        page.push_str("<p>No balancers run on this node.</p>\n");
    }
    for balancer in balancers {
        let vip_holder = balancer.vip_holder.as_deref().unwrap_or("unknown");
        let _ = write!(
            page,
            "<h2>{name}</h2>\n<p class=\"summary\">listen {listen} · mode {mode} · balance {balance} · \
             VIP holder {vip_holder} · frontend: {sessions} sessions, {rate:.1}/s, {errors} errors</p>\n",
            name = escape_html(&balancer.name),
            listen = escape_html(&balancer.listen),
            mode = escape_html(&balancer.mode),
            balance = escape_html(&balancer.balance),
            vip_holder = escape_html(vip_holder),
            sessions = balancer.frontend_sessions,
            rate = balancer.frontend_rate_per_second,
            errors = balancer.frontend_errors,
        );
        page.push_str(
            "<table>\n<tr><th>Backend</th><th>Address</th><th>Status</th><th>Current sessions</th>\
             <th>Total sessions</th><th>Rate /s</th><th>Errors</th><th>Last check</th>\
             <th>Weight (effective)</th></tr>\n",
        );
        for backend in &balancer.backends {
            let stats = &backend.stats;
            let (class, label) = status_style(&stats.status);
            let _ = writeln!(
                page,
                "<tr id=\"backend-{id}\"><td class=\"text\">{name}</td><td class=\"text\">{address}</td>\
                 <td class=\"status {class}\">{label}</td><td>{active}</td><td>{total}</td>\
                 <td>{rate:.1}</td><td>{errors}</td><td class=\"text\">{last_check}</td>\
                 <td>{weight} ({effective})</td></tr>",
                id = escape_html(&stats.name),
                name = escape_html(&stats.name),
                address = escape_html(&stats.addr),
                active = stats.active_sessions,
                total = stats.total_sessions,
                rate = backend.rate_per_second,
                errors = stats.errors,
                last_check = escape_html(&stats.last_check),
                weight = stats.weight,
                effective = stats.effective_weight,
            );
        }
        page.push_str("</table>\n");
    }
    page.push_str("</body></html>\n");
    page
}

/// Escapes a Prometheus label value (backslash, double quote and newline).
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The Prometheus text exposition format 0.0.4: each family's HELP and TYPE, then all its
/// samples together (the format requires a family's samples to be contiguous).
fn render_metrics(balancers: &[BalancerView]) -> String {
    type BackendValue = fn(&BackendView) -> u64;
    const BACKEND_FAMILIES: [(&str, &str, &str, BackendValue); 5] = [
        (
            "bramble_lb_backend_up",
            "gauge",
            "1 when the backend passes its health checks and is not ejected (up or draining).",
            |backend| u64::from(matches!(backend.stats.status.as_str(), "up" | "drain")),
        ),
        (
            "bramble_lb_backend_active_sessions",
            "gauge",
            "Sessions (HTTP requests in flight or TCP connections) open to the backend now.",
            |backend| backend.stats.active_sessions as u64,
        ),
        (
            "bramble_lb_backend_sessions_total",
            "counter",
            "Sessions sent to the backend since the balancer started.",
            |backend| backend.stats.total_sessions,
        ),
        (
            "bramble_lb_backend_errors_total",
            "counter",
            "Connection and response errors with the backend since the balancer started.",
            |backend| backend.stats.errors,
        ),
        (
            "bramble_lb_backend_effective_weight",
            "gauge",
            "The backend's weight now (lower than configured during slow start).",
            |backend| u64::from(backend.stats.effective_weight),
        ),
    ];
    type FrontendValue = fn(&BalancerView) -> u64;
    const FRONTEND_FAMILIES: [(&str, &str, &str, FrontendValue); 2] = [
        (
            "bramble_lb_frontend_sessions_total",
            "counter",
            "Requests (HTTP) or connections (TCP) accepted from clients since the balancer started.",
            |balancer| balancer.frontend_sessions,
        ),
        (
            "bramble_lb_frontend_errors_total",
            "counter",
            "Requests the balancer itself answered with an error since it started.",
            |balancer| balancer.frontend_errors,
        ),
    ];
    const STATES: [&str; 5] = ["up", "down", "ejected", "drain", "disabled"];

    let mut text = String::with_capacity(4096);
    for (name, kind, help, value_of) in FRONTEND_FAMILIES {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for balancer in balancers {
            let _ = writeln!(
                text,
                "{name}{{balancer=\"{}\"}} {}",
                escape_label(&balancer.name),
                value_of(balancer)
            );
        }
    }
    for (name, kind, help, value_of) in BACKEND_FAMILIES {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for balancer in balancers {
            for backend in &balancer.backends {
                let _ = writeln!(
                    text,
                    "{name}{{balancer=\"{}\",backend=\"{}\"}} {}",
                    escape_label(&balancer.name),
                    escape_label(&backend.stats.name),
                    value_of(backend)
                );
            }
        }
    }
    let name = "bramble_lb_backend_state";
    let _ = writeln!(
        text,
        "# HELP {name} 1 for the backend's current state (up, down, ejected, drain, disabled), 0 for the others.\n# TYPE {name} gauge"
    );
    for balancer in balancers {
        for backend in &balancer.backends {
            for state in STATES {
                let _ = writeln!(
                    text,
                    "{name}{{balancer=\"{}\",backend=\"{}\",state=\"{state}\"}} {}",
                    escape_label(&balancer.name),
                    escape_label(&backend.stats.name),
                    u64::from(backend.stats.status == state)
                );
            }
        }
    }
    text
}

fn response_with(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Statistics are live data: never serve them from a cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn text_response(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response_with(status, "text/plain; charset=utf-8", body.to_string())
}

// --- The small HTTP/1 server shared with demo_web ------------------------------------

/// Bounds of one of the small built-in HTTP servers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerLimits {
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Time to send a request's headers, and the idle limit of kept-alive connections.
    pub header_read_timeout: Duration,
    /// Most request headers accepted (more get 431).
    pub max_headers: usize,
    /// After this long a connection is closed gracefully (after its current request).
    pub connection_lifetime: Duration,
}

/// hyper's smallest allowed read buffer; it also caps the request head at 8 KiB.
const MAX_REQUEST_HEAD_BYTES: usize = 8192;
/// How long open connections get to finish their request once shutdown is triggered.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves HTTP/1.1 (with keep-alive) on `listener` until `shutdown`, answering every
/// request with `handler`. Request bodies are never read. `what` names the server in logs.
pub(crate) async fn serve_http1<Handler>(
    what: &'static str,
    listener: TcpListener,
    limits: ServerLimits,
    handler: Handler,
    mut shutdown: Shutdown,
) where
    Handler:
        Fn(&Request<Incoming>, SocketAddr) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
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
                    handler.clone(),
                    shutdown.clone(),
                    permit,
                ));
            }
            Err(error) => {
                // Usually out of file descriptors: back off instead of spinning.
                warn!(server = what, "accepting a connection failed: {error}");
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
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

async fn serve_connection<Handler>(
    what: &'static str,
    stream: TcpStream,
    peer: SocketAddr,
    limits: ServerLimits,
    handler: Handler,
    mut shutdown: Shutdown,
    permit: OwnedSemaphorePermit,
) where
    Handler: Fn(&Request<Incoming>, SocketAddr) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        std::future::ready(Ok::<_, Infallible>(handler(&request, peer)))
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(server = what, %peer, "connection ended: {error}");
            }
            drop(permit);
            return;
        }
        _ = shutdown.wait() => {}
        _ = tokio::time::sleep(limits.connection_lifetime) => {}
    }
    connection.as_mut().graceful_shutdown();
    if tokio::time::timeout(SHUTDOWN_GRACE, connection)
        .await
        .is_err()
    {
        debug!(server = what, %peer, "connection did not finish within the grace period");
    }
    drop(permit);
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A minimal HTTP/1.1 client over a real socket for the tests of this crate's servers.

    use super::*;
    use http_body_util::BodyExt;
    use hyper::client::conn::http1::SendRequest;

    pub(crate) struct Answer {
        pub status: u16,
        pub headers: hyper::HeaderMap,
        pub body: String,
    }

    /// Opens one kept-alive connection to `address`.
    pub(crate) async fn connect(address: SocketAddr) -> SendRequest<Full<Bytes>> {
        let stream = TcpStream::connect(address).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        sender
    }

    pub(crate) async fn send(
        sender: &mut SendRequest<Full<Bytes>>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "test");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).expect("request");
        sender.ready().await.expect("connection ready");
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("answer in time")
            .expect("answer");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// One request on a fresh connection.
    pub(crate) async fn fetch(
        address: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut sender = connect(address).await;
        send(&mut sender, method, path, headers).await
    }

    /// Standard base64 with padding, for building `Authorization` headers.
    pub(crate) fn encode_base64(data: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = String::new();
        for chunk in data.chunks(3) {
            let mut buffer = [0u8; 3];
            buffer[..chunk.len()].copy_from_slice(chunk);
            let value = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]);
            for index in 0..4 {
                if index <= chunk.len() {
                    text.push(ALPHABET[((value >> (18 - 6 * index)) & 63) as usize] as char);
                } else {
                    text.push('=');
                }
            }
        }
        text
    }

    pub(crate) fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            encode_base64(format!("{user}:{password}").as_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{basic, encode_base64, fetch};
    use super::*;
    use bramble_util::ShutdownTrigger;

    fn backend(name: &str, status: &str, total_sessions: u64) -> BackendStats {
        BackendStats {
            name: name.into(),
            addr: "127.0.0.1:8081".into(),
            status: status.into(),
            weight: 2,
            effective_weight: 1,
            active_sessions: 3,
            total_sessions,
            errors: 4,
            last_check: "L7OK 200 in 1 ms".into(),
        }
    }

    fn webfarm(backends: Vec<BackendStats>) -> BalancerStats {
        BalancerStats {
            name: "webfarm".into(),
            listen: "127.0.2.100:8080".into(),
            mode: "http".into(),
            balance: "roundrobin".into(),
            vip_holder: Some("lb1".into()),
            frontend_sessions: 42,
            frontend_errors: 1,
            backends,
        }
    }

    async fn start(
        balancers: Vec<BalancerStats>,
    ) -> (SocketAddr, ShutdownTrigger, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (trigger, shutdown) = ShutdownTrigger::new();
        let source: Arc<dyn Fn() -> Vec<BalancerStats> + Send + Sync> =
            Arc::new(move || balancers.clone());
        let credentials = StatsCredentials::from_password("pi", "raspberry");
        let server = tokio::spawn(serve_stats(listener, source, credentials, shutdown));
        (address, trigger, server)
    }

    fn recipe_backends() -> Vec<BackendStats> {
        vec![
            backend("web1", "down", 10),
            backend("web2", "up", 20),
            backend("web3", "drain", 0),
            backend("web4", "disabled", 0),
            backend("web5", "ejected", 0),
        ]
    }

    #[tokio::test]
    async fn without_the_right_credentials_the_answer_is_401() {
        let (address, trigger, server) = start(vec![webfarm(recipe_backends())]).await;
        let wrong_password = basic("pi", "raspberr");
        let wrong_user = basic("pj", "raspberry");
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("authorization", wrong_password.as_str())],
            vec![("authorization", wrong_user.as_str())],
            vec![("authorization", "Basic !!!notbase64")],
            vec![("authorization", "Bearer cGk6cmFzcGJlcnJ5")],
            vec![("authorization", "Basic cGlyYXNwYmVycnk=")], // "pi" "raspberry" without a colon
        ];
        for headers in cases {
            for path in ["/", "/stats.json", "/metrics", "/nothing"] {
                let answer = fetch(address, "GET", path, &headers).await;
                assert_eq!(answer.status, 401, "{path} {headers:?}");
                let challenge = answer
                    .headers
                    .get("www-authenticate")
                    .unwrap()
                    .to_str()
                    .unwrap();
                assert!(
                    challenge.starts_with("Basic realm=\"Bramble statistics\""),
                    "{challenge}"
                );
                assert!(!answer.body.contains("web1"));
            }
        }
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn the_page_shows_each_backend_with_its_status_colour() {
        let (address, trigger, server) = start(vec![webfarm(recipe_backends())]).await;
        let authorization = basic("pi", "raspberry");
        let answer = fetch(address, "GET", "/", &[("authorization", &authorization)]).await;
        assert_eq!(answer.status, 200);
        assert!(
            answer.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let page = answer.body;
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
        assert!(page.contains("<h2>webfarm</h2>"));
        for (name, class) in [
            ("web1", "down"),
            ("web2", "up"),
            ("web3", "drain"),
            ("web4", "disabled"),
            ("web5", "down"),
        ] {
            let row = page
                .lines()
                .find(|line| line.starts_with(&format!("<tr id=\"backend-{name}\">")))
                .unwrap_or_else(|| panic!("no row for {name} in {page}"));
            assert!(
                row.contains(&format!("<td class=\"status {class}\">")),
                "{row}"
            );
            assert!(row.contains("L7OK 200 in 1 ms"), "{row}");
            assert!(row.contains("<td>2 (1)</td>"), "{row}");
        }
        // The colours themselves: green up, red down, orange drain, grey disabled.
        assert!(page.contains("td.status.up { background: #4caf50;"));
        assert!(page.contains("td.status.down { background: #e53935;"));
        assert!(page.contains("td.status.drain { background: #fb8c00;"));
        assert!(page.contains("td.status.disabled { background: #9e9e9e;"));

        // HEAD answers the headers only; other methods are refused.
        let head = fetch(address, "HEAD", "/", &[("authorization", &authorization)]).await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        let post = fetch(address, "POST", "/", &[("authorization", &authorization)]).await;
        assert_eq!(post.status, 405);
        assert_eq!(post.headers["allow"], "GET, HEAD");
        let missing = fetch(
            address,
            "GET",
            "/admin",
            &[("authorization", &authorization)],
        )
        .await;
        assert_eq!(missing.status, 404);
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn hostile_strings_are_escaped_in_the_page() {
        let mut hostile = backend("<script>alert('x')</script>", "up", 1);
        hostile.last_check = "L7RSP \"><img src=x onerror=alert(1)>".into();
        let mut balancer = webfarm(vec![hostile]);
        balancer.name = "farm&<b>".into();
        let (address, trigger, _server) = start(vec![balancer]).await;
        let authorization = basic("pi", "raspberry");
        let page = fetch(address, "GET", "/", &[("authorization", &authorization)])
            .await
            .body;
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
            "{page}"
        );
        assert!(
            page.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"),
            "{page}"
        );
        assert!(page.contains("<h2>farm&amp;&lt;b&gt;</h2>"), "{page}");
        trigger.trigger();
    }

    #[tokio::test]
    async fn json_parses_and_carries_rates() {
        let (address, trigger, _server) = start(vec![webfarm(recipe_backends())]).await;
        let authorization = basic("pi", "raspberry");
        let answer = fetch(
            address,
            "GET",
            "/stats.json",
            &[("authorization", &authorization)],
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["content-type"], "application/json");
        let document: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        let balancer = &document["balancers"][0];
        assert_eq!(balancer["name"], "webfarm");
        assert_eq!(balancer["frontend_sessions"], 42);
        assert_eq!(balancer["vip_holder"], "lb1");
        assert!(balancer["frontend_rate_per_second"].is_number());
        let backends = balancer["backends"].as_array().unwrap();
        assert_eq!(backends.len(), 5);
        assert_eq!(backends[1]["name"], "web2");
        assert_eq!(backends[1]["status"], "up");
        assert_eq!(backends[1]["total_sessions"], 20);
        assert_eq!(backends[1]["last_check"], "L7OK 200 in 1 ms");
        assert!(backends[1]["rate_per_second"].is_number());
        trigger.trigger();
    }

    /// Splits `name{labels} value` and checks every part of it.
    fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed: {line}")),
            ),
            None => (series, ""),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|character| character.is_ascii_alphanumeric()
                        || character == '_'
                        || character == ':')
                && !name.starts_with(|character: char| character.is_ascii_digit()),
            "bad name: {line}"
        );
        let mut parsed = Vec::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (label, after) = rest
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label: {line}"));
            let mut value = String::new();
            let mut characters = after.char_indices();
            let end = loop {
                match characters.next() {
                    Some((_, '\\')) => match characters.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => panic!("dangling escape: {line}"),
                    },
                    Some((index, '"')) => break index,
                    Some((_, other)) => value.push(other),
                    None => panic!("unterminated label value: {line}"),
                }
            };
            parsed.push((label.to_string(), value));
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        (name.to_string(), parsed, value)
    }

    #[tokio::test]
    async fn metrics_follow_the_prometheus_text_format() {
        let mut backends = recipe_backends();
        backends.push(backend("quote\"back\\slash\nnewline", "up", 5));
        let (address, trigger, _server) = start(vec![webfarm(backends)]).await;
        let authorization = basic("pi", "raspberry");
        let answer = fetch(
            address,
            "GET",
            "/metrics",
            &[("authorization", &authorization)],
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.headers["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let mut samples = Vec::new();
        let mut typed = Vec::new();
        for line in answer.body.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut words = comment.splitn(3, ' ');
                let keyword = words.next().unwrap();
                assert!(keyword == "HELP" || keyword == "TYPE", "{line}");
                if keyword == "TYPE" {
                    typed.push(words.next().unwrap().to_string());
                    assert!(
                        ["gauge", "counter"].contains(&words.next().unwrap()),
                        "{line}"
                    );
                }
                continue;
            }
            let sample = parse_sample(line);
            assert_eq!(
                typed.last(),
                Some(&sample.0),
                "samples must follow their TYPE line: {line}"
            );
            samples.push(sample);
        }
        let find = |name: &str, backend: &str| {
            samples
                .iter()
                .find(|(sample_name, labels, _)| {
                    sample_name == name
                        && labels.contains(&("balancer".to_string(), "webfarm".to_string()))
                        && (backend.is_empty()
                            || labels.contains(&("backend".to_string(), backend.to_string())))
                })
                .map(|(_, _, value)| *value)
                .unwrap_or_else(|| panic!("no {name} for {backend:?}"))
        };
        assert_eq!(find("bramble_lb_backend_up", "web1"), 0.0);
        assert_eq!(find("bramble_lb_backend_up", "web2"), 1.0);
        assert_eq!(find("bramble_lb_backend_sessions_total", "web2"), 20.0);
        assert_eq!(find("bramble_lb_backend_active_sessions", "web2"), 3.0);
        assert_eq!(find("bramble_lb_backend_errors_total", "web2"), 4.0);
        assert_eq!(find("bramble_lb_frontend_sessions_total", ""), 42.0);
        assert_eq!(
            find("bramble_lb_backend_up", "quote\"back\\slash\nnewline"),
            1.0
        );
        trigger.trigger();
    }

    #[test]
    fn rates_come_from_counter_deltas_between_scrapes() {
        let start = Instant::now();
        let mut samples = VecDeque::new();
        assert_eq!(observe_rate(&mut samples, start, 100), 0.0);
        // Scrapes in quick succession neither add samples nor give a noisy rate.
        assert_eq!(
            observe_rate(&mut samples, start + Duration::from_millis(10), 100),
            0.0
        );
        assert_eq!(samples.len(), 1);
        let rate = observe_rate(&mut samples, start + Duration::from_secs(2), 120);
        assert!((rate - 10.0).abs() < 1e-9, "{rate}");
        // Over a long run only the window counts.
        for second in 3..=60u64 {
            observe_rate(
                &mut samples,
                start + Duration::from_secs(second),
                120 + (second - 2) * 50,
            );
        }
        assert!(samples.len() <= RATE_MAX_SAMPLES);
        let rate = observe_rate(&mut samples, start + Duration::from_secs(61), 120 + 59 * 50);
        assert!((rate - 50.0).abs() < 1e-9, "{rate}");
        // A counter that went backwards (new pool) restarts the history instead of
        // underflowing.
        assert_eq!(
            observe_rate(&mut samples, start + Duration::from_secs(62), 5),
            0.0
        );
        assert_eq!(samples.len(), 1);
    }

    #[test]
    fn credentials_check_the_digest_and_decode_base64_strictly() {
        let credentials = StatsCredentials::from_password("pi", "rasp:berry");
        let header = |text: &str| HeaderValue::from_str(text).unwrap();
        assert!(credentials.accepts(Some(&header(&basic("pi", "rasp:berry")))));
        assert!(credentials.accepts(Some(&header(&format!(
            "basic  {}",
            encode_base64(b"pi:rasp:berry")
        )))));
        assert!(!credentials.accepts(Some(&header(&basic("pi", "rasp")))));
        assert!(!credentials.accepts(None));
        assert!(!format!("{credentials:?}").contains("berry"));
        for length in 0..40 {
            let data: Vec<u8> = (0..length as u8)
                .map(|byte| byte.wrapping_mul(37))
                .collect();
            assert_eq!(
                decode_base64(&encode_base64(&data)).unwrap(),
                data,
                "{length}"
            );
            assert_eq!(
                decode_base64(encode_base64(&data).trim_end_matches('=')).unwrap(),
                data
            );
        }
        for bad in ["a", "ab=c", "a===", "ab$d", "é"] {
            assert!(decode_base64(bad).is_none(), "{bad}");
        }
        let long = format!("Basic {}", "A".repeat(MAX_AUTHORIZATION_BYTES));
        assert!(!credentials.accepts(Some(&header(&long))));
    }
}
