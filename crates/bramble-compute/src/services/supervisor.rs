//! The replica supervisor every node runs: it follows the placements in its catalog
//! replica (`services/assign/...` naming this node), starts each replica as a supervised
//! process (see `crate::process`: its own process group, ordinary priority, an
//! unprivileged user unless `root` was asked for), restarts it by the service's policy with
//! back-off, keeps its output in a rotated log, and stops it — SIGTERM to the group, SIGKILL
//! after the grace period — when the placement goes away (scaled down, removed, moved).
//! A replica moving off this node because it is drained keeps running here, on the
//! version and port it had, until the placement's hand-over ends (the new copy is ready).
//!
//! Back-off: 100 ms after the first failure, doubling to at most 30 s, back to 100 ms once a
//! run lasted a minute. Swarm waits 5 s before every restart and systemd 100 ms (with a
//! burst limit that then gives up); this restarts a one-off crash at once and leaves a
//! crash loop costing a restart every 30 s, never giving up.
//!
//! `--cpus` and `--memory` are applied at every start: a fresh cgroup per run (see
//! `crate::limits`), which the process enters before it runs and which is removed when
//! the run ends, so one run's OOM count or leftover process never blurs the next.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bramble_meta::Meta;
use bramble_meta::api::Consistency;
use bramble_util::WorkerContext;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::spec::*;
use crate::limits::{Confinement, NodeCgroups, ProcessCgroup};
use crate::process::{Identity, signal_group};

/// First and longest restart delay.
const FIRST_DELAY: Duration = Duration::from_millis(100);
const LONGEST_DELAY: Duration = Duration::from_secs(30);
/// A run this long resets the back-off.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// A replica's log is rotated at this size (one old file kept).
pub const LOG_ROTATE_BYTES: u64 = 1024 * 1024;

/// One replica's state, for `service ps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub service: String,
    pub index: u32,
    pub node: String,
    /// starting, running, backoff, exited, failed, stopping.
    pub state: String,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub user: String,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Why it is not running (a program that does not exist, a user that does not).
    pub error: Option<String>,
    /// When it entered its state.
    pub since_unix_ms: u64,
    /// The health check's verdict: starting, healthy, or unhealthy with the last reason.
    #[serde(default)]
    pub health: Option<String>,
    /// Why its limits are weaker than asked (a controller the node lacks, the
    /// address-space fallback, a limit above what the node has).
    #[serde(default)]
    pub warning: Option<String>,
    pub generation: u64,
}

/// (service, index).
type ReplicaKey = (String, u32);
/// A replica's status, shared by its supervising task and the status calls.
type SharedStatus = Arc<Mutex<ReplicaStatus>>;

struct Replica {
    generation: u64,
    stop: watch::Sender<bool>,
    status: Arc<Mutex<ReplicaStatus>>,
}

