//! Drills of the security issue "A join with a wrong token, a forged certificate, garbage
//! bytes sent to every listening port, and oversized messages: refused or ignored, every
//! agent keeps running" — all against real agent processes on loopback.
//!
//! Every loop here is bounded in count and time, and traffic goes only to the 127.0.0.1
//! addresses of the test clusters. Timeouts bound hangs; nothing here measures speed.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_cluster::AdminCredential;
use bramble_cluster::join::JoinRequest;
use bramble_cluster::pki::CertificateAuthority;
use bramble_cluster::service::AgentInfo;
use bramble_cluster::token::Secret;
use bramble_net::tls::pinned_ca_client_config;
use bramble_net::{
    CLUSTER_SERVER_NAME, CallError, Caller, Credential, ErrorKind, Fingerprint, RpcClient,
};
use harness::{Run, TestCluster, run_bramble, wait_until};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(30);
/// Bounds every single network exchange of these drills.
const EXCHANGE: Duration = Duration::from_secs(30);
const ANONYMOUS_FRAME_LIMIT: u32 = 16 * 1024;
const FRAME_LIMIT: u32 = 16 * 1024 * 1024;

#[test]
fn a_join_with_a_wrong_secret_is_refused_by_the_member_and_the_secret_is_never_logged() {
    let cluster = TestCluster::up(2);
    let real = RealToken::of(&cluster);
    let wrong_secret = Secret::random().to_hex();
    assert_ne!(wrong_secret, real.secret_hex);
    let token = format!("bramble1-{}-{wrong_secret}", real.fingerprint.to_hex());
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("intruder");

    let run = join_by_cli(cluster.addr("n1"), &token, &data_dir);
    assert!(
        !run.success,
        "a wrong secret was admitted:\n{}\n{}",
        run.stdout, run.stderr
    );
    assert!(run.stderr.contains("join refused"), "{}", run.stderr);
    assert!(
        !run.stderr.contains(&wrong_secret) && !run.stderr.contains(&real.secret_hex),
        "the CLI echoed a secret: {}",
        run.stderr
    );
    assert!(
        !data_dir.join("node.toml").exists(),
        "a refused join wrote a data directory"
    );

    // The member says clearly what happened, and never what the secrets are.
    wait_until("n1 logs the refused join", LONG, || {
        cluster.log("n1").contains("refused a join")
    });
    for name in cluster.all() {
        let log = cluster.log(name);
        assert!(
            !log.contains(&wrong_secret),
            "{name} logged the token secret"
        );
        assert!(
            !log.contains(&real.secret_hex),
            "{name} logged the join secret"
        );
        assert!(!log.contains("panicked"), "{name}:\n{log}");
    }
    cluster.assert_all_alive(LONG);
}

#[test]
fn a_join_pinning_another_ca_is_refused_before_the_secret_leaves_the_joiner() {
    let cluster = TestCluster::up(2);
    let real = RealToken::of(&cluster);
    let n1 = cluster.addr("n1");
    let wrong_fingerprint = Secret::random().to_hex();
    assert_ne!(wrong_fingerprint, real.fingerprint.to_hex());
    let token = format!("bramble1-{wrong_fingerprint}-{}", real.secret_hex);
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("intruder");

    let run = join_by_cli(n1, &token, &data_dir);
    assert!(
        !run.success,
        "a join to an unpinned CA went through:\n{}\n{}",
        run.stdout, run.stderr
    );
    assert!(run.stderr.contains("does not match"), "{}", run.stderr);
    assert!(!run.stderr.contains(&real.secret_hex), "{}", run.stderr);
    assert!(!data_dir.join("node.toml").exists());

    // At the protocol level: the TLS handshake fails on the joiner's side, so no request
    // (and no secret) is ever written to the connection.
    let wrong_pin = Fingerprint::from_hex(&wrong_fingerprint).unwrap();
    let client = RpcClient::new(pinned_ca_client_config(wrong_pin).unwrap())
        .with_timeouts(Duration::from_secs(10), Duration::from_secs(10));
    let request = JoinRequest {
        secret: Secret::from_hex(&real.secret_hex).unwrap().0.to_vec(),
        name: "intruder".to_string(),
        public_key: vec![4; 65],
    };
    let error = runtime()
        .block_on(client.call::<_, ()>(n1, bramble_cluster::join::METHOD, &request))
        .expect_err("a member was trusted without the pinned CA");
    assert!(
        matches!(error, CallError::Tls { .. }),
        "expected a TLS failure, got {error:?}"
    );
    assert!(error.to_string().contains("does not match"), "{error}");

    // Give the member time to log whatever it would about the aborted handshakes; it must
    // never have seen a join request.
    let _ = try_wait_until(Duration::from_secs(5), || {
        cluster.log("n1").contains("TLS handshake failed")
    });
    for name in cluster.all() {
        let log = cluster.log(name);
        assert!(
            !log.contains("refused a join"),
            "{name} received a join request:\n{log}"
        );
        assert!(!log.contains("intruder"), "{name}:\n{log}");
        assert!(!log.contains(&real.secret_hex), "{name} logged the secret");
        assert!(!log.contains("panicked"), "{name}:\n{log}");
    }
    cluster.assert_all_alive(LONG);
}

