//! The recipe's two Apache web servers, built in, so the load-balancer drill needs nothing
//! installed: each serves a page naming itself (`<body>web1</body>` in the recipe), the
//! empty `/lb-check.txt` the health check asks for, and a `/session` page that hands out a
//! `JSESSIONID` cookie so sticky sessions can be watched working.
//!
//! Every response carries `X-Served-By: <name>`, so a client (or a test) can tell which
//! backend answered without parsing the page. Run as a service's replica (as `bramble up`
//! does), the name is the balancer's name for the replica (`web-0`) and the page also
//! names the node it runs on, which changes when the replica moves.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bramble_util::Shutdown;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode};
use ring::rand::SecureRandom;
use tokio::net::TcpListener;

use bramble_http::html::escape_html;
use bramble_http::server::BoundedRequest;
use bramble_http::{ServerLimits, serve_http1};

/// The header naming the server that answered.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
/// The application session cookie of the recipe's sticky-session setup.
pub const SESSION_COOKIE: &str = "JSESSIONID";
/// Bytes of randomness in a new session id (hex-encoded, so twice as many characters).
const SESSION_ID_BYTES: usize = 16;
/// Longest session id accepted from a client; longer or odd-looking ones get a new id.
const MAX_SESSION_ID_LENGTH: usize = 128;

/// Limits of a demo server. It sits behind the balancer, which keeps connections alive, so
/// the idle limit is generous; the connection cap still bounds what a client can hold.
const DEMO_LIMITS: ServerLimits = ServerLimits {
    max_connections: 1024,
    header_read_timeout: Duration::from_secs(30),
    idle_timeout: Duration::from_secs(60),
    max_headers: 64,
    max_head_bytes: 64 * 1024,
    max_body_bytes: 0,
    body_read_timeout: Duration::from_secs(30),
    connection_lifetime: Duration::from_secs(3600),
};

/// Serves the demo web server `name` (on `node`, when it is a replica) on `listener`
/// until `shutdown`.
pub async fn serve_demo_web(
    name: String,
    node: Option<String>,
    listener: TcpListener,
    shutdown: Shutdown,
) {
    // Checked once here so every response can carry the name without a fallible step.
    let served_by =
        HeaderValue::from_str(&name).unwrap_or_else(|_| HeaderValue::from_static("invalid-name"));
    let sessions = Arc::new(Mutex::new(Sessions::default()));
    let handler = move |request: BoundedRequest, _peer: SocketAddr| {
        let mut response = respond(&name, node.as_deref(), &sessions, &request);
        response.headers_mut().insert(SERVED_BY, served_by.clone());
        std::future::ready(response)
    };
    serve_http1("demo-web", listener, DEMO_LIMITS, handler, shutdown).await;
}

/// The sessions this server issued, like an application server's session table: a
/// session id it did not issue (one from another server, after a failover) gets a new
/// session, as Tomcat would. Bounded: the oldest are forgotten first.
#[derive(Default)]
struct Sessions {
    known: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

const MAX_SESSIONS: usize = 10_000;

impl Sessions {
    fn contains(&self, id: &str) -> bool {
        self.known.contains(id)
    }

    fn insert(&mut self, id: String) {
        if self.known.insert(id.clone()) {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_SESSIONS {
            if let Some(oldest) = self.order.pop_front() {
                self.known.remove(&oldest);
            }
        }
    }
}

fn respond(
    name: &str,
    node: Option<&str>,
    sessions: &Mutex<Sessions>,
    request: &BoundedRequest,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !["/", "/index.html", "/lb-check.txt", "/session"].contains(&path) {
        return text(StatusCode::NOT_FOUND, "not found\n".to_string());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed\n".to_string(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        // Like the recipe's `touch lb-check.txt`: an empty file that exists.
        "/lb-check.txt" => text(StatusCode::OK, String::new()),
        "/session" => session_page(name, sessions, request),
        _ => home_page(name, node, request),
    }
}

fn home_page(name: &str, node: Option<&str>, request: &BoundedRequest) -> Response<Full<Bytes>> {
    let name = escape_html(name);
    let mut page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{name}</title></head>\n\
         <body>\n<h1>Served by {name}</h1>\n"
    );
    if let Some(node) = node {
        page.push_str(&format!("<p>on node {}</p>\n", escape_html(node)));
    }
    // The balancer adds the client's address; showing it proves the header made it through.
    let forwarded_for: Vec<&str> = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    if !forwarded_for.is_empty() {
        page.push_str(&format!(
            "<p>X-Forwarded-For: {}</p>\n",
            escape_html(&forwarded_for.join(", "))
        ));
    }
    page.push_str("</body></html>\n");
    let mut response = text(StatusCode::OK, page);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// Shows the session id, creating one when the request has none: behind a sticky
/// balancer, reloading keeps showing the same server and id.
fn session_page(
    name: &str,
    sessions: &Mutex<Sessions>,
    request: &BoundedRequest,
) -> Response<Full<Bytes>> {
    let mut sessions = sessions.lock().unwrap_or_else(|poison| poison.into_inner());
    let (session_id, is_new) = match session_id_of(request) {
        Some(existing) if sessions.contains(&existing) => (existing, false),
        _ => {
            let id = new_session_id();
            sessions.insert(id.clone());
            (id, true)
        }
    };
    drop(sessions);
    let mut response = text(
        StatusCode::OK,
        format!(
            "session {session_id} on {name}{}\n",
            if is_new { " (new)" } else { "" }
        ),
    );
    if is_new {
        let cookie = format!("{SESSION_COOKIE}={session_id}; Path=/");
        // The id is hex, so the cookie is always a valid header value.
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
    }
    response
}

/// The `JSESSIONID` from the request's cookies, if it is a plausible id (the balancer
/// has already stripped its own `server~` prefix).
fn session_id_of(request: &BoundedRequest) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(cookie_name, _)| *cookie_name == SESSION_COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| {
            !value.is_empty()
                && value.len() <= MAX_SESSION_ID_LENGTH
                && value
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte))
        })
        .map(str::to_string)
}

