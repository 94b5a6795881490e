//! Gossip transport: chitchat's messages carried in UDP datagrams sealed with the cluster
//! key (ChaCha20-Poly1305, a fresh random nonce per datagram).
//!
//! Sealing gives authenticity (a datagram from outside the cluster, or altered on the way,
//! fails to open and is dropped before chitchat parses a byte of it) and confidentiality of
//! the node table. Replays of old datagrams are harmless to chitchat's protocol: every
//! value is versioned and heartbeats only move forward, so an old message can never roll
//! state back.
//!
//! Datagram layout: `b"BG"` | format version (1) | nonce (12) | sealed chitchat envelope
//! message (ciphertext and 16-byte tag).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use tracing::debug;

use crate::token::Secret;

const MAGIC: [u8; 2] = *b"BG";
const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = MAGIC.len() + 1;
const TAG_LEN: usize = 16;
/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// Counters a hostile network can move; shown by `bramble nodes --json` diagnostics.
#[derive(Debug, Default)]
pub struct GossipCounters {
    pub received: AtomicU64,
    pub rejected: AtomicU64,
    pub oversized_sends: AtomicU64,
}

/// Opens sealed UDP sockets for chitchat.
pub struct SealedUdpTransport {
    key: Arc<LessSafeKey>,
    counters: Arc<GossipCounters>,
}

impl SealedUdpTransport {
    pub fn new(cluster_key: &Secret, counters: Arc<GossipCounters>) -> Self {
        let key = UnboundKey::new(&CHACHA20_POLY1305, &cluster_key.0)
            .expect("a 32-byte key is always valid for ChaCha20-Poly1305");
        SealedUdpTransport {
            key: Arc::new(LessSafeKey::new(key)),
            counters,
        }
    }
}

#[async_trait::async_trait]
impl Transport for SealedUdpTransport {
    async fn open(&self, listen_address: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_address)
            .await
            .with_context(|| format!("could not bind the gossip socket on {listen_address}/udp"))?;
        Ok(Box::new(SealedSocket {
            socket,
            key: self.key.clone(),
            random: SystemRandom::new(),
            receive_buffer: vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice(),
            send_buffer: Vec::with_capacity(4096),
            counters: self.counters.clone(),
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    key: Arc<LessSafeKey>,
    random: SystemRandom,
    receive_buffer: Box<[u8]>,
    send_buffer: Vec<u8>,
    counters: Arc<GossipCounters>,
}

/// Seals `plaintext` into a datagram in `out`.
fn seal(
    key: &LessSafeKey,
    random: &SystemRandom,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let mut nonce = [0u8; NONCE_LEN];
    random
        .fill(&mut nonce)
        .map_err(|_| anyhow::anyhow!("the random number generator failed"))?;
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&nonce);
    let body_start = out.len();
    out.extend_from_slice(plaintext);
    let mut body = out.split_off(body_start);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(&out[..HEADER_LEN]),
        &mut body,
    )
    .map_err(|_| anyhow::anyhow!("sealing a gossip datagram failed"))?;
    out.extend_from_slice(&body);
    Ok(())
}

/// Opens a datagram in place; returns the plaintext or why it was rejected.
fn open<'a>(key: &LessSafeKey, datagram: &'a mut [u8]) -> Result<&'a [u8], &'static str> {
    if datagram.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err("too short");
    }
    if datagram[..2] != MAGIC {
        return Err("not a Bramble gossip datagram");
    }
    if datagram[2] != FORMAT_VERSION {
        return Err("unknown gossip format version");
    }
    let (header, rest) = datagram.split_at_mut(HEADER_LEN);
    let (nonce, sealed) = rest.split_at_mut(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
    key.open_in_place(nonce, Aad::from(&header[..]), sealed)
        .map(|plaintext| &*plaintext)
        .map_err(|_| "authentication failed (wrong cluster key or altered datagram)")
}

#[async_trait::async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let plaintext = message.serialize_to_vec();
        seal(&self.key, &self.random, &plaintext, &mut self.send_buffer)?;
        if self.send_buffer.len() > MAX_DATAGRAM {
            // chitchat sizes deltas to a full datagram; our header and tag can push the
            // largest over. Dropping it costs one round: the next one carries less.
            self.counters
                .oversized_sends
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.socket
            .send_to(&self.send_buffer, to)
            .await
            .with_context(|| format!("could not send gossip to {to}"))?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (length, from) = match self.socket.recv_from(&mut self.receive_buffer).await {
                Ok(received) => received,
                // An earlier send to a dead peer comes back as ICMP "refused" on loopback.
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::OutOfMemory
                    ) =>
                {
                    continue;
                }
                Err(error) => return Err(error).context("the gossip socket failed"),
            };
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            let datagram = &mut self.receive_buffer[..length];
            let plaintext = match open(&self.key, datagram) {
                Ok(plaintext) => plaintext,
                Err(why) => {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, length, why, "dropped a gossip datagram");
                    continue;
                }
            };
            let mut cursor = plaintext;
            match ChitchatMessage::deserialize(&mut cursor) {
                Ok(message) => return Ok((from, message)),
                Err(error) => {
                    // Authentic but unparsable: a member with a different chitchat version.
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, %error, "dropped an authenticated but unreadable gossip message");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[byte; 32]).unwrap())
    }

    #[test]
    fn sealed_datagrams_open_only_with_the_same_key_and_unaltered() {
        let random = SystemRandom::new();
        let mut datagram = Vec::new();
        seal(&key(1), &random, b"hello members", &mut datagram).unwrap();
        assert_eq!(
            open(&key(1), &mut datagram.clone()).unwrap(),
            b"hello members"
        );
        assert!(open(&key(2), &mut datagram.clone()).is_err());
        let mut altered = datagram.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(open(&key(1), &mut altered).is_err());
        assert!(open(&key(1), &mut [0u8; 5]).is_err());
        assert!(open(&key(1), &mut vec![0xAB; 2000]).is_err());
    }
}
