//! The mux wire format: every frame is a fixed 10-byte header followed by its payload.
//!
//! ```text
//! stream id: u32 BE | kind: u8 | priority: u8 | payload length: u32 BE | payload
//! ```
//!
//! The header is fixed-size binary rather than postcard so that a data frame costs no
//! encoding work and its length is known before a byte of payload is read. Only the
//! payloads of `Open`, `Head` and `Reset` are postcard, and they are small and bounded.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::mux::MuxError;
use crate::rpc::RpcError;

/// Bytes in a frame header.
pub const HEADER_LENGTH: usize = 10;

/// Which queue a stream's frames wait in on the sending side. Control frames are always
/// written before bulk frames; within one class, frames keep their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Raft, gossip answers, leases, CLI calls: small and latency-sensitive.
    Control,
    /// Blocks, healing, task output: large, and may wait.
    Bulk,
}

impl Priority {
    fn to_byte(self) -> u8 {
        match self {
            Priority::Control => 0,
            Priority::Bulk => 1,
        }
    }

    fn from_byte(byte: u8) -> Option<Priority> {
        match byte {
            0 => Some(Priority::Control),
            1 => Some(Priority::Bulk),
            _ => None,
        }
    }
}

/// What a frame does to its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Client to server: a new stream; payload is an [`OpenPayload`], and the header's
    /// priority is the stream's class, which the server's frames for it use too.
    Open,
    /// Server to client: the response header, sent once before any response data.
    Head,
    /// Body bytes; consumes flow-control credit.
    Data,
    /// The sender's body is complete.
    End,
    /// The stream is abandoned in both directions; payload is an [`RpcError`].
    Reset,
    /// The receiver grants more credit; payload is a u32 BE increment. On stream 0: the
    /// connection's bulk credit (see [`crate::mux::MuxLimits::connection_bulk_window`]).
    Window,
    /// The receiver no longer wants the body: the sender must stop sending data.
    Stop,
    /// Stream 0 only: the connection is being closed; payload is a UTF-8 reason.
    GoAway,
}

impl FrameKind {
    fn to_byte(self) -> u8 {
        match self {
            FrameKind::Open => 1,
            FrameKind::Head => 2,
            FrameKind::Data => 3,
            FrameKind::End => 4,
            FrameKind::Reset => 5,
            FrameKind::Window => 6,
            FrameKind::Stop => 7,
            FrameKind::GoAway => 8,
        }
    }

    fn from_byte(byte: u8) -> Option<FrameKind> {
        Some(match byte {
            1 => FrameKind::Open,
            2 => FrameKind::Head,
            3 => FrameKind::Data,
            4 => FrameKind::End,
            5 => FrameKind::Reset,
            6 => FrameKind::Window,
            7 => FrameKind::Stop,
            8 => FrameKind::GoAway,
            _ => return None,
        })
    }
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub stream_id: u32,
    pub kind: FrameKind,
    pub priority: Priority,
    pub length: u32,
}

impl FrameHeader {
    /// Validates everything a header alone can tell: known kind and priority, a length
    /// within `max_payload`, stream 0 for `GoAway` and only for it, and lengths that make
    /// sense for the kind (empty `End`, 4-byte `Window`, non-empty `Data`).
    pub fn decode(bytes: &[u8; HEADER_LENGTH], max_payload: u32) -> Result<Self, MuxError> {
        let stream_id = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let kind = FrameKind::from_byte(bytes[4])
            .ok_or_else(|| MuxError::Protocol(format!("unknown frame kind {}", bytes[4])))?;
        let priority = Priority::from_byte(bytes[5])
            .ok_or_else(|| MuxError::Protocol(format!("unknown priority {}", bytes[5])))?;
        let length = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
        if length > max_payload {
            return Err(MuxError::Protocol(format!(
                "a frame of {length} bytes exceeds the {max_payload}-byte limit"
            )));
        }
        if kind == FrameKind::GoAway && stream_id != 0 {
            return Err(MuxError::Protocol(format!(
                "GoAway frame on stream {stream_id}: it belongs to stream 0"
            )));
        }
        if stream_id == 0 && !matches!(kind, FrameKind::GoAway | FrameKind::Window) {
            return Err(MuxError::Protocol(format!(
                "{kind:?} frame on stream 0, which carries only GoAway and connection Window frames"
            )));
        }
        let length_is_valid = match kind {
            FrameKind::End | FrameKind::Stop => length == 0,
            FrameKind::Window => length == 4,
            FrameKind::Data | FrameKind::Open => length > 0,
            FrameKind::Head | FrameKind::Reset | FrameKind::GoAway => true,
        };
        if !length_is_valid {
            return Err(MuxError::Protocol(format!(
                "{kind:?} frame with a {length}-byte payload"
            )));
        }
        Ok(FrameHeader {
            stream_id,
            kind,
            priority,
            length,
        })
    }

    fn encode_into(&self, buffer: &mut BytesMut) {
        buffer.put_u32(self.stream_id);
        buffer.put_u8(self.kind.to_byte());
        buffer.put_u8(self.priority.to_byte());
        buffer.put_u32(self.length);
    }
}

/// A frame waiting to be written.
#[derive(Debug, Clone)]
pub struct Frame {
    pub stream_id: u32,
    pub kind: FrameKind,
    pub priority: Priority,
    pub payload: Bytes,
}

impl Frame {
    pub fn new(stream_id: u32, kind: FrameKind, priority: Priority, payload: Bytes) -> Self {
        Frame {
            stream_id,
            kind,
            priority,
            payload,
        }
    }

