//! S3 access keys: `bramble s3 key create|ls|rm`. A key is an access key id (`BK` and 20
//! hex digits) and a secret (40 hex digits, 160 random bits) kept in the catalog, so every
//! node can check a request's signature. The secret has to be kept in a form the signature
//! check can use (SigV4 signs with it, as AWS, Garage and MinIO keep theirs): it lives in
//! the catalog's database on each node, which only root reads; it is shown once, at
//! creation, and never logged.
//!
//! A key may be **scoped** ([`KeyScope`]), as Garage's `bucket allow` and MinIO's policies
//! do: to some buckets only, and to reading only. Keys are kept under
//! [`SCOPED_KEYS_PREFIX`] with their scope. Keys made by builds before scopes, under
//! [`KEYS_PREFIX`], keep working with every bucket, read and write. A scoped key lives
//! under the new prefix on purpose: an older agent, which would not know to enforce a
//! scope, never finds it and refuses its requests, rather than granting them everything.

use bramble_meta::api::Consistency;
use bramble_meta::types::{Command, CommandResult, Operation};
use bramble_net::{ErrorKind, RpcError};
use serde::{Deserialize, Serialize};

use crate::node::Storage;

/// Keys from before scopes: every bucket, read and write.
pub const KEYS_PREFIX: &str = "store/s3keys/";
/// Keys with their scope.
pub const SCOPED_KEYS_PREFIX: &str = "store/s3access/";
/// Most keys listed.
const MAX_KEYS: u32 = 10_000;
/// Most buckets one key may be scoped to.
pub const MAX_SCOPED_BUCKETS: usize = 64;

/// What a key may do. No buckets: every bucket, including ones made later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyScope {
    pub buckets: Vec<String>,
    pub read_only: bool,
}

impl KeyScope {
    pub fn allows_bucket(&self, bucket: &str) -> bool {
        self.buckets.is_empty() || self.buckets.iter().any(|allowed| allowed == bucket)
    }

    /// `every bucket, read and write`, `vol0, vol1, read only`.
    pub fn describe(&self) -> String {
        let buckets = if self.buckets.is_empty() {
            "every bucket".to_string()
        } else {
            self.buckets.join(", ")
        };
        let access = if self.read_only {
            "read only"
        } else {
            "read and write"
        };
        format!("{buckets}, {access}")
    }
}

/// Whether an S3 operation only reads (what a read-only key may call).
pub fn is_read_operation(name: &str) -> bool {
    name.starts_with("Get") || name.starts_with("Head") || name.starts_with("List")
}

/// A key as stored under [`SCOPED_KEYS_PREFIX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopedS3Key {
    pub name: String,
    pub access_key: String,
    pub secret: String,
    pub created_unix: u64,
    pub scope: KeyScope,
}

/// `store.s3_key_make`'s request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3KeyRequest {
    pub name: String,
    pub scope: KeyScope,
}

/// A key as `store.s3_keys` lists it (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3KeyDescription {
    pub name: String,
    pub access_key: String,
    pub created_unix: u64,
    pub scope: KeyScope,
}

/// A key as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Key {
    pub name: String,
    pub access_key: String,
    pub secret: String,
    pub created_unix: u64,
}

/// A key as listed (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3KeyInfo {
    pub name: String,
    pub access_key: String,
    pub created_unix: u64,
}

fn random_hex(bytes: usize) -> Result<String, RpcError> {
    use ring::rand::SecureRandom;
    let mut buffer = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buffer)
        .map_err(|_| RpcError::internal("the system's random source failed"))?;
    Ok(hex::encode(buffer))
}

/// Whether `text` looks like one of our access keys (checked before any lookup, so a
/// request cannot make the agent read an arbitrary catalog key).
pub fn is_access_key(text: &str) -> bool {
    text.len() == 22
        && text.starts_with("BK")
        && text[2..]
            .chars()
            .all(|character| character.is_ascii_hexdigit())
}

impl Storage {
    /// A key for every bucket, read and write (`store.s3_key_create`, kept for older CLIs).
    pub async fn create_s3_key(&self, name: &str) -> Result<S3Key, RpcError> {
        let key = self
            .make_s3_key(&S3KeyRequest {
                name: name.to_string(),
                scope: KeyScope::default(),
            })
            .await?;
        Ok(S3Key {
            name: key.name,
            access_key: key.access_key,
            secret: key.secret,
            created_unix: key.created_unix,
        })
    }

