//! `bramble bench net`: node-to-node bulk throughput measured with the agents' own
//! transport. The CLI asks the sending agent to `bench.push` to the receiving agent's
//! `bench.sink` (bramble-platform's bench service) and prints what the sink confirmed.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use bramble_net::Priority;
use bramble_platform::bench_service::{METHOD_PUSH, PushReply, PushRequest};
use bramble_util::ShutdownTrigger;
use serde::Serialize;

use crate::cli::{BenchCommand, BenchNetArgs, GlobalOptions};
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
    }
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
