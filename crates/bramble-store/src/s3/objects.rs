//! The S3 operations over volumes (`s3s`'s `S3` trait): a bucket is a volume, an object
//! key is a path in it (the same tree `bramble fs` and the mount see; a key ending in `/`
//! is a directory marker). Bodies stream in and out through the storage gateway of the
//! node that answers; multipart uploads keep each part as blocks of its own, and the
//! completed object refers to the parts' blocks instead of copying them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bramble_meta::api::{Consistency, MAX_SCAN_LIMIT, ScanRequest};
use bramble_meta::types::{Command, CommandResult, Condition, Operation};
use bramble_net::{ErrorKind, RpcError};
use bytes::Bytes;
use futures::StreamExt;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::file::{BlockRecord, FileRecord, StoredEntry, new_version, now_ns};
use crate::keys;
use crate::namespace::{Found, lookup};
use crate::node::Storage;
use crate::paths;
use crate::read::ChunkSink;
use crate::volume::VolumeSpec;
use crate::write::{ChunkSource, WriteOptions};

/// The MD5 of nothing: the ETag of a directory marker.
const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
/// S3's bounds on multipart uploads.
const MAX_PARTS: i32 = 10_000;
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Where multipart uploads in progress live.
const UPLOADS_PREFIX: &str = "store/uploads/";

/// The S3 front of this node's storage.
pub struct BrambleS3 {
    pub(crate) storage: Arc<Storage>,
}

/// An upload in progress, at `store/uploads/<volume>/<upload id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UploadRecord {
    path: String,
    created_ns: i64,
    content_type: Option<String>,
    user_metadata: Vec<(String, String)>,
}

fn upload_key(volume: &str, upload_id: &str) -> String {
    format!("{UPLOADS_PREFIX}{volume}/{upload_id}")
}

fn part_key(volume: &str, upload_id: &str, part: i32) -> String {
    format!("{UPLOADS_PREFIX}{volume}/{upload_id}/{part:05}")
}

/// An error from the storage layer as S3 reports it.
fn s3_error_of(error: RpcError) -> S3Error {
    let code = match error.kind {
        ErrorKind::NotFound => S3ErrorCode::NoSuchKey,
        ErrorKind::BadRequest | ErrorKind::WrongType => S3ErrorCode::InvalidArgument,
        ErrorKind::AlreadyExists | ErrorKind::NotEmpty => S3ErrorCode::InvalidRequest,
        ErrorKind::TooLarge => S3ErrorCode::EntityTooLarge,
        ErrorKind::Unauthorized | ErrorKind::Refused => S3ErrorCode::AccessDenied,
        ErrorKind::Full => {
            let mut full = S3Error::with_message(
                S3ErrorCode::Custom("InsufficientStorage".into()),
                error.message,
            );
            full.set_status_code(http::StatusCode::INSUFFICIENT_STORAGE);
            return full;
        }
        ErrorKind::Unavailable | ErrorKind::Timeout => S3ErrorCode::ServiceUnavailable,
        ErrorKind::Internal => S3ErrorCode::InternalError,
    };
    S3Error::with_message(code, error.message)
}

/// An object key as a volume path; `true` when it names a directory marker (`dir/`).
fn object_path(key: &str) -> S3Result<(String, bool)> {
    let marker = key.ends_with('/');
    let path = paths::normalize_entry(key)
        .map_err(|error| s3_error!(InvalidArgument, "object key {key:?}: {error}"))?;
    Ok((path, marker))
}

fn timestamp(nanoseconds: i64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_nanos(nanoseconds.max(0) as u64))
}

fn metadata_of(record: &FileRecord) -> Option<Metadata> {
    if record.user_metadata.is_empty() {
        return None;
    }
    Some(record.user_metadata.iter().cloned().collect())
}

fn metadata_pairs(metadata: Option<Metadata>) -> S3Result<Vec<(String, String)>> {
    let mut pairs: Vec<(String, String)> = metadata.unwrap_or_default().into_iter().collect();
    pairs.sort();
    crate::file::validate_user_metadata(&pairs)
        .map_err(|reason| s3_error!(MetadataTooLarge, "{reason}"))?;
    Ok(pairs)
}

fn strip_quotes(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// How long a request body may send nothing before its request fails (503, which clients
/// retry; AWS answers `RequestTimeout` after about 20 s): a stalled client must not hold
/// the block its write is filling.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// A request body as a chunk source.
struct BlobSource(StreamingBlob);

#[async_trait::async_trait]
impl ChunkSource for BlobSource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, RpcError> {
        match tokio::time::timeout(BODY_IDLE_TIMEOUT, self.0.next()).await {
            Err(_) => Err(RpcError::new(
                ErrorKind::Timeout,
                format!(
                    "the request body sent nothing for {} s",
                    BODY_IDLE_TIMEOUT.as_secs()
                ),
            )),
            Ok(None) => Ok(None),
            Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
            Ok(Some(Err(error))) => Err(RpcError::bad_request(format!(
                "reading the request body failed: {error}"
            ))),
        }
    }
}

/// Chunks from a channel (a copy being read elsewhere) as a chunk source.
struct ChannelSource(mpsc::Receiver<Result<Bytes, RpcError>>);

