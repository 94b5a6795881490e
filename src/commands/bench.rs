//! `bramble bench net`: node-to-node bulk throughput measured with the agents' own
//! transport. The CLI asks the sending agent to `bench.push` to the receiving agent's
//! `bench.sink` (bramble-platform's bench service) and prints what the sink confirmed.
//! `bramble bench cpu`: sysbench's CPU test on each node (`jobs.bench_cpu`), beside the
//! seeds' board figures. `bramble bench disk`: `dd conv=fdatasync` and a cold read on each
//! node's data disk (`jobs.bench_disk`).

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use bramble_net::Priority;
use bramble_platform::bench_service::{METHOD_PUSH, PushReply, PushRequest};
use bramble_util::ShutdownTrigger;
use serde::Serialize;

use crate::cli::{BenchCommand, BenchCpuArgs, BenchDiskArgs, BenchNetArgs, GlobalOptions};
use crate::client::ClusterClient;
use crate::output;

#[derive(Serialize)]
struct NetReport {
    from: String,
    to: String,
    streams: u32,
    seconds: f64,
    bytes: u64,
    bits_per_second: f64,
}

pub async fn run(global: &GlobalOptions, command: &BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Net(args) => net(global, args).await,
        BenchCommand::Cpu(args) => cpu(global, args).await,
        BenchCommand::Disk(args) => disk(global, args).await,
    }
}

/// The seeds' figures (REFERENCE.md, from article 003): `sysbench --test=cpu
/// --cpu-max-prime=9999`, one thread, milliseconds per event, on 32-bit Raspbian.
const BOARDS: [(&str, f64); 5] = [
    ("Pi 1 B", 33.05),
    ("Pi Zero W", 22.82),
    ("Pi 2 B", 22.49),
    ("Pi 3 B", 13.96),
    ("Pi 4 B", 9.26),
];

