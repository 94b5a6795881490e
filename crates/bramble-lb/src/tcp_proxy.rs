//! The TCP data path (`mode tcp`): for anything that is not HTTP, each client connection
//! is paired with one backend connection and bytes are copied both ways.
//!
//! The backend is chosen per connection (hash-source hashes the client's IP, so a client
//! keeps its server); a refused or timed-out connect is recorded for passive ejection and
//! the next backend is tried, up to [`MAX_ATTEMPTS`]. A connection on which neither side
//! sends anything for `timeouts.client_ms` is closed, so dead peers do not hold slots of
//! `max_connections` forever.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bramble_util::Shutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::balance::{MAX_ATTEMPTS, hash_key_for};
use crate::pool::SessionGuard;
use crate::runtime::Runtime;
use bramble_http::Activity;

/// Bytes copied per read; small boards have little memory to spare per connection.
const COPY_BUFFER_BYTES: usize = 16 * 1024;
/// What a TCP connection's copy buffers hold, for the data-plane budget.
pub(crate) const BUFFER_BYTES: usize = 2 * COPY_BUFFER_BYTES;

/// Proxies one client connection until either side closes, it idles out or the balancer
/// stops.
pub(crate) async fn serve_connection(
    runtime: Arc<Runtime>,
    mut client_stream: TcpStream,
    client: SocketAddr,
    mut stop: Shutdown,
) {
    runtime.frontend.sessions.fetch_add(1, Ordering::Relaxed);
    let Some((mut backend_stream, session)) = connect_backend(&runtime, client.ip()).await else {
        runtime.frontend.errors.fetch_add(1, Ordering::Relaxed);
        debug!(balancer = %runtime.spec.name, %client, "no backend available; closing the client connection");
        return;
    };
    let idle = Duration::from_millis(runtime.spec.timeouts.client_ms);
    tokio::select! {
        result = relay(&mut client_stream, &mut backend_stream, idle) => {
            if let Err(error) = result {
                debug!(balancer = %runtime.spec.name, %client, backend = %session.backend().spec.name, %error, "TCP session ended");
            }
        }
        _ = stop.wait() => {}
    }
    drop(session);
}

/// A connection to a backend that takes new sessions, trying others on failure.
async fn connect_backend(runtime: &Runtime, client: IpAddr) -> Option<(TcpStream, SessionGuard)> {
    let hash_key = hash_key_for(&runtime.spec.balance, client, None, None);
    let connect_timeout = Duration::from_millis(runtime.spec.timeouts.connect_ms);
    let mut tried = Vec::with_capacity(MAX_ATTEMPTS);
    while tried.len() < MAX_ATTEMPTS {
        let index = runtime
            .selector
            .pick(&runtime.pool, hash_key.as_deref(), &tried)?;
        tried.push(index);
        let backend = runtime.pool.backends[index].clone();
        let error = match tokio::time::timeout(
            connect_timeout,
            TcpStream::connect(backend.spec.addr),
        )
        .await
        {
            Ok(Ok(stream)) => {
                backend.record_success();
                let _ = stream.set_nodelay(true);
                return Some((stream, SessionGuard::new(backend)));
            }
            Ok(Err(error)) => error.to_string(),
            Err(_elapsed) => format!("no connection within {} ms", connect_timeout.as_millis()),
        };
        backend.record_connect_error();
        debug!(backend = %backend.spec.name, %error, "backend connection failed; trying another");
    }
    None
}

/// Copies both ways until both directions have ended (a half-close is passed on, so
/// request/response protocols that shut down writing still get their answer), one fails,
/// or nothing moves for `idle`.
async fn relay(client: &mut TcpStream, backend: &mut TcpStream, idle: Duration) -> io::Result<()> {
    let activity = Activity::new();
    let (client_reader, client_writer) = client.split();
    let (backend_reader, backend_writer) = backend.split();
    let both_ways = async {
        tokio::try_join!(
            copy_one_way(client_reader, backend_writer, &activity),
            copy_one_way(backend_reader, client_writer, &activity),
        )
    };
    tokio::select! {
        result = both_ways => result.map(|_| ()),
        _ = idle_out(&activity, idle) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("nothing sent either way for {} ms", idle.as_millis())))
        }
    }
}

async fn copy_one_way<R, W>(mut reader: R, mut writer: W, activity: &Activity) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut copied = 0u64;
    loop {
        let count = reader.read(&mut buffer).await?;
        if count == 0 {
            writer.shutdown().await?;
            return Ok(copied);
        }
        writer.write_all(&buffer[..count]).await?;
        copied += count as u64;
        activity.touch();
    }
}

/// Completes once nothing has moved for `idle`.
async fn idle_out(activity: &Activity, idle: Duration) {
    loop {
        let idle_for = activity.idle_for();
        if idle_for >= idle {
            return;
        }
        tokio::time::sleep(idle - idle_for).await;
    }
}
