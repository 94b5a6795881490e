//! `bramble agent`: the long-running node process. It starts the layers in order — the
//! RPC listener (net), membership (cluster), the Raft catalog (meta) — then the
//! subsystems declared in [`SUBSYSTEMS`] (bramble-platform's contract), and runs until
//! SIGTERM, SIGINT or a graceful leave. One port serves both the framed RPC (the CLI,
//! Raft, gossip answers) and the mux's streams (bramble-net's ALPN): the unary services
//! are reachable through both, the streaming ones (the built-in `bench.*`, and each
//! subsystem's own) through the mux. It stops in reverse: subsystems first, within
//! their deadlines (a VIP holder releases its lease while the catalog still runs), then
//! the catalog, gossip and every named worker, through one shutdown signal.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bramble_cluster::service::ClusterService;
use bramble_cluster::{Membership, NodeDir};
use bramble_meta::Meta;
use bramble_meta::service::MetaService;
use bramble_net::{
    MuxClient, MuxLimits, Router, RpcClient, ServerLimits, StreamRouter, serve_with_streams,
};
use bramble_platform::bench_service::{self, BenchService};
use bramble_platform::service::AgentService;
use bramble_platform::upgrade::{self, Launch, RestartRequest, UpgradeService};
use bramble_platform::{Context, Subsystem, SubsystemFigures, Subsystems};
use bramble_util::files::{self, Visibility};
use bramble_util::{ShutdownTrigger, Workers};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::process;

/// Every subsystem of the agent, in start order (stopped in reverse).
const SUBSYSTEMS: &[Subsystem] = &[
    // First, so its collectors run (and its history keeps) while the others start and stop.
    bramble_monitor::subsystem::SUBSYSTEM,
    // Drained nodes (`drain.*`): read by the balancer, services and jobs below.
    bramble_platform::drain::SUBSYSTEM,
    bramble_store::subsystem::SUBSYSTEM,
    bramble_compute::jobs::subsystem::SUBSYSTEM,
    bramble_compute::services::subsystem::SUBSYSTEM,
    bramble_compute::exec::SUBSYSTEM,
    bramble_lb::subsystem::SUBSYSTEM,
    // Last, so it stops first: no API request meets a subsystem that has stopped.
    bramble_api::subsystem::SUBSYSTEM,
];
/// How long the agent waits for its workers to end after the shutdown signal.
const WORKERS_DEADLINE: Duration = Duration::from_secs(5);
/// This process's executable: the magic link still opens the file the process runs after
/// a package upgrade or a rebuild replaced or deleted it under its name.
const OWN_EXECUTABLE: &str = "/proc/self/exe";

/// At the start of `bramble agent`, before anything else runs: if `bramble upgrade`
/// installed another build on this node, becomes it (same pid, same arguments; see
/// `bramble_platform::upgrade`). Returns only to run on as this build.
pub fn launch_installed_build(data_dir: &Path) {
    match upgrade::launch_target(data_dir, Path::new(OWN_EXECUTABLE)) {
        Launch::Continue => {}
        Launch::Abandoned { hash, launches } => warn!(
            build = %&hash[..16.min(hash.len())],
            launches,
            "abandoned the installed build: it never reported healthy; running the packaged build"
        ),
        Launch::Become(path) => {
            info!(path = %path.display(), "starting the installed build");
            let error = become_build(&path);
            warn!(%error, path = %path.display(), "could not start the installed build; running this one");
        }
    }
}

/// Replaces this process with `path`, keeping the arguments; returns only on failure.
fn become_build(path: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt as _;
    let mut arguments = std::env::args_os();
    let _program = arguments.next();
    std::process::Command::new(path).args(arguments).exec()
}

/// Hashes this process's executable and announces the hash in gossip, so `bramble nodes`
/// and `bramble upgrade` can tell which build each node runs. In the background: on a Pi
/// Zero the file takes a second to read.
fn announce_build(membership: Arc<bramble_cluster::Membership>) {
    tokio::spawn(async move {
        let hash =
            tokio::task::spawn_blocking(|| upgrade::hash_file(Path::new(OWN_EXECUTABLE))).await;
        match hash {
            Ok(Ok(hash)) => membership.announce_build(&hash[..16]).await,
            Ok(Err(error)) => warn!(%error, "could not hash this agent's executable"),
            Err(error) => warn!(%error, "hashing this agent's executable failed"),
        }
    });
}

