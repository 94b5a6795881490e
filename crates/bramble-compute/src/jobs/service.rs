//! `jobs.*`: submitting, listing, showing and cancelling jobs (any node answers, asking
//! the scheduler for what only it knows), a task's kept output (on the node that ran it)
//! and the workers' exchange with the scheduler (member nodes only, each for itself).

use std::sync::Arc;

use bramble_meta::api::Consistency;
use bramble_meta::types::{Command, CommandResult, Condition, Operation};
use bramble_net::rpc::{Request, encode};
use bramble_net::{
    Caller, ErrorKind, Handler, IncomingCall, ResponseWriter, RpcClient, RpcError, StreamHandler,
};

use super::admin::*;
use super::record::*;
use super::runner::Runner;
use super::scheduler::{Scheduler, read_json, read_rows, scan_all};
use super::spec::{JobId, JobSpec};

/// Finished jobs `bramble jobs` shows without `--all`.
const RECENT_FINISHED: usize = 20;

pub struct JobsService {
    pub(crate) node: String,
    /// Where `bench disk` writes: the node's data directory.
    pub(crate) data_dir: std::path::PathBuf,
    pub(crate) meta: Arc<bramble_meta::Meta>,
    pub(crate) membership: Arc<bramble_cluster::Membership>,
    pub(crate) rpc: RpcClient,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) runner: Arc<Runner>,
}

fn caller_name(caller: &Caller) -> String {
    match caller {
        Caller::Node(name) => format!("node/{name}"),
        Caller::Admin(name) => format!("admin/{name}"),
        Caller::Anonymous => "anonymous".to_string(),
    }
}

#[async_trait::async_trait]
impl Handler for JobsService {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError> {
        request.require_authenticated()?;
        match request.method {
            "submit" => {
                let spec: JobSpec = request.decode()?;
                encode(&self.submit(spec, &caller_name(request.caller)).await?)
            }
            "submit_wasm" => {
                let submission: SubmitWasm = request.decode()?;
                encode(
                    &self
                        .submit_wasm(submission, &caller_name(request.caller))
                        .await?,
                )
            }
            "bench_cpu" => {
                if !matches!(request.caller, Caller::Admin(_)) {
                    return Err(RpcError::new(
                        ErrorKind::Unauthorized,
                        "bench cpu is for the cluster's administrator",
                    ));
                }
                let bench: crate::cpu_bench::CpuBenchRequest = request.decode()?;
                encode(&self.bench_cpu(bench).await?)
            }
            "bench_disk" => {
                if !matches!(request.caller, Caller::Admin(_)) {
                    return Err(RpcError::new(
                        ErrorKind::Unauthorized,
                        "bench disk is for the cluster's administrator",
                    ));
                }
                let bench: crate::disk_bench::DiskBenchRequest = request.decode()?;
                request_bench_disk(&self.node, &self.data_dir, bench).await
            }
            "list" => {
                let query: ListJobs = request.decode()?;
                encode(&self.list(query.all).await?)
            }
            "job" => {
                let query: JobQuery = request.decode()?;
                encode(&self.job(query).await?)
            }
            "cancel" => {
                let id: JobId = request.decode()?;
                encode(&self.cancel(id, &caller_name(request.caller)).await?)
            }
            "output" => {
                let query: OutputRequest = request.decode()?;
                encode(&self.runner.read_output(&query)?)
            }
            "nodes" => {
                let forwarded: bool = request.decode()?;
                encode(&self.workers(forwarded).await?)
            }
            "exchange" => {
                let exchange: ExchangeRequest = request.decode()?;
                match request.caller {
                    Caller::Node(name) if *name == exchange.node => {}
                    _ => {
                        return Err(RpcError::new(
                            ErrorKind::Unauthorized,
                            "a worker exchange comes from the member node it names",
                        ));
                    }
                }
                if exchange.running.len() > 100_000 || exchange.finished.len() > 100_000 {
                    return Err(RpcError::bad_request("an exchange lists too many tasks"));
                }
                encode(&self.scheduler.exchange(exchange).await?)
            }
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("jobs has no method {other:?}"),
            )),
        }
    }
}

/// `jobs.launch` is a stream (see `launch.rs`); every other method is unary.
#[async_trait::async_trait]
impl StreamHandler for JobsService {
    fn streams(&self, method: &str) -> bool {
        method == "launch"
    }

    async fn handle(&self, call: IncomingCall, response: ResponseWriter) -> Result<(), RpcError> {
        match call.method_name() {
            "launch" => super::launch::serve(&self.runner, call, response).await,
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("jobs has no stream method {other:?}"),
            )),
        }
    }
}

