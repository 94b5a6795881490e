//! The cookbook's HA website (recipe 1), set up by `bramble up`: the recipe's two web
//! servers as the Bramble service `web` (two replicas of the agent's own `demo-web`,
//! supervised, health-checked and moved by the agents like any service), the balancer
//! `webfarm` in front of that service on a virtual IP held by one of the two `lb` nodes,
//! and a stats page on each `lb` node behind a generated password (no default password).
//! `bramble up --bare` skips all of it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bramble_compute::services::admin::{METHOD_CREATE, METHOD_PS, PsAnswer};
use bramble_compute::services::spec::{Constraint, HealthCheck, Probe, RestartPolicy, ServiceSpec};
use bramble_lb::config::{BalancerSpec, Limits, Sticky, Timeouts, VipSpec};
use bramble_lb::pool::BalancerStats;
use bramble_lb::stats::StoredPassword;
use bramble_lb::subsystem::LbSettings;
use bramble_meta::types::{Command as CatalogCommand, CommandResult};
use bramble_util::files::{self, Visibility};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{EmulatedNode, Emulation, ports};
use crate::client::ClusterClient;

pub const BALANCER: &str = "webfarm";
/// The service whose replicas are the website's web servers.
pub const SERVICE: &str = "web";
/// The recipe's two web servers.
const REPLICAS: u32 = 2;
/// What the balancer and the replicas' own health checks ask for (the recipe's
/// `touch lb-check.txt`).
const CHECK_PATH: &str = "/lb-check.txt";
const STATS_USER: &str = "admin";
/// The recipe's VIP, on loopback; another 127.0.2.x address if it is taken.
const PREFERRED_VIP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 2, 100)), 8080);
/// How long `up` waits for the website: the service's replicas placed, started and
/// passing the balancer's checks, the VIP taken.
const SITE_TIMEOUT: Duration = Duration::from_secs(60);

/// What `up` set up, kept in `cluster.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoState {
    /// The website's address (the balancer's VIP).
    pub site: SocketAddr,
    /// The service serving the site (none in clusters whose demo an earlier bramble made).
    #[serde(default)]
    pub service: Option<String>,
    /// Each `lb` node's stats page.
    pub stats: Vec<EmulatedNode>,
    /// The storage volume of recipe 2 and how it is laid out (clusters made before
    /// volumes existed have none).
    #[serde(default)]
    pub volume: Option<String>,
    /// The web servers an earlier bramble's emulator ran beside the agents (web1, web2,
    /// pid files under `<dir>/web1/`). Read only to say how to stop them: this emulator
    /// runs no web servers of its own, the service's replicas are the agents'.
    #[serde(default, rename = "webs", skip_serializing_if = "Vec::is_empty")]
    pub legacy_webs: Vec<EmulatedNode>,
}

impl DemoState {
    /// For a cluster whose demo an earlier bramble made (its web servers ran beside the
    /// agents): what to do about them.
    pub fn legacy_advice(&self, dir: &Path) -> Option<String> {
        if self.legacy_webs.is_empty() {
            return None;
        }
        let pid_files: Vec<String> = self
            .legacy_webs
            .iter()
            .map(|web| {
                dir.join(&web.name)
                    .join("demo-web.pid")
                    .display()
                    .to_string()
            })
            .collect();
        Some(format!(
            "this cluster's demo was made by an earlier bramble, whose emulator ran the web servers {} beside the agents; \
             stop them with `kill $(cat {})` and recreate the demo as a service with `bramble down --purge && bramble up`",
            self.legacy_webs
                .iter()
                .map(|web| web.name.as_str())
                .collect::<Vec<_>>()
                .join(" and "),
            pid_files.join(" ")
        ))
    }
}

/// The demo volume's name.
pub const VOLUME: &str = "vol0";

fn password_path(dir: &Path) -> PathBuf {
    dir.join("stats-password")
}

