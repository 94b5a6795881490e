//! `services.*`: create, list, inspect, scale and remove services (any node answers; the
//! catalog holds them), `ps` (this node asks every live member for its replicas), a
//! node's own replicas (`local`) and a replica's log (`logs`, on the node that runs it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bramble_cluster::{Membership, NodeState};
use bramble_meta::Meta;
use bramble_meta::api::Consistency;
use bramble_meta::types::{Command, CommandResult, Condition, Operation};
use bramble_net::rpc::{Request, encode};
use bramble_net::{ErrorKind, Handler, RpcClient, RpcError};

use super::admin::*;
use super::placement::reconcile;
use super::reconciler::placement_inputs;
use super::spec::*;
use super::supervisor::{ReplicaStatus, Supervisor};
use crate::jobs::scheduler::scan_all;

/// Most bytes of a log one call returns.
const MAX_LOG_BYTES: u64 = 4 * 1024 * 1024;

pub struct ServicesService {
    pub(crate) node: String,
    pub(crate) meta: Arc<Meta>,
    pub(crate) membership: Arc<Membership>,
    pub(crate) rpc: RpcClient,
    pub(crate) supervisor: Arc<Supervisor>,
}

fn not_found(name: &str) -> RpcError {
    RpcError::new(ErrorKind::NotFound, format!("there is no service {name:?}"))
}

#[async_trait::async_trait]
impl Handler for ServicesService {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError> {
        request.require_authenticated()?;
        match request.method {
            "create" => encode(&self.create(request.decode()?).await?),
            "create_wasm" => encode(&self.create_wasm(request.decode()?).await?),
            "list" => encode(&self.list().await?),
            "inspect" => {
                let name: String = request.decode()?;
                encode(&self.spec(&name).await?.0)
            }
            "scale" => encode(&self.scale(request.decode()?).await?),
            "update" => encode(&self.update(request.decode()?).await?),
            "rollback" => {
                let name: String = request.decode()?;
                encode(&self.rollback(&name).await?)
            }
            "remove" => {
                let name: String = request.decode()?;
                encode(&self.remove(&name).await?)
            }
            "ps" => {
                let name: String = request.decode()?;
                encode(&self.ps(&name).await?)
            }
            "local" => {
                let name: Option<String> = request.decode()?;
                encode(&self.supervisor.statuses(name.as_deref()))
            }
            "logs" => {
                let logs: LogsRequest = request.decode()?;
                encode(&self.logs(&logs)?)
            }
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("services has no method {other:?}"),
            )),
        }
    }
}

impl ServicesService {
    async fn spec(&self, name: &str) -> Result<(ServiceSpec, u64), RpcError> {
        let value = self
            .meta
            .read(&spec_key(name), Consistency::Linearizable, false)
            .await?
            .ok_or_else(|| not_found(name))?;
        let spec = serde_json::from_slice(&value.value).map_err(|error| {
            RpcError::new(
                ErrorKind::Internal,
                format!("unreadable service {name}: {error}"),
            )
        })?;
        Ok((spec, value.version))
    }

    /// Stores the module (once, by hash), then the service that runs it.
    async fn create_wasm(&self, request: CreateWasm) -> Result<ServiceSpec, RpcError> {
        let CreateWasm { mut spec, module } = request;
        spec.module = Some(crate::modules::check_and_store(&self.meta, &module).await?);
        let created = self.create(spec).await?;
        // Modules no spec names are removed by the jobs scheduler; one stored just before
        // its service could have gone in between: store it again.
        crate::modules::store(&self.meta, &blake3::hash(&module).to_hex(), &module).await?;
        Ok(created)
    }

