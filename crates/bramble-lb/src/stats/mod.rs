//! The statistics page, what the recipe's `listen stats` section gives HAProxy on :8880:
//! one table per balancer with every backend's status in colour (green up, red down),
//! sessions, request rate, errors and the last health-check result. The same data is
//! served as JSON (`/stats.json`, for scripts and `lb show`) and in the Prometheus text
//! format (`/metrics`, for scraping).
//!
//! One concern a file: [`auth`] (who may see it: Basic authentication against an argon2id
//! hash), `rates` (per-second rates from counter totals), `view` (the shape every
//! rendering shares), `html` and `prometheus` (the renderings). This file routes requests.
//! The page is served by the shared hardened server ([`bramble_http::server`]): small
//! heads, no bodies, header-read and idle timeouts, a connection limit, GET/HEAD only.

pub mod auth;
mod html;
mod prometheus;
mod rates;
mod view;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_http::server::{BoundedRequest, MIN_HEAD_BYTES, SimpleResponse};
use bramble_http::{ServerLimits, serve_http1};
use bramble_util::Shutdown;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use tokio::net::TcpListener;

pub use auth::{StatsCredentials, StatsLogin, StatsPasswordError, StoredPassword};

use crate::pool::BalancerStats;
use html::render_html;
use prometheus::render_metrics;
use rates::{RateHistory, RateKey, observe_rate};
use view::{BackendView, BalancerView, StatsDocument};

/// The realm browsers show in their password prompt.
pub const REALM: &str = "Bramble statistics";
/// How often the HTML page reloads itself, in seconds.
pub const REFRESH_SECONDS: u32 = 2;

/// The stats server's bounds: a browser or two and a scraper need few connections and
/// small heads, and send no bodies. Kept-alive connections are closed gracefully after
/// ten minutes, so a client that stops reading cannot hold a slot forever.
const STATS_LIMITS: ServerLimits = ServerLimits {
    max_connections: 64,
    header_read_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(30),
    max_headers: 32,
    max_head_bytes: MIN_HEAD_BYTES,
    max_body_bytes: 0,
    body_read_timeout: Duration::from_secs(10),
    connection_lifetime: Duration::from_secs(600),
};

/// Serves the stats page on `listener` until `shutdown`. `source` is asked for a fresh
/// snapshot of every balancer on each request; `login` says who may see it.
pub async fn serve_stats(
    listener: TcpListener,
    source: Arc<dyn Fn() -> Vec<BalancerStats> + Send + Sync>,
    login: impl Into<StatsLogin>,
    shutdown: Shutdown,
) {
    let state = Arc::new(StatsState {
        source,
        login: login.into(),
        rates: Mutex::new(RateHistory::default()),
    });
    let handler = move |request: BoundedRequest, _peer: SocketAddr| {
        let state = state.clone();
        async move { state.respond(request).await }
    };
    serve_http1("stats", listener, STATS_LIMITS, handler, shutdown).await;
}

struct StatsState {
    source: Arc<dyn Fn() -> Vec<BalancerStats> + Send + Sync>,
    login: StatsLogin,
    /// Earlier counter values, to turn totals into per-second rates.
    rates: Mutex<RateHistory>,
}

impl StatsState {
    async fn respond(&self, request: BoundedRequest) -> SimpleResponse {
        // Authentication comes first so nothing, not even which paths exist, is revealed.
        if !self
            .login
            .accepts(request.headers().get(header::AUTHORIZATION))
            .await
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

/// The balancers' figures in the Prometheus text format, for the monitor's `/metrics` on
/// every `lb` node. Totals only, as on the stats page's `/metrics`: Prometheus works out
/// rates itself, so no rate history is kept for it.
pub fn prometheus_text(balancers: Vec<BalancerStats>) -> String {
    let views: Vec<BalancerView> = balancers
        .into_iter()
        .map(|balancer| BalancerView {
            name: balancer.name,
            listen: balancer.listen,
            mode: balancer.mode,
            balance: balancer.balance,
            vip_holder: balancer.vip_holder,
            frontend_sessions: balancer.frontend_sessions,
            frontend_errors: balancer.frontend_errors,
            frontend_rate_per_second: 0.0,
            backends: balancer
                .backends
                .into_iter()
                .map(|stats| BackendView {
                    stats,
                    rate_per_second: 0.0,
                })
                .collect(),
        })
        .collect();
    render_metrics(&views)
}

fn response_with(status: StatusCode, content_type: &'static str, body: String) -> SimpleResponse {
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

fn text_response(status: StatusCode, body: &str) -> SimpleResponse {
    response_with(status, "text/plain; charset=utf-8", body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::BackendStats;
    use crate::test_client::{basic, fetch};
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
        let login = StatsLogin::new("pi", StoredPassword::hash("raspberry").unwrap());
        let server = tokio::spawn(serve_stats(listener, source, login, shutdown));
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
}