#[async_trait::async_trait]
impl ChunkSource for ChannelSource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, RpcError> {
        match self.0.recv().await {
            None => Ok(None),
            Some(item) => item.map(Some),
        }
    }
}

/// The sending half of a response body.
struct ChannelSink<E>(mpsc::Sender<Result<Bytes, E>>);

#[async_trait::async_trait]
impl<E: Send + 'static> ChunkSink for ChannelSink<E> {
    async fn send(&mut self, chunk: Bytes) -> Result<(), RpcError> {
        self.0
            .send(Ok(chunk))
            .await
            .map_err(|_| RpcError::new(ErrorKind::Unavailable, "the client went away"))
    }
}

/// A response body fed by a channel.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures::Stream for ChannelBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(context)
    }
}

impl BrambleS3 {
    /// The started volume a bucket names.
    async fn bucket(&self, name: &str) -> S3Result<VolumeSpec> {
        if bramble_util::names::validate_name("bucket", name).is_err() {
            return Err(s3_error!(NoSuchBucket, "there is no bucket {name:?}"));
        }
        match self.storage.started_volume(name).await {
            Ok(spec) => Ok(spec),
            Err(error) if error.kind == ErrorKind::NotFound => {
                Err(s3_error!(NoSuchBucket, "there is no volume named {name:?}"))
            }
            Err(error) => Err(s3_error_of(error)),
        }
    }

    /// The file an object key names.
    async fn object(&self, spec: &VolumeSpec, key: &str) -> S3Result<(String, FileRecord)> {
        let (path, marker) = object_path(key)?;
        match lookup(&self.storage, &spec.name, &path, Consistency::Linearizable)
            .await
            .map_err(s3_error_of)?
        {
            Some(Found::File { record, .. }) if !marker => Ok((path, record)),
            Some(Found::ExplicitDirectory { record, .. }) if marker => Ok((
                path,
                FileRecord {
                    size: 0,
                    version: 0,
                    block_size: spec.block_size,
                    blocks: Vec::new(),
                    modified_ns: record.modified_ns,
                    mode: record.mode,
                    user_metadata: Vec::new(),
                    etag: Some(EMPTY_MD5.to_string()),
                    content_type: None,
                    inline: None,
                },
            )),
            _ => Err(s3_error!(
                NoSuchKey,
                "{key:?} is not in bucket {}",
                spec.name
            )),
        }
    }

