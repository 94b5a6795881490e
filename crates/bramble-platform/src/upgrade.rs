//! `upgrade.*`: how an agent receives a new build of itself and moves onto it, for `bramble
//! upgrade` (issue 13). The CLI streams the new executable to each node over the mux
//! (`upgrade.stage`, a bulk stream, so a 20–170 MB copy never delays Raft or gossip), then
//! asks one node at a time to move onto it (`upgrade.install`) and waits until that node
//! is back and healthy before the next.
//!
//! - **Staging** ([`Staging`]): the body is written to `<data>/upgrade/` under a temporary
//!   name, hashed with BLAKE3 as it arrives, bounded in size and by the disk's free space,
//!   fsynced, and renamed to `bramble-<hash>` only if the hash is the one the caller
//!   announced. The node then checks the file is an executable for its own machine (the
//!   ELF header) and runs it once as `bramble-<hash> version --json`, bounded in time and
//!   output: a build that does not run here, or that speaks no protocol this cluster speaks
//!   (`bramble_cluster::protocol`), is refused before any agent stops.
//! - **Installing** writes `<data>/upgrade/installed.json` naming the hash, after hashing
//!   the staged file once more (a disk that flipped a bit since staging is caught here),
//!   and the agent restarts: it stops as on SIGTERM (its VIPs handed over first), then
//!   replaces its process image with the new build (`execve`, same pid, same arguments),
//!   so systemd, the emulator and `bramble status` all keep following the same process.
//! - **Launching** ([`launch_target`]): every `bramble agent` start looks at the record
//!   first and, if it names another executable than its own, becomes that one. So the
//!   installed build survives a reboot although `/usr/bin/bramble` (owned by the package
//!   manager, and read-only to the agent under systemd's `ProtectSystem`) is never
//!   written. A build that never reports itself healthy ([`confirm`]) within
//!   [`MAX_UNCONFIRMED_LAUNCHES`] starts is abandoned: the next start runs the packaged
//!   executable again and says why in the log, so a bad build cannot keep a board down.
//!
//! Only admins may call these methods: installing a build is running code on the node.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bramble_cluster::protocol::BuildInfo;
use bramble_net::{Caller, ErrorKind, IncomingCall, ResponseWriter, RpcError};

use crate::bench_service::{encode, failed};
use bramble_util::files::{self, Visibility};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{Notify, Semaphore};
use tracing::{info, warn};

/// The service's name in the stream router.
pub const SERVICE: &str = "upgrade";
pub const METHOD_STAGE: &str = "upgrade.stage";
pub const METHOD_INSTALL: &str = "upgrade.install";

/// Largest executable accepted (a debug build of bramble is about 170 MB; a release build
/// about 50 MB).
pub const MAX_BINARY_BYTES: u64 = 512 * 1024 * 1024;
/// What staging leaves free on the data directory's file system, at least.
pub const FREE_SPACE_MARGIN: u64 = 64 * 1024 * 1024;
/// Starts of an installed build that may pass without it reporting itself healthy before
/// the launcher abandons it.
pub const MAX_UNCONFIRMED_LAUNCHES: u32 = 3;
/// How long `bramble-<hash> version --json` may take on a small board.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// Most output of that probe that is read.
const PROBE_OUTPUT_LIMIT: u64 = 16 * 1024;
/// Between the install's answer and the agent's stop, so the answer reaches the caller.
const ANSWER_GRACE: Duration = Duration::from_millis(200);
const RECORD_FILE: &str = "installed.json";
const STAGED_PREFIX: &str = "bramble-";

/// `upgrade.stage`'s request header; the body is the executable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRequest {
    /// BLAKE3 of the whole file, 64 lowercase hex digits.
    pub hash: String,
    pub bytes: u64,
}

/// `upgrade.stage`'s answer: what the staged build says of itself when run on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReply {
    pub build: BuildInfo,
    /// The agent already runs this very file.
    pub already_running: bool,
}

/// `upgrade.install`'s request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRequest {
    pub hash: String,
}

/// Why staging or installing failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] files::FileError),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpgradeError {
    let what = what.into();
    move |source| UpgradeError::Io { what, source }
}

/// What `installed.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub hash: String,
    /// Starts since the install that have not (yet) reported healthy.
    pub unconfirmed_launches: u32,
    pub confirmed: bool,
}

