//! `bramble upgrade --binary <path>`: moves every node onto a new build of bramble, and
//! `bramble version`, what a build says of itself.
//!
//! The upgrade goes in two phases, so that nothing stops before everything is ready:
//! 1. **Stage.** Each new executable is hashed here (BLAKE3) and streamed to every chosen
//!    node over the mux's bulk streams (`upgrade.stage`), a few nodes at a time. Each node
//!    checks the hash, the ELF machine, and runs the build once (`version --json`); its
//!    answer says which wire protocol the build speaks. A build that some running node
//!    could not talk to is refused here (`bramble_cluster::protocol`), naming the nodes.
//! 2. **Roll.** `super::rolling` then goes one node (or `--serial N`) at a time: drain,
//!    `upgrade.install` (the agent restarts as the staged build), wait until the node is
//!    back in gossip with its catalog caught up and announcing the new build's hash,
//!    undrain, and the cluster-wide health gate before the next node. Old and new builds
//!    run side by side meanwhile, which the protocol check made safe.
//!
//! Nodes of other architectures get the `--binary` built for them (the ELF header says
//! which); a node that already runs the build is left alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bramble_cluster::protocol::{self, BuildInfo, Speaks};
use bramble_cluster::{NodeState, NodeView};
use bramble_net::Priority;
use bramble_platform::upgrade::{
    self as staging, InstallRequest, MAX_BINARY_BYTES, METHOD_INSTALL, METHOD_STAGE, StageReply,
    StageRequest,
};
use bramble_util::ShutdownTrigger;
use bytes::Bytes;
use serde::Serialize;
use tokio::io::AsyncReadExt as _;

use super::rolling::{self, Chore};
use crate::cli::{GlobalOptions, JsonFlag, UpgradeArgs};
use crate::client::ClusterClient;
use crate::output;

/// Nodes receiving a build at once: enough to fill a Pi's 100 Mbit/s link from a laptop,
/// few enough not to fill the laptop's memory with send buffers.
const PARALLEL_STAGES: usize = 4;
/// One frame of the executable's stream.
const CHUNK: usize = 256 * 1024;
/// How long a node may take to answer an install (it hashes the build once more: a
/// 170 MB debug build on a Pi Zero takes seconds).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the wait for a node's new build looks again.
const POLL: Duration = Duration::from_millis(250);

/// `bramble version --json`.
#[derive(Debug, Serialize)]
struct VersionReport {
    #[serde(flatten)]
    build: BuildInfo,
    /// BLAKE3 of this executable, as `bramble nodes` shows each agent's (16 hex digits).
    executable_hash: String,
}

/// `bramble version`.
pub fn version(flags: &JsonFlag) -> Result<()> {
    let build = BuildInfo::current();
    let executable_hash = staging::hash_file(Path::new("/proc/self/exe"))
        .map(|hash| hash[..16].to_string())
        .unwrap_or_default();
    if flags.json {
        return output::print_json(&VersionReport {
            build,
            executable_hash,
        });
    }
    println!("bramble {}", build.version);
    println!(
        "protocol {} (shares a cluster with builds of protocol {} to {})",
        build.protocol, build.oldest_compatible_protocol, build.protocol
    );
    println!("architecture {}", build.architecture);
    println!("executable {executable_hash}");
    Ok(())
}

/// One `--binary`, read and hashed.
#[derive(Debug, Clone)]
struct Candidate {
    path: PathBuf,
    /// `std::env::consts::ARCH`'s name for the machine it was built for.
    architecture: String,
    bytes: u64,
    hash: String,
}