async fn cpu(global: &GlobalOptions, args: &BenchCpuArgs) -> Result<()> {
    use bramble_compute::cpu_bench::{CpuBenchRequest, CpuBenchResult};
    let client = crate::target::resolve(global)?;
    let request = CpuBenchRequest {
        max_prime: args.cpu_max_prime,
        threads: args.threads,
        events: args.events,
        seconds: args.time,
    };
    request.validate().map_err(|error| anyhow!(error))?;
    let (results, failures) = on_each_node::<_, CpuBenchResult>(
        &client,
        client.rpc(),
        &args.nodes,
        args.output.json,
        "bench cpu",
        bramble_compute::jobs::admin::METHOD_BENCH_CPU,
        &request,
    )
    .await?;
    if args.output.json {
        output::print_json(&results)?;
    } else {
        let mut table = output::table(&[
            "node",
            "arch",
            "threads",
            "events/s",
            "ms per event (avg / p95)",
            "primes",
            "beside the seeds' boards (one thread)",
        ]);
        for result in &results {
            let per_thread_ms = result.latency_average_ms;
            let boards = if result.max_prime == 9_999 || result.max_prime == 10_000 {
                BOARDS
                    .iter()
                    .filter(|(name, _)| matches!(*name, "Pi 3 B" | "Pi 4 B" | "Pi Zero W"))
                    .map(|(name, ms)| format!("{:.1}x {name}", ms / per_thread_ms.max(1e-9)))
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                "(the seeds used --cpu-max-prime 9999)".to_string()
            };
            table.add_row(vec![
                result.node.clone(),
                result.architecture.clone(),
                result.threads.to_string(),
                format!("{:.1}", result.events_per_second),
                format!(
                    "{:.3} / {:.3}",
                    result.latency_average_ms, result.latency_p95_ms
                ),
                result.primes_per_event.to_string(),
                boards,
            ]);
        }
        println!("{table}");
        println!(
            "The boards' figures are 32-bit Raspbian's (64-bit division is a library call there); a 64-bit build on the same board is several times faster."
        );
    }
    if !failures.is_empty() {
        anyhow::bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// Runs `method` on each chosen node (every live node if none is named), one after
/// another — emulated nodes share this machine's cores and disk — with a progress bar;
/// the answers, and a message for each node that failed.
async fn on_each_node<Request: Serialize, Answer: serde::de::DeserializeOwned>(
    client: &ClusterClient,
    rpc: &bramble_net::RpcClient,
    chosen: &[String],
    json: bool,
    what: &str,
    method: &str,
    request: &Request,
) -> Result<(Vec<Answer>, Vec<String>)> {
    let nodes: Vec<String> = if chosen.is_empty() {
        let (_, view): (_, Vec<bramble_cluster::NodeView>) =
            client.call_any("cluster.nodes", &()).await?;
        view.into_iter()
            .filter(|node| node.state == bramble_cluster::NodeState::Alive)
            .map(|node| node.name)
            .collect()
    } else {
        chosen.to_vec()
    };
    let bar = output::progress_bar(nodes.len() as u64, json);
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    for node in &nodes {
        bar.set_message(node.clone());
        let outcome = async {
            let address = client.address_of(node).await?;
            rpc.call::<_, Answer>(address, method, request)
                .await
                .map_err(crate::client::explain)
                .with_context(|| format!("{what} on {node}"))
        }
        .await;
        match outcome {
            Ok(answer) => answers.push(answer),
            Err(error) => failures.push(format!("{error:#}")),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((answers, failures))
}

/// How long one node's disk test may take: 4 GiB on an SD card at 20 MB/s, both ways.
const DISK_TEST_DEADLINE: Duration = Duration::from_secs(600);

async fn disk(global: &GlobalOptions, args: &BenchDiskArgs) -> Result<()> {
    use bramble_compute::disk_bench::{DiskBenchRequest, DiskBenchResult};
    let client = crate::target::resolve(global)?;
    let request = DiskBenchRequest {
        size_bytes: args.size,
    };
    request.validate().map_err(|error| anyhow!(error))?;
    // The test takes longer than the CLI's usual deadline.
    let patient = client
        .rpc()
        .clone()
        .with_timeouts(Duration::from_secs(2), DISK_TEST_DEADLINE);
    let (results, failures) = on_each_node::<_, DiskBenchResult>(
        &client,
        &patient,
        &args.nodes,
        args.output.json,
        "bench disk",
        bramble_compute::jobs::admin::METHOD_BENCH_DISK,
        &request,
    )
    .await?;
    if args.output.json {
        output::print_json(&results)?;
    } else {
        let megabytes = |rate: f64| format!("{:.1} MB/s", rate / 1e6);
        let mut table = output::table(&[
            "node",
            "size",
            "write (with fdatasync)",
            "of which the sync",
            "read (cold)",
            "directory",
        ]);
        for result in &results {
            table.add_row(vec![
                result.node.clone(),
                format!("{} MiB", result.size_bytes >> 20),
                megabytes(result.write_bytes_per_second),
                format!("{:.2} s", result.sync_seconds),
                if result.read_was_cold {
                    megabytes(result.read_bytes_per_second)
                } else {
                    format!("{} (cached)", megabytes(result.read_bytes_per_second))
                },
                result.directory.clone(),
            ]);
        }
        println!("{table}");
        println!("MB is 10^6 bytes, as dd prints.");
    }
    if !failures.is_empty() {
        anyhow::bail!("{}", failures.join("; "));
    }
    Ok(())
}

async fn net(global: &GlobalOptions, args: &BenchNetArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let from = client.address_of(&args.from).await?;
    // Resolved here too, so a wrong name fails before anything streams.
    client.address_of(&args.to).await?;
    let (_trigger, shutdown) = ShutdownTrigger::new();
    let mux = client.mux(shutdown);
    let request = PushRequest {
        to: args.to.clone(),
        streams: args.streams,
        seconds: args.seconds,
    };
    let header = postcard::to_allocvec(&request).context("encoding the request")?;
    let exchange = async {
        let (sender, response) = mux
            .open(
                from,
                bramble_platform::bench_service::METHOD_PUSH,
                &header,
                Priority::Bulk,
            )
            .await?;
        sender.finish().await?;
        response.wait().await
    };
    // The push answers once its streams end, a few seconds after its duration.
    let limit = Duration::from_secs(u64::from(args.seconds) + 15);
    let response = tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| {
            anyhow!(
                "{} did not answer {METHOD_PUSH} within {limit:?}",
                args.from
            )
        })?
        .with_context(|| format!("{METHOD_PUSH} on {} ({from})", args.from))?;
    let reply: PushReply =
        postcard::from_bytes(&response.header).context("decoding the push's answer")?;
    let seconds = reply.micros as f64 / 1e6;
    let report = NetReport {
        from: args.from.clone(),
        to: args.to.clone(),
        streams: reply.streams,
        seconds,
        bytes: reply.bytes,
        bits_per_second: if seconds > 0.0 {
            reply.bytes as f64 * 8.0 / seconds
        } else {
            0.0
        },
    };
    if args.output.json {
        return output::print_json(&report);
    }
    println!(
        "{} -> {}: {:.2} Gbit/s ({} stream{}, {:.1} MB in {:.1} s)",
        report.from,
        report.to,
        report.bits_per_second / 1e9,
        report.streams,
        if report.streams == 1 { "" } else { "s" },
        report.bytes as f64 / 1e6,
        report.seconds
    );
    Ok(())
}