    /// Streams `[start, end)` of a file into a response body.
    fn body_of(
        &self,
        spec: &VolumeSpec,
        record: FileRecord,
        start: u64,
        end: u64,
    ) -> StreamingBlob {
        // One chunk queued (up to a block): the read's own read-ahead, within the node's
        // budget, keeps the client fed; a deeper queue held blocks outside any bound.
        let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let storage = self.storage.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            let mut sink = ChannelSink(sender.clone());
            if let Err(error) = storage
                .copy_range(&spec, &record, start, end - start, &mut sink)
                .await
            {
                let _ = sender.send(Err(std::io::Error::other(error.message))).await;
            }
        });
        StreamingBlob::wrap(ChannelBody(receiver))
    }

    /// Stores a body at `path` (an object or a part key) and returns the record.
    async fn store(
        &self,
        spec: &VolumeSpec,
        catalog_key: &str,
        body: Option<StreamingBlob>,
        options: WriteOptions,
    ) -> S3Result<FileRecord> {
        let mut empty = BlobSource(StreamingBlob::wrap(futures::stream::empty::<
            Result<Bytes, std::io::Error>,
        >()));
        let mut source = body.map(BlobSource);
        let source: &mut (dyn ChunkSource + Send) = match source.as_mut() {
            Some(source) => source,
            None => &mut empty,
        };
        let (record, _, _) = self
            .storage
            .write_object(spec, catalog_key, source, options, true)
            .await
            .map_err(s3_error_of)?;
        Ok(record)
    }

    /// Checks that an object may be written at `path` (no directory there, no file
    /// among its parents).
    async fn check_object_path(&self, spec: &VolumeSpec, path: &str) -> S3Result<()> {
        if let Some(found) = lookup(&self.storage, &spec.name, path, Consistency::Linearizable)
            .await
            .map_err(s3_error_of)?
            && found.is_directory()
        {
            return Err(s3_error!(
                InvalidArgument,
                "{path} is a directory in volume {}; an object cannot have its name",
                spec.name
            ));
        }
        self.storage
            .check_parents_are_directories(spec, path)
            .await
            .map_err(s3_error_of)
    }

    async fn upload(&self, spec: &VolumeSpec, upload_id: &str) -> S3Result<UploadRecord> {
        self.upload_and_version(spec, upload_id)
            .await
            .map(|(record, _)| record)
    }

    /// An upload's record and its catalog version, which an abort or a completion makes
    /// a condition of its change: the one that comes second finds the record gone and
    /// leaves the blocks alone (an abort racing a completion must never discard the
    /// blocks the new object now refers to).
    async fn upload_and_version(
        &self,
        spec: &VolumeSpec,
        upload_id: &str,
    ) -> S3Result<(UploadRecord, u64)> {
        if upload_id.len() != 32 || !upload_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(s3_error!(NoSuchUpload));
        }
        let found = self
            .storage
            .meta
            .read(
                &upload_key(&spec.name, upload_id),
                Consistency::Linearizable,
                false,
            )
            .await
            .map_err(s3_error_of)?
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        let record = postcard::from_bytes(&found.value)
            .map_err(|_| s3_error!(InternalError, "unreadable upload"))?;
        Ok((record, found.version))
    }

    /// Every part record of an upload, by part number.
    async fn parts(
        &self,
        spec: &VolumeSpec,
        upload_id: &str,
    ) -> S3Result<Vec<(i32, String, FileRecord)>> {
        let prefix = format!("{}/", upload_key(&spec.name, upload_id));
        let mut parts = Vec::new();
        let entries = self
            .storage
            .scan_all(&prefix, MAX_PARTS as usize)
            .await
            .map_err(s3_error_of)?;
        for (key, value) in entries {
            let Ok(number) = key[prefix.len()..].parse::<i32>() else {
                continue;
            };
            if let Ok(StoredEntry::File(record)) = StoredEntry::decode(&value.value) {
                parts.push((number, key, record));
            }
        }
        Ok(parts)
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: Option<String>,
        delimiter: Option<String>,
        start_after: Option<String>,
        max_keys: Option<i32>,
    ) -> S3Result<(Vec<Object>, Vec<CommonPrefix>, Option<String>)> {
        let spec = self.bucket(bucket).await?;
        let prefix = prefix.unwrap_or_default();
        if prefix.len() > paths::MAX_PATH_BYTES || prefix.chars().any(char::is_control) {
            return Err(s3_error!(
                InvalidArgument,
                "the prefix is too long or holds control characters"
            ));
        }
        let delimiter = match delimiter.as_deref() {
            None | Some("") => None,
            Some(text) => {
                let mut characters = text.chars();
                match (characters.next(), characters.next()) {
                    (Some(character), None)
                        if character.is_ascii() && !character.is_ascii_control() =>
                    {
                        Some(character)
                    }
                    _ => {
                        return Err(s3_error!(
                            InvalidArgument,
                            "only a single printable ASCII character can be a delimiter"
                        ));
                    }
                }
            }
        };
        let max_keys = max_keys.unwrap_or(1000).clamp(0, 1000) as u32;
        if max_keys == 0 {
            return Ok((Vec::new(), Vec::new(), None));
        }
        let root = keys::files_prefix(&spec.name);
        let start_after = match start_after {
            Some(after) if after.len() <= paths::MAX_PATH_BYTES => Some(format!("{root}{after}")),
            Some(_) => return Err(s3_error!(InvalidArgument, "the start key is too long")),
            None => None,
        };
        let page = self
            .storage
            .meta
            .scan(ScanRequest {
                prefix: format!("{root}{prefix}"),
                start_after,
                delimiter,
                limit: max_keys.min(MAX_SCAN_LIMIT),
                consistency: Consistency::Linearizable,
                forwarded: false,
            })
            .await
            .map_err(s3_error_of)?;
        let mut objects = Vec::new();
        for (key, value) in page.entries {
            let object_key = key[root.len()..].to_string();
            let object = match StoredEntry::decode(&value.value) {
                Ok(StoredEntry::File(record)) => Object {
                    e_tag: Some(ETag::Strong(strip_quotes(&record.etag()).to_string())),
                    key: Some(object_key),
                    last_modified: Some(timestamp(record.modified_ns)),
                    size: Some(record.size as i64),
                    storage_class: Some(ObjectStorageClass::from_static(
                        ObjectStorageClass::STANDARD,
                    )),
                    ..Default::default()
                },
                Ok(StoredEntry::Directory(record)) => Object {
                    e_tag: Some(ETag::Strong(EMPTY_MD5.to_string())),
                    key: Some(object_key),
                    last_modified: Some(timestamp(record.modified_ns)),
                    size: Some(0),
                    storage_class: Some(ObjectStorageClass::from_static(
                        ObjectStorageClass::STANDARD,
                    )),
                    ..Default::default()
                },
                Err(_) => continue,
            };
            objects.push(object);
        }
        let common = page
            .common_prefixes
            .into_iter()
            .map(|common| CommonPrefix {
                prefix: Some(common[root.len()..].to_string()),
            })
            .collect();
        let next = page
            .next_start_after
            .map(|key| key[root.len()..].to_string());
        Ok((objects, common, next))
    }
}

