//! `bramble lb ...`: balancers in the catalog. Changes are compare-and-set writes of the
//! balancer's spec, so two operators editing at once cannot silently overwrite each other;
//! live state comes from the `lb` nodes (`lb.stats`).

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use bramble_cluster::{NodeState, NodeView};
use bramble_lb::config::{
    BackendChange, BackendSpec, BalancerSpec, CheckSpec, Limits, Sticky, Timeouts, VipSpec,
};
use bramble_lb::keys::{BALANCERS_PREFIX, balancer_key, vip_lease_key};
use bramble_lb::pool::BalancerStats;
use bramble_lb::subsystem::LB_ROLE;
use bramble_meta::api::{
    Consistency, ListRequest, ListResponse, METHOD_LIST, METHOD_READ, ReadRequest,
};
use bramble_meta::lease::LeaseRecord;
use bramble_meta::types::{Command, CommandResult, VersionedValue};

use crate::cli::{GlobalOptions, LbBackendCommand, LbCommand, LbOptions};
use crate::client::ClusterClient;
use crate::output;

async fn read_spec(client: &ClusterClient, name: &str) -> Result<(BalancerSpec, u64)> {
    let request = ReadRequest {
        key: balancer_key(name),
        consistency: Consistency::Linearizable,
        forwarded: false,
    };
    let (_, value): (_, Option<VersionedValue>) = client.call_any(METHOD_READ, &request).await?;
    let value =
        value.ok_or_else(|| anyhow!("no balancer named {name:?}; `bramble lb ls` lists them"))?;
    let spec = serde_json::from_slice(&value.value)
        .map_err(|error| anyhow!("the stored spec of {name} is unreadable: {error}"))?;
    Ok((spec, value.version))
}

async fn write_spec(
    client: &ClusterClient,
    spec: &BalancerSpec,
    expected_version: u64,
) -> Result<()> {
    let command = Command::PutIfVersion {
        key: balancer_key(&spec.name),
        value: serde_json::to_vec(spec)?,
        expected_version,
    };
    let result = client.catalog_write(command).await?;
    match result {
        CommandResult::Written { .. } => Ok(()),
        CommandResult::VersionMismatch { .. } if expected_version == 0 => bail!(
            "a balancer named {} already exists; change it with `bramble lb set`",
            spec.name
        ),
        CommandResult::VersionMismatch { .. } => bail!(
            "{} was changed by someone else meanwhile; run the command again",
            spec.name
        ),
        other => bail!("{} was not written: {other:?}", spec.name),
    }
}

fn apply_options(spec: &mut BalancerSpec, options: &LbOptions) -> Result<()> {
    if let Some(mode) = &options.mode {
        spec.mode = mode.parse()?;
    }
    if let Some(balance) = &options.balance {
        spec.balance = balance.parse()?;
    }
    if let Some(check) = &options.check {
        spec.check = if check == "none" {
            None
        } else {
            Some(check.parse::<CheckSpec>()?)
        };
    }
    if let Some(cookie) = &options.sticky_cookie {
        spec.sticky = Some(Sticky::PrefixCookie(cookie.clone()));
    }
    if let Some(cookie) = &options.sticky_insert {
        spec.sticky = Some(Sticky::InsertCookie(cookie.clone()));
    }
    for priority in &options.priorities {
        let (node, value) = priority
            .split_once('=')
            .ok_or_else(|| anyhow!("--priority {priority:?}: use NODE=PRIORITY, e.g. n2=101"))?;
        let value: u8 = value
            .parse()
            .map_err(|_| anyhow!("--priority {priority:?}: the priority must be 0-255"))?;
        spec.vip.priorities.insert(node.to_string(), value);
    }
    if options.no_preempt {
        spec.vip.preempt = false;
    }
    if options.preempt {
        spec.vip.preempt = true;
    }
    if let Some(interface) = &options.vip_interface {
        spec.vip.interface = (interface != "none").then(|| interface.clone());
    }
    let timeouts = [
        (
            "--timeout-connect",
            &options.timeout_connect,
            &mut spec.timeouts.connect_ms,
        ),
        (
            "--timeout-client",
            &options.timeout_client,
            &mut spec.timeouts.client_ms,
        ),
        (
            "--timeout-server",
            &options.timeout_server,
            &mut spec.timeouts.server_ms,
        ),
        (
            "--timeout-retry",
            &options.timeout_retry,
            &mut spec.timeouts.retry_ms,
        ),
    ];
    for (flag, text, field) in timeouts {
        if let Some(text) = text {
            *field = crate::units::parse_milliseconds(text)
                .map_err(|error| anyhow!("{flag} {text:?}: {error}"))?;
        }
    }
    if let Some(seconds) = options.slow_start {
        spec.slow_start_secs = seconds;
    }
    if let Some(count) = options.max_connections {
        // Validated with the rest of the spec before it is written.
        spec.limits.max_connections = count;
    }
    Ok(())
}