    /// A key with a scope. The buckets must exist (a typo would otherwise make a key that
    /// can do nothing, silently).
    pub async fn make_s3_key(&self, request: &S3KeyRequest) -> Result<ScopedS3Key, RpcError> {
        bramble_util::names::validate_name("key name", &request.name)
            .map_err(|error| RpcError::bad_request(error.to_string()))?;
        let mut buckets = request.scope.buckets.clone();
        buckets.sort();
        buckets.dedup();
        if buckets.len() > MAX_SCOPED_BUCKETS {
            return Err(RpcError::bad_request(format!(
                "a key may be scoped to at most {MAX_SCOPED_BUCKETS} buckets"
            )));
        }
        for bucket in &buckets {
            bramble_util::names::validate_name("bucket", bucket)
                .map_err(|error| RpcError::bad_request(error.to_string()))?;
            self.volume(bucket, Consistency::Linearizable)
                .await
                .map_err(|_| {
                    RpcError::new(
                        ErrorKind::NotFound,
                        format!("no volume (bucket) named {bucket}"),
                    )
                })?;
        }
        if self
            .describe_s3_keys()
            .await?
            .iter()
            .any(|key| key.name == request.name)
        {
            return Err(RpcError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "a key named {} exists (bramble s3 key rm {} first)",
                    request.name, request.name
                ),
            ));
        }
        let key = ScopedS3Key {
            name: request.name.clone(),
            access_key: format!("BK{}", random_hex(10)?.to_uppercase()),
            secret: random_hex(20)?,
            created_unix: (crate::file::now_ns() / 1_000_000_000).max(0) as u64,
            scope: KeyScope {
                buckets,
                read_only: request.scope.read_only,
            },
        };
        let command = Command::PutIfVersion {
            key: format!("{SCOPED_KEYS_PREFIX}{}", key.access_key),
            value: postcard::to_allocvec(&key)
                .map_err(|error| RpcError::internal(error.to_string()))?,
            expected_version: 0,
        };
        match self.commit(command).await? {
            CommandResult::Written { .. } => Ok(key),
            _ => Err(RpcError::internal(
                "a key with the same id exists; try again",
            )),
        }
    }

    /// Every key with its scope, both kinds, sorted by name.
    pub async fn describe_s3_keys(&self) -> Result<Vec<S3KeyDescription>, RpcError> {
        let mut keys: Vec<S3KeyDescription> = self
            .meta
            .list(KEYS_PREFIX, MAX_KEYS, Consistency::Linearizable, false)
            .await?
            .into_iter()
            .filter_map(|(_, value)| postcard::from_bytes::<S3Key>(&value.value).ok())
            .map(|key| S3KeyDescription {
                name: key.name,
                access_key: key.access_key,
                created_unix: key.created_unix,
                scope: KeyScope::default(),
            })
            .collect();
        keys.extend(
            self.meta
                .list(
                    SCOPED_KEYS_PREFIX,
                    MAX_KEYS,
                    Consistency::Linearizable,
                    false,
                )
                .await?
                .into_iter()
                .filter_map(|(_, value)| postcard::from_bytes::<ScopedS3Key>(&value.value).ok())
                .map(|key| S3KeyDescription {
                    name: key.name,
                    access_key: key.access_key,
                    created_unix: key.created_unix,
                    scope: key.scope,
                }),
        );
        keys.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(keys)
    }

    /// Every key, as older CLIs list them (`store.s3_key_list`).
    pub async fn list_s3_keys(&self) -> Result<Vec<S3KeyInfo>, RpcError> {
        Ok(self
            .describe_s3_keys()
            .await?
            .into_iter()
            .map(|key| S3KeyInfo {
                name: key.name,
                access_key: key.access_key,
                created_unix: key.created_unix,
            })
            .collect())
    }

    /// Removes the key with this name or access key id.
    pub async fn remove_s3_key(&self, name_or_id: &str) -> Result<S3KeyInfo, RpcError> {
        let keys = self.describe_s3_keys().await?;
        let Some(key) = keys
            .into_iter()
            .find(|key| key.name == name_or_id || key.access_key == name_or_id)
        else {
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!("no S3 key named {name_or_id:?}"),
            ));
        };
        self.commit(Command::Batch {
            conditions: Vec::new(),
            operations: vec![
                Operation::Delete {
                    key: format!("{KEYS_PREFIX}{}", key.access_key),
                },
                Operation::Delete {
                    key: format!("{SCOPED_KEYS_PREFIX}{}", key.access_key),
                },
            ],
        })
        .await?;
        Ok(S3KeyInfo {
            name: key.name,
            access_key: key.access_key,
            created_unix: key.created_unix,
        })
    }

    /// The secret and scope of an access key, for the signature and access checks: the
    /// local replica first, the leader for a key created a moment ago elsewhere.
    pub async fn s3_key(&self, access_key: &str) -> Result<Option<(String, KeyScope)>, RpcError> {
        if !is_access_key(access_key) {
            return Ok(None);
        }
        for consistency in [Consistency::Stale, Consistency::Linearizable] {
            let scoped = self
                .meta
                .read(
                    &format!("{SCOPED_KEYS_PREFIX}{access_key}"),
                    consistency,
                    false,
                )
                .await?;
            if let Some(key) =
                scoped.and_then(|value| postcard::from_bytes::<ScopedS3Key>(&value.value).ok())
            {
                return Ok(Some((key.secret, key.scope)));
            }
            let legacy = self
                .meta
                .read(&format!("{KEYS_PREFIX}{access_key}"), consistency, false)
                .await?;
            if let Some(key) =
                legacy.and_then(|value| postcard::from_bytes::<S3Key>(&value.value).ok())
            {
                return Ok(Some((key.secret, KeyScope::default())));
            }
        }
        Ok(None)
    }

    /// The secret of an access key, for the signature check.
    pub async fn s3_secret(&self, access_key: &str) -> Result<Option<String>, RpcError> {
        Ok(self.s3_key(access_key).await?.map(|(secret, _)| secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_without_buckets_allows_every_bucket() {
        let everything = KeyScope::default();
        assert!(everything.allows_bucket("vol0"));
        let some = KeyScope {
            buckets: vec!["vol0".into()],
            read_only: true,
        };
        assert!(some.allows_bucket("vol0"));
        assert!(!some.allows_bucket("vol1"));
        assert_eq!(some.describe(), "vol0, read only");
        assert_eq!(everything.describe(), "every bucket, read and write");
    }

    #[test]
    fn reads_are_told_from_writes_by_operation_name() {
        for read in [
            "GetObject",
            "HeadObject",
            "ListObjectsV2",
            "ListMultipartUploads",
        ] {
            assert!(is_read_operation(read), "{read}");
        }
        for write in [
            "PutObject",
            "DeleteObject",
            "DeleteObjects",
            "CopyObject",
            "CreateMultipartUpload",
            "UploadPart",
            "CompleteMultipartUpload",
            "AbortMultipartUpload",
        ] {
            assert!(!is_read_operation(write), "{write}");
        }
    }
}
