//! Network-namespace mode of the emulator (`bramble up --netns`) and its network chaos
//! (`bramble chaos partition|heal|slow`).
//!
//! Every node gets its own network namespace (`<prefix>-n1`, ...) with one interface,
//! `eth0`, cabled by a veth pair to the port `p-<node>` of the bridge `br0` in a "switch"
//! namespace (`<prefix>-sw`). Addresses come from a private /24 that exists only inside
//! those namespaces: node k is `.k`, the demo's VIP `.200`, the switch's own address on
//! the bridge `.254`. Each agent listens on its node's address with the default ports,
//! so every node looks like a separate board, and the VIP really moves between
//! namespaces (added to the holder's `eth0`, announced by gratuitous ARP on the bridge).
//!
//! How the host reaches it: every CLI command about a `--netns` cluster enters the
//! switch namespace before its runtime starts (`enter_for_command`), so all its sockets
//! live on the bridge, like a laptop plugged into the cluster's switch; agents are
//! started from there into their own namespaces (`setns` in the child before exec, in
//! `process::spawn_agent`). For browsers on the host, `up` runs a small forwarder
//! (`bramble netns-forward`, in the host namespace) from loopback ports to the website's
//! VIP and to the dashboard.
//!
//! Chaos acts where a real switch would: partitions are nftables rules in the switch
//! namespace's bridge (`table bridge bramble`: frames from one group's ports to the
//! other's are dropped, every protocol), packet loss the same table's random drops,
//! delay and jitter `tc netem` on the node's `eth0` (needs the kernel's sch_netem), rates
//! `tc tbf` on both ends of the node's cable. The state is kept in `cluster.toml`, and
//! the rules are rebuilt from it as a whole each time, so `heal` and a re-created
//! switch never leave stale rules.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::{DEFAULT_DIR, Emulation, absolute};
use crate::cli::{
    ChaosAction, ChaosArgs, Cli, Command as CliCommand, GlobalOptions, NetnsDelayArgs,
};
use crate::output;

/// The node's interface, the VIP's interface in the demo balancer.
pub const NODE_INTERFACE: &str = "eth0";
const BRIDGE: &str = "br0";
const SWITCH: &str = "sw";
const NAMESPACE_DIR: &str = "/var/run/netns";
/// Nodes .1 to .199; .200 is the VIP, .254 the switch.
pub const MAX_NODES: usize = 199;
const VIP_HOST: u8 = 200;
const SWITCH_HOST: u8 = 254;
const NFT_TABLE: &str = "bramble";
/// The ports a board's services use by default (Garage's S3, HAProxy's stats page, the
/// website on 80).
pub const S3_PORT: u16 = 3900;
pub const STATS_PORT: u16 = 8404;
pub const SITE_PORT: u16 = 80;
/// Bounds of `chaos slow`.
const MAX_DELAY: Duration = Duration::from_secs(10);
const MIN_RATE_KBIT: u64 = 8;
const MAX_RATE_KBIT: u64 = 100_000_000;
/// How long one `ip`, `tc` or `nft` call may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// The network of a `--netns` cluster, kept in `cluster.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkState {
    /// Every namespace of this cluster starts with it (`bramble-1a2b3c4d`).
    pub prefix: String,
    /// The cluster's /24 (its `.0`).
    pub subnet: Ipv4Addr,
    /// Active partitions.
    #[serde(default)]
    pub partitions: Vec<Partition>,
    /// Active slowdowns, by node.
    #[serde(default)]
    pub slowdowns: BTreeMap<String, Slowdown>,
    /// Link rates by node (Mbit/s) set by board profiles: the node's cable, kept when
    /// `heal` removes the slowdowns.
    #[serde(default)]
    pub rates_mbit: BTreeMap<String, u32>,
    /// The forwarder's loopback ports on the host, when it runs.
    #[serde(default)]
    pub forwards: Vec<Forward>,
}

/// Two groups of nodes that cannot reach each other.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub a: Vec<String>,
    pub b: Vec<String>,
}

/// What `chaos slow` applies to a node's cable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Slowdown {
    #[serde(default)]
    pub delay_us: u64,
    #[serde(default)]
    pub jitter_us: u64,
    /// Lost packets in hundredths of a percent (1 % = 100), each direction.
    #[serde(default)]
    pub loss_basis_points: u32,
    #[serde(default)]
    pub rate_kbit: Option<u64>,
}

/// A loopback port on the host forwarded into the cluster's network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// What it is for: `website` or `dashboard`.
    pub name: String,
    pub listen: SocketAddr,
    /// Tried in order for each connection.
    pub targets: Vec<SocketAddr>,
}

impl Slowdown {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.delay_us > 0 {
            parts.push(format!("delay {}", format_micros(self.delay_us)));
        }
        if self.jitter_us > 0 {
            parts.push(format!("jitter {}", format_micros(self.jitter_us)));
        }
        if self.loss_basis_points > 0 {
            parts.push(format!("loss {}%", self.loss_basis_points as f64 / 100.0));
        }
        if let Some(rate) = self.rate_kbit {
            parts.push(format!("rate {}", format_rate(rate)));
        }
        parts.join(", ")
    }
}

fn format_micros(micros: u64) -> String {
    if micros.is_multiple_of(1000) {
        format!("{}ms", micros / 1000)
    } else {
        format!("{micros}us")
    }
}

fn format_rate(kbit: u64) -> String {
    if kbit.is_multiple_of(1_000_000) {
        format!("{}gbit", kbit / 1_000_000)
    } else if kbit.is_multiple_of(1000) {
        format!("{}mbit", kbit / 1000)
    } else {
        format!("{kbit}kbit")
    }
}

/// The host's own network namespace, opened before the CLI entered a switch namespace:
/// the forwarder is started back in it.
static HOST_NAMESPACE: OnceLock<File> = OnceLock::new();

