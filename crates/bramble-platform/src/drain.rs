//! Drained nodes. `bramble drain n3` marks a node the operator is about to work on: it
//! takes no new work and hands over what it holds (its balancers' VIPs, its service
//! replicas), while it stays a gossip member and a catalog voter, so the cluster keeps its
//! quorum and sees the node come back. `bramble undrain n3` makes it eligible again.
//!
//! This module owns the catalog keys `nodes/drain/<node>` (one record per drained node:
//! why, since when, by whom). The `drain.*` RPC below is their only writer; the balancer,
//! the services reconciler and the jobs scheduler only read them ([`drained_here`] from the
//! node's own replica, [`drained`] through the leader). A record that cannot be decoded
//! still counts as drained: someone meant the node to be left alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bramble_cluster::Membership;
use bramble_meta::Meta;
use bramble_meta::api::Consistency;
use bramble_meta::store::CatalogReader;
use bramble_meta::types::{Command, CommandResult, Condition, Operation};
use bramble_net::rpc::{Request, encode};
use bramble_net::{Caller, ErrorKind, Handler, RpcError};
use bramble_util::names::NameError;
use serde::{Deserialize, Serialize};

use crate::subsystem::StartFuture;
use crate::{Context, Running, Subsystem};

/// Every drained node's record lives under this prefix.
pub const PREFIX: &str = "nodes/drain/";
pub const SERVICE: &str = "drain";
/// `drain.set`: drain or undrain a node (admin credential only).
pub const METHOD_SET: &str = "drain.set";
/// `drain.list`: every drained node's record.
pub const METHOD_LIST: &str = "drain.list";
/// Longest reason kept with a record.
pub const MAX_REASON_BYTES: usize = 200;
/// Most records one read returns: more than any cluster has nodes.
const MAX_RECORDS: u32 = 10_000;
/// Attempts of a compare-and-set before giving up on a record that keeps changing.
const WRITE_ATTEMPTS: usize = 10;

/// The catalog key of `node`'s record.
pub fn key(node: &str) -> String {
    format!("{PREFIX}{node}")
}

/// Why a node is drained, since when and who asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    pub node: String,
    /// The operator's words (`--reason`), possibly empty.
    pub reason: String,
    pub since_unix_ms: u64,
    /// The caller that drained it (`admin/<name>`).
    pub by: String,
}

/// What is wrong with a drain request or record.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("the reason is {length} bytes; at most {MAX_REASON_BYTES}")]
    ReasonTooLong { length: usize },
    #[error("the reason holds control characters (one line of text, please)")]
    ReasonNotText,
    #[error("no node named {0:?} in the cluster (`bramble nodes` lists them)")]
    NotAMember(String),
    #[error("unreadable drain record {key}: {reason}")]
    Unreadable { key: String, reason: String },
}

impl From<DrainError> for RpcError {
    fn from(error: DrainError) -> RpcError {
        let kind = match error {
            DrainError::NotAMember(_) => ErrorKind::NotFound,
            DrainError::Unreadable { .. } => ErrorKind::Internal,
            _ => ErrorKind::BadRequest,
        };
        RpcError::new(kind, error.to_string())
    }
}

/// Checks a reason given by an operator: one line, bounded.
pub fn validate_reason(reason: &str) -> Result<(), DrainError> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(DrainError::ReasonTooLong {
            length: reason.len(),
        });
    }
    if reason.chars().any(char::is_control) {
        return Err(DrainError::ReasonNotText);
    }
    Ok(())
}

/// `drain.set`'s request: drain (`drained`) or undrain `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetDrain {
    pub node: String,
    pub drained: bool,
    /// Kept with the record; draining a drained node again replaces it (and keeps `since`).
    pub reason: Option<String>,
}

impl SetDrain {
    pub fn validate(&self) -> Result<(), DrainError> {
        bramble_util::names::validate_name("a node name", &self.node)?;
        if let Some(reason) = &self.reason {
            validate_reason(reason)?;
        }
        Ok(())
    }
}

/// `drain.set`'s answer: the record now (none once undrained) and the one before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetDrainAnswer {
    pub record: Option<DrainRecord>,
    pub previous: Option<DrainRecord>,
}

