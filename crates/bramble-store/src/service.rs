//! `store.*`: the storage subsystem's RPC methods (volume administration, names, the
//! node-to-node brick calls) and its streams on the mux (file and block bodies). Members
//! and admins may call; block streams must be bulk, never control, so that moving data
//! cannot delay Raft or leases.

use std::sync::Arc;

use bramble_net::rpc::{Request, encode};
use bramble_net::{
    Caller, ErrorKind, Handler, IncomingCall, Priority, ResponseWriter, RpcError, StreamHandler,
};

use crate::admin::*;
use crate::blocks::mux_error;
use crate::node::Storage;
use crate::volume::VolumeSpec;

pub struct StoreService {
    storage: Arc<Storage>,
    workers: bramble_util::Workers,
}

impl StoreService {
    pub fn new(storage: Arc<Storage>, workers: bramble_util::Workers) -> Self {
        StoreService { storage, workers }
    }
}

fn require_node(caller: &Caller) -> Result<(), RpcError> {
    match caller {
        Caller::Node(_) => Ok(()),
        _ => Err(RpcError::new(
            ErrorKind::Unauthorized,
            "brick calls are accepted only from member nodes",
        )),
    }
}

#[async_trait::async_trait]
impl Handler for StoreService {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError> {
        request.require_authenticated()?;
        let storage = &self.storage;
        match request.method {
            "volume_create" => encode(&storage.create_volume(request.decode()?).await?),
            "volume_list" => encode(&storage.list_volumes().await?),
            "volume_info" => {
                let name: VolumeName = request.decode()?;
                encode(&storage.volume_info(&name.name).await?)
            }
            "volume_set_state" => {
                let change: VolumeSetState = request.decode()?;
                encode(&storage.set_volume_state(&change.name, change.state).await?)
            }
            "volume_remove" => {
                let name: VolumeName = request.decode()?;
                encode(&storage.remove_volume(&name.name).await?)
            }
            "volume_status" => {
                let name: VolumeName = request.decode()?;
                encode(&storage.volume_status(&name.name).await?)
            }
            "heal_info" => {
                let name: VolumeName = request.decode()?;
                encode(&storage.heal_info(&name.name).await?)
            }
            "hint_counts" => {
                let name: VolumeName = request.decode()?;
                encode(&storage.hint_counts(&name.name).await?)
            }
            "brick_blocks" => {
                require_node(request.caller)?;
                let brick: BrickRequest = request.decode()?;
                encode(&storage.brick_blocks(&brick).await?)
            }
            "volume_change_bricks" => {
                let change: ChangeBricksRequest = request.decode()?;
                let spec = storage
                    .change_bricks(&change.name, &change.add, &change.remove)
                    .await?;
                storage.start_heal_pass(&spec.name, &self.workers);
                encode(&spec)
            }
            "volume_replace_brick" => {
                let replace: ReplaceBrickRequest = request.decode()?;
                let spec = storage.replace_brick(&replace).await?;
                storage.start_heal_pass(&spec.name, &self.workers);
                encode(&spec)
            }
            "heal_start" => {
                let name: VolumeName = request.decode()?;
                storage
                    .volume(&name.name, bramble_meta::api::Consistency::Linearizable)
                    .await?;
                storage.start_heal_pass(&name.name, &self.workers);
                encode(&storage.node_name().to_string())
            }
            "scrub_start" => {
                let name: VolumeName = request.decode()?;
                encode(&storage.start_scrub(&name.name).await?)
            }
            "scrub_here" => {
                require_node(request.caller)?;
                storage.scrub_trigger.start_now();
                encode(&())
            }
            "s3_key_create" => {
                let name: String = request.decode()?;
                encode(&storage.create_s3_key(&name).await?)
            }
            "s3_key_list" => encode(&storage.list_s3_keys().await?),
            "s3_key_make" => {
                let key: crate::s3::keys::S3KeyRequest = request.decode()?;
                encode(&storage.make_s3_key(&key).await?)
            }
            "s3_keys" => encode(&storage.describe_s3_keys().await?),
            "s3_cleanup_uploads" => {
                let cleanup: crate::admin::CleanupUploads = request.decode()?;
                if cleanup.volumes.len() > 1024 {
                    return Err(RpcError::bad_request("name at most 1024 volumes"));
                }
                let front = crate::s3::objects::BrambleS3 {
                    storage: storage.clone(),
                };
                let aborted = front
                    .reap_stale_uploads(
                        std::time::Duration::from_secs(cleanup.older_than_seconds),
                        &cleanup.volumes,
                    )
                    .await?;
                encode(&(aborted as u64))
            }
            "s3_key_remove" => {
                let name: String = request.decode()?;
                encode(&storage.remove_s3_key(&name).await?)
            }
            "brick_usage" => {
                let brick: BrickRequest = request.decode()?;
                encode(&storage.brick_usage(&brick).await?)
            }
            "brick_clear" => {
                require_node(request.caller)?;
                let (brick, spec): (BrickRequest, VolumeSpec) = request.decode()?;
                if brick.volume != spec.name || brick.volume_id != spec.id {
                    return Err(RpcError::bad_request("the brick and the spec disagree"));
                }
                spec.validate().map_err(RpcError::bad_request)?;
                encode(&storage.clear_brick(&spec, brick.brick).await?)
            }
            "block_delete" => {
                require_node(request.caller)?;
                encode(&storage.serve_block_delete(request.decode()?).await?)
            }
            "fs_stat" => {
                let path: PathRequest = request.decode()?;
                encode(&storage.stat(&path.volume, &path.path).await?)
            }
            "fs_list" => {
                let list: ListRequest = request.decode()?;
                encode(
                    &storage
                        .list(
                            &list.volume,
                            &list.path,
                            list.start_after.as_deref(),
                            list.limit,
                        )
                        .await?,
                )
            }
            "fs_list_content" => {
                let list: ListRequest = request.decode()?;
                encode(
                    &storage
                        .list_page(
                            &list.volume,
                            &list.path,
                            list.start_after.as_deref(),
                            list.limit,
                            true,
                        )
                        .await?,
                )
            }
            "fs_remove" => {
                let remove: RemoveRequest = request.decode()?;
                encode(
                    &storage
                        .remove_checked(
                            &remove.volume,
                            &remove.path,
                            remove.recursive,
                            remove.expect,
                            false,
                        )
                        .await?,
                )
            }
            "fs_rename" => {
                let rename: RenameRequest = request.decode()?;
                encode(
                    &storage
                        .rename(&rename.volume, &rename.from, &rename.to, rename.replace)
                        .await?,
                )
            }
            "fs_mkdir" => {
                let mkdir: MkdirRequest = request.decode()?;
                encode(
                    &storage
                        .mkdir(&mkdir.volume, &mkdir.path, mkdir.exist_ok, mkdir.mode)
                        .await?,
                )
            }
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("the store service has no method {other:?}"),
            )),
        }
    }
}