fn new_session_id() -> String {
    let mut bytes = [0u8; SESSION_ID_BYTES];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // No system randomness is near impossible on Linux; a time-derived id still keeps
        // the demo working (ids need not be secret here, only distinct).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        bytes.copy_from_slice(&nanos.to_be_bytes()[..SESSION_ID_BYTES]);
    }
    hex::encode(bytes)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_client::{connect, fetch, send};
    use bramble_util::ShutdownTrigger;

    async fn start(name: &str) -> (SocketAddr, ShutdownTrigger, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (trigger, shutdown) = ShutdownTrigger::new();
        let server = tokio::spawn(serve_demo_web(name.to_string(), None, listener, shutdown));
        (address, trigger, server)
    }

    #[tokio::test]
    async fn the_home_page_names_the_server_over_one_kept_alive_connection() {
        let (address, trigger, server) = start("web1").await;
        let mut connection = connect(address).await;
        let first = send(&mut connection, "GET", "/", &[]).await;
        assert_eq!(first.status, 200);
        assert!(
            first.body.contains("<h1>Served by web1</h1>"),
            "{}",
            first.body
        );
        assert!(!first.body.contains("X-Forwarded-For"));
        assert_eq!(first.headers["x-served-by"], "web1");
        assert!(
            first.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        // The same connection serves a second request (HTTP/1.1 keep-alive).
        let second = send(
            &mut connection,
            "GET",
            "/",
            &[("x-forwarded-for", "192.0.2.7")],
        )
        .await;
        assert!(
            second.body.contains("X-Forwarded-For: 192.0.2.7"),
            "{}",
            second.body
        );
        let hostile = send(
            &mut connection,
            "GET",
            "/",
            &[("x-forwarded-for", "<script>x</script>")],
        )
        .await;
        assert!(
            hostile.body.contains("&lt;script&gt;x&lt;/script&gt;"),
            "{}",
            hostile.body
        );
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_replica_s_page_names_its_node_and_the_header_its_replica() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (trigger, shutdown) = ShutdownTrigger::new();
        tokio::spawn(serve_demo_web(
            "web-0".to_string(),
            Some("n<4>".to_string()),
            listener,
            shutdown,
        ));
        let answer = fetch(address, "GET", "/", &[]).await;
        assert!(answer.body.contains("<h1>Served by web-0</h1>"));
        assert!(
            answer.body.contains("<p>on node n&lt;4&gt;</p>"),
            "{}",
            answer.body
        );
        assert_eq!(answer.headers["x-served-by"], "web-0");
        trigger.trigger();
    }

    #[tokio::test]
    async fn the_health_check_file_answers_head_and_get_with_an_empty_200() {
        let (address, trigger, _server) = start("web2").await;
        for method in ["HEAD", "GET"] {
            let answer = fetch(address, method, "/lb-check.txt", &[]).await;
            assert_eq!(answer.status, 200, "{method}");
            assert!(answer.body.is_empty());
            assert_eq!(answer.headers["x-served-by"], "web2");
        }
        trigger.trigger();
    }

    #[tokio::test]
    async fn sessions_get_a_cookie_once_and_keep_their_id() {
        let (address, trigger, _server) = start("web1").await;
        let first = fetch(address, "GET", "/session", &[]).await;
        assert_eq!(first.status, 200);
        let cookie = first.headers["set-cookie"].to_str().unwrap().to_string();
        let id = cookie
            .strip_prefix("JSESSIONID=")
            .and_then(|rest| rest.strip_suffix("; Path=/"))
            .unwrap_or_else(|| panic!("{cookie}"));
        assert_eq!(id.len(), SESSION_ID_BYTES * 2);
        assert!(id.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_eq!(first.body, format!("session {id} on web1 (new)\n"));

        let cookie_header = format!("theme=dark; JSESSIONID={id}");
        let again = fetch(address, "GET", "/session", &[("cookie", &cookie_header)]).await;
        assert!(again.headers.get("set-cookie").is_none());
        assert_eq!(again.body, format!("session {id} on web1\n"));

        // A second client gets a different id; a nonsense id is replaced.
        let other = fetch(address, "GET", "/session", &[]).await;
        assert_ne!(other.headers["set-cookie"], first.headers["set-cookie"]);
        let odd = fetch(address, "GET", "/session", &[("cookie", "JSESSIONID=<b>")]).await;
        assert!(odd.headers.get("set-cookie").is_some());
        assert!(!odd.body.contains("<b>"));
        trigger.trigger();
    }

    #[tokio::test]
    async fn other_paths_are_404_and_other_methods_405() {
        let (address, trigger, _server) = start("web1").await;
        let missing = fetch(address, "GET", "/etc/passwd", &[]).await;
        assert_eq!(missing.status, 404);
        assert_eq!(missing.headers["x-served-by"], "web1");
        let post = fetch(address, "POST", "/", &[]).await;
        assert_eq!(post.status, 405);
        assert_eq!(post.headers["x-served-by"], "web1");
        trigger.trigger();
    }

    #[tokio::test]
    async fn shutdown_ends_the_server_with_a_connection_still_open() {
        let (address, trigger, server) = start("web1").await;
        let mut idle = connect(address).await;
        assert_eq!(send(&mut idle, "GET", "/", &[]).await.status, 200);
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(address).await.is_err());
    }
}
