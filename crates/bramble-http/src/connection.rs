//! A client connection's socket as Bramble's HTTP servers serve it ([`ClientIo`]), and the
//! record of what the client and the server are doing on it ([`Activity`]).
//!
//! The socket enforces two client timeouts itself, the way HAProxy's `timeout
//! http-request` and `timeout client` work:
//! - **header read**: a request head must arrive whole within this time of its first
//!   byte (slowloris clients drip a head a byte at a time);
//! - **idle**: a connection on which the client sends nothing while no request of it is
//!   being served is closed (idle keep-alive, idle HTTP/2, clients that never speak).
//!
//! A client that times out in the middle of a request head is owed `408 Request Timeout`
//! with `Connection: close`; an idle connection is closed silently. hyper closes the
//! connection without a word when a timeout ends it, so the socket is handed back when
//! hyper drops it ([`SocketReturn`]) and the 408 is written then
//! ([`SocketReturn::answer_timeout_if_owed`]).
//!
//! Memory: the bytes of a request head wait in hyper's read buffer until the head is
//! whole, so the socket charges heads longer than what the connection's reservation
//! already covers to that reservation as they arrive ([`ClientIo::with_head_memory`]),
//! and fails the connection when the budget has no room.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, Sleep};

use crate::budget::Reservation;

/// No request head is in progress.
const NO_HEAD: u64 = u64::MAX;
/// How long the 408 may take to write, and how long the connection then lingers, reading
/// and discarding, so the kernel does not answer the client's last bytes with a reset
/// that would destroy the 408 before the client reads it.
const TIMEOUT_ANSWER_GRACE: Duration = Duration::from_secs(1);
/// The most bytes discarded while lingering.
const LINGER_DISCARD_BYTES: usize = 64 * 1024;

/// When the client last sent something, whether the server is busy on its behalf, and
/// whether a request head is arriving. Shared by the socket and the requests it carries.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// When the first byte of the request head in progress arrived (ms since `started`).
    head_started_ms: AtomicU64,
    /// Bytes of the request head in progress.
    head_bytes: AtomicUsize,
    /// Whether the client has sent anything yet, and the wake-up for those waiting on it
    /// ([`Activity::first_bytes`]).
    received_any: AtomicBool,
    first_bytes_arrived: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            head_started_ms: AtomicU64::new(NO_HEAD),
            head_bytes: AtomicUsize::new(0),
            received_any: AtomicBool::new(false),
            first_bytes_arrived: Notify::new(),
        }
    }

    /// Returns once the client has sent its first bytes. A server that stops calls this
    /// before it closes a connection gracefully: until the first bytes are read, hyper
    /// does not know the connection carries a request and would close it unread, and
    /// the kernel answers the request the client already sent with a reset.
    pub async fn first_bytes(&self) {
        loop {
            let arrived = self.first_bytes_arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.received_any.load(Ordering::Acquire) {
                return;
            }
            arrived.await;
        }
    }

    fn note_first_bytes(&self) {
        if !self.received_any.load(Ordering::Relaxed) {
            self.received_any.store(true, Ordering::Release);
            self.first_bytes_arrived.notify_waiters();
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Whether a request of this connection is being served.
    pub fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Whether part of a request head has arrived and the rest has not.
    pub fn has_partial_head(&self) -> bool {
        self.head_bytes.load(Ordering::Relaxed) > 0
    }

    /// Notes `bytes` of a request head; returns the head's length so far.
    fn add_head_bytes(&self, bytes: usize) -> usize {
        if self.head_bytes.load(Ordering::Relaxed) == 0 {
            self.head_started_ms.store(self.now_ms(), Ordering::Relaxed);
        }
        self.head_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes
    }

    /// How long the request head in progress has been arriving, if one is.
    fn head_age(&self) -> Option<Duration> {
        let started = self.head_started_ms.load(Ordering::Relaxed);
        (started != NO_HEAD && self.has_partial_head())
            .then(|| Duration::from_millis(self.now_ms().saturating_sub(started)))
    }
}

/// Marks a request in progress on a connection for as long as it lives (through the end
/// of the response body), so the idle timeout does not fire while the client waits for
/// a slow answer. Creating one also ends the request head: it arrived whole.
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
}