/// Ends a stream with `reply` as its response header and no body.
async fn answer<T: serde::Serialize>(response: ResponseWriter, reply: &T) -> Result<(), RpcError> {
    let header =
        postcard::to_allocvec(reply).map_err(|error| RpcError::internal(error.to_string()))?;
    response
        .send_all(&header, bytes::Bytes::new())
        .await
        .map_err(mux_error)
}

#[async_trait::async_trait]
impl StreamHandler for StoreService {
    fn streams(&self, method: &str) -> bool {
        matches!(
            method,
            "block_put" | "block_get" | "file_put" | "file_patch" | "file_get"
        )
    }

    async fn handle(&self, call: IncomingCall, response: ResponseWriter) -> Result<(), RpcError> {
        if !call.caller.is_authenticated() {
            return Err(RpcError::new(
                ErrorKind::Unauthorized,
                "store streams need a node or admin certificate",
            ));
        }
        if call.priority != Priority::Bulk {
            return Err(RpcError::bad_request(
                "store streams carry data and must be opened as bulk, never as control",
            ));
        }
        let storage = &self.storage;
        match call.method_name() {
            "block_put" => {
                require_node(&call.caller)?;
                let header: BlockPutHeader = call.decode_header()?;
                storage.serve_block_put(header, call.body, response).await
            }
            "block_get" => {
                require_node(&call.caller)?;
                let header: BlockGetHeader = call.decode_header()?;
                storage.serve_block_get(header, response).await
            }
            "file_put" => {
                let header: FilePutHeader = call.decode_header()?;
                answer(response, &storage.put_file(header, call.body).await?).await
            }
            "file_patch" => {
                let header: FilePatchHeader = call.decode_header()?;
                answer(response, &storage.patch_file(header, call.body).await?).await
            }
            "file_get" => {
                let header: FileGetHeader = call.decode_header()?;
                let (spec, record, reply) = storage.open_for_read(&header).await?;
                let encoded = postcard::to_allocvec(&reply)
                    .map_err(|error| RpcError::internal(error.to_string()))?;
                let sender = response.start(&encoded).await.map_err(mux_error)?;
                storage
                    .send_range(&spec, &record, reply.offset, reply.length, sender)
                    .await
            }
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("the store service has no stream method {other:?}"),
            )),
        }
    }
}
