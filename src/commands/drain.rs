//! `bramble drain <node>` and `bramble undrain <node>`: the operator's side of drained
//! nodes (the flag, and the subsystems that follow it, are `bramble_platform::drain`).
//! Drain refuses when it would leave a VIP with nobody to serve it, sets the flag, says
//! what becomes of what the node holds — its VIPs are handed over at once, its service
//! replicas move by hand-over (each new copy ready before the old one stops), its job
//! tasks finish where they are, its storage bricks stay (moving bricks is storage's work)
//! — and waits, with a progress bar, until the node holds no VIP and no replica.
//! `bramble rolling` drains each node it works on with [`drain_node`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bramble_cluster::{NodeState, NodeView};
use bramble_compute::services::admin::{METHOD_LIST as SERVICES_LIST, METHOD_LOCAL, METHOD_PS};
use bramble_compute::services::admin::{PsAnswer, ServiceSummary};
use bramble_compute::services::supervisor::ReplicaStatus;
use bramble_lb::config::BalancerSpec;
use bramble_lb::keys::{BALANCERS_PREFIX, vip_lease_key};
use bramble_lb::subsystem::LB_ROLE;
use bramble_meta::api::{
    Consistency, ListRequest, ListResponse, METHOD_LIST, METHOD_READ, ReadRequest,
};
use bramble_meta::lease::LeaseRecord;
use bramble_meta::types::VersionedValue;
use bramble_platform::drain::{DrainRecord, METHOD_SET, SetDrain, SetDrainAnswer};
use bramble_store::volume::VolumeSpec;
use serde::Serialize;

use crate::cli::{DrainArgs, GlobalOptions, UndrainArgs};
use crate::client::ClusterClient;
use crate::output;

/// How often a drain looks at what the node still holds.
const POLL: Duration = Duration::from_millis(250);
/// Longest `--timeout` of a drain: a day.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// What a node holds that a drain moves away.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Holdings {
    /// Balancers whose VIP it holds.
    pub vips: Vec<String>,
    /// Its service replicas (`web.0`), running or still stopping.
    pub replicas: Vec<String>,
}