/// The stats password of this emulated cluster, generated (and stored 0600) on first use.
fn stats_password(dir: &Path) -> Result<String> {
    let path = password_path(dir);
    if path.exists() {
        return Ok(files::read_small_text(&path)?.trim().to_string());
    }
    let password = bramble_cluster::token::Secret::random().to_hex()[..20].to_string();
    files::write_atomic(&path, password.as_bytes(), Visibility::Private)?;
    Ok(password)
}

/// Gives a node an S3 endpoint on a free loopback port (`store.toml`) before its agent
/// first starts; a node that has one keeps it.
/// With `own_address` (network-namespace mode) it is the node's address and port 3900.
pub fn prepare_store_node(node_dir: &Path, own_address: Option<IpAddr>) -> Result<SocketAddr> {
    let path = node_dir.join("store.toml");
    if path.exists() {
        let settings = bramble_store::s3::StoreSettings::load(node_dir)?;
        if let Some(listen) = settings.s3_listen {
            return Ok(listen);
        }
    }
    let listen = match own_address {
        Some(ip) => SocketAddr::new(ip, super::netns::S3_PORT),
        None => ports::free_loopback_addresses(1)?[0],
    };
    files::write_toml(
        &path,
        &bramble_store::s3::StoreSettings {
            s3_listen: Some(listen),
            ..Default::default()
        },
        Visibility::Public,
    )?;
    Ok(listen)
}

/// The S3 endpoint of an emulated node, if it has one.
pub fn s3_endpoint(node_dir: &Path) -> Option<SocketAddr> {
    bramble_store::s3::StoreSettings::load(node_dir)
        .ok()
        .and_then(|settings| settings.s3_listen)
}

/// Writes an `lb` node's `lb.toml` (its stats page) before its agent first starts.
/// With `own_address` (network-namespace mode) it is the node's address and port 8404.
pub fn prepare_lb_node(
    dir: &Path,
    node_dir: &Path,
    own_address: Option<IpAddr>,
) -> Result<SocketAddr> {
    let listen = match own_address {
        Some(ip) => SocketAddr::new(ip, super::netns::STATS_PORT),
        None => ports::free_loopback_addresses(1)?[0],
    };
    let password = StoredPassword::hash(&stats_password(dir)?)?;
    LbSettings {
        stats_listen: Some(listen),
        stats_user: Some(STATS_USER.to_string()),
        stats_password_argon2id: password.phc().map(str::to_string),
        stats_password_sha256: None,
    }
    .save(node_dir)?;
    Ok(listen)
}

/// Where emulated clusters on this machine claim their VIPs: a free address is not
/// enough, since another `up` may have chosen it a moment ago and not bound it yet.
fn vip_claims_dir() -> PathBuf {
    std::env::temp_dir().join("bramble-emulator-vips")
}

/// The claim file of one VIP address (`127.0.2.100_8080`).
fn vip_claim_path(site: SocketAddr) -> PathBuf {
    vip_claims_dir().join(site.to_string().replace(':', "_"))
}

/// Claims `site` for the cluster in `dir` with a file created exclusively. A claim whose
/// cluster directory is gone (purged, or a finished test's) is stale and taken over.
fn claim_vip(site: SocketAddr, dir: &Path) -> Result<bool> {
    let claims = vip_claims_dir();
    std::fs::create_dir_all(&claims).with_context(|| format!("creating {}", claims.display()))?;
    let path = vip_claim_path(site);
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                use std::io::Write;
                file.write_all(dir.to_string_lossy().as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(true);
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = files::read_small_text(&path).unwrap_or_default();
                let owner = Path::new(owner.trim());
                if owner == dir {
                    return Ok(true);
                }
                if owner.as_os_str().is_empty() || owner.join("cluster.toml").exists() {
                    return Ok(false);
                }
                let _ = std::fs::remove_file(&path);
            }
            Err(error) => {
                return Err(error).with_context(|| format!("creating {}", path.display()));
            }
        }
    }
    Ok(false)
}

/// Gives up the VIP claim of the cluster in `dir` (after `down --purge`).
pub fn release_vip_claim(site: SocketAddr, dir: &Path) {
    let path = vip_claim_path(site);
    let owner = files::read_small_text(&path).unwrap_or_default();
    if Path::new(owner.trim()) == dir {
        let _ = std::fs::remove_file(path);
    }
}