async fn read_candidate(path: &Path) -> Result<Candidate> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !metadata.is_file() {
        bail!("{} is not a file", path.display());
    }
    if metadata.len() == 0 || metadata.len() > MAX_BINARY_BYTES {
        bail!(
            "{} has {} bytes; a build has 1 byte to {} MiB",
            path.display(),
            metadata.len(),
            MAX_BINARY_BYTES >> 20
        );
    }
    let mut header = [0u8; 64];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let read = std::io::Read::read(&mut file, &mut header)
        .with_context(|| format!("reading {}", path.display()))?;
    let architecture = staging::elf_architecture(&header[..read]).ok_or_else(|| {
        anyhow!(
            "{} is not a little-endian ELF executable for x86_64, aarch64, 32-bit ARM or riscv64",
            path.display()
        )
    })?;
    let owned = path.to_path_buf();
    let hash = tokio::task::spawn_blocking(move || staging::hash_file(&owned))
        .await
        .context("hashing the build")?
        .with_context(|| format!("hashing {}", path.display()))?;
    Ok(Candidate {
        path: path.to_path_buf(),
        architecture: architecture.to_string(),
        bytes: metadata.len(),
        hash,
    })
}

/// One node's part, for the staging table and `--json`.
#[derive(Debug, Clone, Serialize)]
struct Staged {
    node: String,
    from_version: String,
    from_build: String,
    to_build: String,
    to: Option<BuildInfo>,
    /// Already runs the build: not restarted.
    already_running: bool,
    error: Option<String>,
}

