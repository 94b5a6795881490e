//! `bramble exec`: a command run on many nodes at once (what `ansible all -m shell` does
//! for a Pi cluster), served by every agent as `exec.run`. Off unless the node opts in:
//! `exec.toml` in its data directory says `enabled = true` (written by `init`/`join
//! --allow-exec`, or by hand), read at every call, so only someone with the node's disk
//! can turn it on — Nomad's `raw_exec` is off by default for the same reason. Commands run
//! through `crate::process` like a task (own process group, clean environment, ordinary
//! priority) as `nobody` when the agent is root, as root only where the node also says
//! `allow_root = true`; each is cut at its timeout, and written to the node's audit log.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_net::Caller;
use bramble_net::rpc::{Request, encode};
use bramble_net::{ErrorKind, Handler, RpcError};
use bramble_platform::subsystem::StartFuture;
use bramble_platform::{Context, Running, Subsystem};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::process::{Identity, signal_group};

pub const SERVICE: &str = "exec";
pub const METHOD_RUN: &str = "exec.run";
/// The node's opt-in.
pub const SETTINGS_FILE: &str = "exec.toml";
/// One line per command, kept on the node.
pub const AUDIT_FILE: &str = "exec-audit.log";
/// Most bytes of each of stdout and stderr an answer carries (the rest is counted).
pub const MAX_OUTPUT_BYTES: usize = 256 * 1024;
/// Longest `--timeout`.
pub const MAX_TIMEOUT_MS: u64 = 60 * 60 * 1000;
/// The audit log is cut to its newer half past this size.
const MAX_AUDIT_BYTES: u64 = 4 * 1024 * 1024;
/// Commands running on one node at once.
const MAX_RUNNING: usize = 16;

pub const SUBSYSTEM: Subsystem = Subsystem {
    name: SERVICE,
    roles: &[],
    start,
    stop_deadline: Duration::from_secs(2),
};

/// `exec.toml`: every field optional; absent means exec is off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSettings {
    #[serde(default)]
    pub enabled: bool,
    /// Commands may ask to run as root (`bramble exec --user root`).
    #[serde(default)]
    pub allow_root: bool,
}

impl ExecSettings {
    pub fn load(data_dir: &Path) -> Result<ExecSettings, String> {
        let path = data_dir.join(SETTINGS_FILE);
        if !path.exists() {
            return Ok(ExecSettings::default());
        }
        bramble_util::files::read_toml(&path)
            .map_err(|error| format!("{}: {error}", path.display()))
    }

    /// Writes the opt-in (`init`/`join --allow-exec`).
    pub fn save(&self, data_dir: &Path) -> Result<(), String> {
        bramble_util::files::write_toml(
            &data_dir.join(SETTINGS_FILE),
            self,
            bramble_util::files::Visibility::Private,
        )
        .map_err(|error| error.to_string())
    }
}

/// `exec.run`'s request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The program and its arguments (a shell line is `sh -c LINE`).
    pub command: Vec<String>,
    /// The user to run as (default `nobody` when the agent is root).
    pub user: Option<String>,
    pub timeout_ms: u64,
}

impl ExecRequest {
    pub fn validate(&self) -> Result<(), String> {
        let Some(program) = self.command.first() else {
            return Err("give the command after --".to_string());
        };
        if program.is_empty()
            || self.command.len() > 256
            || self.command.iter().map(String::len).sum::<usize>() > 64 * 1024
            || self.command.iter().any(|part| part.contains('\0'))
        {
            return Err(
                "a command is 1 to 256 arguments, at most 64 KiB, without NUL bytes".to_string(),
            );
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err("--timeout is 1 ms to 1 hour".to_string());
        }
        if let Some(user) = &self.user {
            bramble_util::names::validate_name("--user", user)
                .map_err(|error| error.to_string())?;
        }
        Ok(())
    }
}

/// What a command did on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutcome {
    pub node: String,
    pub user: String,
    /// The exit code; `None` when a signal ended it or it was cut at its timeout.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// Output bytes beyond what the answer carries.
    pub truncated_bytes: u64,
    pub milliseconds: u64,
}

