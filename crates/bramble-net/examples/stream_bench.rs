//! Throughput and control-call latency of the mux between two processes on loopback, over
//! the real mutual TLS. Run by `bench/streams.sh`, which also measures `iperf3` as the
//! ceiling; each run prints one JSON object on stdout.
//!
//! ```text
//! stream_bench serve  --dir D                 # makes certificates in D, prints the address
//! stream_bench stream --dir D --address A --streams N --seconds S
//! stream_bench latency --dir D --address A --calls C
//! ```
//!
//! Client options: `--window-kib K` (stream window), `--connection-window-kib K`
//! (connection bulk window), both as the receiver of the downloads.
//!
//! Both processes run a Tokio runtime with two workers at the control plane's priority
//! (nice -10 where permitted), like the agent (`--workers N` to change the count), and
//! carry bulk streams on the mux's bulk threads at normal priority
//! (`BRAMBLE_MUX_BULK_THREADS=0` keeps them on the runtime, as before the separation).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bramble_net::{
    Credential, IncomingCall, MuxClient, MuxError, MuxLimits, Priority, ResponseWriter, Router,
    RpcError, ServerLimits, StreamHandler, StreamRouter,
};
use bramble_util::ShutdownTrigger;
use bytes::Bytes;

const CHUNK: usize = 64 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mode = arguments.first().cloned().unwrap_or_default();
    let option = |name: &str| -> Option<String> {
        arguments
            .iter()
            .position(|argument| argument == name)
            .and_then(|index| arguments.get(index + 1).cloned())
    };
    let dir = PathBuf::from(option("--dir").ok_or("--dir is required")?);
    bramble_util::scheduling::raise_control_plane_priority();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(option("--workers").unwrap_or("2".into()).parse()?)
        .enable_all()
        .on_thread_start(|| {
            bramble_util::scheduling::raise_control_plane_priority();
        })
        .build()?;
    runtime.block_on(async move {
        match mode.as_str() {
            "serve" => serve(&dir).await,
            "stream" | "latency" => {
                let address: SocketAddr = option("--address").ok_or("--address")?.parse()?;
                let credential = load(&dir, "client")?;
                let (_trigger, shutdown) = ShutdownTrigger::new();
                let mut client = MuxClient::new(credential.client_config()?, shutdown);
                // The receiver's windows: for downloads, the client's.
                let defaults = MuxLimits::default();
                let kib = |name: &str, default: u32| -> Result<u32, Box<dyn std::error::Error>> {
                    Ok(match option(name) {
                        Some(value) => value.parse::<u32>()? * 1024,
                        None => default,
                    })
                };
                client = client.with_limits(MuxLimits {
                    stream_window: kib("--window-kib", defaults.stream_window)?,
                    connection_bulk_window: kib(
                        "--connection-window-kib",
                        defaults.connection_bulk_window,
                    )?,
                    ..defaults
                });
                if mode == "stream" {
                    let streams: usize = option("--streams").unwrap_or("1".into()).parse()?;
                    let seconds: f64 = option("--seconds").unwrap_or("5".into()).parse()?;
                    stream(&client, address, streams, seconds).await
                } else {
                    let calls: usize = option("--calls").unwrap_or("500".into()).parse()?;
                    latency(&client, address, calls).await
                }
            }
            other => Err(format!("unknown mode {other:?}: serve, stream or latency").into()),
        }
    })
}

type Outcome = Result<(), Box<dyn std::error::Error>>;

/// `bench.download`: an endless body of one shared 64 KiB buffer, so the server spends its
/// time in the transport and not in making data. `bench.ping`: an empty answer.
struct BenchService {
    chunk: Bytes,
}

#[async_trait::async_trait]
impl StreamHandler for BenchService {
    async fn handle(&self, call: IncomingCall, response: ResponseWriter) -> Result<(), RpcError> {
        let failed = |error: MuxError| RpcError::internal(error.to_string());
        match call.method_name() {
            "download" => {
                let mut sender = response.start(&[]).await.map_err(failed)?;
                loop {
                    match sender.send(self.chunk.clone()).await {
                        Ok(()) => {}
                        // The client read what it wanted and stopped.
                        Err(MuxError::Stopped) => return Ok(()),
                        Err(error) => return Err(failed(error)),
                    }
                }
            }
            "ping" => response.send_all(&[], Bytes::new()).await.map_err(failed),
            other => Err(RpcError::bad_request(format!("no bench method {other:?}"))),
        }
    }
}