/// A 64-digit lowercase hex BLAKE3 hash, or why not.
pub fn validate_hash(hash: &str) -> Result<(), UpgradeError> {
    if hash.len() == 64
        && hash
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    {
        Ok(())
    } else {
        Err(UpgradeError::Invalid(format!(
            "{:?} is not a BLAKE3 hash (64 lowercase hex digits)",
            hash.chars().take(80).collect::<String>()
        )))
    }
}

/// BLAKE3 of a file, read in chunks (never whole into memory).
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// The ELF machine and class an executable for this node has.
fn own_machine() -> Option<(u16, u8, &'static str)> {
    // (e_machine, EI_CLASS: 1 = 32-bit, 2 = 64-bit, name)
    match std::env::consts::ARCH {
        "x86_64" => Some((62, 2, "x86_64")),
        "aarch64" => Some((183, 2, "aarch64")),
        "arm" => Some((40, 1, "32-bit ARM")),
        "riscv64" => Some((243, 2, "riscv64")),
        _ => None,
    }
}

/// The architecture an ELF header was built for, in `std::env::consts::ARCH`'s words
/// (`x86_64`, `aarch64`, `arm`, `riscv64`), if it is a little-endian ELF for one of them:
/// how `bramble upgrade` matches each `--binary` to the nodes that announce it.
pub fn elf_architecture(header: &[u8]) -> Option<&'static str> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" || header[5] != 1 {
        return None;
    }
    match u16::from_le_bytes([header[18], header[19]]) {
        62 => Some("x86_64"),
        183 => Some("aarch64"),
        40 => Some("arm"),
        243 => Some("riscv64"),
        _ => None,
    }
}

/// The machine an ELF header names, for messages.
fn machine_name(machine: u16, class: u8) -> String {
    match (machine, class) {
        (62, _) => "x86_64".into(),
        (183, _) => "aarch64".into(),
        (40, _) => "32-bit ARM".into(),
        (3, _) => "x86 (32-bit)".into(),
        (243, _) => "riscv64".into(),
        (other, class) => format!("ELF machine {other} ({}-bit)", class as u32 * 32),
    }
}

/// Checks that the first bytes of a file are an ELF executable for this node.
pub fn check_executable_header(header: &[u8]) -> Result<(), UpgradeError> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return Err(UpgradeError::Invalid(
            "the file is not an ELF executable (no \\x7fELF header)".into(),
        ));
    }
    let class = header[4];
    let little_endian = header[5] == 1;
    let machine = if little_endian {
        u16::from_le_bytes([header[18], header[19]])
    } else {
        u16::from_be_bytes([header[18], header[19]])
    };
    let Some((own, own_class, own_name)) = own_machine() else {
        return Ok(());
    };
    if machine != own || class != own_class || !little_endian {
        return Err(UpgradeError::Invalid(format!(
            "the file is an executable for {}, and this node is {own_name}",
            machine_name(machine, class)
        )));
    }
    Ok(())
}

/// A node's `<data>/upgrade/` directory.
#[derive(Debug, Clone)]
pub struct Staging {
    directory: PathBuf,
}

impl Staging {
    pub fn new(data_dir: &Path) -> Staging {
        Staging {
            directory: data_dir.join("upgrade"),
        }
    }

    pub fn staged_path(&self, hash: &str) -> PathBuf {
        self.directory.join(format!("{STAGED_PREFIX}{hash}"))
    }

    fn record_path(&self) -> PathBuf {
        self.directory.join(RECORD_FILE)
    }

    /// The install record, if any (a damaged one counts as none, with a warning: the
    /// packaged executable then runs, which is always safe).
    pub fn record(&self) -> Option<InstallRecord> {
        let path = self.record_path();
        let text = match files::read_bounded(&path, 4096) {
            Ok(text) => text,
            Err(files::FileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return None;
            }
            Err(error) => {
                warn!(%error, "could not read the upgrade record; running the packaged build");
                return None;
            }
        };
        match serde_json::from_slice::<InstallRecord>(&text) {
            Ok(record) if validate_hash(&record.hash).is_ok() => Some(record),
            _ => {
                warn!(
                    path = %path.display(),
                    "the upgrade record is damaged; running the packaged build"
                );
                None
            }
        }
    }

    fn write_record(&self, record: &InstallRecord) -> Result<(), UpgradeError> {
        let json = serde_json::to_vec_pretty(record)
            .map_err(|error| UpgradeError::Invalid(error.to_string()))?;
        files::write_atomic(&self.record_path(), &json, Visibility::Public)?;
        Ok(())
    }