pub async fn run(data_dir: &Path) -> Result<()> {
    let data_dir = if data_dir.is_absolute() {
        data_dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(data_dir)
    };
    let node = Arc::new(NodeDir::open(&data_dir)?);
    let pid_file = node.layout().pid_file();
    if let Some(other) = process::agent_process(&data_dir)
        && other.pid != std::process::id()
    {
        bail!(
            "an agent (pid {}) is already running on {}",
            other.pid,
            data_dir.display()
        );
    }
    let (trigger, shutdown) = ShutdownTrigger::new();
    let workers = Workers::new(shutdown.clone());
    let listener = TcpListener::bind(node.config.listen)
        .await
        .with_context(|| format!("could not listen on {}/tcp", node.config.listen))?;
    let membership = Membership::start(&node, &workers).await?;
    let meta = Meta::start(&node, membership.clone(), &workers)
        .await
        .context("starting the catalog")?;
    let context = Context {
        node: node.clone(),
        membership: membership.clone(),
        meta: meta.clone(),
        rpc: RpcClient::new(node.credential.client_config()?),
        mux: MuxClient::new(node.credential.client_config()?, shutdown.clone()),
        shutdown: shutdown.clone(),
        workers: workers.clone(),
        figures: SubsystemFigures::default(),
    };
    let subsystems = Arc::new(
        Subsystems::start(&context, SUBSYSTEMS)
            .await
            .map_err(|error| anyhow!(error))?,
    );
    context.figures.attach(&subsystems);
    files::write_atomic(
        &pid_file,
        std::process::id().to_string().as_bytes(),
        Visibility::Public,
    )?;

    let leave_requested = Arc::new(Notify::new());
    let restart = Arc::new(RestartRequest::default());
    let mut router = Router::new();
    router.register(
        "cluster",
        Arc::new(ClusterService::new(
            node.clone(),
            membership.clone(),
            leave_requested.clone(),
        )),
    );
    router.register("meta", Arc::new(MetaService::new(meta.clone())));
    router.register(
        "agent",
        Arc::new(AgentService::new(
            &node.config.name,
            workers.clone(),
            subsystems.clone(),
        )),
    );
    subsystems.register_services(&mut router);
    router.open_to_anonymous(bramble_cluster::join::METHOD);
    let router = Arc::new(router);
    let mut streams = StreamRouter::new();
    streams.register(
        bench_service::SERVICE,
        Arc::new(BenchService::new(context.mux.clone(), membership.clone())),
    );
    streams.register(
        upgrade::SERVICE,
        Arc::new(UpgradeService::new(
            &data_dir,
            Path::new(OWN_EXECUTABLE).to_path_buf(),
            restart.clone(),
        )),
    );
    subsystems.register_stream_services(&mut streams);
    streams.serve_unary_from(router.clone());
    let server = tokio::spawn(serve_with_streams(
        listener,
        node.credential.server_config()?,
        router,
        Arc::new(streams),
        ServerLimits::default(),
        MuxLimits::default(),
        shutdown.clone(),
    ));
    info!(
        name = %node.config.name,
        cluster = %node.config.cluster_id,
        address = %node.config.advertise,
        version = bramble_cluster::VERSION,
        protocol = bramble_cluster::protocol::PROTOCOL,
        "agent running"
    );
    // Every layer started: an installed build has proven itself.
    upgrade::confirm(&data_dir, Path::new(OWN_EXECUTABLE));
    announce_build(membership.clone());

    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut restart_into = None;
    let reason = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        _ = leave_requested.notified() => "a graceful leave",
        target = restart.requested() => {
            restart_into = Some(target);
            "an upgrade"
        }
    };
    info!("stopping after {reason}");
    // Give the leave's RPC reply a moment to reach the caller before connections close.
    tokio::time::sleep(Duration::from_millis(50)).await;
    subsystems.stop().await;
    trigger.trigger();
    meta.stop().await;
    membership.stop().await;
    if !workers.wait(WORKERS_DEADLINE).await {
        warn!("some workers were still running at exit");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if let Some(target) = restart_into {
        // The pid file stays: the same process goes on as the new build.
        info!(path = %target.display(), "agent stopped; restarting as the installed build");
        let error = become_build(&target);
        let _ = std::fs::remove_file(&pid_file);
        return Err(anyhow!(
            "could not start the installed build {}: {error}",
            target.display()
        ));
    }
    let _ = std::fs::remove_file(&pid_file);
    info!("agent stopped");
    Ok(())
}
