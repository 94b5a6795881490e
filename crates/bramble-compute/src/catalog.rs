//! Reading the catalog the way jobs and services both need: every key under a prefix,
//! page by page, from the leader (linearizable: the scheduler and the reconciler decide on
//! it) or from this node's replica (stale: a worker or a supervisor following it).

use bramble_meta::Meta;
use bramble_meta::api::{Consistency, ScanRequest};
use bramble_net::{ErrorKind, RpcError};

/// The most keys one listing returns before it is refused (a bound, not an expectation).
const MAX_KEYS: usize = 1_000_000;

/// Every key and value under `prefix`.
pub async fn scan_prefix(
    meta: &Meta,
    prefix: &str,
    consistency: Consistency,
) -> Result<Vec<(String, Vec<u8>)>, RpcError> {
    let mut found = Vec::new();
    let mut start_after = None;
    loop {
        let page = meta
            .scan(ScanRequest {
                prefix: prefix.to_string(),
                start_after: start_after.clone(),
                delimiter: None,
                limit: 1000,
                consistency,
                forwarded: false,
            })
            .await?;
        for (key, value) in page.entries {
            found.push((key, value.value));
        }
        match page.next_start_after {
            Some(next) => start_after = Some(next),
            None => return Ok(found),
        }
        if found.len() > MAX_KEYS {
            return Err(RpcError::new(
                ErrorKind::Internal,
                format!("more than {MAX_KEYS} keys under {prefix}"),
            ));
        }
    }
}
