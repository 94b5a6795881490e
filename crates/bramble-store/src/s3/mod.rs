//! The S3-compatible endpoint every node can serve (`s3s` does the protocol: SigV4 and
//! presigned URLs, chunked bodies with checksum trailers, XML; we implement its `S3`
//! trait over volumes in [`objects`]). Keys come from `bramble s3 key create`
//! ([`keys`]); anonymous requests are refused, and a scoped key reaches only its buckets,
//! and only to read if it is read-only ([`KeyAccess`]). Multipart uploads left unfinished
//! longer than `s3_stale_upload_hours` are aborted by one node at a time (the reaper,
//! under a platform lease). The endpoint is on when the node's
//! `<data-dir>/store.toml` names an address (`s3_listen = "0.0.0.0:3900"`; `bramble up`
//! gives each emulated node one on loopback). Path-style addressing
//! (`http://host:port/bucket/key`), which aws-cli, boto3, s3cmd and rclone use with a
//! custom endpoint. Connections are served on the normal-priority bulk threads, so
//! object traffic never competes with the agent's control plane.
//!
//! Bounds, as for every input from the network: at most [`MAX_CONNECTIONS`] served at
//! once (further clients wait in the listen backlog), a request head must arrive within
//! [`HEADER_READ_TIMEOUT`], at most [`MAX_HTTP2_STREAMS`] requests at once on an HTTP/2
//! connection, and a body that sends nothing for [`objects::BODY_IDLE_TIMEOUT`] fails
//! its request, so a stalled client cannot hold a write's buffer.

pub mod keys;
pub mod objects;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bramble_util::files;
use bramble_util::{Restart, Workers};
use serde::{Deserialize, Serialize};

use crate::node::Storage;

/// `<data-dir>/store.toml`: this node's storage settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// Where the S3 endpoint listens; `None`: off.
    pub s3_listen: Option<SocketAddr>,
    /// Multipart uploads started longer ago than this are aborted and their parts freed
    /// (MinIO's default is 24 h; AWS keeps them until a lifecycle rule says otherwise).
    #[serde(default = "default_stale_upload_hours")]
    pub s3_stale_upload_hours: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            s3_listen: None,
            s3_stale_upload_hours: default_stale_upload_hours(),
        }
    }
}

fn default_stale_upload_hours() -> u32 {
    24
}

