//! `bramble chaos`: the drills' faults on an emulated node or a service's replica (the
//! demo's web servers `web-0` and `web-1`), and how long the rest of the cluster takes to
//! notice. The clock starts just before the signal is sent and stops when the last
//! answering node's view shows the expected state (for a replica: when its supervisor
//! has started it again, and the balancer serving it reports it down or up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use bramble_cluster::{NodeState, NodeView};
use bramble_compute::services::admin::{METHOD_LOCAL, METHOD_PS, PsAnswer};
use bramble_compute::services::spec::RestartPolicy;
use bramble_compute::services::supervisor::ReplicaStatus;
use bramble_meta::api::{ClusterStatus, METHOD_STATUS, METHOD_WRITE, StatusRequest, WriteRequest};
use bramble_meta::types::{Command, CommandResult};
use bramble_net::RpcClient;
use serde::Serialize;

use super::watch::{self, ViewCondition};
use super::{Emulation, recipe};
use crate::cli::{ChaosAction, ChaosArgs, GlobalOptions};
use crate::client::ClusterClient;
use crate::output;
use crate::process::{self, ProcessState};

#[derive(Serialize)]
struct ChaosReport {
    node: String,
    action: &'static str,
    pid: Option<u32>,
    /// The state the other nodes were waited for.
    expected_state: &'static str,
    /// Seconds until every answering node agreed (None with --no-wait).
    seconds: Option<f64>,
    /// Fastest and slowest observer.
    first_observer_seconds: Option<f64>,
    observers: usize,
    /// When the victim led the catalog: seconds until a write committed again.
    catalog_failover_seconds: Option<f64>,
    new_leader: Option<String>,
}