#[async_trait::async_trait]
impl S3 for BrambleS3 {
    async fn list_buckets(
        &self,
        request: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let scope = match &request.credentials {
            Some(credentials) => self
                .storage
                .s3_key(&credentials.access_key)
                .await
                .map_err(s3_error_of)?
                .map(|(_, scope)| scope)
                .ok_or_else(|| s3_error!(InvalidAccessKeyId))?,
            None => return Err(s3_error!(AccessDenied, "Signature is required")),
        };
        let volumes = self.storage.list_volumes().await.map_err(s3_error_of)?;
        let buckets = volumes
            .into_iter()
            .filter(|spec| scope.allows_bucket(&spec.name))
            .map(|spec| Bucket {
                name: Some(spec.name),
                creation_date: Some(timestamp(spec.created_unix as i64 * 1_000_000_000)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        request: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let name = &request.input.bucket;
        match self.storage.volume(name, Consistency::Linearizable).await {
            Ok(_) => Err(s3_error!(BucketAlreadyOwnedByYou, "volume {name} exists")),
            Err(_) => Err(s3_error!(
                NotImplemented,
                "buckets are volumes: create one with `bramble volume create {name} ...`"
            )),
        }
    }

    async fn head_bucket(
        &self,
        request: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket(&request.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        request: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket(&request.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn put_object(
        &self,
        request: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = request.input;
        let spec = self.bucket(&input.bucket).await?;
        let (path, marker) = object_path(&input.key)?;
        if marker {
            self.storage
                .mkdir(&spec.name, &path, true, 0o755)
                .await
                .map_err(s3_error_of)?;
            return Ok(S3Response::new(PutObjectOutput {
                e_tag: Some(ETag::Strong(EMPTY_MD5.to_string())),
                ..Default::default()
            }));
        }
        self.check_object_path(&spec, &path).await?;
        let options = WriteOptions {
            mode: 0o644,
            modified_ns: None,
            user_metadata: metadata_pairs(input.metadata)?,
            content_type: input.content_type.map(|value| value.to_string()),
            compute_md5: true,
            inline: true,
        };
        let record = self
            .store(
                &spec,
                &keys::file_key(&spec.name, &path),
                input.body,
                options,
            )
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(strip_quotes(&record.etag()).to_string())),
            size: Some(record.size as i64),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        request: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = request.input;
        let spec = self.bucket(&input.bucket).await?;
        let (_, record) = self.object(&spec, &input.key).await?;
        let (start, end, content_range) = match input.range {
            Some(range) => {
                let span = range
                    .check(record.size)
                    .map_err(|_| s3_error!(InvalidRange, "the object is {} bytes", record.size))?;
                let range_text = format!("bytes {}-{}/{}", span.start, span.end - 1, record.size);
                (span.start, span.end, Some(range_text))
            }
            None => (0, record.size, None),
        };
        let output = GetObjectOutput {
            accept_ranges: Some("bytes".to_string()),
            content_length: Some((end - start) as i64),
            content_range,
            content_type: record
                .content_type
                .clone()
                .and_then(|value| value.parse().ok()),
            e_tag: Some(ETag::Strong(strip_quotes(&record.etag()).to_string())),
            last_modified: Some(timestamp(record.modified_ns)),
            metadata: metadata_of(&record),
            body: Some(self.body_of(&spec, record, start, end)),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        request: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = request.input;
        let spec = self.bucket(&input.bucket).await?;
        let (_, record) = self.object(&spec, &input.key).await?;
        Ok(S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".to_string()),
            content_length: Some(record.size as i64),
            content_type: record
                .content_type
                .clone()
                .and_then(|value| value.parse().ok()),
            e_tag: Some(ETag::Strong(strip_quotes(&record.etag()).to_string())),
            last_modified: Some(timestamp(record.modified_ns)),
            metadata: metadata_of(&record),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        request: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = request.input;
        let spec = self.bucket(&input.bucket).await?;
        self.delete_key(&spec, &input.key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        request: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = request.input;
        let spec = self.bucket(&input.bucket).await?;
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(
                MalformedXML,
                "at most 1000 keys may be deleted at once"
            ));
        }
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for object in input.delete.objects {
            match self.delete_key(&spec, &object.key).await {
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(object.key),
                    ..Default::default()
                }),
                Err(error) => errors.push(s3s::dto::Error {
                    code: Some(error.code().as_str().to_string()),
                    key: Some(object.key),
                    message: error.message().map(str::to_string),
                    ..Default::default()
                }),
            }
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: (!quiet).then_some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        request: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = request.input;
        let CopySource::Bucket {
            bucket: source_bucket,
            key: source_key,
            ..
        } = &input.copy_source
        else {
            return Err(s3_error!(
                NotImplemented,
                "only bucket/key copy sources are supported"
            ));
        };
        let source_spec = self.bucket(source_bucket).await?;
        let (_, source) = self.object(&source_spec, source_key).await?;
        let spec = self.bucket(&input.bucket).await?;
        let (path, marker) = object_path(&input.key)?;
        if marker {
            return Err(s3_error!(
                InvalidArgument,
                "a copy cannot target a directory marker"
            ));
        }
        self.check_object_path(&spec, &path).await?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|directive| directive.as_str() == MetadataDirective::REPLACE);
        let (user_metadata, content_type) = if replace {
            (
                metadata_pairs(input.metadata)?,
                input.content_type.map(|value| value.to_string()),
            )
        } else {
            (source.user_metadata.clone(), source.content_type.clone())
        };
        // The bytes are copied (blocks are never shared between two files: removing one
        // must not remove the other's data).
        let (sender, receiver) = mpsc::channel::<Result<Bytes, RpcError>>(4);
        let storage = self.storage.clone();
        let size = source.size;
        tokio::spawn(async move {
            let mut sink = ChannelSink(sender.clone());
            if let Err(error) = storage
                .copy_range(&source_spec, &source, 0, size, &mut sink)
                .await
            {
                let _ = sender.send(Err(error)).await;
            }
        });
        let options = WriteOptions {
            mode: 0o644,
            modified_ns: None,
            user_metadata,
            content_type,
            compute_md5: true,
            inline: true,
        };
        let mut channel = ChannelSource(receiver);
        let (record, _, _) = self
            .storage
            .write_object(
                &spec,
                &keys::file_key(&spec.name, &path),
                &mut channel,
                options,
                true,
            )
            .await
            .map_err(s3_error_of)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(strip_quotes(&record.etag()).to_string())),
                last_modified: Some(timestamp(record.modified_ns)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        request: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = request.input;
        let start = input
            .continuation_token
            .clone()
            .or(input.start_after.clone());
        let (objects, common, next) = self
            .list(
                &input.bucket,
                input.prefix.clone(),
                input.delimiter.clone(),
                start,
                input.max_keys,
            )
            .await?;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_keys: input.max_keys.or(Some(1000)),
            key_count: Some((objects.len() + common.len()) as i32),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(next.is_some()),
            next_continuation_token: next,
            contents: Some(objects),
            common_prefixes: Some(common),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        request: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = request.input;
        let (objects, common, next) = self
            .list(
                &input.bucket,
                input.prefix.clone(),
                input.delimiter.clone(),
                input.marker.clone(),
                input.max_keys,
            )
            .await?;
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            marker: input.marker,
            max_keys: input.max_keys.or(Some(1000)),
            is_truncated: Some(next.is_some()),
            next_marker: next,
            contents: Some(objects),
            common_prefixes: Some(common),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        request: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = request.input;
        let spec = self.bucket(&input.bucket).await?;
        let (path, marker) = object_path(&input.key)?;
        if marker {
            return Err(s3_error!(
                InvalidArgument,
                "a multipart upload cannot target a directory marker"
            ));
        }
        self.check_object_path(&spec, &path).await?;
        let upload_id = format!("{:032x}", new_version());
        let upload = UploadRecord {
            path,
            created_ns: now_ns(),
            content_type: input.content_type.map(|value| value.to_string()),
            user_metadata: metadata_pairs(input.metadata)?,
        };
        let command = Command::PutIfVersion {
            key: upload_key(&spec.name, &upload_id),
            value: postcard::to_allocvec(&upload).map_err(|_| s3_error!(InternalError))?,
            expected_version: 0,
        };
        self.storage.commit(command).await.map_err(s3_error_of)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        request: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = request.input;
        let spec = self.bucket(&input.bucket).await?;
        self.upload(&spec, &input.upload_id).await?;
        if !(1..=MAX_PARTS).contains(&input.part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "part numbers run from 1 to {MAX_PARTS}"
            ));
        }
        if input
            .content_length
            .is_some_and(|length| length as u64 > MAX_PART_SIZE)
        {
            return Err(s3_error!(
                EntityTooLarge,
                "a part is at most {MAX_PART_SIZE} bytes"
            ));
        }
        let options = WriteOptions {
            mode: 0o644,
            compute_md5: true,
            ..Default::default()
        };
        let key = part_key(&spec.name, &input.upload_id, input.part_number);
        let record = self.store(&spec, &key, input.body, options).await?;
        if record.size > MAX_PART_SIZE {
            return Err(s3_error!(
                EntityTooLarge,
                "a part is at most {MAX_PART_SIZE} bytes"
            ));
        }
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(strip_quotes(&record.etag()).to_string())),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        request: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = request.input;
        let spec = self.bucket(&input.bucket).await?;
        self.upload(&spec, &input.upload_id).await?;
        let parts = self
            .parts(&spec, &input.upload_id)
            .await?
            .into_iter()
            .map(|(number, _, record)| Part {
                e_tag: Some(ETag::Strong(strip_quotes(&record.etag()).to_string())),
                last_modified: Some(timestamp(record.modified_ns)),
                part_number: Some(number),
                size: Some(record.size as i64),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            parts: Some(parts),
            is_truncated: Some(false),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        request: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = request.input;
        let spec = self.bucket(&input.bucket).await?;
        let max_uploads = input.max_uploads.unwrap_or(1000).clamp(1, 1000) as usize;
        let delimiter = match input.delimiter.as_deref() {
            None | Some("") => None,
            Some(text) => Some(text.to_string()),
        };
        let prefix = input.prefix.clone().unwrap_or_default();
        let uploads = self.uploads_in_progress(&spec).await?;
        let page = page_of_uploads(
            uploads,
            &UploadListing {
                prefix: &prefix,
                delimiter: delimiter.as_deref(),
                key_marker: input.key_marker.as_deref(),
                upload_id_marker: input.upload_id_marker.as_deref(),
                max_uploads,
            },
        );
        let uploads = page
            .uploads
            .iter()
            .map(|(id, record)| MultipartUpload {
                key: Some(record.path.clone()),
                upload_id: Some(id.clone()),
                initiated: Some(timestamp(record.created_ns)),
                ..Default::default()
            })
            .collect();
        let common = page
            .common_prefixes
            .iter()
            .map(|prefix| CommonPrefix {
                prefix: Some(prefix.clone()),
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max_uploads as i32),
            is_truncated: Some(page.next.is_some()),
            next_key_marker: page.next.as_ref().map(|(key, _)| key.clone()),
            next_upload_id_marker: page.next.map(|(_, id)| id),
            uploads: Some(uploads),
            common_prefixes: Some(common),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        request: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = request.input;
        let spec = self.bucket(&input.bucket).await?;
        self.abort_upload(&spec, &input.upload_id).await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn complete_multipart_upload(
        &self,
        request: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = request.input;
        let spec = self.bucket(&input.bucket).await?;
        let (upload, upload_version) = self.upload_and_version(&spec, &input.upload_id).await?;
        let (path, _) = object_path(&input.key)?;
        if path != upload.path {
            return Err(s3_error!(
                InvalidRequest,
                "the key is not the one the upload was created for"
            ));
        }
        let listed = input
            .multipart_upload
            .and_then(|upload| upload.parts)
            .unwrap_or_default();
        if listed.is_empty() || listed.len() > MAX_PARTS as usize {
            return Err(s3_error!(
                MalformedXML,
                "a completion lists 1 to {MAX_PARTS} parts"
            ));
        }
        let stored: HashMap<i32, (String, FileRecord)> = self
            .parts(&spec, &input.upload_id)
            .await?
            .into_iter()
            .map(|(number, key, record)| (number, (key, record)))
            .collect();
        let mut blocks: Vec<BlockRecord> = Vec::new();
        let mut size = 0u64;
        let mut md5_concat = Vec::with_capacity(listed.len() * 16);
        let mut previous = 0;
        let mut used = std::collections::HashSet::new();
        for (position, part) in listed.iter().enumerate() {
            let number = part.part_number.unwrap_or(0);
            if number <= previous {
                return Err(s3_error!(InvalidPartOrder));
            }
            previous = number;
            let Some((_, record)) = stored.get(&number) else {
                return Err(s3_error!(InvalidPart, "part {number} was not uploaded"));
            };
            let stored_etag = record.etag.clone().unwrap_or_default();
            if let Some(etag) = &part.e_tag
                && strip_quotes(etag.value()) != stored_etag
            {
                return Err(s3_error!(
                    InvalidPart,
                    "part {number}'s ETag does not match"
                ));
            }
            if position + 1 < listed.len() && record.size < MIN_PART_SIZE {
                return Err(s3_error!(
                    EntityTooSmall,
                    "part {number} is under 5 MiB and is not the last"
                ));
            }
            if record.inline.is_some() {
                // Parts are written with `inline: false`: their blocks are what the
                // completed object refers to.
                return Err(s3_error!(
                    InternalError,
                    "part {number} has no blocks to refer to"
                ));
            }
            md5_concat.extend(hex::decode(&stored_etag).unwrap_or_default());
            for index in 0..record.blocks.len() as u32 {
                let mut block = record.blocks[index as usize];
                block.id = Some(record.block_id(index));
                blocks.push(block);
            }
            size += record.size;
            used.insert(number);
        }
        let digest = md5::Digest::finalize(<md5::Md5 as md5::Digest>::new_with_prefix(&md5_concat));
        let record = FileRecord {
            size,
            version: new_version(),
            block_size: spec.block_size,
            blocks,
            modified_ns: now_ns(),
            mode: 0o644,
            user_metadata: upload.user_metadata,
            etag: Some(format!("{}-{}", hex::encode(digest), listed.len())),
            content_type: upload.content_type,
            inline: None,
        };
        let value = StoredEntry::File(record.clone()).encode();
        if value.len() > bramble_meta::types::MAX_VALUE_BYTES {
            return Err(s3_error!(
                EntityTooLarge,
                "the object has too many blocks for one record"
            ));
        }
        let file_key = keys::file_key(&spec.name, &path);
        // One change: the object appears and the upload disappears together, so the
        // parts' blocks, now the object's, can never be discarded by a later abort.
        let current = self
            .storage
            .meta
            .read(&file_key, Consistency::Linearizable, false)
            .await
            .map_err(s3_error_of)?;
        let (expected, replaced) = match current {
            None => (0, None),
            Some(found) => match StoredEntry::decode(&found.value) {
                Ok(StoredEntry::File(old)) => (found.version, Some(old)),
                _ => return Err(s3_error!(InvalidArgument, "{path} is a directory")),
            },
        };
        let command = Command::Batch {
            conditions: vec![
                Condition {
                    key: file_key.clone(),
                    version: expected,
                },
                Condition {
                    key: upload_key(&spec.name, &input.upload_id),
                    version: upload_version,
                },
            ],
            operations: vec![
                Operation::Put {
                    key: file_key,
                    value,
                },
                Operation::DeletePrefix {
                    prefix: format!("{}/", upload_key(&spec.name, &input.upload_id)),
                },
                Operation::Delete {
                    key: upload_key(&spec.name, &input.upload_id),
                },
            ],
        };
        match self.storage.commit(command).await.map_err(s3_error_of)? {
            CommandResult::BatchApplied { .. } => {}
            CommandResult::ConditionFailed { key, .. }
                if key == upload_key(&spec.name, &input.upload_id) =>
            {
                return Err(s3_error!(
                    NoSuchUpload,
                    "the upload was completed or aborted meanwhile"
                ));
            }
            _ => {
                return Err(s3_error!(
                    ServiceUnavailable,
                    "the object changed meanwhile; complete again"
                ));
            }
        }
        let reach = self.storage.reach().await;
        let mut unused: Vec<crate::file::BlockId> = stored
            .iter()
            .filter(|(number, _)| !used.contains(number))
            .flat_map(|(_, (_, record))| record.block_ids())
            .collect();
        if let Some(old) = replaced {
            unused.extend(old.block_ids());
        }
        self.storage.discard_committed(&spec, unused, &reach).await;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(strip_quotes(&record.etag()).to_string())),
            ..Default::default()
        }))
    }
}

/// Most uploads in progress one volume may list (a pile beyond this is what the reaper
/// exists to prevent; listing then says so instead of using unbounded memory).
const MAX_LISTED_UPLOADS: usize = 20_000;

/// What ListMultipartUploads asked for.
struct UploadListing<'a> {
    prefix: &'a str,
    delimiter: Option<&'a str>,
    key_marker: Option<&'a str>,
    upload_id_marker: Option<&'a str>,
    max_uploads: usize,
}

