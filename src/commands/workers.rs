//! `bramble workers`: every node's named background workers (Garage's `worker list`), so a
//! failed or restarting task is visible from anywhere with the admin credential.

use anyhow::{Result, bail};
use bramble_cluster::{NodeState, NodeView};
use bramble_platform::service::{METHOD_WORKERS, WorkersResponse};
use bramble_util::WorkerInfo;
use serde::Serialize;

use crate::cli::{GlobalOptions, WorkersArgs};
use crate::output;

#[derive(Serialize)]
struct NodeWorkers {
    node: String,
    /// Why the node's workers could not be read, if they could not.
    error: Option<String>,
    workers: Vec<WorkerInfo>,
}

pub async fn run(global: &GlobalOptions, args: &WorkersArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let (_, nodes): (_, Vec<NodeView>) = client.call_any("cluster.nodes", &()).await?;
    let targets: Vec<&NodeView> = match &args.node {
        Some(name) => {
            let Some(node) = nodes.iter().find(|node| &node.name == name) else {
                bail!("no node named {name:?} in the cluster");
            };
            vec![node]
        }
        None => nodes
            .iter()
            .filter(|node| matches!(node.state, NodeState::Alive | NodeState::Suspect))
            .collect(),
    };
    let mut report = Vec::new();
    for node in targets {
        let row = match client
            .call_at::<_, WorkersResponse>(node.addr, METHOD_WORKERS, &())
            .await
        {
            Ok((name, workers)) => NodeWorkers {
                node: name,
                error: None,
                workers,
            },
            Err(error) => NodeWorkers {
                node: node.name.clone(),
                error: Some(format!("{error:#}")),
                workers: Vec::new(),
            },
        };
        report.push(row);
    }
    if args.output.json {
        return output::print_json(&report);
    }
    let mut table = output::table(&[
        "NODE",
        "WORKER",
        "STATE",
        "ERRORS",
        "RESTARTS",
        "QUEUE",
        "PROGRESS",
        "LAST ERROR",
    ]);
    for node in &report {
        if let Some(error) = &node.error {
            table.add_row(vec![
                node.node.clone(),
                "-".to_string(),
                "unreachable".to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                error.clone(),
            ]);
            continue;
        }
        for worker in &node.workers {
            let last_error = match (&worker.last_error, worker.last_error_age_secs) {
                (Some(error), Some(age)) => format!("{error} ({age} s ago)"),
                (Some(error), None) => error.clone(),
                (None, _) => String::new(),
            };
            table.add_row(vec![
                node.node.clone(),
                worker.name.clone(),
                serde_json::to_value(worker.state)?
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                worker.errors.to_string(),
                worker.restarts.to_string(),
                worker
                    .queue
                    .map(|queue| queue.to_string())
                    .unwrap_or_default(),
                worker.progress.clone().unwrap_or_default(),
                last_error,
            ]);
        }
    }
    println!("{table}");
    Ok(())
}