    pub fn empty(stream_id: u32, kind: FrameKind, priority: Priority) -> Self {
        Self::new(stream_id, kind, priority, Bytes::new())
    }

    pub fn window(stream_id: u32, increment: u32) -> Self {
        Self::new(
            stream_id,
            FrameKind::Window,
            Priority::Control,
            Bytes::copy_from_slice(&increment.to_be_bytes()),
        )
    }

    pub fn reset(stream_id: u32, error: &RpcError) -> Self {
        // An RpcError always encodes; an empty payload would still reset the stream.
        let payload = postcard::to_allocvec(error).unwrap_or_default();
        Self::new(
            stream_id,
            FrameKind::Reset,
            Priority::Control,
            Bytes::from(payload),
        )
    }

    pub fn go_away(reason: &str) -> Self {
        // Bounded so the reason always fits in one frame.
        let reason = truncate_utf8(reason, 1024);
        Self::new(
            0,
            FrameKind::GoAway,
            Priority::Control,
            Bytes::copy_from_slice(reason.as_bytes()),
        )
    }

    /// Bytes this frame occupies on the wire.
    pub fn wire_length(&self) -> usize {
        HEADER_LENGTH + self.payload.len()
    }

    /// Appends header and payload to `buffer`. Payload lengths are bounded by the sender
    /// (frames are cut to the data-frame size, headers checked when encoded), so the u32
    /// conversion saturates only on a bug, which the peer then rejects as oversized.
    pub fn encode_into(&self, buffer: &mut BytesMut) {
        let header = FrameHeader {
            stream_id: self.stream_id,
            kind: self.kind,
            priority: self.priority,
            length: u32::try_from(self.payload.len()).unwrap_or(u32::MAX),
        };
        header.encode_into(buffer);
        buffer.put_slice(&self.payload);
    }
}

/// What a client sends to open a stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct OpenPayload {
    /// `service.method`.
    pub method: String,
    /// Opaque, method-specific request header (postcard by convention).
    #[serde(with = "serde_bytes")]
    pub header: Vec<u8>,
}

/// Decodes the increment of a `Window` frame (its length was checked with the header).
pub fn decode_window(payload: &[u8]) -> Result<u32, MuxError> {
    let bytes: [u8; 4] = payload
        .try_into()
        .map_err(|_| MuxError::Protocol("a Window frame must carry 4 bytes".to_string()))?;
    let increment = u32::from_be_bytes(bytes);
    if increment == 0 {
        return Err(MuxError::Protocol(
            "a Window frame granted 0 bytes".to_string(),
        ));
    }
    Ok(increment)
}

/// Decodes the error a `Reset` frame carries; a reset that cannot be decoded still ends
/// the stream, with a generic error.
pub fn decode_reset(payload: &[u8]) -> RpcError {
    postcard::from_bytes(payload).unwrap_or_else(|_| {
        RpcError::new(
            crate::rpc::ErrorKind::Internal,
            "the peer reset the stream (with an unreadable reason)",
        )
    })
}

fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(frame: &Frame) -> [u8; HEADER_LENGTH] {
        let mut buffer = BytesMut::new();
        frame.encode_into(&mut buffer);
        buffer[..HEADER_LENGTH].try_into().unwrap()
    }

    #[test]
    fn a_data_frame_round_trips() {
        let frame = Frame::new(
            7,
            FrameKind::Data,
            Priority::Bulk,
            Bytes::from_static(b"abc"),
        );
        let header = FrameHeader::decode(&header_bytes(&frame), 1024).unwrap();
        assert_eq!(
            header,
            FrameHeader {
                stream_id: 7,
                kind: FrameKind::Data,
                priority: Priority::Bulk,
                length: 3
            }
        );
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = header_bytes(&Frame::window(3, 10));
        assert!(FrameHeader::decode(&good, 64).is_ok());

        let mut unknown_kind = good;
        unknown_kind[4] = 99;
        assert!(FrameHeader::decode(&unknown_kind, 64).is_err());

        let mut unknown_priority = good;
        unknown_priority[5] = 7;
        assert!(FrameHeader::decode(&unknown_priority, 64).is_err());

        let oversized = header_bytes(&Frame::new(
            1,
            FrameKind::Data,
            Priority::Bulk,
            Bytes::from(vec![0; 100]),
        ));
        assert!(FrameHeader::decode(&oversized, 64).is_err());

        let empty_data = header_bytes(&Frame::empty(1, FrameKind::Data, Priority::Bulk));
        assert!(FrameHeader::decode(&empty_data, 64).is_err());

        let data_on_zero = header_bytes(&Frame::new(
            0,
            FrameKind::Data,
            Priority::Bulk,
            Bytes::from_static(b"x"),
        ));
        assert!(FrameHeader::decode(&data_on_zero, 64).is_err());

        let go_away_on_stream = {
            let mut bytes = header_bytes(&Frame::go_away("bye"));
            bytes[3] = 5;
            bytes
        };
        assert!(FrameHeader::decode(&go_away_on_stream, 64).is_err());

        let connection_window = header_bytes(&Frame::window(0, 10));
        assert!(FrameHeader::decode(&connection_window, 64).is_ok());
    }

    #[test]
    fn window_increments_must_be_positive() {
        assert_eq!(decode_window(&5u32.to_be_bytes()).unwrap(), 5);
        assert!(decode_window(&0u32.to_be_bytes()).is_err());
    }

    #[test]
    fn go_away_reasons_are_bounded() {
        let long = "é".repeat(2000);
        assert!(Frame::go_away(&long).payload.len() <= 1024);
    }
}