/// One page of uploads in progress.
#[derive(Debug, Default, PartialEq)]
struct UploadPage {
    uploads: Vec<(String, UploadRecord)>,
    common_prefixes: Vec<String>,
    /// The markers to continue from, if truncated.
    next: Option<(String, String)>,
}

impl PartialEq for UploadRecord {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.created_ns == other.created_ns
    }
}

/// S3's listing of uploads in progress: by key, then by upload id (ids are random, so this
/// is an arbitrary but stable order within a key, which is what the markers need); keys
/// under `prefix` only; keys with `delimiter` after the prefix rolled up into one common
/// prefix each; after `key_marker` (and, for that key, after `upload_id_marker`).
fn page_of_uploads(
    mut uploads: Vec<(String, UploadRecord)>,
    listing: &UploadListing,
) -> UploadPage {
    uploads.sort_by(|(left_id, left), (right_id, right)| {
        left.path.cmp(&right.path).then(left_id.cmp(right_id))
    });
    let mut page = UploadPage::default();
    let mut counted = 0usize;
    for (id, record) in uploads {
        if !record.path.starts_with(listing.prefix) {
            continue;
        }
        if let Some(marker) = listing.key_marker {
            // A page that ended on a common prefix continues after everything under it.
            if listing
                .delimiter
                .is_some_and(|delimiter| marker.ends_with(delimiter))
                && record.path.starts_with(marker)
            {
                continue;
            }
            let after = match listing.upload_id_marker {
                Some(id_marker) => {
                    record.path.as_str() > marker
                        || (record.path == marker && id.as_str() > id_marker)
                }
                None => record.path.as_str() > marker,
            };
            if !after {
                continue;
            }
        }
        let rolled_up = listing.delimiter.and_then(|delimiter| {
            record.path[listing.prefix.len()..]
                .find(delimiter)
                .map(|at| record.path[..listing.prefix.len() + at + delimiter.len()].to_string())
        });
        if let Some(common) = &rolled_up
            && page.common_prefixes.last() == Some(common)
        {
            continue;
        }
        if counted == listing.max_uploads {
            let last = page
                .uploads
                .last()
                .map(|(id, record)| (record.path.clone(), id.clone()));
            let last_common = page
                .common_prefixes
                .last()
                .map(|common| (common.clone(), String::new()));
            // Continue after whichever came last in key order.
            page.next = match (last, last_common) {
                (Some(upload), Some(common)) => {
                    Some(if common.0 > upload.0 { common } else { upload })
                }
                (upload, common) => upload.or(common),
            };
            break;
        }
        counted += 1;
        match rolled_up {
            Some(common) => page.common_prefixes.push(common),
            None => page.uploads.push((id, record)),
        }
    }
    page
}