/// The record stored at `key`; an unreadable one is reported, never skipped.
pub fn decode(key: &str, value: &[u8]) -> Result<DrainRecord, DrainError> {
    let unreadable = |reason: String| DrainError::Unreadable {
        key: key.to_string(),
        reason,
    };
    let node = key
        .strip_prefix(PREFIX)
        .ok_or_else(|| unreadable(format!("not under {PREFIX}")))?;
    let record: DrainRecord =
        serde_json::from_slice(value).map_err(|error| unreadable(error.to_string()))?;
    if record.node != node {
        return Err(unreadable(format!(
            "it names node {:?}, its key {node:?}",
            record.node
        )));
    }
    Ok(record)
}

/// Drained nodes by name, from catalog entries under [`PREFIX`]. An unreadable record
/// still drains its node (named by the key), with the problem as its reason.
pub fn records(
    entries: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> BTreeMap<String, DrainRecord> {
    let mut drained = BTreeMap::new();
    for (key, value) in entries {
        let Some(node) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let record = decode(&key, &value).unwrap_or_else(|error| {
            tracing::warn!(%error, "a drain record is unreadable; its node counts as drained");
            DrainRecord {
                node: node.to_string(),
                reason: error.to_string(),
                since_unix_ms: 0,
                by: String::new(),
            }
        });
        drained.insert(node.to_string(), record);
    }
    drained
}

/// Drained nodes as this node's catalog replica has them (no quorum round; may lag the
/// leader by a heartbeat): for followers of the flag, like the balancer's VIP workers.
pub fn drained_here(
    reader: &CatalogReader,
) -> Result<BTreeMap<String, DrainRecord>, bramble_meta::store::MetaStoreError> {
    let entries = reader.list(PREFIX, MAX_RECORDS as usize)?;
    Ok(records(
        entries.into_iter().map(|(key, value)| (key, value.value)),
    ))
}

/// Drained nodes as the catalog leader has them: for decisions that must not rest on a
/// lagging replica (where replicas go).
pub async fn drained(meta: &Meta) -> Result<BTreeMap<String, DrainRecord>, RpcError> {
    let entries = meta
        .list(PREFIX, MAX_RECORDS, Consistency::Linearizable, false)
        .await?;
    Ok(records(
        entries.into_iter().map(|(key, value)| (key, value.value)),
    ))
}

/// The drain subsystem: every node answers `drain.*` (any node can change the catalog).
pub const SUBSYSTEM: Subsystem = Subsystem {
    name: SERVICE,
    roles: &[],
    start,
    stop_deadline: Duration::from_secs(1),
};

fn start(context: Context) -> StartFuture {
    Box::pin(async move {
        Ok(Arc::new(RunningDrain {
            service: Arc::new(DrainService {
                node: context.node_name().to_string(),
                meta: context.meta.clone(),
                membership: context.membership.clone(),
            }),
        }) as Arc<dyn Running>)
    })
}

struct RunningDrain {
    service: Arc<DrainService>,
}

impl RunningDrain {
    fn drained_now(&self) -> bool {
        drained_here(self.service.meta.reader())
            .map(|drained| drained.contains_key(&self.service.node))
            .unwrap_or(false)
    }
}

#[async_trait::async_trait]
impl Running for RunningDrain {
    fn service(&self) -> Option<Arc<dyn Handler>> {
        Some(self.service.clone())
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "drained": self.drained_now() })
    }

    fn prometheus(&self) -> Option<String> {
        let name = "bramble_drain_node_drained";
        Some(format!(
            "# HELP {name} Whether this node is drained (bramble drain): 1 drained, 0 not.\n# TYPE {name} gauge\n{name} {}\n",
            u8::from(self.drained_now())
        ))
    }

    async fn stop(&self) {}
}

struct DrainService {
    node: String,
    meta: Arc<Meta>,
    membership: Arc<Membership>,
}

#[async_trait::async_trait]
impl Handler for DrainService {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError> {
        request.require_authenticated()?;
        match request.method {
            "set" => {
                let Caller::Admin(admin) = request.caller else {
                    return Err(RpcError::new(
                        ErrorKind::Unauthorized,
                        "draining a node is for the cluster's administrator",
                    ));
                };
                let set: SetDrain = request.decode()?;
                encode(&self.set(set, &format!("admin/{admin}")).await?)
            }
            "list" => encode(&drained(&self.meta).await?.into_values().collect::<Vec<_>>()),
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("drain has no method {other:?}"),
            )),
        }
    }
}

