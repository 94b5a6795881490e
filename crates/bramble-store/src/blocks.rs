//! Moving one block copy between this node and a brick: the brick's own node through its
//! file system, any other node over a bulk mux stream (`store.block_put`,
//! `store.block_get`), and the serving side of those streams. Every copy is checked
//! against its BLAKE3 hash where it lands: the brick checks what it is sent before
//! storing it, and the reader checks what it receives before using it.

use std::collections::HashMap;
use std::time::Duration;

use bramble_net::{BodyReader, ErrorKind, MuxError, Priority, ResponseWriter, RpcError};
use bramble_util::buffers;
use bytes::Bytes;

use crate::admin::{
    BlockDeleteRequest, BlockGetHeader, BlockPutHeader, BrickRequest, METHOD_BLOCK_DELETE,
    METHOD_BLOCK_GET, METHOD_BLOCK_PUT,
};
use crate::brick::MAX_STORED_BLOCK;
use crate::file::BlockId;
use crate::node::{Reach, Storage, blocking};
use crate::volume::VolumeSpec;

/// Longest a single block copy may take before its brick counts as away.
pub const COPY_TIMEOUT: Duration = Duration::from_secs(10);

impl Storage {
    fn brick_request(spec: &VolumeSpec, brick: usize) -> BrickRequest {
        BrickRequest {
            volume: spec.name.clone(),
            volume_id: spec.id,
            brick,
            previous_layout: spec.is_previous_layout,
        }
    }

    fn address_of(
        &self,
        spec: &VolumeSpec,
        brick: usize,
        reach: &HashMap<String, Reach>,
    ) -> Result<std::net::SocketAddr, RpcError> {
        let node = &spec.bricks[brick].node;
        reach.get(node).map(|found| found.address).ok_or_else(|| {
            RpcError::new(
                ErrorKind::Unavailable,
                format!(
                    "node {node} (brick {brick} of {}) is not a member",
                    spec.name
                ),
            )
        })
    }

    /// Stores one copy of `block` on brick `brick`.
    pub async fn put_copy(
        &self,
        spec: &VolumeSpec,
        brick: usize,
        block: BlockId,
        hash: [u8; 32],
        data: Bytes,
        reach: &HashMap<String, Reach>,
    ) -> Result<(), RpcError> {
        if spec.bricks[brick].node == self.node {
            let store = self.local_brick(spec, brick)?;
            return blocking(move || store.put(&block, &hash, &data)).await;
        }
        let address = self.address_of(spec, brick, reach)?;
        let header = BlockPutHeader {
            brick: Self::brick_request(spec, brick),
            block,
            hash,
            length: data.len() as u32,
        };
        let exchange = async {
            let header = postcard::to_allocvec(&header)
                .map_err(|error| MuxError::Decode(error.to_string()))?;
            let (mut sender, response) = self
                .mux
                .open(address, METHOD_BLOCK_PUT, &header, Priority::Bulk)
                .await?;
            sender.send(data).await?;
            sender.finish().await?;
            response.wait().await.map(|_| ())
        };
        tokio::time::timeout(COPY_TIMEOUT, exchange)
            .await
            .map_err(|_| timed_out(spec, brick))?
            .map_err(mux_error)
    }

