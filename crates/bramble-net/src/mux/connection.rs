//! The state both ends of a mux connection share: the table of open streams, the queues
//! to the writer, the reader task that turns incoming frames into stream events, and the
//! rules that make a connection safe against a hostile or broken peer (every frame is
//! validated against the table; any violation closes the connection with a `GoAway`
//! naming the reason).
//!
//! Stream ids are chosen by the client, start at 1 and only grow. That lets the reader
//! tell a frame for a stream that has just ended (an id at or below the highest seen:
//! dropped silently, it was in flight) from a frame for a stream that never existed (a
//! higher id: a protocol violation).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bramble_util::{Shutdown, ShutdownTrigger};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::debug;

use crate::mux::body::{BodyReader, BodySender, SendCredit};
use crate::mux::frame::{
    self, Frame, FrameHeader, FrameKind, HEADER_LENGTH, OpenPayload, Priority,
};
use crate::mux::writer::{self, Outbox};
use crate::mux::{INITIAL_CONNECTION_BULK_WINDOW, INITIAL_WINDOW, MuxError, MuxLimits};
use crate::rpc::{ErrorKind, RpcError};

/// Which end of the connection this is; only clients open streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

/// What the reader delivers to a stream's [`BodyReader`].
#[derive(Debug)]
pub(crate) enum Inbound {
    Head(Bytes),
    Data(Bytes),
    End,
    Reset(RpcError),
}

struct StreamEntry {
    /// None once the incoming half is over (End or Reset arrived, or the local reader was
    /// dropped); later data for the stream is dropped.
    inbound: Option<mpsc::UnboundedSender<Inbound>>,
    /// Credit granted to the peer and not yet used: data beyond it breaks the protocol.
    receive_remaining: u64,
    credit: Arc<SendCredit>,
    /// False once this side sent End or Reset, or the peer sent Stop or Reset.
    outbound_open: bool,
    /// A client's slot among its `max_client_streams`, freed with the entry.
    _slot: Option<OwnedSemaphorePermit>,
}

struct StreamTable {
    entries: HashMap<u32, StreamEntry>,
    highest_id: u32,
    /// Connection bulk credit granted to the peer and not yet used.
    bulk_receive_remaining: u64,
    /// Bulk bytes received since connection credit was last granted back.
    bulk_received_unacknowledged: u32,
    /// Set when the connection closed; every later operation fails with it.
    closed_reason: Option<String>,
}

/// A stream the peer opened, handed to the server to run its handler.
pub(crate) struct OpenedStream {
    pub id: u32,
    pub priority: Priority,
    pub open: OpenPayload,
    pub body: BodyReader,
    pub credit: Arc<SendCredit>,
}

