//! The "bad input" drill of the load-balancer issue, against the recipe's balancer on a real
//! emulated cluster: malformed requests, huge heads, oversized bodies, slowloris clients
//! (answered 408), backends that answer garbage or nothing, and request-smuggling
//! attempts. Every one must
//! get a clear HTTP error (HAProxy-like 4xx/5xx) or a prompt close, never a hang, and the
//! balancer must keep serving everyone else; no agent may crash.

mod harness;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::{TestCluster, free_port, wait_until};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);
/// The client timeout of the balancer the slowloris case attacks (the recipe's is 30 s).
const SHORT_CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// The backend timeouts of the balancer in front of the server that never answers.
const SHORT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const SHORT_SERVER_TIMEOUT: Duration = Duration::from_secs(1);
/// Slowloris connections opened at once.
const SLOW_CLIENTS: usize = 50;

/// How a raw exchange ended.
#[derive(Debug, PartialEq)]
enum Ending {
    /// A whole response (by its Content-Length) arrived; the connection was not awaited.
    Answered,
    /// The balancer closed the connection (FIN).
    Closed,
    /// The connection was reset or failed while reading.
    Reset(String),
    /// Still open, with nothing more coming, when our patience ran out.
    StillOpen,
}

/// What came back for raw bytes sent to the balancer.
#[derive(Debug)]
struct Exchange {
    raw: Vec<u8>,
    ending: Ending,
    elapsed: Duration,
}

impl Exchange {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The status of the first response, if one arrived.
    fn status(&self) -> Option<u16> {
        let text = self.text();
        if !text.starts_with("HTTP/1.") {
            return None;
        }
        text.split_whitespace().nth(1)?.parse().ok()
    }

    fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next()?.to_string();
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }

    fn body(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default()
    }

    /// How many responses arrived on the connection.
    fn responses(&self) -> usize {
        self.text().matches("HTTP/1.").count()
    }
}

/// Whether `raw` holds one whole response with a Content-Length.
fn holds_whole_response(raw: &[u8]) -> bool {
    let Some(head_end) = raw.windows(4).position(|window| window == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let length = head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    length.is_some_and(|length| raw.len() >= head_end + 4 + length)
}

/// Sends `request` on a fresh connection and reads what comes back: until one whole
/// response has arrived (`until_close` false) or until the balancer closes the connection,
/// for at most `patience`.
fn exchange(
    address: SocketAddr,
    request: &[u8],
    until_close: bool,
    patience: Duration,
) -> Result<Exchange, String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|error| format!("connecting to {address}: {error}"))?;
    // The balancer may refuse before reading everything (a huge head): the answer matters,
    // not whether all of our bytes were taken.
    let _ = stream.write_all(request);
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|error| error.to_string())?;
    let mut raw = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let ending = loop {
        if !until_close && holds_whole_response(&raw) {
            break Ending::Answered;
        }
        if started.elapsed() > patience {
            break Ending::StillOpen;
        }
        match stream.read(&mut buffer) {
            Ok(0) => break Ending::Closed,
            Ok(read) => raw.extend_from_slice(&buffer[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(error) => break Ending::Reset(error.to_string()),
        }
    };
    Ok(Exchange {
        raw,
        ending,
        elapsed: started.elapsed(),
    })
}

/// A plain `GET /` with `Connection: close`.
fn plain_get(address: SocketAddr) -> Result<Exchange, String> {
    exchange(
        address,
        b"GET / HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n",
        false,
        Duration::from_secs(5),
    )
}

/// Asserts that a normal GET through `site` answers 200 from web-0 or web-1 (the demo's
/// web servers, the replicas of the service `web`); returns how long it took.
fn assert_site_serves(site: SocketAddr) -> Duration {
    let answer =
        plain_get(site).unwrap_or_else(|error| panic!("the site does not answer: {error}"));
    let served_by = answer.header("x-served-by").unwrap_or_default();
    assert!(
        answer.status() == Some(200) && (served_by == "web-0" || served_by == "web-1"),
        "a normal GET through {site} should answer 200 from web-0 or web-1:\n{}",
        answer.text()
    );
    answer.elapsed
}

/// Reads a request head (up to the blank line, 64 KiB, or 2 s of silence).
fn read_request_head(stream: &mut TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
}

/// A backend on 127.0.0.1 that hands every connection to `handler` on a thread of its own.
fn spawn_backend(handler: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || handler(stream));
        }
    });
    address
}