/// Runs a program to completion within [`TOOL_TIMEOUT`], with its output; an error names
/// the command and says what it printed.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            anyhow!(
                "`{program}` is not installed: network-namespace mode needs iproute2 (ip, tc) and nftables (nft)"
            )
        } else {
            anyhow!("running {program}: {error}")
        }
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let deadline = Instant::now() + TOOL_TIMEOUT;
    while child
        .try_wait()
        .with_context(|| format!("waiting for {program}"))?
        .is_none()
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{program} {}` took longer than {TOOL_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("reading the output of {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip -n <namespace> ...`.
fn ip_in(namespace: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", namespace];
    full.extend_from_slice(args);
    run("ip", &full, None)
}

/// `tc -n <namespace> ...`.
fn tc_in(namespace: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", namespace];
    full.extend_from_slice(args);
    run("tc", &full, None)
}

/// Network namespaces need root (CAP_NET_ADMIN to build them, CAP_SYS_ADMIN to enter
/// them) and iproute2.
pub fn require_privileges(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{what} needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN, for network namespaces): run it with sudo"
        );
    }
    run("ip", &["-V"], None).map(|_| ())
}

fn namespace_path(namespace: &str) -> PathBuf {
    Path::new(NAMESPACE_DIR).join(namespace)
}

fn namespace_exists(namespace: &str) -> bool {
    namespace_path(namespace).exists()
}

/// Moves the calling thread into a network namespace. Threads started afterwards inherit
/// it, and sockets keep the namespace they were made in.
fn enter(namespace: &str) -> Result<()> {
    let path = namespace_path(namespace);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a valid namespace descriptor, kept open for the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering the network namespace {namespace}"));
    }
    Ok(())
}

