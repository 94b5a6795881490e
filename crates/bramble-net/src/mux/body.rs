//! The two halves of a stream's body and the credit between them.
//!
//! A [`BodySender`] may have at most the credit the receiver granted in flight: every
//! data frame it queues takes credit first, and with none left it waits (up to the stream
//! idle timeout) for a `Window` frame. A [`BodyReader`] grants credit back as the
//! application takes chunks out, half a window at a time. So a reader that stops reading
//! stops its sender after one window, the connection and its other streams carry on, and
//! no body is ever held in memory beyond one window per stream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

use crate::mux::MuxError;
use crate::mux::connection::{Inbound, Shared};
use crate::mux::frame::{Frame, FrameKind, Priority};
use crate::rpc::{ErrorKind, RpcError};

/// Credit larger than this is a peer granting nonsense (HTTP/2 uses the same ceiling).
const MAX_CREDIT: u64 = (1 << 31) - 1;

/// Credit one sender may use, granted by the peer's `Window` frames.
#[derive(Debug)]
pub(crate) struct SendCredit {
    state: Mutex<CreditState>,
    changed: Notify,
}

#[derive(Debug)]
struct CreditState {
    available: u64,
    /// Why sending is over (stopped, reset, connection closed), once it is.
    closed: Option<MuxError>,
}