    /// Receives an executable from `chunks`, checks its size and hash, and keeps it as
    /// `bramble-<hash>`. Returns its path.
    pub async fn receive(
        &self,
        request: &StageRequest,
        call: &mut IncomingCall,
        running: &Path,
    ) -> Result<PathBuf, RpcError> {
        validate_hash(&request.hash).map_err(bad_request)?;
        if request.bytes == 0 || request.bytes > MAX_BINARY_BYTES {
            return Err(RpcError::new(
                ErrorKind::TooLarge,
                format!(
                    "an executable of {} bytes: staging takes 1 byte to {MAX_BINARY_BYTES}",
                    request.bytes
                ),
            ));
        }
        files::create_private_dir(&self.directory).map_err(internal)?;
        let (free, _) = files::file_system_space(&self.directory)
            .map_err(|error| RpcError::internal(format!("reading the free space: {error}")))?;
        if free < request.bytes.saturating_add(FREE_SPACE_MARGIN) {
            return Err(RpcError::new(
                ErrorKind::Unavailable,
                format!(
                    "staging {} MiB would leave less than {} MiB free on the data directory's disk ({} MiB free)",
                    request.bytes >> 20,
                    FREE_SPACE_MARGIN >> 20,
                    free >> 20
                ),
            ));
        }
        let final_path = self.staged_path(&request.hash);
        let partial = self
            .directory
            .join(format!(".incoming-{}.partial", &request.hash[..16]));
        let result = self
            .write_partial(&partial, request, call)
            .await
            .and_then(|()| {
                if same_file(&final_path, running) {
                    // The agent runs this very build: its file stays as it is.
                    let _ = std::fs::remove_file(&partial);
                    return Ok(());
                }
                std::fs::rename(&partial, &final_path).map_err(|error| {
                    RpcError::internal(format!("renaming the staged executable: {error}"))
                })?;
                if let Ok(directory) = std::fs::File::open(&self.directory) {
                    let _ = directory.sync_all();
                }
                Ok(())
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result.map(|()| final_path)
    }

    async fn write_partial(
        &self,
        partial: &Path,
        request: &StageRequest,
        call: &mut IncomingCall,
    ) -> Result<(), RpcError> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(partial)
            .map_err(|error| {
                RpcError::internal(format!("creating {}: {error}", partial.display()))
            })?;
        let mut hasher = blake3::Hasher::new();
        let mut received = 0u64;
        let mut header = Vec::with_capacity(64);
        while let Some(chunk) = call.body.next_chunk().await.map_err(failed)? {
            received += chunk.len() as u64;
            if received > request.bytes {
                return Err(RpcError::bad_request(format!(
                    "the body is longer than the {} bytes announced",
                    request.bytes
                )));
            }
            if header.len() < 64 {
                let wanted = (64 - header.len()).min(chunk.len());
                header.extend_from_slice(&chunk[..wanted]);
                if header.len() >= 20 {
                    check_executable_header(&header).map_err(bad_request)?;
                }
            }
            hasher.update(&chunk);
            // Small writes to the page cache; the one fsync below makes them durable.
            file.write_all(&chunk).map_err(|error| {
                RpcError::internal(format!("writing the staged executable: {error}"))
            })?;
        }
        if received != request.bytes {
            return Err(RpcError::bad_request(format!(
                "the body ended after {received} of the {} bytes announced",
                request.bytes
            )));
        }
        check_executable_header(&header).map_err(bad_request)?;
        let hash = hasher.finalize().to_hex().to_string();
        if hash != request.hash {
            return Err(RpcError::bad_request(format!(
                "the executable received hashes to {}…, not the {}… announced: it was damaged on the way",
                &hash[..16],
                &request.hash[..16]
            )));
        }
        file.set_permissions(std::fs::Permissions::from_mode(0o755))
            .and_then(|()| file.sync_all())
            .map_err(|error| {
                RpcError::internal(format!("syncing the staged executable: {error}"))
            })?;
        Ok(())
    }

    /// Makes the staged `hash` the build the agent runs from its next start, after hashing
    /// it once more, and removes staged builds that are neither it nor `running`.
    pub fn install(&self, hash: &str, running: &Path) -> Result<PathBuf, UpgradeError> {
        validate_hash(hash)?;
        let path = self.staged_path(hash);
        let found = hash_file(&path).map_err(io_error(format!(
            "reading the staged build {} (stage it first)",
            path.display()
        )))?;
        if found != hash {
            let _ = std::fs::remove_file(&path);
            return Err(UpgradeError::Invalid(format!(
                "the staged build {} changed on disk since it was staged (it now hashes to {}…); it was removed: stage it again",
                path.display(),
                &found[..16]
            )));
        }
        self.write_record(&InstallRecord {
            hash: hash.to_string(),
            unconfirmed_launches: 0,
            confirmed: false,
        })?;
        self.remove_others(&path, running);
        Ok(path)
    }

    fn remove_others(&self, keep: &Path, running: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.directory) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGED_PREFIX)
                && path != keep
                && !same_file(&path, running)
                && let Err(error) = std::fs::remove_file(&path)
            {
                warn!(%error, path = %path.display(), "could not remove an old staged build");
            }
        }
    }
}