impl InFlight {
    pub fn new(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_bytes.store(0, Ordering::Relaxed);
        activity.head_started_ms.store(NO_HEAD, Ordering::Relaxed);
        InFlight { activity }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client timeouts a [`ClientIo`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// Nothing from the client for this long while no request is served: closed.
    pub idle: Duration,
    /// A request head not whole this long after its first byte: 408 and closed.
    pub header_read: Duration,
}

/// What the first bytes of a connection said about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Unknown,
    Http1,
    /// The HTTP/2 connection preface (`PRI * HTTP/2.0`): no HTTP/1 heads, no 408.
    Http2,
}

/// The HTTP/2 preface starts with these bytes; no HTTP/1 method does.
const HTTP2_PREFACE_START: &[u8] = b"PRI ";

/// Grows a connection's reservation with the request head in hyper's read buffer.
struct HeadMemory {
    reservation: Reservation,
    /// What the reservation covers without growing: heads up to this many bytes.
    covered_head_bytes: usize,
    base: usize,
}

impl HeadMemory {
    fn admit(&mut self, head_bytes: usize) -> bool {
        let Some(excess) = head_bytes.checked_sub(self.covered_head_bytes) else {
            return true;
        };
        // hyper's read buffer doubles as it fills, so a head can hold twice its length.
        self.reservation
            .grow_to(self.base.saturating_add(excess.saturating_mul(2)))
    }
}

/// Called once when a connection turns out to speak HTTP/2, for the memory it will hold
/// on top; None closes it.
type Http2Admission = Box<dyn FnOnce() -> Option<Reservation> + Send>;

/// The client's socket with the client timeouts, head accounting and the hand-back that
/// lets the server answer 408 after hyper has let go of the connection.
pub struct ClientIo {
    /// Always Some until dropped; an Option so the drop can hand the socket back.
    stream: Option<TcpStream>,
    activity: Arc<Activity>,
    timeouts: ClientTimeouts,
    deadline: Pin<Box<Sleep>>,
    protocol: Protocol,
    sniffed: Vec<u8>,
    head_memory: Option<HeadMemory>,
    on_http2: Option<Http2Admission>,
    /// What an HTTP/2 connection holds beyond the connection's own reservation.
    http2_memory: Option<Reservation>,
    give_back: Option<oneshot::Sender<TcpStream>>,
}

impl ClientIo {
    pub fn new(stream: TcpStream, activity: Arc<Activity>, timeouts: ClientTimeouts) -> ClientIo {
        let first_deadline = timeouts.idle.min(timeouts.header_read);
        ClientIo {
            stream: Some(stream),
            activity,
            timeouts,
            deadline: Box::pin(tokio::time::sleep(first_deadline)),
            protocol: Protocol::Unknown,
            sniffed: Vec::new(),
            head_memory: None,
            on_http2: None,
            http2_memory: None,
            give_back: None,
        }
    }

    /// Charges request heads longer than `covered_head_bytes` to `reservation` (which
    /// holds `reservation.bytes()` for the connection already); a head that does not fit
    /// in the budget fails the connection.
    pub fn with_head_memory(
        mut self,
        reservation: Reservation,
        covered_head_bytes: usize,
    ) -> ClientIo {
        let base = reservation.bytes();
        self.head_memory = Some(HeadMemory {
            reservation,
            covered_head_bytes,
            base,
        });
        self
    }

    /// Asks `admit` once, if the client speaks HTTP/2 (whose connections hold more
    /// memory), for a reservation kept as long as the connection; None fails the
    /// connection.
    pub fn on_http2(
        mut self,
        admit: impl FnOnce() -> Option<Reservation> + Send + 'static,
    ) -> ClientIo {
        self.on_http2 = Some(Box::new(admit));
        self
    }