/// The static backends (`ADDR`, `NAME=ADDR[,weight=N]`) among `--backend` values.
fn parse_backends(backends: &[String]) -> Result<Vec<BackendSpec>> {
    backends
        .iter()
        .filter(|text| !text.starts_with(SERVICE_BACKEND))
        .map(|text| text.parse::<BackendSpec>().map_err(Into::into))
        .collect()
}

/// `--backend service:NAME`: a service whose replicas are backends.
const SERVICE_BACKEND: &str = "service:";

fn parse_services(backends: &[String]) -> Vec<String> {
    backends
        .iter()
        .filter_map(|text| text.strip_prefix(SERVICE_BACKEND))
        .map(str::to_string)
        .collect()
}

/// Live stats from every `lb` node that answers, by balancer name (the VIP holder's
/// numbers when it answers).
async fn live_stats(client: &ClusterClient) -> BTreeMap<String, BalancerStats> {
    let mut by_name: BTreeMap<String, BalancerStats> = BTreeMap::new();
    let Ok((_, nodes)) = client
        .call_any::<_, Vec<NodeView>>("cluster.nodes", &())
        .await
    else {
        return by_name;
    };
    for node in nodes.iter().filter(|node| {
        node.state == NodeState::Alive && node.roles.iter().any(|role| role == LB_ROLE)
    }) {
        if let Ok(list) = client
            .call_at::<_, Vec<BalancerStats>>(node.addr, "lb.stats", &())
            .await
        {
            for stats in list {
                let serving = !stats.backends.is_empty();
                if serving || !by_name.contains_key(&stats.name) {
                    by_name.insert(stats.name.clone(), stats);
                }
            }
        }
    }
    by_name
}

async fn vip_holder(client: &ClusterClient, name: &str) -> Option<String> {
    let request = ReadRequest {
        key: vip_lease_key(name),
        consistency: Consistency::Stale,
        forwarded: false,
    };
    let (_, value): (_, Option<VersionedValue>) =
        client.call_any(METHOD_READ, &request).await.ok()?;
    LeaseRecord::decode(&value?.value).ok()?.holder
}