/// What a starting agent should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// Run on: this executable is the one to run.
    Continue,
    /// Replace this process with the installed build.
    Become(PathBuf),
    /// The installed build was abandoned (it never reported healthy); run on, and log why.
    Abandoned { hash: String, launches: u32 },
}

/// Decides, at the start of `bramble agent`, which build runs: the installed one if there
/// is one and it is not this executable. Counts the start against an unconfirmed install.
pub fn launch_target(data_dir: &Path, current: &Path) -> Launch {
    let staging = Staging::new(data_dir);
    let Some(mut record) = staging.record() else {
        return Launch::Continue;
    };
    let installed = staging.staged_path(&record.hash);
    if !record.confirmed && record.unconfirmed_launches >= MAX_UNCONFIRMED_LAUNCHES {
        let abandoned = staging.directory.join("installed.abandoned.json");
        let _ = std::fs::rename(staging.record_path(), abandoned);
        return Launch::Abandoned {
            hash: record.hash,
            launches: record.unconfirmed_launches,
        };
    }
    if same_file(&installed, current) {
        // Started by a launcher (or by the install's restart), which counted the start.
        return Launch::Continue;
    }
    if !installed.is_file() {
        warn!(
            path = %installed.display(),
            "the installed build is missing; running the packaged build"
        );
        return Launch::Continue;
    }
    if !record.confirmed {
        record.unconfirmed_launches += 1;
        if let Err(error) = staging.write_record(&record) {
            warn!(%error, "could not count this start of the installed build");
        }
    }
    Launch::Become(installed)
}

fn same_file(one: &Path, other: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(one), std::fs::metadata(other)) {
        (Ok(one), Ok(other)) => one.dev() == other.dev() && one.ino() == other.ino(),
        _ => false,
    }
}

/// Marks the installed build healthy once an agent running it has started every layer, so
/// later starts never abandon it.
pub fn confirm(data_dir: &Path, current: &Path) {
    let staging = Staging::new(data_dir);
    let Some(mut record) = staging.record() else {
        return;
    };
    if record.confirmed || !same_file(&staging.staged_path(&record.hash), current) {
        return;
    }
    record.confirmed = true;
    record.unconfirmed_launches = 0;
    match staging.write_record(&record) {
        Ok(()) => info!(build = %&record.hash[..16], "the installed build is confirmed healthy"),
        Err(error) => warn!(%error, "could not confirm the installed build"),
    }
}