pub struct Supervisor {
    node: String,
    cluster_id: String,
    logs: PathBuf,
    meta: Arc<Meta>,
    /// Where replicas' cgroups are made.
    cgroups: Arc<NodeCgroups>,
    /// WebAssembly modules replicas run, fetched from the catalog.
    modules: crate::modules::ModuleCache,
    replicas: Mutex<BTreeMap<(String, u32), Replica>>,
    /// Replicas being stopped (their processes may still be exiting).
    stopping: Mutex<BTreeMap<ReplicaKey, SharedStatus>>,
    /// A replica finished stopping: converge again (a new generation may wait for it).
    stopped_one: tokio::sync::Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Supervisor {
    pub fn new(
        node: &str,
        cluster_id: &str,
        data_dir: &Path,
        meta: Arc<Meta>,
        cgroups: Arc<NodeCgroups>,
    ) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            node: node.to_string(),
            cluster_id: cluster_id.to_string(),
            logs: data_dir.join("services").join("logs"),
            meta,
            cgroups,
            modules: crate::modules::ModuleCache::new(data_dir),
            replicas: Mutex::new(BTreeMap::new()),
            stopping: Mutex::new(BTreeMap::new()),
            stopped_one: tokio::sync::Notify::new(),
        })
    }

    /// This node's replicas (and those still stopping), optionally of one service.
    pub fn statuses(&self, service: Option<&str>) -> Vec<ReplicaStatus> {
        let mut found: Vec<ReplicaStatus> = lock(&self.replicas)
            .iter()
            .filter(|((name, _), _)| service.is_none_or(|wanted| wanted == name))
            .map(|(_, replica)| lock(&replica.status).clone())
            .collect();
        found.extend(
            lock(&self.stopping)
                .iter()
                .filter(|((name, _), _)| service.is_none_or(|wanted| wanted == name))
                .map(|(_, status)| lock(status).clone()),
        );
        found
    }

    pub fn running_count(&self) -> usize {
        lock(&self.replicas).len()
    }

    /// The log file of a replica on this node (and the rotated one before it).
    pub fn log_paths(&self, service: &str, index: u32) -> (PathBuf, PathBuf) {
        let directory = self.logs.join(service);
        (
            directory.join(format!("{index}.log")),
            directory.join(format!("{index}.log.1")),
        )
    }

    /// The worker `services-supervisor`.
    pub async fn run(self: Arc<Self>, worker: WorkerContext) -> Result<(), String> {
        let mut shutdown = worker.shutdown();
        let mut watch = self.meta.watch(PREFIX);
        loop {
            if let Err(error) = self.converge().await {
                worker.report_error(&error);
            }
            worker.set_progress(format!("{} replica(s)", self.running_count()));
            tokio::select! {
                _ = shutdown.wait() => break,
                change = watch.next() => {
                    if change.is_none() {
                        break;
                    }
                    // Take every queued change before converging once.
                    while watch.try_next().is_some() {}
                }
                _ = self.stopped_one.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        self.stop_all().await;
        self.cgroups.remove_parents();
        Ok(())
    }

    /// Stops every replica here and waits for them (the agent is stopping).
    async fn stop_all(&self) {
        let all: Vec<(String, u32)> = lock(&self.replicas).keys().cloned().collect();
        for key in all {
            self.stop_replica(&key);
        }
        let deadline = Instant::now() + Duration::from_secs(12);
        while !lock(&self.stopping).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop_replica(&self, key: &(String, u32)) {
        let Some(replica) = lock(&self.replicas).remove(key) else {
            return;
        };
        lock(&self.stopping).insert(key.clone(), replica.status.clone());
        let _ = replica.stop.send(true);
    }

    /// Brings this node's replicas to what its catalog replica says.
    async fn converge(self: &Arc<Self>) -> Result<(), String> {
        let specs: BTreeMap<String, ServiceSpec> = scan_local(&self.meta, SPEC_PREFIX)
            .await?
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_slice::<ServiceSpec>(&value).ok())
            .map(|spec| (spec.name.clone(), spec))
            .collect();
        let mut desired: BTreeMap<(String, u32), (ServiceSpec, Assignment)> = BTreeMap::new();
        for (key, value) in scan_local(&self.meta, ASSIGN_PREFIX).await? {
            let Some((service, index)) = parse_assign_key(&key) else {
                continue;
            };
            let Ok(assignment) = serde_json::from_slice::<Assignment>(&value) else {
                continue;
            };
            // Placed here, or moving away by hand-over and still run here meanwhile, as it
            // was (its version and port).
            let assignment = if assignment.node == self.node {
                assignment
            } else {
                match assignment.handover {
                    Some(handover) if handover.from_node == self.node => Assignment {
                        node: self.node.clone(),
                        port: handover.from_port,
                        generation: handover.from_generation,
                        withheld_since_unix_ms: None,
                        updated_unix_ms: 0,
                        handover: None,
                    },
                    _ => continue,
                }
            };
            if let Some(spec) = specs.get(&service)
                && index < spec.replicas
            {
                let mut version = spec.version(assignment.generation).clone();
                version.previous = None;
                desired.insert((service, index), (version, assignment));
            }
        }
        let running: Vec<((String, u32), u64)> = lock(&self.replicas)
            .iter()
            .map(|(key, replica)| (key.clone(), replica.generation))
            .collect();
        for (key, generation) in running {
            // A replica still running a version no longer kept (an update superseded
            // before reaching it) keeps running until the rolling update replaces it,
            // rather than being restarted here without leaving the balancers first.
            let keep = desired.get(&key).is_some_and(|(spec, assignment)| {
                spec.generation == generation || assignment.generation == generation
            });
            if !keep {
                info!(service = %key.0, index = key.1, "stopping a replica (no longer placed here, or its service changed)");
                self.stop_replica(&key);
            }
        }
        for (key, (spec, assignment)) in desired {
            if lock(&self.replicas).contains_key(&key) || lock(&self.stopping).contains_key(&key) {
                // A replica being stopped is started again once it is gone (next pass).
                continue;
            }
            self.start_replica(key, spec, assignment);
        }
        Ok(())
    }

    fn start_replica(
        self: &Arc<Self>,
        key: (String, u32),
        spec: ServiceSpec,
        assignment: Assignment,
    ) {
        let (stop, stopped) = watch::channel(false);
        let status = Arc::new(Mutex::new(ReplicaStatus {
            service: key.0.clone(),
            index: key.1,
            node: self.node.clone(),
            state: "starting".to_string(),
            pid: None,
            port: assignment.port,
            user: spec.user.clone().unwrap_or_else(|| "nobody".to_string()),
            restarts: 0,
            last_exit: None,
            error: None,
            since_unix_ms: bramble_util::time::unix_millis(),
            health: None,
            warning: None,
            generation: spec.generation,
        }));
        lock(&self.replicas).insert(
            key.clone(),
            Replica {
                generation: spec.generation,
                stop,
                status: status.clone(),
            },
        );
        let supervisor = self.clone();
        tokio::spawn(async move {
            supervisor
                .supervise(&key, &spec, assignment.port, &status, stopped)
                .await;
            set_state(&status, "stopped", None);
            lock(&supervisor.stopping).remove(&key);
            supervisor.stopped_one.notify_one();
        });
    }

    fn work_directory(&self, service: &str, index: u32) -> PathBuf {
        crate::process::scratch_directory(
            &self.cluster_id,
            &self.node,
            &format!("service-{service}-{index}"),
        )
    }

    async fn supervise(
        &self,
        key: &(String, u32),
        spec: &ServiceSpec,
        port: Option<u16>,
        status: &Arc<Mutex<ReplicaStatus>>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let (service, index) = (key.0.as_str(), key.1);
        let identity = match Identity::resolve(spec.user.as_deref()) {
            Ok(identity) => identity,
            Err(reason) => {
                set_state(status, "failed", Some(reason));
                let _ = stopped.wait_for(|stop| *stop).await;
                return;
            }
        };
        lock(status).user = identity.user_name();
        let work_directory = self.work_directory(service, index);
        let _ = std::fs::remove_dir_all(&work_directory);
        if let Err(error) = std::fs::create_dir(&work_directory) {
            set_state(
                status,
                "failed",
                Some(format!("creating {}: {error}", work_directory.display())),
            );
            let _ = stopped.wait_for(|stop| *stop).await;
            return;
        }
        identity.give(&work_directory);
        let (program, arguments) = match &spec.module {
            None => (spec.program.clone(), spec.args.clone()),
            Some(module) => {
                // Until the module is here (the catalog may be briefly unreachable), the
                // replica says why it waits.
                loop {
                    match self.place_module(module, &work_directory, &identity).await {
                        Ok(()) => break,
                        Err(reason) => set_state(status, "failed", Some(reason)),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stopped.wait_for(|stop| *stop) => {
                            let _ = std::fs::remove_dir_all(&work_directory);
                            return;
                        }
                    }
                }
                wasm_command(spec, port)
            }
        };
        let (log_path, rotated_path) = self.log_paths(service, index);
        if let Some(parent) = log_path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let mut failures_in_a_row = 0u32;
        let limits = spec.limits();
        loop {
            // A fresh cgroup for each run: its OOM count is this run's alone.
            let cgroup = (!limits.is_empty()).then(|| {
                ProcessCgroup::create(&self.cgroups, &format!("service-{service}-{index}"), limits)
            });
            let warning = cgroup.as_ref().and_then(ProcessCgroup::warning);
            if let Some(warning) = &warning {
                warn!(service, index, %warning, "a replica's limits are weaker than asked");
            }
            lock(status).warning = warning;
            let confinement = cgroup
                .as_ref()
                .map(ProcessCgroup::confinement)
                .unwrap_or_default();
            let mut command =
                identity.confined_command(&program, &arguments, &work_directory, confinement);
            command
                .env("BRAMBLE_SERVICE", service)
                .env("BRAMBLE_REPLICA", index.to_string())
                .env("BRAMBLE_NODE", &self.node)
                .envs(spec.env.iter().map(|(name, value)| (name, value)));
            if let Some(port) = port {
                command.env("PORT", port.to_string());
            }
            let started = Instant::now();
            // A port another program holds would make the replica fail in its own words
            // (or serve nothing at all): say so plainly, and try again after the back-off.
            let port_taken = port.and_then(|port| port_in_use(port).then_some(port));
            let spawned = match port_taken {
                Some(port) => Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "port {port} is already in use on node {} (another program listens there)",
                        self.node
                    ),
                )),
                None => command.spawn(),
            };
            let outcome = match spawned {
                Err(error) => {
                    let reason = if error.kind() == std::io::ErrorKind::AddrInUse {
                        error.to_string()
                    } else if error.kind() == std::io::ErrorKind::NotFound {
                        format!("{:?} was not found on node {}", spec.program, self.node)
                    } else if cgroup.is_some() {
                        // The error may be the child's, entering its cgroups.
                        format!(
                            "{:?}: {error} (starting it under its limits, {})",
                            spec.program,
                            limits.describe()
                        )
                    } else {
                        format!("{:?}: {error}", spec.program)
                    };
                    set_state(status, "failed", Some(reason.clone()));
                    warn!(service, index, %reason, "a replica could not start");
                    Err(reason)
                }
                Ok(mut child) => {
                    let group = child.id().map(|pid| pid as i32).unwrap_or(0);
                    {
                        let mut current = lock(status);
                        current.pid = child.id();
                        current.error = None;
                    }
                    set_state(status, "running", None);
                    let log = Arc::new(tokio::sync::Mutex::new(RotatingLog::new(
                        log_path.clone(),
                        rotated_path.clone(),
                    )));
                    let pumps = [
                        child
                            .stdout
                            .take()
                            .map(|stream| tokio::spawn(pump(stream, log.clone()))),
                        child
                            .stderr
                            .take()
                            .map(|stream| tokio::spawn(pump(stream, log.clone()))),
                    ];
                    let health = self.watch_health(
                        spec,
                        port,
                        status,
                        &identity,
                        &work_directory,
                        confinement,
                    );
                    let exit = tokio::select! {
                        exit = child.wait() => Some(Ok(exit)),
                        _ = stopped.wait_for(|stop| *stop) => None,
                        reason = health => Some(Err(reason)),
                    };
                    let exit: Result<std::process::ExitStatus, String> = match exit {
                        Some(Ok(exit)) => {
                            exit.map_err(|error| format!("waiting for the replica: {error}"))
                        }
                        Some(Err(unhealthy)) => {
                            // Restarted like a crash: SIGTERM, the grace, SIGKILL.
                            warn!(service, index, %unhealthy, "a replica failed its health check; restarting it");
                            signal_group(group, libc::SIGTERM);
                            let grace = Duration::from_millis(spec.stop_grace_ms);
                            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                                signal_group(group, libc::SIGKILL);
                                let _ = child.wait().await;
                            }
                            signal_group(group, libc::SIGKILL);
                            for pump in pumps.iter().flatten() {
                                pump.abort();
                            }
                            Err(format!("restarted: unhealthy ({unhealthy})"))
                        }
                        None => {
                            set_state(status, "stopping", None);
                            signal_group(group, libc::SIGTERM);
                            let grace = Duration::from_millis(spec.stop_grace_ms);
                            let exit = match tokio::time::timeout(grace, child.wait()).await {
                                Ok(exit) => exit,
                                Err(_) => {
                                    signal_group(group, libc::SIGKILL);
                                    child.wait().await
                                }
                            };
                            // Whatever the group left behind goes too.
                            signal_group(group, libc::SIGKILL);
                            for pump in pumps.into_iter().flatten() {
                                pump.abort();
                            }
                            lock(status).last_exit = exit.ok().map(describe_exit);
                            if let Some(cgroup) = cgroup {
                                cgroup.remove().await;
                            }
                            let _ = std::fs::remove_dir_all(&work_directory);
                            return;
                        }
                    };
                    match exit {
                        Ok(exit) => {
                            signal_group(group, libc::SIGKILL);
                            for pump in pumps.into_iter().flatten() {
                                let _ = tokio::time::timeout(Duration::from_secs(1), pump).await;
                            }
                            Ok(exit)
                        }
                        Err(error) => Err(error),
                    }
                }
            };
            let clean = matches!(&outcome, Ok(exit) if exit.success());
            let last_exit = match &outcome {
                Ok(exit) => describe_run(*exit, cgroup.as_ref()),
                Err(reason) => reason.clone(),
            };
            if let Some(cgroup) = cgroup {
                cgroup.remove().await;
            }
            {
                let mut current = lock(status);
                current.pid = None;
                current.last_exit = Some(last_exit);
            }
            let restart = match spec.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !clean,
                RestartPolicy::Never => false,
            };
            if !restart {
                set_state(status, if clean { "exited" } else { "failed" }, None);
                let _ = stopped.wait_for(|stop| *stop).await;
                let _ = std::fs::remove_dir_all(&work_directory);
                return;
            }
            if started.elapsed() >= HEALTHY_RUN {
                failures_in_a_row = 0;
            }
            let delay = FIRST_DELAY
                .saturating_mul(1u32 << failures_in_a_row.min(9))
                .min(LONGEST_DELAY);
            failures_in_a_row = failures_in_a_row.saturating_add(1);
            if lock(status).state != "failed" {
                set_state(status, "backoff", None);
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped.wait_for(|stop| *stop) => {
                    let _ = std::fs::remove_dir_all(&work_directory);
                    return;
                }
            }
            lock(status).restarts += 1;
        }
    }
}

