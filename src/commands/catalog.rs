//! `bramble kv ...` and `bramble cluster status|snapshot`: the Raft catalog from the
//! command line. Any member answers; it forwards to the leader where needed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bramble_cluster::{NodeState, NodeView};
use bramble_meta::api::{
    ClusterStatus, Consistency, ListRequest, ListResponse, METHOD_LIST, METHOD_READ,
    METHOD_SNAPSHOT_NOW, METHOD_STATUS, METHOD_WRITE, ReadRequest, StatusRequest, WriteRequest,
};
use bramble_meta::types::{Command, CommandResult, VersionedValue};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use crate::cli::{ClusterCommand, GlobalOptions, KvBenchArgs, KvCommand};
use crate::client::ClusterClient;
use crate::output;

/// Values are shown as text when they are UTF-8, as hex otherwise.
fn display_value(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) => text.to_string(),
        Err(_) => format!(
            "0x{}",
            value
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
        ),
    }
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

fn report_write(result: CommandResult, key: &str, json: bool) -> Result<()> {
    if json {
        return output::print_json(
            &serde_json::json!({ "key": key, "result": format!("{result:?}"), "version": match &result {
                CommandResult::Written { version } => Some(*version),
                _ => None,
            }}),
        );
    }
    match result {
        CommandResult::Written { version } => println!("{key} written at version {version}"),
        CommandResult::Deleted { existed: true } => println!("{key} removed"),
        CommandResult::Deleted { existed: false } => println!("{key} did not exist"),
        CommandResult::VersionMismatch { current_version } => {
            bail!(
                "{key} was not written: its version is {current_version}, not the one given with --if-version"
            )
        }
        CommandResult::Rejected { reason } => bail!("{key} was not written: {reason}"),
        CommandResult::Nothing => println!("nothing to do"),
        CommandResult::BatchApplied { version, deleted } => {
            println!("batch applied at version {version} ({deleted} key(s) removed)")
        }
        CommandResult::ConditionFailed {
            key: failed,
            current_version,
        } => bail!("{key} was not written: {failed} is at version {current_version}"),
        // The leader answers each write of a group with its own result; a group never
        // comes back whole to the one who wrote.
        CommandResult::Group(results) => {
            println!("a group of {} writes was applied", results.len())
        }
    }
    Ok(())
}

pub async fn kv(global: &GlobalOptions, command: &KvCommand) -> Result<()> {
    let client = crate::target::resolve(global)?;
    match command {
        KvCommand::Put {
            key,
            value,
            if_version,
            output,
        } => {
            let command = match if_version {
                Some(expected_version) => Command::PutIfVersion {
                    key: key.clone(),
                    value: value.as_bytes().to_vec(),
                    expected_version: *expected_version,
                },
                None => Command::Put {
                    key: key.clone(),
                    value: value.as_bytes().to_vec(),
                },
            };
            let result = client.catalog_write(command).await?;
            report_write(result, key, output.json)
        }
        KvCommand::Remove { key, output } => {
            let command = Command::Delete { key: key.clone() };
            let result = client.catalog_write(command).await?;
            report_write(result, key, output.json)
        }
        KvCommand::Get { key, stale, output } => {
            let request = ReadRequest {
                key: key.clone(),
                consistency: consistency(*stale),
                forwarded: false,
            };
            let (_, value): (_, Option<VersionedValue>) =
                client.call_any(METHOD_READ, &request).await?;
            let Some(value) = value else {
                if output.json {
                    output::print_json(&serde_json::Value::Null)?;
                }
                bail!("{key} does not exist");
            };
            if output.json {
                return output::print_json(&serde_json::json!({
                    "key": key, "value": display_value(&value.value), "version": value.version,
                }));
            }
            println!("{}", display_value(&value.value));
            Ok(())
        }
        KvCommand::Bench(args) => bench(&client, args).await,
        KvCommand::List {
            prefix,
            stale,
            limit,
            output,
        } => {
            let request = ListRequest {
                prefix: prefix.clone(),
                limit: *limit,
                consistency: consistency(*stale),
                forwarded: false,
            };
            let (_, entries): (_, ListResponse) = client.call_any(METHOD_LIST, &request).await?;
            if output.json {
                let rows: Vec<_> = entries
                    .iter()
                    .map(|(key, value)| serde_json::json!({ "key": key, "value": display_value(&value.value), "version": value.version }))
                    .collect();
                return output::print_json(&rows);
            }
            let mut table = output::table(&["KEY", "VERSION", "VALUE"]);
            for (key, value) in &entries {
                let mut shown = display_value(&value.value);
                if shown.len() > 60 {
                    shown = format!("{}…", shown.chars().take(60).collect::<String>());
                }
                table.add_row(vec![key.clone(), value.version.to_string(), shown]);
            }
            println!("{table}");
            println!("{} key(s)", entries.len());
            Ok(())
        }
    }
}

