//! WebAssembly modules in the catalog, shared by jobs (a task's module) and services (a
//! replica's): stored once under their BLAKE3 hash in chunks (`jobs/modules/<hash>/NNNN`,
//! the key the jobs subsystem has always used), fetched into a node's cache on first use
//! and checked against the hash, and removed once neither a kept job nor a service names
//! them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bramble_meta::Meta;
use bramble_meta::api::{Consistency, ScanRequest};
use bramble_meta::types::{Command, Operation};
use bramble_net::RpcError;
use serde::{Deserialize, Serialize};

/// Where modules are kept in the catalog.
pub const MODULES_PREFIX: &str = "jobs/modules/";
/// A stored module is cut into values of this size.
pub const MODULE_CHUNK_BYTES: usize = 512 * 1024;
/// The largest module a job or a service may name.
pub const MAX_MODULE_BYTES: u64 = 8 * 1024 * 1024;

/// A module as a spec names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRef {
    /// Its BLAKE3 hash, hex.
    pub hash: String,
    pub bytes: u64,
}

impl ModuleRef {
    pub fn validate(&self) -> Result<(), String> {
        if !is_hash(&self.hash) {
            return Err("a module is named by its BLAKE3 hash (64 hex digits)".to_string());
        }
        if self.bytes == 0 || self.bytes > MAX_MODULE_BYTES {
            return Err(format!(
                "a module is 1 byte to {} MiB",
                MAX_MODULE_BYTES >> 20
            ));
        }
        Ok(())
    }
}

fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.chars().all(|character| character.is_ascii_hexdigit())
}

/// The prefix of a module's chunks.
pub fn module_prefix(hash: &str) -> String {
    format!("{MODULES_PREFIX}{hash}/")
}

pub fn module_key(hash: &str, chunk: usize) -> String {
    format!("{MODULES_PREFIX}{hash}/{chunk:04}")
}

/// Checks a module a user sent (size, and that this host can run it) and stores it.
pub async fn check_and_store(meta: &Meta, module: &[u8]) -> Result<ModuleRef, RpcError> {
    if module.is_empty() || module.len() as u64 > MAX_MODULE_BYTES {
        return Err(RpcError::bad_request(format!(
            "the module has {} bytes; 1 byte to {} MiB",
            module.len(),
            MAX_MODULE_BYTES >> 20
        )));
    }
    bramble_wasm::inspect(module).map_err(|error| RpcError::bad_request(error.to_string()))?;
    let reference = ModuleRef {
        hash: blake3::hash(module).to_hex().to_string(),
        bytes: module.len() as u64,
    };
    store(meta, &reference.hash, module).await?;
    Ok(reference)
}

/// Writes a module's chunks unless its first chunk is there, the first chunk last: a
/// module whose first chunk exists is complete.
pub async fn store(meta: &Meta, hash: &str, module: &[u8]) -> Result<(), RpcError> {
    let stored = meta
        .read(&module_key(hash, 0), Consistency::Linearizable, false)
        .await?
        .is_some();
    if stored {
        return Ok(());
    }
    let chunks: Vec<&[u8]> = module.chunks(MODULE_CHUNK_BYTES).collect();
    for (index, chunk) in chunks.iter().enumerate().rev() {
        meta.write(
            Command::Put {
                key: module_key(hash, index),
                value: chunk.to_vec(),
            },
            false,
        )
        .await?;
    }
    Ok(())
}

/// A node's cache of modules (`<data>/jobs/modules/<hash>.wasm`), filled from the catalog.
pub struct ModuleCache {
    directory: PathBuf,
    /// One fetch at a time: two must not write the same cache file.
    fetching: tokio::sync::Mutex<()>,
}

impl ModuleCache {
    pub fn new(data_dir: &Path) -> ModuleCache {
        ModuleCache {
            directory: data_dir.join("jobs").join("modules"),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The module's file, from the cache or fetched from the catalog and checked.
    pub async fn fetch(&self, meta: &Meta, module: &ModuleRef) -> Result<PathBuf, String> {
        module.validate()?;
        let ModuleRef { hash, bytes } = module;
        let path = self.directory.join(format!("{hash}.wasm"));
        let _only_fetch = self.fetching.lock().await;
        if path.exists() {
            return Ok(path);
        }
        let mut content = Vec::with_capacity(*bytes as usize);
        let mut start_after = None;
        loop {
            let page = meta
                .scan(ScanRequest {
                    prefix: module_prefix(hash),
                    start_after: start_after.clone(),
                    delimiter: None,
                    limit: 8,
                    consistency: Consistency::Linearizable,
                    forwarded: false,
                })
                .await
                .map_err(|error| format!("fetching module {hash}: {error}"))?;
            for (_, value) in page.entries {
                content.extend_from_slice(&value.value);
                if content.len() as u64 > *bytes {
                    return Err(format!("module {hash} is larger than its spec says"));
                }
            }
            match page.next_start_after {
                Some(next) => start_after = Some(next),
                None => break,
            }
        }
        if content.len() as u64 != *bytes || blake3::hash(&content).to_hex().as_str() != hash {
            return Err(format!(
                "module {hash} in the catalog is incomplete or does not match its hash"
            ));
        }
        std::fs::create_dir_all(&self.directory)
            .map_err(|error| format!("creating {}: {error}", self.directory.display()))?;
        bramble_util::files::write_atomic(&path, &content, bramble_util::files::Visibility::Public)
            .map_err(|error| format!("caching module {hash}: {error}"))?;
        Ok(path)
    }
}

/// Removes the catalog's modules that no kept job and no service (current or previous
/// version) names.
pub async fn forget_unused(meta: &Meta) -> Result<(), RpcError> {
    let page = meta
        .scan(ScanRequest {
            prefix: MODULES_PREFIX.to_string(),
            start_after: None,
            delimiter: Some('/'),
            limit: 1000,
            consistency: Consistency::Linearizable,
            forwarded: false,
        })
        .await?;
    if page.common_prefixes.is_empty() {
        return Ok(());
    }
    let mut used = BTreeSet::new();
    for (_, value) in
        crate::jobs::scheduler::scan_all(meta, crate::jobs::record::SPEC_PREFIX).await?
    {
        if let Ok(spec) = serde_json::from_slice::<crate::jobs::spec::JobSpec>(&value)
            && let crate::jobs::spec::Work::Wasm { module, .. } = spec.work
        {
            used.insert(module);
        }
    }
    for (_, value) in
        crate::jobs::scheduler::scan_all(meta, crate::services::spec::SPEC_PREFIX).await?
    {
        if let Ok(spec) = serde_json::from_slice::<crate::services::spec::ServiceSpec>(&value) {
            let versions = std::iter::once(&spec).chain(spec.previous.as_deref());
            for version in versions {
                if let Some(module) = &version.module {
                    used.insert(module.hash.clone());
                }
            }
        }
    }
    for prefix in page.common_prefixes {
        let hash = prefix
            .trim_start_matches(MODULES_PREFIX)
            .trim_end_matches('/');
        if used.contains(hash) {
            continue;
        }
        let command = Command::Batch {
            conditions: vec![],
            operations: vec![Operation::DeletePrefix { prefix }],
        };
        meta.write(command, false).await?;
    }
    Ok(())
}