impl JobsService {
    /// Stores a job under the next id; the scheduler picks it up from the catalog.
    async fn submit(&self, mut spec: JobSpec, caller: &str) -> Result<JobId, RpcError> {
        spec.validate().map_err(RpcError::bad_request)?;
        if let Some(after) = spec.after
            && self
                .meta
                .read(&spec_key(after), Consistency::Linearizable, false)
                .await?
                .is_none()
        {
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!("--after {after}: there is no job {after}"),
            ));
        }
        spec.submitted_unix_ms = bramble_util::time::unix_millis();
        spec.submitted_by = caller.to_string();
        for _ in 0..20 {
            let current = self
                .meta
                .read(NEXT_ID_KEY, Consistency::Linearizable, false)
                .await?;
            let (id, version) = match &current {
                Some(value) => (
                    std::str::from_utf8(&value.value)
                        .ok()
                        .and_then(|text| text.parse::<JobId>().ok())
                        .unwrap_or(1),
                    value.version,
                ),
                None => (1, 0),
            };
            spec.id = id;
            let command = Command::Batch {
                conditions: vec![Condition {
                    key: NEXT_ID_KEY.to_string(),
                    version,
                }],
                operations: vec![
                    Operation::Put {
                        key: NEXT_ID_KEY.to_string(),
                        value: (id + 1).to_string().into_bytes(),
                    },
                    Operation::Put {
                        key: spec_key(id),
                        value: serde_json::to_vec(&spec).unwrap_or_default(),
                    },
                    Operation::Put {
                        key: state_key(id),
                        value: JobRecord::queued().encode(),
                    },
                ],
            };
            match self.meta.write(command, false).await? {
                CommandResult::BatchApplied { .. } => return Ok(id),
                CommandResult::ConditionFailed { .. } => continue,
                other => {
                    return Err(RpcError::new(
                        ErrorKind::Internal,
                        format!("storing the job: {other:?}"),
                    ));
                }
            }
        }
        Err(RpcError::new(
            ErrorKind::Unavailable,
            "too many jobs submitted at once; try again",
        ))
    }

    /// Checks a module, stores it in the catalog under its hash (once), then the job.
    async fn submit_wasm(&self, submission: SubmitWasm, caller: &str) -> Result<JobId, RpcError> {
        let SubmitWasm { mut spec, module } = submission;
        if module.len() as u64 > super::spec::MAX_MODULE_BYTES {
            return Err(RpcError::bad_request(format!(
                "the module has {} bytes; at most {} MiB",
                module.len(),
                super::spec::MAX_MODULE_BYTES >> 20
            )));
        }
        bramble_wasm::inspect(&module).map_err(|error| RpcError::bad_request(error.to_string()))?;
        let hash = blake3::hash(&module).to_hex().to_string();
        match &mut spec.work {
            super::spec::Work::Wasm {
                module: named,
                module_bytes,
                ..
            } => {
                *named = hash.clone();
                *module_bytes = module.len() as u64;
            }
            _ => return Err(RpcError::bad_request("submit_wasm needs a WebAssembly job")),
        }
        spec.validate().map_err(RpcError::bad_request)?;
        crate::modules::store(&self.meta, &hash, &module).await?;
        let id = self.submit(spec, caller).await?;
        // The scheduler removes modules no job names; one stored just before its job
        // could have gone in between: store it again (an attempt that found it missing
        // failed and is retried).
        crate::modules::store(&self.meta, &hash, &module).await?;
        Ok(id)
    }

    /// Runs the CPU test here, at the priority tasks run at (not the agent's raised one);
    /// a run at the default max prime becomes this node's speed, now and after a restart.
    async fn bench_cpu(
        &self,
        request: crate::cpu_bench::CpuBenchRequest,
    ) -> Result<crate::cpu_bench::CpuBenchResult, RpcError> {
        request.validate().map_err(RpcError::bad_request)?;
        let node = self.node.clone();
        let result = bramble_util::scheduling::run_at_original_priority(move || {
            crate::cpu_bench::run(&request, &node)
        })
        .await
        .unwrap_or_else(|| Err("the benchmark panicked".to_string()))
        .map_err(RpcError::bad_request)?;
        if let Some(speed) = crate::cpu_bench::speed_of(&result) {
            self.runner.set_speed(speed);
            self.meta
                .write(
                    Command::Put {
                        key: super::admin::speed_key(&self.node),
                        value: serde_json::to_vec(&speed).unwrap_or_default(),
                    },
                    false,
                )
                .await?;
        }
        Ok(result)
    }

    async fn list(&self, all: bool) -> Result<Vec<JobSummary>, RpcError> {
        let states = scan_all(&self.meta, STATE_PREFIX).await?;
        let specs: std::collections::BTreeMap<JobId, JobSpec> = scan_all(&self.meta, SPEC_PREFIX)
            .await?
            .into_iter()
            .filter_map(|(key, value)| {
                let id = id_of_key(&key, SPEC_PREFIX)?;
                serde_json::from_slice(&value).ok().map(|spec| (id, spec))
            })
            .collect();
        let live = self.scheduler.live_summaries();
        let mut summaries = Vec::new();
        for (key, value) in states.iter().rev() {
            let Some(id) = id_of_key(key, STATE_PREFIX) else {
                continue;
            };
            let Ok(record) = JobRecord::decode(value) else {
                continue;
            };
            let Some(spec) = specs.get(&id) else {
                continue;
            };
            summaries.push(JobSummary {
                id,
                work: spec.work.describe(),
                tasks: spec.tasks,
                done: live.get(&id).copied().unwrap_or(record.done.len()),
                state: record.state,
                policy: spec.policy.name().to_string(),
                submitted_unix_ms: spec.submitted_unix_ms,
                finished_unix_ms: record.finished_unix_ms,
                scheduler: record.scheduler.clone(),
            });
        }
        if !all {
            let mut finished_shown = 0;
            summaries.retain(|summary| {
                if !summary.state.is_final() {
                    return true;
                }
                finished_shown += 1;
                finished_shown <= RECENT_FINISHED
            });
        }
        summaries.reverse();
        Ok(summaries)
    }

    /// The scheduler's address, if another node holds the lease.
    async fn scheduler_address(&self) -> Option<std::net::SocketAddr> {
        let holder = self
            .meta
            .lease_record(SCHEDULER_LEASE)
            .and_then(|(record, _)| record.holder)?;
        if holder == self.node {
            return None;
        }
        self.membership
            .nodes()
            .await
            .into_iter()
            .find(|node| node.name == holder)
            .map(|node| node.addr)
    }

    async fn job(&self, query: JobQuery) -> Result<JobView, RpcError> {
        if let Some(view) = self.scheduler.live_view(query.id, query.with_tasks) {
            return Ok(view);
        }
        if !query.forwarded
            && let Some(address) = self.scheduler_address().await
        {
            let forwarded = JobQuery {
                forwarded: true,
                ..query.clone()
            };
            let call = self
                .rpc
                .call_reusing::<_, JobView>(address, METHOD_JOB, &forwarded);
            if let Ok(Ok(view)) =
                tokio::time::timeout(std::time::Duration::from_secs(3), call).await
            {
                return Ok(view);
            }
        }
        let spec = read_json::<JobSpec>(&self.meta, &spec_key(query.id))
            .await?
            .ok_or_else(|| {
                RpcError::new(
                    ErrorKind::NotFound,
                    format!(
                        "there is no job {} (finished jobs are kept a day)",
                        query.id
                    ),
                )
            })?;
        let record = match self
            .meta
            .read(&state_key(query.id), Consistency::Linearizable, false)
            .await?
        {
            Some(value) => JobRecord::decode(&value.value)
                .map_err(|error| RpcError::new(ErrorKind::Internal, error))?,
            None => JobRecord::queued(),
        };
        let tasks = if query.with_tasks {
            read_rows(&self.meta, query.id, spec.tasks).await?
        } else {
            Vec::new()
        };
        Ok(JobView {
            spec,
            record,
            live: false,
            running: 0,
            pending: 0,
            running_by_node: Default::default(),
            tasks,
        })
    }

    async fn cancel(&self, id: JobId, caller: &str) -> Result<JobState, RpcError> {
        let record = match self
            .meta
            .read(&state_key(id), Consistency::Linearizable, false)
            .await?
        {
            Some(value) => JobRecord::decode(&value.value)
                .map_err(|error| RpcError::new(ErrorKind::Internal, error))?,
            None => {
                return Err(RpcError::new(
                    ErrorKind::NotFound,
                    format!("there is no job {id}"),
                ));
            }
        };
        if record.state.is_final() {
            return Ok(record.state);
        }
        self.meta
            .write(
                Command::Put {
                    key: cancel_key(id),
                    value: caller.as_bytes().to_vec(),
                },
                false,
            )
            .await?;
        Ok(JobState::Cancelled)
    }

    async fn workers(&self, forwarded: bool) -> Result<Vec<WorkerSummary>, RpcError> {
        if let Some(workers) = self.scheduler.workers() {
            return Ok(workers);
        }
        if !forwarded && let Some(address) = self.scheduler_address().await {
            return self
                .rpc
                .call_reusing(address, METHOD_NODES, &true)
                .await
                .map_err(|error| {
                    error
                        .remote()
                        .cloned()
                        .unwrap_or_else(|| RpcError::new(ErrorKind::Unavailable, error.to_string()))
                });
        }
        Err(RpcError::new(
            ErrorKind::Unavailable,
            "no jobs scheduler is reachable at the moment",
        ))
    }
}

/// `jobs.bench_disk`: the disk test on a blocking thread, at the agent's original priority
/// (as `bench cpu`), answered encoded.
async fn request_bench_disk(
    node: &str,
    data_dir: &std::path::Path,
    request: crate::disk_bench::DiskBenchRequest,
) -> Result<Vec<u8>, RpcError> {
    request.validate().map_err(RpcError::bad_request)?;
    let (node, data_dir) = (node.to_string(), data_dir.to_path_buf());
    let result = bramble_util::scheduling::run_at_original_priority(move || {
        crate::disk_bench::run(&request, &node, &data_dir)
    })
    .await
    .unwrap_or_else(|| Err("the benchmark panicked".to_string()))
    .map_err(RpcError::bad_request)?;
    encode(&result)
}