#[test]
fn certificates_of_another_cluster_forged_certificates_and_anonymous_callers_get_nothing() {
    let cluster = TestCluster::up(2);
    let other = TestCluster::up(1);
    let n1 = cluster.addr("n1");
    let n1_text = n1.to_string();
    let foreign_path = other.path().join(AdminCredential::FILE_NAME);
    let rt = runtime();

    // The CLI with another cluster's admin credential, aimed at this cluster.
    let run = run_bramble(
        None,
        &[
            "nodes",
            "--json",
            "--credential",
            foreign_path.to_str().unwrap(),
            "--addr",
            &n1_text,
        ],
    );
    assert!(
        !run.success,
        "another cluster's credential was accepted:\n{}",
        run.stdout
    );
    assert!(
        run.stdout.trim().is_empty(),
        "a node table leaked: {}",
        run.stdout
    );
    eprintln!("foreign credential: {}", run.stderr.trim());

    // A client that trusts this cluster's (public) CA but presents certificates it did not
    // issue: another cluster's admin certificate, and admin and node certificates from a
    // forged CA with exactly the real CA's name. The server must reject the certificate in
    // the handshake, not let the request through (not even as an anonymous caller).
    let real_ca_pem = std::fs::read_to_string(cluster.path().join("n1/tls/ca.crt")).unwrap();
    let foreign = AdminCredential::load(&foreign_path).unwrap();
    let cluster_id = node_toml(&cluster.path().join("n1"))["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let look_alike = CertificateAuthority::create(&cluster_id).unwrap();
    let mut presented = vec![(
        "another cluster's admin certificate".to_string(),
        foreign.certificate_pem.clone(),
        foreign.key_pem.clone(),
    )];
    for caller in [
        Caller::Admin("admin".to_string()),
        Caller::Node("n2".to_string()),
    ] {
        let issued = look_alike.issue_with_new_key(&caller).unwrap();
        presented.push((
            format!("a look-alike CA's {caller} certificate"),
            issued.certificate_pem,
            issued.key_pem,
        ));
    }
    for (what, certificate_pem, key_pem) in presented {
        let forged = Credential::from_pem(&real_ca_pem, &certificate_pem, &key_pem).unwrap();
        let client = RpcClient::new(forged.client_config().unwrap())
            .with_timeouts(Duration::from_secs(10), Duration::from_secs(10));
        for method in ["cluster.nodes", "cluster.leave"] {
            let outcome = rt.block_on(client.call::<(), ()>(n1, method, &()));
            let error = match outcome {
                Ok(()) => panic!("{what} was accepted for {method}"),
                Err(error) => error,
            };
            assert!(
                matches!(error, CallError::Tls { .. } | CallError::Transport { .. }),
                "{what} on {method}: expected the handshake to fail, got {error:?}"
            );
        }
    }

    // Anonymous callers (no certificate, server verified by the pinned CA) may call only
    // the join.
    let real = RealToken::of(&cluster);
    let anonymous = RpcClient::new(pinned_ca_client_config(real.fingerprint).unwrap())
        .with_timeouts(Duration::from_secs(10), Duration::from_secs(10));
    for name in cluster.all() {
        let address = cluster.addr(name);
        for method in [
            "cluster.nodes",
            "cluster.info",
            "cluster.leave",
            "meta.anything",
        ] {
            let error = rt
                .block_on(anonymous.call::<(), ()>(address, method, &()))
                .expect_err("an anonymous call went through");
            assert_eq!(
                error.remote().map(|remote| remote.kind),
                Some(ErrorKind::Unauthorized),
                "anonymous {method} on {name}: {error:?}"
            );
        }
    }

    // Nothing above made a node leave or fall over.
    cluster.assert_all_alive(LONG);
    other.assert_all_alive(LONG);
    let table = cluster.bramble_ok(&["nodes"]).stdout;
    assert!(table.contains("2 of 2 nodes alive"), "{table}");
    for name in cluster.all() {
        assert!(!cluster.log(name).contains("panicked"), "{name}");
        assert!(!cluster.log(name).contains("stopping after"), "{name}");
    }
}

#[test]
fn garbage_and_oversized_messages_on_every_port_leave_every_agent_running() {
    let cluster = TestCluster::up(3);
    let targets: Vec<(String, SocketAddr)> = cluster
        .all()
        .into_iter()
        .map(|name| (name.to_string(), cluster.addr(name)))
        .collect();
    let real = RealToken::of(&cluster);
    let pinned = pinned_ca_client_config(real.fingerprint).unwrap();
    let admin_tls = AdminCredential::load(&cluster.path().join(AdminCredential::FILE_NAME))
        .unwrap()
        .tls()
        .unwrap()
        .client_config()
        .unwrap();
    let admin = RpcClient::new(admin_tls.clone())
        .with_timeouts(Duration::from_secs(10), Duration::from_secs(15));
    let rt = runtime();
    let rejected_before: Vec<u64> = targets
        .iter()
        .map(|(_, address)| agent_info(&rt, &admin, *address).gossip_datagrams_rejected)
        .collect();

    // Slowloris: connections that send nothing (or the first bytes of a TLS record), held
    // open on our side for the whole drill. And anonymous TLS connections that complete
    // the handshake and then sit idle.
    let mut idle = Vec::new();
    for (_, address) in &targets {
        for index in 0..50 {
            let mut stream = TcpStream::connect_timeout(address, Duration::from_secs(10))
                .expect("opening an idle connection");
            if index % 10 == 0 {
                let _ = stream.write_all(&[0x16, 0x03, 0x01]);
            }
            idle.push(stream);
        }
    }
    let idle_tls: Vec<_> = targets
        .iter()
        .flat_map(|(_, address)| std::iter::repeat_n(*address, 5))
        .map(|address| rt.block_on(tls_connect(pinned.clone(), address)))
        .collect();

    // Raw TCP garbage, every node at once.
    let problems: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = targets
            .iter()
            .enumerate()
            .map(|(index, (name, address))| {
                scope.spawn(move || tcp_garbage(name, *address, 0x5eed + index as u64))
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a TCP garbage worker panicked"))
            .collect()
    });
    assert!(problems.is_empty(), "{problems:#?}");

    // UDP garbage on the gossip port (same port numbers).
    let addresses: Vec<SocketAddr> = targets.iter().map(|(_, address)| *address).collect();
    udp_garbage(&addresses, &mut Noise::new(0xdead_beef));

    // Oversized and malformed frames over TLS, anonymous and authenticated.
    for (name, address) in &targets {
        let address = *address;
        let anonymous_cases = [
            (u32::MAX, 1024),
            (ANONYMOUS_FRAME_LIMIT + 1, 64),
            (FRAME_LIMIT + 1, 64),
        ];
        for (length, trailing) in anonymous_cases {
            let reply = rt.block_on(send_length_prefix(
                pinned.clone(),
                address,
                length,
                trailing,
            ));
            reply.assert_refused(&format!("{name}: anonymous, length {length}"), "exceeds");
        }
        for length in [FRAME_LIMIT + 1, u32::MAX] {
            let reply = rt.block_on(send_length_prefix(admin_tls.clone(), address, length, 64));
            reply.assert_refused(&format!("{name}: admin, length {length}"), "exceeds");
        }
        // A frame within the limit that is not a request.
        let reply = rt.block_on(send_length_prefix(pinned.clone(), address, 100, 100));
        reply.assert_refused(&format!("{name}: anonymous garbage frame"), "malformed");
        let reply = rt.block_on(send_length_prefix(admin_tls.clone(), address, 100, 100));
        reply.assert_refused(&format!("{name}: admin garbage frame"), "malformed");
        // A well-formed frame for the join whose body is garbage.
        let anonymous = RpcClient::new(pinned.clone())
            .with_timeouts(Duration::from_secs(10), Duration::from_secs(10));
        let garbage = Noise::new(7).bytes(300);
        let error = rt
            .block_on(anonymous.call::<_, ()>(address, bramble_cluster::join::METHOD, &garbage))
            .expect_err("a garbage join was admitted");
        let kind = error.remote().map(|remote| remote.kind);
        assert!(
            matches!(kind, Some(ErrorKind::BadRequest | ErrorKind::Refused)),
            "{name}: garbage join answered {error:?}"
        );
    }

    // After all of it, with the idle connections still open: every agent is running, the
    // cluster is whole from every node's view, and the CLI still works.
    for name in cluster.all() {
        assert_eq!(
            cluster.process_state(name),
            "running",
            "{name}:\n{}",
            cluster.log(name)
        );
    }
    cluster.assert_all_alive(LONG);
    let table = cluster.bramble_ok(&["nodes"]).stdout;
    assert!(table.contains("3 of 3 nodes alive"), "{table}");
    for ((name, address), before) in targets.iter().zip(rejected_before) {
        let after = agent_info(&rt, &admin, *address).gossip_datagrams_rejected;
        assert!(
            after > before,
            "{name} rejected no garbage datagram ({before} -> {after}): did any arrive?"
        );
        let log = cluster.log(name);
        assert!(!log.contains("panicked"), "{name}:\n{log}");
        assert!(!log.contains("stopping after"), "{name}:\n{log}");
    }
    drop(idle_tls);
    drop(idle);
    drop(rt);
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// The cluster's real join token, read from n1's data directory independently of the code
/// that prints it: the SHA-256 of the DER CA certificate and the join secret.
struct RealToken {
    fingerprint: Fingerprint,
    secret_hex: String,
}

impl RealToken {
    fn of(cluster: &TestCluster) -> RealToken {
        let n1 = cluster.path().join("n1");
        let ca = CertificateDer::from_pem_file(n1.join("tls/ca.crt")).expect("n1's CA");
        let secrets: toml::Table =
            toml::from_str(&std::fs::read_to_string(n1.join("secrets.toml")).unwrap()).unwrap();
        RealToken {
            fingerprint: Fingerprint::of(&ca),
            secret_hex: secrets["join_secret"].as_str().unwrap().to_string(),
        }
    }
}

fn node_toml(data_dir: &Path) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(data_dir.join("node.toml")).unwrap()).unwrap()
}

