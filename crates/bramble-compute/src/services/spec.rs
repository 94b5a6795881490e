//! What a service is, as created and kept in the catalog (`services/spec/<name>`), and
//! where its replicas are placed (`services/assign/<name>/<index>`, written only by the
//! reconciler). Everything here came from a user: [`ServiceSpec::validate`] bounds it.

use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "services/";
pub const SPEC_PREFIX: &str = "services/spec/";
pub const ASSIGN_PREFIX: &str = "services/assign/";
/// The state of each service's latest rolling update (`services/rollout/<name>`).
pub const ROLLOUT_PREFIX: &str = "services/rollout/";
/// The reconciler's lease.
pub const RECONCILER_LEASE: &str = "services/reconciler";
/// Most replicas of one service.
pub const MAX_REPLICAS: u32 = 1000;
/// Most arguments, environment variables and bytes of a command.
pub const MAX_ARGUMENTS: usize = 256;
pub const MAX_ENVIRONMENT: usize = 128;
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Longest grace between SIGTERM and SIGKILL.
pub const MAX_STOP_GRACE_MS: u64 = 10 * 60 * 1000;
/// `--cpus` bounds, in thousandths of a CPU: 0.01 (the kernel's smallest quota, 1 ms in
/// each 100 ms period) to 1024.
pub const MIN_CPU_MILLIS: u32 = 10;
pub const MAX_CPU_MILLIS: u32 = 1_024_000;
/// `--memory` bounds: below 4 MiB hardly a program starts; 1 TiB is past any board.
pub const MIN_MEMORY_BYTES: u64 = 4 * 1024 * 1024;
pub const MAX_MEMORY_BYTES: u64 = 1024 * 1024 * 1024 * 1024;

pub fn spec_key(name: &str) -> String {
    format!("{SPEC_PREFIX}{name}")
}

pub fn rollout_key(name: &str) -> String {
    format!("{ROLLOUT_PREFIX}{name}")
}

pub fn assign_prefix(name: &str) -> String {
    format!("{ASSIGN_PREFIX}{name}/")
}

pub fn assign_key(name: &str, index: u32) -> String {
    format!("{ASSIGN_PREFIX}{name}/{index:04}")
}

/// `(service, index)` of an assignment key.
pub fn parse_assign_key(key: &str) -> Option<(String, u32)> {
    let rest = key.strip_prefix(ASSIGN_PREFIX)?;
    let (name, index) = rest.split_once('/')?;
    Some((name.to_string(), index.parse().ok()?))
}

/// When a replica's process is started again after it ends (Swarm's `--restart-condition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit (the default, as Swarm's `any`).
    #[default]
    Always,
    /// Only after a non-zero exit or a signal.
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// A placement rule: `role=web`, `node=n2`, `node!=n3`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constraint {
    Role(String),
    Node(String),
    NotNode(String),
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Constraint, String> {
        let parsed = if let Some((key, value)) = text.split_once("!=") {
            match key.trim() {
                "node" => Constraint::NotNode(value.trim().to_string()),
                other => {
                    return Err(format!(
                        "constraint {text:?}: {other}!= is not known (node!=NAME)"
                    ));
                }
            }
        } else if let Some((key, value)) = text.split_once('=') {
            match key.trim() {
                "role" => Constraint::Role(value.trim().to_string()),
                "node" => Constraint::Node(value.trim().to_string()),
                other => {
                    return Err(format!(
                        "constraint {text:?}: {other} is not known (role=NAME, node=NAME, node!=NAME)"
                    ));
                }
            }
        } else {
            return Err(format!(
                "constraint {text:?}: write role=NAME, node=NAME or node!=NAME"
            ));
        };
        let value = match &parsed {
            Constraint::Role(value) | Constraint::Node(value) | Constraint::NotNode(value) => value,
        };
        bramble_util::names::validate_name("a constraint's value", value)
            .map_err(|error| error.to_string())?;
        Ok(parsed)
    }

    pub fn allows(&self, node: &str, roles: &[String]) -> bool {
        match self {
            Constraint::Role(role) => roles.iter().any(|own| own == role),
            Constraint::Node(name) => node == name,
            Constraint::NotNode(name) => node != name,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Constraint::Role(role) => format!("role={role}"),
            Constraint::Node(name) => format!("node={name}"),
            Constraint::NotNode(name) => format!("node!={name}"),
        }
    }
}

