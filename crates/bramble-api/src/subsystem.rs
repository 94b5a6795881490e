//! The `api` subsystem, on every node: `api.*` RPC (tokens, the dashboard password)
//! always, and unless `api.toml` switches it off, `/api/v1` and the dashboard over HTTPS
//! through the shared hardened server.
//!
//! The server's certificate is issued at each start by the cluster CA (every member
//! holds it) for the node's addresses, kept in memory only, so `curl --cacert ca.pem`
//! verifies it by address as Proxmox's web UI is verified with its cluster CA. The TLS
//! configuration asks for a client certificate without requiring one: an admin
//! credential's is checked against the same CA; browsers and scripts without one use a
//! token.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bramble_http::server::{BoundedRequest, MIN_HEAD_BYTES};
use bramble_http::{ServerLimits, serve_https1};
use bramble_net::Credential;
use bramble_platform::subsystem::StartFuture;
use bramble_platform::{Context, Running, Subsystem};
use bramble_util::{Restart, ShutdownTrigger};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::ApiError;
use crate::auth::{Authenticator, Deputies};
use crate::dashboard::Dashboard;
use crate::routes::Api;
use crate::service::ApiService;
use crate::settings::{ApiSettings, SETTINGS_FILE};

/// The API's bounds: a few scripts and dashboards at once, small heads, small JSON bodies
/// (a scale request is a few bytes).
const API_LIMITS: ServerLimits = ServerLimits {
    max_connections: 64,
    header_read_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    max_headers: 64,
    max_head_bytes: MIN_HEAD_BYTES * 2,
    max_body_bytes: 64 * 1024,
    body_read_timeout: Duration::from_secs(10),
    connection_lifetime: Duration::from_secs(600),
};

/// The subsystem as the agent declares it: every node.
pub const SUBSYSTEM: Subsystem = Subsystem {
    name: "api",
    roles: &[],
    start: start_subsystem,
    stop_deadline: Duration::from_secs(3),
};

struct RunningApi {
    meta: Arc<bramble_meta::Meta>,
    /// Where `/api/v1` is served; None when switched off or the address could not be bound.
    url: Mutex<Option<String>>,
    enabled: bool,
    stop: ShutdownTrigger,
}

fn start_subsystem(context: Context) -> StartFuture {
    Box::pin(async move {
        let settings = ApiSettings::load(&context.node.path).map_err(|error| error.to_string())?;
        let (stop, stop_signal) = ShutdownTrigger::new();
        let running = Arc::new(RunningApi {
            meta: context.meta.clone(),
            url: Mutex::new(None),
            enabled: settings.enabled,
            stop,
        });
        if !settings.enabled {
            info!("the HTTP API is switched off in {SETTINGS_FILE}");
            return Ok(running as Arc<dyn Running>);
        }
        let advertise = context.node.config.advertise;
        let address = settings.address(advertise);
        let tls = server_tls(&context, address).map_err(|error| error.to_string())?;
        let listener = match TcpListener::bind(address).await {
            Ok(listener) => listener,
            Err(error) => {
                // The rest of the agent runs; `bramble status` shows no API address.
                warn!(%address, %error, "could not serve the HTTP API");
                return Ok(running as Arc<dyn Running>);
            }
        };
        let bound = listener.local_addr().unwrap_or(address);
        let dashboard = Dashboard::default();
        let api = Arc::new(Api {
            node_name: context.node_name().to_string(),
            own_address: advertise,
            membership: context.membership.clone(),
            meta: context.meta.clone(),
            authenticator: Arc::new(Authenticator::new(
                context.meta.clone(),
                dashboard.sessions.clone(),
            )),
            deputies: Deputies::new(context.node.clone()),
            dashboard,
            shutdown: stop_signal.clone(),
        });
        // The listener cannot be rebound by a restart: one run only.
        let listener = Arc::new(Mutex::new(Some(listener)));
        context
            .workers
            .spawn_until("api-https", Restart::Never, stop_signal, move |worker| {
                let listener = listener
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .take();
                let api = api.clone();
                let tls = tls.clone();
                async move {
                    let listener = listener.ok_or("the API listener is gone")?;
                    let handler = move |request: BoundedRequest, peer: SocketAddr| {
                        let api = api.clone();
                        async move { api.respond(request, peer).await }
                    };
                    serve_https1("api", listener, API_LIMITS, tls, handler, worker.shutdown())
                        .await;
                    Ok(())
                }
            });
        let url = format!("https://{bound}/api/v1");
        info!(%url, "serving the HTTP API");
        *running
            .url
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(url);
        Ok(running as Arc<dyn Running>)
    })
}

/// The HTTPS configuration: a fresh server certificate for the node's addresses, client
/// certificates asked for and verified against the cluster CA, HTTP/1.1 by ALPN.
fn server_tls(
    context: &Context,
    listen: SocketAddr,
) -> Result<Arc<rustls::ServerConfig>, ApiError> {
    let mut addresses = vec![
        listen.ip(),
        context.node.config.advertise.ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if let Some(interface) = bramble_cluster::node_dir::first_interface_address() {
        addresses.push(interface);
    }
    let issued = context
        .node
        .ca
        .issue_web_server(context.node_name(), &addresses)
        .map_err(|error| ApiError::Internal(format!("issuing the API's certificate: {error}")))?;
    let credential = Credential::from_pem(
        &context.node.ca.certificate_pem,
        &issued.certificate_pem,
        &issued.key_pem,
    )
    .map_err(|error| ApiError::Internal(format!("the API's certificate: {error}")))?;
    let config = credential
        .server_config()
        .map_err(|error| ApiError::Internal(format!("the API's TLS configuration: {error}")))?;
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[async_trait::async_trait]
impl Running for RunningApi {
    fn service(&self) -> Option<Arc<dyn bramble_net::Handler>> {
        Some(Arc::new(ApiService::new(self.meta.clone())))
    }

    fn status(&self) -> serde_json::Value {
        let url = self
            .url
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        serde_json::json!({ "enabled": self.enabled, "url": url })
    }

    async fn stop(&self) {
        self.stop.trigger();
    }
}
