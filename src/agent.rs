//! `bramble agent`: the long-running node process. It wires the layers together — the RPC
//! listener (net), membership and the cluster service (cluster), the Raft catalog (meta),
//! the load balancers (lb) —
//! and runs until SIGTERM, SIGINT or a graceful leave, then shuts every task down through
//! one shutdown signal.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bramble_cluster::service::ClusterService;
use bramble_cluster::{Membership, NodeDir};
use bramble_lb::service::LbService;
use bramble_lb::subsystem::LoadBalancers;
use bramble_meta::Meta;
use bramble_meta::service::MetaService;
use bramble_net::{Router, ServerLimits, serve};
use bramble_util::ShutdownTrigger;
use bramble_util::files::{self, Visibility};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tracing::info;

use crate::emulator::process;

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
    let listener = TcpListener::bind(node.config.listen)
        .await
        .with_context(|| format!("could not listen on {}/tcp", node.config.listen))?;
    let membership = Membership::start(&node, shutdown.clone()).await?;
    let meta = Meta::start(&node, membership.clone(), shutdown.clone())
        .await
        .context("starting the catalog")?;
    let load_balancers = LoadBalancers::start(
        &node.config.name,
        &node.config.roles,
        &node.path,
        meta.clone(),
        membership.clone(),
        shutdown.clone(),
    )
    .await
    .context("starting the load balancers")?;
    files::write_atomic(
        &pid_file,
        std::process::id().to_string().as_bytes(),
        Visibility::Public,
    )?;

    let leave_requested = Arc::new(Notify::new());
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
    router.register("lb", Arc::new(LbService::new(load_balancers.clone())));
    router.open_to_anonymous(bramble_cluster::join::METHOD);
    let server = tokio::spawn(serve(
        listener,
        node.credential.server_config()?,
        Arc::new(router),
        ServerLimits::default(),
        shutdown.clone(),
    ));
    info!(
        name = %node.config.name,
        cluster = %node.config.cluster_id,
        address = %node.config.advertise,
        version = bramble_cluster::VERSION,
        "agent running"
    );

    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let reason = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        _ = leave_requested.notified() => "a graceful leave",
    };
    info!("stopping after {reason}");
    // Give the leave's RPC reply a moment to reach the caller before connections close.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The balancers first, while the catalog still runs: they release their VIPs so the
    // backups take over at once.
    load_balancers.stop().await;
    trigger.trigger();
    meta.stop().await;
    membership.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let _ = std::fs::remove_file(&pid_file);
    info!("agent stopped");
    Ok(())
}