/// How a replica shows it is healthy (Docker's HEALTHCHECK, Nomad's check): probed every
/// `interval_ms` once `start_period_ms` has passed; `retries` failures in a row and the
/// replica is restarted (as Swarm replaces an unhealthy task).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// `GET <path>` on 127.0.0.1:PORT answers 2xx or 3xx.
    Http { path: String },
    /// A shell command line (run like the replica) exits 0.
    Command { line: String },
}

impl HealthCheck {
    pub fn validate(&self, port: Option<u16>) -> Result<(), String> {
        match &self.probe {
            Probe::Http { path } => {
                if port.is_none() {
                    return Err("--health-http needs --port (the replica's PORT)".to_string());
                }
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path
                        .chars()
                        .any(|character| character.is_ascii_control() || character == ' ')
                {
                    return Err(format!(
                        "--health-http {path:?}: a path starting with '/', without spaces, at most 1 KiB"
                    ));
                }
            }
            Probe::Command { line } => {
                if line.is_empty() || line.len() > 4096 || line.contains('\0') {
                    return Err("--health-cmd is 1 to 4096 bytes".to_string());
                }
            }
        }
        if !(100..=3_600_000).contains(&self.interval_ms)
            || !(100..=600_000).contains(&self.timeout_ms)
            || !(1..=100).contains(&self.retries)
            || self.start_period_ms > 3_600_000
        {
            return Err(
                "health: interval 100 ms to 1 h, timeout 100 ms to 10 min, retries 1 to 100, start period at most 1 h"
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// A service: N supervised replicas of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub program: String,
    pub args: Vec<String>,
    pub replicas: u32,
    /// Replica `i` gets `PORT = port + i` (distinct even where nodes share an address, as
    /// in the emulator).
    pub port: Option<u16>,
    pub env: Vec<(String, String)>,
    pub restart: RestartPolicy,
    /// At most this many replicas on one node (0: no limit).
    pub max_per_node: u32,
    pub constraints: Vec<Constraint>,
    /// The user replicas run as (default `nobody` when the agent is root; `root` must be
    /// asked for).
    pub user: Option<String>,
    pub stop_grace_ms: u64,
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// `--cpus`, in thousandths of a CPU (0.5 is 500), enforced by a cgroup.
    #[serde(default)]
    pub cpus_millis: Option<u32>,
    /// `--memory`, in bytes, enforced by a cgroup (or RLIMIT_AS where the memory
    /// controller is off).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// The version of what replicas run (command, environment, health check, user…): grows
    /// with every `service update`; scaling keeps it. Each placement names the generation
    /// its replica runs, which a rolling update moves forward a few replicas at a time.
    pub generation: u64,
    pub created_unix_ms: u64,
    /// A WebAssembly module replicas run (the agent's own interpreter, the same file on
    /// every architecture) instead of a program installed on the node; `program` is then
    /// the module's name for people, and `args` its arguments. With `--port`, the module
    /// gets the replica's port as a listening socket, descriptor 3.
    #[serde(default)]
    pub module: Option<crate::modules::ModuleRef>,
    /// How `service update` replaces replicas.
    #[serde(default)]
    pub update: UpdatePolicy,
    /// The version before the last update: what replicas not yet updated still run, and
    /// what `service rollback` returns to. Its own `previous` is always empty.
    #[serde(default)]
    pub previous: Option<Box<ServiceSpec>>,
}

impl ServiceSpec {
    pub fn validate(&self) -> Result<(), String> {
        bramble_util::names::validate_name("a service name", &self.name)
            .map_err(|error| error.to_string())?;
        if self.program.is_empty() || self.program.contains('\0') {
            return Err("the service's command is empty or holds a NUL byte".to_string());
        }
        if self.replicas > MAX_REPLICAS {
            return Err(format!(
                "--replicas is 0 to {MAX_REPLICAS}, not {}",
                self.replicas
            ));
        }
        if self.args.len() > MAX_ARGUMENTS || self.env.len() > MAX_ENVIRONMENT {
            return Err(format!(
                "at most {MAX_ARGUMENTS} arguments and {MAX_ENVIRONMENT} environment variables"
            ));
        }
        if let Some(port) = self.port {
            let last = u32::from(port) + self.replicas.saturating_sub(1);
            if port == 0 || last > 65535 {
                return Err(format!(
                    "--port {port}: replica i listens on {port}+i, which must stay a port (1 to 65535)"
                ));
            }
        }
        let mut bytes = self.program.len() + self.args.iter().map(String::len).sum::<usize>();
        for (name, value) in &self.env {
            let valid = !name.is_empty()
                && name.len() <= 128
                && !name.starts_with("BRAMBLE_")
                && name != "PORT"
                && name
                    .chars()
                    .all(|character| character.is_ascii_alphanumeric() || character == '_')
                && !name.starts_with(|character: char| character.is_ascii_digit());
            if !valid || value.contains('\0') {
                return Err(format!(
                    "environment variable {name:?}: names are letters, digits and '_' (not PORT or BRAMBLE_*), values without NUL"
                ));
            }
            bytes += name.len() + value.len();
        }
        if self.args.iter().any(|argument| argument.contains('\0')) {
            return Err("an argument holds a NUL byte".to_string());
        }
        if bytes > MAX_COMMAND_BYTES {
            return Err(format!(
                "the command and environment hold {bytes} bytes; at most {MAX_COMMAND_BYTES}"
            ));
        }
        if self.stop_grace_ms > MAX_STOP_GRACE_MS {
            return Err("--stop-grace is at most 10 minutes".to_string());
        }
        if let Some(health) = &self.health {
            health.validate(self.port)?;
        }
        if let Some(user) = &self.user {
            bramble_util::names::validate_name("--user", user)
                .map_err(|error| error.to_string())?;
        }
        self.update.validate()?;
        if let Some(module) = &self.module {
            module.validate()?;
        }
        if let Some(previous) = &self.previous {
            if previous.previous.is_some() || previous.name != self.name {
                return Err("a service's previous version is one level deep".to_string());
            }
            previous.validate()?;
        }
        if let Some(millis) = self.cpus_millis
            && !(MIN_CPU_MILLIS..=MAX_CPU_MILLIS).contains(&millis)
        {
            return Err(format!(
                "--cpus is 0.01 to 1024 (CPUs a replica may use), not {}",
                f64::from(millis) / 1000.0
            ));
        }
        if let Some(bytes) = self.memory_bytes
            && !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&bytes)
        {
            return Err(format!(
                "--memory is 4M to 1024G (1 TiB), not {bytes} bytes ({})",
                crate::limits::describe_bytes(bytes)
            ));
        }
        Ok(())
    }

    /// The version a placement of `generation` runs: this one, the previous one while a
    /// rolling update is under way, and this one for anything older (superseded twice: it
    /// is replaced at once rather than run from a version no longer kept).
    pub fn version(&self, generation: u64) -> &ServiceSpec {
        match &self.previous {
            Some(previous)
                if previous.generation == generation && generation != self.generation =>
            {
                previous
            }
            _ => self,
        }
    }

    /// Whether `other` runs something different (a replica of one would be restarted to
    /// run the other): everything but the name, scale, placement rules and bookkeeping.
    pub fn runs_differently(&self, other: &ServiceSpec) -> bool {
        (
            &self.program,
            &self.args,
            &self.env,
            self.port,
            self.restart,
            &self.user,
            self.stop_grace_ms,
            &self.health,
            self.cpus_millis,
            self.memory_bytes,
            &self.module,
        ) != (
            &other.program,
            &other.args,
            &other.env,
            other.port,
            other.restart,
            &other.user,
            other.stop_grace_ms,
            &other.health,
            other.cpus_millis,
            other.memory_bytes,
            &other.module,
        )
    }

    /// The resource limits of each replica.
    pub fn limits(&self) -> crate::limits::Limits {
        crate::limits::Limits {
            cpu_millis: self.cpus_millis,
            memory_bytes: self.memory_bytes,
        }
    }

    pub fn describe_command(&self) -> String {
        let mut text = self.program.clone();
        for argument in &self.args {
            text.push(' ');
            if argument.contains(char::is_whitespace) || argument.is_empty() {
                text.push_str(&format!("{argument:?}"));
            } else {
                text.push_str(argument);
            }
        }
        text
    }
}

/// Where one replica runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub node: String,
    pub port: Option<u16>,
    /// The version its replica runs (see [`ServiceSpec::version`]).
    pub generation: u64,
    /// Kept out of the balancers since then: a replica that is new here (placed, moved or
    /// updated) until it runs and passes its health check, and one a rolling update is
    /// about to replace, for a drain first. Balancers serve only replicas without it.
    #[serde(default)]
    pub withheld_since_unix_ms: Option<u64>,
    /// When a rolling update last moved this placement to a new version, or returned it to
    /// the balancers.
    #[serde(default)]
    pub updated_unix_ms: u64,
    /// The replica is moving here off a drained node, whose copy keeps running (and
    /// serving, while this one is withheld) until this one is ready and has served for a
    /// moment: make-before-break, where a dead node's replica can only be break-then-make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
}

/// Where a replica moving off a drained node still runs (see [`Assignment::handover`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub from_node: String,
    pub from_port: Option<u16>,
    /// The version the old copy runs.
    pub from_generation: u64,
    pub since_unix_ms: u64,
}

