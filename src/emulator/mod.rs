//! The emulator: a whole cluster on this PC as agent processes on loopback, no privileges
//! needed. `up` creates and starts it, `down` stops it, `status` shows it, `chaos` injects
//! the drills' faults.
//!
//! ```text
//! <dir>/cluster.toml                 the emulated nodes: name and address
//! <dir>/admin.credential.toml  0600  admin credential for every command run in <dir>
//! <dir>/<node>/                      each node's data directory, plus agent.pid and agent.log
//! ```

pub mod chaos;
pub mod delay_line;
pub mod netns;
pub mod ports;
pub mod profile;
pub mod recipe;
pub mod watch;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bramble_api::settings::ApiSettings;
use bramble_cluster::join::{JoinOptions, join};
use bramble_cluster::node_dir::InitOptions;
use bramble_cluster::{AdminCredential, MembershipSettings, NodeDir, NodeView};
use bramble_compute::services::admin::{self as services, PsAnswer};
use bramble_meta::MetaSettings;
use bramble_meta::api::{ClusterStatus, METHOD_STATUS, StatusRequest};
use bramble_monitor::subsystem::MonitorSettings;
use bramble_util::files::{self, Visibility};
use bramble_util::names::validate_name;
use serde::{Deserialize, Serialize};

use crate::cli::{DownArgs, GlobalOptions, JsonFlag, UpArgs};
use crate::client::ClusterClient;
use crate::output;
use crate::process::{self, AgentProcess, ProcessState};

/// Where `bramble up` puts a cluster when no `--dir` is given.
pub const DEFAULT_DIR: &str = ".bramble";
const STATE_FILE: &str = "cluster.toml";
const MAX_NODES: usize = 1000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulationState {
    #[serde(default)]
    pub nodes: Vec<EmulatedNode>,
    /// The HA website demo, when `up` set it up.
    #[serde(default)]
    pub demo: Option<recipe::DemoState>,
    /// The board every node emulates (`up --profile`) and its calibration; every start of
    /// an agent applies it (`profile::agent_cgroup_for`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<profile::ProfileState>,
    /// The nodes' network namespaces, for a cluster made with `up --netns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<netns::NetworkState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatedNode {
    pub name: String,
    pub addr: SocketAddr,
}

/// An emulated cluster's directory.
pub struct Emulation {
    pub dir: PathBuf,
    pub state: EmulationState,
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("reading the current directory")?
        .join(path))
}

impl Emulation {
    /// A client for this emulated cluster: its admin credential, every node's address,
    /// the running agents first (a stopped one accepts TCP connections but never finishes
    /// a handshake, and would cost a timeout).
    pub fn client(&self, global: &GlobalOptions) -> Result<ClusterClient> {
        let admin = AdminCredential::load(&self.admin_credential_path()).with_context(|| {
            format!(
                "reading the emulated cluster's admin credential in {}",
                self.dir.display()
            )
        })?;
        let names = self
            .state
            .nodes
            .iter()
            .map(|node| (node.name.clone(), node.addr))
            .collect();
        let mut client = ClusterClient::from_admin(
            global,
            admin,
            &format!("emulated cluster in {}", self.dir.display()),
            names,
        )?;
        let answering: Vec<SocketAddr> = self
            .answering_nodes()
            .into_iter()
            .map(|(_, address)| address)
            .collect();
        client.prefer(&answering, global.addr);
        Ok(client)
    }

    /// The emulated cluster of `--dir` (or `BRAMBLE_DIR`, or `./.bramble`), if one exists.
    pub fn find(global: &GlobalOptions) -> Result<Option<Emulation>> {
        let dir = absolute(global.dir.as_deref().unwrap_or(Path::new(DEFAULT_DIR)))?;
        if !dir.join(STATE_FILE).exists() {
            return Ok(None);
        }
        Ok(Some(Self::load(dir)?))
    }

    /// Like [`Emulation::find`], with a clear error when there is none.
    pub fn require(global: &GlobalOptions) -> Result<Emulation> {
        Self::find(global)?.ok_or_else(|| {
            let dir = global
                .dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
            anyhow!(
                "no emulated cluster in {}; start one with `bramble up` (or pass --dir)",
                dir.display()
            )
        })
    }