async fn serve(dir: &Path) -> Outcome {
    make_credentials(dir)?;
    let credential = load(dir, "server")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let mut streams = StreamRouter::new();
    streams.register(
        "bench",
        Arc::new(BenchService {
            chunk: Bytes::from(vec![0x5a; CHUNK]),
        }),
    );
    let (trigger, shutdown) = ShutdownTrigger::new();
    let server = tokio::spawn(bramble_net::serve_with_streams(
        listener,
        credential.server_config()?,
        Arc::new(Router::new()),
        Arc::new(streams),
        ServerLimits::default(),
        MuxLimits::default(),
        shutdown,
    ));
    // The script stops the server by closing its standard input.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|read| read > 0)
            .unwrap_or(false)
        {}
    })
    .await?;
    trigger.trigger();
    server.await?;
    Ok(())
}

/// Runs `streams` downloads for `seconds` after a half-second warm-up and prints the
/// throughput of the measured window.
async fn stream(client: &MuxClient, address: SocketAddr, streams: usize, seconds: f64) -> Outcome {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let client = client.clone();
        let received = received.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (request, response) = client
                .open(address, "bench.download", &[], Priority::Bulk)
                .await?;
            request.finish().await?;
            let mut response = response.wait().await?;
            while !stop.load(Ordering::Relaxed) {
                match response.body.next_chunk().await? {
                    Some(chunk) => received.fetch_add(chunk.len() as u64, Ordering::Relaxed),
                    None => break,
                };
            }
            Ok::<_, MuxError>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start_bytes = received.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let bits_per_second = bytes as f64 * 8.0 / elapsed;
    println!(
        "{{\"streams\": {streams}, \"seconds\": {elapsed:.3}, \"bytes\": {bytes}, \"bits_per_second\": {bits_per_second:.0}}}"
    );
    Ok(())
}

async fn pings(
    client: &MuxClient,
    address: SocketAddr,
    calls: usize,
) -> Result<Vec<f64>, MuxError> {
    let connection = client.connection(address).await?;
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        connection
            .call_bytes(
                "bench.ping",
                Bytes::new(),
                Priority::Control,
                1024,
                Duration::from_secs(10),
            )
            .await?;
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
        // Spaced like heartbeats, not a tight loop.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len().saturating_sub(1)) as f64 * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

/// Control-call latency idle, then while two bulk streams run flat out to the same server
/// (on the client's bulk connection); prints both and the bulk throughput meanwhile.
async fn latency(client: &MuxClient, address: SocketAddr, calls: usize) -> Outcome {
    pings(client, address, 50).await?; // warm-up
    let idle = pings(client, address, calls).await?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let connection = client.connection_for(address, Priority::Bulk).await?;
        let received = received.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (request, response) = connection
                .open("bench.download", &[], Priority::Bulk)
                .await?;
            request.finish().await?;
            let mut response = response.wait().await?;
            while !stop.load(Ordering::Relaxed) {
                match response.body.next_chunk().await? {
                    Some(chunk) => received.fetch_add(chunk.len() as u64, Ordering::Relaxed),
                    None => break,
                };
            }
            Ok::<_, MuxError>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = received.load(Ordering::Relaxed);
    let started = Instant::now();
    let loaded = pings(client, address, calls).await?;
    let bulk_bits_per_second =
        (received.load(Ordering::Relaxed) - before) as f64 * 8.0 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    println!(
        "{{\"calls\": {calls}, \"idle_p50_us\": {:.0}, \"idle_p99_us\": {:.0}, \"loaded_p50_us\": {:.0}, \"loaded_p99_us\": {:.0}, \"bulk_bits_per_second_during\": {bulk_bits_per_second:.0}}}",
        percentile(&idle, 0.5),
        percentile(&idle, 0.99),
        percentile(&loaded, 0.5),
        percentile(&loaded, 0.99),
    );
    Ok(())
}

/// A throwaway CA with a server and a client node certificate, as PEM files in `dir`.
fn make_credentials(dir: &Path) -> Outcome {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    bramble_util::files::create_private_dir(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "bramble bench CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = params.self_signed(&ca_key)?.pem();
    std::fs::write(dir.join("ca.pem"), &ca_pem)?;
    for holder in ["server", "client"] {
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("node/{holder}"));
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::DnsName(
            bramble_net::CLUSTER_SERVER_NAME.try_into()?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let certificate = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{holder}.pem")), certificate.pem())?;
        // Keys are secrets even in a throwaway directory: 0600 from the first byte.
        bramble_util::files::write_atomic(
            &dir.join(format!("{holder}.key")),
            key.serialize_pem().as_bytes(),
            bramble_util::files::Visibility::Private,
        )?;
    }
    Ok(())
}

fn load(dir: &Path, holder: &str) -> Result<Credential, Box<dyn std::error::Error>> {
    Ok(Credential::from_pem(
        &std::fs::read_to_string(dir.join("ca.pem"))?,
        &std::fs::read_to_string(dir.join(format!("{holder}.pem")))?,
        &std::fs::read_to_string(dir.join(format!("{holder}.key")))?,
    )?)
}