impl BrambleS3 {
    /// Every upload in progress in a volume: the records only (a scan with `/` as the
    /// delimiter rolls each upload's parts up into one common prefix, which is skipped).
    async fn uploads_in_progress(
        &self,
        spec: &VolumeSpec,
    ) -> S3Result<Vec<(String, UploadRecord)>> {
        let prefix = format!("{UPLOADS_PREFIX}{}/", spec.name);
        let mut uploads = Vec::new();
        let mut start_after = None;
        loop {
            let page = self
                .storage
                .meta
                .scan(ScanRequest {
                    prefix: prefix.clone(),
                    start_after: start_after.take(),
                    delimiter: Some('/'),
                    limit: MAX_SCAN_LIMIT,
                    consistency: Consistency::Linearizable,
                    forwarded: false,
                })
                .await
                .map_err(s3_error_of)?;
            for (key, value) in page.entries {
                let id = key[prefix.len()..].to_string();
                if let Ok(record) = postcard::from_bytes::<UploadRecord>(&value.value) {
                    uploads.push((id, record));
                }
                if uploads.len() > MAX_LISTED_UPLOADS {
                    return Err(s3_error!(
                        ServiceUnavailable,
                        "volume {} has more than {MAX_LISTED_UPLOADS} uploads in progress; abort some (stale ones are aborted after `s3_stale_upload_hours`)",
                        spec.name
                    ));
                }
            }
            match page.next_start_after {
                Some(next) => start_after = Some(next),
                None => return Ok(uploads),
            }
        }
    }