/// One connection's shared state; [`BodySender`], [`BodyReader`] and the client and
/// server handles all hold an `Arc` of it.
pub(crate) struct Shared {
    pub peer: SocketAddr,
    pub side: Side,
    pub limits: MuxLimits,
    streams: Mutex<StreamTable>,
    outbox: Outbox,
    closed: ShutdownTrigger,
    client_slots: Arc<Semaphore>,
    /// This side's connection-wide credit for bulk data (see
    /// [`MuxLimits::connection_bulk_window`]).
    pub bulk_credit: SendCredit,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MuxConnection")
            .field("peer", &self.peer)
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

/// Starts a connection over an established TLS stream: spawns the writer task and returns
/// the shared state and the reader half, which the caller drives with [`read_frames`].
pub(crate) fn start<S>(
    stream: S,
    peer: SocketAddr,
    side: Side,
    limits: MuxLimits,
    shutdown: Shutdown,
) -> (Arc<Shared>, tokio::io::ReadHalf<S>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (outbox, inbox) = writer::queues();
    let (closed, closed_signal) = ShutdownTrigger::new();
    let shared = Arc::new(Shared {
        peer,
        side,
        client_slots: Arc::new(Semaphore::new(limits.max_client_streams)),
        streams: Mutex::new(StreamTable {
            entries: HashMap::new(),
            highest_id: 0,
            bulk_receive_remaining: u64::from(limits.connection_bulk_window),
            bulk_received_unacknowledged: 0,
            closed_reason: None,
        }),
        bulk_credit: SendCredit::new(INITIAL_CONNECTION_BULK_WINDOW),
        limits,
        outbox,
        closed,
    });
    let extra = shared
        .limits
        .connection_bulk_window
        .saturating_sub(INITIAL_CONNECTION_BULK_WINDOW);
    if extra > 0 {
        shared.outbox.send(Frame::window(0, extra));
    }
    let writer_shared = shared.clone();
    tokio::spawn(async move {
        if let Err(error) = writer::run(write_half, inbox, closed_signal, shutdown).await {
            writer_shared.close(&format!("writing to the peer failed: {error}"), false);
        }
    });
    (shared, read_half)
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, StreamTable> {
        // The table holds plain data and every update is a few assignments, so a panic
        // elsewhere cannot leave it half-changed; carry on with it.
        self.streams
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A signal that fires when the connection closes (tasks tied to it select on it).
    pub fn closed_signal(&self) -> Shutdown {
        self.closed.subscribe()
    }

    pub fn is_closed(&self) -> bool {
        self.table().closed_reason.is_some()
    }

    pub fn closed_error(&self) -> MuxError {
        MuxError::ConnectionClosed {
            peer: self.peer,
            reason: self
                .table()
                .closed_reason
                .clone()
                .unwrap_or_else(|| "closed".to_string()),
        }
    }

    pub fn queue(&self, frame: Frame) {
        self.outbox.send(frame);
    }

    /// Closes the connection: every stream fails with `reason`, the peer gets a `GoAway`
    /// (unless it sent one itself), and the reader and writer stop. Idempotent.
    pub fn close(&self, reason: &str, tell_peer: bool) {
        let entries = {
            let mut table = self.table();
            if table.closed_reason.is_some() {
                return;
            }
            table.closed_reason = Some(reason.to_string());
            std::mem::take(&mut table.entries)
        };
        let error = MuxError::ConnectionClosed {
            peer: self.peer,
            reason: reason.to_string(),
        };
        self.bulk_credit.close(error.clone());
        for (_, entry) in entries {
            entry.credit.close(error.clone());
            // Dropping `inbound` tells the stream's reader the connection is gone.
        }
        if tell_peer {
            self.outbox.send(Frame::go_away(reason));
        }
        // Callers waiting for a stream slot learn at once that none will come.
        self.client_slots.close();
        self.closed.trigger();
    }

    /// Opens a stream (client side): waits for a free slot, picks the next id and queues
    /// the `Open` frame. `Open` frames always go through the control queue, under the
    /// table lock, so they reach the peer in id order whatever the streams' classes; the
    /// class travels in the frame's header.
    pub async fn open_stream(
        self: &Arc<Self>,
        method: &str,
        header: &[u8],
        priority: Priority,
    ) -> Result<(BodySender, BodyReader), MuxError> {
        let payload = postcard::to_allocvec(&OpenPayload {
            method: method.to_string(),
            header: header.to_vec(),
        })
        .map_err(|error| MuxError::Decode(error.to_string()))?;
        if payload.len() > self.limits.max_frame_payload as usize {
            return Err(MuxError::TooLarge(format!(
                "the method name and request header take {} bytes; the limit is {}",
                payload.len(),
                self.limits.max_frame_payload
            )));
        }
        let slot = tokio::time::timeout(
            self.limits.stream_idle_timeout,
            self.client_slots.clone().acquire_owned(),
        )
        .await
        .map_err(|_| MuxError::Timeout(self.limits.stream_idle_timeout))?
        .map_err(|_| self.closed_error())?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let credit = Arc::new(SendCredit::new(INITIAL_WINDOW));
        let id = {
            let mut table = self.table();
            if let Some(reason) = &table.closed_reason {
                return Err(MuxError::ConnectionClosed {
                    peer: self.peer,
                    reason: reason.clone(),
                });
            }
            // Ids are never reused; a connection that ran through half the id space is
            // retired (callers reconnect), which takes years of continuous calls.
            if table.highest_id >= u32::MAX / 2 {
                drop(table);
                self.close("stream ids exhausted; reconnecting", true);
                return Err(self.closed_error());
            }
            table.highest_id += 1;
            let id = table.highest_id;
            table.entries.insert(
                id,
                StreamEntry {
                    inbound: Some(sender),
                    receive_remaining: u64::from(INITIAL_WINDOW),
                    credit: credit.clone(),
                    outbound_open: true,
                    _slot: Some(slot),
                },
            );
            // The header names the stream's class, which the server answers in (a bulk
            // download must not travel in its control queue).
            self.outbox.send_control(Frame::new(
                id,
                FrameKind::Open,
                priority,
                Bytes::from(payload),
            ));
            id
        };
        self.grant_extra_window(id);
        Ok((
            BodySender::new(self.clone(), id, priority, credit),
            BodyReader::new(self.clone(), id, receiver),
        ))
    }

    /// Grants the part of our window beyond the protocol's initial one.
    fn grant_extra_window(&self, id: u32) {
        let extra = self.limits.stream_window.saturating_sub(INITIAL_WINDOW);
        if extra > 0 && self.add_receive_credit(id, extra) {
            self.outbox.send(Frame::window(id, extra));
        }
    }

    /// Records credit this side is about to grant; false if the stream no longer takes
    /// data (then no `Window` frame is needed).
    pub fn add_receive_credit(&self, id: u32, increment: u32) -> bool {
        let mut table = self.table();
        match table.entries.get_mut(&id) {
            Some(entry) if entry.inbound.is_some() => {
                entry.receive_remaining += u64::from(increment);
                true
            }
            _ => false,
        }
    }

    /// This side sent `End` (or will send nothing more).
    pub fn finish_outbound(&self, id: u32) {
        let mut table = self.table();
        if let Some(entry) = table.entries.get_mut(&id) {
            entry.outbound_open = false;
        }
        Self::remove_if_done(&mut table, id);
    }

    /// The local reader gave up on the body before its end: tell the peer to stop sending.
    pub fn stop_receiving(&self, id: u32) {
        let mut table = self.table();
        let Some(entry) = table.entries.get_mut(&id) else {
            return;
        };
        if entry.inbound.take().is_some() {
            self.outbox
                .send(Frame::empty(id, FrameKind::Stop, Priority::Control));
        }
        Self::remove_if_done(&mut table, id);
    }

    /// Abandons the stream in both directions and tells the peer why.
    pub fn reset_stream(&self, id: u32, error: &RpcError) {
        let mut table = self.table();
        if let Some(entry) = table.entries.remove(&id) {
            entry.credit.close(MuxError::Finished);
            self.outbox.send(Frame::reset(id, error));
        }
    }

    fn remove_if_done(table: &mut StreamTable, id: u32) {
        if let Some(entry) = table.entries.get(&id)
            && entry.inbound.is_none()
            && !entry.outbound_open
        {
            table.entries.remove(&id);
        }
    }

    /// Number of streams open on this connection.
    pub fn open_streams(&self) -> usize {
        self.table().entries.len()
    }

    /// Applies one incoming frame. Returns a stream the peer opened (server side), or an
    /// error that closes the connection.
    fn apply(
        self: &Arc<Self>,
        header: FrameHeader,
        payload: Bytes,
    ) -> Result<Option<OpenedStream>, MuxError> {
        let id = header.stream_id;
        match header.kind {
            FrameKind::GoAway => {
                // The reason ends up in logs and error messages: printable and short.
                let reason: String = String::from_utf8_lossy(&payload)
                    .chars()
                    .filter(|character| !character.is_control())
                    .take(1024)
                    .collect();
                Err(MuxError::ConnectionClosed {
                    peer: self.peer,
                    reason: format!("the peer closed the connection: {reason}"),
                })
            }
            FrameKind::Open => self.apply_open(id, header.priority, &payload),
            FrameKind::Window if id == 0 => {
                self.bulk_credit.grant(frame::decode_window(&payload)?)?;
                Ok(None)
            }
            kind => {
                let mut table = self.table();
                if kind == FrameKind::Data && header.priority == Priority::Bulk {
                    // Counted for every bulk frame, also those of streams that just
                    // ended, or the peer's connection credit would leak away.
                    self.account_bulk(&mut table, payload.len())?;
                }
                let Some(entry) = table.entries.get_mut(&id) else {
                    if id > table.highest_id {
                        return Err(MuxError::Protocol(format!(
                            "{kind:?} frame for stream {id}, which was never opened"
                        )));
                    }
                    // A stream that ended moments ago; the frame was already in flight.
                    return Ok(None);
                };
                match kind {
                    FrameKind::Head if self.side == Side::Server => {
                        return Err(MuxError::Protocol(
                            "a client sent a response Head".to_string(),
                        ));
                    }
                    FrameKind::Head => {
                        if let Some(inbound) = &entry.inbound {
                            let _ = inbound.send(Inbound::Head(payload));
                        }
                    }
                    FrameKind::Data => {
                        let length = payload.len() as u64;
                        if entry.inbound.is_none() {
                            // We sent Stop; the peer's data crossed it.
                            return Ok(None);
                        }
                        if length > entry.receive_remaining {
                            return Err(MuxError::Protocol(format!(
                                "stream {id} sent {length} bytes with only {} bytes of credit",
                                entry.receive_remaining
                            )));
                        }
                        entry.receive_remaining -= length;
                        if let Some(inbound) = &entry.inbound {
                            let _ = inbound.send(Inbound::Data(payload));
                        }
                    }
                    FrameKind::End => {
                        if let Some(inbound) = entry.inbound.take() {
                            let _ = inbound.send(Inbound::End);
                        }
                        Self::remove_if_done(&mut table, id);
                    }
                    FrameKind::Reset => {
                        let error = frame::decode_reset(&payload);
                        if let Some(entry) = table.entries.remove(&id) {
                            entry.credit.close(MuxError::Remote(error.clone()));
                            if let Some(inbound) = entry.inbound {
                                let _ = inbound.send(Inbound::Reset(error));
                            }
                        }
                    }
                    FrameKind::Window => {
                        let increment = frame::decode_window(&payload)?;
                        if entry.outbound_open {
                            entry.credit.grant(increment)?;
                        }
                    }
                    FrameKind::Stop => {
                        entry.outbound_open = false;
                        entry.credit.close(MuxError::Stopped);
                        Self::remove_if_done(&mut table, id);
                    }
                    FrameKind::Open | FrameKind::GoAway => {}
                }
                Ok(None)
            }
        }
    }

    /// Checks bulk data against the connection credit granted to the peer and grants it
    /// back, half a window at a time, now that the frame is off the connection.
    fn account_bulk(&self, table: &mut StreamTable, length: usize) -> Result<(), MuxError> {
        let length = length as u64;
        if length > table.bulk_receive_remaining {
            return Err(MuxError::Protocol(format!(
                "{length} bytes of bulk data with only {} bytes of connection credit",
                table.bulk_receive_remaining
            )));
        }
        table.bulk_receive_remaining -= length;
        // At most one window (64 MiB) is ever unacknowledged: no overflow.
        table.bulk_received_unacknowledged += length as u32;
        if table.bulk_received_unacknowledged >= self.limits.connection_bulk_window / 2 {
            let increment = std::mem::take(&mut table.bulk_received_unacknowledged);
            table.bulk_receive_remaining += u64::from(increment);
            self.outbox.send(Frame::window(0, increment));
        }
        Ok(())
    }

    fn apply_open(
        self: &Arc<Self>,
        id: u32,
        priority: Priority,
        payload: &[u8],
    ) -> Result<Option<OpenedStream>, MuxError> {
        if self.side == Side::Client {
            return Err(MuxError::Protocol(
                "the server tried to open a stream".to_string(),
            ));
        }
        let open: OpenPayload = postcard::from_bytes(payload)
            .map_err(|error| MuxError::Protocol(format!("malformed Open frame: {error}")))?;
        let mut table = self.table();
        if id <= table.highest_id {
            return Err(MuxError::Protocol(format!(
                "stream {id} opened after stream {}: ids must grow",
                table.highest_id
            )));
        }
        table.highest_id = id;
        if table.entries.len() >= self.limits.max_streams {
            if self.outbox.queued() > self.limits.max_queued_frames {
                return Err(MuxError::Protocol(
                    "the peer keeps opening streams without reading the refusals".to_string(),
                ));
            }
            // Refuse the one stream, keep the connection: the caller gets a clear error
            // for this call and its other calls carry on.
            self.outbox.send(Frame::reset(
                id,
                &RpcError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "too many concurrent streams on this connection (limit {})",
                        self.limits.max_streams
                    ),
                ),
            ));
            return Ok(None);
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let credit = Arc::new(SendCredit::new(INITIAL_WINDOW));
        table.entries.insert(
            id,
            StreamEntry {
                inbound: Some(sender),
                receive_remaining: u64::from(INITIAL_WINDOW),
                credit: credit.clone(),
                outbound_open: true,
                _slot: None,
            },
        );
        Ok(Some(OpenedStream {
            id,
            priority,
            open,
            body: BodyReader::new(self.clone(), id, receiver),
            credit,
        }))
    }
}

/// Reads frames until the connection closes, applies them, and hands every stream the
/// peer opens to `on_open`. Ends on shutdown, on the connection's close signal, on EOF,
/// after `connection_idle_timeout` of silence with no stream open, or on a protocol
/// violation (which is logged by the caller from the returned reason and sent to the
/// peer in a `GoAway`). Returns why it ended.
pub(crate) async fn read_frames<R, F>(
    shared: &Arc<Shared>,
    read_half: R,
    mut shutdown: Shutdown,
    mut on_open: F,
) -> MuxError
where
    R: AsyncRead + Unpin,
    F: FnMut(OpenedStream),
{
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    let mut closed = shared.closed_signal();
    let limits = &shared.limits;
    let mut input_ended = false;
    let mut payload_block = BytesMut::new();
    let outcome: MuxError = loop {
        // Wait for the first byte of the next frame with `fill_buf`, which loses nothing
        // when the idle timeout cancels it; the rest of the header then has to follow
        // within the frame timeout like any payload.
        let waited = tokio::select! {
            _ = shutdown.wait() => break shutdown_error(shared),
            _ = closed.wait() => break shared.closed_error(),
            waited = tokio::time::timeout(limits.connection_idle_timeout, reader.fill_buf()) => waited.map(|read| read.map(|buffered| buffered.is_empty())),
        };
        match waited {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => {
                input_ended = true;
                break read_error(shared, &std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok(Err(error)) => {
                input_ended = true;
                break read_error(shared, &error);
            }
            Err(_) if shared.open_streams() == 0 => {
                // Told to the peer, so a client does not open a stream on a connection
                // that is going away.
                shared.close("the connection was idle", true);
                break shared.closed_error();
            }
            // Streams are open and waiting on their own timeouts; silence is theirs.
            Err(_) => continue,
        }
        let mut header_bytes = [0u8; HEADER_LENGTH];
        tokio::select! {
            _ = shutdown.wait() => break shutdown_error(shared),
            _ = closed.wait() => break shared.closed_error(),
            read = tokio::time::timeout(limits.frame_timeout, reader.read_exact(&mut header_bytes)) => match read {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                input_ended = true;
                break read_error(shared, &error);
            }
                Err(_) => break MuxError::Protocol(format!(
                    "a frame header did not arrive within {:?}", limits.frame_timeout
                )),
            },
        }
        let header = match FrameHeader::decode(&header_bytes, limits.max_frame_payload) {
            Ok(header) => header,
            Err(error) => break error,
        };
        let payload = tokio::select! {
            _ = shutdown.wait() => break shutdown_error(shared),
            _ = closed.wait() => break shared.closed_error(),
            read = tokio::time::timeout(limits.frame_timeout, read_payload(&mut reader, &mut payload_block, header.length as usize)) => match read {
                Ok(Ok(payload)) => payload,
                Ok(Err(error)) => {
                input_ended = true;
                break read_error(shared, &error);
            }
                Err(_) => break MuxError::Protocol(format!(
                    "a {:?} frame's payload did not arrive within {:?}",
                    header.kind, limits.frame_timeout
                )),
            },
        };
        match shared.apply(header, payload) {
            Ok(Some(opened)) => {
                shared.grant_extra_window(opened.id);
                on_open(opened);
            }
            Ok(None) => {}
            Err(error) => break error,
        }
    };
    let (reason, tell_peer) = match &outcome {
        MuxError::ConnectionClosed { reason, .. } => (reason.clone(), false),
        other => (other.to_string(), true),
    };
    debug!(peer = %shared.peer, %reason, "mux connection ended");
    shared.close(&reason, tell_peer);
    if !input_ended {
        drain(&mut reader).await;
    }
    outcome
}

/// Reads and discards what the peer still sends, until it closes its side, for a short
/// while. Closing a socket with unread input makes the kernel answer with a reset, which
/// can destroy the `GoAway` (and its reason) before the peer has read it; the peer closes
/// its side as soon as it sees the `GoAway`.
async fn drain<R: AsyncRead + Unpin>(reader: &mut R) {
    const GRACE: std::time::Duration = std::time::Duration::from_secs(1);
    const MOST: u64 = 16 * 1024 * 1024;
    let mut sink = tokio::io::sink();
    let _ = tokio::time::timeout(GRACE, tokio::io::copy(&mut reader.take(MOST), &mut sink)).await;
}

fn shutdown_error(shared: &Shared) -> MuxError {
    shared.close("the agent is shutting down", true);
    shared.closed_error()
}

fn read_error(shared: &Shared, error: &std::io::Error) -> MuxError {
    let reason = if error.kind() == std::io::ErrorKind::UnexpectedEof {
        "the peer closed the connection".to_string()
    } else {
        format!("reading from the peer failed: {error}")
    };
    MuxError::ConnectionClosed {
        peer: shared.peer,
        reason,
    }
}

/// The reader's buffer: one TLS record's plaintext. Headers and small frames are read
/// through it; a payload longer than it goes past it, straight into its block (tokio's
/// `BufReader` reads past an empty buffer for any read at least its size). At 64 KiB, the
/// size of a whole data frame, nearly every payload byte was copied twice.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Bytes the reader allocates at a time for payloads. Frames are cut out of one such
/// block (and the block is reused once they are all dropped) instead of each taking a
/// fresh allocation, which cost page faults on every 64 KiB frame. Kept small because a
/// chunk an application holds on to keeps its whole block alive, and under the agent's
/// mmap threshold (`bramble_util::memory`, 256 KiB) so that a new block is heap memory
/// used before rather than a fresh mapping to fault in.
const PAYLOAD_BLOCK: usize = 192 * 1024;

async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    block: &mut BytesMut,
    length: usize,
) -> std::io::Result<Bytes> {
    block.clear();
    if block.capacity() < length {
        block.reserve(PAYLOAD_BLOCK.max(length));
    }
    while block.len() < length {
        let wanted = (length - block.len()) as u64;
        let read = (&mut *reader).take(wanted).read_buf(block).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(block.split_to(length).freeze())
}
