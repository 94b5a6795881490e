//! The data-plane memory budget enforced: with a 16 MiB budget, connections beyond what it
//! holds are closed at accept, a request that finds no room is answered 503 at once,
//! HTTP/2 connections beyond it are closed at their preface, and everything comes back
//! when the clients leave. In its own test binary because the budget is process-wide and
//! sized once from `BRAMBLE_LB_MEMORY_MIB`.

use std::net::SocketAddr;
use std::time::Duration;

use bramble_lb::balancer::Balancer;
use bramble_lb::config::{AdminState, BackendSpec, BalancerSpec, Limits, Mode, Timeouts, VipSpec};
use bramble_util::ShutdownTrigger;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BUDGET_BYTES: usize = 16 << 20;
/// What a client connection reserves (`memory_budget::CONNECTION_BYTES`).
const CONNECTION_BYTES: usize = 32 * 1024;
/// What a request reserves with the default limits (`memory_budget::request_bytes`).
const REQUEST_BYTES: usize = 160 * 1024;
/// What an HTTP/2 connection reserves beyond that with the default limits
/// (`memory_budget::http2_connection_bytes`): windows, 100 streams' send buffers and
/// state, frames, HPACK tables and a 64 KiB header block.
const HTTP2_BYTES: usize = 256 * 1024 + 100 * (16 * 1024 + 1024) + 2 * 16 * 1024 + 8192 + 64 * 1024;
const STEP: Duration = Duration::from_secs(10);

/// A backend that answers `ok` to every request on kept-alive connections.
async fn start_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                    while let Some(end) = head.windows(4).position(|window| window == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    address
}

fn spec(backend: SocketAddr, listen: SocketAddr) -> BalancerSpec {
    BalancerSpec {
        name: "budget".into(),
        listen,
        mode: Mode::Http,
        balance: "roundrobin".parse().expect("a balance"),
        backends: vec![BackendSpec {
            name: "web1".into(),
            addr: backend,
            weight: 1,
            admin: AdminState::Enabled,
        }],
        services: Vec::new(),
        check: None,
        sticky: None,
        timeouts: Timeouts {
            connect_ms: 500,
            client_ms: 30_000,
            server_ms: 3000,
            retry_ms: 300,
        },
        limits: Limits::default(),
        slow_start_secs: 0,
        vip: VipSpec::default(),
    }
}

/// Whether the balancer closed `stream` without a byte (refused) within a second, or
/// kept it open (or answered something: served).
async fn refused(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 256];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// One GET on a fresh connection; the whole answer.
async fn get(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("an answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Opens `count` connections that say nothing, and waits until the balancer took them.
async fn idle_connections(address: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        streams.push(TcpStream::connect(address).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    streams
}

#[tokio::test]
async fn a_full_budget_refuses_connections_requests_and_http2_then_recovers() {
    // SAFETY: set before any other thread of this test binary exists (the data-plane
    // threads start with the first balancer).
    unsafe { std::env::set_var("BRAMBLE_LB_MEMORY_MIB", (BUDGET_BYTES >> 20).to_string()) };
    let backend = start_backend().await;
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        probe.local_addr().expect("address")
    };
    let (trigger, shutdown) = ShutdownTrigger::new();
    let balancer = Balancer::start(spec(backend, listen), shutdown).expect("start");
    assert!(get(listen).await.ends_with("ok"));

    // Idle connections leaving room for one more connection but not its request.
    let room_for_a_request = CONNECTION_BYTES + REQUEST_BYTES;
    let idle_count = (BUDGET_BYTES - room_for_a_request + CONNECTION_BYTES) / CONNECTION_BYTES;
    let mut idle = idle_connections(listen, idle_count).await;
    let answer = get(listen).await;
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("memory budget"),
        "{answer}"
    );

    // Connections beyond the budget are closed at accept, without a byte.
    let left = BUDGET_BYTES - idle_count * CONNECTION_BYTES;
    let mut more = Vec::new();
    for _ in 0..(left / CONNECTION_BYTES + 3) {
        more.push(TcpStream::connect(listen).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut closed = 0;
    for stream in &mut more {
        if refused(stream).await {
            closed += 1;
        }
    }
    // Three are past the budget; one more may be refused too while the connection that
    // got the 503 is still being torn down (its reservation goes with it).
    assert!(
        (3..=4).contains(&closed),
        "connections past the budget are refused: {closed} of {} closed",
        more.len()
    );
    let stats = balancer.stats();
    assert!(stats.frontend_errors >= 4, "{stats:?}");

    // Everything comes back when the clients leave.
    more.clear();
    idle.clear();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(get(listen).await.ends_with("ok"));

    // HTTP/2 connections hold more: as many as fit are served, the rest closed at their
    // preface.
    let fitting = BUDGET_BYTES / (CONNECTION_BYTES + HTTP2_BYTES);
    let mut http2 = Vec::new();
    let mut served = 0;
    let mut closed = 0;
    for _ in 0..fitting + 3 {
        let mut stream = TcpStream::connect(listen).await.expect("connect");
        // The preface and an empty SETTINGS frame.
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        stream.write_all(&hello).await.expect("send the preface");
        if refused(&mut stream).await {
            closed += 1;
        } else {
            served += 1;
        }
        http2.push(stream);
    }
    assert_eq!((served, closed), (fitting, 3));
    http2.clear();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(get(listen).await.ends_with("ok"));

    trigger.trigger();
    tokio::time::timeout(STEP, balancer.stop())
        .await
        .expect("the balancer stops in time");
}