    /// Arranges for the socket to come back when hyper drops this, if a 408 may be owed.
    pub fn returning_socket(mut self) -> (ClientIo, SocketReturn) {
        let (sender, receiver) = oneshot::channel();
        self.give_back = Some(sender);
        let socket_return = SocketReturn {
            receiver,
            activity: self.activity.clone(),
            header_read: self.timeouts.header_read,
        };
        (self, socket_return)
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "socket handed back"))
    }

    /// Looks at the first bytes for the HTTP/2 preface.
    fn sniff(&mut self, data: &[u8]) -> io::Result<()> {
        let wanted = HTTP2_PREFACE_START.len() - self.sniffed.len();
        self.sniffed
            .extend_from_slice(&data[..data.len().min(wanted)]);
        if !HTTP2_PREFACE_START.starts_with(&self.sniffed) {
            self.protocol = Protocol::Http1;
        } else if self.sniffed.len() == HTTP2_PREFACE_START.len() {
            self.protocol = Protocol::Http2;
            self.activity.head_bytes.store(0, Ordering::Relaxed);
            if let Some(admit) = self.on_http2.take() {
                self.http2_memory = admit();
                if self.http2_memory.is_none() {
                    return Err(io::Error::other(
                        "refused: no room for another HTTP/2 connection in the memory budget",
                    ));
                }
            }
        }
        if self.protocol != Protocol::Unknown {
            self.sniffed = Vec::new();
        }
        Ok(())
    }

    fn note_received(&mut self, data_len: usize, data: &[u8]) -> io::Result<()> {
        self.activity.touch();
        self.activity.note_first_bytes();
        if self.protocol == Protocol::Unknown {
            self.sniff(data)?;
        }
        if self.protocol != Protocol::Http2 && !self.activity.is_busy() {
            let head = self.activity.add_head_bytes(data_len);
            if let Some(memory) = self.head_memory.as_mut()
                && !memory.admit(head)
            {
                return Err(io::Error::other(
                    "refused: the request head does not fit in the memory budget",
                ));
            }
        }
        Ok(())
    }

    /// The next moment a timeout could fire, or the error if one has.
    fn check_timeouts(&self) -> Result<Instant, io::Error> {
        let now = Instant::now();
        if self.activity.is_busy() {
            return Ok(now + self.timeouts.idle);
        }
        let idle_for = self.activity.idle_for();
        if idle_for >= self.timeouts.idle {
            let message = format!(
                "the client sent nothing for {} ms",
                self.timeouts.idle.as_millis()
            );
            return Err(io::Error::new(io::ErrorKind::TimedOut, message));
        }
        let mut next = now + (self.timeouts.idle - idle_for);
        if self.protocol != Protocol::Http2
            && let Some(age) = self.activity.head_age()
        {
            if age >= self.timeouts.header_read {
                let message = format!(
                    "the request head did not arrive within {} ms",
                    self.timeouts.header_read.as_millis()
                );
                return Err(io::Error::new(io::ErrorKind::TimedOut, message));
            }
            next = next.min(now + (self.timeouts.header_read - age));
        }
        Ok(next)
    }
}

impl Drop for ClientIo {
    fn drop(&mut self) {
        let owed = self.protocol != Protocol::Http2
            && self.activity.has_partial_head()
            && !self.activity.is_busy();
        if owed && let (Some(stream), Some(sender)) = (self.stream.take(), self.give_back.take()) {
            // The receiver may be gone (the server stopped); the socket then just closes.
            let _ = sender.send(stream);
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buffer.filled().len();
        if let Poll::Ready(result) = Pin::new(this.stream()?).poll_read(context, buffer) {
            let received = buffer.filled().len() - before;
            if received > 0 {
                this.note_received(received, &buffer.filled()[before..])?;
            }
            return Poll::Ready(result);
        }
        loop {
            ready!(this.deadline.as_mut().poll(context));
            let next = this.check_timeouts()?;
            this.deadline.as_mut().reset(next);
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()?).poll_write(context, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()?).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()?).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()?).poll_shutdown(context)
    }
}

/// The socket of a connection whose client may be owed a 408, once hyper lets go of it.
pub struct SocketReturn {
    receiver: oneshot::Receiver<TcpStream>,
    activity: Arc<Activity>,
    header_read: Duration,
}

impl SocketReturn {
    /// Call after the connection (and with it the [`ClientIo`]) has been dropped, saying
    /// whether a timeout ended it ([`is_timeout`] of its error). When one did and a
    /// request head was half-received, writes `408 Request Timeout` with `Connection:
    /// close`, then closes the socket gracefully. Returns whether a 408 was sent.
    pub async fn answer_timeout_if_owed(mut self, ended_by_timeout: bool) -> bool {
        if !ended_by_timeout {
            return false;
        }
        let Ok(mut stream) = self.receiver.try_recv() else {
            return false;
        };
        if !self.activity.has_partial_head() {
            return false;
        }
        let body = format!(
            "408 Request Timeout: the request was not received within {} ms\n",
            self.header_read.as_millis()
        );
        let answer = format!(
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let written = tokio::time::timeout(TIMEOUT_ANSWER_GRACE, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            return false;
        }
        linger(&mut stream).await;
        true
    }
}

/// Reads and discards what the client still sends, until it closes or the grace ends.
async fn linger(stream: &mut TcpStream) {
    let mut discarded = 0;
    let mut buffer = [0u8; 4096];
    let _ = tokio::time::timeout(TIMEOUT_ANSWER_GRACE, async {
        while discarded < LINGER_DISCARD_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => discarded += read,
            }
        }
    })
    .await;
}

/// Whether an error that ended a connection (hyper's, or the socket's) was a timeout.
pub fn is_timeout(error: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if current
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
            || current
                .downcast_ref::<io::Error>()
                .is_some_and(|error| error.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = current.source();
    }
    false
}
