//! The cookbook's HA website (recipe 1), set up by `bramble up`: two demo web servers
//! (web1, web2), the balancer `webfarm` on a virtual IP held by one of the two `lb` nodes,
//! and a stats page on each `lb` node behind a generated password (no default password).
//! `bramble up --bare` skips all of it.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bramble_lb::config::{BalancerSpec, Limits, Sticky, Timeouts, VipSpec};
use bramble_lb::stats::StoredPassword;
use bramble_lb::subsystem::LbSettings;
use bramble_meta::types::{Command as CatalogCommand, CommandResult};
use bramble_util::files::{self, Visibility};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{EmulatedNode, Emulation, ports};
use crate::client::ClusterClient;
use crate::process;

pub const BALANCER: &str = "webfarm";
const STATS_USER: &str = "admin";
/// The recipe's VIP, on loopback; another 127.0.2.x address if it is taken.
const PREFERRED_VIP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 2, 100)), 8080);

/// What `up` set up, kept in `cluster.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoState {
    /// The website's address (the balancer's VIP).
    pub site: SocketAddr,
    pub webs: Vec<EmulatedNode>,
    /// Each `lb` node's stats page.
    pub stats: Vec<EmulatedNode>,
    /// The storage volume of recipe 2 and how it is laid out (clusters made before
    /// volumes existed have none).
    #[serde(default)]
    pub volume: Option<String>,
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
pub fn prepare_store_node(node_dir: &Path) -> Result<SocketAddr> {
    let path = node_dir.join("store.toml");
    if path.exists() {
        let settings = bramble_store::s3::StoreSettings::load(node_dir)?;
        if let Some(listen) = settings.s3_listen {
            return Ok(listen);
        }
    }
    let listen = ports::free_loopback_addresses(1)?[0];
    files::write_toml(
        &path,
        &bramble_store::s3::StoreSettings {
            s3_listen: Some(listen),
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
pub fn prepare_lb_node(dir: &Path, node_dir: &Path) -> Result<SocketAddr> {
    let listen = ports::free_loopback_addresses(1)?[0];
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

fn web_dir(emulation: &Emulation, name: &str) -> PathBuf {
    emulation.dir.join(name)
}

/// The pid of a demo web server started by `up`, if it still runs.
pub fn web_process(emulation: &Emulation, name: &str) -> Option<u32> {
    let pid: u32 = files::read_small_text(&web_dir(emulation, name).join("demo-web.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let arguments: Vec<&[u8]> = command_line.split(|byte| *byte == 0).collect();
    let is_ours =
        arguments.contains(&b"demo-web".as_slice()) && arguments.contains(&name.as_bytes());
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let zombie = state
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    (is_ours && !zombie).then_some(pid)
}

fn start_web(emulation: &Emulation, web: &EmulatedNode) -> Result<()> {
    let dir = web_dir(emulation, &web.name);
    files::create_private_dir(&dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("demo-web.log"))?;
    let mut command =
        Command::new(std::env::current_exe().context("finding the bramble executable")?);
    command
        .args([
            "demo-web",
            "--name",
            &web.name,
            "--port",
            &web.addr.port().to_string(),
            "--bind",
            &web.addr.ip().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    process::detach(&mut command);
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", web.name))?;
    files::write_atomic(
        &dir.join("demo-web.pid"),
        child.id().to_string().as_bytes(),
        Visibility::Public,
    )?;
    Ok(())
}

/// Starts one demo web server of the recipe, by name, if it is not running.
pub fn start_web_named(emulation: &Emulation, name: &str) -> Result<()> {
    let demo = emulation
        .state
        .demo
        .as_ref()
        .context("this emulated cluster has no demo (it was started with --bare)")?;
    let web = demo
        .webs
        .iter()
        .find(|web| web.name == name)
        .with_context(|| format!("the demo has no web server named {name}"))?;
    if web_process(emulation, name).is_none() {
        start_web(emulation, web)?;
    }
    Ok(())
}

/// Starts the demo web servers that are not running.
pub fn start_stopped_webs(emulation: &Emulation) -> Result<()> {
    if let Some(demo) = &emulation.state.demo {
        for web in &demo.webs {
            if web_process(emulation, &web.name).is_none() {
                start_web(emulation, web)?;
            }
        }
    }
    Ok(())
}

/// Stops the demo web servers (SIGTERM, then SIGKILL).
pub async fn stop_webs(emulation: &Emulation) -> Result<usize> {
    let mut stopped = 0;
    if let Some(demo) = &emulation.state.demo {
        for web in &demo.webs {
            if let Some(pid) = web_process(emulation, &web.name) {
                process::send_signal(pid, libc::SIGTERM)?;
                let deadline = Instant::now() + Duration::from_secs(5);
                while web_process(emulation, &web.name).is_some() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if let Some(pid) = web_process(emulation, &web.name) {
                    process::send_signal(pid, libc::SIGKILL)?;
                }
                stopped += 1;
            }
        }
    }
    Ok(stopped)
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

/// Creates the recipe on a freshly formed cluster: web servers, the balancer, and waits
/// until the site answers through the VIP.
pub async fn set_up(
    emulation: &mut Emulation,
    client: &ClusterClient,
    lb_nodes: &[String],
    stats: Vec<EmulatedNode>,
) -> Result<DemoState> {
    let web_addresses = ports::free_loopback_addresses(2)?;
    let webs: Vec<EmulatedNode> = ["web1", "web2"]
        .iter()
        .zip(web_addresses)
        .map(|(name, addr)| EmulatedNode {
            name: name.to_string(),
            addr,
        })
        .collect();
    let site = choose_vip(&emulation.dir)?;
    let mut demo = DemoState {
        site,
        webs: webs.clone(),
        stats,
        volume: None,
    };
    emulation.state.demo = Some(demo.clone());
    emulation.save()?;
    start_stopped_webs(emulation)?;
    let mut spec = BalancerSpec {
        name: BALANCER.to_string(),
        listen: site,
        mode: Default::default(),
        balance: Default::default(),
        backends: webs
            .iter()
            .map(|web| format!("{}={}", web.name, web.addr).parse())
            .collect::<Result<_, _>>()?,
        services: Vec::new(),
        check: Some("HEAD /lb-check.txt".parse()?),
        sticky: Some(Sticky::PrefixCookie("JSESSIONID".to_string())),
        timeouts: Timeouts::default(),
        limits: Limits::default(),
        slow_start_secs: 10,
        vip: VipSpec {
            preempt: true,
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
    wait_for_site(site).await?;
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

/// Waits until the website answers through its VIP (the lease is taken within a second
/// or two of the balancer nodes starting).
pub async fn wait_for_site(site: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !site_answers(site).await {
        if Instant::now() > deadline {
            bail!("the demo website did not answer on http://{site}/ within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Lines for people: where the site and the stats pages are.
pub fn describe(emulation: &Emulation, demo: &DemoState) -> Vec<String> {
    let mut lines = vec![format!(
        "Website (recipe 1): http://{}/ — web1 and web2 behind balancer {BALANCER} on a virtual IP (`bramble lb ls` shows the holder)",
        demo.site
    )];
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