/// What a rolling update does when a replica of the new version fails (Swarm's
/// `--update-failure-action`; `rollback` is Nomad's `auto_revert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    /// Stop replacing replicas and say why (Swarm's default).
    #[default]
    Pause,
    /// Carry on with the other replicas.
    Continue,
    /// Return every replica to the previous version.
    Rollback,
}

impl FailureAction {
    pub fn name(self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
    }
}

/// How replicas are replaced by a new version: `parallelism` at a time (0: all at once),
/// `delay_ms` between batches; a replica counts as updated once it has run (and, with a
/// health check, been healthy) for `monitor_ms` (Swarm's `--update-monitor`, 5 s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    pub parallelism: u32,
    pub delay_ms: u64,
    pub on_failure: FailureAction,
    pub monitor_ms: u64,
}

impl Default for UpdatePolicy {
    fn default() -> UpdatePolicy {
        UpdatePolicy {
            parallelism: 1,
            delay_ms: 0,
            on_failure: FailureAction::Pause,
            monitor_ms: 5_000,
        }
    }
}

impl UpdatePolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.parallelism > MAX_REPLICAS
            || self.delay_ms > 3_600_000
            || self.monitor_ms > 3_600_000
        {
            return Err(format!(
                "update: --parallelism 0 to {MAX_REPLICAS}, --delay and --monitor at most 1 h"
            ));
        }
        Ok(())
    }
}