fn join_by_cli(member: SocketAddr, token: &str, data_dir: &Path) -> Run {
    let listen = format!("127.0.0.1:{}", free_port());
    run_bramble(
        None,
        &[
            "join",
            &member.to_string(),
            "--token",
            token,
            "--name",
            "intruder",
            "--listen",
            &listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Like [`wait_until`], but reports instead of panicking when the time is up.
fn try_wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    condition()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn agent_info(rt: &tokio::runtime::Runtime, admin: &RpcClient, address: SocketAddr) -> AgentInfo {
    rt.block_on(admin.call(address, "cluster.info", &()))
        .unwrap_or_else(|error| panic!("cluster.info on {address}: {error}"))
}

/// A small deterministic generator of garbage (xorshift64*), so a failure can be replayed.
struct Noise(u64);

impl Noise {
    fn new(seed: u64) -> Noise {
        Noise(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, count: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(count + 8);
        while bytes.len() < count {
            bytes.extend_from_slice(&self.next().to_le_bytes());
        }
        bytes.truncate(count);
        bytes
    }
}

/// Sends each kind of non-TLS or broken-TLS input on its own connection and checks that
/// the agent closes every one of them (within [`EXCHANGE`], which only bounds a hang).
/// Returns what went wrong.
fn tcp_garbage(name: &str, address: SocketAddr, seed: u64) -> Vec<String> {
    let mut noise = Noise::new(seed);
    let mut client_hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    client_hello.extend(noise.bytes(512 - 6));
    client_hello.extend(noise.bytes(1024));
    let mut huge_record = vec![0x16, 0x03, 0x03, 0xff, 0xff];
    huge_record.extend(noise.bytes(100));
    let mut stalled_record = vec![0x16, 0x03, 0x01, 0x00, 0x50];
    stalled_record.extend(noise.bytes(10));
    let http =
        format!("GET / HTTP/1.1\r\nHost: {address}\r\nUser-Agent: bramble-security-drill\r\n\r\n")
            .into_bytes();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("nothing, then close", Vec::new()),
        ("4 KiB of random bytes", noise.bytes(4096)),
        ("1 MiB of random bytes", noise.bytes(1024 * 1024)),
        ("a plain HTTP request", http),
        ("a TLS ClientHello prefix then garbage", client_hello),
        ("a TLS record header claiming 64 KiB", huge_record),
        ("a TLS record header, then silence", stalled_record),
        ("zero bytes", vec![0; 4096]),
    ];
    let mut problems = Vec::new();
    for (what, bytes) in cases {
        let mut stream = match TcpStream::connect_timeout(&address, Duration::from_secs(10)) {
            Ok(stream) => stream,
            Err(error) => {
                problems.push(format!("{name}: {what}: could not connect: {error}"));
                continue;
            }
        };
        stream.set_write_timeout(Some(EXCHANGE)).unwrap();
        // The agent may reset the connection before it has read everything: that is fine.
        let _ = stream.write_all(&bytes);
        if bytes.is_empty() {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        match wait_for_close(&mut stream, EXCHANGE) {
            Ok(()) => {}
            Err(why) => problems.push(format!("{name}: {what}: {why}")),
        }
    }
    problems
}

/// Reads until the peer closes or resets the connection.
fn wait_for_close(stream: &mut TcpStream, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buffer = [0u8; 4096];
    let mut received = 0usize;
    while started.elapsed() < timeout {
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(count) => {
                received += count;
                if received > 1024 * 1024 {
                    return Err(format!("the agent answered garbage with {received} bytes"));
                }
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(()),
        }
    }
    Err(format!("the connection was still open after {timeout:?}"))
}

/// Sends bounded rounds of random datagrams of every size, and datagrams that start like
/// sealed gossip (`BG`, version 1) but are garbage, to every address.
fn udp_garbage(addresses: &[SocketAddr], noise: &mut Noise) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |datagram: &[u8], to: SocketAddr| {
        socket
            .send_to(datagram, to)
            .unwrap_or_else(|error| panic!("sending {} bytes to {to}: {error}", datagram.len()));
    };
    for _round in 0..20 {
        for size in [0, 1, 100, 1400, 65_507] {
            let datagram = noise.bytes(size);
            for address in addresses {
                send(&datagram, *address);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for _round in 0..10 {
        for size in [3, 4, 15, 30, 31, 32, 100, 1400, 65_507] {
            let mut datagram = b"BG\x01".to_vec();
            datagram.extend(noise.bytes(size - 3));
            for address in addresses {
                send(&datagram, *address);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    address: SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::time::timeout(EXCHANGE, tokio::net::TcpStream::connect(address))
        .await
        .expect("connecting timed out")
        .expect("connecting");
    let server_name = ServerName::try_from(CLUSTER_SERVER_NAME).unwrap();
    tokio::time::timeout(
        EXCHANGE,
        tokio_rustls::TlsConnector::from(config).connect(server_name, tcp),
    )
    .await
    .expect("the TLS handshake timed out")
    .expect("the TLS handshake failed")
}

/// What the agent did with a request we sent by hand.
#[derive(Debug)]
enum Reply {
    /// A response frame (its postcard bytes).
    Frame(Vec<u8>),
    /// Closed or reset the connection without a frame.
    Closed(String),
    /// Neither within [`EXCHANGE`].
    Hung,
}

impl Reply {
    /// The agent answered with an error frame mentioning `expected`, or closed.
    fn assert_refused(&self, what: &str, expected: &str) {
        match self {
            Reply::Frame(body) => {
                let text = String::from_utf8_lossy(body);
                assert!(
                    text.contains(expected),
                    "{what}: expected an error frame about {expected:?}, got {text:?}"
                );
                eprintln!("{what}: answered {text:?}");
            }
            Reply::Closed(how) => eprintln!("{what}: closed without a frame ({how})"),
            Reply::Hung => panic!("{what}: the agent neither answered nor closed"),
        }
    }
}

/// Over TLS, sends a 4-byte length prefix followed by `trailing` random bytes, and reads
/// what comes back.
async fn send_length_prefix(
    config: Arc<rustls::ClientConfig>,
    address: SocketAddr,
    length: u32,
    trailing: usize,
) -> Reply {
    let mut stream = tls_connect(config, address).await;
    let mut bytes = length.to_be_bytes().to_vec();
    bytes.extend(Noise::new(u64::from(length)).bytes(trailing));
    let exchange = async {
        if let Err(error) = stream.write_all(&bytes).await {
            return Reply::Closed(format!("write: {error}"));
        }
        let _ = stream.flush().await;
        let reply_length = match stream.read_u32().await {
            Ok(reply_length) => reply_length,
            Err(error) => return Reply::Closed(format!("read: {error}")),
        };
        if reply_length > 1024 * 1024 {
            return Reply::Frame(format!("a {reply_length}-byte reply").into_bytes());
        }
        let mut body = vec![0u8; reply_length as usize];
        match stream.read_exact(&mut body).await {
            Ok(_) => Reply::Frame(body),
            Err(error) => Reply::Closed(format!("read body: {error}")),
        }
    };
    tokio::time::timeout(EXCHANGE, exchange)
        .await
        .unwrap_or(Reply::Hung)
}
