//! `bramble service ...`: replicated services (bramble-compute's `services.*` calls, asked
//! of any agent).

use anyhow::{Context, Result, anyhow, bail};
use bramble_compute::services::admin::*;
use bramble_compute::services::spec::{
    Constraint, FailureAction, HealthCheck, Probe, RestartPolicy, RolloutKind, RolloutState,
    ServiceSpec,
};

use crate::cli::{
    FailureActionArg, GlobalOptions, HealthArgs, RestartArg, ServiceCommand, ServiceCreateArgs,
    ServiceLogsArgs, ServiceUpdateArgs,
};
use crate::output;

pub async fn run(global: &GlobalOptions, command: &ServiceCommand) -> Result<()> {
    let client = crate::target::resolve(global)?;
    match command {
        ServiceCommand::Create(args) => {
            let spec = spec_from(args)?;
            let (_, created): (_, ServiceSpec) = match &args.wasm {
                None => client.call_any(METHOD_CREATE, &spec).await?,
                Some(path) => {
                    let module = read_module(path)?;
                    client
                        .call_any(METHOD_CREATE_WASM, &CreateWasm { spec, module })
                        .await?
                }
            };
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
                "service", "version", "replicas", "port", "restart", "limits", "command",
            ]);
            for service in &services {
                table.add_row(vec![
                    service.name.clone(),
                    service.version.to_string(),
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
            for service in &services {
                if let Some(update) = &service.update {
                    println!("{}: {update}", service.name);
                }
            }
            Ok(())
        }
        ServiceCommand::Ps(args) => {
            let (_, answer): (_, PsAnswer) = client.call_any(METHOD_PS, &args.name).await?;
            if args.output.json {
                return output::print_json(&answer);
            }
            let mut table = output::table(&[
                "replica",
                "version",
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
                let mut state = match &replica.health {
                    Some(health) => format!("{} ({health})", replica.state),
                    None => replica.state.clone(),
                };
                if answer.withheld.contains(&replica.index) && replica.state == "running" {
                    state.push_str(", out of the balancers");
                }
                table.add_row(vec![
                    format!("{}.{}", replica.service, replica.index),
                    replica.generation.to_string(),
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
            if let Some(rollout) = &answer.rollout {
                println!("version {}; {}", answer.spec.generation, rollout.describe());
            }
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
            for handover in &answer.handovers {
                println!(
                    "{}.{} is moving off {} (drained) to {}: its old copy serves until the new one is ready",
                    answer.spec.name, handover.index, handover.from_node, handover.to_node
                );
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
        ServiceCommand::Update(args) => {
            let (_, current): (_, ServiceSpec) =
                client.call_any(METHOD_INSPECT, &args.name).await?;
            let request = update_request(args, &current)?;
            let (_, updated): (_, ServiceSpec) = client.call_any(METHOD_UPDATE, &request).await?;
            if updated.generation == current.generation {
                println!(
                    "service {}: update policy changed; no replica is replaced",
                    updated.name
                );
                return Ok(());
            }
            println!(
                "service {}: rolling update to version {} ({} at a time, on failure {})",
                updated.name,
                updated.generation,
                match updated.update.parallelism {
                    0 => "all".to_string(),
                    parallelism => parallelism.to_string(),
                },
                updated.update.on_failure.name()
            );
            if args.detach {
                return Ok(());
            }
            follow_rollout(
                &client,
                &updated.name,
                updated.generation,
                RolloutKind::Update,
            )
            .await
        }
        ServiceCommand::Rollback(args) => {
            let (_, restored): (_, ServiceSpec) =
                client.call_any(METHOD_ROLLBACK, &args.name).await?;
            println!(
                "service {}: rolling back to version {}",
                restored.name, restored.generation
            );
            if args.detach {
                return Ok(());
            }
            follow_rollout(
                &client,
                &restored.name,
                restored.generation,
                RolloutKind::Rollback,
            )
            .await
        }
        ServiceCommand::Logs(args) => show_logs(&client, args).await,
    }
}

/// A module file, bounded by the largest a service may run.
fn read_module(path: &std::path::Path) -> Result<Vec<u8>> {
    bramble_util::files::read_bounded(path, bramble_compute::modules::MAX_MODULE_BYTES)
        .with_context(|| format!("reading the module {}", path.display()))
}

/// A module's name for people: its file name.
fn module_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "module.wasm".to_string())
}

fn spec_from(args: &ServiceCreateArgs) -> Result<ServiceSpec> {
    let (program, rest) = match &args.wasm {
        Some(path) => (module_name(path), args.command.as_slice()),
        None => {
            let (program, rest) = args
                .command
                .split_first()
                .ok_or_else(|| anyhow!("give the command after --"))?;
            (program.clone(), rest)
        }
    };
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
        env.push(parse_env_pair(pair)?);
    }
    let constraints = args
        .constraints
        .iter()
        .map(|text| Constraint::parse(text).map_err(|error| anyhow!(error)))
        .collect::<Result<Vec<_>>>()?;
    let stop_grace_ms = crate::units::parse_milliseconds(&args.stop_grace)?;
    let health = health_from(&args.health, None)?;
    let spec = ServiceSpec {
        name: args.name.clone(),
        program,
        args: rest.to_vec(),
        replicas: args.replicas,
        port: args.port,
        env,
        restart: restart_policy(args.restart),
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
        module: None,
        update: Default::default(),
        previous: None,
    };
    if let Err(error) = spec.validate() {
        bail!(error);
    }
    Ok(spec)
}

fn restart_policy(argument: RestartArg) -> RestartPolicy {
    match argument {
        RestartArg::Always => RestartPolicy::Always,
        RestartArg::OnFailure => RestartPolicy::OnFailure,
        RestartArg::Never => RestartPolicy::Never,
    }
}

/// The health check the flags describe: a new probe takes the timings given, else those
/// of `base` (the check being replaced), else the defaults; timings alone retime `base`.
fn health_from(args: &HealthArgs, base: Option<&HealthCheck>) -> Result<Option<HealthCheck>> {
    let probe = match (&args.health_http, &args.health_cmd, base) {
        (Some(path), _, _) => Probe::Http { path: path.clone() },
        (None, Some(line), _) => Probe::Command { line: line.clone() },
        (None, None, Some(base)) => base.probe.clone(),
        (None, None, None) => {
            if args.health_interval.is_some()
                || args.health_timeout.is_some()
                || args.health_retries.is_some()
                || args.health_start_period.is_some()
            {
                bail!("health check timings need a check: --health-http PATH or --health-cmd CMD");
            }
            return Ok(None);
        }
    };
    let milliseconds = |given: &Option<String>, base: Option<u64>, default: u64| -> Result<u64> {
        match given {
            Some(text) => crate::units::parse_milliseconds(text),
            None => Ok(base.unwrap_or(default)),
        }
    };
    Ok(Some(HealthCheck {
        probe,
        interval_ms: milliseconds(&args.health_interval, base.map(|b| b.interval_ms), 2_000)?,
        timeout_ms: milliseconds(&args.health_timeout, base.map(|b| b.timeout_ms), 1_000)?,
        retries: args.health_retries.or(base.map(|b| b.retries)).unwrap_or(3),
        start_period_ms: milliseconds(
            &args.health_start_period,
            base.map(|b| b.start_period_ms),
            2_000,
        )?,
    }))
}

fn parse_env_pair(pair: &str) -> Result<(String, String)> {
    let (name, value) = pair
        .split_once('=')
        .ok_or_else(|| anyhow!("--env {pair:?}: write NAME=VALUE"))?;
    Ok((name.to_string(), value.to_string()))
}

/// The `services.update` request the flags ask for (the current spec supplies what a
/// partial health check change keeps).
fn update_request(args: &ServiceUpdateArgs, current: &ServiceSpec) -> Result<UpdateRequest> {
    // Only flags that were given change the check (None keeps it).
    let health = health_from(&args.health, current.health.as_ref())?
        .filter(|check| Some(check) != current.health.as_ref());
    let optional_ms = |given: &Option<String>| -> Result<Option<u64>> {
        given
            .as_deref()
            .map(crate::units::parse_milliseconds)
            .transpose()
    };
    Ok(UpdateRequest {
        name: args.name.clone(),
        command: (!args.command.is_empty()).then(|| args.command.clone()),
        env_add: args
            .env
            .iter()
            .map(|pair| parse_env_pair(pair))
            .collect::<Result<_>>()?,
        env_remove: args.env_remove.clone(),
        user: args.user.clone(),
        stop_grace_ms: optional_ms(&args.stop_grace)?,
        restart: args.restart.map(restart_policy),
        health,
        remove_health: args.no_health,
        cpus_millis: args
            .cpus
            .as_deref()
            .map(|text| match text {
                "none" => Ok(None),
                text => crate::units::parse_cpus(text).context("--cpus").map(Some),
            })
            .transpose()?,
        memory_bytes: args
            .memory
            .as_deref()
            .map(|text| match text {
                "none" => Ok(None),
                text => crate::units::parse_size(text).context("--memory").map(Some),
            })
            .transpose()?,
        parallelism: args.parallelism,
        delay_ms: optional_ms(&args.delay)?,
        on_failure: args.on_failure.map(|action| match action {
            FailureActionArg::Pause => FailureAction::Pause,
            FailureActionArg::Continue => FailureAction::Continue,
            FailureActionArg::Rollback => FailureAction::Rollback,
        }),
        monitor_ms: optional_ms(&args.monitor)?,
        force: args.force,
        module: args
            .wasm
            .as_deref()
            .map(|path| read_module(path).map(|module| (module_name(path), module)))
            .transpose()?,
    })
}

/// Follows a rollout to `generation` with a progress bar until it completes, pauses or is
/// rolled back; an error unless it completed as asked.
async fn follow_rollout(
    client: &crate::client::ClusterClient,
    name: &str,
    generation: u64,
    kind: RolloutKind,
) -> Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} replicas")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    loop {
        let (_, answer): (_, PsAnswer) = client.call_any(METHOD_PS, &name.to_string()).await?;
        let target = answer.spec.generation;
        let updated = answer
            .replicas
            .iter()
            .filter(|replica| replica.generation == target && replica.state == "running")
            .count() as u64;
        bar.set_length(u64::from(answer.spec.replicas));
        bar.set_position(updated.min(u64::from(answer.spec.replicas)));
        let Some(rollout) = answer.rollout else {
            bar.set_message(format!("{name}: waiting for the reconciler"));
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            continue;
        };
        bar.set_message(format!("{name}: {}", rollout.describe()));
        let ours = rollout.to_generation == generation && rollout.kind == kind;
        match rollout.state {
            RolloutState::Running => {}
            RolloutState::Completed if ours => {
                bar.finish_and_clear();
                println!("{name}: {}", rollout.describe());
                return Ok(());
            }
            RolloutState::Paused if ours => {
                bar.finish_and_clear();
                bail!(
                    "{name}: {} — bramble service rollback {name} returns to the previous version",
                    rollout.describe()
                );
            }
            _ if rollout.kind == RolloutKind::Rollback && kind == RolloutKind::Update => {
                // The update failed and is being (or has been) rolled back: follow that.
                if rollout.state == RolloutState::Completed {
                    bar.finish_and_clear();
                    bail!(
                        "{name}: the update failed and was rolled back: {}",
                        rollout.describe()
                    );
                }
            }
            _ => {
                bar.finish_and_clear();
                bail!(
                    "{name}: another change replaced this one: {}",
                    rollout.describe()
                );
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// The node a replica runs on now (one running copy preferred over one stopping).
async fn replica_node(
    client: &crate::client::ClusterClient,
    name: &str,
    index: u32,
) -> Result<Option<String>> {
    let (_, answer): (_, PsAnswer) = client.call_any(METHOD_PS, &name.to_string()).await?;
    let mut copies: Vec<_> = answer
        .replicas
        .iter()
        .filter(|replica| replica.index == index)
        .collect();
    copies.sort_by_key(|replica| replica.state != "running");
    Ok(copies.first().map(|replica| replica.node.clone()))
}

/// `service logs`: the tail of a replica's log, and with `--follow` what it writes next,
/// following the replica to another node if it moves (until Ctrl-C).
async fn show_logs(client: &crate::client::ClusterClient, args: &ServiceLogsArgs) -> Result<()> {
    use std::io::Write;
    let no_replica = || {
        anyhow!(
            "replica {} of {} runs nowhere at the moment (bramble service ps {})",
            args.replica,
            args.name,
            args.name
        )
    };
    let mut node = replica_node(client, &args.name, args.replica)
        .await?
        .ok_or_else(no_replica)?;
    let mut request = LogsRequest {
        name: args.name.clone(),
        index: args.replica,
        tail_bytes: crate::units::parse_size(&args.tail)?,
        after: None,
    };
    let mut quiet_rounds = 0u32;
    loop {
        let address = client.address_of(&node).await?;
        match client
            .call_at::<_, LogChunk>(address, METHOD_LOGS, &request)
            .await
        {
            Ok(chunk) => {
                let mut stdout = std::io::stdout();
                stdout.write_all(&chunk.bytes)?;
                stdout.flush()?;
                if !args.follow {
                    return Ok(());
                }
                request.after = chunk.position;
                quiet_rounds = if chunk.bytes.is_empty() {
                    quiet_rounds + 1
                } else {
                    0
                };
            }
            Err(error) if !args.follow || request.after.is_none() => {
                return Err(error).with_context(|| format!("reading the log on {node}"));
            }
            // Its node went away: look where the replica runs now.
            Err(_) => quiet_rounds = u32::MAX,
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        // Every few quiet seconds, check whether the replica moved.
        if quiet_rounds >= 6 {
            quiet_rounds = 0;
            if let Some(now) = replica_node(client, &args.name, args.replica).await?
                && now != node
            {
                eprintln!("--- {}.{} now runs on {now} ---", args.name, args.replica);
                node = now;
                request.after = None;
                request.tail_bytes = MAX_FOLLOW_START;
            }
        }
    }
}

/// How much of a moved replica's new log `--follow` shows first.
const MAX_FOLLOW_START: u64 = 64 * 1024;
