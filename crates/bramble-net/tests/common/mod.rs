//! Shared set-up for the mux tests: a throwaway cluster CA with node certificates made by
//! rcgen, a server on a loopback port serving RPC and streams, and clients for it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bramble_net::mux::frame::{Frame, FrameHeader, FrameKind, HEADER_LENGTH};
use bramble_net::{
    CLUSTER_SERVER_NAME, Credential, MuxClient, MuxLimits, Router, ServerLimits, StreamRouter,
};
use bramble_util::{Shutdown, ShutdownTrigger};
use bytes::{Bytes, BytesMut};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A cluster CA and a function to issue certificates from it.
pub struct TestCa {
    certificate_pem: String,
    key: KeyPair,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "bramble test CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key).expect("CA certificate");
        TestCa {
            certificate_pem: certificate.pem(),
            key,
        }
    }

    /// A node credential (`CN=node/<name>`, SAN `agent.bramble`).
    pub fn node(&self, name: &str) -> Credential {
        let key = KeyPair::generate().expect("node key");
        let issuer = Issuer::from_ca_cert_pem(&self.certificate_pem, &self.key).expect("issuer");
        let mut params = CertificateParams::default();
        let mut distinguished = DistinguishedName::new();
        distinguished.push(DnType::CommonName, format!("node/{name}"));
        params.distinguished_name = distinguished;
        params.subject_alt_names = vec![SanType::DnsName(
            CLUSTER_SERVER_NAME.try_into().expect("DNS name"),
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let certificate = params.signed_by(&key, &issuer).expect("node certificate");
        Credential::from_pem(
            &self.certificate_pem,
            &certificate.pem(),
            &key.serialize_pem(),
        )
        .expect("credential")
    }

    /// A client configuration that trusts the CA but presents no certificate (an
    /// anonymous peer), offering `alpn`.
    pub fn anonymous_client(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls_pki_types::CertificateDer::from_pem_slice(self.certificate_pem.as_bytes())
            .expect("CA PEM");
        roots.add(ca).expect("root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

use rustls_pki_types::pem::PemObject;

/// A server on a loopback port serving `router` (RPC) and `streams` (mux).
pub struct TestServer {
    pub address: SocketAddr,
    pub ca: TestCa,
    pub server_credential: Credential,
    pub client_credential: Credential,
    trigger: ShutdownTrigger,
    /// Clients' tasks stop on their own signal, so a test can stop the server alone.
    client_trigger: ShutdownTrigger,
}

impl TestServer {
    pub async fn start_shared(
        router: Arc<Router>,
        streams: StreamRouter,
        limits: MuxLimits,
    ) -> TestServer {
        let ca = TestCa::new();
        let server_credential = ca.node("server");
        let client_credential = ca.node("client");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (trigger, shutdown) = ShutdownTrigger::new();
        tokio::spawn(bramble_net::serve_with_streams(
            listener,
            server_credential.server_config().expect("server config"),
            router,
            Arc::new(streams),
            ServerLimits::default(),
            limits,
            shutdown,
        ));
        TestServer {
            address,
            ca,
            server_credential,
            client_credential,
            trigger,
            client_trigger: ShutdownTrigger::new().0,
        }
    }

    /// Shuts the server down, leaving clients running.
    pub fn stop(&self) {
        self.trigger.trigger();
    }

    pub fn shutdown_signal(&self) -> Shutdown {
        self.trigger.subscribe()
    }

    pub fn mux_client(&self) -> MuxClient {
        MuxClient::new(
            self.client_credential
                .client_config()
                .expect("client config"),
            self.client_trigger.subscribe(),
        )
    }

    /// A raw TLS stream speaking `bramble-mux/1` with the client certificate, for tests
    /// that send hand-made (or broken) frames.
    pub async fn raw_mux_stream(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut config = (*self.client_credential.client_config().expect("config")).clone();
        config.alpn_protocols = vec![bramble_net::mux::MUX_ALPN.to_vec()];
        raw_stream(self.address, Arc::new(config)).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.trigger.trigger();
        self.client_trigger.trigger();
    }
}

pub async fn raw_stream(
    address: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(address).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from(CLUSTER_SERVER_NAME).expect("name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

pub async fn write_frames<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S, frames: &[Frame]) {
    let mut buffer = BytesMut::new();
    for frame in frames {
        frame.encode_into(&mut buffer);
    }
    stream.write_all(&buffer).await.expect("write");
    stream.flush().await.expect("flush");
}

/// Reads one frame, skipping connection-level Window frames (the server's bulk credit);
/// None at the end of the connection.
pub async fn read_frame<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Option<(FrameHeader, Bytes)> {
    loop {
        let mut header = [0u8; HEADER_LENGTH];
        stream.read_exact(&mut header).await.ok()?;
        let header = FrameHeader::decode(&header, 16 * 1024 * 1024).expect("a valid frame header");
        let mut payload = vec![0u8; header.length as usize];
        stream.read_exact(&mut payload).await.ok()?;
        if header.stream_id == 0 && header.kind == FrameKind::Window {
            continue;
        }
        return Some((header, Bytes::from(payload)));
    }
}

/// Reads frames until a GoAway and returns its reason; panics if the connection ends
/// without one. Then checks that the connection is closed.
pub async fn expect_go_away<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let deadline = std::time::Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        loop {
            let (header, payload) = read_frame(stream)
                .await
                .expect("the connection ended without a GoAway");
            if header.kind == FrameKind::GoAway {
                let reason = String::from_utf8_lossy(&payload).into_owned();
                assert!(
                    read_frame(stream).await.is_none(),
                    "the connection stayed open"
                );
                return reason;
            }
        }
    })
    .await
    .expect("no GoAway within 10 s")
}

/// The test body pattern: `length` bytes cycling through a pseudo-random block whose size
/// is prime, so chunk boundaries never line up with it and reordering shows in the hash.
pub struct Pattern {
    block: Vec<u8>,
}

pub const PATTERN_BLOCK: usize = 1_048_573;

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        let mut state = seed | 1;
        let block = (0..PATTERN_BLOCK)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        Pattern { block }
    }

    /// The bytes at `offset..offset + length` of the endless pattern.
    pub fn slice(&self, offset: u64, length: usize) -> Bytes {
        let mut out = Vec::with_capacity(length);
        let mut position = (offset % PATTERN_BLOCK as u64) as usize;
        while out.len() < length {
            let take = (length - out.len()).min(PATTERN_BLOCK - position);
            out.extend_from_slice(&self.block[position..position + take]);
            position = 0;
        }
        Bytes::from(out)
    }

    /// SHA-256 of the first `length` bytes, computed chunk by chunk.
    pub fn digest(&self, length: u64) -> Vec<u8> {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut offset = 0u64;
        while offset < length {
            let take = (length - offset).min(1 << 20) as usize;
            context.update(&self.slice(offset, take));
            offset += take as u64;
        }
        context.finish().as_ref().to_vec()
    }
}

