//! `bramble rolling -- <command>` and `bramble reboot --rolling`: a chore done to the nodes
//! one (or `--serial N`) at a time. Each node is drained first (`super::drain`: its VIPs
//! handed over, its replicas moved by hand-over), the command runs there through `bramble
//! exec`'s path (`exec.run`, so the node must have opted in), then the node is waited for
//! until it is back in gossip and its catalog replica has caught up (the command may
//! reboot the board or restart the agent), it is undrained, and the next batch starts only
//! once the cluster is as healthy as before the chore began: every service with as many
//! ready replicas, none still moving or withheld, every VIP held, a catalog leader, and no
//! volume owing a brick the copies it missed while its node was away. That
//! gate is what Ansible's `serial` lacks. The first failure beyond `--max-fail` stops the
//! chore; a node whose step failed stays drained, so nothing new lands on it until
//! someone looks. In an emulated cluster a reboot is a restart of the node's agent (there
//! is no machine to reboot).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use bramble_cluster::{NodeState, NodeView};
use bramble_compute::exec::{ExecOutcome, ExecRequest, MAX_TIMEOUT_MS, METHOD_RUN};
use bramble_compute::services::admin::{METHOD_PS, PsAnswer};
use bramble_compute::services::spec::RolloutState;
use bramble_meta::api::{ClusterStatus, METHOD_STATUS, StatusRequest};
use bramble_store::admin::{HealInfo, METHOD_HEAL_INFO, METHOD_VOLUME_LIST, VolumeName};
use bramble_store::volume::{VolumeSpec, VolumeState};
use serde::Serialize;

use super::drain::{Holdings, begin_drain, drained_nodes, set_drained, wait_drained};
use crate::cli::{GlobalOptions, RebootArgs, RollingArgs, RollingOptions};
use crate::client::ClusterClient;
use crate::emulator::Emulation;
use crate::output;

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(250);
/// What a graceful stop of an emulated agent may take before SIGKILL: its replicas get
/// their stop grace (the services subsystem allows 12 s).
const AGENT_STOP_GRACE: Duration = Duration::from_secs(20);
/// The steps of one node, for the progress bar: drain, command, back, healthy.
const STEPS: u64 = 4;

/// What is done to each node.
#[derive(Debug, Clone)]
pub(super) enum Chore {
    /// A command through `exec.run`.
    Command(ExecRequest),
    /// Emulated nodes: stop the agent (SIGTERM) and start it again from its data directory.
    RestartAgent(BTreeMap<String, PathBuf>),
    /// Real nodes: `systemctl reboot` as root through `exec.run`.
    Reboot(ExecRequest),
    /// `bramble upgrade`: the node's agent restarts as the build it has staged, by node
    /// name its BLAKE3 hash (`super::upgrade`).
    Upgrade(BTreeMap<String, String>),
}

impl Chore {
    fn describe(&self) -> String {
        match self {
            Chore::Command(request) => request.command.join(" "),
            Chore::RestartAgent(_) => "reboot (a restart of the emulated node's agent)".into(),
            Chore::Reboot(_) => "reboot".into(),
            Chore::Upgrade(_) => "upgrade".into(),
        }
    }

    /// The agent must come back as a new incarnation (a new gossip generation).
    fn restarts_agent(&self) -> bool {
        !matches!(self, Chore::Command(_))
    }
}

/// One node's run, for the table and `--json`.
#[derive(Debug, Clone, Default, Serialize)]
struct NodeReport {
    node: String,
    /// ok, failed, or skipped (not started: the chore stopped before it).
    result: String,
    /// The step that failed: drain, command, back, undrain or healthy.
    failed_step: Option<String>,
    error: Option<String>,
    /// What the drain moved away.
    moved: Option<Holdings>,
    drain_seconds: Option<f64>,
    command_seconds: Option<f64>,
    back_seconds: Option<f64>,
    healthy_seconds: Option<f64>,
    started_unix_ms: Option<u64>,
    finished_unix_ms: Option<u64>,
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The node is still drained after the chore (its step failed, or it was drained
    /// before the chore began).
    left_drained: bool,
}

impl NodeReport {
    fn new(node: &str) -> NodeReport {
        NodeReport {
            node: node.to_string(),
            ..NodeReport::default()
        }
    }