impl DrainService {
    /// Writes or removes a node's record with a compare-and-set on what was read, so two
    /// operators at once never lose each other's change silently.
    async fn set(&self, request: SetDrain, by: &str) -> Result<SetDrainAnswer, RpcError> {
        request.validate()?;
        if request.drained
            && !self
                .membership
                .nodes()
                .await
                .iter()
                .any(|member| member.name == request.node)
        {
            // Undraining a node that left is allowed: it clears a stale record.
            return Err(DrainError::NotAMember(request.node.clone()).into());
        }
        let key = key(&request.node);
        for _ in 0..WRITE_ATTEMPTS {
            let stored = self
                .meta
                .read(&key, Consistency::Linearizable, false)
                .await?;
            let (previous, version) = match &stored {
                Some(value) => (Some(decode(&key, &value.value)), value.version),
                None => (None, 0),
            };
            // An unreadable record is replaced (drain) or removed (undrain) like any other.
            let previous = previous.and_then(Result::ok);
            let (record, operation) = if request.drained {
                let record = DrainRecord {
                    node: request.node.clone(),
                    reason: request
                        .reason
                        .clone()
                        .or_else(|| previous.as_ref().map(|record| record.reason.clone()))
                        .unwrap_or_default(),
                    since_unix_ms: previous
                        .as_ref()
                        .map(|record| record.since_unix_ms)
                        .filter(|since| *since > 0)
                        .unwrap_or_else(bramble_util::time::unix_millis),
                    by: by.to_string(),
                };
                let value = serde_json::to_vec(&record).map_err(|error| {
                    RpcError::new(ErrorKind::Internal, format!("encoding a record: {error}"))
                })?;
                (
                    Some(record),
                    Operation::Put {
                        key: key.clone(),
                        value,
                    },
                )
            } else {
                if stored.is_none() {
                    return Ok(SetDrainAnswer {
                        record: None,
                        previous: None,
                    });
                }
                (None, Operation::Delete { key: key.clone() })
            };
            let result = self
                .meta
                .write(
                    Command::Batch {
                        conditions: vec![Condition {
                            key: key.clone(),
                            version,
                        }],
                        operations: vec![operation],
                    },
                    false,
                )
                .await?;
            match result {
                CommandResult::BatchApplied { .. } => {
                    match &record {
                        Some(_) => tracing::info!(node = %request.node, %by, "node drained"),
                        None => tracing::info!(node = %request.node, %by, "node undrained"),
                    }
                    return Ok(SetDrainAnswer { record, previous });
                }
                CommandResult::ConditionFailed { .. } => continue,
                other => {
                    return Err(RpcError::new(
                        ErrorKind::Internal,
                        format!("writing the drain record: {other:?}"),
                    ));
                }
            }
        }
        Err(RpcError::new(
            ErrorKind::Unavailable,
            format!(
                "the drain record of {} kept changing; try again",
                request.node
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: &str) -> DrainRecord {
        DrainRecord {
            node: node.into(),
            reason: "kernel update".into(),
            since_unix_ms: 1,
            by: "admin/me".into(),
        }
    }

    #[test]
    fn records_decode_and_an_unreadable_one_still_drains_its_node() {
        let good = serde_json::to_vec(&record("n1")).unwrap_or_default();
        let mismatched = serde_json::to_vec(&record("n9")).unwrap_or_default();
        let drained = records(vec![
            (key("n1"), good),
            (key("n2"), b"not json".to_vec()),
            (key("n3"), mismatched),
            ("elsewhere/n4".to_string(), b"{}".to_vec()),
        ]);
        assert_eq!(
            drained.keys().cloned().collect::<Vec<_>>(),
            vec!["n1", "n2", "n3"]
        );
        assert_eq!(drained["n1"], record("n1"));
        assert!(drained["n2"].reason.contains("unreadable"), "{drained:?}");
        assert!(drained["n3"].reason.contains("n9"), "{drained:?}");
    }

    #[test]
    fn requests_are_bounded_with_the_problem_named() {
        let mut request = SetDrain {
            node: "n1".into(),
            drained: true,
            reason: Some("new SD card".into()),
        };
        assert!(request.validate().is_ok());
        request.reason = Some("x".repeat(MAX_REASON_BYTES + 1));
        let error = request.validate().expect_err("too long").to_string();
        assert!(error.contains("at most 200"), "{error}");
        request.reason = Some("two\nlines".into());
        assert!(request.validate().is_err());
        request.reason = None;
        request.node = "../etc".into();
        assert!(request.validate().is_err());
    }
}
