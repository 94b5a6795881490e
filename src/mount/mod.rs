//! `bramble mount <volume> <dir>`: a volume as a directory, through FUSE (the `fuser`
//! crate, no libfuse; root mounts directly). The mount is a client of the cluster, like
//! GlusterFS's FUSE client: it reaches any agent with the operator's credential and moves
//! file bodies over bulk streams ([`remote`]); [`filesystem`] answers the kernel;
//! [`inodes`] maps the kernel's inode numbers to volume paths; [`known`] answers lookups
//! of names absent from a directory this mount has just made or listed; [`quick_read`]
//! serves reads of small files from the listing that has just brought their bytes.
//!
//! By default the command starts the mount in the background (like `mount -t
//! glusterfs`) and returns once the directory is mounted; `--foreground` keeps it
//! attached. The mount ends with `umount <dir>` (or `fusermount -u`) or SIGTERM/SIGINT.

mod behind;
mod filesystem;
mod inodes;
mod known;
mod quick_read;
mod remote;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bramble_store::admin::{METHOD_VOLUME_INFO, VolumeName};
use bramble_store::volume::VolumeSpec;
use bramble_util::ShutdownTrigger;
use fuser::{Config, MountOption, SessionACL};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{GlobalOptions, MountArgs};

/// Locks a mutex of the mount, going on past a panic elsewhere (the data it guards are
/// maps that a panicking task leaves consistent).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// How long an unmount waits for commits running behind closes (`--flush-behind`).
const SETTLE_AT_UNMOUNT: Duration = Duration::from_secs(60);

pub async fn run(global: &GlobalOptions, args: &MountArgs) -> Result<()> {
    let directory = std::fs::canonicalize(&args.directory).with_context(|| {
        format!(
            "the mount point {} does not exist",
            args.directory.display()
        )
    })?;
    if !directory.is_dir() {
        bail!("the mount point {} is not a directory", directory.display());
    }
    if is_mounted(&directory) {
        bail!("{} is already a mount point", directory.display());
    }
    let client = crate::target::resolve(global)?;
    // Fail here, in the caller's terminal, if the volume does not exist.
    let (_, spec): (_, VolumeSpec) = client
        .call_any(
            METHOD_VOLUME_INFO,
            &VolumeName {
                name: args.volume.clone(),
            },
        )
        .await?;
    if !args.foreground {
        return start_in_background(args, &directory);
    }
    let (_trigger, shutdown) = ShutdownTrigger::new();
    let remote = Arc::new(remote::Remote::new(
        client.mux(shutdown),
        client.agents().to_vec(),
    ));
    let behind = Arc::new(behind::FlushBehind::new(args.flush_behind));
    let file_system = filesystem::VolumeFs::new(
        &spec.name,
        remote,
        tokio::runtime::Handle::current(),
        behind.clone(),
    );
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("bramble:{}", spec.name)),
        MountOption::Subtype("bramble".to_string()),
        MountOption::RW,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if args.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(2);
    let mut session = fuser::Session::new(file_system, &directory, &config)
        .with_context(|| format!("mounting {} on {}", spec.name, directory.display()))?;
    let mut unmounter = session.unmount_callable();
    let background = session.spawn().context("starting the FUSE session")?;
    eprintln!("mounted volume {} on {}", spec.name, directory.display());
    let finished = tokio::task::spawn_blocking(move || background.join());
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT")?;
    tokio::pin!(finished);
    tokio::select! {
        _ = &mut finished => {}
        _ = terminate.recv() => {
            let _ = unmounter.unmount();
            let _ = finished.await;
        }
        _ = interrupt.recv() => {
            let _ = unmounter.unmount();
            let _ = finished.await;
        }
    }
    // Files closed with --flush-behind whose commit is still running are stored before
    // the process ends (the kernel has already detached the directory).
    if behind.pending() > 0 {
        eprintln!(
            "storing {} file(s) closed before the unmount",
            behind.pending()
        );
        if tokio::time::timeout(SETTLE_AT_UNMOUNT, behind.settle_within(""))
            .await
            .is_err()
        {
            eprintln!(
                "{} file(s) closed before the unmount were not stored within {SETTLE_AT_UNMOUNT:?}",
                behind.pending()
            );
        }
    }
    eprintln!("unmounted {}", directory.display());
    Ok(())
}

/// Runs this command again with `--foreground`, detached, its output in a log file, and
/// waits until the directory is mounted.
fn start_in_background(args: &MountArgs, directory: &Path) -> Result<()> {
    let log = log_path(&args.volume, directory);
    let log_file = std::fs::File::create(&log)
        .with_context(|| format!("creating the mount's log {}", log.display()))?;
    let executable = std::env::current_exe().context("finding the bramble executable")?;
    let mut command = std::process::Command::new(executable);
    command
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().context("duplicating the log handle")?)
        .stderr(log_file);
    crate::process::detach(&mut command);
    let mut child = command.spawn().context("starting the mount process")?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if is_mounted(directory) {
            println!(
                "mounted volume {} on {} (pid {}, log {}); unmount with: umount {}",
                args.volume,
                directory.display(),
                child.id(),
                log.display(),
                directory.display()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("the mount process ended ({status}):\n{}", text.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(anyhow!(
        "{} was not mounted within 15 s; see {}",
        directory.display(),
        log.display()
    ))
}

fn log_path(volume: &str, directory: &Path) -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tag: String = directory
        .to_string_lossy()
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() {
                character
            } else {
                '_'
            }
        })
        .collect();
    base.join(format!("bramble-mount-{volume}{tag}.log"))
}

/// Whether `directory` is a mount point now (from /proc/self/mountinfo).
pub fn is_mounted(directory: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = directory.to_string_lossy();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| unescape_mount_point(mount_point) == wanted)
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape_mount_point(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && index + 3 < bytes.len()
            && let Ok(value) = u8::from_str_radix(&text[index + 1..index + 4], 8)
        {
            out.push(value);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