/// Runs `<path> version --json` and reads what the build says of itself.
pub async fn probe(path: &Path) -> Result<BuildInfo, UpgradeError> {
    let mut child = tokio::process::Command::new(path)
        .args(["version", "--json"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(io_error(format!(
            "running {} version --json (it does not run on this node)",
            path.display()
        )))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| UpgradeError::Invalid("the probe has no output pipe".into()))?;
    let work = async {
        let mut output = Vec::new();
        (&mut stdout)
            .take(PROBE_OUTPUT_LIMIT)
            .read_to_end(&mut output)
            .await?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((output, status))
    };
    let (output, status) = tokio::time::timeout(PROBE_TIMEOUT, work)
        .await
        .map_err(|_| {
            UpgradeError::Invalid(format!(
                "`{} version --json` did not finish within {PROBE_TIMEOUT:?}",
                path.display()
            ))
        })?
        .map_err(io_error(format!(
            "running {} version --json",
            path.display()
        )))?;
    if !status.success() {
        return Err(UpgradeError::Invalid(format!(
            "`version --json` failed ({status}): is this a bramble build from before `bramble upgrade`?"
        )));
    }
    serde_json::from_slice::<BuildInfo>(&output).map_err(|error| {
        UpgradeError::Invalid(format!(
            "`version --json` did not print a build description ({error}): is this a bramble executable?"
        ))
    })
}

/// An agent's request to restart into another executable, which `upgrade.install` makes
/// and the agent's main loop waits for.
#[derive(Default)]
pub struct RestartRequest {
    notify: Notify,
    target: Mutex<Option<PathBuf>>,
}

impl RestartRequest {
    fn request(&self, target: PathBuf) {
        *self
            .target
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(target);
        self.notify.notify_one();
    }

    /// Resolves when an install asks the agent to restart; yields the executable to run.
    pub async fn requested(&self) -> PathBuf {
        loop {
            if let Some(target) = self
                .target
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone()
            {
                return target;
            }
            self.notify.notified().await;
        }
    }
}

/// The `upgrade` stream service of one agent.
pub struct UpgradeService {
    staging: Staging,
    /// This process's executable, never removed from the staging directory.
    running: PathBuf,
    restart: Arc<RestartRequest>,
    /// One stage or install at a time.
    turn: Arc<Semaphore>,
}

impl UpgradeService {
    pub fn new(data_dir: &Path, running: PathBuf, restart: Arc<RestartRequest>) -> Self {
        UpgradeService {
            staging: Staging::new(data_dir),
            running,
            restart,
            turn: Arc::new(Semaphore::new(1)),
        }
    }

    async fn stage(
        &self,
        mut call: IncomingCall,
        response: ResponseWriter,
    ) -> Result<(), RpcError> {
        let request: StageRequest = call.decode_header()?;
        let path = self
            .staging
            .receive(&request, &mut call, &self.running)
            .await?;
        let build = probe(&path).await.map_err(|error| {
            let _ = std::fs::remove_file(&path);
            RpcError::bad_request(format!("the build was refused: {error}"))
        })?;
        let already_running = same_file(&path, &self.running);
        info!(
            build = %&request.hash[..16],
            version = %build.describe(),
            "staged a new build"
        );
        let reply = StageReply {
            build,
            already_running,
        };
        response
            .send_all(&encode(&reply)?, Bytes::new())
            .await
            .map_err(failed)
    }

    async fn install(&self, call: IncomingCall, response: ResponseWriter) -> Result<(), RpcError> {
        let request: InstallRequest = call.decode_header()?;
        validate_hash(&request.hash).map_err(bad_request)?;
        let staging = self.staging.clone();
        let running = self.running.clone();
        let hash = request.hash.clone();
        let path = tokio::task::spawn_blocking(move || staging.install(&hash, &running))
            .await
            .map_err(|error| RpcError::internal(error.to_string()))?
            .map_err(|error| match error {
                UpgradeError::Invalid(message) => RpcError::bad_request(message),
                other => RpcError::internal(other.to_string()),
            })?;
        info!(build = %&request.hash[..16], "installing a new build: restarting into it");
        response.send_all(&[], Bytes::new()).await.map_err(failed)?;
        let restart = self.restart.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ANSWER_GRACE).await;
            restart.request(path);
        });
        Ok(())
    }
}

#[async_trait::async_trait]
impl bramble_net::StreamHandler for UpgradeService {
    async fn handle(&self, call: IncomingCall, response: ResponseWriter) -> Result<(), RpcError> {
        if !matches!(call.caller, Caller::Admin(_)) {
            return Err(RpcError::new(
                ErrorKind::Unauthorized,
                "only an admin may stage or install a build",
            ));
        }
        let _turn = self.turn.clone().try_acquire_owned().map_err(|_| {
            RpcError::new(
                ErrorKind::Unavailable,
                "another upgrade call is running on this node",
            )
        })?;
        match call.method_name() {
            "stage" => self.stage(call, response).await,
            "install" => self.install(call, response).await,
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("the upgrade service has no method {other:?}"),
            )),
        }
    }
}

fn bad_request(error: UpgradeError) -> RpcError {
    RpcError::bad_request(error.to_string())
}

