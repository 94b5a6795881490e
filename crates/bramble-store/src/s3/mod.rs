//! The S3-compatible endpoint every node can serve (`s3s` does the protocol: SigV4 and
//! presigned URLs, chunked bodies with checksum trailers, XML; we implement its `S3`
//! trait over volumes in [`objects`]). Keys come from `bramble s3 key create`
//! ([`keys`]); anonymous requests are refused. The endpoint is on when the node's
//! `<data-dir>/store.toml` names an address (`s3_listen = "0.0.0.0:3900"`; `bramble up`
//! gives each emulated node one on loopback). Path-style addressing
//! (`http://host:port/bucket/key`), which aws-cli, boto3, s3cmd and rclone use with a
//! custom endpoint. Connections are served on the normal-priority bulk threads, so
//! object traffic never competes with the agent's control plane.

pub mod keys;
pub mod objects;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bramble_util::files;
use bramble_util::{Restart, Workers};
use serde::{Deserialize, Serialize};

use crate::node::Storage;

/// `<data-dir>/store.toml`: this node's storage settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// Where the S3 endpoint listens; `None`: off.
    pub s3_listen: Option<SocketAddr>,
}

impl StoreSettings {
    pub fn load(data_dir: &Path) -> Result<StoreSettings, files::FileError> {
        let path = data_dir.join("store.toml");
        if !path.exists() {
            return Ok(StoreSettings::default());
        }
        files::read_toml(&path)
    }
}

struct KeyStore {
    storage: Arc<Storage>,
}

#[async_trait::async_trait]
impl s3s::auth::S3Auth for KeyStore {
    async fn get_secret_key(&self, access_key: &str) -> s3s::S3Result<s3s::auth::SecretKey> {
        match self.storage.s3_secret(access_key).await {
            Ok(Some(secret)) => Ok(s3s::auth::SecretKey::from(secret)),
            Ok(None) => Err(s3s::s3_error!(InvalidAccessKeyId)),
            Err(error) => Err(s3s::s3_error!(ServiceUnavailable, "{}", error.message)),
        }
    }
}

/// Starts the endpoint (worker `store-s3`) if the settings name an address.
pub async fn start(
    storage: &Arc<Storage>,
    settings: &StoreSettings,
    workers: &Workers,
) -> Result<(), String> {
    let Some(address) = settings.s3_listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| format!("the S3 endpoint cannot listen on {address}: {error}"))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(objects::BrambleS3 {
        storage: storage.clone(),
    });
    builder.set_auth(KeyStore {
        storage: storage.clone(),
    });
    let service = builder.build();
    let listener = Arc::new(std::sync::Mutex::new(Some(listener)));
    tracing::info!(%address, "S3 endpoint listening");
    workers.spawn("store-s3", Restart::Never, move |worker| {
        let listener = listener
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        let service = service.clone();
        async move {
            let listener = listener.ok_or("the S3 listener is gone")?;
            let mut shutdown = worker.shutdown();
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.wait() => return Ok(()),
                    accepted = listener.accept() => accepted,
                };
                let (stream, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        worker.report_error(&format!("accepting an S3 connection: {error}"));
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let connection = async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    if let Err(error) = builder.serve_connection(io, service).await {
                        tracing::debug!(%error, "an S3 connection ended with an error");
                    }
                };
                bramble_net::mux::bulk_threads::bulk_threads().spawn(connection);
            }
        }
    });
    Ok(())
}