impl SendCredit {
    pub fn new(initial: u32) -> Self {
        SendCredit {
            state: Mutex::new(CreditState {
                available: u64::from(initial),
                closed: None,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CreditState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn grant(&self, increment: u32) -> Result<(), MuxError> {
        let mut state = self.state();
        let total = state.available + u64::from(increment);
        if total > MAX_CREDIT {
            return Err(MuxError::Protocol(format!(
                "the peer granted {total} bytes of credit on one stream"
            )));
        }
        state.available = total;
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Returns credit taken and not used.
    pub fn give_back(&self, amount: usize) {
        if amount == 0 {
            return;
        }
        self.state().available += amount as u64;
        self.changed.notify_waiters();
    }

    pub fn close(&self, reason: MuxError) {
        let mut state = self.state();
        if state.closed.is_none() {
            state.closed = Some(reason);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    pub fn check_open(&self) -> Result<(), MuxError> {
        match &self.state().closed {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// Takes up to `wanted` bytes of credit, waiting for some if there is none.
    pub async fn take(&self, wanted: usize, idle_timeout: Duration) -> Result<usize, MuxError> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a grant between the look and the wait wakes us.
            changed.as_mut().enable();
            {
                let mut state = self.state();
                if let Some(reason) = &state.closed {
                    return Err(reason.clone());
                }
                if state.available > 0 {
                    let taken = state.available.min(wanted as u64);
                    state.available -= taken;
                    return Ok(taken as usize);
                }
            }
            tokio::time::timeout(idle_timeout, changed)
                .await
                .map_err(|_| MuxError::Timeout(idle_timeout))?;
        }
    }
}

/// What an unfinished sender does when it is dropped.
#[derive(Debug)]
pub(crate) enum DropAction {
    /// Reset the stream, so the receiver learns the body is truncated.
    Reset,
    /// Only record it: the server sends the reset itself, with the handler's error.
    Report(Arc<AtomicBool>),
}

/// The sending half of a stream's body. Call [`BodySender::finish`] at the end: a sender
/// dropped before that resets the stream, so a truncated body never looks complete.
#[derive(Debug)]
pub struct BodySender {
    shared: Arc<Shared>,
    id: u32,
    priority: Priority,
    credit: Arc<SendCredit>,
    done: bool,
    on_drop: DropAction,
}

impl BodySender {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: u32,
        priority: Priority,
        credit: Arc<SendCredit>,
    ) -> Self {
        BodySender {
            shared,
            id,
            priority,
            credit,
            done: false,
            on_drop: DropAction::Reset,
        }
    }

    pub(crate) fn report_drop_to(mut self, abandoned: Arc<AtomicBool>) -> Self {
        self.on_drop = DropAction::Report(abandoned);
        self
    }

    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Sends a chunk of the body, cut into frames of at most `max_frame_payload` bytes,
    /// each sent once the receiver has credit for it. Waits while the receiver is behind;
    /// fails with [`MuxError::Timeout`] if it grants nothing for the stream idle timeout,
    /// [`MuxError::Stopped`] if it stopped reading, or the reset or connection error.
    pub async fn send(&mut self, mut chunk: Bytes) -> Result<(), MuxError> {
        if self.done {
            return Err(MuxError::Finished);
        }
        let frame_limit = self.shared.limits.max_frame_payload as usize;
        let idle_timeout = self.shared.limits.stream_idle_timeout;
        while !chunk.is_empty() {
            let wanted = chunk.len().min(frame_limit);
            let mut granted = self.credit.take(wanted, idle_timeout).await?;
            if self.priority == Priority::Bulk {
                // Bulk also needs the connection's bulk credit, which keeps the bytes ahead
                // of a control frame in the socket buffers bounded.
                match self.shared.bulk_credit.take(granted, idle_timeout).await {
                    Ok(connection_granted) => {
                        self.credit.give_back(granted - connection_granted);
                        granted = connection_granted;
                    }
                    Err(error) => {
                        self.credit.give_back(granted);
                        return Err(error);
                    }
                }
            }
            let piece = chunk.split_to(granted);
            self.shared
                .queue(Frame::new(self.id, FrameKind::Data, self.priority, piece));
        }
        Ok(())
    }

    /// Sends a copy of `bytes` (see [`BodySender::send`]).
    pub async fn send_slice(&mut self, bytes: &[u8]) -> Result<(), MuxError> {
        self.send(Bytes::copy_from_slice(bytes)).await
    }

    /// Streams everything `source` yields, `buffer_size` bytes at a time (a file, a
    /// socket), without holding more than one buffer. Returns the number of bytes sent.
    /// Does not finish the body.
    pub async fn send_from<R: AsyncRead + Unpin>(
        &mut self,
        source: &mut R,
        buffer_size: usize,
    ) -> Result<u64, MuxError> {
        let buffer_size = buffer_size.clamp(1024, 1024 * 1024);
        let mut total = 0u64;
        loop {
            let mut buffer = bytes::BytesMut::with_capacity(buffer_size);
            let read = source.read_buf(&mut buffer).await.map_err(|error| {
                MuxError::LocalIo(format!("reading the body to send failed: {error}"))
            })?;
            if read == 0 {
                return Ok(total);
            }
            total += read as u64;
            self.send(buffer.freeze()).await?;
        }
    }

    /// Ends the body: the receiver reads `None` after the last chunk. Fails with the reset
    /// or connection error. A receiver that already stopped reading is not an error here:
    /// it has what it wanted (a handler that answers without reading an empty request
    /// body stops before the end arrives), and its answer says how the call went; a
    /// `send` that it did not want has already failed with [`MuxError::Stopped`].
    pub async fn finish(mut self) -> Result<(), MuxError> {
        if let Err(error) = self.credit.check_open() {
            // Nothing left to tell the peer; the drop must not reset the stream either,
            // which would throw away a response that may still be coming.
            self.done = true;
            self.shared.finish_outbound(self.id);
            return match error {
                MuxError::Stopped => Ok(()),
                other => Err(other),
            };
        }
        self.done = true;
        self.shared
            .queue(Frame::empty(self.id, FrameKind::End, self.priority));
        self.shared.finish_outbound(self.id);
        Ok(())
    }

    /// Abandons the stream in both directions with `error`, which the peer reads as
    /// [`MuxError::Remote`].
    pub fn reset(mut self, error: RpcError) {
        self.done = true;
        self.shared.reset_stream(self.id, &error);
    }
}

impl Drop for BodySender {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.credit.check_open().is_err() {
            // The peer stopped reading, reset the stream, or the connection is gone: the
            // body cannot be truncated any further, and a reset would also end the other
            // direction (a response the peer may be sending).
            self.shared.finish_outbound(self.id);
            return;
        }
        match &self.on_drop {
            DropAction::Reset => self.shared.reset_stream(
                self.id,
                &RpcError::new(
                    ErrorKind::Internal,
                    "the sender stopped before the end of the body",
                ),
            ),
            DropAction::Report(abandoned) => abandoned.store(true, Ordering::Release),
        }
    }
}

/// The receiving half of a stream's body: chunks in order, then `None` at the end.
/// Dropping it before the end tells the sender to stop (a `Stop` frame).
#[derive(Debug)]
pub struct BodyReader {
    shared: Arc<Shared>,
    id: u32,
    receiver: mpsc::UnboundedReceiver<Inbound>,
    /// Bytes handed to the application since credit was last granted back.
    consumed: u32,
    finished: bool,
}

impl BodyReader {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: u32,
        receiver: mpsc::UnboundedReceiver<Inbound>,
    ) -> Self {
        BodyReader {
            shared,
            id,
            receiver,
            consumed: 0,
            finished: false,
        }
    }

    /// The next event of the stream, waiting up to `timeout`.
    pub(crate) async fn next_inbound(&mut self, timeout: Duration) -> Result<Inbound, MuxError> {
        if self.finished {
            return Err(MuxError::Finished);
        }
        let event = tokio::time::timeout(timeout, self.receiver.recv())
            .await
            .map_err(|_| MuxError::Timeout(timeout))?;
        match event {
            Some(Inbound::Data(chunk)) => {
                self.account(chunk.len());
                Ok(Inbound::Data(chunk))
            }
            Some(Inbound::End) => {
                self.finished = true;
                Ok(Inbound::End)
            }
            Some(Inbound::Reset(error)) => {
                self.finished = true;
                Err(MuxError::Remote(error))
            }
            Some(head @ Inbound::Head(_)) => Ok(head),
            None => {
                self.finished = true;
                if self.shared.is_closed() {
                    Err(self.shared.closed_error())
                } else {
                    Err(MuxError::Finished)
                }
            }
        }
    }

    fn account(&mut self, length: usize) {
        // Frames are at most 1 MiB, so the sum of what is outstanding fits a u32.
        self.consumed = self.consumed.saturating_add(length as u32);
        if self.consumed >= self.shared.limits.stream_window / 2 {
            let increment = std::mem::take(&mut self.consumed);
            if self.shared.add_receive_credit(self.id, increment) {
                self.shared.queue(Frame::window(self.id, increment));
            }
        }
    }

    /// The next chunk of the body, `None` at its end. Fails if the sender reset the
    /// stream, the connection closed, or nothing arrived for the stream idle timeout.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, MuxError> {
        if self.finished {
            return Ok(None);
        }
        match self
            .next_inbound(self.shared.limits.stream_idle_timeout)
            .await?
        {
            Inbound::Data(chunk) => Ok(Some(chunk)),
            Inbound::End => Ok(None),
            Inbound::Head(_) | Inbound::Reset(_) => {
                self.finished = true;
                Err(MuxError::Protocol(
                    "a response Head arrived in the middle of a body".to_string(),
                ))
            }
        }
    }

    /// Reads the whole body, refusing one larger than `limit` bytes (for small, unary
    /// bodies; large ones should be consumed chunk by chunk).
    pub async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, MuxError> {
        self.read_to_end_sized(0, limit).await
    }

    /// [`BodyReader::read_to_end`] for a body whose length the caller was told
    /// (`expected`, at most `limit`): the buffer is allocated at that size once, instead
    /// of growing by reallocation, which copies the body several times and can leave it
    /// holding twice its size.
    pub async fn read_to_end_sized(
        &mut self,
        expected: usize,
        limit: usize,
    ) -> Result<Vec<u8>, MuxError> {
        let mut body = bramble_util::buffers::take(expected.min(limit));
        while let Some(chunk) = self.next_chunk().await? {
            if body.len() + chunk.len() > limit {
                return Err(MuxError::TooLarge(format!(
                    "the body exceeds the {limit}-byte limit"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Writes the body into `sink` chunk by chunk (a file, a socket) and returns its
    /// length. Never holds more than one window of it.
    pub async fn write_into<W: AsyncWrite + Unpin>(
        &mut self,
        sink: &mut W,
    ) -> Result<u64, MuxError> {
        let mut total = 0u64;
        while let Some(chunk) = self.next_chunk().await? {
            sink.write_all(&chunk).await.map_err(|error| {
                MuxError::LocalIo(format!("writing the received body failed: {error}"))
            })?;
            total += chunk.len() as u64;
        }
        Ok(total)
    }
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.stop_receiving(self.id);
        }
    }
}
