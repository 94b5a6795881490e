//! The proxy data path end to end: real balancers on 127.0.0.1 in front of real hyper
//! (and raw TCP) backends started by each test, driven by real clients. Every step that
//! could hang is bounded by [`bounded`]; nothing asserts on timing beyond that.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bramble_lb::balancer::{Balancer, BalancerHandle, LbError};
use bramble_lb::config::{
    AdminState, BackendSpec, BalancerSpec, Limits, Mode, Sticky, Timeouts, VipSpec,
};
use bramble_util::ShutdownTrigger;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Longest any single step may take before the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(30);

async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .expect("a test step hung")
}

/// What a test backend knows and records.
struct BackendInfo {
    name: String,
    /// The JSESSIONID this backend hands out (and recognises).
    session: String,
    requests: AtomicUsize,
    holding: AtomicUsize,
    release: watch::Sender<bool>,
}

/// An HTTP backend: answers with its name in `x-backend` and the body, reports what it
/// received in `x-seen-*` headers, sets `JSESSIONID=<session>` unless the request
/// already carries it, and holds `/hold` requests until released.
struct Backend {
    info: Arc<BackendInfo>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Backend {
    async fn start(name: &str, session: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let info = Arc::new(BackendInfo {
            name: name.to_string(),
            session: session.to_string(),
            requests: AtomicUsize::new(0),
            holding: AtomicUsize::new(0),
            release: watch::channel(false).0,
        });
        let served = info.clone();
        let task = tokio::spawn(async move {
            // Owning the connection tasks here means aborting this task kills them all,
            // like a server process dying.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let info = served.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| answer(info.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Backend { info, addr, task }
    }

    fn name(&self) -> &str {
        &self.info.name
    }

    fn release(&self) {
        self.info.release.send_replace(true);
    }

    /// Closes the listener and every connection, as when the server process dies.
    async fn kill(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

async fn answer(
    info: Arc<BackendInfo>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    info.requests.fetch_add(1, Ordering::Relaxed);
    let seen = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (forwarded_for, proto, cookie, hop) = (
        seen("x-forwarded-for"),
        seen("x-forwarded-proto"),
        seen("cookie"),
        seen("x-hop"),
    );
    let path = request.uri().path().to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    if path == "/hold" {
        info.holding.fetch_add(1, Ordering::Relaxed);
        let _ = info
            .release
            .subscribe()
            .wait_for(|released| *released)
            .await;
    }
    let has_session = cookie
        .split(';')
        .map(str::trim)
        .any(|pair| pair.strip_prefix("JSESSIONID=") == Some(info.session.as_str()));
    let mut response = Response::builder()
        .header("x-backend", &info.name)
        .header("x-seen-forwarded-for", forwarded_for)
        .header("x-seen-proto", proto)
        .header("x-seen-cookie", cookie)
        .header("x-seen-hop", hop)
        .header("x-seen-body-length", body.len().to_string());
    if !has_session {
        response = response.header("set-cookie", format!("JSESSIONID={}; Path=/", info.session));
    }
    Ok(response
        .body(Full::new(Bytes::from(info.name.clone())))
        .unwrap())
}

/// A raw TCP backend on a free port that runs `serve` on every connection it accepts.
async fn start_raw_backend<F, Serving>(serve: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Serving + Send + 'static,
    Serving: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        // Owning the connection tasks here means aborting this task ends them all.
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            connections.spawn(serve(stream));
            while connections.try_join_next().is_some() {}
        }
    });
    (addr, task)
}

/// A listener that answers every connection with bytes that are not HTTP.
async fn start_garbage_backend() -> (SocketAddr, JoinHandle<()>) {
    start_raw_backend(|mut stream| async move {
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let _ = stream.write_all(b"this is not HTTP at all\r\n\r\n").await;
        let _ = stream.shutdown().await;
    })
    .await
}

/// A listener that accepts connections, reads the requests and never answers: a hung
/// (stopped, deadlocked) server, which the kernel still accepts connections for.
async fn start_silent_backend() -> (SocketAddr, JoinHandle<()>) {
    start_raw_backend(|mut stream| async move {
        let mut request = [0u8; 4096];
        while matches!(stream.read(&mut request).await, Ok(read) if read > 0) {}
    })
    .await
}

/// A TCP echo server that can be killed like [`Backend`].
async fn start_echo_backend() -> (SocketAddr, JoinHandle<()>) {
    start_raw_backend(|mut stream| async move {
        let (mut reader, mut writer) = stream.split();
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
        let _ = writer.shutdown().await;
    })
    .await
}

fn spec(backends: &[(&str, SocketAddr)], balance: &str) -> BalancerSpec {
    BalancerSpec {
        name: "webfarm".into(),
        // Replaced by a free port in `start`.
        listen: "127.0.0.1:1".parse().unwrap(),
        mode: Mode::Http,
        balance: balance.parse().unwrap(),
        backends: backends
            .iter()
            .map(|(name, addr)| BackendSpec {
                name: name.to_string(),
                addr: *addr,
                weight: 1,
                admin: AdminState::Enabled,
            })
            .collect(),
        services: Vec::new(),
        check: None,
        sticky: None,
        timeouts: Timeouts {
            connect_ms: 500,
            client_ms: 3000,
            server_ms: 3000,
            retry_ms: 300,
        },
        limits: Limits::default(),
        slow_start_secs: 0,
        vip: VipSpec::default(),
    }
}

fn http_spec(backends: &[&Backend], balance: &str) -> BalancerSpec {
    let pairs: Vec<(&str, SocketAddr)> = backends
        .iter()
        .map(|backend| (backend.name(), backend.addr))
        .collect();
    spec(&pairs, balance)
}

fn free_address() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// A running balancer, its shutdown trigger and its address.
struct Running {
    handle: BalancerHandle,
    trigger: ShutdownTrigger,
    address: SocketAddr,
}

async fn start(mut spec: BalancerSpec) -> Running {
    // Another test may grab the probed port first; try a few.
    for _ in 0..10 {
        spec.listen = free_address();
        let (trigger, shutdown) = ShutdownTrigger::new();
        match Balancer::start(spec.clone(), shutdown) {
            Ok(handle) => {
                return Running {
                    handle,
                    trigger,
                    address: spec.listen,
                };
            }
            Err(LbError::Bind { .. }) => continue,
            Err(error) => panic!("{error}"),
        }
    }
    panic!("no free port for the balancer");
}

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    fn backend(&self) -> &str {
        self.header("x-backend")
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|value| value.to_str().unwrap().to_string())
            .collect()
    }
}