impl Holdings {
    pub fn count(&self) -> usize {
        self.vips.len() + self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// "the VIP of webfarm; replicas web.0, web.1".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.vips.is_empty() {
            parts.push(format!("the VIP of {}", self.vips.join(", ")));
        }
        if !self.replicas.is_empty() {
            parts.push(format!(
                "replica{} {}",
                if self.replicas.len() == 1 { "" } else { "s" },
                self.replicas.join(", ")
            ));
        }
        if parts.is_empty() {
            "nothing".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// What a drain did, for people and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    pub node: String,
    /// The node's state in gossip when the drain began.
    pub state: String,
    pub record: Option<DrainRecord>,
    pub already_drained: bool,
    /// What it held when the flag was set.
    pub held: Holdings,
    /// Balancer → the node that holds its VIP now.
    pub vips_now_on: BTreeMap<String, Option<String>>,
    /// Replica → the node it runs on now.
    pub replicas_now_on: BTreeMap<String, Option<String>>,
    /// Job slots its running tasks took (they finish there; none new go to it). None:
    /// the jobs scheduler did not answer.
    pub job_slots_in_use: Option<u32>,
    /// Storage bricks on it, which a drain does not move (`vol0: n1:/path`).
    pub bricks: Vec<String>,
    /// Seconds until it held nothing (None: not waited for).
    pub seconds: Option<f64>,
}

/// The cluster's balancers, from the catalog.
pub async fn balancers(client: &ClusterClient) -> Result<Vec<BalancerSpec>> {
    let request = ListRequest {
        prefix: BALANCERS_PREFIX.to_string(),
        limit: 10_000,
        consistency: Consistency::Linearizable,
        forwarded: false,
    };
    let (_, entries): (_, ListResponse) = client.call_any(METHOD_LIST, &request).await?;
    Ok(entries
        .into_iter()
        .filter_map(|(_, value)| serde_json::from_slice::<BalancerSpec>(&value.value).ok())
        .collect())
}

/// The node holding a balancer's VIP lease (through the leader: a hand-over is committed).
pub async fn vip_holder(client: &ClusterClient, balancer: &str) -> Result<Option<String>> {
    let request = ReadRequest {
        key: vip_lease_key(balancer),
        consistency: Consistency::Linearizable,
        forwarded: false,
    };
    let (_, value): (_, Option<VersionedValue>) = client.call_any(METHOD_READ, &request).await?;
    let Some(value) = value else {
        return Ok(None);
    };
    let record = LeaseRecord::decode(&value.value)
        .map_err(|error| anyhow!("the VIP lease of {balancer} is unreadable: {error}"))?;
    Ok(record.holder)
}

/// Every drained node's record, by node.
pub async fn drained_nodes(client: &ClusterClient) -> Result<BTreeMap<String, DrainRecord>> {
    let (_, records): (_, Vec<DrainRecord>) = client
        .call_any(bramble_platform::drain::METHOD_LIST, &())
        .await?;
    Ok(records
        .into_iter()
        .map(|record| (record.node.clone(), record))
        .collect())
}

/// Every drained node's record as the agent at `address` has it in its own replica (no
/// quorum round: `bramble nodes` must answer while the catalog elects a leader).
pub async fn drained_nodes_here(
    client: &ClusterClient,
    address: std::net::SocketAddr,
) -> Result<BTreeMap<String, DrainRecord>> {
    let request = ListRequest {
        prefix: bramble_platform::drain::PREFIX.to_string(),
        limit: 10_000,
        consistency: Consistency::Stale,
        forwarded: false,
    };
    let entries: ListResponse = client.call_at(address, METHOD_LIST, &request).await?;
    Ok(bramble_platform::drain::records(
        entries.into_iter().map(|(key, value)| (key, value.value)),
    ))
}

/// Drains or undrains a node (`drain.set`).
pub async fn set_drained(
    client: &ClusterClient,
    node: &str,
    drained: bool,
    reason: Option<String>,
) -> Result<SetDrainAnswer> {
    let request = SetDrain {
        node: node.to_string(),
        drained,
        reason,
    };
    request.validate()?;
    let (_, answer) = client.call_any(METHOD_SET, &request).await?;
    Ok(answer)
}

/// What `node` holds now: the VIPs whose lease names it, and the replicas its supervisor
/// runs (asked of the node itself: a replica still stopping counts).
pub async fn holdings(
    client: &ClusterClient,
    node: &NodeView,
    balancers: &[BalancerSpec],
) -> Result<Holdings> {
    let mut held = Holdings::default();
    for balancer in balancers {
        if vip_holder(client, &balancer.name).await?.as_deref() == Some(node.name.as_str()) {
            held.vips.push(balancer.name.clone());
        }
    }
    let replicas: Vec<ReplicaStatus> = client
        .call_at(node.addr, METHOD_LOCAL, &None::<String>)
        .await
        .with_context(|| format!("asking {} for its replicas", node.name))?;
    let names: BTreeSet<String> = replicas
        .iter()
        .map(|replica| format!("{}.{}", replica.service, replica.index))
        .collect();
    held.replicas = names.into_iter().collect();
    Ok(held)
}

/// Refuses a drain that would leave a balancer's VIP with no node to serve it: the node
/// is a live `lb` node and no other live `lb` node that is not drained could take it (a
/// drained holder with no successor keeps its VIP, so the drain could never finish).
fn refuse_stranded_vips(
    node: &NodeView,
    view: &[NodeView],
    drained: &BTreeMap<String, DrainRecord>,
    balancers: &[BalancerSpec],
) -> Result<()> {
    let is_lb = |member: &NodeView| member.roles.iter().any(|role| role == LB_ROLE);
    if !is_lb(node) || !matches!(node.state, NodeState::Alive | NodeState::Suspect) {
        return Ok(());
    }
    let successors = view.iter().any(|member| {
        member.name != node.name
            && member.state == NodeState::Alive
            && is_lb(member)
            && !drained.contains_key(&member.name)
    });
    if successors || balancers.is_empty() {
        return Ok(());
    }
    let stranded: Vec<String> = balancers
        .iter()
        .map(|balancer| format!("{} ({})", balancer.listen, balancer.name))
        .collect();
    bail!(
        "draining {} would leave the VIP {} with no node to serve it: {} is the only live lb node that is not drained (start or undrain another lb node first)",
        node.name,
        stranded.join(", "),
        node.name
    )
}

/// The storage bricks on `node`, which a drain does not move.
async fn bricks_on(client: &ClusterClient, node: &str) -> Result<Vec<String>> {
    let (_, volumes): (_, Vec<VolumeSpec>) = client
        .call_any(bramble_store::admin::METHOD_VOLUME_LIST, &())
        .await?;
    let mut bricks = Vec::new();
    for volume in volumes {
        for brick in volume.bricks.iter().filter(|brick| brick.node == node) {
            bricks.push(format!("{}: {}", volume.name, brick.describe(&volume.name)));
        }
    }
    Ok(bricks)
}

/// Job slots `node`'s running tasks take now, as the jobs scheduler counts them.
async fn job_slots_on(client: &ClusterClient, node: &str) -> Option<u32> {
    let (_, workers): (_, Vec<bramble_compute::jobs::admin::WorkerSummary>) = client
        .call_any(bramble_compute::jobs::admin::METHOD_NODES, &false)
        .await
        .ok()?;
    Some(
        workers
            .iter()
            .find(|worker| worker.node == node)
            .map_or(0, |worker| worker.used),
    )
}

/// Why what is left on `node` has not moved yet, one line per item: where each replica's
/// new copy stands, and who could take each VIP.
async fn explain_remaining(client: &ClusterClient, node: &str, left: &Holdings) -> Vec<String> {
    let mut lines = Vec::new();
    for balancer in &left.vips {
        lines.push(format!(
            "the VIP of {balancer} is still held by {node} (is another lb node alive and not drained? `bramble lb ls`, `bramble nodes`)"
        ));
    }
    let mut answers: BTreeMap<String, Option<PsAnswer>> = BTreeMap::new();
    for replica in &left.replicas {
        let Some((service, index)) = replica
            .rsplit_once('.')
            .and_then(|(service, index)| Some((service.to_string(), index.parse::<u32>().ok()?)))
        else {
            continue;
        };
        if !answers.contains_key(&service) {
            let answer = client
                .call_any::<_, PsAnswer>(METHOD_PS, &service)
                .await
                .ok()
                .map(|(_, answer)| answer);
            answers.insert(service.clone(), answer);
        }
        let Some(Some(answer)) = answers.get(&service) else {
            lines.push(format!("{replica}: its service did not answer"));
            continue;
        };
        let line = if let Some(handover) = answer
            .handovers
            .iter()
            .find(|handover| handover.index == index)
        {
            let copy = answer
                .replicas
                .iter()
                .find(|status| status.index == index && status.node == handover.to_node);
            match copy {
                Some(copy) => format!(
                    "{replica}: its new copy on {} is {}{}{}",
                    handover.to_node,
                    copy.state,
                    copy.health
                        .as_ref()
                        .map(|health| format!(", {health}"))
                        .unwrap_or_default(),
                    copy.error
                        .as_ref()
                        .or(copy.last_exit.as_ref())
                        .map(|why| format!(" ({why})"))
                        .unwrap_or_default()
                ),
                None => format!(
                    "{replica}: its new copy on {} has not started yet",
                    handover.to_node
                ),
            }
        } else if let Some((_, why)) = answer.pending.iter().find(|(pending, _)| *pending == index)
        {
            format!("{replica}: no node can take it ({why}); it stops on {node}")
        } else {
            format!("{replica}: still stopping on {node}")
        };
        lines.push(line);
    }
    lines
}

/// Where each of `replicas` (`web.0`) runs now, away from `node`.
async fn replicas_now_on(
    client: &ClusterClient,
    node: &str,
    replicas: &[String],
) -> BTreeMap<String, Option<String>> {
    let mut now_on = BTreeMap::new();
    let mut answers: BTreeMap<String, Option<PsAnswer>> = BTreeMap::new();
    for replica in replicas {
        let parsed = replica
            .rsplit_once('.')
            .and_then(|(service, index)| Some((service.to_string(), index.parse::<u32>().ok()?)));
        let Some((service, index)) = parsed else {
            now_on.insert(replica.clone(), None);
            continue;
        };
        if !answers.contains_key(&service) {
            let answer = client
                .call_any::<_, PsAnswer>(METHOD_PS, &service)
                .await
                .ok()
                .map(|(_, answer)| answer);
            answers.insert(service.clone(), answer);
        }
        let running_on = answers
            .get(&service)
            .and_then(Option::as_ref)
            .and_then(|answer| {
                answer.replicas.iter().find(|status| {
                    status.index == index && status.node != node && status.state == "running"
                })
            })
            .map(|status| status.node.clone());
        now_on.insert(replica.clone(), running_on);
    }
    now_on
}

/// How a drain reports its progress: (moved so far, held at the start, what is left).
pub type Progress<'a> = &'a mut (dyn FnMut(usize, usize, &Holdings) + Send);

/// A drain whose flag is set, to wait for.
pub struct Started {
    report: DrainReport,
    node: NodeView,
    balancers: Vec<BalancerSpec>,
}

/// Drains `name`: refuses if that would strand a VIP, sets the flag, and unless `wait` is
/// `None` waits up to it until the node holds no VIP and no replica. The flag stays set
/// when the wait fails (what moved stays moved; `undrain` returns the node).
pub async fn drain_node(
    client: &ClusterClient,
    name: &str,
    reason: Option<String>,
    wait: Option<Duration>,
    progress: Progress<'_>,
) -> Result<DrainReport> {
    let started = begin_drain(client, name, reason).await?;
    match wait {
        Some(wait) => wait_drained(client, started, wait, progress).await,
        None => Ok(started.report),
    }
}

/// The first half of [`drain_node`]: the checks and the flag. Callers that drain several
/// nodes at once (`rolling --serial`) take these one at a time, so two drains never both
/// pass the check that some other lb node will take the VIPs.
pub async fn begin_drain(
    client: &ClusterClient,
    name: &str,
    reason: Option<String>,
) -> Result<Started> {
    if let Some(reason) = &reason {
        bramble_platform::drain::validate_reason(reason)?;
    }
    let (_, view): (_, Vec<NodeView>) = client.call_any("cluster.nodes", &()).await?;
    let node = view
        .iter()
        .find(|node| node.name == name)
        .cloned()
        .ok_or_else(|| {
            anyhow!("no node named {name:?} in the cluster (`bramble nodes` lists them)")
        })?;
    let balancers = balancers(client).await?;
    let drained = drained_nodes(client).await?;
    let already_drained = drained.contains_key(name);
    refuse_stranded_vips(&node, &view, &drained, &balancers)?;
    let reachable = matches!(node.state, NodeState::Alive | NodeState::Suspect);
    let held = if reachable {
        holdings(client, &node, &balancers).await?
    } else {
        Holdings::default()
    };
    let job_slots_in_use = job_slots_on(client, name).await;
    // Storage may not run (a cluster without volumes answers with none).
    let bricks = bricks_on(client, name).await.unwrap_or_default();
    let answer = set_drained(client, name, true, reason).await?;
    let report = DrainReport {
        node: name.to_string(),
        state: node.state.as_str().to_string(),
        record: answer.record,
        already_drained,
        held: held.clone(),
        vips_now_on: BTreeMap::new(),
        replicas_now_on: BTreeMap::new(),
        job_slots_in_use,
        bricks,
        seconds: None,
    };
    Ok(Started {
        report,
        node,
        balancers,
    })
}

/// The second half of [`drain_node`]: waits up to `wait` until the node holds nothing.
pub async fn wait_drained(
    client: &ClusterClient,
    started: Started,
    wait: Duration,
    progress: Progress<'_>,
) -> Result<DrainReport> {
    let Started {
        mut report,
        node,
        balancers,
    } = started;
    let name = node.name.as_str();
    let held = report.held.clone();
    if !matches!(node.state, NodeState::Alive | NodeState::Suspect) {
        // A dead node's replicas moved when it died, and its VIP leases ran out.
        report.seconds = Some(0.0);
        return Ok(report);
    }
    let started = Instant::now();
    let total = held.count();
    let mut left = held.clone();
    progress(0, total, &left);
    loop {
        match holdings(client, &node, &balancers).await {
            Ok(now) => left = now,
            // Unreachable for a moment (busy, restarting): ask again.
            Err(_) if started.elapsed() < wait => {}
            Err(error) => return Err(error),
        }
        progress(total.saturating_sub(left.count()), total, &left);
        if left.is_empty() {
            break;
        }
        if started.elapsed() >= wait {
            let reasons = explain_remaining(client, name, &left).await;
            bail!(
                "{name} still holds {} after {:.0} s (it stays drained; `bramble undrain {name}` returns it):\n  {}",
                left.describe(),
                wait.as_secs_f64(),
                reasons.join("\n  ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
    report.seconds = Some(started.elapsed().as_secs_f64());
    for balancer in &held.vips {
        report
            .vips_now_on
            .insert(balancer.clone(), vip_holder(client, balancer).await?);
    }
    report.replicas_now_on = replicas_now_on(client, name, &held.replicas).await;
    Ok(report)
}

/// `bramble drain`.
pub async fn drain(global: &GlobalOptions, args: &DrainArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let timeout = parse_timeout(&args.timeout)?;
    let bar = output::progress_bar(1, args.output.json || args.detach);
    let mut progress = |moved: usize, total: usize, left: &Holdings| {
        bar.set_length(total.max(1) as u64);
        bar.set_position(moved as u64);
        bar.set_message(if left.is_empty() {
            String::new()
        } else {
            format!("moving {}", left.describe())
        });
    };
    let wait = (!args.detach).then_some(timeout);
    let outcome = drain_node(
        &client,
        &args.node,
        args.reason.clone(),
        wait,
        &mut progress,
    )
    .await;
    bar.finish_and_clear();
    let report = outcome?;
    if args.output.json {
        return output::print_json(&report);
    }
    print_report(&report, args.detach);
    Ok(())
}

fn print_report(report: &DrainReport, detached: bool) {
    let node = &report.node;
    if report.already_drained {
        println!("{node} was already drained.");
    } else {
        println!(
            "{node} is drained: it takes no new work and stays a gossip member and catalog voter."
        );
    }
    if report.state != "alive" {
        println!(
            "{node} is {}: its replicas moved when it went down and its VIP leases ran out; nothing to wait for.",
            report.state
        );
    }
    if detached {
        println!(
            "It held {} when the flag was set; `bramble drain {node}` again waits until it holds nothing.",
            report.held.describe()
        );
    } else if let Some(seconds) = report.seconds {
        println!(
            "{node} holds no VIP and no service replica ({:.1} s).",
            seconds
        );
        if !report.vips_now_on.is_empty() || !report.replicas_now_on.is_empty() {
            let mut table = output::table(&["MOVED", "NOW ON"]);
            for (balancer, holder) in &report.vips_now_on {
                table.add_row(vec![
                    format!("VIP of {balancer}"),
                    holder.clone().unwrap_or_else(|| "nobody".to_string()),
                ]);
            }
            for (replica, now_on) in &report.replicas_now_on {
                table.add_row(vec![
                    format!("replica {replica}"),
                    now_on
                        .clone()
                        .unwrap_or_else(|| "nowhere yet (no node could take it)".to_string()),
                ]);
            }
            println!("{table}");
        }
    }
    match report.job_slots_in_use {
        Some(0) => {}
        Some(slots) => println!(
            "Job tasks use {slots} of its slot(s): they finish there; no new ones go to it."
        ),
        None => println!(
            "The jobs scheduler did not answer: tasks running on {node} finish there; no new ones go to it."
        ),
    }
    if !report.bricks.is_empty() {
        println!(
            "Storage bricks are not moved by a drain (that is storage's work): {}. While {node} is down, writes to them are kept as hints and healed when it returns; `bramble volume replace-brick` moves one for good.",
            report.bricks.join("; ")
        );
    }
    println!("`bramble undrain {node}` makes it eligible again.");
}

/// `bramble undrain`.
pub async fn undrain(global: &GlobalOptions, args: &UndrainArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let answer = set_drained(&client, &args.node, false, None).await?;
    if args.output.json {
        return output::print_json(&answer);
    }
    let node = &args.node;
    match answer.previous {
        None => println!("{node} was not drained; nothing changed."),
        Some(_) => println!(
            "{node} is eligible again: new replicas and job tasks may go there, and it stands for its balancers' VIPs (with preemption, a VIP that prefers {node} moves back now). Replicas that moved away stay where they are."
        ),
    }
    Ok(())
}

/// A `--timeout` for a drain: 1 s to a day.
pub fn parse_timeout(text: &str) -> Result<Duration> {
    let milliseconds = crate::units::parse_milliseconds(text)?;
    let timeout = Duration::from_millis(milliseconds);
    if timeout < Duration::from_secs(1) || timeout > MAX_TIMEOUT {
        bail!("--timeout {text}: give 1s to 24h");
    }
    Ok(timeout)
}

/// Every service's summary (for the rolling health gate).
pub async fn services(client: &ClusterClient) -> Result<Vec<ServiceSummary>> {
    let (_, list): (_, Vec<ServiceSummary>) = client.call_any(SERVICES_LIST, &()).await?;
    Ok(list)
}
