//! `bramble chaos`: the drills' faults on an emulated node or a demo web server, and how
//! long the rest of the cluster takes to notice. The clock starts just before the signal
//! is sent and stops when the last answering node's view shows the expected state (for a
//! web server: when the balancer serving the VIP reports it down or up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use bramble_cluster::{NodeState, NodeView};
use bramble_lb::pool::BalancerStats;
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
    let emulation = Emulation::require(global)?;
    let client = emulation.client(global)?;
    let is_web = emulation
        .state
        .demo
        .as_ref()
        .is_some_and(|demo| demo.webs.iter().any(|web| web.name == args.node));
    if is_web {
        return web_chaos(&emulation, &client, args).await;
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
    let target_name = if args.node == "leader" {
        leader_before
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the catalog has no leader right now"))?
    } else {
        args.node.clone()
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

#[derive(Serialize)]
struct WebChaosReport {
    web: String,
    action: &'static str,
    pid: Option<u32>,
    /// The status the serving balancer's stats were waited for: down or up.
    expected_status: &'static str,
    /// Seconds until the balancer holding the VIP reported it (None with --no-wait).
    seconds: Option<f64>,
    /// The node whose balancer reported it.
    balancer_node: Option<String>,
}

/// The status of `backend` in the demo balancer, from the lb node that serves it.
async fn demo_backend_status(
    emulation: &Emulation,
    client: &ClusterClient,
    backend: &str,
) -> Option<(String, String)> {
    let demo = emulation.state.demo.as_ref()?;
    for page in &demo.stats {
        let Ok(node) = emulation.node(&page.name) else {
            continue;
        };
        let Ok(list) = client
            .call_at::<_, Vec<BalancerStats>>(node.addr, "lb.stats", &())
            .await
        else {
            continue;
        };
        // Only the VIP holder runs the balancer and its checks; the others list no
        // backends.
        if let Some(status) = list
            .iter()
            .filter(|stats| stats.name == recipe::BALANCER)
            .flat_map(|stats| stats.backends.iter())
            .find(|stats| stats.name == backend)
        {
            return Some((node.name.clone(), status.status.clone()));
        }
    }
    None
}

/// The recipe's "kill web1" steps: a signal to a demo web server, then the time until the
/// balancer serving the VIP sees it down (its checks: HAProxy's inter 2 s, fall 3) or up
/// again (rise 2).
async fn web_chaos(emulation: &Emulation, client: &ClusterClient, args: &ChaosArgs) -> Result<()> {
    let name = args.node.as_str();
    let current = recipe::web_process(emulation, name);
    let stopped = current.is_some_and(process::process_is_stopped);
    let started = Instant::now();
    let (action, expected, pid) = match args.action {
        ChaosAction::Kill | ChaosAction::Stop => {
            let Some(pid) = current else {
                bail!("{name} is not running; start it with `bramble chaos restart {name}`");
            };
            if args.action == ChaosAction::Kill {
                process::send_signal(pid, libc::SIGKILL)?;
                ("kill", "down", Some(pid))
            } else {
                if stopped {
                    bail!("{name} is already stopped; `bramble chaos cont {name}` continues it");
                }
                process::send_signal(pid, libc::SIGSTOP)?;
                ("stop", "down", Some(pid))
            }
        }
        ChaosAction::Cont => {
            let Some(pid) = current.filter(|_| stopped) else {
                bail!("{name} is not stopped; nothing to continue");
            };
            process::send_signal(pid, libc::SIGCONT)?;
            ("cont", "up", Some(pid))
        }
        ChaosAction::Restart => {
            if let Some(pid) = current {
                process::send_signal(pid, libc::SIGKILL)?;
                let deadline = Instant::now() + Duration::from_secs(5);
                while recipe::web_process(emulation, name).is_some() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            recipe::start_web_named(emulation, name)?;
            ("restart", "up", recipe::web_process(emulation, name))
        }
    };
    let mut report = WebChaosReport {
        web: name.to_string(),
        action,
        pid,
        expected_status: expected,
        seconds: None,
        balancer_node: None,
    };
    if !args.no_wait {
        let deadline = started + Duration::from_secs(args.timeout);
        loop {
            if let Some((node, status)) = demo_backend_status(emulation, client, name).await
                && status == expected
            {
                report.seconds = Some(started.elapsed().as_secs_f64());
                report.balancer_node = Some(node);
                break;
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
    let pid_text = pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default();
    match (report.seconds, &report.balancer_node) {
        (Some(seconds), Some(node)) => println!(
            "{action} {name}{pid_text}: the balancer on {node} reports it {expected} after {seconds:.2} s."
        ),
        _ => println!("{action} {name}{pid_text}: done."),
    }
    Ok(())
}