/// `bramble upgrade`.
pub async fn upgrade(global: &GlobalOptions, args: &UpgradeArgs) -> Result<()> {
    super::drain::parse_timeout(&args.options.timeout)?;
    let mut candidates: BTreeMap<String, Candidate> = BTreeMap::new();
    for path in &args.binaries {
        let candidate = read_candidate(path).await?;
        if let Some(other) = candidates.get(&candidate.architecture) {
            bail!(
                "{} and {} are both builds for {}: give one per architecture",
                other.path.display(),
                candidate.path.display(),
                candidate.architecture
            );
        }
        candidates.insert(candidate.architecture.clone(), candidate);
    }
    let client = Arc::new(crate::target::resolve(global)?);
    let (_, view): (_, Vec<NodeView>) = client.call_any("cluster.nodes", &()).await?;
    let chosen = rolling::choose(&args.options, &view)?;
    let mut plan: Vec<(NodeView, Candidate)> = Vec::new();
    let mut problems = Vec::new();
    for node in &chosen {
        if node.state != NodeState::Alive {
            problems.push(format!("{} is {}", node.name, node.state.as_str()));
            continue;
        }
        if node.architecture.is_empty() {
            problems.push(format!(
                "{} does not announce its architecture: it runs a build from before `bramble upgrade` (install this one on it by hand)",
                node.name
            ));
            continue;
        }
        match candidates.get(&node.architecture) {
            Some(candidate) => plan.push((node.clone(), candidate.clone())),
            None => problems.push(format!(
                "{} is {}, and no --binary is built for it (given: {})",
                node.name,
                node.architecture,
                candidates.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }
    if !problems.is_empty() {
        bail!("nothing was touched: {}", problems.join("; "));
    }
    let staged = stage_everywhere(&client, &plan, args.options.output.json).await;
    let failed: Vec<String> = staged
        .iter()
        .filter_map(|staged| {
            staged
                .error
                .as_ref()
                .map(|error| format!("{}: {error}", staged.node))
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "no agent was restarted: staging failed on {}",
            failed.join("; ")
        );
    }
    check_compatibility(&staged, &view)?;
    let builds: BTreeMap<String, String> = staged
        .iter()
        .filter(|staged| !staged.already_running)
        .map(|staged| {
            let hash = plan
                .iter()
                .find(|(node, _)| node.name == staged.node)
                .map(|(_, candidate)| candidate.hash.clone())
                .unwrap_or_default();
            (staged.node.clone(), hash)
        })
        .collect();
    if !args.options.output.json {
        print_plan(&staged);
    }
    if builds.is_empty() {
        if args.options.output.json {
            output::print_json(&staged)?;
        } else {
            println!("every chosen node already runs this build");
        }
        return Ok(());
    }
    let mut options = args.options.clone();
    options.nodes = builds.keys().cloned().collect();
    options.role = None;
    options.all = false;
    rolling::run(global, &options, Chore::Upgrade(builds)).await
}

/// Streams each node its build, [`PARALLEL_STAGES`] at a time, with one progress bar for
/// all the bytes.
async fn stage_everywhere(
    client: &Arc<ClusterClient>,
    plan: &[(NodeView, Candidate)],
    quiet: bool,
) -> Vec<Staged> {
    let total: u64 = plan.iter().map(|(_, candidate)| candidate.bytes).sum();
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "staging {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg}",
        ) {
            bar.set_style(style);
        }
        bar
    };
    let turns = Arc::new(tokio::sync::Semaphore::new(PARALLEL_STAGES));
    let mut tasks = Vec::new();
    for (node, candidate) in plan {
        let client = client.clone();
        let node = node.clone();
        let candidate = candidate.clone();
        let bar = bar.clone();
        let turns = turns.clone();
        tasks.push(tokio::spawn(async move {
            let _turn = turns.acquire_owned().await;
            let mut staged = Staged {
                node: node.name.clone(),
                from_version: node.version.clone(),
                from_build: node.build.clone(),
                to_build: candidate.hash[..16].to_string(),
                to: None,
                already_running: false,
                error: None,
            };
            if node.build == staged.to_build {
                // Announced by the node itself: nothing to copy.
                staged.already_running = true;
                staged.to = Some(BuildInfo {
                    version: node.version.clone(),
                    protocol: node.protocol,
                    oldest_compatible_protocol: node.oldest_compatible_protocol,
                    architecture: node.architecture.clone(),
                });
                bar.inc(candidate.bytes);
                return staged;
            }
            match stage(&client, &node, &candidate, &bar).await {
                Ok(reply) => {
                    staged.already_running = reply.already_running;
                    staged.to = Some(reply.build);
                }
                Err(error) => staged.error = Some(format!("{error:#}")),
            }
            staged
        }));
    }
    let mut staged = Vec::new();
    for (task, (node, _)) in tasks.into_iter().zip(plan) {
        staged.push(task.await.unwrap_or_else(|error| Staged {
            node: node.name.clone(),
            from_version: node.version.clone(),
            from_build: node.build.clone(),
            to_build: String::new(),
            to: None,
            already_running: false,
            error: Some(format!("staging panicked: {error}")),
        }));
    }
    bar.finish_and_clear();
    staged
}

async fn stage(
    client: &ClusterClient,
    node: &NodeView,
    candidate: &Candidate,
    bar: &indicatif::ProgressBar,
) -> Result<StageReply> {
    let (_trigger, shutdown) = ShutdownTrigger::new();
    let mux = client.mux(shutdown);
    let header = postcard::to_allocvec(&StageRequest {
        hash: candidate.hash.clone(),
        bytes: candidate.bytes,
    })
    .context("encoding the stage request")?;
    let (mut sender, response) = mux
        .open(node.addr, METHOD_STAGE, &header, Priority::Bulk)
        .await
        .with_context(|| format!("opening {METHOD_STAGE} on {}", node.name))?;
    let mut file = tokio::fs::File::open(&candidate.path)
        .await
        .with_context(|| format!("opening {}", candidate.path.display()))?;
    let mut sent = 0u64;
    let sending = async {
        loop {
            let mut buffer = vec![0u8; CHUNK];
            let read = file
                .read(&mut buffer)
                .await
                .with_context(|| format!("reading {}", candidate.path.display()))?;
            if read == 0 {
                break;
            }
            buffer.truncate(read);
            sender.send(Bytes::from(buffer)).await?;
            sent += read as u64;
            bar.inc(read as u64);
        }
        sender.finish().await?;
        anyhow::Ok(())
    };
    // A node refusing early (wrong machine, no space) answers while the body still flows:
    // its answer is the better error.
    let sent_result = sending.await;
    let answer = response.wait().await;
    let answer = match (sent_result, answer) {
        (_, Ok(answer)) => answer,
        (Err(send_error), Err(error)) => {
            return Err(anyhow!("{error}")).context(format!("after sending: {send_error:#}"));
        }
        (Ok(()), Err(error)) => return Err(anyhow!("{error}")),
    };
    if sent != candidate.bytes {
        bail!(
            "{} changed while it was sent ({sent} of {} bytes)",
            candidate.path.display(),
            candidate.bytes
        );
    }
    postcard::from_bytes(&answer.header).context("decoding the stage answer")
}

/// Refuses the upgrade if a staged build could not share the cluster with a node that
/// keeps running meanwhile (every node does, until its turn).
fn check_compatibility(staged: &[Staged], view: &[NodeView]) -> Result<()> {
    let running: Vec<(String, Speaks)> = view
        .iter()
        .filter(|node| node.state != NodeState::Left)
        .map(|node| {
            (
                node.name.clone(),
                Speaks {
                    protocol: node.protocol,
                    oldest_compatible: node.oldest_compatible_protocol,
                },
            )
        })
        .collect();
    let mut refusals = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for build in staged.iter().filter_map(|staged| staged.to.as_ref()) {
        if !seen.insert((build.protocol, build.oldest_compatible_protocol)) {
            continue;
        }
        if let Some(refusal) = protocol::refusal(Speaks::of(build), &running) {
            refusals.push(refusal);
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        bail!(
            "no agent was restarted: {} (upgrade through a build that speaks both protocols first)",
            refusals.join("; ")
        )
    }
}

fn print_plan(staged: &[Staged]) {
    let mut table = output::table(&["NODE", "FROM", "TO", "PROTOCOL"]);
    for node in staged {
        let to = node
            .to
            .as_ref()
            .map(|build| format!("{} {}", build.version, node.to_build))
            .unwrap_or_default();
        let protocol = node
            .to
            .as_ref()
            .map(|build| {
                format!(
                    "{} (speaks {}..={})",
                    build.protocol, build.oldest_compatible_protocol, build.protocol
                )
            })
            .unwrap_or_default();
        table.add_row(vec![
            node.node.clone(),
            format!("{} {}", node.from_version, node.from_build),
            if node.already_running {
                format!("{to} (already runs it)")
            } else {
                to
            },
            protocol,
        ]);
    }
    println!("staged on every node, hash checked:\n{table}");
}

/// Asks `node` to restart as the build staged under `hash`.
pub(super) async fn install(client: &ClusterClient, node: &NodeView, hash: &str) -> Result<()> {
    let (_trigger, shutdown) = ShutdownTrigger::new();
    let mux = client.mux(shutdown);
    let header = postcard::to_allocvec(&InstallRequest {
        hash: hash.to_string(),
    })
    .context("encoding the install request")?;
    let exchange = async {
        let (sender, response) = mux
            .open(node.addr, METHOD_INSTALL, &header, Priority::Control)
            .await?;
        sender.finish().await?;
        response.wait().await
    };
    tokio::time::timeout(INSTALL_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            anyhow!(
                "{} did not answer {METHOD_INSTALL} within {INSTALL_TIMEOUT:?}",
                node.name
            )
        })?
        .map_err(|error| anyhow!("{METHOD_INSTALL} on {}: {error}", node.name))?;
    Ok(())
}

/// Waits until `node` announces the build `hash` in gossip (it hashes its executable just
/// after it starts). A node back with another build did not move onto it.
pub(super) async fn wait_for_build(
    client: &ClusterClient,
    node: &NodeView,
    hash: &str,
    timeout: Duration,
) -> Result<()> {
    let expected = &hash[..16.min(hash.len())];
    let started = std::time::Instant::now();
    loop {
        let seen: Option<String> = client
            .call_at::<_, Vec<NodeView>>(node.addr, "cluster.nodes", &())
            .await
            .ok()
            .and_then(|view| view.into_iter().find(|member| member.name == node.name))
            .map(|member| member.build);
        match seen.as_deref() {
            Some(build) if build == expected => return Ok(()),
            Some(build) if !build.is_empty() => bail!(
                "{} came back running build {build}, not {expected}: its agent did not start the new build (see its agent.log)",
                node.name
            ),
            _ => {}
        }
        if started.elapsed() >= timeout {
            bail!(
                "{} did not announce its build within {:.0} s",
                node.name,
                timeout.as_secs_f64()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