/// The module's name in a replica's work directory.
const MODULE_FILE: &str = "service.wasm";
/// The most linear memory a module may grow to when the service sets no `--memory`.
const DEFAULT_MODULE_MEMORY: u64 = 256 * 1024 * 1024;

/// How the agent's own binary runs a replica's module: `bramble wasm-task`, with the
/// replica's port as its listening socket, no fuel limit (a service runs until stopped)
/// and `--memory` (or 256 MiB) as the guest memory cap.
fn wasm_command(spec: &ServiceSpec, port: Option<u16>) -> (String, Vec<String>) {
    let mut arguments = vec![
        "wasm-task".to_string(),
        "--module".to_string(),
        MODULE_FILE.to_string(),
        "--memory".to_string(),
        spec.memory_bytes
            .unwrap_or(DEFAULT_MODULE_MEMORY)
            .to_string(),
    ];
    if let Some(port) = port {
        arguments.extend(["--listen".to_string(), port.to_string()]);
    }
    arguments.push("--".to_string());
    arguments.extend(spec.args.iter().cloned());
    // The magic link reaches the agent's binary without traversing its directory, which
    // the replica's user may not be allowed to (as with /root/.cargo/bin).
    ("/proc/self/exe".to_string(), arguments)
}

impl Supervisor {
    /// Copies the module from this node's cache (fetching it first if need be) into the
    /// replica's work directory, readable by its user.
    async fn place_module(
        &self,
        module: &crate::modules::ModuleRef,
        work_directory: &Path,
        identity: &Identity,
    ) -> Result<(), String> {
        let cached = self.modules.fetch(&self.meta, module).await?;
        let target = work_directory.join(MODULE_FILE);
        std::fs::copy(&cached, &target)
            .map_err(|error| format!("copying the module for the replica: {error}"))?;
        identity.give(&target);
        Ok(())
    }

