//! The one task per connection that writes frames, and the two queues that feed it.
//!
//! Priority is decided here and nowhere else: before every frame it takes, the writer
//! looks at the control queue first, so a control frame waits at most for the batch being
//! written (one bulk frame plus whatever control frames were already queued), never for a
//! whole bulk transfer. Frames of one stream stay in order because a stream's `Head`,
//! `Data` and `End` frames all go to the queue of the stream's class, and its `Open` (always
//! in the control queue) goes out before them: every control frame queued before a bulk
//! frame is taken is written ahead of it ([`Inbox::encode_bulk`]).
//!
//! The queues are unbounded channels, yet bounded in bytes: data frames are queued only
//! against flow-control credit (at most one window per stream), and the other frames are
//! one per stream event. The only frames a peer can provoke without limit (answers to
//! refused streams) are checked against [`Outbox::queued`] by the reader.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bramble_util::Shutdown;
use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::mux::frame::{Frame, Priority};

/// How many bytes the writer gathers before handing them to TLS. Small enough that a
/// control frame arriving during a write waits little; large enough to fill TLS records.
const BATCH_BYTES: usize = 64 * 1024;

/// How long the writer keeps trying to deliver the last control frames (a `GoAway` with
/// the reason) once the connection is closing.
const CLOSING_GRACE: Duration = Duration::from_secs(1);

/// The sending end of a connection's two queues.
#[derive(Debug)]
pub(crate) struct Outbox {
    control: mpsc::UnboundedSender<Frame>,
    bulk: mpsc::UnboundedSender<Frame>,
    queued: Arc<AtomicUsize>,
}

/// The writer's end of the queues.
pub(crate) struct Inbox {
    control: mpsc::UnboundedReceiver<Frame>,
    bulk: mpsc::UnboundedReceiver<Frame>,
    queued: Arc<AtomicUsize>,
}

pub(crate) fn queues() -> (Outbox, Inbox) {
    let (control, control_receiver) = mpsc::unbounded_channel();
    let (bulk, bulk_receiver) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            control,
            bulk,
            queued: queued.clone(),
        },
        Inbox {
            control: control_receiver,
            bulk: bulk_receiver,
            queued,
        },
    )
}