/// Answers every request with bytes that are not HTTP, then closes.
fn answer_garbage(mut stream: TcpStream) {
    read_request_head(&mut stream);
    let _ = stream.write_all(b"NOT HTTP AT ALL\r\n\r\n");
}

/// Takes the request and closes without a word.
fn hang_up(mut stream: TcpStream) {
    read_request_head(&mut stream);
}

/// Takes the request and never answers (a hung server).
fn never_answer(mut stream: TcpStream) {
    read_request_head(&mut stream);
    thread::sleep(Duration::from_secs(120));
}

/// One request as the recording backend parsed it off its connection.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(key, _)| key == name)
    }
}

/// A keep-alive HTTP/1.1 backend that records every request it parses and answers 200.
/// It frames bodies by Content-Length first, like the backends request smugglers hope
/// for, so a message forwarded with both headers would show as a smuggled request here.
fn spawn_recorder() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = log.clone();
            thread::spawn(move || {
                let _ = serve_recorded(stream, &log);
            });
        }
    });
    (address, seen)
}

fn serve_recorded(stream: TcpStream, log: &Mutex<Vec<Seen>>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let value_of = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.to_ascii_lowercase())
        };
        if let Some(length) = value_of("content-length") {
            let length: u64 = length.parse().unwrap_or(0);
            io::copy(&mut (&mut reader).take(length), &mut io::sink())?;
        } else if value_of("transfer-encoding").is_some_and(|value| value.contains("chunked")) {
            loop {
                let mut size_line = String::new();
                reader.read_line(&mut size_line)?;
                let size_text = size_line.trim().split(';').next().unwrap_or_default();
                let size = u64::from_str_radix(size_text, 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
                if size == 0 {
                    // Trailers, up to the blank line.
                    loop {
                        let mut trailer = String::new();
                        if reader.read_line(&mut trailer)? == 0 || trailer.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                io::copy(&mut (&mut reader).take(size + 2), &mut io::sink())?;
            }
        }
        log.lock().unwrap().push(Seen { line, headers });
        writer.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Served-By: recorder\r\n\r\nok",
        )?;
    }
}

/// `bramble lb show <name> --json`.
fn show(cluster: &TestCluster, name: &str) -> Option<Value> {
    let run = cluster.bramble(&["lb", "show", name, "--json"]);
    run.success.then(|| run.json())
}

/// Creates a balancer of one or more backends on `listen`, with `extra` flags, and waits
/// until it has a VIP holder that accepts connections.
fn create_balancer(
    cluster: &TestCluster,
    name: &str,
    listen: SocketAddr,
    backends: &[SocketAddr],
    extra: &[&str],
) {
    let listen_text = listen.to_string();
    let backend_texts: Vec<String> = backends.iter().map(SocketAddr::to_string).collect();
    let mut arguments = vec!["lb", "create", name, "--listen", listen_text.as_str()];
    for backend in &backend_texts {
        arguments.extend_from_slice(&["--backend", backend.as_str()]);
    }
    arguments.extend_from_slice(extra);
    cluster.bramble_ok(&arguments);
    wait_until(
        &format!("balancer {name} listens on {listen}"),
        LONG,
        || {
            show(cluster, name).is_some_and(|shown| shown["vip_holder"].is_string())
                && TcpStream::connect_timeout(&listen, Duration::from_secs(1)).is_ok()
        },
    );
}

/// Runs the cases, each followed by a check that the recipe's site still serves, and
/// collects every failure so one run reports all of them.
struct Drill {
    site: SocketAddr,
    failures: Vec<String>,
}