    /// Reads one copy of `block` from brick `brick`, checked against `expected` (and
    /// always against the hash in its brick header). `length` is the length it should have
    /// (the size of the buffer it is read into; the caller checks it).
    #[allow(clippy::too_many_arguments)]
    pub async fn get_copy(
        &self,
        spec: &VolumeSpec,
        brick: usize,
        block: BlockId,
        expected: Option<[u8; 32]>,
        length: usize,
        reach: &HashMap<String, Reach>,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        if spec.bricks[brick].node == self.node {
            let store = self.local_brick(spec, brick)?;
            return blocking(move || store.get(&block, expected.as_ref()))
                .await
                .map(buffers::into_bytes);
        }
        let address = self.address_of(spec, brick, reach)?;
        let header = BlockGetHeader {
            brick: Self::brick_request(spec, brick),
            block,
            expected,
        };
        let exchange = async {
            let header = postcard::to_allocvec(&header)
                .map_err(|error| MuxError::Decode(error.to_string()))?;
            let (sender, response) = self
                .mux
                .open(address, METHOD_BLOCK_GET, &header, Priority::Bulk)
                .await?;
            sender.finish().await?;
            let mut response = response.wait().await?;
            response
                .body
                .read_to_end_sized(length.min(MAX_STORED_BLOCK), MAX_STORED_BLOCK)
                .await
        };
        let data = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| timed_out(spec, brick))?
            .map_err(mux_error)?;
        // The brick checked the block against `expected` and its own header before
        // sending it, and TLS (an AEAD) guarantees it arrived as sent: hashing it again
        // here would only spend a core on a 2-core board. The length is checked by the
        // caller.
        Ok(buffers::into_bytes(data))
    }

    /// Removes blocks from brick `brick` (best effort: a brick that is away keeps them
    /// until a later clean-up).
    pub async fn delete_copies(
        &self,
        spec: &VolumeSpec,
        brick: usize,
        blocks: Vec<BlockId>,
        reach: &HashMap<String, Reach>,
    ) -> Result<u64, RpcError> {
        if spec.bricks[brick].node == self.node {
            let store = self.local_brick(spec, brick)?;
            return blocking(move || {
                let mut removed = 0;
                for block in &blocks {
                    if store.delete(block)? {
                        removed += 1;
                    }
                }
                Ok(removed)
            })
            .await;
        }
        let address = self.address_of(spec, brick, reach)?;
        let mut removed = 0;
        for chunk in blocks.chunks(crate::admin::MAX_DELETE_BLOCKS) {
            let request = BlockDeleteRequest {
                brick: Self::brick_request(spec, brick),
                blocks: chunk.to_vec(),
            };
            removed += self
                .call_node::<_, u64>(address, METHOD_BLOCK_DELETE, &request)
                .await?;
        }
        Ok(removed)
    }

    /// The spec a brick request names, checked: the volume exists with that id and the
    /// brick is on this node. A request for a volume this replica has not seen yet asks
    /// the leader.
    pub async fn spec_for_brick(&self, request: &BrickRequest) -> Result<VolumeSpec, RpcError> {
        // This node's replica first; one that does not show the brick here (a volume just
        // created, bricks just added or removed) is checked against the leader's.
        if let Ok((spec, _)) = self
            .volume(&request.volume, bramble_meta::api::Consistency::Stale)
            .await
            && let Ok(spec) = self.brick_in(spec, request)
        {
            return Ok(spec);
        }
        let (spec, _) = self
            .volume(
                &request.volume,
                bramble_meta::api::Consistency::Linearizable,
            )
            .await?;
        self.brick_in(spec, request)
    }

    /// The spec (or its previous layout) in which `request`'s brick is on this node.
    fn brick_in(&self, spec: VolumeSpec, request: &BrickRequest) -> Result<VolumeSpec, RpcError> {
        if spec.id != request.volume_id {
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!(
                    "volume {} was removed and created again; this request is for the old one",
                    request.volume
                ),
            ));
        }
        let spec = if request.previous_layout {
            spec.previous().ok_or_else(|| {
                RpcError::new(
                    ErrorKind::NotFound,
                    format!("volume {} is not moving data any more", request.volume),
                )
            })?
        } else {
            spec
        };
        if spec.bricks.get(request.brick).map(|brick| &brick.node) != Some(&self.node) {
            return Err(RpcError::bad_request(format!(
                "brick {} of volume {} is not on node {}",
                request.brick, request.volume, self.node
            )));
        }
        Ok(spec)
    }

    /// Serves `store.block_put`: reads the block (bounded by its declared length), checks
    /// and stores it.
    pub async fn serve_block_put(
        &self,
        header: BlockPutHeader,
        mut body: BodyReader,
        response: ResponseWriter,
    ) -> Result<(), RpcError> {
        let _permit = self.transfer_permit().await?;
        if header.length as usize > MAX_STORED_BLOCK {
            return Err(RpcError::new(
                ErrorKind::TooLarge,
                format!("a block is at most {MAX_STORED_BLOCK} bytes"),
            ));
        }
        let spec = self.spec_for_brick(&header.brick).await?;
        let data = body
            .read_to_end_sized(header.length as usize, header.length as usize)
            .await
            .map_err(mux_error)?;
        if data.len() != header.length as usize {
            return Err(RpcError::bad_request(format!(
                "the block has {} bytes, not the {} its header announced",
                data.len(),
                header.length
            )));
        }
        let store = self.local_brick(&spec, header.brick.brick)?;
        let (block, hash) = (header.block, header.hash);
        blocking(move || {
            let stored = store.put(&block, &hash, &data);
            buffers::give_back(data);
            stored
        })
        .await?;
        response
            .send_all(&[], Bytes::new())
            .await
            .map_err(mux_error)
    }

    /// Serves `store.block_get`: reads and checks the block, sends it. A corrupt copy is
    /// counted and refused, so the reader takes another copy (and repairs this one).
    pub async fn serve_block_get(
        &self,
        header: BlockGetHeader,
        response: ResponseWriter,
    ) -> Result<(), RpcError> {
        let _permit = self.transfer_permit().await?;
        let spec = self.spec_for_brick(&header.brick).await?;
        let store = self.local_brick(&spec, header.brick.brick)?;
        let (block, expected) = (header.block, header.expected);
        let data = match blocking(move || store.get(&block, expected.as_ref())).await {
            Ok(data) => data,
            Err(error) => {
                if error.kind == ErrorKind::Internal {
                    self.report_corrupt(&spec, header.brick.brick, &header.block, &error);
                }
                return Err(error);
            }
        };
        response
            .send_all(&[], buffers::into_bytes(data))
            .await
            .map_err(mux_error)
    }

    /// Serves `store.block_delete`.
    pub async fn serve_block_delete(&self, request: BlockDeleteRequest) -> Result<u64, RpcError> {
        if request.blocks.len() > crate::admin::MAX_DELETE_BLOCKS {
            return Err(RpcError::bad_request(format!(
                "at most {} blocks may be deleted at once",
                crate::admin::MAX_DELETE_BLOCKS
            )));
        }
        let spec = self.spec_for_brick(&request.brick).await?;
        let reach = HashMap::new();
        self.delete_copies(&spec, request.brick.brick, request.blocks, &reach)
            .await
    }

    /// Waits for a turn among the [`crate::node::MAX_BLOCK_TRANSFERS`] served at once:
    /// a burst (an S3 client sending ten parts at a time) queues briefly instead of being
    /// refused — a refusal would make its writers count this brick as away. The wait is
    /// bounded well under the sender's [`COPY_TIMEOUT`]; the bytes of a waiting transfer
    /// stay in its stream's flow-control window, so memory stays bounded.
    async fn transfer_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, RpcError> {
        let wait = COPY_TIMEOUT / 2;
        match tokio::time::timeout(wait, self.transfers.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(RpcError::new(
                ErrorKind::Unavailable,
                format!(
                    "{} block transfers have been running on {} for over {wait:?}",
                    crate::node::MAX_BLOCK_TRANSFERS,
                    self.node
                ),
            )),
        }
    }

    /// Logs and counts a corrupt copy.
    pub fn report_corrupt(
        &self,
        spec: &VolumeSpec,
        brick: usize,
        block: &BlockId,
        error: &RpcError,
    ) {
        self.counters
            .corrupt_blocks_found
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(
            volume = %spec.name,
            brick,
            block = %block.file_name(),
            %error,
            "corrupt block copy found"
        );
    }
}

fn timed_out(spec: &VolumeSpec, brick: usize) -> RpcError {
    RpcError::new(
        ErrorKind::Timeout,
        format!(
            "brick {brick} of {} (node {}) did not answer in time",
            spec.name, spec.bricks[brick].node
        ),
    )
}

/// A mux failure as an RPC error: the remote's own error when it sent one.
pub fn mux_error(error: MuxError) -> RpcError {
    match error {
        MuxError::Remote(error) => error,
        other => RpcError::new(ErrorKind::Unavailable, other.to_string()),
    }
}