    fn load(dir: PathBuf) -> Result<Emulation> {
        let state: EmulationState = files::read_toml(&dir.join(STATE_FILE))?;
        if state.nodes.len() > MAX_NODES {
            bail!(
                "{} lists {} nodes; at most {MAX_NODES} are supported",
                dir.join(STATE_FILE).display(),
                state.nodes.len()
            );
        }
        for node in &state.nodes {
            // Node names become directory names: no path may escape <dir>.
            validate_name("node name", &node.name)
                .with_context(|| format!("in {}", dir.join(STATE_FILE).display()))?;
        }
        Ok(Emulation { dir, state })
    }

    fn save(&self) -> Result<()> {
        files::write_toml(&self.dir.join(STATE_FILE), &self.state, Visibility::Public)?;
        Ok(())
    }

    /// The dashboard password `up` generated (mode 0600).
    pub fn dashboard_password_path(&self) -> PathBuf {
        self.dir.join("dashboard-password")
    }

    pub fn admin_credential_path(&self) -> PathBuf {
        self.dir.join(AdminCredential::FILE_NAME)
    }

    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn node(&self, name: &str) -> Result<&EmulatedNode> {
        self.state
            .nodes
            .iter()
            .find(|node| node.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .state
                    .nodes
                    .iter()
                    .map(|node| node.name.as_str())
                    .collect();
                anyhow!(
                    "no emulated node named {name:?}; the nodes are {}",
                    names.join(", ")
                )
            })
    }

    pub fn process(&self, name: &str) -> Option<AgentProcess> {
        process::agent_process(&self.node_dir(name))
    }

    /// Names and addresses of the nodes whose agents are running (not stopped or exited):
    /// the ones that can answer.
    pub fn answering_nodes(&self) -> Vec<(String, SocketAddr)> {
        self.state
            .nodes
            .iter()
            .filter(|node| {
                self.process(&node.name)
                    .is_some_and(|process| process.state == ProcessState::Running)
            })
            .map(|node| (node.name.clone(), node.addr))
            .collect()
    }

    fn all_names(&self) -> Vec<String> {
        self.state
            .nodes
            .iter()
            .map(|node| node.name.clone())
            .collect()
    }
}