fn internal(error: impl std::fmt::Display) -> RpcError {
    RpcError::internal(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_header() -> Vec<u8> {
        let mut header = std::fs::read("/proc/self/exe").unwrap_or_default();
        header.truncate(64);
        header
    }

    #[test]
    fn this_test_s_own_executable_passes_the_header_check() {
        assert!(check_executable_header(&own_header()).is_ok());
    }

    #[test]
    fn another_machine_s_executable_is_refused_by_name() {
        let mut header = own_header();
        // aarch64 on x86_64, x86_64 elsewhere.
        let other: u16 = if std::env::consts::ARCH == "aarch64" {
            62
        } else {
            183
        };
        header[4] = 2;
        header[18..20].copy_from_slice(&other.to_le_bytes());
        let error = check_executable_header(&header)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("is an executable for"), "{error}");
        assert!(error.contains("this node is"), "{error}");
    }

    #[test]
    fn the_architecture_of_an_executable_is_read_from_its_elf_header() {
        let own = own_header();
        assert_eq!(elf_architecture(&own), Some(std::env::consts::ARCH));
        let mut arm = own.clone();
        arm[18..20].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(elf_architecture(&arm), Some("arm"));
        assert_eq!(
            elf_architecture(b"#!/bin/sh\nexec true\n and more bytes"),
            None
        );
    }

    #[test]
    fn a_script_is_not_an_executable_for_this_node() {
        let error = check_executable_header(b"#!/bin/sh\necho hello world, I am here\n")
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("not an ELF executable"), "{error}");
    }

    #[test]
    fn hashes_are_checked_for_shape() {
        assert!(validate_hash(&"a".repeat(64)).is_ok());
        assert!(validate_hash(&"A".repeat(64)).is_err());
        assert!(validate_hash("../../etc/passwd").is_err());
        assert!(validate_hash(&"a".repeat(63)).is_err());
    }

    fn temporary_directory(name: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!(
            "bramble-upgrade-test-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).unwrap_or_default();
        directory
    }

    #[test]
    fn the_launcher_becomes_the_installed_build_until_it_is_abandoned() {
        let data = temporary_directory("launch");
        let staging = Staging::new(&data);
        std::fs::create_dir_all(&staging.directory).unwrap_or_default();
        let contents = b"\x7fELF pretend build";
        let hash = blake3::hash(contents).to_hex().to_string();
        std::fs::write(staging.staged_path(&hash), contents).unwrap_or_default();
        let packaged = data.join("packaged");
        std::fs::write(&packaged, b"packaged").unwrap_or_default();
        assert_eq!(launch_target(&data, &packaged), Launch::Continue);
        let installed = staging.install(&hash, &packaged).ok();
        assert_eq!(installed.as_ref(), Some(&staging.staged_path(&hash)));
        for launch in 1..=MAX_UNCONFIRMED_LAUNCHES {
            assert_eq!(
                launch_target(&data, &packaged),
                Launch::Become(staging.staged_path(&hash)),
                "start {launch}"
            );
        }
        assert_eq!(
            launch_target(&data, &packaged),
            Launch::Abandoned {
                hash: hash.clone(),
                launches: MAX_UNCONFIRMED_LAUNCHES
            }
        );
        assert_eq!(launch_target(&data, &packaged), Launch::Continue);
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn a_confirmed_build_is_never_abandoned_and_a_changed_one_is_refused() {
        let data = temporary_directory("confirm");
        let staging = Staging::new(&data);
        std::fs::create_dir_all(&staging.directory).unwrap_or_default();
        let contents = b"\x7fELF another pretend build";
        let hash = blake3::hash(contents).to_hex().to_string();
        let path = staging.staged_path(&hash);
        std::fs::write(&path, contents).unwrap_or_default();
        let packaged = data.join("packaged");
        std::fs::write(&packaged, b"packaged").unwrap_or_default();
        assert!(staging.install(&hash, &packaged).is_ok());
        // The installed build itself starts and reports healthy.
        assert_eq!(launch_target(&data, &path), Launch::Continue);
        confirm(&data, &path);
        for _ in 0..=MAX_UNCONFIRMED_LAUNCHES {
            assert_eq!(
                launch_target(&data, &packaged),
                Launch::Become(path.clone())
            );
        }
        // A bit flipped on disk after staging: installing it again is refused.
        std::fs::write(&path, b"\x7fELF another pretend bujld").unwrap_or_default();
        let error = staging
            .install(&hash, &packaged)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("changed on disk"), "{error}");
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&data);
    }
}
