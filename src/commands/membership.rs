//! `bramble init`, `join`, `leave` and `nodes`.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bramble_cluster::join::{JoinOptions, join};
use bramble_cluster::node_dir::InitOptions;
use bramble_cluster::{JoinToken, MembershipSettings, NodeDir, NodeView};
use bramble_meta::MetaSettings;

use crate::cli::{GlobalOptions, InitArgs, JoinArgs, LeaveArgs, NodeOptions, NodesArgs};
use crate::client::data_dir;
use crate::emulator::Emulation;
use crate::output;
use crate::process;

/// The node name to use: `--name`, else this machine's host name.
fn node_name(options: &NodeOptions) -> Result<String> {
    if let Some(name) = &options.name {
        return Ok(name.clone());
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name (give --name instead)")?;
    Ok(hostname.trim().to_lowercase())
}

/// `--allow-exec`: the node's opt-in to `bramble exec`.
fn allow_exec(options: &crate::cli::NodeOptions, path: &std::path::Path) -> Result<()> {
    if options.allow_exec {
        bramble_compute::exec::ExecSettings {
            enabled: true,
            allow_root: false,
        }
        .save(path)
        .map_err(|error| anyhow::anyhow!("writing exec.toml: {error}"))?;
        println!("bramble exec is allowed on this node (as nobody; exec.toml).");
    }
    Ok(())
}

pub fn init(global: &GlobalOptions, args: &InitArgs) -> Result<()> {
    let path = data_dir(global);
    let (node, token, _admin) = NodeDir::init(
        &path,
        InitOptions {
            name: node_name(&args.node)?,
            listen: args.node.listen,
            advertise: args.node.advertise,
            roles: args.node.roles.clone(),
            membership: MembershipSettings::default(),
        },
    )?;
    MetaSettings {
        bootstrap: true,
        ..MetaSettings::default()
    }
    .save(&path)?;
    allow_exec(&args.node, &path)?;
    println!(
        "Created cluster {} with node {} in {}.",
        node.config.cluster_id,
        node.config.name,
        path.display()
    );
    println!("CA fingerprint: {}", node.credential.ca_fingerprint());
    println!(
        "Admin credential: {} (mode 0600; copy it to manage the cluster from elsewhere with --credential)",
        node.layout().admin_credential().display()
    );
    println!(
        "\nStart this node:\n  bramble agent --data-dir {}",
        path.display()
    );
    println!(
        "\nJoin other nodes with (keep the token secret):\n  bramble join {} --token {}",
        node.config.advertise,
        token.reveal()
    );
    Ok(())
}

pub async fn join_cluster(global: &GlobalOptions, args: &JoinArgs) -> Result<()> {
    let token: JoinToken = args.token.parse()?;
    let path = data_dir(global);
    let node = join(
        args.member,
        &token,
        &path,
        JoinOptions {
            name: node_name(&args.node)?,
            listen: args.node.listen,
            advertise: args.node.advertise,
            roles: args.node.roles.clone(),
            membership: MembershipSettings::default(),
        },
    )
    .await
    .with_context(|| format!("could not join through {}", args.member))?;
    allow_exec(&args.node, &path)?;
    println!(
        "Joined cluster {} as {}; data directory {}.",
        node.config.cluster_id,
        node.config.name,
        path.display()
    );
    println!(
        "Start this node:\n  bramble agent --data-dir {}",
        path.display()
    );
    Ok(())
}

pub async fn leave(global: &GlobalOptions, args: &LeaveArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let (name, address) = match &args.node {
        Some(name) => (name.clone(), client.address_of(name).await?),
        None => {
            let node = NodeDir::open(&data_dir(global)).context(
                "which node should leave? give --node NAME (emulated cluster) or --data-dir of the node",
            )?;
            (node.config.name.clone(), node.config.advertise)
        }
    };
    client
        .call_at::<_, ()>(address, "cluster.leave", &())
        .await?;
    if let Some(emulation) = Emulation::find(global)?
        && emulation.node(&name).is_ok()
    {
        process::wait_for_exit(&emulation.node_dir(&name), Duration::from_secs(10)).await;
    }
    println!("{name} left the cluster; its agent has stopped. Other nodes show it as `left`.");
    Ok(())
}

pub async fn nodes(global: &GlobalOptions, args: &NodesArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let (source, view): (_, Vec<NodeView>) = match &args.from {
        Some(name) => {
            let address = client.address_of(name).await?;
            (
                address,
                client.call_at(address, "cluster.nodes", &()).await?,
            )
        }
        None => client.call_any("cluster.nodes", &()).await?,
    };
    // Drained nodes (`bramble drain`) as the answering agent's replica has them: None when
    // it could not say.
    let drained = crate::commands::drain::drained_nodes_here(&client, source)
        .await
        .ok();
    if args.output.json {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            #[serde(flatten)]
            node: &'a NodeView,
            drained: Option<&'a bramble_platform::drain::DrainRecord>,
        }
        let rows: Vec<Row> = view
            .iter()
            .map(|node| Row {
                node,
                drained: drained.as_ref().and_then(|drained| drained.get(&node.name)),
            })
            .collect();
        return output::print_json(&rows);
    }
    let mut table = output::table(&[
        "NAME",
        "STATE",
        "DRAINED",
        "ADDRESS",
        "ROLES",
        "LOAD",
        "MEMORY",
        "AGENT RSS",
        "TEMP",
        "THROTTLING",
        "VERSION",
        "HEARTBEAT",
    ]);
    for node in &view {
        let load = node.load.as_ref();
        // Load and memory travel with gossip; temperature and throttling come from the
        // node's own live sample (`monitor.sample`), asked only of nodes that are up.
        let (temperature, throttling) = if matches!(
            node.state,
            bramble_cluster::NodeState::Alive | bramble_cluster::NodeState::Suspect
        ) {
            crate::commands::metrics::temperature_and_throttling(&client, node.addr).await
        } else {
            ("-".to_string(), "-".to_string())
        };
        let drained_text = match drained.as_ref().map(|drained| drained.get(&node.name)) {
            None => "?".to_string(),
            Some(None) => "-".to_string(),
            Some(Some(record)) => drained_since(record),
        };
        table.add_row(vec![
            node.name.clone(),
            node.state.as_str().to_string(),
            drained_text,
            node.addr.to_string(),
            if node.roles.is_empty() {
                "-".into()
            } else {
                node.roles.join(",")
            },
            load.map(|load| format!("{:.2}/{}", load.load1, load.cpus))
                .unwrap_or_else(|| "-".into()),
            load.map(|load| format!("{:.0} %", load.memory_used_percent))
                .unwrap_or_else(|| "-".into()),
            load.map(|load| output::kib(load.agent_rss_kib))
                .unwrap_or_else(|| "-".into()),
            temperature,
            throttling,
            describe_build(node),
            node.heartbeat_age_ms
                .map(|age| format!("{:.1} s ago", age as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{table}");
    let builds: std::collections::BTreeSet<&str> = view
        .iter()
        .filter(|node| node.state != bramble_cluster::NodeState::Left && !node.build.is_empty())
        .map(|node| node.build.as_str())
        .collect();
    if builds.len() > 1 {
        println!(
            "{} builds run side by side (an upgrade in progress or stopped half-way: `bramble upgrade`)",
            builds.len()
        );
    }
    let alive = view
        .iter()
        .filter(|node| node.state == bramble_cluster::NodeState::Alive)
        .count();
    println!(
        "{alive} of {} nodes alive (as seen by {source})",
        view.len()
    );
    crate::commands::alerts::print_under_nodes(&client).await;
    if view.is_empty() {
        return Err(anyhow!("the agent returned an empty node table"));
    }
    Ok(())
}

/// "drained 3 min ago: new SD card", for the DRAINED column.
fn drained_since(record: &bramble_platform::drain::DrainRecord) -> String {
    let seconds = bramble_util::time::unix_millis().saturating_sub(record.since_unix_ms) / 1000;
    let age = match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        _ => format!("{} h", seconds / 3600),
    };
    let reason: String = record.reason.chars().take(40).collect();
    if reason.is_empty() {
        format!("drained {age} ago")
    } else {
        format!("drained {age} ago: {reason}")
    }
}

/// `0.1.0 p1 347dfd21`: the version, the wire protocol and the start of the build's hash.
fn describe_build(node: &bramble_cluster::NodeView) -> String {
    let mut text = node.version.clone();
    if node.protocol > 0 {
        text.push_str(&format!(" p{}", node.protocol));
    }
    if !node.build.is_empty() {
        text.push(' ');
        text.push_str(&node.build[..8.min(node.build.len())]);
    }
    text
}
