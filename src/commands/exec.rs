//! `bramble exec`: one command on many nodes at once (`exec.run` on each, a few at a
//! time), each node's output and exit code printed, and an exit status that says whether
//! any node failed, refused or could not be reached.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use bramble_cluster::{NodeState, NodeView};
use bramble_compute::exec::{ExecOutcome, ExecRequest, METHOD_RUN};
use serde::Serialize;

use crate::cli::{ExecArgs, GlobalOptions};
use crate::output;

/// One node's answer, for people and for `--json`.
#[derive(Debug, Serialize)]
struct NodeResult {
    node: String,
    /// ok, failed, refused, unreachable.
    result: String,
    outcome: Option<ExecOutcome>,
    error: Option<String>,
}

pub async fn run(global: &GlobalOptions, args: &ExecArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let timeout_ms = crate::units::parse_milliseconds(&args.timeout)?;
    let request = ExecRequest {
        command: args.command.clone(),
        user: args.user.clone(),
        timeout_ms,
    };
    request.validate().map_err(|error| anyhow!(error))?;
    let (_, view): (_, Vec<NodeView>) = client.call_any("cluster.nodes", &()).await?;
    let chosen: Vec<NodeView> = if !args.nodes.is_empty() {
        let mut chosen = Vec::new();
        for name in &args.nodes {
            let node = view
                .iter()
                .find(|node| &node.name == name)
                .ok_or_else(|| anyhow!("no node named {name:?} in the cluster"))?;
            chosen.push(node.clone());
        }
        chosen
    } else if let Some(role) = &args.role {
        let chosen: Vec<NodeView> = view
            .iter()
            .filter(|node| node.roles.iter().any(|own| own == role))
            .cloned()
            .collect();
        if chosen.is_empty() {
            anyhow::bail!("no node has the role {role:?}");
        }
        chosen
    } else {
        view
    };
    // The command's own timeout, plus time to start it and bring the answer back.
    let rpc = client.rpc().clone().with_timeouts(
        Duration::from_secs(2),
        Duration::from_millis(timeout_ms) + Duration::from_secs(10),
    );
    let permits = Arc::new(tokio::sync::Semaphore::new(args.parallel as usize));
    let bar = output::progress_bar(chosen.len() as u64, args.output.json || chosen.len() < 2);
    let mut tasks = Vec::new();
    for node in chosen {
        let (rpc, permits, request, bar) =
            (rpc.clone(), permits.clone(), request.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let result = if node.state == NodeState::Dead || node.state == NodeState::Left {
                NodeResult {
                    node: node.name.clone(),
                    result: "unreachable".to_string(),
                    outcome: None,
                    error: Some(format!("the node is {}", node.state.as_str())),
                }
            } else {
                let _permit = permits.acquire().await;
                match rpc
                    .call::<_, ExecOutcome>(node.addr, METHOD_RUN, &request)
                    .await
                {
                    Ok(outcome) => NodeResult {
                        node: node.name.clone(),
                        result: if outcome.succeeded() { "ok" } else { "failed" }.to_string(),
                        outcome: Some(outcome),
                        error: None,
                    },
                    Err(error) => {
                        // A node that answers "no" (not opted in, root not allowed),
                        // one where the command could not start, one not reached.
                        let result = match error.remote().map(|remote| remote.kind) {
                            Some(bramble_net::ErrorKind::Refused) => "refused",
                            Some(_) => "failed",
                            None => "unreachable",
                        };
                        NodeResult {
                            node: node.name.clone(),
                            result: result.to_string(),
                            outcome: None,
                            error: Some(format!("{:#}", crate::client::explain(error))),
                        }
                    }
                }
            };
            bar.inc(1);
            result
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(
            task.await
                .map_err(|error| anyhow!("a node's call panicked: {error}"))?,
        );
    }
    bar.finish_and_clear();
    results.sort_by(|a, b| a.node.cmp(&b.node));
    if args.output.json {
        output::print_json(&results)?;
    } else {
        for result in &results {
            print_result(result, args.one_line);
        }
    }
    let bad = results
        .iter()
        .filter(|result| result.result != "ok")
        .count();
    if bad > 0 {
        anyhow::bail!(
            "{bad} of {} node(s) did not run it successfully",
            results.len()
        );
    }
    Ok(())
}

fn print_result(result: &NodeResult, one_line: bool) {
    let status = match (&result.outcome, &result.error) {
        (Some(outcome), _) if outcome.timed_out => "cut at its timeout".to_string(),
        (Some(outcome), _) => match (outcome.exit_code, outcome.signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => "ended".to_string(),
        },
        (None, Some(error)) => format!("{}: {error}", result.result),
        (None, None) => result.result.clone(),
    };
    let Some(outcome) = &result.outcome else {
        println!("{} | {status}", result.node);
        return;
    };
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let stderr = String::from_utf8_lossy(&outcome.stderr);
    if one_line {
        let first = stdout
            .lines()
            .chain(stderr.lines())
            .next()
            .unwrap_or_default();
        println!("{} | {status} | {first}", result.node);
        return;
    }
    println!(
        "{} | {status} | {} | {} ms >>",
        result.node, outcome.user, outcome.milliseconds
    );
    print!("{stdout}");
    if !stdout.is_empty() && !stdout.ends_with('\n') {
        println!();
    }
    if !stderr.is_empty() {
        eprint!("{stderr}");
        if !stderr.ends_with('\n') {
            eprintln!();
        }
    }
    if outcome.truncated_bytes > 0 {
        println!(
            "({} more bytes of output not shown)",
            outcome.truncated_bytes
        );
    }
}