/// The VIP: the recipe's address if free and unclaimed, else port 8080 on another
/// 127.0.2.x.
fn choose_vip(dir: &Path) -> Result<SocketAddr> {
    let candidates = std::iter::once(PREFERRED_VIP)
        .chain((101..=250u8).map(|host| SocketAddr::from((Ipv4Addr::new(127, 0, 2, host), 8080))));
    for site in candidates {
        if TcpListener::bind(site).is_ok() && claim_vip(site, dir)? {
            return Ok(site);
        }
    }
    bail!("no free address for the VIP in 127.0.2.0/24")
}

/// GETs `/` from the site; true on a 200.
async fn site_answers(site: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(site).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: site\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 16];
        let read = stream.read(&mut head).await.ok()?;
        Some(head[..read].starts_with(b"HTTP/1.1 200") || head[..read].starts_with(b"HTTP/1.0 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Where the demo's replicas may run, and how many on one node: off the `lb` nodes when
/// enough other nodes remain for a replica to move to when its node dies (the default
/// five nodes: n1, n4 and n5), so that losing the VIP holder and losing a web server stay
/// two separate drills; anywhere on smaller clusters. One replica per node wherever there
/// are nodes enough, so one node's death costs one web server; on a one-node cluster
/// both run on it (their ports differ).
fn placement(nodes: &[String], lb_nodes: &[String]) -> (Vec<Constraint>, u32) {
    let others = nodes.iter().filter(|node| !lb_nodes.contains(node)).count();
    let (constraints, allowed) = if others > REPLICAS as usize {
        (
            lb_nodes
                .iter()
                .map(|node| Constraint::NotNode(node.clone()))
                .collect(),
            others,
        )
    } else {
        (Vec::new(), nodes.len())
    };
    let max_per_node = if allowed >= REPLICAS as usize { 1 } else { 0 };
    (constraints, max_per_node)
}

/// The service `web`: the recipe's web servers as supervised replicas of `demo-web`.
fn web_service(emulation: &Emulation, port: u16, lb_nodes: &[String]) -> Result<ServiceSpec> {
    let names: Vec<String> = emulation
        .state
        .nodes
        .iter()
        .map(|node| node.name.clone())
        .collect();
    let (constraints, max_per_node) = placement(&names, lb_nodes);
    // A replica must listen where the balancer dials it: its node's address and PORT.
    // Emulated nodes share one loopback address; 0.0.0.0 covers any other layout.
    let mut addresses = emulation.state.nodes.iter().map(|node| node.addr.ip());
    let first = addresses.next();
    let bind = match first {
        Some(ip) if addresses.all(|other| other == ip) => ip,
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let spec = ServiceSpec {
        name: SERVICE.to_string(),
        // The agent's own executable, named through the magic link rather than by its
        // path: the kernel resolves /proc/self/exe in the forked child, which is still the
        // agent's image, without walking the path's directories, so it runs as `nobody`
        // even when the binary sits under /root/.cargo/bin, and it is exactly the
        // supervising agent's version. The jobs' WebAssembly tasks start the same way;
        // a special program name in the supervisor would be a second spelling of this.
        program: "/proc/self/exe".to_string(),
        // Name, port and node come from the replica's environment (see `demo-web`).
        args: vec![
            "demo-web".to_string(),
            "--bind".to_string(),
            bind.to_string(),
        ],
        replicas: REPLICAS,
        port: Some(port),
        env: Vec::new(),
        restart: RestartPolicy::Always,
        max_per_node,
        constraints,
        user: None,
        stop_grace_ms: 10_000,
        // A check every 2 s (the `service create` default) from 0.5 s after a start (the
        // demo server answers at once; a replica joins the balancer on its first passed
        // check), 3 failures in a row restart the replica (a hung one: the balancer stops
        // sending it requests after its own 3 failed checks, its supervisor then replaces
        // it).
        health: Some(HealthCheck {
            probe: Probe::Http {
                path: CHECK_PATH.to_string(),
            },
            interval_ms: 2_000,
            timeout_ms: 1_000,
            retries: 3,
            start_period_ms: 500,
        }),
        cpus_millis: None,
        memory_bytes: None,
        module: None,
        update: Default::default(),
        previous: None,
        generation: 1,
        created_unix_ms: 0,
    };
    if let Err(error) = spec.validate() {
        bail!("the demo service is invalid: {error}");
    }
    Ok(spec)
}

/// Creates the recipe on a freshly formed cluster: the web service, the balancer in front
/// of it, and waits until both replicas answer through the VIP.
pub async fn set_up(
    emulation: &mut Emulation,
    client: &ClusterClient,
    lb_nodes: &[String],
    stats: Vec<EmulatedNode>,
) -> Result<DemoState> {
    // Network-namespace mode: the VIP is an address of the cluster's /24 on the holder's
    // eth0, announced by gratuitous ARP; on loopback, a 127.0.2.x only the holder binds.
    let (site, vip_interface) = match &emulation.state.netns {
        Some(network) => (
            SocketAddr::new(IpAddr::V4(network.vip()), super::netns::SITE_PORT),
            Some(super::netns::NODE_INTERFACE.to_string()),
        ),
        None => (choose_vip(&emulation.dir)?, None),
    };
    let mut demo = DemoState {
        site,
        service: Some(SERVICE.to_string()),
        stats,
        volume: None,
        legacy_webs: Vec::new(),
    };
    emulation.state.demo = Some(demo.clone());
    emulation.save()?;
    let port = ports::free_loopback_port_run(REPLICAS as u16)?;
    let service = web_service(emulation, port, lb_nodes)?;
    let (_, _created): (_, ServiceSpec) = client
        .call_any(METHOD_CREATE, &service)
        .await
        .context("creating the service web")?;
    let mut spec = BalancerSpec {
        name: BALANCER.to_string(),
        listen: site,
        mode: Default::default(),
        balance: Default::default(),
        backends: Vec::new(),
        // Every replica of the service, wherever it runs, is a backend (web-0, web-1).
        services: vec![SERVICE.to_string()],
        check: Some(format!("HEAD {CHECK_PATH}").parse()?),
        sticky: Some(Sticky::PrefixCookie("JSESSIONID".to_string())),
        timeouts: Timeouts::default(),
        limits: Limits::default(),
        slow_start_secs: 10,
        vip: VipSpec {
            preempt: true,
            interface: vip_interface,
            ..VipSpec::default()
        },
    };
    // The recipe's Keepalived priorities: 101 for lb1, 100 for lb2.
    for (index, node) in lb_nodes.iter().enumerate() {
        spec.vip
            .priorities
            .insert(node.clone(), 101u8.saturating_sub(index as u8));
    }
    spec.normalize_and_validate()?;
    let command = CatalogCommand::PutIfVersion {
        key: bramble_lb::keys::balancer_key(BALANCER),
        value: serde_json::to_vec(&spec)?,
        expected_version: 0,
    };
    match client.catalog_write(command).await? {
        CommandResult::Written { .. } | CommandResult::VersionMismatch { .. } => {}
        other => bail!("the demo balancer was not created: {other:?}"),
    }
    wait_for_site(emulation, client, &demo).await?;
    demo.volume = Some(create_volume(emulation, client).await?);
    emulation.state.demo = Some(demo.clone());
    emulation.save()?;
    Ok(demo)
}

/// Recipe 2's volume: `stripe 2 replica 2` over the first four nodes (replica 2 over two,
/// one copy on one node, on smaller clusters). Returns how it is laid out, for people.
async fn create_volume(emulation: &Emulation, client: &ClusterClient) -> Result<String> {
    use bramble_store::admin::{METHOD_VOLUME_CREATE, VolumeCreateRequest};
    use bramble_store::volume::{Brick, Layout};
    let names: Vec<String> = emulation
        .state
        .nodes
        .iter()
        .map(|node| node.name.clone())
        .collect();
    let (replica, count, stripe) = match names.len() {
        0 => bail!("the cluster has no node for the demo volume"),
        1 => (1, 1, 1),
        2 | 3 => (2, 2, 1),
        _ => (2, 4, 2),
    };
    let request = VolumeCreateRequest {
        name: VOLUME.to_string(),
        layout: Layout::Replicated { replica },
        bricks: names[..count]
            .iter()
            .map(|node| Brick {
                node: node.clone(),
                path: None,
            })
            .collect(),
        block_size: None,
        stripe: Some(stripe),
    };
    let (_, _spec): (_, bramble_store::volume::VolumeSpec) = client
        .call_any(METHOD_VOLUME_CREATE, &request)
        .await
        .context("creating the demo volume")?;
    Ok(format!(
        "{VOLUME} (stripe {stripe} replica {replica} over {})",
        names[..count].join(" ")
    ))
}

/// The balancers being served on the running nodes, with the node serving each: only
/// the VIP holder runs a balancer and its checks (the other `lb` nodes list it without
/// backends; nodes without the role answer an error).
pub async fn serving_balancers(
    emulation: &Emulation,
    client: &ClusterClient,
) -> Vec<(String, BalancerStats)> {
    let mut serving = Vec::new();
    for (name, address) in emulation.answering_nodes() {
        let Ok(list) = client
            .call_at::<_, Vec<BalancerStats>>(address, "lb.stats", &())
            .await
        else {
            continue;
        };
        serving.extend(
            list.into_iter()
                .filter(|stats| !stats.backends.is_empty())
                .map(|stats| (name.clone(), stats)),
        );
    }
    serving
}

/// Whether the demo balancer has every replica of the service as a backend that is up
/// and has passed a check (a new backend starts "up" before any check, as in HAProxy).
async fn every_replica_in_rotation(emulation: &Emulation, client: &ClusterClient) -> bool {
    let serving = serving_balancers(emulation, client).await;
    let Some((_, stats)) = serving.iter().find(|(_, stats)| stats.name == BALANCER) else {
        return false;
    };
    (0..REPLICAS).all(|index| {
        let name = format!("{SERVICE}-{index}");
        stats.backends.iter().any(|backend| {
            backend.name == name && backend.status == "up" && backend.last_check.starts_with("L7OK")
        })
    })
}

/// Waits until the website answers through its VIP and every web replica is in the
/// balancer's rotation: the reconciler places the replicas, their nodes start them, the
/// balancer follows the placements and checks them, and the VIP lease is taken, all
/// within seconds of the agents starting.
pub async fn wait_for_site(
    emulation: &Emulation,
    client: &ClusterClient,
    demo: &DemoState,
) -> Result<()> {
    if let Some(advice) = demo.legacy_advice(&emulation.dir) {
        bail!("{advice}");
    }
    let deadline = Instant::now() + SITE_TIMEOUT;
    loop {
        let answers = site_answers(demo.site).await;
        if answers && every_replica_in_rotation(emulation, client).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            let replicas = match client
                .call_any::<_, PsAnswer>(METHOD_PS, &SERVICE.to_string())
                .await
            {
                Ok((_, answer)) => describe_replicas(&answer).join("; "),
                Err(error) => format!("`service ps {SERVICE}` failed: {error:#}"),
            };
            if answers {
                bail!(
                    "the demo website answered on http://{}/, but not every replica of the service {SERVICE} was in {BALANCER}'s rotation within {} s (replicas: {replicas}; `bramble lb show {BALANCER}` shows the balancer's view)",
                    demo.site,
                    SITE_TIMEOUT.as_secs()
                );
            }
            bail!(
                "the demo website did not answer on http://{}/ within {} s (replicas of {SERVICE}: {replicas})",
                demo.site,
                SITE_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One line per replica of the web service: its balancer name, node, port and state.
pub fn describe_replicas(answer: &PsAnswer) -> Vec<String> {
    let mut lines: Vec<String> = answer
        .replicas
        .iter()
        .map(|replica| {
            let mut state = replica.state.clone();
            if let Some(pid) = replica.pid {
                state.push_str(&format!(", pid {pid}"));
            }
            if let Some(health) = &replica.health {
                state.push_str(&format!(", {health}"));
            }
            format!(
                "{}-{} on {} port {}: {state}",
                replica.service,
                replica.index,
                replica.node,
                replica
                    .port
                    .map(|port| port.to_string())
                    .unwrap_or_else(|| "-".to_string()),
            )
        })
        .collect();
    lines.extend(
        answer
            .pending
            .iter()
            .map(|(index, why)| format!("{}-{index}: pending ({why})", answer.spec.name)),
    );
    lines
}

/// Lines for people: where the site and the stats pages are.
pub fn describe(emulation: &Emulation, demo: &DemoState) -> Vec<String> {
    let mut lines = vec![match &demo.service {
        Some(service) => format!(
            "Website (recipe 1): http://{}/ — the service {service} ({REPLICAS} replicas of `bramble demo-web`: `bramble service ps {service}`) behind balancer {BALANCER} on a virtual IP (`bramble lb ls` shows the holder)",
            demo.site
        ),
        None => format!("Website (recipe 1): http://{}/", demo.site),
    }];
    for page in &demo.stats {
        lines.push(format!(
            "Stats page on {}: http://{}/ (user {STATS_USER})",
            page.name, page.addr
        ));
    }
    lines.push(format!(
        "Stats password: {} (mode 0600)",
        password_path(&emulation.dir).display()
    ));
    if let Some(volume) = &demo.volume {
        lines.push(format!(
            "Volume (recipe 2): {volume}: `bramble fs put FILE {VOLUME}:/`, `bramble volume status {VOLUME}`; as root: `bramble mount {VOLUME} /mnt/{VOLUME}`"
        ));
    }
    if let Some(first) = emulation.state.nodes.first()
        && let Some(endpoint) = s3_endpoint(&emulation.node_dir(&first.name))
    {
        lines.push(format!(
            "S3 endpoint on every node ({} on {}): make a key with `bramble s3 key create me`, then `aws --endpoint-url http://{endpoint} s3 ls s3://{VOLUME}/`",
            endpoint, first.name
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> Vec<String> {
        (1..=count).map(|index| format!("n{index}")).collect()
    }

    #[test]
    fn replicas_keep_off_the_lb_nodes_only_where_others_can_take_a_dead_node_s_replica() {
        let lb = vec!["n2".to_string(), "n3".to_string()];
        let (constraints, most) = placement(&names(5), &lb);
        assert_eq!(
            constraints,
            vec![
                Constraint::NotNode("n2".into()),
                Constraint::NotNode("n3".into())
            ]
        );
        assert_eq!(most, 1);
        // Three or four nodes: too few others, so anywhere, one per node.
        assert_eq!(placement(&names(3), &lb), (Vec::new(), 1));
        assert_eq!(placement(&names(4), &lb), (Vec::new(), 1));
        // Two nodes, both lb; one node: both replicas on it.
        let both = vec!["n1".to_string(), "n2".to_string()];
        assert_eq!(placement(&names(2), &both), (Vec::new(), 1));
        assert_eq!(placement(&names(1), &["n1".to_string()]), (Vec::new(), 0));
    }

    #[test]
    fn a_demo_an_earlier_bramble_made_is_read_and_explained() {
        let legacy: DemoState = toml::from_str(
            r#"
            site = "127.0.2.100:8080"
            stats = []
            webs = [{ name = "web1", addr = "127.0.0.1:20001" }, { name = "web2", addr = "127.0.0.1:20002" }]
            "#,
        )
        .expect("the earlier format still parses");
        let advice = legacy
            .legacy_advice(Path::new("/tmp/c"))
            .expect("advice for the legacy web servers");
        assert!(advice.contains("web1 and web2"), "{advice}");
        assert!(advice.contains("/tmp/c/web1/demo-web.pid"), "{advice}");
        let current = DemoState {
            legacy_webs: Vec::new(),
            service: Some(SERVICE.into()),
            ..legacy
        };
        assert!(current.legacy_advice(Path::new("/tmp/c")).is_none());
        let written = toml::to_string(&current).expect("serializes");
        assert!(!written.contains("webs"), "{written}");
    }
}
