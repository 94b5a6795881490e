//! `bramble demo-web`: the recipe's web servers, built in, for the balancer drills and the
//! emulator's demo. Runs until SIGTERM or SIGINT.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use bramble_util::ShutdownTrigger;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::DemoWebArgs;

pub async fn run(args: &DemoWebArgs) -> Result<()> {
    bramble_util::names::validate_name("server name", &args.name)?;
    let address = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("could not listen on {address}"))?;
    let (trigger, shutdown) = ShutdownTrigger::new();
    let server = tokio::spawn(bramble_lb::demo_web::serve_demo_web(
        args.name.clone(),
        listener,
        shutdown,
    ));
    tracing::info!(name = %args.name, %address, "demo web server running");
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    trigger.trigger();
    let _ = server.await;
    Ok(())
}