async fn send<B>(client: &Client<HttpConnector, B>, request: Request<B>) -> Answer
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let response = bounded(client.request(request))
        .await
        .expect("the balancer answered");
    let status = response.status();
    let version = response.version();
    let headers = response.headers().clone();
    let body = bounded(response.into_body().collect())
        .await
        .expect("the whole body arrived")
        .to_bytes();
    Answer {
        status,
        version,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(
    client: &TestClient,
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = Request::get(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(client, request.body(Full::new(Bytes::new())).unwrap()).await
}

#[tokio::test]
async fn round_robin_alternates_between_two_backends() {
    let (web1, web2) = (
        Backend::start("web1", "abc").await,
        Backend::start("web2", "xyz").await,
    );
    let balancer = start(http_spec(&[&web1, &web2], "roundrobin")).await;
    let client = client();
    let mut names = Vec::new();
    for _ in 0..6 {
        let answer = get(&client, balancer.address, "/", &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, answer.backend());
        names.push(answer.backend().to_string());
    }
    assert!(names.windows(2).all(|pair| pair[0] != pair[1]), "{names:?}");
    let stats = balancer.handle.stats();
    assert_eq!(stats.frontend_sessions, 6);
    assert_eq!(stats.frontend_errors, 0);
    assert!(
        stats
            .backends
            .iter()
            .all(|backend| backend.total_sessions == 3),
        "{:?}",
        stats.backends
    );
}

#[tokio::test]
async fn weights_are_honoured() {
    let (web1, web2) = (
        Backend::start("web1", "abc").await,
        Backend::start("web2", "xyz").await,
    );
    let mut spec = http_spec(&[&web1, &web2], "roundrobin");
    spec.backends[0].weight = 3;
    let balancer = start(spec).await;
    let client = client();
    let mut counts = BTreeMap::<String, usize>::new();
    for _ in 0..400 {
        let answer = get(&client, balancer.address, "/", &[]).await;
        *counts.entry(answer.backend().to_string()).or_default() += 1;
    }
    let heavy = counts.get("web1").copied().unwrap_or(0);
    assert!((270..=330).contains(&heavy), "{counts:?}");
}

#[tokio::test]
async fn a_closed_backend_costs_no_failed_get_and_is_ejected() {
    let (mut web1, web2) = (
        Backend::start("web1", "abc").await,
        Backend::start("web2", "xyz").await,
    );
    let balancer = start(http_spec(&[&web1, &web2], "roundrobin")).await;
    let client = client();
    for _ in 0..4 {
        assert_eq!(
            get(&client, balancer.address, "/", &[]).await.status,
            StatusCode::OK
        );
    }
    web1.kill().await;
    for _ in 0..20 {
        let answer = get(&client, balancer.address, "/", &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.backend(), "web2");
    }
    let pool = balancer.handle.pool();
    let dead = pool.by_name("web1").unwrap();
    assert!(!dead.accepts_new_sessions(), "web1 was not ejected");
    let stats = balancer.handle.stats();
    let web1_stats = stats
        .backends
        .iter()
        .find(|backend| backend.name == "web1")
        .unwrap();
    assert_eq!(web1_stats.status, "ejected");
    assert!(web1_stats.errors >= 3, "{web1_stats:?}");
    assert_eq!(stats.frontend_errors, 0);
}

/// A hung server costs GETs only the retry timeout, never a failure, and is ejected after
/// a few; a POST is never sent twice, so it waits for the server timeout.
#[tokio::test]
async fn a_hung_backend_costs_no_failed_get_and_is_ejected() {
    let web2 = Backend::start("web2", "xyz").await;
    let (hung, _task) = start_silent_backend().await;
    let balancer = start(spec(&[("hung", hung), ("web2", web2.addr)], "roundrobin")).await;
    let client = client();
    for _ in 0..10 {
        let answer = get(&client, balancer.address, "/", &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.backend(), "web2");
    }
    let stats = balancer.handle.stats();
    let hung_stats = stats
        .backends
        .iter()
        .find(|backend| backend.name == "hung")
        .unwrap();
    assert_eq!(hung_stats.status, "ejected", "{hung_stats:?}");
    assert_eq!(stats.frontend_errors, 0);
}

#[tokio::test]
async fn all_backends_down_gives_503_with_a_clear_body() {
    let (mut web1, mut web2) = (
        Backend::start("web1", "abc").await,
        Backend::start("web2", "xyz").await,
    );
    let balancer = start(http_spec(&[&web1, &web2], "roundrobin")).await;
    web1.kill().await;
    web2.kill().await;
    let client = client();
    for _ in 0..3 {
        let answer = get(&client, balancer.address, "/", &[]).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        // Either every backend was tried and refused (the body names the last one), or
        // passive ejection already took them all out of rotation.
        assert!(
            answer.body.contains(
                "no backend of balancer webfarm could be reached; the last one tried, web"
            ) || answer
                .body
                .contains("no backend available for balancer webfarm"),
            "{}",
            answer.body
        );
        assert!(answer.header("content-type").starts_with("text/plain"));
    }
    assert_eq!(balancer.handle.stats().frontend_errors, 3);
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_dropped() {
    let web1 = Backend::start("web1", "abc").await;
    let balancer = start(http_spec(&[&web1], "roundrobin")).await;
    let client = client();
    let answer = get(&client, balancer.address, "/", &[]).await;
    assert_eq!(answer.header("x-seen-forwarded-for"), "127.0.0.1");
    assert_eq!(answer.header("x-seen-proto"), "http");
    let answer = get(
        &client,
        balancer.address,
        "/",
        &[
            ("x-forwarded-for", "10.1.1.1"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
        ],
    )
    .await;
    assert_eq!(answer.header("x-seen-forwarded-for"), "10.1.1.1, 127.0.0.1");
    assert_eq!(answer.header("x-seen-hop"), "");
}

fn prefix_spec(web1: &Backend, web2: &Backend) -> BalancerSpec {
    let mut spec = http_spec(&[web1, web2], "roundrobin");
    spec.sticky = Some(Sticky::PrefixCookie("JSESSIONID".into()));
    spec
}

/// The first answer's backend and the cookie the client got from it.
async fn first_session(client: &TestClient, address: SocketAddr) -> (String, String) {
    let answer = get(client, address, "/", &[]).await;
    let cookie = answer
        .set_cookies()
        .into_iter()
        .find(|cookie| cookie.starts_with("JSESSIONID="))
        .expect("a session cookie");
    let value = cookie.split(';').next().unwrap().to_string();
    (answer.backend().to_string(), value)
}

#[tokio::test]
async fn a_prefixed_cookie_routes_to_its_server_without_the_prefix() {
    let (web1, web2) = (
        Backend::start("web1", "abc").await,
        Backend::start("web2", "xyz").await,
    );
    let balancer = start(prefix_spec(&web1, &web2)).await;
    let client = client();
    let (server, cookie) = first_session(&client, balancer.address).await;
    let session = if server == "web1" { "abc" } else { "xyz" };
    assert_eq!(cookie, format!("JSESSIONID={server}~{session}"));
    for _ in 0..6 {
        let answer = get(
            &client,
            balancer.address,
            "/",
            &[("cookie", &format!("theme=dark; {cookie}"))],
        )
        .await;
        assert_eq!(answer.backend(), server);
        assert_eq!(
            answer.header("x-seen-cookie"),
            format!("theme=dark; JSESSIONID={session}")
        );
        assert!(
            answer.set_cookies().is_empty(),
            "{:?}",
            answer.set_cookies()
        );
    }
}

#[tokio::test]
async fn a_dead_sticky_server_sends_its_clients_elsewhere_with_a_new_cookie() {
    let (mut web1, mut web2) = (
        Backend::start("web1", "abc").await,
        Backend::start("web2", "xyz").await,
    );
    let balancer = start(prefix_spec(&web1, &web2)).await;
    let client = client();
    let (server, cookie) = first_session(&client, balancer.address).await;
    let (survivor, survivor_session) = if server == "web1" {
        web1.kill().await;
        ("web2", "xyz")
    } else {
        web2.kill().await;
        ("web1", "abc")
    };
    let answer = get(&client, balancer.address, "/", &[("cookie", &cookie)]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.backend(), survivor);
    let new_cookie = format!("JSESSIONID={survivor}~{survivor_session}; Path=/");
    assert_eq!(answer.set_cookies(), std::slice::from_ref(&new_cookie));
    let answer = get(
        &client,
        balancer.address,
        "/",
        &[("cookie", new_cookie.split(';').next().unwrap())],
    )
    .await;
    assert_eq!(answer.backend(), survivor);
    assert!(answer.set_cookies().is_empty());
}

#[tokio::test]
async fn an_inserted_cookie_names_the_server_and_routes_to_it() {
    let (web1, web2) = (
        Backend::start("web1", "abc").await,
        Backend::start("web2", "xyz").await,
    );
    let mut spec = http_spec(&[&web1, &web2], "roundrobin");
    spec.sticky = Some(Sticky::InsertCookie("SERVERID".into()));
    let balancer = start(spec).await;
    let client = client();
    let first = get(&client, balancer.address, "/", &[]).await;
    let server = first.backend().to_string();
    let inserted = format!("SERVERID={server}; Path=/; HttpOnly");
    assert!(
        first.set_cookies().contains(&inserted),
        "{:?}",
        first.set_cookies()
    );
    for _ in 0..6 {
        let answer = get(
            &client,
            balancer.address,
            "/",
            &[("cookie", &format!("SERVERID={server}"))],
        )
        .await;
        assert_eq!(answer.backend(), server);
        assert!(
            !answer.header("x-seen-cookie").contains("SERVERID"),
            "the balancer's cookie reached the backend"
        );
        assert!(
            answer
                .set_cookies()
                .iter()
                .all(|cookie| !cookie.starts_with("SERVERID="))
        );
    }
    let other = if server == "web1" { "web2" } else { "web1" };
    let answer = get(
        &client,
        balancer.address,
        "/",
        &[("cookie", &format!("SERVERID={other}"))],
    )
    .await;
    assert_eq!(answer.backend(), other);
    // A cookie naming no server is ignored and replaced.
    let answer = get(
        &client,
        balancer.address,
        "/",
        &[("cookie", "SERVERID=nobody")],
    )
    .await;
    assert!(
        answer
            .set_cookies()
            .contains(&format!("SERVERID={}; Path=/; HttpOnly", answer.backend()))
    );
}

#[tokio::test]
async fn leastconn_prefers_the_idle_backend() {
    let (web1, web2) = (
        Backend::start("web1", "abc").await,
        Backend::start("web2", "xyz").await,
    );
    let balancer = start(http_spec(&[&web1, &web2], "leastconn")).await;
    let client = client();
    let held = {
        let client = client.clone();
        let address = balancer.address;
        tokio::spawn(async move {
            get(&client, address, "/hold", &[])
                .await
                .backend()
                .to_string()
        })
    };
    bounded(async {
        while web1.info.holding.load(Ordering::Relaxed) + web2.info.holding.load(Ordering::Relaxed)
            == 0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let idle = if web1.info.holding.load(Ordering::Relaxed) == 1 {
        "web2"
    } else {
        "web1"
    };
    for _ in 0..6 {
        assert_eq!(
            get(&client, balancer.address, "/", &[]).await.backend(),
            idle
        );
    }
    web1.release();
    web2.release();
    let busy = bounded(held).await.unwrap();
    assert_ne!(busy, idle);
}

#[tokio::test]
async fn hash_uri_is_stable_and_moves_only_the_lost_backends_keys() {
    let mut backends = Vec::new();
    for name in ["web1", "web2", "web3"] {
        backends.push(Backend::start(name, name).await);
    }
    let balancer = start(http_spec(&backends.iter().collect::<Vec<_>>(), "hash-uri")).await;
    let client = client();
    let paths: Vec<String> = (0..30)
        .map(|number| format!("/item/{number}?view={number}"))
        .collect();
    let mut before = Vec::new();
    for path in &paths {
        before.push(
            get(&client, balancer.address, path, &[])
                .await
                .backend()
                .to_string(),
        );
    }
    for (path, server) in paths.iter().zip(&before) {
        // The query is not part of the key.
        let bare = path.split('?').next().unwrap();
        assert_eq!(
            get(&client, balancer.address, bare, &[]).await.backend(),
            server,
            "{path} moved"
        );
    }
    assert!(
        before.iter().any(|server| server == "web3"),
        "no key on web3: {before:?}"
    );

    backends[2].kill().await;
    for (path, server) in paths.iter().zip(&before) {
        let answer = get(&client, balancer.address, path, &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        if server == "web3" {
            assert_ne!(answer.backend(), "web3");
        } else {
            assert_eq!(
                answer.backend(),
                server,
                "{path} moved although {server} is up"
            );
        }
    }
}

/// Reads until the server closes the connection (or resets it), returning what came.
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut received = Vec::new();
    let _ = bounded(stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn a_header_over_64_kib_gets_431() {
    let web1 = Backend::start("web1", "abc").await;
    let balancer = start(http_spec(&[&web1], "roundrobin")).await;
    let stream = TcpStream::connect(balancer.address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    // The server stops reading once over the limit, so the write may fail; only the
    // answer matters.
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(request.as_bytes()).await;
        writer
    });
    let response = read_until_closed(&mut reader).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response:?}");
    let _ = writing.await;
    assert_eq!(web1.info.requests.load(Ordering::Relaxed), 0);
    // The worker thread counts the refusal as the connection ends, just after the close
    // the client saw.
    bounded(async {
        while balancer.handle.stats().frontend_errors < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(balancer.handle.stats().frontend_errors, 1);
}

#[tokio::test]
async fn a_stalled_client_is_disconnected_after_the_client_timeout() {
    let web1 = Backend::start("web1", "abc").await;
    let mut spec = http_spec(&[&web1], "roundrobin");
    spec.timeouts.client_ms = 300;
    let balancer = start(spec).await;

    // Half a request head: 408 with Connection: close (HAProxy's `timeout http-request`).
    let mut half_line = TcpStream::connect(balancer.address).await.unwrap();
    half_line.write_all(b"GET /slo").await.unwrap();
    let response = read_until_closed(&mut half_line).await;
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout\r\n")
            && response.contains("\r\nconnection: close\r\n"),
        "{response:?}"
    );

    // Not even the first byte: hyper's protocol detection alone would wait forever. Idle
    // connections are closed without a word.
    let mut silent = TcpStream::connect(balancer.address).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await, "");
    // Half of the HTTP/2 preface, which keeps the detection waiting for the rest: no
    // HTTP/1 answer on what is meant to be HTTP/2.
    let mut half_preface = TcpStream::connect(balancer.address).await.unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert_eq!(read_until_closed(&mut half_preface).await, "");
    assert_eq!(web1.info.requests.load(Ordering::Relaxed), 0);

    // Kept alive after an answer and then idle: closed without a 408.
    let mut kept_alive = TcpStream::connect(balancer.address).await.unwrap();
    kept_alive
        .write_all(b"GET /first HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let everything = read_until_closed(&mut kept_alive).await;
    assert_eq!(everything.matches("HTTP/1.1 ").count(), 1, "{everything:?}");
    assert!(everything.starts_with("HTTP/1.1 200"), "{everything:?}");
}

#[tokio::test]
async fn a_backend_answering_garbage_gives_502_and_the_next_request_is_served() {
    let (garbage, garbage_task) = start_garbage_backend().await;
    let web2 = Backend::start("web2", "xyz").await;
    let balancer = start(spec(
        &[("junk", garbage), ("web2", web2.addr)],
        "roundrobin",
    ))
    .await;
    let client = client();
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(&client, balancer.address, "/", &[]).await);
    }
    let bad: Vec<usize> = (0..answers.len())
        .filter(|index| answers[*index].status == StatusCode::BAD_GATEWAY)
        .collect();
    assert!(!bad.is_empty(), "no 502 from the garbage backend");
    for index in bad {
        assert!(
            answers[index]
                .body
                .contains("backend junk sent an invalid HTTP response"),
            "{}",
            answers[index].body
        );
        if let Some(next) = answers.get(index + 1) {
            assert_eq!(next.status, StatusCode::OK);
            assert_eq!(next.backend(), "web2");
        }
    }
    garbage_task.abort();
}

async fn echo_through(address: SocketAddr, message: &str) -> String {
    let mut stream = bounded(TcpStream::connect(address)).await.unwrap();
    stream.write_all(message.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    read_until_closed(&mut stream).await
}

#[tokio::test]
async fn tcp_mode_proxies_an_echo_server_and_survives_a_backend_dying() {
    let (echo1, echo1_task) = start_echo_backend().await;
    let (echo2, echo2_task) = start_echo_backend().await;
    let mut spec = spec(&[("echo1", echo1), ("echo2", echo2)], "roundrobin");
    spec.mode = Mode::Tcp;
    let balancer = start(spec).await;
    for number in 0..4 {
        let message = format!("hello {number}");
        assert_eq!(echo_through(balancer.address, &message).await, message);
    }
    echo1_task.abort();
    let _ = echo1_task.await;
    for number in 0..6 {
        let message = format!("still there {number}");
        assert_eq!(echo_through(balancer.address, &message).await, message);
    }
    let stats = balancer.handle.stats();
    assert_eq!(stats.mode, "tcp");
    assert_eq!(stats.frontend_sessions, 10);
    assert_eq!(stats.frontend_errors, 0);
    assert!(stats.backends[0].errors >= 1);
    echo2_task.abort();
}

#[tokio::test]
async fn tcp_hash_source_keeps_a_client_on_one_backend() {
    let (echo1, echo1_task) = start_echo_backend().await;
    let (echo2, echo2_task) = start_echo_backend().await;
    let mut spec = spec(&[("echo1", echo1), ("echo2", echo2)], "hash-source");
    spec.mode = Mode::Tcp;
    let balancer = start(spec).await;
    for number in 0..6 {
        let message = format!("hash {number}");
        assert_eq!(echo_through(balancer.address, &message).await, message);
    }
    let stats = balancer.handle.stats();
    let sessions: Vec<u64> = stats
        .backends
        .iter()
        .map(|backend| backend.total_sessions)
        .collect();
    assert!(
        sessions.contains(&6) && sessions.contains(&0),
        "{sessions:?}"
    );
    echo1_task.abort();
    echo2_task.abort();
}

#[tokio::test]
async fn update_with_a_new_weight_keeps_an_open_keep_alive_connection_working() {
    let (web1, web2) = (
        Backend::start("web1", "abc").await,
        Backend::start("web2", "xyz").await,
    );
    let balancer = start(http_spec(&[&web1, &web2], "roundrobin")).await;
    let stream = TcpStream::connect(balancer.address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = || {
        Request::get("/")
            .header("host", "test")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    let first = bounded(sender.send_request(request())).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    bounded(first.into_body().collect()).await.unwrap();

    let mut changed = balancer.handle.spec();
    changed.backends[0].weight = 5;
    balancer.handle.update(changed).unwrap();

    for _ in 0..3 {
        bounded(sender.ready())
            .await
            .expect("the connection is still open");
        let answer = bounded(sender.send_request(request())).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        bounded(answer.into_body().collect()).await.unwrap();
    }
    let stats = balancer.handle.stats();
    assert_eq!(stats.backends[0].weight, 5);
    // Counters carried over the change.
    assert_eq!(
        stats
            .backends
            .iter()
            .map(|backend| backend.total_sessions)
            .sum::<u64>(),
        4
    );
    drop(sender);
    let _ = bounded(connection).await;
}

#[tokio::test]
async fn update_to_a_new_listen_address_rebinds() {
    let web1 = Backend::start("web1", "abc").await;
    let balancer = start(http_spec(&[&web1], "roundrobin")).await;
    let client = client();
    let mut moved = balancer.handle.spec();
    let mut updated = false;
    for _ in 0..10 {
        moved.listen = free_address();
        match balancer.handle.update(moved.clone()) {
            Ok(()) => {
                updated = true;
                break;
            }
            Err(LbError::Bind { .. }) => continue,
            Err(error) => panic!("{error}"),
        }
    }
    assert!(updated);
    assert_eq!(
        get(&client, moved.listen, "/", &[]).await.status,
        StatusCode::OK
    );
    bounded(async {
        while TcpStream::connect(balancer.address).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_http2_prior_knowledge_client_is_served() {
    let web1 = Backend::start("web1", "abc").await;
    let balancer = start(http_spec(&[&web1], "roundrobin")).await;
    let client: TestClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    for _ in 0..3 {
        let answer = get(&client, balancer.address, "/", &[("cookie", "a=1")]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.version, Version::HTTP_2);
        assert_eq!(answer.body, "web1");
        assert_eq!(answer.header("x-seen-forwarded-for"), "127.0.0.1");
    }
}

/// A request body sent in chunks with no declared length.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[tokio::test]
async fn request_bodies_over_the_limit_get_413() {
    let web1 = Backend::start("web1", "abc").await;
    let mut spec = http_spec(&[&web1], "roundrobin");
    spec.limits.max_body_bytes = 1024;
    let balancer = start(spec).await;
    let client = client();
    let post = |size: usize| {
        Request::post(format!("http://{}/upload", balancer.address))
            .body(Full::new(Bytes::from(vec![b'x'; size])))
            .unwrap()
    };
    let small = send(&client, post(100)).await;
    assert_eq!(small.status, StatusCode::OK);
    assert_eq!(small.header("x-seen-body-length"), "100");
    let declared = send(&client, post(4096)).await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        declared.body.contains("limit of 1024 bytes"),
        "{}",
        declared.body
    );

    let chunked_client: Client<HttpConnector, Chunks> =
        Client::builder(TokioExecutor::new()).build_http();
    let chunks = |count: usize| Chunks((0..count).map(|_| Bytes::from(vec![b'y'; 512])).collect());
    let request = |count: usize| {
        Request::builder()
            .method(Method::PUT)
            .uri(format!("http://{}/upload", balancer.address))
            .body(chunks(count))
            .unwrap()
    };
    let streamed = send(&chunked_client, request(1)).await;
    assert_eq!(streamed.status, StatusCode::OK);
    assert_eq!(streamed.header("x-seen-body-length"), "512");
    let streamed = send(&chunked_client, request(8)).await;
    assert_eq!(
        streamed.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        streamed.body
    );
}

#[tokio::test]
async fn a_backend_slower_than_the_server_timeout_gives_504() {
    let web1 = Backend::start("web1", "abc").await;
    let mut spec = http_spec(&[&web1], "roundrobin");
    spec.timeouts.server_ms = 300;
    let balancer = start(spec).await;
    let client = client();
    let answer = get(&client, balancer.address, "/hold", &[]).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        answer
            .body
            // The wait covers connecting (500 ms at most) and the server's 300 ms.
            .contains("backend web1 did not answer within 800 ms"),
        "{}",
        answer.body
    );
    web1.release();
    assert_eq!(
        get(&client, balancer.address, "/", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let web1 = Backend::start("web1", "abc").await;
    let mut spec = http_spec(&[&web1], "roundrobin");
    spec.limits.max_connections = 1;
    let balancer = start(spec).await;
    let stream = TcpStream::connect(balancer.address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = || {
        Request::get("/")
            .header("host", "test")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let answer = bounded(sender.send_request(request())).await.unwrap();
    bounded(answer.into_body().collect()).await.unwrap();

    let mut excess = TcpStream::connect(balancer.address).await.unwrap();
    let _ = excess
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    assert_eq!(read_until_closed(&mut excess).await, "");

    bounded(sender.ready()).await.unwrap();
    let answer = bounded(sender.send_request(request())).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    bounded(answer.into_body().collect()).await.unwrap();
    assert!(balancer.handle.stats().frontend_errors >= 1);

    // Once the first connection ends its slot is free again (the worker thread gives it
    // back as the connection task ends, a moment after the client saw the close).
    drop(sender);
    let _ = bounded(connection).await;
    let client = client();
    bounded(async {
        loop {
            let request = Request::get(format!("http://{}/", balancer.address))
                .body(Full::new(Bytes::new()))
                .unwrap();
            if client
                .request(request)
                .await
                .is_ok_and(|answer| answer.status() == StatusCode::OK)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn stop_and_shutdown_end_the_balancer() {
    let web1 = Backend::start("web1", "abc").await;
    let stopped = start(http_spec(&[&web1], "roundrobin")).await;
    let client = client();
    assert_eq!(
        get(&client, stopped.address, "/", &[]).await.status,
        StatusCode::OK
    );
    bounded(stopped.handle.stop()).await;
    assert!(TcpStream::connect(stopped.address).await.is_err());
    assert!(matches!(
        stopped.handle.update(stopped.handle.spec()),
        Err(LbError::Stopped { .. })
    ));

    let shut = start(http_spec(&[&web1], "roundrobin")).await;
    assert_eq!(
        get(&client, shut.address, "/", &[]).await.status,
        StatusCode::OK
    );
    shut.trigger.trigger();
    bounded(shut.handle.stop()).await;
    assert!(TcpStream::connect(shut.address).await.is_err());
}

/// A VIP hand-over or an agent stop closes the balancer while clients are connecting:
/// the client that connected just before must get its answer, not a reset. Two cases:
/// connections the accept loop took whose request has not arrived yet (hyper alone would
/// drop them unread), and connections still in the kernel's queue when the loop stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_connected_just_before_a_stop_are_answered() {
    let web1 = Backend::start("web1", "abc").await;
    let balancer = start(http_spec(&[&web1], "roundrobin")).await;
    let request = b"GET /late HTTP/1.1\r\nhost: t\r\n\r\n";

    // Accepted, silent when the stop comes, then sending.
    let mut early = TcpStream::connect(balancer.address).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A burst connected right before the stop: the last may still sit in the kernel's
    // queue when the accept loop stops.
    let mut burst = Vec::new();
    for _ in 0..64 {
        burst.push(TcpStream::connect(balancer.address).await.unwrap());
    }
    let handle = balancer.handle.clone();
    let stopping = tokio::spawn(async move { handle.stop().await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    early.write_all(request).await.unwrap();
    let answer = read_until_closed(&mut early).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer:?}");
    let mut failures = Vec::new();
    for (index, mut stream) in burst.into_iter().enumerate() {
        let answer = match stream.write_all(request).await {
            Ok(()) => read_until_closed(&mut stream).await,
            Err(error) => error.to_string(),
        };
        if !answer.starts_with("HTTP/1.1 200") {
            failures.push(format!("connection {index}: {answer:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    bounded(stopping).await.unwrap();
    assert!(TcpStream::connect(balancer.address).await.is_err());
}

#[tokio::test]
async fn an_address_in_use_is_named_in_the_error() {
    let web1 = Backend::start("web1", "abc").await;
    let mut spec = http_spec(&[&web1], "roundrobin");
    // The backend's own address is certainly taken.
    spec.listen = web1.addr;
    let (_trigger, shutdown) = ShutdownTrigger::new();
    let error = Balancer::start(spec, shutdown)
        .err()
        .expect("binding a used address fails");
    assert!(matches!(error, LbError::Bind { .. }));
    assert!(
        error.to_string().contains(&web1.addr.to_string()),
        "{error}"
    );
}