impl Outbox {
    /// Queues a frame in its class. Returns false when the writer is gone (the connection
    /// is closed), which the callers learn about through the stream's state anyway.
    pub fn send(&self, frame: Frame) -> bool {
        let queue = match frame.priority {
            Priority::Control => &self.control,
            Priority::Bulk => &self.bulk,
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        if queue.send(frame).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queues a frame in the control queue whatever class its header names: an `Open`
    /// carries its stream's class to the server in the header, yet must go out in id
    /// order with the other opens.
    pub fn send_control(&self, frame: Frame) -> bool {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.control.send(frame).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Frames queued and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

impl Inbox {
    /// Encodes the next ready frame, control first; false when none is ready.
    fn encode_ready(&mut self, buffer: &mut BytesMut) -> bool {
        if let Ok(frame) = self.control.try_recv() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            frame.encode_into(buffer);
            return true;
        }
        match self.bulk.try_recv() {
            Ok(frame) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.encode_bulk(frame, buffer);
                true
            }
            Err(_) => false,
        }
    }

    /// Encodes a bulk frame after every control frame queued by now. A stream's `Open`
    /// goes to the control queue and its first bulk frames to the bulk queue right after:
    /// between the writer's look at an empty control queue and its take from the bulk one,
    /// the sender can queue both, and the bulk frame would overtake the `Open` it belongs
    /// to (the peer then closes the connection: "End frame for stream 1, which was never
    /// opened", seen once in CI). The sender queued the `Open` before the bulk frame, so
    /// once the bulk frame is seen the `Open` is there to be taken first.
    fn encode_bulk(&mut self, frame: Frame, buffer: &mut BytesMut) {
        while let Ok(control) = self.control.try_recv() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            control.encode_into(buffer);
        }
        frame.encode_into(buffer);
    }
}

/// Writes frames until the connection closes or the agent shuts down, then delivers
/// what is left in the control queue (the `GoAway`) within a short grace period and
/// closes the TLS session. Returns the write error that ended it, if any.
pub(crate) async fn run<W: AsyncWrite + Unpin>(
    mut stream: W,
    mut inbox: Inbox,
    mut closed: Shutdown,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut buffer = BytesMut::with_capacity(BATCH_BYTES * 2);
    loop {
        let (first, is_bulk) = tokio::select! {
            biased;
            _ = closed.wait() => break,
            _ = shutdown.wait() => break,
            Some(frame) = inbox.control.recv() => (frame, false),
            Some(frame) = inbox.bulk.recv() => (frame, true),
            else => break,
        };
        inbox.queued.fetch_sub(1, Ordering::Relaxed);
        buffer.clear();
        if is_bulk {
            inbox.encode_bulk(first, &mut buffer);
        } else {
            first.encode_into(&mut buffer);
        }
        while buffer.len() < BATCH_BYTES && inbox.encode_ready(&mut buffer) {}
        stream.write_all(&buffer).await?;
        stream.flush().await?;
    }
    let _ = tokio::time::timeout(CLOSING_GRACE, async {
        // On the agent's shutdown the reader is about to close the connection and queue
        // the GoAway; wait for it so the peer learns why.
        closed.wait().await;
        buffer.clear();
        while let Ok(frame) = inbox.control.try_recv() {
            frame.encode_into(&mut buffer);
        }
        stream.write_all(&buffer).await?;
        stream.shutdown().await
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use bramble_util::ShutdownTrigger;
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::mux::frame::{FrameHeader, FrameKind, HEADER_LENGTH};

    fn bulk(id: u32) -> Frame {
        Frame::new(
            id,
            FrameKind::Data,
            Priority::Bulk,
            Bytes::from(vec![0u8; 64 * 1024]),
        )
    }

    async fn next_stream_id<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> u32 {
        let mut header = [0u8; HEADER_LENGTH];
        reader.read_exact(&mut header).await.unwrap();
        let header = FrameHeader::decode(&header, 1 << 20).unwrap();
        let mut payload = vec![0u8; header.length as usize];
        reader.read_exact(&mut payload).await.unwrap();
        header.stream_id
    }

    #[tokio::test]
    async fn a_bulk_frame_taken_in_a_race_still_follows_the_open_queued_before_it() {
        let (outbox, mut inbox) = queues();
        // The writer saw an empty control queue; then the sender queued a stream's Open
        // (control) and its first bulk frame, and the writer took the bulk frame.
        outbox.send_control(Frame::new(
            7,
            FrameKind::Open,
            Priority::Bulk,
            Bytes::from_static(b"store.file_get"),
        ));
        outbox.send(bulk(7));
        let taken = inbox.bulk.try_recv().unwrap();
        let mut buffer = BytesMut::new();
        inbox.encode_bulk(taken, &mut buffer);
        let mut reader = &buffer[..];
        let header =
            FrameHeader::decode(reader[..HEADER_LENGTH].try_into().unwrap(), 1 << 20).unwrap();
        assert_eq!((header.kind, header.stream_id), (FrameKind::Open, 7));
        reader = &reader[HEADER_LENGTH + header.length as usize..];
        let header =
            FrameHeader::decode(reader[..HEADER_LENGTH].try_into().unwrap(), 1 << 20).unwrap();
        assert_eq!((header.kind, header.stream_id), (FrameKind::Data, 7));
    }

    #[tokio::test]
    async fn a_control_frame_overtakes_every_queued_bulk_frame() {
        // A pipe much smaller than one bulk frame: the writer blocks inside its first
        // write until the test reads.
        let (writer_end, mut reader_end) = tokio::io::duplex(4096);
        let (outbox, inbox) = queues();
        let (closed_trigger, closed) = ShutdownTrigger::new();
        let (shutdown_trigger, shutdown) = ShutdownTrigger::new();
        for id in 1..=20 {
            outbox.send(bulk(id));
        }
        let task = tokio::spawn(run(writer_end, inbox, closed, shutdown));
        // The writer has taken stream 1's frame (one bulk frame fills a batch) and is
        // stuck writing it; the other 19 wait in the bulk queue.
        while outbox.queued() != 19 {
            tokio::task::yield_now().await;
        }
        outbox.send(Frame::window(100, 1));
        assert_eq!(next_stream_id(&mut reader_end).await, 1);
        assert_eq!(
            next_stream_id(&mut reader_end).await,
            100,
            "the control frame waits for the bulk frame being written and nothing more"
        );
        for id in 2..=20 {
            assert_eq!(
                next_stream_id(&mut reader_end).await,
                id,
                "bulk keeps its order"
            );
        }
        closed_trigger.trigger();
        task.await.unwrap().unwrap();
        drop(shutdown_trigger);
    }
}
