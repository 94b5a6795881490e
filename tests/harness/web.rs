//! HTTP helpers for the drills that go through a balancer: raw HTTP/1.1 over a fresh
//! connection (no client library between the drill and the bytes), the VIP holder as
//! `bramble lb ls` reports it, and a client loop that measures service gaps.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::TestCluster;

/// GET `/` over a fresh connection; the status code, or why there was none.
pub fn get_status(address: SocketAddr, timeout: Duration) -> Result<u16, String> {
    get_answer(address, timeout).map(|(status, _)| status)
}

/// `GET /`'s status and body.
pub fn get_answer(address: SocketAddr, timeout: Duration) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|error| error.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n")
        .map_err(|error| error.to_string())?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(|error| error.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The demo site's address (`bramble status`), once it answers.
pub fn demo_site(cluster: &TestCluster) -> SocketAddr {
    let status = cluster.bramble_ok(&["status", "--json"]).json();
    let site: SocketAddr = status["demo"]["site"]
        .as_str()
        .expect("the demo site")
        .parse()
        .expect("a socket address");
    super::wait_until("the site answers", Duration::from_secs(60), || {
        get_status(site, Duration::from_secs(2)) == Ok(200)
    });
    site
}

/// The first balancer's VIP holder, per `bramble lb ls`.
pub fn vip_holder(cluster: &TestCluster) -> Option<String> {
    let run = cluster.bramble(&["lb", "ls", "--json"]);
    if !run.success {
        return None;
    }
    run.json().as_array()?.first()?["vip_holder"]
        .as_str()
        .map(str::to_string)
}

/// What a client loop saw.
#[derive(Debug, Default)]
pub struct ServiceRecord {
    pub requests: usize,
    /// Requests that got no 200 (connection refused, reset, timeout, other status).
    pub failures: Vec<String>,
    /// The longest time between two answered requests.
    pub longest_gap: Duration,
}

/// GETs `site` every `every` until `done` is set, recording the longest time between two
/// successful answers. Run it on its own thread.
pub fn client_loop(site: SocketAddr, every: Duration, done: &AtomicBool) -> ServiceRecord {
    let mut record = ServiceRecord::default();
    let mut last_answer = Instant::now();
    while !done.load(Ordering::Relaxed) {
        let outcome = get_answer(site, Duration::from_secs(2));
        let now = Instant::now();
        record.requests += 1;
        match outcome {
            Ok((200, _)) => {
                record.longest_gap = record.longest_gap.max(now - last_answer);
                last_answer = now;
            }
            Ok((status, body)) => record.failures.push(format!(
                "status {status}: {}",
                body.chars().take(120).collect::<String>()
            )),
            Err(error) => record.failures.push(error),
        }
        std::thread::sleep(every);
    }
    record
}

/// Raises the calling thread's scheduling priority where permitted (root), so a client
/// loop measures the service, not its own wait for a busy CPU.
pub fn raise_thread_priority() {
    // SAFETY: setpriority on the calling thread's own id has no memory effects.
    unsafe {
        let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, -10);
    }
}