    /// Aborts an upload: its records go in one change conditional on the upload record's
    /// version, and only then its parts' blocks are discarded (a completion that won the
    /// race keeps them).
    async fn abort_upload(&self, spec: &VolumeSpec, upload_id: &str) -> S3Result<()> {
        let (_, version) = self.upload_and_version(spec, upload_id).await?;
        let parts = self.parts(spec, upload_id).await?;
        let command = Command::Batch {
            conditions: vec![Condition {
                key: upload_key(&spec.name, upload_id),
                version,
            }],
            operations: vec![
                Operation::DeletePrefix {
                    prefix: format!("{}/", upload_key(&spec.name, upload_id)),
                },
                Operation::Delete {
                    key: upload_key(&spec.name, upload_id),
                },
            ],
        };
        match self.storage.commit(command).await.map_err(s3_error_of)? {
            CommandResult::BatchApplied { .. } => {}
            _ => {
                return Err(s3_error!(
                    NoSuchUpload,
                    "the upload was completed or aborted meanwhile"
                ));
            }
        }
        let reach = self.storage.reach().await;
        let blocks = parts
            .iter()
            .flat_map(|(_, _, record)| record.block_ids())
            .collect();
        self.storage.discard_committed(spec, blocks, &reach).await;
        Ok(())
    }