impl Drill {
    fn case(&mut self, name: &str, case: impl FnOnce()) {
        let site = self.site;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            case();
            assert_site_serves(site);
        }));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "(no message)".to_string());
            self.failures.push(format!("{name}: {message}"));
        }
    }
}

fn assert_status(what: &str, answer: &Exchange, expected: u16) {
    assert_eq!(
        answer.status(),
        Some(expected),
        "{what}: expected {expected}, got {:?} after {:?}, ending {:?}:\n{}",
        answer.status(),
        answer.elapsed,
        answer.ending,
        answer.text()
    );
}

/// Case 1: a request line that is not HTTP/1.x gets a 400 and the connection is closed.
fn malformed_request_lines(site: SocketAddr) {
    let tls_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x00, 0xff, 0x7f, 0x80,
        b'\r', b'\n', b'\r', b'\n',
    ];
    let binary: Vec<u8> = (0..=255u8).rev().chain(*b"\r\n\r\n").collect();
    let cases: [(&str, &[u8]); 5] = [
        ("a word", b"GARBAGE\r\n\r\n"),
        ("HTTP/9.9", b"GET / HTTP/9.9\r\nHost: site\r\n\r\n"),
        (
            "a space in the method",
            b"G ET / HTTP/1.1\r\nHost: site\r\n\r\n",
        ),
        ("a TLS hello", tls_hello),
        ("binary bytes", &binary),
    ];
    for (what, request) in cases {
        let answer = exchange(site, request, true, Duration::from_secs(5)).unwrap();
        assert_status(what, &answer, 400);
        assert_eq!(
            answer.ending,
            Ending::Closed,
            "{what}: the connection should be closed after the 400"
        );
    }
}

/// Case 2: a request head over `limits.max_header_bytes`, or with more headers than the
/// parser takes, gets 431 Request Header Fields Too Large.
fn huge_heads(site: SocketAddr, max_header_bytes: usize) {
    let big = 100 * 1024;
    assert!(
        big > max_header_bytes,
        "the test header must exceed the limit"
    );
    let one_big = format!(
        "GET / HTTP/1.1\r\nHost: site\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(big)
    );
    let answer = exchange(site, one_big.as_bytes(), true, Duration::from_secs(5)).unwrap();
    assert_status("one header of 100 KiB", &answer, 431);
    assert_ne!(answer.ending, Ending::StillOpen);

    let many: String = (0..200).map(|index| format!("X-H{index}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: site\r\n{many}Connection: close\r\n\r\n");
    assert!(
        many.len() < max_header_bytes,
        "200 small headers fit the byte limit"
    );
    let answer = exchange(site, many.as_bytes(), true, Duration::from_secs(5)).unwrap();
    assert_status("200 headers", &answer, 431);
    assert_ne!(answer.ending, Ending::StillOpen);
}

/// Case 3: a Content-Length above `limits.max_body_bytes` gets 413 before any of the body
/// is sent, with a body that names the limit.
fn oversized_body(site: SocketAddr, max_body_bytes: u64) {
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: site\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        max_body_bytes + 1
    );
    let answer = exchange(site, request.as_bytes(), false, Duration::from_secs(5)).unwrap();
    assert_status("Content-Length over the limit", &answer, 413);
    assert!(
        answer.body().contains(&max_body_bytes.to_string()),
        "the 413 should name the limit of {max_body_bytes} bytes:\n{}",
        answer.text()
    );
}

/// What one slowloris connection saw.
#[derive(Debug)]
struct Dripped {
    /// When the balancer closed it, counted from the connect; None if it never did.
    closed_after: Option<Duration>,
    received: Vec<u8>,
    how: String,
}