    /// Probes the replica until it is unhealthy (`retries` failures in a row); returns the
    /// last failure. Never returns for a service without a health check.
    async fn watch_health(
        &self,
        spec: &ServiceSpec,
        port: Option<u16>,
        status: &SharedStatus,
        identity: &Identity,
        work_directory: &Path,
        confinement: Confinement,
    ) -> String {
        let Some(check) = &spec.health else {
            return std::future::pending().await;
        };
        lock(status).health = Some("starting".to_string());
        tokio::time::sleep(Duration::from_millis(check.start_period_ms)).await;
        let mut failures = 0u32;
        loop {
            let timeout = Duration::from_millis(check.timeout_ms);
            let verdict = match &check.probe {
                Probe::Http { path } => probe_http(port.unwrap_or(0), path, timeout).await,
                Probe::Command { line } => {
                    // Inside the replica's limits, as Docker runs a check in the container.
                    let mut command = identity.confined_command(
                        "/bin/sh",
                        &["-c".to_string(), line.clone()],
                        work_directory,
                        confinement,
                    );
                    command
                        .envs(spec.env.iter().map(|(name, value)| (name, value)))
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null());
                    if let Some(port) = port {
                        command.env("PORT", port.to_string());
                    }
                    match command.spawn() {
                        Err(error) => Err(format!("the check could not start: {error}")),
                        Ok(mut probe) => match tokio::time::timeout(timeout, probe.wait()).await {
                            Ok(Ok(exit)) if exit.success() => Ok(()),
                            Ok(Ok(exit)) => Err(format!("the check {}", describe_exit(exit))),
                            Ok(Err(error)) => Err(format!("the check: {error}")),
                            Err(_) => {
                                let _ = probe.kill().await;
                                Err(format!("the check took over {} ms", check.timeout_ms))
                            }
                        },
                    }
                }
            };
            match verdict {
                Ok(()) => {
                    failures = 0;
                    lock(status).health = Some("healthy".to_string());
                }
                Err(reason) => {
                    failures += 1;
                    lock(status).health = Some(format!(
                        "unhealthy ({failures}/{}): {reason}",
                        check.retries
                    ));
                    if failures >= check.retries {
                        return reason;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(check.interval_ms)).await;
        }
    }
}

/// Whether a listening socket holds `port` (on any address): binding the wildcard fails.
/// The probe is closed at once; std sets SO_REUSEADDR, so connections of an earlier run
/// lingering in TIME_WAIT do not count.
fn port_in_use(port: u16) -> bool {
    matches!(
        std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse
    )
}

/// `GET path` on 127.0.0.1:port: healthy on a 2xx or 3xx status line.
async fn probe_http(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|error| format!("connecting to port {port}: {error}"))?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: bramble-health\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| format!("sending the check: {error}"))?;
        let mut head = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            let got = stream
                .read(&mut head[read..])
                .await
                .map_err(|error| format!("reading the answer: {error}"))?;
            if got == 0 {
                break;
            }
            read += got;
        }
        let line = String::from_utf8_lossy(&head[..read]).to_string();
        let code: Option<u16> = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok());
        match code {
            Some(code) if (200..400).contains(&code) => Ok(()),
            Some(code) => Err(format!("GET {path} answered {code}")),
            None => Err(format!("GET {path}: not an HTTP answer")),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("GET {path} took over {} ms", timeout.as_millis())),
    }
}

