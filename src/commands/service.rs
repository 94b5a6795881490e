//! `bramble service ...`: replicated services (bramble-compute's `services.*` calls, asked
//! of any agent).

use anyhow::{Context, Result, anyhow, bail};
use bramble_compute::services::admin::*;
use bramble_compute::services::spec::{Constraint, HealthCheck, Probe, RestartPolicy, ServiceSpec};

use crate::cli::{GlobalOptions, RestartArg, ServiceCommand, ServiceCreateArgs};
use crate::output;

pub async fn run(global: &GlobalOptions, command: &ServiceCommand) -> Result<()> {
    let client = crate::target::resolve(global)?;
    match command {
        ServiceCommand::Create(args) => {
            let spec = spec_from(args)?;
            let (_, created): (_, ServiceSpec) = client.call_any(METHOD_CREATE, &spec).await?;
            if args.output.json {
                return output::print_json(&created);
            }
            println!(
                "created service {} ({} replica(s) of {}); bramble service ps {} shows where they run",
                created.name,
                created.replicas,
                created.describe_command(),
                created.name
            );
            Ok(())
        }
        ServiceCommand::Ls(flag) => {
            let (_, services): (_, Vec<ServiceSummary>) = client.call_any(METHOD_LIST, &()).await?;
            if flag.json {
                return output::print_json(&services);
            }
            if services.is_empty() {
                println!("no services (bramble service create --help)");
                return Ok(());
            }
            let mut table = output::table(&[
                "service", "replicas", "port", "restart", "limits", "command",
            ]);
            for service in &services {
                table.add_row(vec![
                    service.name.clone(),
                    format!("{}/{}", service.running, service.replicas),
                    service
                        .port
                        .map(|port| port.to_string())
                        .unwrap_or_default(),
                    service.restart.clone(),
                    service.limits.clone(),
                    service.command.chars().take(60).collect(),
                ]);
            }
            println!("{table}");
            Ok(())
        }
        ServiceCommand::Ps(args) => {
            let (_, answer): (_, PsAnswer) = client.call_any(METHOD_PS, &args.name).await?;
            if args.output.json {
                return output::print_json(&answer);
            }
            let mut table = output::table(&[
                "replica",
                "node",
                "state",
                "pid",
                "port",
                "user",
                "restarts",
                "last exit",
                "error",
            ]);
            for replica in &answer.replicas {
                let state = match &replica.health {
                    Some(health) => format!("{} ({health})", replica.state),
                    None => replica.state.clone(),
                };
                table.add_row(vec![
                    format!("{}.{}", replica.service, replica.index),
                    replica.node.clone(),
                    state,
                    replica.pid.map(|pid| pid.to_string()).unwrap_or_default(),
                    replica
                        .port
                        .map(|port| port.to_string())
                        .unwrap_or_default(),
                    replica.user.clone(),
                    replica.restarts.to_string(),
                    replica.last_exit.clone().unwrap_or_default(),
                    replica.error.clone().unwrap_or_default(),
                ]);
            }
            for (index, reason) in &answer.pending {
                table.add_row(vec![
                    format!("{}.{}", answer.spec.name, index),
                    String::new(),
                    "pending".to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    reason.clone(),
                ]);
            }
            println!("{table}");
            // Warnings are long (what the node lacks and what to do): under the table,
            // once per distinct text, naming the replicas it applies to.
            let mut warnings: Vec<(String, Vec<String>)> = Vec::new();
            for replica in &answer.replicas {
                let Some(warning) = &replica.warning else {
                    continue;
                };
                let name = format!("{}.{} on {}", replica.service, replica.index, replica.node);
                match warnings.iter_mut().find(|(text, _)| text == warning) {
                    Some((_, names)) => names.push(name),
                    None => warnings.push((warning.clone(), vec![name])),
                }
            }
            for (warning, names) in warnings {
                println!("warning ({}): {warning}", names.join(", "));
            }
            if !answer.unreachable.is_empty() {
                println!("did not answer: {}", answer.unreachable.join(", "));
            }
            Ok(())
        }
        ServiceCommand::Inspect(args) => {
            let (_, spec): (_, ServiceSpec) = client.call_any(METHOD_INSPECT, &args.name).await?;
            output::print_json(&spec)
        }
        ServiceCommand::Scale(args) => {
            let request = ScaleRequest {
                name: args.name.clone(),
                replicas: args.replicas,
            };
            let (_, spec): (_, ServiceSpec) = client.call_any(METHOD_SCALE, &request).await?;
            println!(
                "service {} scaled to {} replica(s)",
                spec.name, spec.replicas
            );
            Ok(())
        }
        ServiceCommand::Rm(args) => {
            let (_, spec): (_, ServiceSpec) = client.call_any(METHOD_REMOVE, &args.name).await?;
            println!(
                "removed service {}; its replicas are stopping (SIGTERM, then SIGKILL after {} ms)",
                spec.name, spec.stop_grace_ms
            );
            Ok(())
        }
        ServiceCommand::Logs(args) => {
            let (_, answer): (_, PsAnswer) = client.call_any(METHOD_PS, &args.name).await?;
            let replica = answer
                .replicas
                .iter()
                .find(|replica| replica.index == args.replica)
                .ok_or_else(|| {
                    anyhow!(
                        "replica {} of {} runs nowhere at the moment (bramble service ps {})",
                        args.replica,
                        args.name,
                        args.name
                    )
                })?;
            let address = client.address_of(&replica.node).await?;
            let request = LogsRequest {
                name: args.name.clone(),
                index: args.replica,
                tail_bytes: crate::units::parse_size(&args.tail)?,
            };
            let bytes: Vec<u8> = client
                .call_at(address, METHOD_LOGS, &request)
                .await
                .with_context(|| format!("reading the log on {}", replica.node))?;
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
            Ok(())
        }
    }
}

