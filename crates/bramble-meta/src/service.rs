//! The `meta.*` RPC methods. Raft's own messages (`append`, `vote`, `snapshot`) are
//! accepted only from member nodes; the catalog methods from members and admins.

use std::sync::Arc;

use bramble_net::rpc::{Request, encode};
use bramble_net::{Caller, ErrorKind, Handler, RpcError};

use crate::api::{ListRequest, ReadRequest, ScanRequest, StatusRequest, WriteRequest};
use crate::lease::LeaseRequest;
use crate::node::Meta;

pub struct MetaService {
    meta: Arc<Meta>,
}

impl MetaService {
    pub fn new(meta: Arc<Meta>) -> Self {
        MetaService { meta }
    }
}

fn require_node(request: &Request<'_>) -> Result<(), RpcError> {
    match request.caller {
        Caller::Node(_) => Ok(()),
        _ => Err(RpcError::new(
            ErrorKind::Unauthorized,
            "Raft messages are accepted only from member nodes",
        )),
    }
}

#[async_trait::async_trait]
impl Handler for MetaService {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError> {
        request.require_authenticated()?;
        let raft = self.meta.raft();
        match request.method {
            "append" => {
                require_node(&request)?;
                encode(&raft.append_entries(request.decode()?).await)
            }
            "vote" => {
                require_node(&request)?;
                encode(&raft.vote(request.decode()?).await)
            }
            "snapshot" => {
                require_node(&request)?;
                encode(&raft.install_snapshot(request.decode()?).await)
            }
            "write" => {
                let write: WriteRequest = request.decode()?;
                encode(&self.meta.write(write.command, write.forwarded).await?)
            }
            "read" => {
                let read: ReadRequest = request.decode()?;
                encode(
                    &self
                        .meta
                        .read(&read.key, read.consistency, read.forwarded)
                        .await?,
                )
            }
            "list" => {
                let list: ListRequest = request.decode()?;
                encode(
                    &self
                        .meta
                        .list(
                            &list.prefix,
                            list.limit.min(100_000),
                            list.consistency,
                            list.forwarded,
                        )
                        .await?,
                )
            }
            "scan" => {
                let scan: ScanRequest = request.decode()?;
                encode(&self.meta.scan(scan).await?)
            }
            "status" => {
                let status: StatusRequest = request.decode()?;
                encode(&self.meta.status(status.forwarded).await?)
            }
            "lease" => {
                let lease: LeaseRequest = request.decode()?;
                // A node acts only for itself; a forwarded request was checked at its
                // first hop. Operators (admin credentials) may act for any node.
                if let Caller::Node(caller) = &request.caller
                    && !lease.forwarded
                    && *caller != lease.holder
                {
                    return Err(RpcError::new(
                        ErrorKind::Unauthorized,
                        format!("node {caller} cannot act on a lease for {}", lease.holder),
                    ));
                }
                encode(&self.meta.lease(lease).await?)
            }
            "snapshot_now" => {
                self.meta.snapshot_now().await?;
                encode(&())
            }
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("the meta service has no method {other:?}"),
            )),
        }
    }
}