/// Whether a rollout brings a new version or returns to the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutKind {
    Update,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Replacing replicas.
    Running,
    /// Stopped after a failure (or a failed rollback); `service update` or `rollback`
    /// starts a new one.
    Paused,
    Completed,
}

/// A service's latest rolling update, kept at `services/rollout/<name>`: written by
/// `update` and `rollback` when they start one, then only by the reconciler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub kind: RolloutKind,
    pub state: RolloutState,
    pub from_generation: u64,
    pub to_generation: u64,
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    /// Why it paused or rolled back, or how it ended.
    pub message: Option<String>,
    /// A batch of replicas is being replaced.
    #[serde(default)]
    pub batch_open: bool,
    /// When the last batch finished (the next waits `delay_ms` after it).
    #[serde(default)]
    pub batch_done_unix_ms: u64,
    /// Replicas whose failure was let pass (`--on-failure continue`).
    #[serde(default)]
    pub failures_let_pass: Vec<u32>,
}

impl Rollout {
    pub fn start(kind: RolloutKind, from: u64, to: u64, message: Option<String>) -> Rollout {
        Rollout {
            kind,
            state: RolloutState::Running,
            from_generation: from,
            to_generation: to,
            started_unix_ms: bramble_util::time::unix_millis(),
            finished_unix_ms: None,
            message,
            batch_open: false,
            batch_done_unix_ms: 0,
            failures_let_pass: Vec::new(),
        }
    }

