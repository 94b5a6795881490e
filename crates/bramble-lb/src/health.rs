//! Active health checks, HAProxy's `check inter 2s rise 2 fall 3` (and the recipe's
//! `option httpchk HEAD /lb-check.txt HTTP/1.0`): every backend is probed on its own
//! schedule, and only runs of results change its state, so one lost packet does not take
//! a server out of rotation and one lucky answer does not put a sick one back.
//!
//! - A backend starts up (as in HAProxy); `fall` failures in a row mark it down, `rise`
//!   passes in a row mark it up again ([`BackendState::set_healthy`]).
//! - Each result is written to the backend's last-check text with HAProxy's check status
//!   codes (`L4OK`, `L4CON`, `L4TOUT`, `L7OK`, `L7STS`, `L7RSP`, `L7TOUT`) so the stats
//!   page reads like HAProxy's.
//! - A check is bounded in time (one deadline for connect, request and answer) and in
//!   memory (at most [`MAX_ANSWER_BYTES`] of the answer are read).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_util::Shutdown;
use ring::rand::SecureRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

use crate::config::{CheckKind, CheckSpec, Timeouts};
use crate::pool::{BackendState, Pool};

/// Most bytes of an HTTP check's answer that are read while looking for the status line.
pub const MAX_ANSWER_BYTES: usize = 4096;
/// Time allowed beyond the connect timeout for the request and the status line.
pub const ANSWER_ALLOWANCE: Duration = Duration::from_secs(1);
/// Shortest interval honoured, whatever the spec says, so a bad value cannot spin a core.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Each wait between checks is stretched or shrunk by up to this fraction, so backends
/// checked together drift apart instead of being probed at the same instant forever.
const JITTER_FRACTION: f64 = 0.1;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub passed: bool,
    /// HAProxy-style description, e.g. `L7OK 200 in 3 ms` or `L4CON connection refused`.
    pub description: String,
}

impl CheckOutcome {
    fn pass(description: String) -> CheckOutcome {
        CheckOutcome {
            passed: true,
            description,
        }
    }

    fn fail(description: String) -> CheckOutcome {
        CheckOutcome {
            passed: false,
            description,
        }
    }
}

/// How long one check may take: the connect timeout plus a little for the answer, but never
/// longer than the interval, so checks of one backend never overlap.
pub fn check_timeout(check: &CheckSpec, timeouts: &Timeouts) -> Duration {
    let interval = Duration::from_millis(check.interval_ms).max(MIN_INTERVAL);
    (Duration::from_millis(timeouts.connect_ms) + ANSWER_ALLOWANCE).min(interval)
}

/// Starts one check loop per backend of `pool`. The returned task ends when `shutdown`
/// fires; aborting it (when the pool is replaced by a new configuration) aborts every
/// loop with it, because the loops live in a [`JoinSet`] the task owns.
pub fn spawn_checks(
    pool: Arc<Pool>,
    check: CheckSpec,
    timeouts: Timeouts,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut loops = JoinSet::new();
        for backend in &pool.backends {
            loops.spawn(check_loop(
                backend.clone(),
                check.clone(),
                timeouts.clone(),
                shutdown.clone(),
            ));
        }
        while let Some(result) = loops.join_next().await {
            if let Err(error) = result
                && error.is_panic()
            {
                warn!("a health-check loop panicked: {error}");
            }
        }
    })
}

/// Checks one backend every interval until shutdown.
async fn check_loop(
    backend: Arc<BackendState>,
    check: CheckSpec,
    timeouts: Timeouts,
    mut shutdown: Shutdown,
) {
    let interval = Duration::from_millis(check.interval_ms).max(MIN_INTERVAL);
    let timeout = check_timeout(&check, &timeouts);
    let mut health = HealthCounter::new(backend.is_healthy(), check.rise, check.fall);
    // The first check comes at a random point of the first interval, spreading the checks
    // of many backends evenly over it (HAProxy does the same at start-up).
    let mut wait = interval.mul_f64(random_fraction());
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = shutdown.wait() => return,
            outcome = check_once(backend.spec.addr, &check.kind, timeout) => outcome,
        };
        if let Some(healthy) = health.record(outcome.passed) {
            backend.set_healthy(healthy);
            if healthy {
                info!(backend = %backend.spec.name, addr = %backend.spec.addr, "backend is up: {}", outcome.description);
            } else {
                warn!(backend = %backend.spec.name, addr = %backend.spec.addr, "backend is down: {}", outcome.description);
            }
        }
        backend.set_last_check(outcome.description);
        // Checks start one interval apart (not one interval after the previous ended), so
        // slow answers do not stretch the schedule.
        let jitter = 1.0 + JITTER_FRACTION * (2.0 * random_fraction() - 1.0);
        wait = interval.mul_f64(jitter).saturating_sub(started.elapsed());
    }
}