/// Starts the agent of `name` and waits until it answers RPC.
async fn start_node(
    emulation: &Emulation,
    client: &ClusterClient,
    node: &EmulatedNode,
) -> Result<()> {
    let data_dir = emulation.node_dir(&node.name);
    // In network-namespace mode the node has an address of its own: default ports.
    let own_address = emulation.state.netns.as_ref().map(|_| node.addr.ip());
    if let Some(network) = &emulation.state.netns {
        network.ensure_node(&node.name, node.addr.ip())?;
    }
    ensure_metrics_address(&data_dir, own_address)?;
    ensure_api_address(&data_dir, own_address)?;
    process::spawn_agent(&data_dir)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer: Result<bramble_cluster::service::AgentInfo> =
            client.call_at(node.addr, "cluster.info", &()).await;
        if answer.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the agent of {} did not answer on {} within 20 s; its log ends with:\n{}",
                node.name,
                node.addr,
                process::log_tail(&data_dir, 10)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Gives an emulated node its own `/metrics` port in its `monitor.toml` if it has none:
/// every emulated node shares 127.0.0.1, so the default port (9101) would fit only one.
/// The port is taken below the ephemeral range, as the RPC ports are.
fn ensure_metrics_address(data_dir: &Path, own_address: Option<IpAddr>) -> Result<SocketAddr> {
    let mut settings = MonitorSettings::load(data_dir)?;
    if let Some(address) = settings.metrics_listen {
        return Ok(address);
    }
    let address = match own_address {
        Some(ip) => Some(SocketAddr::new(
            ip,
            bramble_monitor::subsystem::DEFAULT_METRICS_PORT,
        )),
        None => ports::free_loopback_addresses(1)?.first().copied(),
    }
    .ok_or_else(|| anyhow!("no free port for /metrics"))?;
    settings.metrics_listen = Some(address);
    settings.save(data_dir)?;
    Ok(address)
}

/// The same for the HTTP API's port (`api.toml`; 9443 by default).
fn ensure_api_address(data_dir: &Path, own_address: Option<IpAddr>) -> Result<SocketAddr> {
    let mut settings = ApiSettings::load(data_dir)?;
    if let Some(address) = settings.listen {
        return Ok(address);
    }
    let address = match own_address {
        Some(ip) => Some(SocketAddr::new(ip, bramble_api::settings::DEFAULT_API_PORT)),
        None => ports::free_loopback_addresses(1)?.first().copied(),
    }
    .ok_or_else(|| anyhow!("no free port for the HTTP API"))?;
    settings.listen = Some(address);
    settings.save(data_dir)?;
    Ok(address)
}

/// Where a node serves the HTTP API, if it is on there.
pub fn api_url(data_dir: &Path) -> Option<String> {
    let settings = ApiSettings::load(data_dir).ok()?;
    if !settings.enabled {
        return None;
    }
    settings
        .listen
        .map(|address| format!("https://{address}/api/v1"))
}

/// Where a node serves `/metrics`, if monitoring is on there.
pub fn metrics_url(data_dir: &Path) -> Option<String> {
    let settings = MonitorSettings::load(data_dir).ok()?;
    if !settings.enabled {
        return None;
    }
    settings
        .metrics_listen
        .map(|address| format!("http://{address}/metrics"))
}

/// `bramble up`.
pub async fn up(global: &GlobalOptions, args: &UpArgs) -> Result<()> {
    let started = Instant::now();
    let dir = absolute(global.dir.as_deref().unwrap_or(Path::new(DEFAULT_DIR)))?;
    let wanted = usize::from(args.nodes);
    let mut emulation = match Emulation::find(global)? {
        Some(existing) => existing,
        None => {
            files::create_private_dir(&dir)?;
            Emulation {
                dir: dir.clone(),
                state: EmulationState::default(),
            }
        }
    };
    let existing = emulation.state.nodes.len();
    // `--netns`: the switch was built before the runtime started (`netns::enter_for_command`).
    if args.netns && existing == 0 {
        emulation.state.netns = Some(netns::NetworkState::plan(&dir));
    }
    if emulation.state.netns.is_some() && wanted > netns::MAX_NODES {
        bail!(
            "network-namespace mode has room for {} nodes in its /24",
            netns::MAX_NODES
        );
    }
    let stopped: Vec<EmulatedNode> = emulation
        .state
        .nodes
        .iter()
        .filter(|node| emulation.process(&node.name).is_none())
        .cloned()
        .collect();
    // The board every node emulates (`--profile`): settled, and checked enforceable, before
    // anything starts.
    match profile::settle(
        emulation.state.profile,
        args.profile,
        stopped.len() < existing,
        &emulation.dir,
    ) {
        Ok(settled) if settled != emulation.state.profile => {
            emulation.state.profile = settled;
            if existing > 0 {
                emulation.save()?;
            }
        }
        Ok(_) => {}
        Err(error) => {
            if existing == 0 {
                // The directory made above, still empty.
                let _ = std::fs::remove_dir(&emulation.dir);
            }
            return Err(error);
        }
    }
    if existing > 0 && stopped.is_empty() && existing >= wanted {
        if args.output.json {
            return status(global, &JsonFlag { json: true }).await;
        }
        println!(
            "The emulated cluster in {} is already running ({existing} nodes); nothing to do.",
            emulation.dir.display()
        );
        status(global, &JsonFlag { json: false }).await?;
        return Ok(());
    }
    let new_count = wanted.saturating_sub(existing);
    let bar = crate::output::progress_bar((stopped.len() + new_count + 1) as u64, args.output.json);

    let mut stats_pages: Vec<EmulatedNode> = Vec::new();
    // Create the first node (a new cluster) if there is none yet.
    let addresses: Vec<SocketAddr> = match &emulation.state.netns {
        Some(network) => (0..new_count)
            .map(|index| network.node_address(existing + index + 1))
            .collect::<Result<_>>()?,
        None => ports::free_loopback_addresses(new_count)?,
    };
    // In network-namespace mode each node serves on its own address, default ports.
    let netns_mode = emulation.state.netns.is_some();
    let own_address = move |node: &EmulatedNode| netns_mode.then(|| node.addr.ip());
    let mut new_nodes: Vec<EmulatedNode> = (0..new_count)
        .map(|index| EmulatedNode {
            name: format!("n{}", existing + index + 1),
            addr: addresses[index],
        })
        .collect();
    if existing == 0 {
        let first = new_nodes.remove(0);
        bar.set_message(format!("creating the cluster on {}", first.name));
        let (node_dir, _token, admin) = NodeDir::init(
            &emulation.node_dir(&first.name),
            InitOptions {
                name: first.name.clone(),
                listen: first.addr,
                advertise: Some(first.addr),
                roles: emulated_roles(&first.name, wanted),
                membership: MembershipSettings::default(),
            },
        )?;
        drop(node_dir);
        recipe::prepare_store_node(&emulation.node_dir(&first.name), own_address(&first))?;
        if !args.bare && is_balancer_node(&first.name, wanted) {
            let page = recipe::prepare_lb_node(
                &emulation.dir,
                &emulation.node_dir(&first.name),
                own_address(&first),
            )?;
            stats_pages.push(EmulatedNode {
                name: first.name.clone(),
                addr: page,
            });
        }
        MetaSettings {
            bootstrap: true,
            voter_grace_secs: args.voter_grace_secs,
            ..MetaSettings::default()
        }
        .save(&emulation.node_dir(&first.name))?;
        admin.save(&emulation.admin_credential_path())?;
        emulation.state.nodes.push(first);
        emulation.save()?;
    }
    let client = emulation.client(global)?;

    // Start what exists but is not running.
    let mut to_start: Vec<EmulatedNode> = stopped;
    if existing == 0 {
        to_start.push(emulation.state.nodes[0].clone());
    }
    for node in &to_start {
        bar.set_message(format!("starting {}", node.name));
        start_node(&emulation, &client, node).await?;
        bar.inc(1);
    }

    // Join and start the new nodes through members that are up.
    if !new_nodes.is_empty() {
        let first_dir = emulation.node_dir(&emulation.state.nodes[0].name);
        let token = NodeDir::open(&first_dir)?.join_token()?;
        for (index, node) in new_nodes.iter().enumerate() {
            bar.set_message(format!("joining {}", node.name));
            let members = emulation.answering_nodes();
            let (_, member) = members
                .get(index % members.len().max(1))
                .cloned()
                .ok_or_else(|| anyhow!("no member of the cluster is running to join through"))?;
            join(
                member,
                &token,
                &emulation.node_dir(&node.name),
                JoinOptions {
                    name: node.name.clone(),
                    listen: node.addr,
                    advertise: Some(node.addr),
                    roles: emulated_roles(&node.name, wanted),
                    membership: MembershipSettings::default(),
                },
            )
            .await
            .with_context(|| format!("joining {} through {member}", node.name))?;
            MetaSettings {
                voter_grace_secs: args.voter_grace_secs,
                ..MetaSettings::default()
            }
            .save(&emulation.node_dir(&node.name))?;
            recipe::prepare_store_node(&emulation.node_dir(&node.name), own_address(node))?;
            if !args.bare && existing == 0 && is_balancer_node(&node.name, wanted) {
                let page = recipe::prepare_lb_node(
                    &emulation.dir,
                    &emulation.node_dir(&node.name),
                    own_address(node),
                )?;
                stats_pages.push(EmulatedNode {
                    name: node.name.clone(),
                    addr: page,
                });
            }
            emulation.state.nodes.push(node.clone());
            emulation.save()?;
            start_node(&emulation, &client, node).await?;
            bar.inc(1);
        }
        // Commands in <dir> may reach any node with the admin credential.
        let mut admin = AdminCredential::load(&emulation.admin_credential_path())?;
        admin.agents = emulation.state.nodes.iter().map(|node| node.addr).collect();
        admin.save(&emulation.admin_credential_path())?;
    }

    // Wait until every node sees every node alive.
    bar.set_message("waiting until every node sees every other alive");
    let names = emulation.all_names();
    let observers = emulation.answering_nodes();
    let converged_bar = bar.clone();
    let result = watch::wait_for_views(
        client.rpc(),
        observers,
        watch::all_alive(names.clone()),
        Instant::now(),
        Duration::from_secs(args.timeout),
        &move |agreed, total| {
            converged_bar.set_message(format!(
                "{agreed}/{total} nodes see all {} alive",
                names.len()
            ))
        },
    )
    .await;
    bar.finish_and_clear();
    result.context("the cluster did not form")?;
    let formed = started.elapsed();
    let catalog = wait_for_catalog(
        &client,
        emulation.state.nodes.len(),
        Duration::from_secs(args.timeout),
    )
    .await
    .context("the catalog did not form")?;
    // The dashboard's password: generated for a new cluster (there is no default one).
    let dashboard_password = emulation.dashboard_password_path();
    if existing == 0 || !dashboard_password.exists() {
        let password = bramble_api::dashboard::password::generate()?;
        crate::commands::api::set_dashboard_password(&client, &password).await?;
        files::write_atomic(
            &dashboard_password,
            password.as_bytes(),
            Visibility::Private,
        )?;
    }
    // The HA website: set up on a new cluster, restarted with an existing one.
    if existing == 0 && !args.bare {
        let lb_nodes: Vec<String> = emulation
            .state
            .nodes
            .iter()
            .filter(|node| is_balancer_node(&node.name, wanted))
            .map(|node| node.name.clone())
            .collect();
        recipe::set_up(&mut emulation, &client, &lb_nodes, stats_pages)
            .await
            .context("setting up the HA website demo (use --bare to skip it)")?;
    } else if let Some(demo) = &emulation.state.demo {
        // The agents start the service's replicas again from their placements.
        recipe::wait_for_site(&emulation, &client, demo).await?;
    }
    // Network-namespace mode: the website and the dashboard forwarded to host loopback.
    if emulation.state.netns.is_some() {
        // The board profile's Ethernet rate on every node's cable (`tc tbf`).
        let rate_mbit = emulation.state.profile.and_then(|profile| {
            profile
                .board
                .profile()
                .network_bits_per_second
                .map(|bits| u32::try_from(bits / 1_000_000).unwrap_or(u32::MAX))
        });
        for name in emulation.all_names() {
            netns::shape(&mut emulation, &name, rate_mbit)?;
        }
        netns::start_forwarder(&mut emulation)
            .await
            .context("forwarding the website and dashboard to the host")?;
    }

    if args.output.json {
        let nodes: Vec<serde_json::Value> = emulation
            .state
            .nodes
            .iter()
            .map(|node| {
                serde_json::json!({
                    "name": node.name,
                    "addr": node.addr,
                    "pid": emulation.process(&node.name).map(|process| process.pid),
                    "data_dir": emulation.node_dir(&node.name),
                    "metrics": metrics_url(&emulation.node_dir(&node.name)),
                    "api": api_url(&emulation.node_dir(&node.name)),
                })
            })
            .collect();
        output::print_json(&serde_json::json!({
            "dir": emulation.dir,
            "nodes": nodes,
            "formed_seconds": formed.as_secs_f64(),
            "catalog_leader": catalog.leader,
            "catalog_voters": catalog.members.iter().filter(|member| member.voter).count(),
            "demo": emulation.state.demo,
            "profile": emulation.state.profile.as_ref().map(profile::ProfileState::json),
            "netns": netns::status_json(&emulation),
            "admin_credential": emulation.admin_credential_path(),
            "dashboard_password": emulation.dashboard_password_path(),
        }))?;
        return Ok(());
    }
    println!(
        "Bramble is up: {} nodes in {}, every node sees every other alive ({:.2} s).\n",
        emulation.state.nodes.len(),
        emulation.dir.display(),
        formed.as_secs_f64()
    );
    let mut table = output::table(&["NODE", "PID", "ADDRESS", "METRICS", "DATA DIR"]);
    for node in &emulation.state.nodes {
        table.add_row(vec![
            node.name.clone(),
            emulation
                .process(&node.name)
                .map(|process| process.pid.to_string())
                .unwrap_or_else(|| "-".into()),
            node.addr.to_string(),
            metrics_url(&emulation.node_dir(&node.name)).unwrap_or_else(|| "-".into()),
            emulation.node_dir(&node.name).display().to_string(),
        ]);
    }
    println!("{table}\n");
    if let Some(profile) = &emulation.state.profile {
        println!("Board profile: {}.", profile.describe());
    }
    let dir_flag = if global.dir.is_some() {
        format!(" --dir {}", emulation.dir.display())
    } else {
        String::new()
    };
    if let Some(demo) = &emulation.state.demo {
        for line in recipe::describe(&emulation, demo) {
            println!("{line}");
        }
    }
    if let Some(network) = &emulation.state.netns {
        for line in network.describe(&emulation.dir) {
            println!("{line}");
        }
    }
    println!(
        "Catalog (Raft): leader {}, {} voters.",
        catalog.leader.as_deref().unwrap_or("-"),
        catalog.members.iter().filter(|member| member.voter).count()
    );
    println!(
        "Admin credential: {} (mode 0600)",
        emulation.admin_credential_path().display()
    );
    if let Some(first) = emulation.state.nodes.first()
        && let Some(url) = api_url(&emulation.node_dir(&first.name))
    {
        let page = url.trim_end_matches("api/v1");
        println!(
            "Dashboard on every node ({page} on {}): password in {} (mode 0600); `bramble dashboard` lists the URLs.",
            first.name,
            emulation.dashboard_password_path().display()
        );
        println!(
            "HTTP API on every node ({url} on {}): `bramble token create me`, then `bramble api` shows how to call it.",
            first.name
        );
    }
    println!("Try:");
    println!("  bramble nodes{dir_flag}                the member table (any node answers)");
    println!(
        "  bramble chaos kill n2{dir_flag}        power-cut a node; times how fast the others notice"
    );
    println!("  bramble chaos restart n2{dir_flag}     bring it back");
    println!(
        "  bramble pi --samples 1e9{dir_flag}     recipe 3: pi by Monte Carlo over the cluster"
    );
    if emulation.state.demo.is_some() {
        println!(
            "  bramble chaos stop web-0{dir_flag}     hang a web server: the balancer routes around it, its node replaces it"
        );
    }
    println!("  bramble metrics n1{dir_flag}           a node's live figures (--history 1h|24h)");
    println!("  bramble status{dir_flag}               processes, memory and CPU");
    println!("  bramble down{dir_flag}                 stop the cluster (bramble up resumes it)");
    Ok(())
}

/// Roles of an emulated node: n2 and n3 run the load balancers (the recipe's lb1 and lb2;
/// n1 starts as the catalog's leader, so losing a balancer does not also cost a Raft
/// election). Smaller clusters put them on the nodes they have.
fn is_balancer_node(name: &str, nodes: usize) -> bool {
    !emulated_roles(name, nodes).is_empty()
}

fn emulated_roles(name: &str, nodes: usize) -> Vec<String> {
    let balancer_nodes: &[&str] = match nodes {
        0 | 1 => &["n1"],
        2 => &["n1", "n2"],
        _ => &["n2", "n3"],
    };
    if balancer_nodes.contains(&name) {
        vec![bramble_lb::subsystem::LB_ROLE.to_string()]
    } else {
        Vec::new()
    }
}

/// Waits until the catalog has a leader and as many voters as the cluster's size calls
/// for (the leader promotes learners as they join).
async fn wait_for_catalog(
    client: &ClusterClient,
    nodes: usize,
    timeout: Duration,
) -> Result<ClusterStatus> {
    let deadline = Instant::now() + timeout;
    let wanted = bramble_meta::node::desired_voters(nodes);
    loop {
        let answer = client
            .call_any::<_, ClusterStatus>(METHOD_STATUS, &StatusRequest { forwarded: false })
            .await;
        if let Ok((_, status)) = &answer
            && status.leader.is_some()
            && status.members.iter().filter(|member| member.voter).count() >= wanted
        {
            return Ok(status.clone());
        }
        if Instant::now() > deadline {
            bail!("no leader with {wanted} voters within {timeout:?} (last answer: {answer:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `bramble down`.
pub async fn down(global: &GlobalOptions, args: &DownArgs) -> Result<()> {
    let mut emulation = Emulation::require(global)?;
    let bar = crate::output::progress_bar(emulation.state.nodes.len() as u64, false);
    let mut stopped = 0;
    for node in &emulation.state.nodes {
        bar.set_message(format!("stopping {}", node.name));
        let data_dir = emulation.node_dir(&node.name);
        if process::agent_process(&data_dir).is_some() {
            process::stop_agent(&data_dir, Duration::from_secs(5)).await?;
            stopped += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Network-namespace mode: the namespaces, cables and bridge go with the agents (`up`
    // makes them again), and with them every partition and slowdown.
    if emulation.state.netns.is_some() {
        let removed = netns::tear_down(&mut emulation)?;
        emulation.save()?;
        if !removed.is_empty() {
            println!("Removed the network namespaces {}.", removed.join(", "));
        }
    }
    // The board profile's cgroups (`up --profile`) go with the agents: the next start
    // writes them again from cluster.toml.
    if emulation.state.profile.is_some()
        && let Ok(admin) = AdminCredential::load(&emulation.admin_credential_path())
    {
        for node in &emulation.state.nodes {
            profile::remove_node_cgroups(&admin.cluster_id, &node.name);
        }
    }
    // Each agent stopped its service replicas on the way out (the demo's web servers
    // among them).
    if let Some(advice) = emulation
        .state
        .demo
        .as_ref()
        .and_then(|demo| demo.legacy_advice(&emulation.dir))
    {
        eprintln!("warning: {advice}");
    }
    println!(
        "Stopped {stopped} agent(s) of the emulated cluster in {}.",
        emulation.dir.display()
    );
    if args.purge {
        if let Some(demo) = &emulation.state.demo {
            recipe::release_vip_claim(demo.site, &emulation.dir);
        }
        // The scratch directories of the nodes' programs (replicas, tasks, launches) live
        // in the system's temp directory. A stopping agent removes its own, a restarted
        // one its earlier run's; a node killed and never restarted leaves them behind.
        if let Ok(admin) = AdminCredential::load(&emulation.admin_credential_path()) {
            for node in &emulation.state.nodes {
                bramble_compute::process::remove_stale_scratch(&admin.cluster_id, &node.name, "");
            }
        }
        std::fs::remove_dir_all(&emulation.dir)
            .with_context(|| format!("removing {}", emulation.dir.display()))?;
        println!("Removed {}.", emulation.dir.display());
    } else {
        println!("Its data is kept: `bramble up` starts it again.");
    }
    Ok(())
}

#[derive(Serialize)]
struct StatusRow {
    name: String,
    pid: Option<u32>,
    process: ProcessState,
    addr: SocketAddr,
    state: Option<String>,
    /// leader, voter or learner in the Raft catalog.
    catalog_role: Option<String>,
    rss_kib: Option<u64>,
    cpu_percent_average: Option<f64>,
    /// Where it serves `/metrics`.
    metrics: Option<String>,
    /// Where it serves the HTTP API.
    api: Option<String>,
    data_dir: PathBuf,
}

/// `bramble status`.
pub async fn status(global: &GlobalOptions, flags: &JsonFlag) -> Result<()> {
    let emulation = Emulation::require(global)?;
    let client = emulation.client(global)?;
    let membership: Option<Vec<NodeView>> = match emulation.answering_nodes().first() {
        Some(_) => client
            .call_any::<_, Vec<NodeView>>("cluster.nodes", &())
            .await
            .ok()
            .map(|(_, view)| view),
        None => None,
    };
    // The catalog's roles (leader, voter, learner), if a leader answers.
    let catalog: Option<ClusterStatus> = match membership {
        Some(_) => client
            .call_any::<_, ClusterStatus>(METHOD_STATUS, &StatusRequest { forwarded: false })
            .await
            .ok()
            .map(|(_, status)| status),
        None => None,
    };
    let catalog_role = |name: &str| -> Option<String> {
        let catalog = catalog.as_ref()?;
        let member = catalog.members.iter().find(|member| member.name == name)?;
        Some(if catalog.leader.as_deref() == Some(name) {
            "leader".to_string()
        } else if member.voter {
            "voter".to_string()
        } else {
            "learner".to_string()
        })
    };
    let rows: Vec<StatusRow> = emulation
        .state
        .nodes
        .iter()
        .map(|node| {
            let process = emulation.process(&node.name);
            StatusRow {
                name: node.name.clone(),
                pid: process.as_ref().map(|process| process.pid),
                process: process
                    .as_ref()
                    .map(|process| process.state)
                    .unwrap_or(ProcessState::Exited),
                addr: node.addr,
                state: membership.as_ref().and_then(|view| {
                    view.iter()
                        .find(|member| member.name == node.name)
                        .map(|member| member.state.as_str().to_string())
                }),
                catalog_role: catalog_role(&node.name),
                rss_kib: process.as_ref().map(|process| process.rss_kib),
                cpu_percent_average: process.as_ref().map(|process| process.cpu_percent_average),
                metrics: metrics_url(&emulation.node_dir(&node.name)),
                api: api_url(&emulation.node_dir(&node.name)),
                data_dir: emulation.node_dir(&node.name),
            }
        })
        .collect();
    if flags.json {
        return output::print_json(&serde_json::json!({
            "dir": emulation.dir,
            "nodes": rows,
            "demo": emulation.state.demo,
            "profile": emulation.state.profile.as_ref().map(profile::ProfileState::json),
            "netns": netns::status_json(&emulation),
        }));
    }
    let mut table = output::table(&[
        "NODE",
        "PID",
        "PROCESS",
        "ADDRESS",
        "STATE",
        "CATALOG",
        "RSS",
        "CPU (avg)",
        "METRICS",
        "DATA DIR",
    ]);
    for row in &rows {
        table.add_row(vec![
            row.name.clone(),
            row.pid
                .map(|pid| pid.to_string())
                .unwrap_or_else(|| "-".into()),
            row.process.as_str().to_string(),
            row.addr.to_string(),
            row.state.clone().unwrap_or_else(|| "?".into()),
            row.catalog_role.clone().unwrap_or_else(|| "-".into()),
            row.rss_kib.map(output::kib).unwrap_or_else(|| "-".into()),
            row.cpu_percent_average
                .map(|cpu| format!("{cpu:.2} %"))
                .unwrap_or_else(|| "-".into()),
            row.metrics.clone().unwrap_or_else(|| "-".into()),
            row.data_dir.display().to_string(),
        ]);
    }
    println!("Emulated cluster in {}", emulation.dir.display());
    if let Some(profile) = &emulation.state.profile {
        println!("Board profile: {}.", profile.describe());
    }
    println!("{table}");
    if let Some(network) = &emulation.state.netns {
        for line in network.describe(&emulation.dir) {
            println!("{line}");
        }
    }
    if let Some(demo) = &emulation.state.demo {
        if let Some(service) = &demo.service
            && membership.is_some()
        {
            match client
                .call_any::<_, PsAnswer>(services::METHOD_PS, service)
                .await
            {
                Ok((_, answer)) => {
                    for line in recipe::describe_replicas(&answer) {
                        println!("{line}");
                    }
                }
                Err(error) => println!("service {service}: {error:#}"),
            }
        }
        if let Some(advice) = demo.legacy_advice(&emulation.dir) {
            println!("Note: {advice}");
        }
        for line in recipe::describe(&emulation, demo) {
            println!("{line}");
        }
    }
    Ok(())
}