pub async fn cluster(global: &GlobalOptions, command: &ClusterCommand) -> Result<()> {
    let client = crate::target::resolve(global)?;
    match command {
        ClusterCommand::Snapshot => {
            let (address, ()) = client.call_any(METHOD_SNAPSHOT_NOW, &()).await?;
            println!("snapshot taken on {address}");
            Ok(())
        }
        ClusterCommand::Status(flags) => {
            let (_, status): (_, ClusterStatus) = client
                .call_any(METHOD_STATUS, &StatusRequest { forwarded: false })
                .await?;
            if flags.json {
                return output::print_json(&status);
            }
            println!(
                "leader: {}   term: {}   last log index: {}   commit index: {}   snapshot: {}   keys: {}   (reported by {}, {})",
                status.leader.as_deref().unwrap_or("none (no quorum?)"),
                status.term,
                status.last_log_index,
                status.commit_index,
                status
                    .snapshot_index
                    .map(|index| index.to_string())
                    .unwrap_or_else(|| "-".into()),
                status.keys,
                status.reporter,
                status.role,
            );
            let mut table = output::table(&["NODE", "ROLE", "STATE", "ADDRESS", "MATCHED", "LAG"]);
            for member in &status.members {
                let role = if Some(&member.name) == status.leader.as_ref() {
                    "leader"
                } else if member.voter {
                    "voter"
                } else {
                    "learner"
                };
                table.add_row(vec![
                    member.name.clone(),
                    role.to_string(),
                    member.state.clone(),
                    member.addr.clone(),
                    member
                        .matched_index
                        .map(|index| index.to_string())
                        .unwrap_or_else(|| "-".into()),
                    member
                        .lag
                        .map(|lag| lag.to_string())
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            println!("{table}");
            Ok(())
        }
    }
}

/// `bramble kv bench`: committed writes per second through one node or all of them. Each
/// worker keeps one connection and has one write in flight; latency is measured per write
/// from request to committed answer.
async fn bench(client: &ClusterClient, args: &KvBenchArgs) -> Result<()> {
    let targets: Vec<(String, SocketAddr)> = if args.through == "all" {
        let (_, nodes): (_, Vec<NodeView>) = client.call_any("cluster.nodes", &()).await?;
        nodes
            .into_iter()
            .filter(|node| node.state == NodeState::Alive)
            .map(|node| (node.name, node.addr))
            .collect()
    } else {
        vec![(
            args.through.clone(),
            client.address_of(&args.through).await?,
        )]
    };
    if targets.is_empty() {
        bail!("no alive node to write through");
    }
    let run = bramble_util::time::unix_millis();
    let value = vec![b'x'; args.value_size as usize];
    if args.reads {
        // The keys the readers ask for, one per reader, so every read finds a value.
        for reader in 0..args.concurrency {
            let request = WriteRequest {
                command: Command::Put {
                    key: format!("bench/{run}/{reader}"),
                    value: value.clone(),
                },
                forwarded: false,
            };
            let _: (_, CommandResult) = client.call_any(METHOD_WRITE, &request).await?;
        }
    }
    let consistency = if args.stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    };
    let reads = args.reads;
    let what = if reads { "reads" } else { "writes" };
    let next_index = Arc::new(AtomicU64::new(0));
    let bar = if args.output.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(args.writes);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} {{bar:30}} {{pos}}/{{len}} {what} {{per_sec}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..args.concurrency as usize {
        let (_, address) = targets[worker % targets.len()].clone();
        let rpc = client.rpc().clone();
        let next_index = next_index.clone();
        let bar = bar.clone();
        let value = value.clone();
        let total = args.writes;
        workers.spawn(async move {
            let mut connection = rpc.connect(address).await?;
            let mut latencies = Vec::new();
            loop {
                let index = next_index.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                if reads {
                    let request = ReadRequest {
                        key: format!("bench/{run}/{worker}"),
                        consistency,
                        forwarded: false,
                    };
                    let sent = Instant::now();
                    let found: Option<VersionedValue> = connection
                        .call(METHOD_READ, &request)
                        .await
                        .with_context(|| format!("read {index} through {address}"))?;
                    if found.is_none() {
                        bail!("read {index} through {address} did not find bench/{run}/{worker}");
                    }
                    latencies.push(sent.elapsed());
                    bar.inc(1);
                    continue;
                }
                let request = WriteRequest {
                    command: Command::Put {
                        key: format!("bench/{run}/{index}"),
                        value: value.clone(),
                    },
                    forwarded: false,
                };
                let sent = Instant::now();
                let result: CommandResult = connection
                    .call(METHOD_WRITE, &request)
                    .await
                    .with_context(|| format!("write {index} through {address}"))?;
                if !matches!(result, CommandResult::Written { .. }) {
                    bail!("write {index} was not applied: {result:?}");
                }
                latencies.push(sent.elapsed());
                bar.inc(1);
            }
        });
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(args.writes as usize);
    while let Some(joined) = workers.join_next().await {
        latencies.extend(joined.context("a bench worker failed")??);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    latencies.sort();
    let percentile = |fraction: f64| {
        let index = ((latencies.len() as f64 - 1.0) * fraction).round() as usize;
        latencies
            .get(index)
            .map(|latency| latency.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let per_second = latencies.len() as f64 / elapsed.as_secs_f64();
    let report = serde_json::json!({
        "operation": if reads { if args.stale { "stale reads" } else { "linearizable reads" } } else { "writes" },
        "writes": if reads { 0 } else { latencies.len() },
        "reads": if reads { latencies.len() } else { 0 },
        "concurrency": args.concurrency,
        "through": targets.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>(),
        "value_size": args.value_size,
        "seconds": elapsed.as_secs_f64(),
        "writes_per_second": if reads { 0.0 } else { per_second },
        "reads_per_second": if reads { per_second } else { 0.0 },
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "max_ms": percentile(1.0),
    });
    if args.output.json {
        return output::print_json(&report);
    }
    let done = if !reads {
        "committed writes"
    } else if args.stale {
        "stale reads"
    } else {
        "linearizable reads"
    };
    println!(
        "{} {done} of {} bytes through {} in {:.2} s: {:.0} {what}/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        args.value_size,
        if args.through == "all" {
            format!("all {} nodes", targets.len())
        } else {
            args.through.clone()
        },
        elapsed.as_secs_f64(),
        per_second,
        percentile(0.50),
        percentile(0.99),
        percentile(1.0),
    );
    Ok(())
}