/// The rise/fall state machine of one backend.
#[derive(Debug, Clone)]
struct HealthCounter {
    healthy: bool,
    rise: u32,
    fall: u32,
    /// Results in a row that disagree with `healthy`.
    streak: u32,
}

impl HealthCounter {
    fn new(healthy: bool, rise: u32, fall: u32) -> HealthCounter {
        HealthCounter {
            healthy,
            rise: rise.max(1),
            fall: fall.max(1),
            streak: 0,
        }
    }

    /// Counts one result; returns the new state when it changes.
    fn record(&mut self, passed: bool) -> Option<bool> {
        if passed == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.healthy = passed;
        self.streak = 0;
        Some(passed)
    }
}

/// Runs one check against `address` within `timeout`. Never panics and never waits longer
/// than `timeout` (plus scheduling delay).
pub async fn check_once(address: SocketAddr, kind: &CheckKind, timeout: Duration) -> CheckOutcome {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let timeout_ms = timeout.as_millis();
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(address)).await {
        Err(_) => return CheckOutcome::fail(format!("L4TOUT timeout after {timeout_ms} ms")),
        Ok(Err(error)) => {
            return CheckOutcome::fail(format!("L4CON {}", describe_io_error(&error)));
        }
        Ok(Ok(stream)) => stream,
    };
    let CheckKind::Http {
        method,
        path,
        expect_status,
    } = kind
    else {
        return CheckOutcome::pass(format!("L4OK in {} ms", started.elapsed().as_millis()));
    };
    // The spec was validated, but a request line is only written if it cannot smuggle
    // anything in.
    let is_token = |text: &str| {
        !text.is_empty()
            && text.len() <= 1024
            && text.bytes().all(|byte| byte > b' ' && byte < 0x7f)
    };
    if !is_token(method) || !is_token(path) {
        return CheckOutcome::fail(
            "L7RSP invalid check method or path in the configuration".to_string(),
        );
    }
    let request =
        format!("{method} {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: bramble-check\r\n\r\n");
    let exchange = async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| {
                format!(
                    "L7RSP sending the request failed: {}",
                    describe_io_error(&error)
                )
            })?;
        read_status_line(&mut stream).await
    };
    let status = match tokio::time::timeout_at(deadline, exchange).await {
        Err(_) => return CheckOutcome::fail(format!("L7TOUT timeout after {timeout_ms} ms")),
        Ok(Err(description)) => return CheckOutcome::fail(description),
        Ok(Ok(status)) => status,
    };
    let passed = match expect_status {
        Some(expected) => status == *expected,
        None => (200..400).contains(&status),
    };
    if passed {
        CheckOutcome::pass(format!(
            "L7OK {status} in {} ms",
            started.elapsed().as_millis()
        ))
    } else {
        match expect_status {
            Some(expected) => CheckOutcome::fail(format!("L7STS {status}, expected {expected}")),
            None => CheckOutcome::fail(format!("L7STS {status}")),
        }
    }
}

/// Reads until the end of the first line (at most [`MAX_ANSWER_BYTES`]) and parses it.
async fn read_status_line(stream: &mut TcpStream) -> Result<u16, String> {
    let mut buffer = [0u8; MAX_ANSWER_BYTES];
    let mut filled = 0;
    // Each read adds at least one byte or ends the loop, so it runs at most
    // MAX_ANSWER_BYTES times.
    while filled < buffer.len() {
        let read = stream.read(&mut buffer[filled..]).await.map_err(|error| {
            format!(
                "L7RSP reading the answer failed: {}",
                describe_io_error(&error)
            )
        })?;
        if read == 0 {
            break;
        }
        let searched_from = filled;
        filled += read;
        if let Some(end) = buffer[searched_from..filled]
            .iter()
            .position(|&byte| byte == b'\n')
        {
            return parse_status_line(&buffer[..searched_from + end]);
        }
    }
    if filled == 0 {
        return Err("L7RSP empty answer".to_string());
    }
    // The connection closed or the limit was reached without a complete line. A whole
    // status line without its line end is still accepted (some minimal servers do that).
    if filled < buffer.len() {
        return parse_status_line(&buffer[..filled]);
    }
    Err("L7RSP malformed status line".to_string())
}