fn set_state(status: &Arc<Mutex<ReplicaStatus>>, state: &str, error: Option<String>) {
    let mut current = lock(status);
    if current.state != state {
        current.state = state.to_string();
        current.since_unix_ms = bramble_util::time::unix_millis();
    }
    if error.is_some() {
        current.error = error;
    }
}

/// How a run ended, told as an OOM kill where its memory cgroup counted one.
fn describe_run(exit: std::process::ExitStatus, cgroup: Option<&ProcessCgroup>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let killed = exit.signal() == Some(libc::SIGKILL);
    match cgroup.and_then(|cgroup| cgroup.describe_oom(killed)) {
        Some(oom) if killed => oom,
        Some(note) => format!("{}; {note}", describe_exit(exit)),
        None => describe_exit(exit),
    }
}

fn describe_exit(exit: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (exit.code(), exit.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(libc::SIGKILL)) => "killed by signal 9 (SIGKILL)".to_string(),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "ended".to_string(),
    }
}

/// A replica's log: appended, rotated at [`LOG_ROTATE_BYTES`] with one old file kept.
struct RotatingLog {
    path: PathBuf,
    rotated: PathBuf,
    file: Option<tokio::fs::File>,
    written: u64,
}

impl RotatingLog {
    fn new(path: PathBuf, rotated: PathBuf) -> RotatingLog {
        let written = std::fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
        RotatingLog {
            path,
            rotated,
            file: None,
            written,
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        if self.written + bytes.len() as u64 > LOG_ROTATE_BYTES {
            self.file = None;
            let _ = std::fs::rename(&self.path, &self.rotated);
            self.written = 0;
        }
        if self.file.is_none() {
            self.file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .ok();
        }
        if let Some(file) = self.file.as_mut()
            && file.write_all(bytes).await.is_ok()
        {
            self.written += bytes.len() as u64;
        }
    }
}

async fn pump(mut stream: impl AsyncRead + Unpin, log: Arc<tokio::sync::Mutex<RotatingLog>>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => log.lock().await.write(&buffer[..read]).await,
        }
    }
}

/// Every key and value under `prefix` in this node's replica.
async fn scan_local(meta: &Meta, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    crate::catalog::scan_prefix(meta, prefix, Consistency::Stale)
        .await
        .map_err(|error| format!("reading {prefix}: {error}"))
}