impl ExecOutcome {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

fn start(context: Context) -> StartFuture {
    Box::pin(async move {
        let service = Arc::new(ExecService {
            node: context.node_name().to_string(),
            cluster_id: context.node.config.cluster_id.clone(),
            commands: std::sync::atomic::AtomicU64::new(0),
            data_dir: context.node.path.clone(),
            running: tokio::sync::Semaphore::new(MAX_RUNNING),
        });
        Ok(Arc::new(RunningExec { service }) as Arc<dyn Running>)
    })
}

struct RunningExec {
    service: Arc<ExecService>,
}

#[async_trait::async_trait]
impl Running for RunningExec {
    fn service(&self) -> Option<Arc<dyn Handler>> {
        Some(self.service.clone())
    }

    fn status(&self) -> serde_json::Value {
        let settings = ExecSettings::load(&self.service.data_dir).unwrap_or_default();
        serde_json::json!({ "enabled": settings.enabled, "allow_root": settings.allow_root })
    }

    async fn stop(&self) {}
}

pub struct ExecService {
    node: String,
    cluster_id: String,
    /// Numbers each command's scratch directory.
    commands: std::sync::atomic::AtomicU64,
    data_dir: PathBuf,
    running: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl Handler for ExecService {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError> {
        let Caller::Admin(admin) = request.caller else {
            return Err(RpcError::new(
                ErrorKind::Unauthorized,
                "exec is for the cluster's administrator",
            ));
        };
        match request.method {
            "run" => {
                let exec: ExecRequest = request.decode()?;
                encode(&self.run(exec, admin).await?)
            }
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("exec has no method {other:?}"),
            )),
        }
    }
}

impl ExecService {
    async fn run(&self, request: ExecRequest, admin: &str) -> Result<ExecOutcome, RpcError> {
        request.validate().map_err(RpcError::bad_request)?;
        let settings = ExecSettings::load(&self.data_dir).map_err(RpcError::bad_request)?;
        let asked_user = request.user.as_deref().unwrap_or("nobody");
        if !settings.enabled {
            self.audit(admin, asked_user, &request, "refused: exec is off here");
            return Err(RpcError::new(
                ErrorKind::Refused,
                format!(
                    "node {} does not allow exec (it opts in with `enabled = true` in {} in its data directory, or join/init --allow-exec)",
                    self.node, SETTINGS_FILE
                ),
            ));
        }
        if asked_user == "root" && !settings.allow_root {
            self.audit(admin, asked_user, &request, "refused: not as root");
            return Err(RpcError::new(
                ErrorKind::Refused,
                format!(
                    "node {} does not allow exec as root (`allow_root = true` in its {})",
                    self.node, SETTINGS_FILE
                ),
            ));
        }
        let _permit = self.running.try_acquire().map_err(|_| {
            RpcError::new(
                ErrorKind::Full,
                format!("node {} runs {MAX_RUNNING} commands already", self.node),
            )
        })?;
        let identity = Identity::resolve(request.user.as_deref()).map_err(RpcError::bad_request)?;
        let number = self
            .commands
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let directory = crate::process::scratch_directory(
            &self.cluster_id,
            &self.node,
            &format!("exec-{number}"),
        );
        let _ = std::fs::create_dir_all(&directory);
        identity.give(&directory);
        let started = Instant::now();
        let mut command = identity.command(&request.command[0], &request.command[1..], &directory);
        command
            .env("BRAMBLE_NODE", &self.node)
            .stdin(std::process::Stdio::null());
        let outcome = match command.spawn() {
            Err(error) => {
                let message = if error.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "{:?} was not found on node {}",
                        request.command[0], self.node
                    )
                } else {
                    format!("{:?}: {error}", request.command[0])
                };
                self.audit(admin, &identity.user_name(), &request, &message);
                return Err(RpcError::bad_request(message));
            }
            Ok(mut child) => {
                let group = child.id().map(|pid| pid as i32).unwrap_or(0);
                let stdout = child
                    .stdout
                    .take()
                    .map(|stream| tokio::spawn(read_bounded(stream)));
                let stderr = child
                    .stderr
                    .take()
                    .map(|stream| tokio::spawn(read_bounded(stream)));
                let timeout = Duration::from_millis(request.timeout_ms);
                let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
                    Ok(status) => (status.ok(), false),
                    Err(_) => {
                        signal_group(group, libc::SIGKILL);
                        (child.wait().await.ok(), true)
                    }
                };
                // Whatever it left running in its group goes too.
                signal_group(group, libc::SIGKILL);
                let collect = |task: Option<tokio::task::JoinHandle<(Vec<u8>, u64)>>| async {
                    match task {
                        Some(task) => tokio::time::timeout(Duration::from_secs(2), task)
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .unwrap_or_default(),
                        None => (Vec::new(), 0),
                    }
                };
                let (stdout, stdout_more) = collect(stdout).await;
                let (stderr, stderr_more) = collect(stderr).await;
                use std::os::unix::process::ExitStatusExt;
                ExecOutcome {
                    node: self.node.clone(),
                    user: identity.user_name(),
                    exit_code: if timed_out {
                        None
                    } else {
                        status.and_then(|status| status.code())
                    },
                    signal: status.and_then(|status| status.signal()),
                    timed_out,
                    stdout,
                    stderr,
                    truncated_bytes: stdout_more + stderr_more,
                    milliseconds: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                }
            }
        };
        let _ = std::fs::remove_dir_all(&directory);
        let result = match (outcome.timed_out, outcome.exit_code, outcome.signal) {
            (true, _, _) => format!("cut after {} ms", request.timeout_ms),
            (_, Some(code), _) => format!("exit {code}"),
            (_, None, Some(signal)) => format!("signal {signal}"),
            _ => "ended".to_string(),
        };
        self.audit(admin, &identity.user_name(), &request, &result);
        Ok(outcome)
    }

    /// Appends one line to the audit log (0600): when, who, as whom, what, how it ended.
    fn audit(&self, admin: &str, user: &str, request: &ExecRequest, result: &str) {
        let path = self.data_dir.join(AUDIT_FILE);
        if std::fs::metadata(&path).is_ok_and(|meta| meta.len() > MAX_AUDIT_BYTES) {
            keep_newer_half(&path);
        }
        let line = serde_json::json!({
            "unix_ms": bramble_util::time::unix_millis(),
            "admin": admin,
            "user": user,
            "command": request.command,
            "timeout_ms": request.timeout_ms,
            "result": result,
        });
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(error) = written {
            tracing::warn!(%error, path = %path.display(), "could not write the exec audit log");
        }
    }
}