fn spec_from(args: &ServiceCreateArgs) -> Result<ServiceSpec> {
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow!("give the command after --"))?;
    let mut env = Vec::new();
    if let Some(path) = &args.env_file {
        let text = bramble_util::files::read_bounded(path, 1024 * 1024)
            .with_context(|| format!("reading {}", path.display()))?;
        let text =
            String::from_utf8(text).map_err(|_| anyhow!("{} is not UTF-8", path.display()))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line.split_once('=').ok_or_else(|| {
                anyhow!("{} line {}: write NAME=VALUE", path.display(), number + 1)
            })?;
            env.push((name.trim().to_string(), value.to_string()));
        }
    }
    for pair in &args.env {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--env {pair:?}: write NAME=VALUE"))?;
        env.push((name.to_string(), value.to_string()));
    }
    let constraints = args
        .constraints
        .iter()
        .map(|text| Constraint::parse(text).map_err(|error| anyhow!(error)))
        .collect::<Result<Vec<_>>>()?;
    let stop_grace_ms = crate::units::parse_milliseconds(&args.stop_grace)?;
    let probe = match (&args.health_http, &args.health_cmd) {
        (Some(path), _) => Some(Probe::Http { path: path.clone() }),
        (None, Some(line)) => Some(Probe::Command { line: line.clone() }),
        (None, None) => None,
    };
    let health = match probe {
        Some(probe) => Some(HealthCheck {
            probe,
            interval_ms: crate::units::parse_milliseconds(&args.health_interval)?,
            timeout_ms: crate::units::parse_milliseconds(&args.health_timeout)?,
            retries: args.health_retries,
            start_period_ms: crate::units::parse_milliseconds(&args.health_start_period)?,
        }),
        None => None,
    };
    let spec = ServiceSpec {
        name: args.name.clone(),
        program: program.clone(),
        args: rest.to_vec(),
        replicas: args.replicas,
        port: args.port,
        env,
        restart: match args.restart {
            RestartArg::Always => RestartPolicy::Always,
            RestartArg::OnFailure => RestartPolicy::OnFailure,
            RestartArg::Never => RestartPolicy::Never,
        },
        max_per_node: args.max_per_node,
        constraints,
        user: args.user.clone(),
        stop_grace_ms,
        health,
        cpus_millis: args
            .cpus
            .as_deref()
            .map(|text| crate::units::parse_cpus(text).context("--cpus"))
            .transpose()?,
        memory_bytes: args
            .memory
            .as_deref()
            .map(|text| crate::units::parse_size(text).context("--memory"))
            .transpose()?,
        generation: 1,
        created_unix_ms: 0,
    };
    if let Err(error) = spec.validate() {
        bail!(error);
    }
    Ok(spec)
}
