//! S3 access keys: `bramble s3 key create|ls|rm`. A key is an access key id (`BK` and 20
//! hex digits) and a secret (40 hex digits, 160 random bits) kept in the catalog under
//! `store/s3keys/<access key id>`, so every node can check a request's signature. The
//! secret has to be kept in a form the signature check can use (SigV4 signs with it, as
//! AWS, Garage and MinIO keep theirs): it lives in the catalog's database on each node,
//! which only root reads; it is shown once, at creation, and never logged.

use bramble_meta::api::Consistency;
use bramble_meta::types::{Command, CommandResult};
use bramble_net::{ErrorKind, RpcError};
use serde::{Deserialize, Serialize};

use crate::node::Storage;

pub const KEYS_PREFIX: &str = "store/s3keys/";
/// Most keys listed.
const MAX_KEYS: u32 = 10_000;

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
    pub async fn create_s3_key(&self, name: &str) -> Result<S3Key, RpcError> {
        bramble_util::names::validate_name("key name", name)
            .map_err(|error| RpcError::bad_request(error.to_string()))?;
        if self
            .list_s3_keys()
            .await?
            .iter()
            .any(|key| key.name == name)
        {
            return Err(RpcError::new(
                ErrorKind::AlreadyExists,
                format!("a key named {name} exists (bramble s3 key rm {name} first)"),
            ));
        }
        let key = S3Key {
            name: name.to_string(),
            access_key: format!("BK{}", random_hex(10)?.to_uppercase()),
            secret: random_hex(20)?,
            created_unix: (crate::file::now_ns() / 1_000_000_000).max(0) as u64,
        };
        let command = Command::PutIfVersion {
            key: format!("{KEYS_PREFIX}{}", key.access_key),
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

    pub async fn list_s3_keys(&self) -> Result<Vec<S3KeyInfo>, RpcError> {
        let found = self
            .meta
            .list(KEYS_PREFIX, MAX_KEYS, Consistency::Linearizable, false)
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|(_, value)| postcard::from_bytes::<S3Key>(&value.value).ok())
            .map(|key| S3KeyInfo {
                name: key.name,
                access_key: key.access_key,
                created_unix: key.created_unix,
            })
            .collect())
    }

    /// Removes the key with this name or access key id.
    pub async fn remove_s3_key(&self, name_or_id: &str) -> Result<S3KeyInfo, RpcError> {
        let keys = self.list_s3_keys().await?;
        let Some(key) = keys
            .into_iter()
            .find(|key| key.name == name_or_id || key.access_key == name_or_id)
        else {
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!("no S3 key named {name_or_id:?}"),
            ));
        };
        self.commit(Command::Delete {
            key: format!("{KEYS_PREFIX}{}", key.access_key),
        })
        .await?;
        Ok(key)
    }

    /// The secret of an access key, for the signature check: the local replica first,
    /// the leader for a key created a moment ago elsewhere.
    pub async fn s3_secret(&self, access_key: &str) -> Result<Option<String>, RpcError> {
        if !is_access_key(access_key) {
            return Ok(None);
        }
        let catalog_key = format!("{KEYS_PREFIX}{access_key}");
        let mut found = self
            .meta
            .read(&catalog_key, Consistency::Stale, false)
            .await?;
        if found.is_none() {
            found = self
                .meta
                .read(&catalog_key, Consistency::Linearizable, false)
                .await?;
        }
        Ok(found
            .and_then(|value| postcard::from_bytes::<S3Key>(&value.value).ok())
            .map(|key| key.secret))
    }
}