/// Drops the older half of the audit log (whole lines), keeping it bounded.
fn keep_newer_half(path: &Path) {
    let Ok(text) = std::fs::read(path) else {
        return;
    };
    let middle = text.len() / 2;
    let start = text[middle..]
        .iter()
        .position(|&byte| byte == b'\n')
        .map_or(text.len(), |offset| middle + offset + 1);
    let _ = bramble_util::files::write_atomic(
        path,
        &text[start..],
        bramble_util::files::Visibility::Private,
    );
}

/// Reads a stream to its end, keeping the first [`MAX_OUTPUT_BYTES`] and counting the rest.
async fn read_bounded(mut stream: impl tokio::io::AsyncRead + Unpin) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return (kept, dropped),
            Ok(read) => {
                let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len()).min(read);
                kept.extend_from_slice(&buffer[..room]);
                dropped += (read - room) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_bounded_and_settings_default_to_off() {
        let request = ExecRequest {
            command: vec!["uname".into(), "-n".into()],
            user: None,
            timeout_ms: 1000,
        };
        assert_eq!(request.validate(), Ok(()));
        let mut empty = request.clone();
        empty.command.clear();
        assert!(empty.validate().is_err());
        let mut forever = request.clone();
        forever.timeout_ms = MAX_TIMEOUT_MS + 1;
        assert!(forever.validate().is_err());
        let mut nul = request.clone();
        nul.command.push("a\0b".into());
        assert!(nul.validate().is_err());
        let mut bad_user = request;
        bad_user.user = Some("../root".into());
        assert!(bad_user.validate().is_err());
        let directory = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            ExecSettings::load(directory.path()),
            Ok(ExecSettings::default())
        );
        let on = ExecSettings {
            enabled: true,
            allow_root: false,
        };
        assert_eq!(on.save(directory.path()), Ok(()));
        assert_eq!(ExecSettings::load(directory.path()), Ok(on));
    }

    #[test]
    fn the_audit_log_keeps_its_newer_half_in_whole_lines() {
        let directory = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        let path = directory.path().join(AUDIT_FILE);
        let text: String = (0..100).map(|line| format!("line {line}\n")).collect();
        std::fs::write(&path, &text).unwrap_or_else(|error| panic!("{error}"));
        keep_newer_half(&path);
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            kept.starts_with("line ") && kept.ends_with("line 99\n"),
            "{kept}"
        );
        assert!(kept.len() < text.len() / 2 + 10);
    }
}