/// Peak resident memory of this process (VmHWM), in KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse().ok())
        })
        .unwrap_or(0)
}

/// Request header of the `blob.*` methods.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct BlobRequest {
    /// Bytes to send (download) or expected (upload); `u64::MAX` streams until stopped.
    pub length: u64,
    pub seed: u64,
}

/// A streaming service for the tests:
/// - `blob.download`: streams `length` bytes of the pattern; records how the send ended;
/// - `blob.upload`: reads the body chunk by chunk, answers with its SHA-256 as the header;
/// - `blob.echo`: sends every chunk back as it arrives;
/// - `blob.hold`: reads nothing until [`BlobService::release`], then counts the body;
/// - `blob.ignore`: answers "ignored" at once without reading the body.
pub struct BlobService {
    pub outcomes: std::sync::Mutex<Vec<String>>,
    /// One permit lets one `blob.hold` handler start reading.
    pub release: tokio::sync::Semaphore,
    patterns: std::sync::Mutex<std::collections::HashMap<u64, Arc<Pattern>>>,
}

impl BlobService {
    pub fn new() -> Arc<BlobService> {
        Arc::new(BlobService {
            outcomes: std::sync::Mutex::new(Vec::new()),
            release: tokio::sync::Semaphore::new(0),
            patterns: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    pub fn pattern(&self, seed: u64) -> Arc<Pattern> {
        self.patterns
            .lock()
            .unwrap()
            .entry(seed)
            .or_insert_with(|| Arc::new(Pattern::new(seed)))
            .clone()
    }

    pub fn outcomes(&self) -> Vec<String> {
        self.outcomes.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl bramble_net::StreamHandler for BlobService {
    async fn handle(
        &self,
        mut call: bramble_net::IncomingCall,
        response: bramble_net::ResponseWriter,
    ) -> Result<(), bramble_net::RpcError> {
        if call.method_name() == "ignore" {
            // Answers at once and drops the request body unread.
            return response
                .send_all(&[], Bytes::from_static(b"ignored"))
                .await
                .map_err(|error| bramble_net::RpcError::internal(error.to_string()));
        }
        let request: BlobRequest = call.decode_header()?;
        match call.method_name() {
            "download" => {
                let pattern = self.pattern(request.seed);
                let mut sender = response
                    .start(&[])
                    .await
                    .map_err(|error| bramble_net::RpcError::internal(error.to_string()))?;
                let mut offset = 0u64;
                let outcome = loop {
                    if offset >= request.length {
                        break sender.finish().await.map(|_| "finished".to_string());
                    }
                    let take = (request.length - offset).min(64 * 1024) as usize;
                    if let Err(error) = sender.send(pattern.slice(offset, take)).await {
                        break Err(error);
                    }
                    offset += take as u64;
                };
                let outcome = outcome.unwrap_or_else(|error| format!("{error:?}"));
                self.outcomes.lock().unwrap().push(outcome);
                Ok(())
            }
            "upload" => {
                let mut context = ring::digest::Context::new(&ring::digest::SHA256);
                let mut total = 0u64;
                while let Some(chunk) = call
                    .body
                    .next_chunk()
                    .await
                    .map_err(|error| bramble_net::RpcError::bad_request(error.to_string()))?
                {
                    total += chunk.len() as u64;
                    context.update(&chunk);
                }
                if total != request.length {
                    return Err(bramble_net::RpcError::bad_request(format!(
                        "expected {} bytes, got {total}",
                        request.length
                    )));
                }
                response
                    .send_all(context.finish().as_ref(), Bytes::new())
                    .await
                    .map_err(|error| bramble_net::RpcError::internal(error.to_string()))
            }
            "echo" => {
                let mut sender = response
                    .start(&[])
                    .await
                    .map_err(|error| bramble_net::RpcError::internal(error.to_string()))?;
                while let Some(chunk) = call
                    .body
                    .next_chunk()
                    .await
                    .map_err(|error| bramble_net::RpcError::bad_request(error.to_string()))?
                {
                    sender
                        .send(chunk)
                        .await
                        .map_err(|error| bramble_net::RpcError::internal(error.to_string()))?;
                }
                sender
                    .finish()
                    .await
                    .map_err(|error| bramble_net::RpcError::internal(error.to_string()))
            }
            "hold" => {
                if let Ok(permit) = self.release.acquire().await {
                    permit.forget();
                }
                let mut total = 0u64;
                while let Some(chunk) = call
                    .body
                    .next_chunk()
                    .await
                    .map_err(|error| bramble_net::RpcError::bad_request(error.to_string()))?
                {
                    total += chunk.len() as u64;
                }
                response
                    .send_all(&total.to_be_bytes(), Bytes::new())
                    .await
                    .map_err(|error| bramble_net::RpcError::internal(error.to_string()))
            }
            other => Err(bramble_net::RpcError::new(
                bramble_net::ErrorKind::NotFound,
                format!("no blob method {other:?}"),
            )),
        }
    }
}

/// Unary RPC handlers for the tests: `math.add` (u64, u64) -> u64 and `math.barrier`
/// (waits until `parties` calls are in it at once, then answers).
pub struct MathService {
    pub barrier: tokio::sync::Barrier,
}

#[async_trait::async_trait]
impl bramble_net::Handler for MathService {
    async fn handle(
        &self,
        request: bramble_net::rpc::Request<'_>,
    ) -> Result<Vec<u8>, bramble_net::RpcError> {
        match request.method {
            "add" => {
                let (left, right): (u64, u64) = request.decode()?;
                bramble_net::rpc::encode(&(left + right))
            }
            "barrier" => {
                self.barrier.wait().await;
                bramble_net::rpc::encode(&())
            }
            other => Err(bramble_net::RpcError::new(
                bramble_net::ErrorKind::NotFound,
                format!("no math method {other:?}"),
            )),
        }
    }
}

/// A server with `blob` (streaming) and `math` (unary, reachable over RPC and the mux).
pub async fn standard_server(
    barrier_parties: usize,
    limits: MuxLimits,
) -> (TestServer, Arc<BlobService>) {
    let blob = BlobService::new();
    let mut router = Router::new();
    router.register(
        "math",
        Arc::new(MathService {
            barrier: tokio::sync::Barrier::new(barrier_parties),
        }),
    );
    let router = Arc::new(router);
    let mut streams = StreamRouter::new();
    streams.register("blob", blob.clone());
    streams.serve_unary_from(router.clone());
    let server = TestServer::start_shared(router, streams, limits).await;
    (server, blob)
}