    async fn create(&self, mut spec: ServiceSpec) -> Result<ServiceSpec, RpcError> {
        spec.generation = 1;
        spec.created_unix_ms = bramble_util::time::unix_millis();
        spec.validate().map_err(RpcError::bad_request)?;
        let result = self
            .meta
            .write(
                Command::PutIfVersion {
                    key: spec_key(&spec.name),
                    value: serde_json::to_vec(&spec).unwrap_or_default(),
                    expected_version: 0,
                },
                false,
            )
            .await?;
        match result {
            CommandResult::Written { .. } => Ok(spec),
            CommandResult::VersionMismatch { .. } => Err(RpcError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "a service named {:?} exists (bramble service scale, or rm it first)",
                    spec.name
                ),
            )),
            other => Err(RpcError::new(
                ErrorKind::Internal,
                format!("storing the service: {other:?}"),
            )),
        }
    }

    async fn scale(&self, request: ScaleRequest) -> Result<ServiceSpec, RpcError> {
        for _ in 0..10 {
            let (mut spec, version) = self.spec(&request.name).await?;
            // Scaling adds or removes replicas; the others keep running (same generation).
            spec.replicas = request.replicas;
            spec.validate().map_err(RpcError::bad_request)?;
            let result = self
                .meta
                .write(
                    Command::PutIfVersion {
                        key: spec_key(&spec.name),
                        value: serde_json::to_vec(&spec).unwrap_or_default(),
                        expected_version: version,
                    },
                    false,
                )
                .await?;
            if matches!(result, CommandResult::Written { .. }) {
                return Ok(spec);
            }
        }
        Err(RpcError::new(
            ErrorKind::Unavailable,
            "the service kept changing; try again",
        ))
    }

    /// Stores a new version of a service and opens a rolling update to it (the reconciler
    /// carries it out).
    async fn update(&self, request: UpdateRequest) -> Result<ServiceSpec, RpcError> {
        for _ in 0..10 {
            let (spec, version) = self.spec(&request.name).await?;
            let mut next = spec.clone();
            next.previous = None;
            if let Some((name, module)) = &request.module {
                next.module = Some(crate::modules::check_and_store(&self.meta, module).await?);
                next.program = name.clone();
            }
            match &request.command {
                // A module's arguments.
                Some(arguments) if next.module.is_some() => next.args = arguments.clone(),
                Some(command) => {
                    let (program, args) = command
                        .split_first()
                        .ok_or_else(|| RpcError::bad_request("the new command is empty"))?;
                    next.program = program.clone();
                    next.args = args.to_vec();
                }
                None => {}
            }
            next.env
                .retain(|(name, _)| !request.env_remove.contains(name));
            for (name, value) in &request.env_add {
                match next.env.iter_mut().find(|(existing, _)| existing == name) {
                    Some(entry) => entry.1 = value.clone(),
                    None => next.env.push((name.clone(), value.clone())),
                }
            }
            if let Some(user) = &request.user {
                next.user = Some(user.clone());
            }
            if let Some(grace) = request.stop_grace_ms {
                next.stop_grace_ms = grace;
            }
            if let Some(restart) = request.restart {
                next.restart = restart;
            }
            if request.remove_health {
                next.health = None;
            }
            if let Some(cpus) = request.cpus_millis {
                next.cpus_millis = cpus;
            }
            if let Some(memory) = request.memory_bytes {
                next.memory_bytes = memory;
            }
            if let Some(health) = &request.health {
                next.health = Some(health.clone());
            }
            if let Some(parallelism) = request.parallelism {
                next.update.parallelism = parallelism;
            }
            if let Some(delay) = request.delay_ms {
                next.update.delay_ms = delay;
            }
            if let Some(action) = request.on_failure {
                next.update.on_failure = action;
            }
            if let Some(monitor) = request.monitor_ms {
                next.update.monitor_ms = monitor;
            }
            let new_version = request.force || next.runs_differently(&spec);
            let mut operations = Vec::new();
            if new_version {
                let previous_generation = spec
                    .previous
                    .as_ref()
                    .map_or(0, |previous| previous.generation);
                next.generation = spec.generation.max(previous_generation) + 1;
                let mut previous = spec.clone();
                previous.previous = None;
                next.previous = Some(Box::new(previous));
                let rollout =
                    Rollout::start(RolloutKind::Update, spec.generation, next.generation, None);
                operations.push(Operation::Put {
                    key: rollout_key(&spec.name),
                    value: serde_json::to_vec(&rollout).unwrap_or_default(),
                });
            } else if next.update == spec.update {
                return Err(RpcError::bad_request(format!(
                    "nothing to change in service {:?} (--force replaces its replicas anyway)",
                    spec.name
                )));
            } else {
                // Only the update policy changed: the version and its replicas stay.
                next.previous = spec.previous.clone();
            }
            next.validate().map_err(RpcError::bad_request)?;
            operations.push(Operation::Put {
                key: spec_key(&spec.name),
                value: serde_json::to_vec(&next).unwrap_or_default(),
            });
            let result = self
                .meta
                .write(
                    Command::Batch {
                        conditions: vec![Condition {
                            key: spec_key(&spec.name),
                            version,
                        }],
                        operations,
                    },
                    false,
                )
                .await?;
            if matches!(result, CommandResult::BatchApplied { .. }) {
                if let Some((_, module)) = &request.module {
                    // As in `create_wasm`: the module outlives a removal in between.
                    crate::modules::store(&self.meta, &blake3::hash(module).to_hex(), module)
                        .await?;
                }
                return Ok(next);
            }
        }
        Err(RpcError::new(
            ErrorKind::Unavailable,
            "the service kept changing; try again",
        ))
    }

    /// Returns a service to its previous version (a rolling update back).
    async fn rollback(&self, name: &str) -> Result<ServiceSpec, RpcError> {
        for _ in 0..10 {
            let (spec, version) = self.spec(name).await?;
            let Some((conditions, operations)) = super::rollout::rollback_batch(
                &spec,
                version,
                "asked for by service rollback".to_string(),
            ) else {
                return Err(RpcError::bad_request(format!(
                    "service {name:?} has no previous version to return to"
                )));
            };
            let restored = super::rollout::rolled_back(&spec).unwrap_or(spec);
            let result = self
                .meta
                .write(
                    Command::Batch {
                        conditions,
                        operations,
                    },
                    false,
                )
                .await?;
            if matches!(result, CommandResult::BatchApplied { .. }) {
                return Ok(restored);
            }
        }
        Err(RpcError::new(
            ErrorKind::Unavailable,
            "the service kept changing; try again",
        ))
    }

    async fn remove(&self, name: &str) -> Result<ServiceSpec, RpcError> {
        let (spec, version) = self.spec(name).await?;
        let result = self
            .meta
            .write(
                Command::Batch {
                    conditions: vec![Condition {
                        key: spec_key(name),
                        version,
                    }],
                    operations: vec![
                        Operation::Delete {
                            key: spec_key(name),
                        },
                        Operation::DeletePrefix {
                            prefix: assign_prefix(name),
                        },
                        Operation::Delete {
                            key: rollout_key(name),
                        },
                    ],
                },
                false,
            )
            .await?;
        match result {
            CommandResult::BatchApplied { .. } => Ok(spec),
            _ => Err(RpcError::new(
                ErrorKind::Unavailable,
                "the service changed meanwhile; try again",
            )),
        }
    }

    async fn gather(&self, service: Option<&str>) -> (Vec<ReplicaStatus>, Vec<String>) {
        gather_replicas(
            &self.node,
            &self.membership,
            &self.rpc,
            &self.supervisor,
            service,
        )
        .await
    }

    async fn ps(&self, name: &str) -> Result<PsAnswer, RpcError> {
        let (spec, _) = self.spec(name).await?;
        let (replicas, unreachable) = self.gather(Some(name)).await;
        let placed: BTreeMap<u32, Assignment> = scan_all(&self.meta, &assign_prefix(name))
            .await?
            .into_iter()
            .filter_map(|(key, value)| {
                let (_, index) = parse_assign_key(&key)?;
                Some((index, serde_json::from_slice(&value).ok()?))
            })
            .collect();
        let withheld = placed
            .iter()
            .filter(|(_, assignment)| assignment.withheld_since_unix_ms.is_some())
            .map(|(index, _)| *index)
            .collect();
        let handovers = placed
            .iter()
            .filter_map(|(index, assignment)| {
                let handover = assignment.handover.as_ref()?;
                Some(HandoverView {
                    index: *index,
                    from_node: handover.from_node.clone(),
                    to_node: assignment.node.clone(),
                    since_unix_ms: handover.since_unix_ms,
                })
            })
            .collect();
        // Why a replica has no node: placement is a pure function, so any node can tell
        // (the reconciler may be elsewhere).
        let reasons: BTreeMap<u32, String> = if placed.len() < spec.replicas as usize {
            self.unplaced_reasons(&spec).await?
        } else {
            BTreeMap::new()
        };
        let pending = (0..spec.replicas)
            .filter(|index| !placed.contains_key(index))
            .map(|index| {
                let reason = reasons
                    .get(&index)
                    .cloned()
                    .unwrap_or_else(|| "waiting for the reconciler to place it".to_string());
                (index, reason)
            })
            .collect();
        let rollout = self
            .meta
            .read(&rollout_key(name), Consistency::Linearizable, false)
            .await?
            .and_then(|value| serde_json::from_slice(&value.value).ok());
        Ok(PsAnswer {
            spec,
            replicas,
            pending,
            unreachable,
            rollout,
            withheld,
            handovers,
        })
    }

    /// What placement says of `spec`'s replicas that no node can take, by index.
    async fn unplaced_reasons(
        &self,
        spec: &ServiceSpec,
    ) -> Result<BTreeMap<u32, String>, RpcError> {
        let (mut specs, current, nodes) = placement_inputs(&self.meta, &self.membership).await?;
        specs.insert(spec.name.clone(), spec.clone());
        Ok(
            reconcile(&specs, &current, &nodes, bramble_util::time::unix_millis())
                .unplaced
                .into_iter()
                .filter(|(service, _, _)| *service == spec.name)
                .map(|(_, index, reason)| (index, reason))
                .collect(),
        )
    }

    async fn list(&self) -> Result<Vec<ServiceSummary>, RpcError> {
        let specs: Vec<ServiceSpec> = scan_all(&self.meta, SPEC_PREFIX)
            .await?
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .collect();
        let (replicas, _) = self.gather(None).await;
        let rollouts: BTreeMap<String, Rollout> = scan_all(&self.meta, ROLLOUT_PREFIX)
            .await?
            .into_iter()
            .filter_map(|(key, value)| {
                let name = key.strip_prefix(ROLLOUT_PREFIX)?.to_string();
                Some((name, serde_json::from_slice(&value).ok()?))
            })
            .collect();
        Ok(specs
            .into_iter()
            .map(|spec| ServiceSummary {
                version: spec.generation,
                // A finished rollout is history (`ps` shows it); one running or paused
                // is news.
                update: rollouts
                    .get(&spec.name)
                    .filter(|rollout| rollout.state != RolloutState::Completed)
                    .map(Rollout::describe),
                running: replicas
                    .iter()
                    .filter(|replica| replica.service == spec.name && replica.state == "running")
                    .count() as u32,
                name: spec.name.clone(),
                replicas: spec.replicas,
                command: spec.describe_command(),
                port: spec.port,
                restart: spec.restart.name().to_string(),
                limits: spec.limits().describe(),
            })
            .collect())
    }

    /// A replica's log: its tail, or what follows `request.after` (across one rotation).
    fn logs(&self, request: &LogsRequest) -> Result<LogChunk, RpcError> {
        use std::os::unix::fs::MetadataExt;
        bramble_util::names::validate_name("a service name", &request.name)
            .map_err(|error| RpcError::bad_request(error.to_string()))?;
        let (current, rotated) = self.supervisor.log_paths(&request.name, request.index);
        let identity = |path: &std::path::Path| std::fs::metadata(path).ok().map(|m| m.ino());
        let read_from = |path: &std::path::Path, offset: u64, most: u64| -> Vec<u8> {
            use std::io::{Read, Seek, SeekFrom};
            let Ok(mut file) = std::fs::File::open(path) else {
                return Vec::new();
            };
            let mut bytes = Vec::new();
            if file.seek(SeekFrom::Start(offset)).is_ok() {
                let _ = file.take(most).read_to_end(&mut bytes);
            }
            bytes
        };
        let current_file = identity(&current);
        let length = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let Some(after) = request.after else {
            let wanted = request.tail_bytes.clamp(1, MAX_LOG_BYTES);
            let current_length = length(&current);
            let mut bytes = Vec::new();
            if current_length < wanted {
                let rotated_length = length(&rotated);
                let from_rotated = (wanted - current_length).min(rotated_length);
                bytes = read_from(&rotated, rotated_length - from_rotated, from_rotated);
            }
            bytes.extend(read_from(
                &current,
                current_length.saturating_sub(wanted),
                wanted,
            ));
            if bytes.is_empty() && current_file.is_none() {
                return Err(RpcError::new(
                    ErrorKind::NotFound,
                    format!(
                        "node {} keeps no log of {} replica {}",
                        self.node, request.name, request.index
                    ),
                ));
            }
            return Ok(LogChunk {
                bytes,
                position: current_file.map(|file| LogPosition {
                    file,
                    offset: current_length,
                }),
            });
        };
        let mut bytes = Vec::new();
        let mut position = after;
        if current_file != Some(after.file) {
            // Rotated since: the rest of the old file (now the rotated one), then the new.
            if identity(&rotated) == Some(after.file) {
                bytes = read_from(&rotated, after.offset, MAX_LOG_BYTES);
            }
            position = LogPosition {
                file: current_file.unwrap_or(0),
                offset: 0,
            };
        }
        let room = MAX_LOG_BYTES.saturating_sub(bytes.len() as u64);
        let more = read_from(&current, position.offset, room);
        position.offset += more.len() as u64;
        bytes.extend(more);
        Ok(LogChunk {
            bytes,
            position: Some(position),
        })
    }
}