/// Longest `s3_stale_upload_hours` accepted: a year.
const MAX_STALE_UPLOAD_HOURS: u32 = 24 * 366;
/// How often the reaper looks for stale uploads, and how long after start it first does.
const REAP_EVERY: Duration = Duration::from_secs(600);
const FIRST_REAP_AFTER: Duration = Duration::from_secs(60);
/// S3 connections served at once. Every one may be filling a block of a write (1 MiB by
/// default) beside what the node's write budget holds in flight; aws-cli and boto3 open
/// 10, rclone 4 per transfer.
pub const MAX_CONNECTIONS: usize = 64;
/// Time for a request head to arrive whole (hyper's default is 30 s).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes hyper reads ahead on one HTTP/1 connection (its default, about 400 KiB,
/// is reached by every fast upload; a write copies the body into blocks anyway).
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Requests served at once on one HTTP/2 connection (hyper's default is 200).
pub const MAX_HTTP2_STREAMS: u32 = 16;
/// The reaper's lease: one node reaps at a time.
const REAPER_LEASE: &str = "store/upload-reaper";
const REAPER_LEASE_TTL: Duration = Duration::from_secs(30);

impl StoreSettings {
    pub fn load(data_dir: &Path) -> Result<StoreSettings, files::FileError> {
        let path = data_dir.join("store.toml");
        if !path.exists() {
            return Ok(StoreSettings::default());
        }
        let settings: StoreSettings = files::read_toml(&path)?;
        if settings.s3_stale_upload_hours == 0
            || settings.s3_stale_upload_hours > MAX_STALE_UPLOAD_HOURS
        {
            return Err(files::FileError::BadToml {
                path,
                message: format!(
                    "s3_stale_upload_hours must be 1 to {MAX_STALE_UPLOAD_HOURS}, not {}",
                    settings.s3_stale_upload_hours
                ),
            });
        }
        Ok(settings)
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

/// Lets a request through only if its key may reach the bucket it names, and, for a
/// read-only key, only to read. CopyObject's source bucket is checked too
/// ([`s3s::access::S3Access::copy_object`]); ListBuckets lists only the key's buckets.
struct KeyAccess {
    storage: Arc<Storage>,
}

impl KeyAccess {
    async fn scope_of(&self, access_key: &str) -> s3s::S3Result<keys::KeyScope> {
        match self.storage.s3_key(access_key).await {
            Ok(Some((_, scope))) => Ok(scope),
            Ok(None) => Err(s3s::s3_error!(InvalidAccessKeyId)),
            Err(error) => Err(s3s::s3_error!(ServiceUnavailable, "{}", error.message)),
        }
    }
}

#[async_trait::async_trait]
impl s3s::access::S3Access for KeyAccess {
    async fn check(&self, context: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        let Some(credentials) = context.credentials() else {
            return Err(s3s::s3_error!(AccessDenied, "Signature is required"));
        };
        let scope = self.scope_of(&credentials.access_key).await?;
        let operation = context.s3_op().name();
        if scope.read_only && !keys::is_read_operation(operation) {
            return Err(s3s::s3_error!(
                AccessDenied,
                "this key is read-only and may not call {operation}"
            ));
        }
        let bucket = match context.s3_path() {
            s3s::path::S3Path::Root => return Ok(()),
            s3s::path::S3Path::Bucket { bucket } | s3s::path::S3Path::Object { bucket, .. } => {
                bucket
            }
        };
        if !scope.allows_bucket(bucket) {
            return Err(s3s::s3_error!(
                AccessDenied,
                "this key may not use bucket {bucket}"
            ));
        }
        Ok(())
    }

    async fn copy_object(
        &self,
        request: &mut s3s::S3Request<s3s::dto::CopyObjectInput>,
    ) -> s3s::S3Result<()> {
        let Some(credentials) = &request.credentials else {
            return Err(s3s::s3_error!(AccessDenied, "Signature is required"));
        };
        let scope = self.scope_of(&credentials.access_key).await?;
        if let s3s::dto::CopySource::Bucket { bucket, .. } = &request.input.copy_source
            && !scope.allows_bucket(bucket)
        {
            return Err(s3s::s3_error!(
                AccessDenied,
                "this key may not read bucket {bucket}"
            ));
        }
        Ok(())
    }
}

/// Starts the stale-upload reaper (worker `store-upload-reaper`): every ten minutes, the
/// node holding the reaper's lease aborts the uploads started longer ago than the limit.
fn start_reaper(storage: &Arc<Storage>, settings: &StoreSettings, workers: &Workers) {
    let storage = storage.clone();
    let older_than = Duration::from_secs(u64::from(settings.s3_stale_upload_hours) * 3600);
    workers.spawn("store-upload-reaper", Restart::OnFailure, move |worker| {
        let storage = storage.clone();
        async move {
            let mut shutdown = worker.shutdown();
            let mut lease = bramble_platform::lease_holder::HeldLease::new(
                storage.meta.clone(),
                REAPER_LEASE,
                storage.node_name(),
                REAPER_LEASE_TTL,
            );
            let front = objects::BrambleS3 {
                storage: storage.clone(),
            };
            let mut wait = FIRST_REAP_AFTER;
            loop {
                worker.set_state(bramble_util::WorkerState::Idle);
                tokio::select! {
                    _ = shutdown.wait() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = REAP_EVERY;
                if lease.step().await.is_none() {
                    worker.set_progress("another node reaps");
                    continue;
                }
                worker.set_state(bramble_util::WorkerState::Busy);
                let reaped = front.reap_stale_uploads(older_than, &[]).await;
                lease.release().await;
                match reaped {
                    Ok(count) => {
                        worker.set_progress(format!("aborted {count} stale uploads last round"))
                    }
                    Err(error) => {
                        worker.report_error(&format!("reaping stale uploads: {}", error.message))
                    }
                }
            }
        }
    });
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
    builder.set_access(KeyAccess {
        storage: storage.clone(),
    });
    start_reaper(storage, settings, workers);
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
            let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            loop {
                // A turn first: beyond the bound, clients wait in the listen backlog.
                let turn = tokio::select! {
                    _ = shutdown.wait() => return Ok(()),
                    turn = connections.clone().acquire_owned() => turn,
                };
                let Ok(turn) = turn else {
                    return Err("the S3 connection bound was closed".to_string());
                };
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
                    let mut builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    builder
                        .http1()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .max_buf_size(READ_BUFFER_BYTES);
                    builder
                        .http2()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .max_concurrent_streams(MAX_HTTP2_STREAMS);
                    if let Err(error) = builder.serve_connection(io, service).await {
                        tracing::debug!(%error, "an S3 connection ended with an error");
                    }
                    drop(turn);
                };
                bramble_net::mux::bulk_threads::bulk_threads().spawn(connection);
            }
        }
    });
    Ok(())
}