pub async fn run(global: &GlobalOptions, command: &LbCommand) -> Result<()> {
    let client = crate::target::resolve(global)?;
    match command {
        LbCommand::Create(args) => {
            let mut spec = BalancerSpec {
                name: args.name.clone(),
                listen: args.listen,
                mode: Default::default(),
                balance: Default::default(),
                backends: parse_backends(&args.backends)?,
                services: parse_services(&args.backends),
                check: None,
                sticky: None,
                timeouts: Timeouts::default(),
                limits: Limits::default(),
                slow_start_secs: 0,
                vip: VipSpec {
                    preempt: true,
                    ..VipSpec::default()
                },
            };
            apply_options(&mut spec, &args.options)?;
            spec.normalize_and_validate()?;
            write_spec(&client, &spec, 0).await?;
            println!(
                "created balancer {} on {} with {} backend(s)",
                spec.name,
                spec.listen,
                spec.backends.len()
            );
            Ok(())
        }
        LbCommand::Set(args) => {
            let (mut spec, version) = read_spec(&client, &args.name).await?;
            if !args.backends.is_empty() {
                spec.backends = parse_backends(&args.backends)?;
                spec.services = parse_services(&args.backends);
            }
            apply_options(&mut spec, &args.options)?;
            spec.normalize_and_validate()?;
            write_spec(&client, &spec, version).await?;
            println!("updated balancer {}", spec.name);
            Ok(())
        }
        LbCommand::Remove { name } => {
            read_spec(&client, name).await?;
            // The VIP's lease is released by its holder when the balancer stops.
            let command = Command::Delete {
                key: balancer_key(name),
            };
            client.catalog_write(command).await?;
            println!("removed balancer {name}");
            Ok(())
        }
        LbCommand::Backend(backend_command) => {
            let (balancer, backend, change) = match backend_command {
                LbBackendCommand::Drain { balancer, backend } => {
                    (balancer, backend, BackendChange::Drain)
                }
                LbBackendCommand::Enable { balancer, backend } => {
                    (balancer, backend, BackendChange::Enable)
                }
                LbBackendCommand::Disable { balancer, backend } => {
                    (balancer, backend, BackendChange::Disable)
                }
                LbBackendCommand::Weight {
                    balancer,
                    backend,
                    weight,
                } => (balancer, backend, BackendChange::Weight(*weight)),
            };
            let (mut spec, version) = read_spec(&client, balancer).await?;
            spec.change_backend(backend, change)?;
            write_spec(&client, &spec, version).await?;
            println!("{balancer}/{backend} updated");
            Ok(())
        }
        LbCommand::List(flags) => {
            let request = ListRequest {
                prefix: BALANCERS_PREFIX.to_string(),
                limit: 10_000,
                consistency: Consistency::Linearizable,
                forwarded: false,
            };
            let (_, entries): (_, ListResponse) = client.call_any(METHOD_LIST, &request).await?;
            let live = live_stats(&client).await;
            let mut rows = Vec::new();
            for (_, value) in entries {
                let Ok(spec) = serde_json::from_slice::<BalancerSpec>(&value.value) else {
                    continue;
                };
                let holder = vip_holder(&client, &spec.name).await;
                let mut backends: Vec<serde_json::Value> = spec
                    .backends
                    .iter()
                    .map(|backend| {
                        let status = live
                            .get(&spec.name)
                            .and_then(|stats| stats.backends.iter().find(|live| live.name == backend.name))
                            .map(|live| live.status.clone())
                            .unwrap_or_else(|| "unknown".into());
                        serde_json::json!({ "name": backend.name, "addr": backend.addr, "weight": backend.weight, "admin": backend.admin, "state": status })
                    })
                    .collect();
                // The services' replicas (`--backend service:web`), as the serving node
                // expanded them: they are in no spec.
                let replicas = live
                    .get(&spec.name)
                    .into_iter()
                    .flat_map(|stats| stats.backends.iter())
                    .filter(|live| {
                        !spec
                            .backends
                            .iter()
                            .any(|backend| backend.name == live.name)
                    });
                for live in replicas {
                    backends.push(serde_json::json!({
                        "name": live.name, "addr": live.addr, "weight": live.weight,
                        "admin": "enabled", "state": live.status, "from_service": true,
                    }));
                }
                rows.push(serde_json::json!({
                    "name": spec.name, "listen": spec.listen, "mode": spec.mode, "balance": spec.balance.to_string(),
                    "backends": backends, "vip_holder": holder,
                }));
            }
            if flags.json {
                return output::print_json(&rows);
            }
            let mut table = output::table(&[
                "NAME",
                "LISTEN",
                "MODE",
                "BALANCE",
                "BACKENDS",
                "VIP HOLDER",
            ]);
            for row in &rows {
                let backends: Vec<String> = row["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|backend| {
                        format!(
                            "{} ({})",
                            backend["name"].as_str().unwrap_or("?"),
                            backend["state"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                table.add_row(vec![
                    row["name"].as_str().unwrap_or("?").to_string(),
                    row["listen"].as_str().unwrap_or("?").to_string(),
                    row["mode"].as_str().unwrap_or("?").to_string(),
                    row["balance"].as_str().unwrap_or("?").to_string(),
                    backends.join(", "),
                    row["vip_holder"].as_str().unwrap_or("none").to_string(),
                ]);
            }
            println!("{table}");
            Ok(())
        }
        LbCommand::Show {
            name,
            output: flags,
        } => {
            let (spec, _) = read_spec(&client, name).await?;
            let live = live_stats(&client).await.remove(name);
            let holder = vip_holder(&client, name).await;
            if flags.json {
                return output::print_json(&serde_json::json!({
                    "name": spec.name, "listen": spec.listen, "mode": spec.mode, "balance": spec.balance.to_string(),
                    "vip_holder": holder, "spec": spec, "live": live,
                }));
            }
            println!(
                "{}: {} {} {}, VIP held by {}",
                spec.name,
                spec.listen,
                format!("{:?}", spec.mode).to_lowercase(),
                spec.balance,
                holder.as_deref().unwrap_or("nobody")
            );
            let mut table = output::table(&[
                "BACKEND",
                "ADDRESS",
                "STATUS",
                "WEIGHT",
                "ACTIVE",
                "TOTAL",
                "ERRORS",
                "LAST CHECK",
            ]);
            for backend in &spec.backends {
                let state = live
                    .as_ref()
                    .and_then(|stats| stats.backends.iter().find(|live| live.name == backend.name));
                table.add_row(vec![
                    backend.name.clone(),
                    backend.addr.to_string(),
                    state
                        .map(|state| state.status.clone())
                        .unwrap_or_else(|| format!("{:?}", backend.admin).to_lowercase()),
                    backend.weight.to_string(),
                    state
                        .map(|state| state.active_sessions.to_string())
                        .unwrap_or_else(|| "-".into()),
                    state
                        .map(|state| state.total_sessions.to_string())
                        .unwrap_or_else(|| "-".into()),
                    state
                        .map(|state| state.errors.to_string())
                        .unwrap_or_else(|| "-".into()),
                    state
                        .map(|state| state.last_check.clone())
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            // Replicas of the services that are backends, as the serving node sees them.
            for state in live.iter().flat_map(|stats| stats.backends.iter()) {
                if spec
                    .backends
                    .iter()
                    .any(|backend| backend.name == state.name)
                {
                    continue;
                }
                table.add_row(vec![
                    state.name.clone(),
                    state.addr.clone(),
                    state.status.clone(),
                    state.weight.to_string(),
                    state.active_sessions.to_string(),
                    state.total_sessions.to_string(),
                    state.errors.to_string(),
                    state.last_check.clone(),
                ]);
            }
            println!("{table}");
            if !spec.services.is_empty() {
                println!(
                    "backends from services: {} (each placed replica, as <service>-<index>)",
                    spec.services.join(", ")
                );
            }
            Ok(())
        }
    }
}
