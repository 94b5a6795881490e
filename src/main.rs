//! `bramble`: the node agent and the command line in one binary.
//!
//! The binary is the top layer: it parses commands (`cli`), finds the cluster a command is
//! about (`client`), runs the agent (`agent`) and the emulator (`emulator`). Everything it
//! wires together lives in the crates under `crates/`.

mod agent;
mod cli;
mod client;
mod commands;
mod emulator;
mod mount;
mod output;
mod process;
mod target;
mod units;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tracing_subscriber::filter::Targets;

use cli::{Cli, Command};

fn init_logging() {
    // RUST_LOG takes `target=level` pairs (e.g. `info,chitchat=debug`). Gossip library chatter
    // about unreachable peers is expected while a node is down, so it is quiet by default.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| text.parse::<Targets>().ok())
        .unwrap_or_else(|| {
            Targets::new()
                .with_default(tracing::Level::INFO)
                .with_target("chitchat", tracing::Level::ERROR)
                .with_target("rustls", tracing::Level::WARN)
                // s3s logs every refused request (a bad signature, an expired URL) as an
                // error; those are the client's, and Bramble logs its own failures.
                .with_target("s3s", tracing::level_filters::LevelFilter::OFF)
        });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour codes only for a terminal, not in agent.log files.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
}

fn runtime(agent: bool, control_plane: bool) -> Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // The agent is mostly idle; two workers are plenty on a Pi and keep memory low.
    builder
        .worker_threads(if agent { cores.min(2) } else { cores.min(4) })
        .max_blocking_threads(8)
        .enable_all();
    if control_plane {
        // Every thread of this runtime (workers and blocking threads: Raft's disk
        // writes) is control plane; the load balancer's data plane has its own threads.
        builder.on_thread_start(|| {
            bramble_util::scheduling::raise_control_plane_priority();
        });
    }
    builder.build().context("starting the async runtime")
}

async fn dispatch(cli: Cli) -> Result<()> {
    let global = &cli.global;
    match &cli.command {
        Command::Init(args) => commands::membership::init(global, args),
        Command::Join(args) => commands::membership::join_cluster(global, args).await,
        Command::Agent => agent::run(&client::data_dir(global)).await,
        Command::Leave(args) => commands::membership::leave(global, args).await,
        Command::Nodes(args) => commands::membership::nodes(global, args).await,
        Command::Workers(args) => commands::workers::run(global, args).await,
        Command::Metrics(args) => commands::metrics::run(global, args).await,
        Command::Top(args) => commands::top::run(global, args).await,
        Command::Alerts(args) => commands::alerts::run(global, args).await,
        Command::Up(args) => emulator::up(global, args).await,
        Command::Down(args) => emulator::down(global, args).await,
        Command::Status(args) => emulator::status(global, args).await,
        Command::Chaos(args) => emulator::chaos::chaos(global, args).await,
        Command::Cluster(command) => commands::catalog::cluster(global, command).await,
        Command::Kv(command) => commands::catalog::kv(global, command).await,
        Command::DemoWeb(args) => commands::demo_web::run(args).await,
        Command::Lb(command) => commands::lb::run(global, command).await,
        Command::Bench(command) => commands::bench::run(global, command).await,
        Command::Exec(args) => commands::exec::run(global, args).await,
        Command::Volume(command) => commands::volume::run(global, command).await,
        Command::Fs(command) => commands::fs::run(global, command).await,
        Command::Mount(args) => mount::run(global, args).await,
        Command::S3(command) => commands::s3::run(global, command).await,
        Command::Token(command) => commands::api::token(global, command).await,
        Command::Api(args) => commands::api::show(global, args).await,
        Command::Dashboard(args) => commands::api::dashboard(global, args).await,
        Command::Run(args) => commands::jobs::run(global, args).await,
        Command::Pi(args) => commands::jobs::pi(global, args).await,
        Command::Jobs(args) => commands::jobs::list(global, args).await,
        Command::Job(args) => commands::jobs::job(global, args).await,
        Command::Cancel(args) => commands::jobs::cancel(global, args).await,
        Command::Service(command) => commands::service::run(global, command).await,
        Command::Mpirun(args) => commands::mpi::mpirun(global, args).await,
        Command::MpiLaunch(args) => commands::mpi::launch(global, args).await,
        Command::WasmTask(_) => Err(anyhow::anyhow!("wasm-task runs before the runtime")),
        Command::NetnsForward(_) => Err(anyhow::anyhow!("netns-forward runs before the runtime")),
        Command::NetnsDelay(_) => Err(anyhow::anyhow!("netns-delay runs before the runtime")),
        Command::CalibrateBoard(_) => {
            Err(anyhow::anyhow!("calibrate-board runs before the runtime"))
        }
        Command::Drain(args) => commands::drain::drain(global, args).await,
        Command::Undrain(args) => commands::drain::undrain(global, args).await,
        Command::Rolling(args) => commands::rolling::rolling(global, args).await,
        Command::Reboot(args) => commands::rolling::reboot(global, args).await,
        Command::Upgrade(args) => commands::upgrade::upgrade(global, args).await,
        Command::Version(args) => commands::upgrade::version(args),
    }
}

fn main() -> ExitCode {
    // A CLI piped into `head` should end quietly when the pipe closes, as other Unix
    // tools do, instead of panicking on the failed print. The agent keeps ignoring
    // SIGPIPE (Rust's default): a peer closing a socket must never kill it.
    let cli = Cli::parse();
    if let Command::WasmTask(args) = &cli.command {
        return commands::jobs::wasm_task(args);
    }
    if !matches!(cli.command, Command::Agent | Command::DemoWeb(_)) {
        #[cfg(unix)]
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let is_agent = matches!(cli.command, Command::Agent | Command::DemoWeb(_));
    if is_agent {
        bramble_util::memory::tune_allocator();
    }
    // Long-running processes log; one-shot commands print their outcome instead.
    if is_agent || matches!(cli.command, Command::Mount(_)) {
        init_logging();
    }
    let helper = match &cli.command {
        Command::NetnsForward(args) => Some(emulator::netns::run_forwarder(&args.cluster_dir)),
        Command::NetnsDelay(args) => Some(emulator::netns::run_delay_line(args)),
        Command::CalibrateBoard(args) => Some(emulator::profile::run_calibration_probe(args)),
        _ => None,
    };
    if let Some(result) = helper {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    // A command about a `--netns` cluster works from its switch namespace: entered here,
    // before any thread starts, so that every thread and socket of the runtime is there.
    if let Err(error) = emulator::netns::enter_for_command(&cli) {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    let control_plane = matches!(cli.command, Command::Agent);
    if control_plane {
        agent::launch_installed_build(&client::data_dir(&cli.global));
        bramble_util::scheduling::raise_control_plane_priority();
        let group = bramble_util::scheduling::raise_session_group();
        tracing::info!(
            ?group,
            "the agent's session group (autogroup) for the CPU scheduler"
        );
    }
    let result =
        runtime(is_agent, control_plane).and_then(|runtime| runtime.block_on(dispatch(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