/// Every live member's replicas (of `service`, or all), asked at once; and the members
/// that did not answer.
pub(crate) async fn gather_replicas(
    node: &str,
    membership: &Membership,
    rpc: &RpcClient,
    supervisor: &Supervisor,
    service: Option<&str>,
) -> (Vec<ReplicaStatus>, Vec<String>) {
    let members = membership.nodes().await;
    let mut calls = Vec::new();
    for member in members {
        if !matches!(member.state, NodeState::Alive | NodeState::Suspect) || member.name == node {
            continue;
        }
        let rpc = rpc.clone();
        let name = service.map(str::to_string);
        // Asked at once: one silent node costs the answer two seconds, not each.
        calls.push((
            member.name,
            tokio::spawn(async move {
                let call =
                    rpc.call_reusing::<_, Vec<ReplicaStatus>>(member.addr, METHOD_LOCAL, &name);
                tokio::time::timeout(Duration::from_secs(2), call).await
            }),
        ));
    }
    let mut replicas = supervisor.statuses(service);
    let mut unreachable = Vec::new();
    for (node, call) in calls {
        match call.await {
            Ok(Ok(Ok(found))) => replicas.extend(found),
            _ => unreachable.push(node),
        }
    }
    replicas.sort_by(|a, b| (&a.service, a.index, &a.node).cmp(&(&b.service, b.index, &b.node)));
    (replicas, unreachable)
}