    /// Aborts every upload started more than `older_than` ago, in every volume (the
    /// reaper: AWS's AbortIncompleteMultipartUpload lifecycle rule, MinIO's stale upload
    /// expiry). Returns how many were aborted.
    pub(crate) async fn reap_stale_uploads(
        &self,
        older_than: Duration,
        only: &[String],
    ) -> Result<usize, RpcError> {
        let cutoff = now_ns().saturating_sub(older_than.as_nanos().min(i64::MAX as u128) as i64);
        let mut aborted = 0;
        let volumes = self.storage.list_volumes().await?;
        if let Some(missing) = only
            .iter()
            .find(|name| !volumes.iter().any(|spec| &spec.name == *name))
        {
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!("no volume (bucket) named {missing}"),
            ));
        }
        for spec in volumes
            .into_iter()
            .filter(|spec| only.is_empty() || only.contains(&spec.name))
        {
            let uploads = self
                .uploads_in_progress(&spec)
                .await
                .map_err(|error| RpcError::internal(error.to_string()))?;
            for (id, record) in uploads {
                if record.created_ns >= cutoff {
                    continue;
                }
                match self.abort_upload(&spec, &id).await {
                    Ok(()) => {
                        aborted += 1;
                        tracing::info!(
                            volume = %spec.name,
                            path = %record.path,
                            upload = %id,
                            "aborted a stale multipart upload"
                        );
                    }
                    Err(error) if error.code() == &S3ErrorCode::NoSuchUpload => {}
                    Err(error) => return Err(RpcError::internal(error.to_string())),
                }
            }
        }
        Ok(aborted)
    }

    /// Deletes an object (or a directory marker); a missing one is not an error (S3).
    async fn delete_key(&self, spec: &VolumeSpec, key: &str) -> S3Result<()> {
        let (path, marker) = object_path(key)?;
        if marker {
            self.storage
                .commit(Command::Delete {
                    key: keys::directory_key(&spec.name, &path),
                })
                .await
                .map_err(s3_error_of)?;
            return Ok(());
        }
        match self.storage.remove(&spec.name, &path, false).await {
            Ok(_) => Ok(()),
            Err(error) if matches!(error.kind, ErrorKind::NotFound | ErrorKind::NotEmpty) => Ok(()),
            Err(error) => Err(s3_error_of(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(path: &str) -> UploadRecord {
        UploadRecord {
            path: path.to_string(),
            created_ns: 1,
            content_type: None,
            user_metadata: Vec::new(),
        }
    }

    /// Pages through every upload one at a time, as a client follows the markers.
    fn walk(uploads: &[(&str, &str)], delimiter: Option<&str>) -> (Vec<String>, Vec<String>) {
        let all: Vec<(String, UploadRecord)> = uploads
            .iter()
            .map(|(id, path)| (id.to_string(), upload(path)))
            .collect();
        let (mut keys, mut prefixes) = (Vec::new(), Vec::new());
        let mut markers: Option<(String, String)> = None;
        for _ in 0..20 {
            let page = page_of_uploads(
                all.clone(),
                &UploadListing {
                    prefix: "",
                    delimiter,
                    key_marker: markers.as_ref().map(|(key, _)| key.as_str()),
                    upload_id_marker: markers.as_ref().map(|(_, id)| id.as_str()),
                    max_uploads: 1,
                },
            );
            keys.extend(
                page.uploads
                    .iter()
                    .map(|(id, record)| format!("{}#{id}", record.path)),
            );
            prefixes.extend(page.common_prefixes);
            match page.next {
                Some(next) => markers = Some(next),
                None => return (keys, prefixes),
            }
        }
        panic!("the listing never ended");
    }

    #[test]
    fn pages_of_one_visit_every_upload_once_even_with_common_prefixes() {
        let uploads = [
            ("b", "x/one"),
            ("a", "x/two"),
            ("d", "y"),
            ("c", "y"),
            ("e", "z/1"),
        ];
        let (keys, prefixes) = walk(&uploads, None);
        assert_eq!(keys, ["x/one#b", "x/two#a", "y#c", "y#d", "z/1#e"]);
        assert!(prefixes.is_empty());
        let (keys, prefixes) = walk(&uploads, Some("/"));
        assert_eq!(keys, ["y#c", "y#d"]);
        assert_eq!(prefixes, ["x/", "z/"]);
    }
}
