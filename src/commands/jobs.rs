//! `bramble run`, `bramble pi`, `bramble jobs`, `bramble job`, `bramble cancel`: parallel
//! jobs (bramble-compute's `jobs.*` calls, asked of any agent). An attached job shows a
//! progress bar and, at the end, its reduced result and wall-clock time.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bramble_compute::jobs::admin::*;
use bramble_compute::jobs::montecarlo;
use bramble_compute::jobs::record::{JobState, TaskState};
use bramble_compute::jobs::spec::{JobId, JobSpec, Policy, Reduce, Work};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cli::{
    CancelArgs, GlobalOptions, JobArgs, JobCommand, JobOptions, JobsArgs, PiArgs, PolicyArg,
    ReduceArg, RunArgs,
};
use crate::client::ClusterClient;
use crate::output;

/// How long an attached command keeps asking while no agent answers (a node it talked
/// to died; the scheduler is moving).
const PATIENCE: Duration = Duration::from_secs(60);

fn policy(argument: PolicyArg) -> Policy {
    match argument {
        PolicyArg::Roundrobin => Policy::RoundRobin,
        PolicyArg::Leastload => Policy::LeastLoad,
        PolicyArg::Greedy => Policy::Greedy,
        PolicyArg::Dynamic => Policy::Dynamic,
    }
}

fn reduce(argument: ReduceArg) -> Reduce {
    match argument {
        ReduceArg::Sum => Reduce::Sum,
        ReduceArg::Min => Reduce::Min,
        ReduceArg::Max => Reduce::Max,
        ReduceArg::Concat => Reduce::Concat,
        ReduceArg::None => Reduce::None,
    }
}

fn parse_timeout(text: &str) -> Result<u64> {
    crate::units::parse_with_units(
        text,
        &[
            ("", 1),
            ("ms", 1),
            ("s", 1000),
            ("m", 60_000),
            ("h", 3_600_000),
        ],
        "a duration such as 500ms, 30s, 10m or 2h",
    )
}

/// `1000000000`, `1e9`, `2.5e8`: a whole count.
fn parse_count(text: &str) -> Result<u64> {
    let trimmed = text.trim().replace('_', "");
    if let Ok(count) = trimmed.parse::<u64>() {
        return Ok(count);
    }
    let float: f64 = trimmed
        .parse()
        .map_err(|_| anyhow!("{text:?} is not a count (1000000, 1e9)"))?;
    if !float.is_finite() || float < 0.0 || float.fract() != 0.0 || float > 1e18 {
        bail!("{text:?} is not a whole count between 0 and 1e18");
    }
    Ok(float as u64)
}

fn spec_from(options: &JobOptions, work: Work, tasks: u32, reduction: Reduce) -> Result<JobSpec> {
    // A seed for replaying, not a secret: the clock and the process id, mixed.
    let seed = options.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(0);
        let mut state = nanos ^ (u64::from(std::process::id()) << 32);
        montecarlo::splitmix64(&mut state)
    });
    let spec = JobSpec {
        id: 0,
        work,
        tasks,
        policy: policy(options.policy),
        cpus_per_task: options.cpus_per_task,
        max_running: options.max_running,
        retries: options.retries,
        speculate: options.speculate,
        timeout_ms: options.timeout.as_deref().map(parse_timeout).transpose()?,
        after: options.after,
        reduce: reduction,
        seed,
        env: Vec::new(),
        submitted_unix_ms: 0,
        submitted_by: String::new(),
    };
    Ok(spec)
}