    pub fn describe(&self) -> String {
        let kind = match self.kind {
            RolloutKind::Update => "update",
            RolloutKind::Rollback => "rollback",
        };
        let state = match self.state {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
        };
        let mut text = format!(
            "{kind} from version {} to {}: {state}",
            self.from_generation, self.to_generation
        );
        if let Some(message) = &self.message {
            text.push_str(&format!(" ({message})"));
        }
        text
    }
}

#[cfg(test)]
impl ServiceSpec {
    /// A plain service for tests: `sleep 1000`, replicas on port 8000 upwards.
    pub fn example(name: &str, replicas: u32) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            program: "sleep".into(),
            args: vec!["1000".into()],
            replicas,
            port: Some(8000),
            env: vec![],
            restart: RestartPolicy::Always,
            max_per_node: 0,
            constraints: vec![],
            user: None,
            stop_grace_ms: 10_000,
            health: None,
            cpus_millis: None,
            memory_bytes: None,
            generation: 1,
            created_unix_ms: 0,
            module: None,
            update: UpdatePolicy::default(),
            previous: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_parse_and_match() {
        let role = Constraint::parse("role=web").unwrap_or(Constraint::Node("x".into()));
        assert!(role.allows("n1", &["web".to_string()]));
        assert!(!role.allows("n1", &[]));
        let not = Constraint::parse("node!=n3").unwrap_or(Constraint::Node("x".into()));
        assert!(not.allows("n1", &[]) && !not.allows("n3", &[]));
        assert!(Constraint::parse("zone=eu").is_err());
        assert!(Constraint::parse("role=../x").is_err());
        assert_eq!(
            parse_assign_key(&assign_key("web", 7)),
            Some(("web".into(), 7))
        );
    }

    fn spec() -> ServiceSpec {
        let mut spec = ServiceSpec::example("web", 1);
        spec.port = None;
        spec
    }

    #[test]
    fn limits_are_bounded_with_the_reason() {
        let mut limited = spec();
        limited.cpus_millis = Some(500);
        limited.memory_bytes = Some(32 * 1024 * 1024);
        assert_eq!(limited.validate(), Ok(()));
        assert_eq!(limited.limits().describe(), "0.5 CPU, 32 MiB");
        limited.cpus_millis = Some(5);
        let error = limited.validate().expect_err("0.005 CPU is refused");
        assert!(
            error.contains("--cpus") && error.contains("0.005"),
            "{error}"
        );
        limited.cpus_millis = Some(MAX_CPU_MILLIS + 1);
        assert!(limited.validate().is_err());
        limited.cpus_millis = Some(MAX_CPU_MILLIS);
        limited.memory_bytes = Some(1024 * 1024);
        let error = limited.validate().expect_err("1 MiB is refused");
        assert!(
            error.contains("--memory") && error.contains("1 MiB"),
            "{error}"
        );
        limited.memory_bytes = Some(MAX_MEMORY_BYTES + 1);
        assert!(limited.validate().is_err());
        limited.memory_bytes = Some(MAX_MEMORY_BYTES);
        assert_eq!(limited.validate(), Ok(()));
    }

    #[test]
    fn a_spec_stored_before_limits_existed_still_reads() {
        let mut old = serde_json::to_value(spec()).expect("a spec as JSON");
        if let Some(fields) = old.as_object_mut() {
            fields.remove("cpus_millis");
            fields.remove("memory_bytes");
        }
        let read: ServiceSpec = serde_json::from_value(old).expect("an old spec reads");
        assert!(read.limits().is_empty());
    }
}
