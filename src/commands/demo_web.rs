//! `bramble demo-web`: the recipe's web servers, built in, for the balancer drills and the
//! emulator's demo. Runs until SIGTERM or SIGINT.
//!
//! Started by hand it takes `--name` and `--port`. Started as a service's replica (the
//! demo `bramble up` sets up is the service `web` running `demo-web`), it takes them from
//! the environment the agent's supervisor gives every replica: the name is
//! `<BRAMBLE_SERVICE>-<BRAMBLE_REPLICA>`, which is the balancer's name for that replica,
//! so the page, the `X-Served-By` header, the stats page and the sticky cookie's prefix
//! all say the same thing; the port is `PORT`, and the page names `BRAMBLE_NODE`.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use bramble_util::ShutdownTrigger;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::DemoWebArgs;

/// A variable from the replica's environment, if set and not empty.
fn from_environment(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// The server's name: `--name`, else the replica's balancer name.
fn server_name(args: &DemoWebArgs) -> Result<String> {
    if let Some(name) = &args.name {
        bramble_util::names::validate_name("server name", name)?;
        return Ok(name.clone());
    }
    match (
        from_environment("BRAMBLE_SERVICE"),
        from_environment("BRAMBLE_REPLICA"),
    ) {
        (Some(service), Some(index)) => {
            let index: u32 = index
                .parse()
                .with_context(|| format!("BRAMBLE_REPLICA={index:?} is not a replica number"))?;
            let name = format!("{service}-{index}");
            bramble_util::names::validate_name("server name", &name)?;
            Ok(name)
        }
        _ => bail!(
            "give --name (or run it as a service's replica, which sets BRAMBLE_SERVICE and BRAMBLE_REPLICA)"
        ),
    }
}

fn server_port(args: &DemoWebArgs) -> Result<u16> {
    if let Some(port) = args.port {
        return Ok(port);
    }
    let Some(text) = from_environment("PORT") else {
        bail!("give --port (or run it as a service's replica with --port, which sets PORT)");
    };
    text.parse()
        .with_context(|| format!("PORT={text:?} is not a port number"))
}

fn node_name(args: &DemoWebArgs) -> Result<Option<String>> {
    let node = args
        .node
        .clone()
        .or_else(|| from_environment("BRAMBLE_NODE"));
    if let Some(node) = &node {
        bramble_util::names::validate_name("node name", node)?;
    }
    Ok(node)
}

pub async fn run(args: &DemoWebArgs) -> Result<()> {
    let name = server_name(args)?;
    let node = node_name(args)?;
    let address = SocketAddr::new(args.bind, server_port(args)?);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("could not listen on {address}"))?;
    let (trigger, shutdown) = ShutdownTrigger::new();
    let server = tokio::spawn(bramble_lb::demo_web::serve_demo_web(
        name.clone(),
        node.clone(),
        listener,
        shutdown,
    ));
    tracing::info!(%name, node = node.as_deref().unwrap_or("-"), %address, "demo web server running");
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