pub async fn run(global: &GlobalOptions, args: &RunArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let module = match &args.wasm {
        Some(path) => Some(
            bramble_util::files::read_bounded(path, bramble_compute::jobs::spec::MAX_MODULE_BYTES)
                .with_context(|| format!("reading the module {}", path.display()))?,
        ),
        None => None,
    };
    let work = match &module {
        Some(bytes) => {
            // A clear error before anything is sent (the agent checks again).
            bramble_wasm::inspect(bytes).map_err(|error| anyhow!("{error}"))?;
            Work::Wasm {
                module: blake3::hash(bytes).to_hex().to_string(),
                module_bytes: bytes.len() as u64,
                args: args.command.clone(),
                fuel: args.fuel,
                memory_bytes: crate::units::parse_size(&args.memory)?,
            }
        }
        None => {
            let (program, rest) = args
                .command
                .split_first()
                .ok_or_else(|| anyhow!("give the command after --"))?;
            Work::Command {
                program: program.clone(),
                args: rest.to_vec(),
            }
        }
    };
    let mut spec = spec_from(&args.options, work, args.tasks, reduce(args.reduce))?;
    for pair in &args.env {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--env {pair:?}: write NAME=VALUE"))?;
        spec.env.push((name.to_string(), value.to_string()));
    }
    spec.validate().map_err(|error| anyhow!(error))?;
    let submitted = Instant::now();
    let (_, id): (_, JobId) = match module {
        Some(module) => {
            client
                .call_any(
                    METHOD_SUBMIT_WASM,
                    &SubmitWasm {
                        spec: spec.clone(),
                        module,
                    },
                )
                .await?
        }
        None => client.call_any(METHOD_SUBMIT, &spec).await?,
    };
    if args.options.detach {
        if args.options.output.json {
            return output::print_json(&serde_json::json!({ "id": id }));
        }
        println!("submitted job {id} (bramble job {id}; bramble cancel {id})");
        return Ok(());
    }
    let view = follow(&client, id, spec.tasks, !args.options.output.json).await?;
    let wall = submitted.elapsed();
    if args.options.output.json {
        return output::print_json(&Finished::from(&view, wall));
    }
    print_outcome(&view, wall);
    if view.record.state != JobState::Succeeded {
        bail!(
            "job {id} {}{}",
            view.record.state.name(),
            view.record
                .reason
                .as_ref()
                .map(|reason| format!(": {reason}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// What `--json` prints for a finished job.
#[derive(Serialize)]
struct Finished {
    id: JobId,
    state: JobState,
    reason: Option<String>,
    tasks: u32,
    done: u64,
    result: Option<String>,
    wall_seconds: f64,
    attempts: u64,
    failures: u64,
    speculative_copies: u32,
    scheduler_changes: u32,
    per_node: BTreeMap<String, u32>,
    weights: BTreeMap<String, f64>,
}

impl Finished {
    fn from(view: &JobView, wall: Duration) -> Finished {
        Finished {
            id: view.spec.id,
            state: view.record.state,
            reason: view.record.reason.clone(),
            tasks: view.spec.tasks,
            done: view.record.done.len(),
            result: view.record.reduction.render(view.spec.reduce),
            wall_seconds: wall.as_secs_f64(),
            attempts: view.record.attempts,
            failures: view.record.failure_count,
            speculative_copies: view.record.speculative_copies,
            scheduler_changes: view.record.scheduler_changes,
            per_node: view.record.per_node.clone(),
            weights: view.record.weights.clone(),
        }
    }
}

fn print_outcome(view: &JobView, wall: Duration) {
    let record = &view.record;
    let spread = record
        .per_node
        .iter()
        .map(|(node, count)| format!("{node} {count}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "job {} {}: {}/{} tasks in {:.2} s wall clock ({} attempts{}{}){}",
        view.spec.id,
        record.state.name(),
        record.done.len(),
        view.spec.tasks,
        wall.as_secs_f64(),
        record.attempts,
        if record.failure_count > 0 {
            format!(", {} failed", record.failure_count)
        } else {
            String::new()
        },
        if record.scheduler_changes > 0 {
            format!(", {} scheduler change(s)", record.scheduler_changes)
        } else {
            String::new()
        },
        if spread.is_empty() {
            String::new()
        } else {
            format!("; by node: {spread}")
        },
    );
    if let Some(reason) = &record.reason {
        println!("reason: {reason}");
    }
    if let Some(result) = record.reduction.render(view.spec.reduce) {
        println!("result: {result}");
    }
    if record.reduction.not_number_count > 0 {
        println!(
            "note: {} task(s) printed no number (for example task {})",
            record.reduction.not_number_count, record.reduction.not_numbers[0]
        );
    }
}

/// Asks any agent about a job, retrying while none answers (up to [`PATIENCE`]).
async fn ask_job(client: &ClusterClient, id: JobId, with_tasks: bool) -> Result<JobView> {
    let started = Instant::now();
    let query = JobQuery {
        id,
        with_tasks,
        forwarded: false,
    };
    loop {
        match client.call_any::<_, JobView>(METHOD_JOB, &query).await {
            Ok((_, view)) => return Ok(view),
            Err(error) => {
                let text = format!("{error:#}");
                if text.contains("there is no job") || started.elapsed() > PATIENCE {
                    return Err(error);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// Follows a job to its end with a progress bar; Ctrl-C cancels it.
async fn follow(client: &ClusterClient, id: JobId, tasks: u32, show: bool) -> Result<JobView> {
    let bar = if show && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(u64::from(tasks));
        bar.set_draw_target(ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "job {prefix} {bar:30} {pos}/{len} tasks {msg} [{elapsed}]",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(id.to_string());
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let view = ask_job(client, id, false).await?;
        bar.set_position(view.record.done.len());
        bar.set_message(format!(
            "{} running{}",
            view.running,
            if view.record.failure_count > 0 {
                format!(", {} failed attempt(s)", view.record.failure_count)
            } else {
                String::new()
            }
        ));
        if view.record.state.is_final() {
            bar.finish_and_clear();
            return Ok(view);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                bar.println(format!("cancelling job {id} (Ctrl-C); use --detach to leave a job running"));
                client.call_any::<_, JobState>(METHOD_CANCEL, &id).await?;
            }
        }
    }
}

pub async fn pi(global: &GlobalOptions, args: &PiArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let samples = parse_count(&args.samples)?;
    let spec = spec_from(
        &args.options,
        Work::Pi { samples },
        args.partitions,
        Reduce::Sum,
    )?;
    spec.validate().map_err(|error| anyhow!(error))?;
    let submitted = Instant::now();
    let (_, id): (_, JobId) = client.call_any(METHOD_SUBMIT, &spec).await?;
    if args.options.detach {
        println!("submitted job {id} (bramble job {id})");
        return Ok(());
    }
    let view = follow(&client, id, spec.tasks, !args.options.output.json).await?;
    let wall = submitted.elapsed();
    if view.record.state != JobState::Succeeded {
        print_outcome(&view, wall);
        bail!("the pi job did not succeed");
    }
    let hits: u64 = view
        .record
        .reduction
        .render(Reduce::Sum)
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| anyhow!("the job's result is not a count"))?;
    let estimate = 4.0 * hits as f64 / samples as f64;
    let error = (estimate - std::f64::consts::PI).abs();
    let local = if args.no_local {
        None
    } else {
        if !args.options.output.json {
            eprintln!("now the same samples on this machine alone...");
        }
        Some(local_run(samples, spec.tasks, spec.seed).await?)
    };
    #[derive(Serialize)]
    struct PiReport {
        job: JobId,
        samples: u64,
        partitions: u32,
        seed: u64,
        hits: u64,
        estimate: f64,
        error: f64,
        wall_seconds: f64,
        samples_per_second: f64,
        per_node: BTreeMap<String, u32>,
        local_seconds: Option<f64>,
        local_threads: Option<usize>,
        local_hits_match: Option<bool>,
        speedup: Option<f64>,
    }
    let report = PiReport {
        job: id,
        samples,
        partitions: spec.tasks,
        seed: spec.seed,
        hits,
        estimate,
        error,
        wall_seconds: wall.as_secs_f64(),
        samples_per_second: samples as f64 / wall.as_secs_f64(),
        per_node: view.record.per_node.clone(),
        local_seconds: local.as_ref().map(|run| run.seconds),
        local_threads: local.as_ref().map(|run| run.threads),
        local_hits_match: local.as_ref().map(|run| run.hits == hits),
        speedup: local.as_ref().map(|run| run.seconds / wall.as_secs_f64()),
    };
    if args.options.output.json {
        return output::print_json(&report);
    }
    println!("pi is roughly {estimate:.9}  (error {error:.2e} against pi)");
    println!(
        "cluster: {} samples in {} partitions, {:.3} s wall clock, {:.3e} samples/s (job {id}; by node: {})",
        samples,
        spec.tasks,
        report.wall_seconds,
        report.samples_per_second,
        report
            .per_node
            .iter()
            .map(|(node, count)| format!("{node} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(run) = &local {
        println!(
            "this machine alone: {:.3} s with {} thread(s), same count: {}; speed-up {:.2}x",
            run.seconds,
            run.threads,
            if run.hits == hits { "yes" } else { "NO" },
            run.seconds / report.wall_seconds
        );
    }
    Ok(())
}

struct LocalRun {
    seconds: f64,
    threads: usize,
    hits: u64,
}

/// The same partitions, seeds and kernel on this machine's cores.
async fn local_run(samples: u64, partitions: u32, seed: u64) -> Result<LocalRun> {
    let threads = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1)
        .min(partitions as usize)
        .max(1);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let next = std::sync::atomic::AtomicU32::new(0);
        let never = AtomicBool::new(false);
        let total = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if index >= partitions {
                            break;
                        }
                        let share = montecarlo::samples_of_task(samples, partitions, index);
                        let hits = montecarlo::count_hits(
                            montecarlo::task_seed(seed, index),
                            share,
                            &never,
                        )
                        .unwrap_or(0);
                        total.fetch_add(hits, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        LocalRun {
            seconds: started.elapsed().as_secs_f64(),
            threads,
            hits: total.into_inner(),
        }
    })
    .await
    .context("the local run")
}

pub async fn list(global: &GlobalOptions, args: &JobsArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let (_, jobs): (_, Vec<JobSummary>) = client
        .call_any(METHOD_LIST, &ListJobs { all: args.all })
        .await?;
    if args.output.json {
        return output::print_json(&jobs);
    }
    if jobs.is_empty() {
        println!("no jobs (bramble run --help)");
        return Ok(());
    }
    let mut table = output::table(&[
        "job",
        "state",
        "tasks done",
        "policy",
        "command",
        "submitted",
    ]);
    for job in &jobs {
        table.add_row(vec![
            job.id.to_string(),
            job.state.name().to_string(),
            format!("{}/{}", job.done, job.tasks),
            job.policy.clone(),
            job.work.chars().take(60).collect(),
            output::age(job.submitted_unix_ms),
        ]);
    }
    println!("{table}");
    Ok(())
}

pub async fn job(global: &GlobalOptions, args: &JobArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    if let Some(JobCommand::Logs(logs)) = &args.command {
        return print_logs(&client, logs.id, logs.task, logs.follow).await;
    }
    let id = args
        .id
        .ok_or_else(|| anyhow!("give a job id: bramble job 7 (bramble jobs lists them)"))?;
    let view = ask_job(&client, id, true).await?;
    if args.output.json {
        return output::print_json(&view);
    }
    let record = &view.record;
    println!("Job: {id}");
    println!("Command: {}", view.spec.work.describe());
    println!(
        "State: {}{}",
        record.state.name(),
        record
            .reason
            .as_ref()
            .map(|reason| format!(" ({reason})"))
            .unwrap_or_default()
    );
    println!(
        "Tasks: {} ({} done, {} running, {} attempts, {} failed)",
        view.spec.tasks,
        record.done.len(),
        view.running,
        record.attempts,
        record.failure_count
    );
    println!(
        "Policy: {}; {} slot(s) per task; retries {}{}",
        view.spec.policy.name(),
        view.spec.cpus_per_task,
        view.spec.retries,
        if view.spec.speculate {
            format!("; speculative copies {}", record.speculative_copies)
        } else {
            String::new()
        }
    );
    if let (Some(started), Some(finished)) = (record.started_unix_ms, record.finished_unix_ms) {
        println!(
            "Wall clock: {:.3} s (from start to the last result)",
            finished.saturating_sub(started) as f64 / 1000.0
        );
    }
    if let Some(scheduler) = &record.scheduler {
        println!(
            "Scheduler: {scheduler} ({} change(s) during the job)",
            record.scheduler_changes
        );
    }
    if let Some(result) = record.reduction.render(view.spec.reduce) {
        println!("Result: {result}");
    }
    let mut table = output::table(&["node", "tasks counted", "weight"]);
    let mut nodes: Vec<&String> = record
        .per_node
        .keys()
        .chain(record.weights.keys())
        .collect();
    nodes.sort();
    nodes.dedup();
    for node in nodes {
        table.add_row(vec![
            node.clone(),
            record.per_node.get(node).copied().unwrap_or(0).to_string(),
            record
                .weights
                .get(node)
                .map(|weight| format!("{weight:.2}"))
                .unwrap_or_default(),
        ]);
    }
    println!("{table}");
    for failure in record.failures.iter().rev().take(5) {
        println!(
            "failure: task {} attempt {} on {}: {}",
            failure.index, failure.attempt, failure.node, failure.reason
        );
    }
    const SHOWN: usize = 50;
    let mut tasks = output::table(&["task", "state", "node", "attempts", "exit", "duration"]);
    for (index, row) in view.tasks.iter().enumerate().take(SHOWN) {
        tasks.add_row(vec![
            index.to_string(),
            row.state.name().to_string(),
            row.node.clone(),
            row.attempts.to_string(),
            row.exit_code
                .map(|code| code.to_string())
                .unwrap_or_default(),
            if row.state == TaskState::Done || row.exit_code.is_some() {
                format!("{:.3} s", f64::from(row.duration_ms) / 1000.0)
            } else {
                String::new()
            },
        ]);
    }
    println!("{tasks}");
    if view.tasks.len() > SHOWN {
        println!(
            "({} more tasks: bramble job {id} --json)",
            view.tasks.len() - SHOWN
        );
    }
    Ok(())
}

async fn print_logs(client: &ClusterClient, id: JobId, task: u32, follow: bool) -> Result<()> {
    use std::io::Write;
    let mut offset_out = 0u64;
    loop {
        let view = ask_job(client, id, true).await?;
        let row = view.tasks.get(task as usize).ok_or_else(|| {
            anyhow!(
                "job {id} has {} tasks; there is no task {task}",
                view.spec.tasks
            )
        })?;
        if row.node.is_empty() {
            if follow && !view.record.state.is_final() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            bail!("task {task} of job {id} has not run");
        }
        let attempt = if row.state == TaskState::Running {
            row.attempts.saturating_sub(1)
        } else {
            row.attempt
        };
        let address = client.address_of(&row.node).await?;
        let answer: OutputAnswer = client
            .call_at(
                address,
                METHOD_OUTPUT,
                &OutputRequest {
                    job: id,
                    index: task,
                    attempt,
                    offset: offset_out,
                },
            )
            .await
            .with_context(|| format!("reading task {task}'s output on {}", row.node))?;
        std::io::stdout().write_all(&answer.stdout)?;
        offset_out += answer.stdout.len() as u64;
        if !follow || !answer.running {
            if !answer.stderr.is_empty() {
                eprintln!(
                    "--- stderr (task {task}, attempt {attempt}, node {}) ---",
                    row.node
                );
                std::io::stderr().write_all(&answer.stderr)?;
            }
            if answer.stdout_dropped > 0 || answer.stderr_dropped > 0 {
                eprintln!(
                    "(not kept: {} bytes of stdout, {} of stderr beyond the first MiB)",
                    answer.stdout_dropped, answer.stderr_dropped
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn cancel(global: &GlobalOptions, args: &CancelArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let (_, state): (_, JobState) = client.call_any(METHOD_CANCEL, &args.id).await?;
    if state == JobState::Cancelled {
        println!("job {} is being cancelled", args.id);
    } else {
        println!("job {} had already {}", args.id, state.name());
    }
    Ok(())
}

/// `bramble wasm-task`: runs one WebAssembly task in this process (a worker starts it in
/// the task's scratch directory, as the task's user; a service's supervisor starts it for
/// a replica, with `--listen PORT`). The task's environment becomes the
/// module's; its stdout and stderr are this process's. Exit codes: the module's own, 124
/// when it ran out of fuel, 137 past its memory limit, 125 for any other refusal or trap
/// (the reason on stderr).
pub fn wasm_task(args: &crate::cli::WasmTaskArgs) -> std::process::ExitCode {
    let module = match bramble_util::files::read_bounded(
        &args.module,
        bramble_compute::jobs::spec::MAX_MODULE_BYTES,
    ) {
        Ok(module) => module,
        Err(error) => {
            eprintln!("wasm task: reading {}: {error}", args.module.display());
            return std::process::ExitCode::from(125);
        }
    };
    let invocation = bramble_wasm::Invocation {
        program_name: "task.wasm".to_string(),
        args: args.args.clone(),
        env: std::env::vars().collect(),
    };
    let limits = bramble_wasm::Limits {
        fuel: args.fuel,
        max_memory_bytes: args.memory,
    };
    // A service's module serves on descriptor 3: the socket is bound here, by the host,
    // as the module has no way to open one itself.
    let listener = match args.listen {
        None => None,
        Some(port) => match std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)) {
            Ok(listener) => Some(listener),
            Err(error) => {
                eprintln!("wasm task: listening on port {port}: {error}");
                return std::process::ExitCode::from(125);
            }
        },
    };
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    match bramble_wasm::run(
        &module,
        &invocation,
        &limits,
        &mut stdout,
        &mut stderr,
        listener,
    ) {
        Ok(exit) => std::process::ExitCode::from(exit.code.min(255) as u8),
        Err(error) => {
            use std::io::Write;
            let _ = stdout.flush();
            eprintln!("wasm task: {error}");
            std::process::ExitCode::from(match error {
                bramble_wasm::WasmError::OutOfFuel { .. } => 124,
                bramble_wasm::WasmError::MemoryLimit { .. } => 137,
                _ => 125,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_timeouts_parse() {
        assert_eq!(parse_count("1e9").unwrap(), 1_000_000_000);
        assert_eq!(parse_count("1_000").unwrap(), 1000);
        assert!(parse_count("1.5").is_err());
        assert!(parse_count("-3").is_err());
        assert_eq!(parse_timeout("2h").unwrap(), 7_200_000);
        assert!(parse_timeout("soon").is_err());
    }
}