/// Opens a connection, sends a partial request head and then one more byte a second,
/// until the balancer closes it (or `give_up` passes).
fn drip(address: SocketAddr, index: usize, give_up: Duration) -> Result<Dripped, String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|error| format!("slow client {index}: {error}"))?;
    let connected = Instant::now();
    stream
        .write_all(format!("GET /slow-{index} HTTP/1.1\r\nHost: site\r\nX-Slow: ").as_bytes())
        .map_err(|error| format!("slow client {index}: {error}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|error| error.to_string())?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        if connected.elapsed() > give_up {
            return Ok(Dripped {
                closed_after: None,
                received,
                how: "still open".into(),
            });
        }
        let closed = |how: String, received: Vec<u8>| Dripped {
            closed_after: Some(connected.elapsed()),
            received,
            how,
        };
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(closed("closed".into(), received)),
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if let Err(error) = stream.write_all(b"a") {
                    return Ok(closed(format!("write failed: {error}"), received));
                }
            }
            Err(error) => return Ok(closed(format!("reset: {error}"), received)),
        }
    }
}

/// Opens a connection, optionally has one request answered on it, then sends nothing
/// and reads until the balancer closes it; returns what arrived after the answer.
fn sit_idle(
    address: SocketAddr,
    first_request: bool,
    give_up: Duration,
) -> Result<Exchange, String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|error| format!("idle client: {error}"))?;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|error| error.to_string())?;
    let mut raw = Vec::new();
    let mut buffer = [0u8; 4096];
    if first_request {
        stream
            .write_all(b"GET /first HTTP/1.1\r\nHost: site\r\n\r\n")
            .map_err(|error| format!("idle client: {error}"))?;
        while !holds_whole_response(&raw) {
            if started.elapsed() > give_up {
                return Err("idle client: no answer to its first request".into());
            }
            match stream.read(&mut buffer) {
                Ok(0) => return Err("idle client: closed before answering".into()),
                Ok(read) => raw.extend_from_slice(&buffer[..read]),
                Err(_) => {}
            }
        }
        raw.clear();
    }
    let ending = loop {
        if started.elapsed() > give_up {
            break Ending::StillOpen;
        }
        match stream.read(&mut buffer) {
            Ok(0) => break Ending::Closed,
            Ok(read) => raw.extend_from_slice(&buffer[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(error) => break Ending::Reset(error.to_string()),
        }
    };
    Ok(Exchange {
        raw,
        ending,
        elapsed: started.elapsed(),
    })
}

/// Case 4: slowloris. Slow clients hold connections open by sending a request head a byte
/// a second; the balancer answers each `408 Request Timeout` with `Connection: close` at
/// its client timeout (HAProxy's `timeout http-request`) and closes it, and meanwhile
/// serves normal requests promptly, through the attacked balancer and the recipe's.
/// Connections that are merely idle (kept alive after an answer, or never used) are
/// closed at the same timeout without a word, as HAProxy does.
fn slowloris(slow_site: SocketAddr, site: SocketAddr) {
    let give_up = SHORT_CLIENT_TIMEOUT + Duration::from_secs(6);
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|index| thread::spawn(move || drip(slow_site, index, give_up)))
        .collect();
    let idle: Vec<_> = [true, false]
        .into_iter()
        .map(|first_request| thread::spawn(move || sit_idle(slow_site, first_request, give_up)))
        .collect();
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut served = 0;
    while started.elapsed() < SHORT_CLIENT_TIMEOUT + Duration::from_secs(1) {
        let answer = plain_get(slow_site).expect("the attacked balancer answers");
        assert_eq!(
            (
                answer.status(),
                answer.header("x-served-by").unwrap_or_default().as_str()
            ),
            (Some(200), "recorder"),
            "a normal GET through the attacked balancer during the slowloris:\n{}",
            answer.text()
        );
        worst = worst.max(answer.elapsed);
        worst = worst.max(assert_site_serves(site));
        served += 2;
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("slowloris: {served} normal requests answered meanwhile, slowest {worst:?}");
    assert!(
        worst < Duration::from_secs(1),
        "normal requests should stay fast during a slowloris; the slowest took {worst:?}"
    );
    let mut closed_after = Vec::new();
    for (index, handle) in slow.into_iter().enumerate() {
        let dripped = handle.join().expect("a slow client thread").unwrap();
        let received = String::from_utf8_lossy(&dripped.received).into_owned();
        let after = dripped.closed_after.unwrap_or_else(|| {
            panic!("slow client {index} was never closed by the balancer ({received:?})")
        });
        // Closed by the header-read timeout: not before it (that would cut off slow but
        // legitimate clients), and not long after.
        assert!(
            after >= SHORT_CLIENT_TIMEOUT - Duration::from_millis(500)
                && after <= SHORT_CLIENT_TIMEOUT + Duration::from_secs(3),
            "slow client {index} was closed after {after:?} ({}), the client timeout is {SHORT_CLIENT_TIMEOUT:?}",
            dripped.how
        );
        assert!(
            received.starts_with("HTTP/1.1 408 Request Timeout\r\n")
                && received
                    .to_ascii_lowercase()
                    .contains("\r\nconnection: close\r\n")
                && dripped.how == "closed",
            "slow client {index}: a timed-out request head gets a 408 with Connection: close \
             and then a close, not {received:?} ({})",
            dripped.how
        );
        closed_after.push(after);
    }
    for (first_request, handle) in [true, false].into_iter().zip(idle) {
        let idle = handle.join().expect("an idle client thread").unwrap();
        assert!(
            idle.ending == Ending::Closed && idle.raw.is_empty(),
            "an idle connection (after a request: {first_request}) is closed silently, not {:?} with {:?}",
            idle.ending,
            idle.text()
        );
        assert!(
            idle.elapsed >= SHORT_CLIENT_TIMEOUT - Duration::from_millis(500)
                && idle.elapsed <= SHORT_CLIENT_TIMEOUT + Duration::from_secs(3),
            "an idle connection (after a request: {first_request}) was closed after {:?}",
            idle.elapsed
        );
    }
    closed_after.sort();
    eprintln!(
        "slowloris: {SLOW_CLIENTS} slow clients closed after {:?} to {:?}",
        closed_after.first().unwrap(),
        closed_after.last().unwrap()
    );
}

const PAGE_REQUEST: &[u8] = b"GET /page HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n";

/// Case 5a: a backend that answers bytes that are not HTTP gets the client a prompt 502
/// whose body names the backend and says its answer was not HTTP.
fn garbage_backend(junk: SocketAddr) {
    let answer = exchange(junk, PAGE_REQUEST, false, Duration::from_secs(10)).unwrap();
    assert_status("a backend that answers garbage", &answer, 502);
    let body = answer.body();
    assert!(
        body.contains("s1") && body.contains("invalid HTTP response"),
        "the 502 should say the backend s1 answered something that is not HTTP: {body:?}"
    );
    assert!(
        answer.elapsed < Duration::from_secs(3),
        "{:?}",
        answer.elapsed
    );
}

/// Case 5b: a backend that takes the request and closes without a word (an empty reply)
/// gets the client a prompt 502 that names the backend and says it failed before
/// answering (HAProxy: 502, termination state SH), not a 503 "no backend available": the
/// backend is there, it misbehaved.
fn hangup_backend(hangup: SocketAddr) {
    let answer = exchange(hangup, PAGE_REQUEST, false, Duration::from_secs(10)).unwrap();
    assert_status("a backend that closes without answering", &answer, 502);
    let body = answer.body();
    assert!(
        body.contains("s1") && body.contains("before answering"),
        "the 502 should say the backend s1 failed before answering: {body:?}"
    );
    assert!(
        answer.elapsed < Duration::from_secs(3),
        "{:?}",
        answer.elapsed
    );
}

/// Case 5c: a backend that takes the request and never answers gets the client a 504
/// after the server timeout, with a body that names the backend and the timeout.
fn silent_backend(silent: SocketAddr) {
    let answer = exchange(silent, PAGE_REQUEST, false, Duration::from_secs(10)).unwrap();
    assert_status("a backend that never answers", &answer, 504);
    let body = answer.body();
    assert!(
        body.contains("s1") && body.contains("did not answer within"),
        "the 504 should say the backend s1 did not answer in time: {body:?}"
    );
    let bound = SHORT_CONNECT_TIMEOUT + SHORT_SERVER_TIMEOUT;
    assert!(
        answer.elapsed >= SHORT_SERVER_TIMEOUT && answer.elapsed < bound + Duration::from_secs(2),
        "the 504 should come after the server timeout ({SHORT_SERVER_TIMEOUT:?}, at most {bound:?} with the connect timeout), not after {:?}",
        answer.elapsed
    );
    eprintln!("silent backend: 504 after {:?}: {body:?}", answer.elapsed);
}

/// Case 6: request smuggling. Two different Content-Lengths are refused with 400. A message
/// with both Content-Length and Transfer-Encoding is refused with 400 or, as RFC 9112
/// section 6.1 allows, framed by Transfer-Encoding alone with the connection closed after
/// the answer; either way the backend never sees a smuggled second request, nor a message
/// that carries both framings.
fn smuggling(site: SocketAddr, recorded: SocketAddr, seen: &Mutex<Vec<Seen>>) {
    let two_lengths = b"POST / HTTP/1.1\r\nHost: site\r\nContent-Length: 5\r\nContent-Length: 46\r\n\r\nhelloGET /smuggled-0 HTTP/1.1\r\nHost: site\r\n\r\n";
    let answer = exchange(site, two_lengths, true, Duration::from_secs(5)).unwrap();
    assert_status("two different Content-Lengths", &answer, 400);
    assert_eq!(answer.responses(), 1, "{}", answer.text());
    let answer = exchange(recorded, two_lengths, true, Duration::from_secs(5)).unwrap();
    assert_status("two different Content-Lengths", &answer, 400);

    // CL.TE: by Transfer-Encoding the body ends at the 0 chunk and a second request
    // follows on the client's connection; by Content-Length it is all one body.
    let smuggled = "GET /smuggled-1 HTTP/1.1\r\nHost: site\r\n\r\n";
    let cl_te = format!(
        "POST /cl-te HTTP/1.1\r\nHost: site\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    // TE.CL: by Transfer-Encoding the second request is the chunk's data; by
    // Content-Length the body is only the chunk size line, and the request follows it.
    let inner = "GET /smuggled-2 HTTP/1.1\r\nHost: site\r\nContent-Length: 0\r\n\r\n";
    let te_cl = format!(
        "POST /te-cl HTTP/1.1\r\nHost: site\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    );
    for (what, request) in [("CL.TE", cl_te), ("TE.CL", te_cl)] {
        let answer = exchange(recorded, request.as_bytes(), true, Duration::from_secs(5)).unwrap();
        let status = answer.status();
        let accepted = status == Some(200)
            && answer.header("x-served-by").as_deref() == Some("recorder")
            && answer.ending == Ending::Closed;
        assert!(
            status == Some(400) || accepted,
            "{what}: Content-Length with Transfer-Encoding should be refused with 400, or \
             forwarded by Transfer-Encoding alone with the connection closed after the \
             answer; got {status:?}, ending {:?}:\n{}",
            answer.ending,
            answer.text()
        );
        assert_eq!(
            answer.responses(),
            1,
            "{what}: one answer on the connection, no answer to a smuggled request:\n{}",
            answer.text()
        );
        eprintln!(
            "smuggling {what}: {status:?}, connection {:?}",
            answer.ending
        );
    }
    // Let anything that got through arrive before looking.
    thread::sleep(Duration::from_millis(500));
    let seen = seen.lock().unwrap().clone();
    for request in &seen {
        assert!(
            !request.line.contains("smuggled"),
            "the backend saw a smuggled request: {request:?}\nall it saw: {seen:#?}"
        );
        assert!(
            !(request.has("content-length") && request.has("transfer-encoding")),
            "the backend got a message with both framings: {request:?}"
        );
    }
    eprintln!(
        "smuggling: the backend saw {:?}",
        seen.iter().map(|request| &request.line).collect::<Vec<_>>()
    );
}

#[test]
fn the_recipe_balancer_answers_bad_input_with_clear_errors_and_keeps_serving() {
    // Proves that the recipe's balancer (and balancers beside it on the same lb nodes)
    // answer malformed requests, huge heads, oversized bodies, slowloris clients, garbage
    // or silent backends and smuggling attempts with a clear 4xx/5xx or a prompt close,
    // that after each the site still serves 200 from web-0 or web-1, and that no agent
    // crashed or panicked on the way.
    let cluster = TestCluster::up_with(3, &[]);
    let recipe = show(&cluster, "webfarm").expect("up creates the balancer webfarm");
    let site: SocketAddr = recipe["listen"].as_str().unwrap().parse().unwrap();
    let limits = &recipe["spec"]["limits"];
    let max_header_bytes = limits["max_header_bytes"].as_u64().unwrap() as usize;
    let max_body_bytes = limits["max_body_bytes"].as_u64().unwrap();
    wait_until("webfarm has a VIP holder", LONG, || {
        show(&cluster, "webfarm").is_some_and(|shown| shown["vip_holder"].is_string())
    });
    wait_until("the site answers", LONG, || {
        plain_get(site).is_ok_and(|answer| answer.status() == Some(200))
    });

    // Balancers of our own beside the recipe's, on 127.0.2.2-8 (the recipe's VIP is on
    // .100 or above, and tests/balancer.rs uses .9 and .20-.219).
    let ip = [127, 0, 2, 2 + (std::process::id() % 7) as u8];
    let listen = || -> SocketAddr { (ip, free_port(ip)).into() };
    let (recorder, seen) = spawn_recorder();
    let recorded = listen();
    let client_timeout = format!("{}ms", SHORT_CLIENT_TIMEOUT.as_millis());
    create_balancer(
        &cluster,
        "recorded",
        recorded,
        &[recorder],
        &["--timeout-client", &client_timeout],
    );
    let junk = listen();
    create_balancer(
        &cluster,
        "junk",
        junk,
        &[spawn_backend(answer_garbage)],
        &[],
    );
    let hangup = listen();
    create_balancer(&cluster, "hangup", hangup, &[spawn_backend(hang_up)], &[]);
    let silent = listen();
    let connect_timeout = format!("{}ms", SHORT_CONNECT_TIMEOUT.as_millis());
    let server_timeout = format!("{}ms", SHORT_SERVER_TIMEOUT.as_millis());
    create_balancer(
        &cluster,
        "silent",
        silent,
        &[spawn_backend(never_answer)],
        &[
            "--timeout-connect",
            &connect_timeout,
            "--timeout-server",
            &server_timeout,
        ],
    );

    let mut drill = Drill {
        site,
        failures: Vec::new(),
    };
    drill.case("1. malformed request lines", || {
        malformed_request_lines(site)
    });
    drill.case("2. huge heads", || huge_heads(site, max_header_bytes));
    drill.case("3. oversized body", || oversized_body(site, max_body_bytes));
    drill.case("4. slowloris", || slowloris(recorded, site));
    drill.case("5a. a backend that answers garbage", || {
        garbage_backend(junk)
    });
    drill.case("5b. a backend that hangs up", || hangup_backend(hangup));
    drill.case("5c. a backend that never answers", || {
        silent_backend(silent)
    });
    drill.case("6. request smuggling", || smuggling(site, recorded, &seen));

    // No agent crashed or panicked on any of it.
    for name in cluster.all() {
        let process = cluster.process_state(name);
        if process != "running" {
            drill
                .failures
                .push(format!("{name}'s agent is not running ({process})"));
        }
        let log = cluster.log(name);
        if log.contains("panicked") {
            drill
                .failures
                .push(format!("{name}'s agent log contains \"panicked\":\n{log}"));
        }
    }
    assert!(
        drill.failures.is_empty(),
        "{} failure(s):\n\n{}",
        drill.failures.len(),
        drill.failures.join("\n\n")
    );
}