    fn fail(mut self, step: &str, error: impl std::fmt::Display) -> NodeReport {
        self.result = "failed".into();
        self.failed_step = Some(step.to_string());
        self.error = Some(error.to_string());
        self.finished_unix_ms = Some(bramble_util::time::unix_millis());
        self
    }
}

/// The whole run, for `--json`.
#[derive(Debug, Serialize)]
struct RollingReport {
    chore: String,
    serial: u32,
    max_fail: u32,
    nodes: Vec<NodeReport>,
}

/// `bramble rolling -- <command>`.
pub async fn rolling(global: &GlobalOptions, args: &RollingArgs) -> Result<()> {
    let step_timeout = super::drain::parse_timeout(&args.options.timeout)?;
    let request = ExecRequest {
        command: args.command.clone(),
        user: args.user.clone(),
        timeout_ms: (step_timeout.as_millis() as u64).min(MAX_TIMEOUT_MS),
    };
    request.validate().map_err(|error| anyhow!(error))?;
    run(global, &args.options, Chore::Command(request)).await
}

/// `bramble reboot --rolling`.
pub async fn reboot(global: &GlobalOptions, args: &RebootArgs) -> Result<()> {
    if !args.rolling {
        bail!(
            "bramble reboots nodes only one batch at a time: give --rolling (to reboot every node at once, `bramble exec --user root -- systemctl reboot`)"
        );
    }
    let chore = match Emulation::find(global)? {
        Some(emulation) => Chore::RestartAgent(
            emulation
                .state
                .nodes
                .iter()
                .map(|node| (node.name.clone(), emulation.node_dir(&node.name)))
                .collect(),
        ),
        None => Chore::Reboot(ExecRequest {
            command: vec!["systemctl".into(), "reboot".into()],
            user: Some("root".into()),
            timeout_ms: 60_000,
        }),
    };
    run(global, &args.options, chore).await
}

/// The nodes the options choose, in the order they are worked on.
pub(super) fn choose(options: &RollingOptions, view: &[NodeView]) -> Result<Vec<NodeView>> {
    if !options.nodes.is_empty() {
        let mut seen = BTreeSet::new();
        let mut chosen = Vec::new();
        for name in &options.nodes {
            if !seen.insert(name.as_str()) {
                bail!("--nodes names {name} twice");
            }
            let node = view
                .iter()
                .find(|node| &node.name == name)
                .ok_or_else(|| anyhow!("--nodes: no node named {name:?} in the cluster"))?;
            chosen.push(node.clone());
        }
        return Ok(chosen);
    }
    let mut chosen: Vec<NodeView> = view
        .iter()
        .filter(|node| {
            options
                .role
                .as_ref()
                .is_none_or(|role| node.roles.iter().any(|own| own == role))
        })
        .filter(|node| node.state != NodeState::Left)
        .cloned()
        .collect();
    if chosen.is_empty() {
        bail!(
            "no node has the role {:?}",
            options.role.as_deref().unwrap_or_default()
        );
    }
    chosen.sort_by(|left, right| left.name.cmp(&right.name));
    Ok(chosen)
}

/// Refuses before touching anything: every chosen node must be alive, and where the chore
/// goes through exec, allow it (as root for a reboot).
async fn preflight(client: &ClusterClient, chosen: &[NodeView], chore: &Chore) -> Result<()> {
    let down: Vec<String> = chosen
        .iter()
        .filter(|node| node.state != NodeState::Alive)
        .map(|node| format!("{} ({})", node.name, node.state.as_str()))
        .collect();
    if !down.is_empty() {
        bail!(
            "not every chosen node is alive: {}; bring them back or leave them out with --nodes",
            down.join(", ")
        );
    }
    let needs_root = match chore {
        Chore::Command(request) => request.user.as_deref() == Some("root"),
        Chore::Reboot(_) => true,
        Chore::RestartAgent(nodes) => {
            let foreign: Vec<&str> = chosen
                .iter()
                .filter(|node| !nodes.contains_key(&node.name))
                .map(|node| node.name.as_str())
                .collect();
            if !foreign.is_empty() {
                bail!(
                    "{} not part of the emulated cluster, whose agents a reboot restarts",
                    foreign.join(", ")
                );
            }
            return Ok(());
        }
        // Staged before the rolling part starts (`super::upgrade`), by admin calls.
        Chore::Upgrade(_) => return Ok(()),
    };
    let mut refusing = Vec::new();
    for node in chosen {
        let statuses: Result<Vec<(String, String)>> = client
            .call_at(node.addr, bramble_platform::service::METHOD_SUBSYSTEMS, &())
            .await;
        let exec = statuses.ok().and_then(|statuses| {
            statuses
                .into_iter()
                .find(|(name, _)| name == bramble_compute::exec::SERVICE)
                .and_then(|(_, status)| serde_json::from_str::<serde_json::Value>(&status).ok())
        });
        let enabled = exec.as_ref().and_then(|status| status["enabled"].as_bool());
        let root = exec
            .as_ref()
            .and_then(|status| status["allow_root"].as_bool());
        match (enabled, root) {
            (Some(true), Some(true)) => {}
            (Some(true), _) if !needs_root => {}
            (Some(true), _) => refusing.push(format!("{} (exec, but not as root)", node.name)),
            (Some(false), _) => refusing.push(node.name.clone()),
            (None, _) => refusing.push(format!("{} (did not say)", node.name)),
        }
    }
    if !refusing.is_empty() {
        bail!(
            "the chore runs through bramble exec, which {} do(es) not allow: a node opts in with `--allow-exec` at init or join, or `enabled = true` in its exec.toml{}",
            refusing.join(", "),
            if needs_root {
                " (and `allow_root = true` there to run as root)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// What "as healthy as before" compares against: each service's ready replicas when the
/// chore began. (VIPs, the catalog and volumes are compared with perfection: held, led,
/// nothing owed.)
type Baseline = BTreeMap<String, usize>;

/// Why the cluster is not healthy now (nothing: healthy), and each service's ready
/// replicas. With no baseline, fewer ready replicas than wanted is not a problem (the
/// baseline is being taken).
async fn health(
    client: &ClusterClient,
    baseline: Option<&Baseline>,
) -> Result<(Vec<String>, Baseline)> {
    let mut problems = Vec::new();
    let (_, status): (_, ClusterStatus) = client
        .call_any(METHOD_STATUS, &StatusRequest { forwarded: false })
        .await?;
    if status.leader.is_none() {
        problems.push("the catalog has no leader".to_string());
    }
    for balancer in super::drain::balancers(client).await? {
        if super::drain::vip_holder(client, &balancer.name)
            .await?
            .is_none()
        {
            problems.push(format!("nobody holds the VIP of {}", balancer.name));
        }
    }
    let mut ready_now = Baseline::new();
    for service in super::drain::services(client).await? {
        let (_, answer): (_, PsAnswer) = client.call_any(METHOD_PS, &service.name).await?;
        let spec = &answer.spec;
        let ready: BTreeSet<u32> = answer
            .replicas
            .iter()
            .filter(|replica| {
                replica.index < spec.replicas
                    && replica.state == "running"
                    && (spec.health.is_none() || replica.health.as_deref() == Some("healthy"))
                    && !answer.withheld.contains(&replica.index)
            })
            .map(|replica| replica.index)
            .collect();
        let name = &service.name;
        for handover in &answer.handovers {
            problems.push(format!(
                "{name}.{} is moving from {} to {}",
                handover.index, handover.from_node, handover.to_node
            ));
        }
        if !answer.withheld.is_empty() {
            let withheld: Vec<String> = answer
                .withheld
                .iter()
                .map(|index| format!("{name}.{index}"))
                .collect();
            problems.push(format!(
                "{} not yet in the balancers (starting or not healthy)",
                withheld.join(", ")
            ));
        }
        if answer
            .rollout
            .as_ref()
            .is_some_and(|rollout| rollout.state == RolloutState::Running)
        {
            problems.push(format!("{name}: a rolling update is under way"));
        }
        if let Some(before) = baseline.and_then(|baseline| baseline.get(name))
            && ready.len() < *before
        {
            problems.push(format!(
                "{name}: {} of {} replicas ready ({before} before)",
                ready.len(),
                spec.replicas
            ));
        }
        ready_now.insert(name.clone(), ready.len());
    }
    // Storage: a node that was down is owed the copies it missed; the next node may hold
    // their other copy, so it waits until they are delivered.
    let (_, volumes): (_, Vec<VolumeSpec>) = client.call_any(METHOD_VOLUME_LIST, &()).await?;
    for volume in volumes
        .iter()
        .filter(|volume| volume.state == VolumeState::Started)
    {
        let request = VolumeName {
            name: volume.name.clone(),
        };
        let (_, info): (_, HealInfo) = client.call_any(METHOD_HEAL_INFO, &request).await?;
        let owed: u64 = info.pending.iter().map(|pending| pending.copies).sum();
        if owed > 0 {
            problems.push(format!(
                "volume {}: {owed} block cop{} still to heal",
                volume.name,
                if owed == 1 { "y" } else { "ies" }
            ));
        }
        if !info.unanswered.is_empty() {
            problems.push(format!(
                "volume {}: {} did not say what they owe",
                volume.name,
                info.unanswered.join(", ")
            ));
        }
    }
    Ok((problems, ready_now))
}

/// Waits until [`health`] finds nothing wrong, up to `timeout`.
async fn wait_healthy(
    client: &ClusterClient,
    baseline: Option<&Baseline>,
    timeout: Duration,
) -> Result<Baseline> {
    let started = Instant::now();
    loop {
        let outcome = health(client, baseline).await;
        match outcome {
            Ok((problems, ready)) if problems.is_empty() => return Ok(ready),
            Ok((problems, _)) if started.elapsed() >= timeout => {
                bail!(
                    "not healthy after {:.0} s: {}",
                    timeout.as_secs_f64(),
                    problems.join("; ")
                )
            }
            Err(error) if started.elapsed() >= timeout => return Err(error),
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// Waits until `node` is back: alive in another member's view (as a new incarnation when
/// `newer_than` is given), answering itself, and its catalog replica caught up with what
/// the leader had committed.
async fn wait_back(
    client: &ClusterClient,
    node: &NodeView,
    others: &[NodeView],
    newer_than: Option<u64>,
    timeout: Duration,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let last = match back(client, node, others, newer_than).await {
            Ok(()) => return Ok(()),
            Err(why) => format!("{why:#}"),
        };
        if started.elapsed() >= timeout {
            bail!(
                "{} was not back after {:.0} s: {last}",
                node.name,
                timeout.as_secs_f64()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn back(
    client: &ClusterClient,
    node: &NodeView,
    others: &[NodeView],
    newer_than: Option<u64>,
) -> Result<()> {
    let mut seen = None;
    for other in others {
        if let Ok(view) = client
            .call_at::<_, Vec<NodeView>>(other.addr, "cluster.nodes", &())
            .await
        {
            seen = view.into_iter().find(|member| member.name == node.name);
            break;
        }
    }
    if !others.is_empty() {
        let Some(seen) = seen else {
            bail!("no other member answered or knows it");
        };
        if seen.state != NodeState::Alive {
            bail!("the others see it {}", seen.state.as_str());
        }
        if let Some(before) = newer_than
            && seen.generation <= before
        {
            bail!("the others still see the incarnation from before the chore");
        }
    }
    let _: Vec<NodeView> = client.call_at(node.addr, "cluster.nodes", &()).await?;
    let (_, leader): (_, ClusterStatus) = client
        .call_any(METHOD_STATUS, &StatusRequest { forwarded: false })
        .await?;
    if leader.leader.is_none() {
        bail!("the catalog has no leader");
    }
    let own: ClusterStatus = client
        .call_at(node.addr, METHOD_STATUS, &StatusRequest { forwarded: true })
        .await?;
    if own.leader.is_none() || own.last_applied < leader.commit_index {
        bail!(
            "its catalog replica has applied {} of {} committed entries",
            own.last_applied,
            leader.commit_index
        );
    }
    Ok(())
}

/// Runs the chore's command on `node`. `Ok(true)`: the connection was lost while it ran
/// (a reboot, an agent restart), which only a new incarnation can vindicate.
async fn run_command(
    client: &ClusterClient,
    node: &NodeView,
    chore: &Chore,
    report: &mut NodeReport,
) -> Result<bool> {
    let request = match chore {
        Chore::Command(request) | Chore::Reboot(request) => request,
        Chore::Upgrade(builds) => {
            let hash = builds
                .get(&node.name)
                .ok_or_else(|| anyhow!("no build was staged for {}", node.name))?;
            super::upgrade::install(client, node, hash).await?;
            return Ok(false);
        }
        Chore::RestartAgent(directories) => {
            let directory = directories
                .get(&node.name)
                .ok_or_else(|| anyhow!("{} is not an emulated node", node.name))?;
            crate::process::stop_agent(directory, AGENT_STOP_GRACE).await?;
            crate::process::spawn_agent(directory)?;
            return Ok(false);
        }
    };
    // The command's own timeout, plus time to start it and bring the answer back.
    let rpc = client.rpc().clone().with_timeouts(
        Duration::from_secs(2),
        Duration::from_millis(request.timeout_ms) + Duration::from_secs(10),
    );
    match rpc
        .call::<_, ExecOutcome>(node.addr, METHOD_RUN, request)
        .await
    {
        Ok(outcome) => {
            report.exit_code = outcome.exit_code;
            report.stdout = String::from_utf8_lossy(&outcome.stdout).into_owned();
            report.stderr = String::from_utf8_lossy(&outcome.stderr).into_owned();
            if outcome.succeeded() {
                return Ok(false);
            }
            let how = if outcome.timed_out {
                format!("cut at its timeout ({} ms)", request.timeout_ms)
            } else if let Some(code) = outcome.exit_code {
                format!("exit {code}")
            } else if let Some(signal) = outcome.signal {
                format!("signal {signal}")
            } else {
                "ended without a status".to_string()
            };
            let said = report
                .stderr
                .lines()
                .chain(report.stdout.lines())
                .find(|line| !line.trim().is_empty())
                .map(|line| format!(": {}", line.chars().take(200).collect::<String>()))
                .unwrap_or_default();
            bail!("{how}{said}")
        }
        Err(bramble_net::CallError::Connect { .. }) | Err(bramble_net::CallError::Tls { .. }) => {
            Err(anyhow!("could not reach {} to run the command", node.name))
        }
        Err(error) if error.remote().is_none() => {
            // Connected, then lost or silent past the command's timeout: the command may
            // have restarted the agent or the board; only a new incarnation tells.
            report.stderr = format!("the connection was lost while the command ran: {error}");
            Ok(true)
        }
        Err(error) => Err(crate::client::explain(error)),
    }
}

/// What every node of a batch shares.
#[derive(Clone)]
struct Batch {
    client: Arc<ClusterClient>,
    chore: Chore,
    step_timeout: Duration,
    bar: indicatif::ProgressBar,
    /// Drains begin one at a time (see [`begin_drain`]).
    drain_turn: Arc<tokio::sync::Mutex<()>>,
}

/// Drains `node`, runs the chore there, waits until it is back (as `others` see it) and
/// undrains it, unless it `was_drained` before the chore. The health gate comes after the
/// node's batch.
async fn one_node(
    batch: Batch,
    node: NodeView,
    others: Vec<NodeView>,
    was_drained: bool,
) -> NodeReport {
    let Batch {
        client,
        chore,
        step_timeout,
        bar,
        drain_turn,
    } = batch;
    let mut report = NodeReport::new(&node.name);
    report.started_unix_ms = Some(bramble_util::time::unix_millis());
    let name = node.name.clone();
    let step = Instant::now();
    bar.set_message(format!("{name}: draining"));
    let mut progress = |_: usize, _: usize, left: &Holdings| {
        if !left.is_empty() {
            bar.set_message(format!("{name}: draining ({})", left.describe()));
        }
    };
    // The drain's reason is one line: a command's newlines and tabs become spaces.
    let reason: String = format!("bramble rolling: {}", chore.describe())
        .chars()
        .map(|character| {
            if character.is_control() {
                ' '
            } else {
                character
            }
        })
        .take(100)
        .collect();
    // One drain at a time begins (its checks and flag); the waits overlap.
    let begun = {
        let _turn = drain_turn.lock().await;
        begin_drain(&client, &name, Some(reason)).await
    };
    let drained = match begun {
        Ok(begun) => wait_drained(&client, begun, step_timeout, &mut progress).await,
        Err(error) => Err(error),
    };
    match drained {
        Ok(drained) => report.moved = Some(drained.held),
        Err(error) => {
            report.left_drained = drained_nodes(&client)
                .await
                .map(|drained| drained.contains_key(&name))
                .unwrap_or(true);
            return report.fail("drain", format!("{error:#}"));
        }
    }
    report.drain_seconds = Some(step.elapsed().as_secs_f64());
    bar.inc(1);
    // The incarnation before the command, as the others see it.
    let generation_before = current_generation(&client, &node, &others).await;
    let step = Instant::now();
    bar.set_message(format!("{name}: {}", chore.describe()));
    let lost_connection = match run_command(&client, &node, &chore, &mut report).await {
        Ok(lost) => lost,
        Err(error) => {
            // Drained above, and left so until someone looks.
            report.left_drained = true;
            return report.fail("command", format!("{error:#}"));
        }
    };
    report.command_seconds = Some(step.elapsed().as_secs_f64());
    bar.inc(1);
    let step = Instant::now();
    bar.set_message(format!("{name}: waiting until it is back"));
    let newer_than = (chore.restarts_agent() || lost_connection).then_some(generation_before);
    if let Err(error) = wait_back(&client, &node, &others, newer_than, step_timeout).await {
        report.left_drained = true;
        let error = if lost_connection {
            format!("{error:#} (the connection was lost while the command ran)")
        } else {
            format!("{error:#}")
        };
        return report.fail("back", error);
    }
    if let Chore::Upgrade(builds) = &chore
        && let Some(hash) = builds.get(&name)
        && let Err(error) = super::upgrade::wait_for_build(&client, &node, hash, step_timeout).await
    {
        report.left_drained = true;
        return report.fail("back", format!("{error:#}"));
    }
    report.back_seconds = Some(step.elapsed().as_secs_f64());
    bar.inc(1);
    if was_drained {
        // Drained by someone before the chore: it stays so.
        report.left_drained = true;
    } else if let Err(error) = set_drained(&client, &name, false, None).await {
        report.left_drained = true;
        return report.fail("undrain", format!("{error:#}"));
    }
    report.result = "ok".into();
    report
}

/// `node`'s gossip generation as another member sees it (as the chore's first view had
/// it, if no other member answers).
async fn current_generation(client: &ClusterClient, node: &NodeView, others: &[NodeView]) -> u64 {
    for other in others {
        if let Ok(view) = client
            .call_at::<_, Vec<NodeView>>(other.addr, "cluster.nodes", &())
            .await
        {
            return view
                .iter()
                .find(|member| member.name == node.name)
                .map_or(node.generation, |member| member.generation);
        }
    }
    node.generation
}

pub(super) async fn run(
    global: &GlobalOptions,
    options: &RollingOptions,
    chore: Chore,
) -> Result<()> {
    let step_timeout = super::drain::parse_timeout(&options.timeout)?;
    let client = Arc::new(crate::target::resolve(global)?);
    let (_, view): (_, Vec<NodeView>) = client.call_any("cluster.nodes", &()).await?;
    let chosen = choose(options, &view)?;
    preflight(&client, &chosen, &chore).await?;
    let drained_before = drained_nodes(&client).await?;
    let bar = output::progress_bar(chosen.len() as u64 * STEPS, options.output.json);
    bar.set_message("checking the cluster is healthy before starting");
    let baseline = match wait_healthy(&client, None, step_timeout).await {
        Ok(baseline) => baseline,
        Err(error) => {
            bar.finish_and_clear();
            bail!("the cluster is not healthy enough to start ({error:#}); nothing was touched");
        }
    };
    let mut reports: Vec<NodeReport> = Vec::new();
    let mut failures = 0u32;
    for batch in chosen.chunks(options.serial as usize) {
        if failures > options.max_fail {
            for node in batch {
                let mut skipped = NodeReport::new(&node.name);
                skipped.result = "skipped".into();
                skipped.left_drained = drained_before.contains_key(&node.name);
                skipped.error = Some(format!(
                    "not started: {failures} node(s) failed, more than --max-fail {}",
                    options.max_fail
                ));
                reports.push(skipped);
                bar.inc(STEPS);
            }
            continue;
        }
        let mut tasks = Vec::new();
        let shared = Batch {
            client: client.clone(),
            chore: chore.clone(),
            step_timeout,
            bar: bar.clone(),
            drain_turn: Arc::new(tokio::sync::Mutex::new(())),
        };
        for node in batch {
            // Members outside the batch vouch for the batch's nodes coming back.
            let others: Vec<NodeView> = view
                .iter()
                .filter(|other| {
                    other.state == NodeState::Alive
                        && !batch.iter().any(|member| member.name == other.name)
                })
                .cloned()
                .collect();
            tasks.push(tokio::spawn(one_node(
                shared.clone(),
                node.clone(),
                others,
                drained_before.contains_key(&node.name),
            )));
        }
        let mut batch_reports = Vec::new();
        for task in tasks {
            batch_reports.push(
                task.await
                    .map_err(|error| anyhow!("a node's chore panicked: {error}"))?,
            );
        }
        let names: Vec<&str> = batch.iter().map(|node| node.name.as_str()).collect();
        bar.set_message(format!(
            "{}: waiting until the cluster is healthy again",
            names.join(", ")
        ));
        let gate = Instant::now();
        let healthy = wait_healthy(&client, Some(&baseline), step_timeout).await;
        let finished = bramble_util::time::unix_millis();
        for mut report in batch_reports {
            if report.result == "ok" {
                report.healthy_seconds = Some(gate.elapsed().as_secs_f64());
                report.finished_unix_ms = Some(finished);
                if let Err(error) = &healthy {
                    report = report.fail("healthy", format!("{error:#}"));
                }
                bar.inc(1);
            } else {
                bar.inc(STEPS - bar_steps_done(&report));
            }
            if report.result != "ok" {
                failures += 1;
            }
            reports.push(report);
        }
    }
    bar.finish_and_clear();
    let failed = reports
        .iter()
        .filter(|report| report.result == "failed")
        .count();
    let skipped = reports
        .iter()
        .filter(|report| report.result == "skipped")
        .count();
    if options.output.json {
        output::print_json(&RollingReport {
            chore: chore.describe(),
            serial: options.serial,
            max_fail: options.max_fail,
            nodes: reports,
        })?;
    } else {
        print_table(&reports);
    }
    if failed > 0 || skipped > 0 {
        bail!(
            "{failed} node(s) failed and {skipped} were not started; a node whose step failed stays drained (`bramble undrain <node>` when it is fixed)"
        );
    }
    Ok(())
}

/// The progress-bar steps a failed node got through before failing.
fn bar_steps_done(report: &NodeReport) -> u64 {
    [
        report.drain_seconds,
        report.command_seconds,
        report.back_seconds,
        report.healthy_seconds,
    ]
    .iter()
    .filter(|seconds| seconds.is_some())
    .count() as u64
}

fn print_table(reports: &[NodeReport]) {
    let seconds = |value: Option<f64>| {
        value
            .map(|seconds| format!("{seconds:.1} s"))
            .unwrap_or_else(|| "-".to_string())
    };
    let mut table = output::table(&[
        "NODE", "RESULT", "DRAIN", "COMMAND", "BACK", "HEALTHY", "DETAIL",
    ]);
    for report in reports {
        let detail = match (&report.failed_step, &report.error) {
            (Some(step), Some(error)) => format!("{step}: {error}"),
            (None, Some(error)) => error.clone(),
            _ => {
                let moved = report
                    .moved
                    .as_ref()
                    .filter(|moved| !moved.is_empty())
                    .map(|moved| format!("moved {}", moved.describe()));
                let said = report
                    .stdout
                    .lines()
                    .find(|line| !line.trim().is_empty())
                    .map(|line| line.chars().take(80).collect::<String>());
                [moved, said]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        };
        let detail = if report.left_drained && report.result != "ok" {
            format!("{detail} (left drained)")
        } else {
            detail
        };
        table.add_row(vec![
            report.node.clone(),
            report.result.clone(),
            seconds(report.drain_seconds),
            seconds(report.command_seconds),
            seconds(report.back_seconds),
            seconds(report.healthy_seconds),
            detail,
        ]);
    }
    println!("{table}");
}