/// Writes a probe key through the surviving nodes until one is committed: the time from
/// the fault until the catalog accepts writes again under a new leader.
async fn time_catalog_failover(
    rpc: RpcClient,
    through: Vec<SocketAddr>,
    started: Instant,
    timeout: Duration,
) -> Result<f64> {
    let request = WriteRequest {
        command: Command::Put {
            key: "chaos/failover-probe".to_string(),
            value: bramble_util::time::unix_millis().to_string().into_bytes(),
        },
        forwarded: false,
    };
    let mut attempt = 0;
    loop {
        if started.elapsed() > timeout {
            bail!("the catalog accepted no write within {timeout:?} of the fault");
        }
        let address = through[attempt % through.len().max(1)];
        attempt += 1;
        if rpc
            .call::<_, CommandResult>(address, METHOD_WRITE, &request)
            .await
            .is_ok()
        {
            return Ok(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn chaos(global: &GlobalOptions, args: &ChaosArgs) -> Result<()> {
    if matches!(
        args.action,
        ChaosAction::Partition | ChaosAction::Heal | ChaosAction::Slow
    ) {
        return super::netns::chaos(global, args).await;
    }
    let Some(target) = args.node.clone() else {
        bail!("name the node (or `leader`, or a replica such as web-0)");
    };
    let emulation = Emulation::require(global)?;
    let client = emulation.client(global)?;
    // A node's name wins; otherwise `web-0` or `web.0` names a service's replica.
    if target != "leader"
        && emulation.node(&target).is_err()
        && let Some((service, index)) = parse_replica(&target)
    {
        return replica_chaos(&emulation, &client, args, &service, index).await;
    }
    // The catalog leader before the fault: `leader` names it, and killing or stopping it
    // also times the catalog's failover.
    let catalog_before: Option<ClusterStatus> = client
        .call_any::<_, ClusterStatus>(METHOD_STATUS, &StatusRequest { forwarded: false })
        .await
        .ok()
        .map(|(_, status)| status);
    let leader_before = catalog_before
        .as_ref()
        .and_then(|status| status.leader.clone());
    // A failover can happen only if the voters left still form a majority.
    let voters = catalog_before
        .as_ref()
        .map(|status| status.members.iter().filter(|member| member.voter).count())
        .unwrap_or(0);
    let failover_possible = voters > 1 && voters - 1 > voters / 2;
    let target_name = if target == "leader" {
        leader_before
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the catalog has no leader right now"))?
    } else {
        target.clone()
    };
    let node = emulation.node(&target_name)?.clone();
    let data_dir = emulation.node_dir(&node.name);
    let victim_was_leader = leader_before.as_deref() == Some(node.name.as_str())
        && matches!(args.action, ChaosAction::Kill | ChaosAction::Stop)
        && failover_possible;
    let current = process::agent_process(&data_dir);
    let mut minimum_generation = 0;
    let (action, expected, started, pid) = match args.action {
        ChaosAction::Kill | ChaosAction::Stop => {
            let Some(running) = current else {
                bail!(
                    "{} is not running; start it with `bramble chaos restart {}`",
                    node.name,
                    node.name
                );
            };
            let (signal, action) = if args.action == ChaosAction::Kill {
                (libc::SIGKILL, "kill")
            } else {
                if running.state == ProcessState::Stopped {
                    bail!(
                        "{} is already stopped; `bramble chaos cont {}` continues it",
                        node.name,
                        node.name
                    );
                }
                (libc::SIGSTOP, "stop")
            };
            let started = Instant::now();
            process::send_signal(running.pid, signal)?;
            if args.action == ChaosAction::Kill {
                process::wait_for_exit(&data_dir, Duration::from_secs(5)).await;
            }
            (action, NodeState::Dead, started, Some(running.pid))
        }
        ChaosAction::Cont => {
            let Some(stopped) = current.filter(|process| process.state == ProcessState::Stopped)
            else {
                bail!("{} is not stopped; nothing to continue", node.name);
            };
            let started = Instant::now();
            process::send_signal(stopped.pid, libc::SIGCONT)?;
            ("cont", NodeState::Alive, started, Some(stopped.pid))
        }
        ChaosAction::Restart => {
            if current.is_some() {
                process::stop_agent(&data_dir, Duration::from_secs(5)).await?;
            }
            let started = Instant::now();
            let pid = process::spawn_agent(&data_dir)?;
            // Wait for the new incarnation to answer so that we wait for *it* to be seen,
            // not for stale views of the old one.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let view: Result<Vec<NodeView>> =
                    client.call_at(node.addr, "cluster.nodes", &()).await;
                if let Ok(view) = view
                    && let Some(own) = view.iter().find(|member| member.name == node.name)
                {
                    minimum_generation = own.generation;
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} did not come back within 20 s; its log ends with:\n{}",
                        node.name,
                        process::log_tail(&data_dir, 10)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ("restart", NodeState::Alive, started, Some(pid))
        }
        ChaosAction::Partition | ChaosAction::Heal | ChaosAction::Slow => {
            bail!("a network fault acts on the cluster's network, not on one agent")
        }
    };
    let observers: Vec<_> = emulation
        .answering_nodes()
        .into_iter()
        .filter(|(name, _)| *name != node.name)
        .collect();
    let observer_count = observers.len();
    let failover = if victim_was_leader && !args.no_wait {
        let rpc = client.rpc().clone();
        let through: Vec<SocketAddr> = observers.iter().map(|(_, address)| *address).collect();
        Some(tokio::spawn(time_catalog_failover(
            rpc,
            through,
            started,
            Duration::from_secs(args.timeout),
        )))
    } else {
        None
    };
    let mut report = ChaosReport {
        node: node.name.clone(),
        action,
        pid,
        expected_state: expected.as_str(),
        seconds: None,
        first_observer_seconds: None,
        observers: observer_count,
        catalog_failover_seconds: None,
        new_leader: None,
    };
    if !args.no_wait && observer_count > 0 {
        let target = node.name.clone();
        let condition: ViewCondition = Arc::new(move |view: &[NodeView]| {
            view.iter().any(|member| {
                member.name == target
                    && member.state == expected
                    && member.generation >= minimum_generation
            })
        });
        let observations = watch::wait_for_views(
            client.rpc(),
            observers,
            condition,
            started,
            Duration::from_secs(args.timeout),
            &|_, _| {},
        )
        .await?;
        report.seconds = observations
            .iter()
            .map(|o| o.after.as_secs_f64())
            .reduce(f64::max);
        report.first_observer_seconds = observations
            .iter()
            .map(|o| o.after.as_secs_f64())
            .reduce(f64::min);
    }
    if let Some(failover) = failover {
        match failover.await.context("the failover timer failed")? {
            Ok(seconds) => report.catalog_failover_seconds = Some(seconds),
            Err(error) => eprintln!("warning: {error:#}"),
        }
        report.new_leader = client
            .call_any::<_, ClusterStatus>(METHOD_STATUS, &StatusRequest { forwarded: false })
            .await
            .ok()
            .and_then(|(_, status)| status.leader);
    }
    if args.output.json {
        return output::print_json(&report);
    }
    let pid_text = report
        .pid
        .map(|pid| format!(" (pid {pid})"))
        .unwrap_or_default();
    match report.seconds {
        Some(seconds) => println!(
            "{action} {}{pid_text}: all {observer_count} other answering nodes report it {} after {seconds:.2} s (first after {:.2} s).",
            node.name,
            expected.as_str(),
            report.first_observer_seconds.unwrap_or(seconds)
        ),
        None => println!("{action} {}{pid_text}: done.", node.name),
    }
    if let Some(seconds) = report.catalog_failover_seconds {
        println!(
            "{} was the catalog leader: a new leader ({}) committed a write {seconds:.2} s after the fault.",
            node.name,
            report.new_leader.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

/// `(service, index)` of a replica named as the balancer names it (`web-0`) or as
/// `service ps` lists it (`web.0`).
fn parse_replica(text: &str) -> Option<(String, u32)> {
    let (service, index) = text.split_once('.').or_else(|| text.rsplit_once('-'))?;
    if service.is_empty() || index.is_empty() || !index.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some((service.to_string(), index.parse().ok()?))
}

#[derive(Serialize)]
struct ReplicaChaosReport {
    /// The replica as the balancer names it (`web-0`).
    replica: String,
    service: String,
    index: u32,
    node: String,
    action: &'static str,
    pid: u32,
    /// After kill or restart: the process its supervisor started in its place.
    new_pid: Option<u32>,
    /// Seconds until that process ran (None with --no-wait).
    restarted_seconds: Option<f64>,
    /// The status a balancer's stats were waited for (down or up), when the replica is a
    /// balancer's backend.
    expected_status: Option<&'static str>,
    /// Seconds until the balancer serving it reported that status.
    seconds: Option<f64>,
    /// The node whose balancer reported it.
    balancer_node: Option<String>,
}

/// The status of `backend` in whichever balancer has it, from the node serving that
/// balancer (the VIP holder).
async fn backend_status(
    emulation: &Emulation,
    client: &ClusterClient,
    backend: &str,
) -> Option<(String, String)> {
    recipe::serving_balancers(emulation, client)
        .await
        .into_iter()
        .find_map(|(node, stats)| {
            stats
                .backends
                .into_iter()
                .find(|stats| stats.name == backend)
                .map(|stats| (node, stats.status))
        })
}

/// The replica `index` of `service` as its node's supervisor reports it.
async fn replica_on_node(
    client: &ClusterClient,
    address: SocketAddr,
    service: &str,
    index: u32,
) -> Option<ReplicaStatus> {
    client
        .call_at::<_, Vec<ReplicaStatus>>(address, METHOD_LOCAL, &Some(service.to_string()))
        .await
        .ok()?
        .into_iter()
        .find(|replica| replica.index == index)
}

/// The recipe's "kill web1" steps, on a service's replica: a signal to its process group
/// (the emulator runs on the same host as the replica's node), then the time until the
/// cluster has dealt with it. Stop (a hung server) waits for the balancer serving it to
/// report it down (its checks: HAProxy's inter 2 s, fall 3), cont for up again (rise 2).
/// Kill and restart (the same SIGKILL; restart reads better for a stopped replica) wait
/// for its supervisor to start a new process and the balancer to have it up — or, for a
/// service whose restart policy is `never`, for the balancer to report it down.
async fn replica_chaos(
    emulation: &Emulation,
    client: &ClusterClient,
    args: &ChaosArgs,
    service: &str,
    index: u32,
) -> Result<()> {
    let name = format!("{service}-{index}");
    let (_, answer): (_, PsAnswer) = client
        .call_any(METHOD_PS, &service.to_string())
        .await
        .with_context(|| {
            format!(
                "{:?} is neither an emulated node nor a replica of a service",
                args.node.as_deref().unwrap_or_default()
            )
        })?;
    let replica = answer
        .replicas
        .iter()
        .find(|replica| replica.index == index)
        .with_context(|| {
            format!(
                "replica {index} of {service} runs nowhere right now (`bramble service ps {service}`)"
            )
        })?;
    let Some(pid) = replica.pid else {
        bail!(
            "{name} on {} has no process right now (it is {}; `bramble service ps {service}`)",
            replica.node,
            replica.state
        );
    };
    let node = replica.node.clone();
    let node_address = emulation.node(&node)?.addr;
    let restarts = answer.spec.restart != RestartPolicy::Never;
    let in_balancer = backend_status(emulation, client, &name).await.is_some();
    let stopped = process::process_is_stopped(pid);
    let started = Instant::now();
    let (action, expected) = match args.action {
        ChaosAction::Stop => {
            if stopped {
                bail!("{name} is already stopped; `bramble chaos cont {name}` continues it");
            }
            process::send_signal_to_group_of(pid, libc::SIGSTOP)?;
            ("stop", "down")
        }
        ChaosAction::Cont => {
            if !stopped {
                bail!(
                    "{name} (pid {pid} on {node}) is not stopped; nothing to continue (a replica hung for longer than its health checks allow is replaced by its supervisor)"
                );
            }
            process::send_signal_to_group_of(pid, libc::SIGCONT)?;
            ("cont", "up")
        }
        ChaosAction::Kill | ChaosAction::Restart => {
            let action = if args.action == ChaosAction::Kill {
                "kill"
            } else {
                "restart"
            };
            if action == "restart" && !restarts {
                bail!(
                    "{service}'s restart policy is never: its supervisor will not start {name} again"
                );
            }
            process::send_signal_to_group_of(pid, libc::SIGKILL)?;
            (action, if restarts { "up" } else { "down" })
        }
        ChaosAction::Partition | ChaosAction::Heal | ChaosAction::Slow => {
            bail!("a network fault acts on nodes, not on a service's replica")
        }
    };
    let mut report = ReplicaChaosReport {
        replica: name.clone(),
        service: service.to_string(),
        index,
        node: node.clone(),
        action,
        pid,
        new_pid: None,
        restarted_seconds: None,
        expected_status: in_balancer.then_some(expected),
        seconds: None,
        balancer_node: None,
    };
    if !args.no_wait {
        let deadline = started + Duration::from_secs(args.timeout);
        let waiting_for_restart =
            matches!(args.action, ChaosAction::Kill | ChaosAction::Restart) && restarts;
        while waiting_for_restart && report.new_pid.is_none() {
            if let Some(now) = replica_on_node(client, node_address, service, index).await
                && now.state == "running"
                && let Some(new_pid) = now.pid.filter(|new_pid| *new_pid != pid)
            {
                report.new_pid = Some(new_pid);
                report.restarted_seconds = Some(started.elapsed().as_secs_f64());
                continue;
            }
            if Instant::now() > deadline {
                bail!(
                    "{action} {name}: its supervisor on {node} did not start it again within {} s",
                    args.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while in_balancer && report.seconds.is_none() {
            if let Some((balancer_node, status)) = backend_status(emulation, client, &name).await
                && status == expected
            {
                report.seconds = Some(started.elapsed().as_secs_f64());
                report.balancer_node = Some(balancer_node);
                continue;
            }
            if Instant::now() > deadline {
                bail!(
                    "{action} {name}: the balancer did not report it {expected} within {} s",
                    args.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if args.output.json {
        return output::print_json(&report);
    }
    let mut line = format!("{action} {name} (pid {pid} on {node})");
    if let (Some(seconds), Some(new_pid)) = (report.restarted_seconds, report.new_pid) {
        line.push_str(&format!(
            ": its supervisor started it again after {seconds:.2} s (pid {new_pid})"
        ));
    }
    match (report.seconds, &report.balancer_node) {
        (Some(seconds), Some(balancer_node)) => line.push_str(&format!(
            "; the balancer on {balancer_node} reports it {expected} after {seconds:.2} s."
        )),
        _ if report.new_pid.is_some() => line.push('.'),
        _ => line.push_str(": done."),
    }
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_replica;

    #[test]
    fn replicas_are_named_as_the_balancer_or_service_ps_names_them() {
        assert_eq!(parse_replica("web-0"), Some(("web".to_string(), 0)));
        assert_eq!(parse_replica("web.1"), Some(("web".to_string(), 1)));
        assert_eq!(parse_replica("api-v2-12"), Some(("api-v2".to_string(), 12)));
        assert_eq!(parse_replica("web"), None);
        assert_eq!(parse_replica("web-"), None);
        assert_eq!(parse_replica("-3"), None);
        assert_eq!(parse_replica("web-x"), None);
    }
}