/// `HTTP/1.x NNN reason` → NNN. Takes the line without its `\n` (a trailing `\r` is allowed).
fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let malformed = || "L7RSP malformed status line".to_string();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| malformed())?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().unwrap_or_default();
    let version_ok = version
        .strip_prefix("HTTP/")
        .and_then(|number| number.split_once('.'))
        .is_some_and(|(major, minor)| {
            major.len() == 1
                && minor.len() == 1
                && major.bytes().all(|byte| byte.is_ascii_digit())
                && minor.bytes().all(|byte| byte.is_ascii_digit())
        });
    if !version_ok || status.len() != 3 || !status.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(malformed());
    }
    match status.parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(malformed()),
    }
}

/// A short description of a socket error: "connection refused" rather than
/// "Connection refused (os error 111)".
fn describe_io_error(error: &std::io::Error) -> String {
    let kind = error.kind().to_string();
    // Kinds without a specific description say little; the full error says more.
    if kind.contains("other") || kind.contains("uncategorized") {
        error.to_string()
    } else {
        kind
    }
}

/// A random number in [0, 1) for jitter. Falls back to the clock if the system random
/// source fails, since jitter needs spread, not secrecy.
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    let value = match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| u64::from(elapsed.subsec_nanos()).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .unwrap_or_default(),
    };
    // 53 random bits fill an f64's mantissa exactly.
    (value >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdminState, BackendSpec};
    use crate::demo_web::serve_demo_web;
    use bramble_util::ShutdownTrigger;
    use tokio::net::TcpListener;

    fn http_check(method: &str, path: &str, expect_status: Option<u16>) -> CheckKind {
        CheckKind::Http {
            method: method.into(),
            path: path.into(),
            expect_status,
        }
    }

    /// A server that answers every connection with `answer` (after reading the request
    /// head) and closes it. Returns its address.
    async fn answering(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request).await;
                    let _ = stream.write_all(answer).await;
                });
            }
        });
        address
    }

    /// An address where nothing listens (a port just released).
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn rise_and_fall_need_results_in_a_row() {
        let mut health = HealthCounter::new(true, 2, 3);
        assert_eq!(health.record(false), None);
        assert_eq!(health.record(false), None);
        assert_eq!(health.record(true), None, "a pass resets the failures");
        assert_eq!(health.record(false), None);
        assert_eq!(health.record(false), None);
        assert_eq!(
            health.record(false),
            Some(false),
            "the third failure in a row"
        );
        assert_eq!(health.record(false), None);
        assert_eq!(health.record(true), None);
        assert_eq!(health.record(false), None, "a failure resets the passes");
        assert_eq!(health.record(true), None);
        assert_eq!(health.record(true), Some(true), "the second pass in a row");
        // rise and fall of 0 behave as 1 rather than never changing.
        let mut eager = HealthCounter::new(true, 0, 0);
        assert_eq!(eager.record(false), Some(false));
        assert_eq!(eager.record(true), Some(true));
    }

    #[tokio::test]
    async fn a_backend_that_stops_listening_goes_down_after_fall_and_up_after_rise() {
        // The recipe's check against the built-in web server.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (web_trigger, web_shutdown) = ShutdownTrigger::new();
        let web = tokio::spawn(serve_demo_web("web1".into(), None, listener, web_shutdown));

        let spec = BackendSpec {
            name: "web1".into(),
            addr: address,
            weight: 1,
            admin: AdminState::Enabled,
        };
        let pool = Arc::new(Pool::new(&[spec]));
        let backend = pool.backends[0].clone();
        let check = CheckSpec {
            kind: http_check("HEAD", "/lb-check.txt", None),
            interval_ms: 150,
            rise: 2,
            fall: 3,
        };
        let (trigger, shutdown) = ShutdownTrigger::new();
        let checks = spawn_checks(pool.clone(), check, Timeouts::default(), shutdown);
        let last_check = || backend.stats(Duration::ZERO).last_check;

        wait_for("a passing check", || {
            last_check().starts_with("L7OK 200 in ")
        })
        .await;
        assert!(backend.is_healthy());

        web_trigger.trigger();
        web.await.unwrap();
        wait_for("a failing check", || last_check().starts_with("L4CON")).await;
        assert_eq!(last_check(), "L4CON connection refused");
        assert!(backend.is_healthy(), "one failure is not `fall` failures");
        let failed_at = Instant::now();
        wait_for("the backend to be marked down", || !backend.is_healthy()).await;
        // Two more checks after the first failure, about 150 ms apart.
        assert!(
            failed_at.elapsed() >= Duration::from_millis(200),
            "{:?}",
            failed_at.elapsed()
        );
        assert_eq!(backend.stats(Duration::ZERO).status, "down");

        // The server comes back on the same port.
        let listener = TcpListener::bind(address).await.unwrap();
        let (web_trigger, web_shutdown) = ShutdownTrigger::new();
        tokio::spawn(serve_demo_web("web1".into(), None, listener, web_shutdown));
        wait_for("a passing check", || last_check().starts_with("L7OK")).await;
        assert!(!backend.is_healthy(), "one pass is not `rise` passes");
        wait_for("the backend to be marked up", || backend.is_healthy()).await;
        assert_eq!(backend.stats(Duration::ZERO).status, "up");

        trigger.trigger();
        web_trigger.trigger();
        tokio::time::timeout(Duration::from_secs(5), checks)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn http_answers_pass_or_fail_by_status() {
        let timeout = Duration::from_secs(2);
        let error =
            answering(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n").await;
        let outcome = check_once(error, &http_check("HEAD", "/lb-check.txt", None), timeout).await;
        assert_eq!(outcome, CheckOutcome::fail("L7STS 500".into()));

        let redirect = answering(b"HTTP/1.0 301 Moved\r\n\r\n").await;
        let outcome = check_once(redirect, &http_check("GET", "/", None), timeout).await;
        assert!(
            outcome.passed && outcome.description.starts_with("L7OK 301 in "),
            "{outcome:?}"
        );

        let missing = answering(b"HTTP/1.1 404 Not Found\r\n\r\n").await;
        let outcome = check_once(missing, &http_check("GET", "/", None), timeout).await;
        assert_eq!(outcome.description, "L7STS 404");
        let outcome = check_once(missing, &http_check("GET", "/", Some(404)), timeout).await;
        assert!(outcome.passed, "{outcome:?}");
        let fine = answering(b"HTTP/1.1 200 OK\r\n\r\n").await;
        let outcome = check_once(fine, &http_check("GET", "/", Some(204)), timeout).await;
        assert_eq!(outcome.description, "L7STS 200, expected 204");
    }

    #[tokio::test]
    async fn the_check_request_is_the_recipes_http_1_0_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut buffer = [0u8; 256];
            while !received.ends_with(b"\r\n\r\n") {
                let read = stream.read(&mut buffer).await.unwrap();
                assert!(read > 0);
                received.extend_from_slice(&buffer[..read]);
            }
            stream.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await.unwrap();
            String::from_utf8(received).unwrap()
        });
        let outcome = check_once(
            address,
            &http_check("HEAD", "/lb-check.txt", None),
            Duration::from_secs(2),
        )
        .await;
        assert!(outcome.passed, "{outcome:?}");
        assert_eq!(
            server.await.unwrap(),
            format!(
                "HEAD /lb-check.txt HTTP/1.0\r\nHost: {address}\r\nUser-Agent: bramble-check\r\n\r\n"
            )
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_fails_with_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // Accepts, reads and holds every connection without a word.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let started = Instant::now();
        let outcome = check_once(
            address,
            &http_check("HEAD", "/lb-check.txt", None),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(
            outcome,
            CheckOutcome::fail("L7TOUT timeout after 300 ms".into())
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // A TCP check only needs the connection.
        let outcome = check_once(address, &CheckKind::Tcp, Duration::from_millis(300)).await;
        assert!(
            outcome.passed && outcome.description.starts_with("L4OK in "),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn refused_connections_fail_both_kinds_of_check() {
        let address = closed_port().await;
        for kind in [CheckKind::Tcp, http_check("GET", "/", None)] {
            let outcome = check_once(address, &kind, Duration::from_secs(1)).await;
            assert_eq!(
                outcome,
                CheckOutcome::fail("L4CON connection refused".into())
            );
        }
    }

    #[tokio::test]
    async fn garbage_instead_of_a_status_line_fails_cleanly() {
        let long_line: &'static [u8] =
            Box::leak(vec![b'x'; MAX_ANSWER_BYTES * 2].into_boxed_slice());
        let cases: [(&'static [u8], &str); 9] = [
            (b"SSH-2.0-OpenSSH_9.6\r\n", "L7RSP malformed status line"),
            (b"", "L7RSP empty answer"),
            (b"\r\n", "L7RSP malformed status line"),
            (b"HTTP/1.1 2000 OK\r\n", "L7RSP malformed status line"),
            (b"HTTP/1.1 099 Low\r\n", "L7RSP malformed status line"),
            (b"HTTP/1.1 +20 OK\r\n", "L7RSP malformed status line"),
            (b"HTTP/x.y 200 OK\r\n", "L7RSP malformed status line"),
            (b"\xff\xfe\x00\x01\n", "L7RSP malformed status line"),
            (long_line, "L7RSP malformed status line"),
        ];
        for (answer, expected) in cases {
            let address = answering(answer).await;
            let outcome = check_once(
                address,
                &http_check("GET", "/", None),
                Duration::from_secs(2),
            )
            .await;
            assert_eq!(
                outcome,
                CheckOutcome::fail(expected.into()),
                "{:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(40)])
            );
        }
        // A status line without a line end before the close is still understood.
        let address = answering(b"HTTP/1.0 200 OK").await;
        let outcome = check_once(
            address,
            &http_check("GET", "/", None),
            Duration::from_secs(2),
        )
        .await;
        assert!(outcome.passed, "{outcome:?}");
    }

    #[tokio::test]
    async fn a_misconfigured_request_is_never_sent() {
        let address = answering(b"HTTP/1.0 200 OK\r\n\r\n").await;
        let smuggling = http_check("GET", "/ HTTP/1.0\r\nX-Evil: 1", None);
        let outcome = check_once(address, &smuggling, Duration::from_secs(1)).await;
        assert!(!outcome.passed);
        assert!(
            outcome.description.starts_with("L7RSP invalid"),
            "{outcome:?}"
        );
    }

    #[test]
    fn status_line_parsing_never_panics() {
        // A deterministic generator over valid, mutated and random lines.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r",
            b"HTTP/1.0 503 Service Unavailable",
            b"HTTP/2 200",
            b"",
        ];
        for round in 0..20_000 {
            let seed = seeds[round % seeds.len()];
            let mut line = seed.to_vec();
            for _ in 0..(next() % 4) {
                let position = (next() as usize) % (line.len() + 1);
                match next() % 3 {
                    0 => line.insert(position, next() as u8),
                    1 if position < line.len() => {
                        line.remove(position);
                    }
                    _ if position < line.len() => line[position] = next() as u8,
                    _ => {}
                }
            }
            if round % 7 == 0 {
                line = (0..(next() % 64)).map(|_| next() as u8).collect();
            }
            if let Ok(status) = parse_status_line(&line) {
                assert!((100..=599).contains(&status));
            }
        }
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 204"), Ok(204));
    }

    #[test]
    fn the_timeout_is_bounded_by_the_interval() {
        let mut check: CheckSpec = "HEAD /lb-check.txt".parse().unwrap();
        let timeouts = Timeouts::default();
        assert_eq!(
            check_timeout(&check, &timeouts),
            Duration::from_millis(2000)
        );
        check.interval_ms = 60_000;
        assert_eq!(
            check_timeout(&check, &timeouts),
            Duration::from_millis(6000)
        );
        check.interval_ms = 0;
        assert_eq!(check_timeout(&check, &timeouts), MIN_INTERVAL);
        for _ in 0..1000 {
            let fraction = random_fraction();
            assert!((0.0..1.0).contains(&fraction));
        }
    }

    #[tokio::test]
    async fn shutdown_ends_every_check_loop() {
        let specs: Vec<BackendSpec> = (1..=3)
            .map(|index| BackendSpec {
                name: format!("web{index}"),
                addr: ([127, 0, 0, 1], 1).into(),
                weight: 1,
                admin: AdminState::Enabled,
            })
            .collect();
        let pool = Arc::new(Pool::new(&specs));
        let check = CheckSpec {
            kind: CheckKind::Tcp,
            interval_ms: 3_600_000,
            rise: 2,
            fall: 3,
        };
        let (trigger, shutdown) = ShutdownTrigger::new();
        let checks = spawn_checks(pool, check, Timeouts::default(), shutdown);
        tokio::time::sleep(Duration::from_millis(20)).await;
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(2), checks)
            .await
            .unwrap()
            .unwrap();
    }
}