/// Makes `command`'s child enter `namespace` (an open namespace file) before exec. The
/// file must stay open until the child is spawned.
pub fn enter_in_child(command: &mut Command, namespace: &File) {
    let descriptor = namespace.as_raw_fd();
    // SAFETY: between fork and exec the hook only makes the setns system call on a
    // descriptor the parent keeps open until spawn returns.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(descriptor, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// The namespace the agent of `data_dir` runs in, when its emulated cluster (the
/// directory above) is a `--netns` one; an error if that namespace is missing.
pub fn agent_namespace(data_dir: &Path) -> Result<Option<File>> {
    let (Some(dir), Some(name)) = (data_dir.parent(), data_dir.file_name()) else {
        return Ok(None);
    };
    if !dir.join(super::STATE_FILE).exists() {
        return Ok(None);
    }
    let emulation = Emulation::load(dir.to_path_buf())?;
    let Some(network) = &emulation.state.netns else {
        return Ok(None);
    };
    let namespace = network.namespace(&name.to_string_lossy());
    let path = namespace_path(&namespace);
    let file = File::open(&path).with_context(|| {
        format!(
            "opening the node's network namespace {} (`bramble up` re-creates it)",
            path.display()
        )
    })?;
    Ok(Some(file))
}

impl NetworkState {
    /// The network of a new cluster in `dir`: the prefix and the /24 from a hash of the
    /// directory, so two emulations on one machine do not collide.
    pub fn plan(dir: &Path) -> NetworkState {
        let digest = blake3::hash(dir.to_string_lossy().as_bytes());
        NetworkState {
            prefix: format!("bramble-{}", &digest.to_hex()[..8]),
            subnet: Ipv4Addr::new(10, 88, digest.as_bytes()[4], 0),
            partitions: Vec::new(),
            slowdowns: BTreeMap::new(),
            rates_mbit: BTreeMap::new(),
            forwards: Vec::new(),
        }
    }

    pub fn namespace(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    pub fn switch_namespace(&self) -> String {
        self.namespace(SWITCH)
    }

    fn host_address(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, host)
    }

    /// The RPC address of the node with this 1-based index.
    pub fn node_address(&self, index: usize) -> Result<SocketAddr> {
        let host = u8::try_from(index)
            .ok()
            .filter(|host| (1..=MAX_NODES).contains(&usize::from(*host)))
            .ok_or_else(|| {
                anyhow!("network-namespace mode has room for {MAX_NODES} nodes in its /24")
            })?;
        Ok(SocketAddr::new(
            IpAddr::V4(self.host_address(host)),
            bramble_cluster::node_dir::DEFAULT_PORT,
        ))
    }

    pub fn vip(&self) -> Ipv4Addr {
        self.host_address(VIP_HOST)
    }

    pub fn switch_address(&self) -> Ipv4Addr {
        self.host_address(SWITCH_HOST)
    }

    /// The switch namespace with its bridge and address; true when it had to be made
    /// (no partition or slowdown survives that: they are forgotten).
    pub fn ensure_switch(&mut self) -> Result<bool> {
        let switch = self.switch_namespace();
        let created = !namespace_exists(&switch);
        if created {
            run("ip", &["netns", "add", &switch], None).context("creating the switch namespace")?;
            self.partitions.clear();
            self.slowdowns.clear();
        }
        ip_in(&switch, &["link", "set", "lo", "up"])?;
        if ip_in(&switch, &["link", "show", BRIDGE]).is_err() {
            ip_in(&switch, &["link", "add", BRIDGE, "type", "bridge"])?;
        }
        let address = format!("{}/24", self.switch_address());
        ip_in(&switch, &["addr", "replace", &address, "dev", BRIDGE])?;
        ip_in(&switch, &["link", "set", BRIDGE, "up"])?;
        Ok(created)
    }

    /// A node's namespace, cable and address, made where missing; its link shaping
    /// applied again.
    pub fn ensure_node(&self, name: &str, address: IpAddr) -> Result<()> {
        let namespace = self.namespace(name);
        let switch = self.switch_namespace();
        let port = port_name(name)?;
        if !namespace_exists(&namespace) {
            run("ip", &["netns", "add", &namespace], None)
                .with_context(|| format!("creating the namespace of {name}"))?;
        }
        let cabled = ip_in(&namespace, &["link", "show", NODE_INTERFACE]).is_ok();
        if !cabled {
            // A port left without its peer (cannot happen with veth pairs, but a
            // half-made one from an interrupted run can): remove it first.
            let _ = ip_in(&switch, &["link", "del", &port]);
            ip_in(
                &switch,
                &[
                    "link",
                    "add",
                    &port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    NODE_INTERFACE,
                    "netns",
                    &namespace,
                ],
            )
            .with_context(|| format!("cabling {name} to the switch"))?;
        }
        ip_in(&switch, &["link", "set", &port, "master", BRIDGE, "up"])?;
        ip_in(&namespace, &["link", "set", "lo", "up"])?;
        let cidr = format!("{address}/24");
        ip_in(
            &namespace,
            &["addr", "replace", &cidr, "dev", NODE_INTERFACE],
        )?;
        ip_in(&namespace, &["link", "set", NODE_INTERFACE, "up"])?;
        self.apply_link(name)
    }

    /// Removes every namespace of the cluster (with them their veths and the bridge).
    pub fn remove(&self, nodes: &[String]) -> Vec<String> {
        let mut removed = Vec::new();
        for host in nodes
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(SWITCH))
        {
            let namespace = self.namespace(host);
            if namespace_exists(&namespace)
                && run("ip", &["netns", "del", &namespace], None).is_ok()
            {
                removed.push(namespace);
            }
        }
        removed
    }

    /// The bridge table for the partitions and losses: the whole table, rebuilt.
    fn nft_script(&self) -> Result<String> {
        let mut rules = Vec::new();
        let set = |names: &[String]| -> Result<String> {
            let ports: Vec<String> = names
                .iter()
                .map(|name| port_name(name).map(|port| format!("\"{port}\"")))
                .collect::<Result<_>>()?;
            Ok(format!("{{ {} }}", ports.join(", ")))
        };
        for partition in &self.partitions {
            let (a, b) = (set(&partition.a)?, set(&partition.b)?);
            rules.push(format!("iifname {a} oifname {b} drop"));
            rules.push(format!("iifname {b} oifname {a} drop"));
        }
        for (node, slowdown) in &self.slowdowns {
            if slowdown.loss_basis_points > 0 {
                let port = port_name(node)?;
                for direction in ["iifname", "oifname"] {
                    rules.push(format!(
                        "{direction} \"{port}\" numgen random mod 10000 < {} drop",
                        slowdown.loss_basis_points
                    ));
                }
            }
        }
        let mut script = format!(
            "table bridge {NFT_TABLE}\ndelete table bridge {NFT_TABLE}\ntable bridge {NFT_TABLE} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n"
        );
        for rule in rules {
            script.push_str(&format!("    {rule}\n"));
        }
        script.push_str("  }\n}\n");
        Ok(script)
    }

    /// Loads the partitions and losses into the switch's bridge.
    fn apply_filters(&self) -> Result<()> {
        let script = self.nft_script()?;
        run(
            "ip",
            &["netns", "exec", &self.switch_namespace(), "nft", "-f", "-"],
            Some(&script),
        )
        .context("loading the partition rules into the switch (nftables)")?;
        Ok(())
    }

    /// The rate a node's cable is limited to: a slowdown's, else its board profile's.
    fn rate_kbit(&self, node: &str) -> Option<u64> {
        self.slowdowns
            .get(node)
            .and_then(|slowdown| slowdown.rate_kbit)
            .or_else(|| {
                self.rates_mbit
                    .get(node)
                    .map(|mbit| u64::from(*mbit) * 1000)
            })
    }

    /// Applies a node's delay and rate to its cable: netem (delay, jitter) on its `eth0`
    /// with tbf below it for the rate, tbf on the switch's port for the other direction.
    /// Where the kernel has no netem, the delay is the user-space delay line
    /// (`delay_line`) on the node's egress instead.
    fn apply_link(&self, node: &str) -> Result<()> {
        let namespace = self.namespace(node);
        let switch = self.switch_namespace();
        let port = port_name(node)?;
        // Deleting a root qdisc that is the default one fails: nothing to remove.
        let _ = tc_in(&namespace, &["qdisc", "del", "dev", NODE_INTERFACE, "root"]);
        let _ = tc_in(&switch, &["qdisc", "del", "dev", &port, "root"]);
        stop_delay_line(&namespace);
        let slowdown = self.slowdowns.get(node).cloned().unwrap_or_default();
        let rate = self.rate_kbit(node);
        let mut tbf_parent = "root".to_string();
        if slowdown.delay_us > 0 {
            let mut netem = vec![
                "qdisc".to_string(),
                "add".into(),
                "dev".into(),
                NODE_INTERFACE.into(),
                "root".into(),
                "handle".into(),
                "1:".into(),
                "netem".into(),
                "limit".into(),
                "100000".into(),
                "delay".into(),
                format!("{}us", slowdown.delay_us),
            ];
            if slowdown.jitter_us > 0 {
                netem.push(format!("{}us", slowdown.jitter_us));
            }
            match tc_in(&namespace, &strings(&netem)) {
                Ok(_) => tbf_parent = "parent 1:1 handle 10:".to_string(),
                Err(error) if error.to_string().contains("unknown") => {
                    // No sch_netem in this kernel: delay in user space.
                    start_delay_line(&namespace, slowdown.delay_us, slowdown.jitter_us)
                        .context("this kernel has no netem (CONFIG_NET_SCH_NETEM), and the user-space delay line (iptables NFQUEUE) did not start")?;
                }
                Err(error) => return Err(error),
            }
        }
        if let Some(rate) = rate {
            let mut args = vec!["qdisc".to_string(), "add".into(), "dev".into()];
            args.push(NODE_INTERFACE.into());
            args.extend(tbf_parent.split(' ').map(str::to_string));
            args.extend(tbf(rate));
            tc_in(&namespace, &strings(&args))?;
            let mut args = vec!["qdisc".to_string(), "add".into(), "dev".into(), port];
            args.push("root".into());
            args.extend(tbf(rate));
            tc_in(&switch, &strings(&args))?;
        }
        Ok(())
    }

    /// Lines for `status`: the active partitions and slowdowns, and the host's forwarded
    /// ports while the forwarder of the cluster in `dir` runs.
    pub fn describe(&self, dir: &Path) -> Vec<String> {
        let mut lines = vec![format!(
            "Network: namespaces {}-*, {}/24 on the bridge {BRIDGE} in {}; the CLI works from the switch at {}",
            self.prefix,
            self.subnet,
            self.switch_namespace(),
            self.switch_address()
        )];
        for partition in &self.partitions {
            lines.push(format!(
                "Partition: {} | {} (`bramble chaos heal` removes it)",
                partition.a.join(","),
                partition.b.join(",")
            ));
        }
        for (node, slowdown) in &self.slowdowns {
            lines.push(format!("Slow link: {node}: {}", slowdown.describe()));
        }
        for (node, rate) in &self.rates_mbit {
            if !self.slowdowns.contains_key(node) {
                lines.push(format!("Link rate: {node}: {rate} Mbit/s (board profile)"));
            }
        }
        let forwarding = bramble_util::files::read_small_text(&forwarder_pid_path(dir))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .is_some_and(|pid| forwarder_is_ours(pid, dir));
        for forward in self.forwards.iter().filter(|_| forwarding) {
            lines.push(format!(
                "Forwarded to the host: {} on {} -> {}",
                forward.name,
                forward.listen,
                forward
                    .targets
                    .iter()
                    .map(SocketAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            ));
        }
        lines
    }
}

/// A token bucket of `rate` kbit/s: 10 ms at the rate, and at least a few full frames.
fn tbf(rate: u64) -> Vec<String> {
    let burst = (rate * 1000 / 8 / 100).max(16 * 1024);
    vec![
        "tbf".into(),
        "rate".into(),
        format!("{rate}kbit"),
        "burst".into(),
        burst.to_string(),
        "latency".into(),
        "100ms".into(),
    ]
}

fn strings(owned: &[String]) -> Vec<&str> {
    owned.iter().map(String::as_str).collect()
}

/// Starts the user-space delay line in a node's namespace and sends the node's egress
/// through it (`delay_line`).
fn start_delay_line(namespace: &str, delay_us: u64, jitter_us: u64) -> Result<()> {
    let executable = running_executable();
    let pid_path = super::delay_line::pid_path(namespace);
    if let Some(parent) = pid_path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let _ = std::fs::remove_file(&pid_path);
    let log_path = pid_path.with_extension("log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = Command::new(executable);
    command
        .arg("netns-delay")
        .arg(namespace)
        .arg("--delay-us")
        .arg(delay_us.to_string())
        .arg("--jitter-us")
        .arg(jitter_us.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    crate::process::detach(&mut command);
    let mut child = command.spawn().context("starting the delay line")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pid_path.exists() {
        if let Some(status) = child.try_wait().context("checking the delay line")? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the delay line exited ({status}): {}", log.trim());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the delay line did not start within 5 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Bypass: should the delay line die, packets pass undelayed instead of being dropped.
    let queue = super::delay_line::QUEUE.to_string();
    run(
        "ip",
        &[
            "netns",
            "exec",
            namespace,
            "iptables",
            "-w",
            "-t",
            "mangle",
            "-A",
            "POSTROUTING",
            "-o",
            NODE_INTERFACE,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue,
            "--queue-bypass",
        ],
        None,
    )
    .context("sending the node's packets through the delay line (iptables)")?;
    Ok(())
}

/// Stops a namespace's delay line, if one runs, and removes its iptables rule.
fn stop_delay_line(namespace: &str) {
    let pid_path = super::delay_line::pid_path(namespace);
    let Ok(text) = std::fs::read_to_string(&pid_path) else {
        return;
    };
    let _ = run(
        "ip",
        &[
            "netns",
            "exec",
            namespace,
            "iptables",
            "-w",
            "-t",
            "mangle",
            "-F",
            "POSTROUTING",
        ],
        None,
    );
    if let Ok(pid) = text.trim().parse::<u32>() {
        let ours = bramble_util::files::read_bounded(
            Path::new(&format!("/proc/{pid}/cmdline")),
            64 * 1024,
        )
        .map(|bytes| {
            let line = String::from_utf8_lossy(&bytes).into_owned();
            line.split('\0').any(|argument| argument == "netns-delay")
                && line.split('\0').any(|argument| argument == namespace)
        })
        .unwrap_or(false);
        if ours {
            let _ = crate::process::send_signal(pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(2);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let _ = std::fs::remove_file(pid_path.with_extension("log"));
    let _ = std::fs::remove_file(pid_path);
}

/// This very program, named through the magic link: the kernel resolves it in the
/// forked child, so a helper starts even when the file it was run from has since been
/// replaced (a rebuild), and it is exactly the caller's version.
fn running_executable() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

/// `bramble netns-delay <namespace>`: enters the node's namespace and runs the delay line.
pub fn run_delay_line(args: &NetnsDelayArgs) -> Result<()> {
    let name_ok = !args.namespace.is_empty()
        && args.namespace.len() <= 64
        && args
            .namespace
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
    if !name_ok || !namespace_exists(&args.namespace) {
        bail!(
            "{:?} is not a network namespace of this machine",
            args.namespace
        );
    }
    if args.delay_us > MAX_DELAY.as_micros() as u64 || args.jitter_us > args.delay_us {
        bail!("the delay is at most 10 s and the jitter at most the delay");
    }
    enter(&args.namespace)?;
    super::delay_line::run(
        &args.namespace,
        Duration::from_micros(args.delay_us),
        Duration::from_micros(args.jitter_us),
    )
}

/// The switch port of a node (`p-<node>`), within the kernel's 15-byte interface names.
fn port_name(node: &str) -> Result<String> {
    let port = format!("p-{node}");
    if port.len() > 15 {
        bail!(
            "the node name {node:?} is too long for network-namespace mode (at most 13 characters)"
        );
    }
    Ok(port)
}

/// Before the runtime starts: a CLI command about a `--netns` cluster moves into its
/// switch namespace (and `up` first builds it). Commands that run inside a node (the
/// agent, its programs) or on a data directory stay where they are.
pub fn enter_for_command(cli: &Cli) -> Result<()> {
    if matches!(
        cli.command,
        CliCommand::Agent
            | CliCommand::DemoWeb(_)
            | CliCommand::WasmTask(_)
            | CliCommand::MpiLaunch(_)
            | CliCommand::Init(_)
            | CliCommand::Join(_)
            | CliCommand::NetnsForward(_)
            | CliCommand::NetnsDelay(_)
    ) {
        return Ok(());
    }
    let global = &cli.global;
    if global.credential.is_some() || (global.dir.is_none() && global.data_dir.is_some()) {
        return Ok(());
    }
    let dir = absolute(global.dir.as_deref().unwrap_or(Path::new(DEFAULT_DIR)))?;
    let state = if dir.join(super::STATE_FILE).exists() {
        Some(Emulation::load(dir.clone())?.state)
    } else {
        None
    };
    let wants_netns = matches!(&cli.command, CliCommand::Up(args) if args.netns);
    let network = match (&state, wants_netns) {
        (Some(state), true) if state.netns.is_none() && !state.nodes.is_empty() => bail!(
            "the emulated cluster in {} runs on loopback; `bramble down --purge` it first to make a --netns one there",
            dir.display()
        ),
        (Some(state), _) if state.netns.is_some() => state.netns.clone(),
        (_, true) => Some(NetworkState::plan(&dir)),
        _ => None,
    };
    let Some(mut network) = network else {
        return Ok(());
    };
    if let CliCommand::Up(_) = cli.command {
        require_privileges("bramble up --netns")?;
        if network.ensure_switch()? && state.is_some() {
            // A new switch has none of the old partitions and slowdowns: forget them.
            let mut emulation = Emulation::load(dir.clone())?;
            emulation.state.netns = Some(network.clone());
            emulation.save()?;
        }
    } else if !namespace_exists(&network.switch_namespace()) {
        // Down (namespaces removed): commands run from the host and find nothing running.
        return Ok(());
    } else {
        require_privileges(&format!(
            "the emulated cluster in {} runs in network namespaces (bramble up --netns): this command",
            dir.display()
        ))?;
    }
    let host = File::open("/proc/self/ns/net").context("opening the host's network namespace")?;
    let _ = HOST_NAMESPACE.set(host);
    enter(&network.switch_namespace())
}

/// `bramble chaos partition|heal|slow`.
pub async fn chaos(global: &GlobalOptions, args: &ChaosArgs) -> Result<()> {
    let mut emulation = Emulation::require(global)?;
    let Some(mut network) = emulation.state.netns.clone() else {
        bail!(
            "`bramble chaos {}` needs a cluster started with `bramble up --netns` (the emulated cluster in {} runs on loopback)",
            action_name(args.action),
            emulation.dir.display()
        );
    };
    if !namespace_exists(&network.switch_namespace()) {
        bail!(
            "the cluster's network is down (no namespace {}); `bramble up` starts it",
            network.switch_namespace()
        );
    }
    let names = emulation.all_names();
    let report = match args.action {
        ChaosAction::Partition => {
            let a = parse_group(args.node.as_deref(), "the first group", &names)?;
            let b = parse_group(args.other_group.as_deref(), "the second group", &names)?;
            if let Some(both) = a.iter().find(|node| b.contains(node)) {
                bail!("{both} is in both groups: a node is on one side of a partition");
            }
            network.partitions.push(Partition { a, b });
            network.apply_filters()?;
            serde_json::json!({ "action": "partition", "partitions": network.partitions })
        }
        ChaosAction::Heal => {
            if args.node.is_some() {
                bail!(
                    "`bramble chaos heal` takes no node: it removes every partition and slowdown"
                );
            }
            let healed_partitions = network.partitions.len();
            let slowed: Vec<String> = network.slowdowns.keys().cloned().collect();
            network.partitions.clear();
            network.slowdowns.clear();
            network.apply_filters()?;
            for node in &slowed {
                network.apply_link(node)?;
            }
            serde_json::json!({
                "action": "heal",
                "partitions_removed": healed_partitions,
                "slowdowns_removed": slowed,
            })
        }
        ChaosAction::Slow => {
            let node = args.node.clone().ok_or_else(|| {
                anyhow!("name the node to slow down: `bramble chaos slow n3 --delay 100ms`")
            })?;
            emulation.node(&node)?;
            let slowdown = parse_slowdown(args)?;
            let previous = network.slowdowns.insert(node.clone(), slowdown.clone());
            if let Err(error) = network
                .apply_link(&node)
                .and_then(|()| network.apply_filters())
            {
                // Put the cable back as it was.
                match previous {
                    Some(previous) => network.slowdowns.insert(node.clone(), previous),
                    None => network.slowdowns.remove(&node),
                };
                let _ = network.apply_link(&node);
                let _ = network.apply_filters();
                return Err(error);
            }
            serde_json::json!({
                "action": "slow",
                "node": node,
                "delay_ms": slowdown.delay_us as f64 / 1000.0,
                "jitter_ms": slowdown.jitter_us as f64 / 1000.0,
                "loss_percent": slowdown.loss_basis_points as f64 / 100.0,
                "rate_kbit": slowdown.rate_kbit,
            })
        }
        _ => bail!("not a network fault: {}", action_name(args.action)),
    };
    emulation.state.netns = Some(network.clone());
    emulation.save()?;
    if args.output.json {
        return output::print_json(&report);
    }
    match args.action {
        ChaosAction::Partition => {
            let latest = network.partitions.last().cloned();
            if let Some(partition) = latest {
                println!(
                    "Partitioned {} from {}: the switch drops every frame between them; each side still talks within itself. `bramble chaos heal` removes it.",
                    partition.a.join(","),
                    partition.b.join(",")
                );
            }
        }
        ChaosAction::Heal => println!(
            "Healed: {} partition(s) and {} slowdown(s) removed.",
            report["partitions_removed"],
            report["slowdowns_removed"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0)
        ),
        _ => {
            if let Some(node) = &args.node
                && let Some(slowdown) = network.slowdowns.get(node)
            {
                println!("Slowed {node}'s cable: {}.", slowdown.describe());
            }
        }
    }
    Ok(())
}

fn action_name(action: ChaosAction) -> &'static str {
    match action {
        ChaosAction::Kill => "kill",
        ChaosAction::Stop => "stop",
        ChaosAction::Cont => "cont",
        ChaosAction::Restart => "restart",
        ChaosAction::Partition => "partition",
        ChaosAction::Heal => "heal",
        ChaosAction::Slow => "slow",
    }
}

/// `n1,n2`: known nodes, no repeats, not empty.
fn parse_group(text: Option<&str>, what: &str, names: &[String]) -> Result<Vec<String>> {
    let text = text.ok_or_else(|| {
        anyhow!(
            "name two groups of nodes: `bramble chaos partition n1,n2 n3,n4,n5` ({what} is missing)"
        )
    })?;
    let mut group = Vec::new();
    for name in text.split(',').map(str::trim) {
        if name.is_empty() {
            bail!("{what} ({text:?}) has an empty node name");
        }
        if !names.iter().any(|known| known == name) {
            bail!(
                "no emulated node named {name:?} in {what}; the nodes are {}",
                names.join(", ")
            );
        }
        if group.iter().any(|seen| seen == name) {
            bail!("{name} appears twice in {what}");
        }
        group.push(name.to_string());
    }
    Ok(group)
}

/// The options of `chaos slow`, checked.
fn parse_slowdown(args: &ChaosArgs) -> Result<Slowdown> {
    let delay_us = args.delay.as_deref().map(parse_micros).transpose()?;
    let jitter_us = args.jitter.as_deref().map(parse_micros).transpose()?;
    let loss_basis_points = args.loss.as_deref().map(parse_loss).transpose()?;
    let rate_kbit = args.rate.as_deref().map(parse_rate_kbit).transpose()?;
    if delay_us.is_none() && loss_basis_points.is_none() && rate_kbit.is_none() {
        bail!("say how to slow the link: --delay 100ms, --loss 1% and/or --rate 100mbit");
    }
    if let Some(jitter) = jitter_us
        && jitter > delay_us.unwrap_or(0)
    {
        bail!("--jitter must not exceed --delay (netem varies the delay by up to the jitter)");
    }
    Ok(Slowdown {
        delay_us: delay_us.unwrap_or(0),
        jitter_us: jitter_us.unwrap_or(0),
        loss_basis_points: loss_basis_points.unwrap_or(0),
        rate_kbit,
    })
}

/// `100ms`, `1s`, `250us`: 0 to 10 s, in microseconds.
fn parse_micros(text: &str) -> Result<u64> {
    let micros = crate::units::parse_with_units(
        text,
        &[("us", 1), ("ms", 1000), ("s", 1_000_000)],
        "a delay such as 100ms, 1s or 500us",
    )?;
    if micros > MAX_DELAY.as_micros() as u64 {
        bail!(
            "{text} is more than the {} s a delay may be",
            MAX_DELAY.as_secs()
        );
    }
    Ok(micros)
}

/// `1%`, `0.5%` or `2`: more than 0 and at most 100 %, in hundredths of a percent.
fn parse_loss(text: &str) -> Result<u32> {
    let number = text.trim().trim_end_matches('%').trim();
    let value: f64 = number
        .parse()
        .map_err(|_| anyhow!("{text:?} is not a loss such as 1% or 0.5%"))?;
    if !value.is_finite() || value <= 0.0 || value > 100.0 {
        bail!("a loss is more than 0% and at most 100% ({text} is not)");
    }
    let basis_points = (value * 100.0).round() as u32;
    if basis_points == 0 {
        bail!("{text} is below the smallest loss, 0.01%");
    }
    Ok(basis_points)
}

/// `100mbit`, `1gbit`, `512kbit`: 8 kbit/s to 100 Gbit/s, in kbit/s.
fn parse_rate_kbit(text: &str) -> Result<u64> {
    let kbit = crate::units::parse_with_units(
        text,
        &[
            ("kbit", 1),
            ("mbit", 1000),
            ("gbit", 1_000_000),
            ("kbps", 8),
            ("mbps", 8000),
        ],
        "a rate such as 100mbit, 1gbit or 512kbit",
    )?;
    if !(MIN_RATE_KBIT..=MAX_RATE_KBIT).contains(&kbit) {
        bail!("a rate is between 8kbit and 100gbit ({text} is not)");
    }
    Ok(kbit)
}

/// Limits a node's cable to `rate_mbit` both ways (a board profile's network: 100 Mbit/s
/// for a Pi 3B), or removes the limit with `None`; kept in `cluster.toml` and applied
/// again whenever the cable is re-made. A slowdown's own `--rate` takes precedence until
/// `heal`.
pub fn shape(emulation: &mut Emulation, node: &str, rate_mbit: Option<u32>) -> Result<()> {
    emulation.node(node)?;
    let Some(network) = emulation.state.netns.as_mut() else {
        bail!("link rates need a cluster started with `bramble up --netns`");
    };
    match rate_mbit {
        Some(0) => bail!("a link rate of 0 Mbit/s would cut the cable"),
        Some(rate) => network.rates_mbit.insert(node.to_string(), rate),
        None => network.rates_mbit.remove(node),
    };
    network.apply_link(node)?;
    emulation.save()
}

/// The JSON of `status` for the network, when there is one.
pub fn status_json(emulation: &Emulation) -> Option<serde_json::Value> {
    emulation
        .state
        .netns
        .as_ref()
        .and_then(|network| serde_json::to_value(network).ok())
}

/// Which nodes are in use, for `down`: removes the namespaces and forgets the chaos.
pub fn tear_down(emulation: &mut Emulation) -> Result<Vec<String>> {
    let names = emulation.all_names();
    let Some(network) = emulation.state.netns.as_mut() else {
        return Ok(Vec::new());
    };
    stop_forwarder(&emulation.dir);
    for name in &names {
        stop_delay_line(&network.namespace(name));
    }
    let removed = network.remove(&names);
    network.partitions.clear();
    network.slowdowns.clear();
    // The forwards stay listed: the next `up` asks for the same host ports again.
    Ok(removed)
}

fn forwarder_pid_path(dir: &Path) -> PathBuf {
    dir.join("netns-forward.pid")
}

/// Stops the forwarder of the cluster in `dir`, if it runs.
pub fn stop_forwarder(dir: &Path) {
    let path = forwarder_pid_path(dir);
    let Ok(text) = bramble_util::files::read_small_text(&path) else {
        return;
    };
    if let Ok(pid) = text.trim().parse::<u32>()
        && forwarder_is_ours(pid, dir)
    {
        let _ = crate::process::send_signal(pid, libc::SIGTERM);
    }
    let _ = std::fs::remove_file(path);
}

/// Whether `pid` is the forwarder of `dir` (pids are reused).
fn forwarder_is_ours(pid: u32, dir: &Path) -> bool {
    bramble_util::files::read_bounded(Path::new(&format!("/proc/{pid}/cmdline")), 64 * 1024)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .is_some_and(|line| {
            line.split('\0').any(|argument| argument == "netns-forward")
                && line.split('\0').any(|argument| Path::new(argument) == dir)
        })
}

/// The forwards a running forwarder actually listens on, written by it for `up`.
fn forwarder_answer_path(dir: &Path) -> PathBuf {
    dir.join("netns-forward.json")
}

/// At most this many forwarded connections at once; more wait in the listen queue.
const MAX_FORWARDED_CONNECTIONS: usize = 256;

/// Starts (or restarts) the forwarder of a `--netns` cluster from the host namespace:
/// the website on the VIP and the dashboard on the nodes' API ports, each on a loopback
/// port of the host (the ones it had before, when free). Returns the forwards.
pub async fn start_forwarder(emulation: &mut Emulation) -> Result<Vec<Forward>> {
    let Some(network) = emulation.state.netns.clone() else {
        return Ok(Vec::new());
    };
    let Some(host) = HOST_NAMESPACE.get() else {
        bail!("the host's network namespace is unknown: the forwarder cannot start");
    };
    stop_forwarder(&emulation.dir);
    let previous = |name: &str| {
        network
            .forwards
            .iter()
            .find(|forward| forward.name == name)
            .map(|forward| forward.listen)
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    };
    let mut wanted = Vec::new();
    if let Some(demo) = &emulation.state.demo {
        wanted.push(Forward {
            name: "website".into(),
            listen: previous("website"),
            targets: vec![demo.site],
        });
    }
    let api_targets: Vec<SocketAddr> = emulation
        .state
        .nodes
        .iter()
        .map(|node| SocketAddr::new(node.addr.ip(), bramble_api::settings::DEFAULT_API_PORT))
        .collect();
    if !api_targets.is_empty() {
        wanted.push(Forward {
            name: "dashboard".into(),
            listen: previous("dashboard"),
            targets: api_targets,
        });
    }
    if let Some(network) = emulation.state.netns.as_mut() {
        network.forwards = wanted;
    }
    emulation.save()?;
    let answer = forwarder_answer_path(&emulation.dir);
    let _ = std::fs::remove_file(&answer);
    let executable = running_executable();
    let log_path = emulation.dir.join("netns-forward.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = Command::new(executable);
    command
        .arg("netns-forward")
        .arg(&emulation.dir)
        .env_remove("BRAMBLE_DIR")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log);
    enter_in_child(&mut command, host);
    crate::process::detach(&mut command);
    let mut child = command.spawn().context("starting the forwarder")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if answer.exists() {
            let bytes = bramble_util::files::read_bounded(&answer, 64 * 1024)?;
            let forwards: Vec<Forward> = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", answer.display()))?;
            if let Some(network) = emulation.state.netns.as_mut() {
                network.forwards = forwards.clone();
            }
            emulation.save()?;
            // The forwarder is detached in its own session; nothing waits for it here.
            drop(child);
            return Ok(forwards);
        }
        if let Some(status) = child.try_wait().context("checking the forwarder")? {
            bail!(
                "the forwarder exited ({status}); see {}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the forwarder did not start within 10 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `bramble netns-forward <dir>`: binds the forwards' loopback ports in the host
/// namespace it starts in, then moves into the cluster's switch namespace, from where it
/// dials the targets. Ends when the cluster's directory or its network is gone.
pub fn run_forwarder(cluster_dir: &Path) -> Result<()> {
    let emulation = Emulation::load(cluster_dir.to_path_buf())?;
    let network = emulation
        .state
        .netns
        .clone()
        .ok_or_else(|| anyhow!("{} is not a --netns cluster", cluster_dir.display()))?;
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for forward in &network.forwards {
        if !forward.listen.ip().is_loopback() {
            bail!("a forward listens on loopback only, not {}", forward.listen);
        }
        let listener = std::net::TcpListener::bind(forward.listen)
            .or_else(|_| std::net::TcpListener::bind((forward.listen.ip(), 0)))
            .with_context(|| format!("listening on {}", forward.listen))?;
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        let listen = listener.local_addr().context("reading the bound address")?;
        bound.push(Forward {
            listen,
            ..forward.clone()
        });
        listeners.push((listener, forward.targets.clone()));
    }
    enter(&network.switch_namespace())?;
    std::fs::write(
        forwarder_pid_path(cluster_dir),
        std::process::id().to_string(),
    )
    .context("writing the forwarder's pid file")?;
    bramble_util::files::write_atomic(
        &forwarder_answer_path(cluster_dir),
        &serde_json::to_vec(&bound)?,
        bramble_util::files::Visibility::Public,
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the forwarder's runtime")?;
    let switch = network.switch_namespace();
    let directory = cluster_dir.to_path_buf();
    runtime.block_on(async move {
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDED_CONNECTIONS));
        for (listener, targets) in listeners {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let permits = permits.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let targets = targets.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        for target in targets {
                            let connect = tokio::net::TcpStream::connect(target);
                            if let Ok(Ok(mut outbound)) =
                                tokio::time::timeout(Duration::from_secs(1), connect).await
                            {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                                return;
                            }
                        }
                    });
                }
            });
        }
        // The cluster purged or its network removed: nothing left to forward to.
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if !directory.join(super::STATE_FILE).exists() || !namespace_exists(&switch) {
                return Ok::<(), anyhow::Error>(());
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_clusters_get_different_namespaces_and_addresses_stay_private() {
        let one = NetworkState::plan(Path::new("/tmp/a"));
        let two = NetworkState::plan(Path::new("/tmp/b"));
        assert_ne!(one.prefix, two.prefix);
        assert_eq!(one.subnet.octets()[0], 10);
        assert_eq!(one.subnet.octets()[3], 0);
        assert_eq!(
            one.node_address(3).unwrap().ip(),
            IpAddr::V4(Ipv4Addr::new(10, 88, one.subnet.octets()[2], 3))
        );
        assert!(one.node_address(0).is_err());
        assert!(one.node_address(MAX_NODES + 1).is_err());
        assert_ne!(one.vip(), one.node_address(MAX_NODES).unwrap().ip());
    }

    #[test]
    fn slow_options_are_bounded() {
        assert_eq!(parse_micros("100ms").unwrap(), 100_000);
        assert_eq!(parse_micros("250us").unwrap(), 250);
        assert!(parse_micros("11s").is_err());
        assert!(parse_micros("fast").is_err());
        assert_eq!(parse_loss("1%").unwrap(), 100);
        assert_eq!(parse_loss("0.5").unwrap(), 50);
        assert!(parse_loss("0%").is_err());
        assert!(parse_loss("101%").is_err());
        assert!(parse_loss("NaN").is_err());
        assert_eq!(parse_rate_kbit("100mbit").unwrap(), 100_000);
        assert_eq!(parse_rate_kbit("1gbit").unwrap(), 1_000_000);
        assert!(parse_rate_kbit("1kbit").is_err());
        assert!(parse_rate_kbit("1tbit").is_err());
    }

    #[test]
    fn groups_name_known_nodes_once() {
        let names: Vec<String> = (1..=5).map(|index| format!("n{index}")).collect();
        assert_eq!(
            parse_group(Some("n1,n2"), "the first group", &names).unwrap(),
            vec!["n1", "n2"]
        );
        assert!(parse_group(Some("n1,n9"), "the first group", &names).is_err());
        assert!(parse_group(Some("n1,n1"), "the first group", &names).is_err());
        assert!(parse_group(Some("n1,"), "the first group", &names).is_err());
        assert!(parse_group(None, "the second group", &names).is_err());
    }

    #[test]
    fn the_bridge_table_drops_both_ways_between_groups_and_is_rebuilt_whole() {
        let mut network = NetworkState::plan(Path::new("/tmp/a"));
        network.partitions.push(Partition {
            a: vec!["n1".into(), "n2".into()],
            b: vec!["n3".into()],
        });
        network.slowdowns.insert(
            "n4".into(),
            Slowdown {
                loss_basis_points: 150,
                ..Slowdown::default()
            },
        );
        let script = network.nft_script().unwrap();
        assert!(script.starts_with("table bridge bramble\ndelete table bridge bramble\n"));
        assert!(script.contains("iifname { \"p-n1\", \"p-n2\" } oifname { \"p-n3\" } drop"));
        assert!(script.contains("iifname { \"p-n3\" } oifname { \"p-n1\", \"p-n2\" } drop"));
        assert!(script.contains("iifname \"p-n4\" numgen random mod 10000 < 150 drop"));
        assert!(script.contains("oifname \"p-n4\" numgen random mod 10000 < 150 drop"));
        assert!(port_name("a-very-long-name").is_err());
    }
}
