//! Agent processes: finding them from their pid files (the agent refuses to start twice on
//! one data directory), reading their state and footprint from /proc, sending signals (to
//! agents, and to service replicas' process groups for `chaos`), and starting them
//! detached (the emulator).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bramble_cluster::node_dir::Layout;
use serde::Serialize;

/// What the kernel says about an agent's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    Running,
    /// SIGSTOPped (a hung board in the drills).
    Stopped,
    /// Not running (never started, exited, or killed).
    Exited,
}

impl ProcessState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProcessState::Running => "running",
            ProcessState::Stopped => "stopped",
            ProcessState::Exited => "exited",
        }
    }
}

/// A live agent process and its footprint.
#[derive(Debug, Clone, Serialize)]
pub struct AgentProcess {
    pub pid: u32,
    pub state: ProcessState,
    pub rss_kib: u64,
    /// CPU time used since start, as a percentage of one core.
    pub cpu_percent_average: f64,
}

fn read_proc(path: &str) -> Option<String> {
    let bytes = bramble_util::files::read_bounded(Path::new(path), 64 * 1024).ok()?;
    String::from_utf8(bytes).ok()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Reads the agent of `data_dir` from its pid file, checking that the pid still belongs to
/// an agent of that directory (pids are reused).
pub fn agent_process(data_dir: &Path) -> Option<AgentProcess> {
    let pid_text = read_proc(Layout::new(data_dir).pid_file().to_str()?)?;
    let pid: u32 = pid_text.trim().parse().ok()?;
    let command_line = read_proc(&format!("/proc/{pid}/cmdline"))?;
    let data_dir_text = data_dir.to_string_lossy();
    let arguments: Vec<&str> = command_line.split('\0').collect();
    if !arguments.contains(&"agent") || !arguments.iter().any(|argument| *argument == data_dir_text)
    {
        return None;
    }
    let stat = read_proc(&format!("/proc/{pid}/stat"))?;
    let fields = stat_fields(&stat);
    let state = match fields.first()? {
        &"T" | &"t" => ProcessState::Stopped,
        &"Z" | &"X" => return None,
        _ => ProcessState::Running,
    };
    let ticks = clock_ticks_per_second();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    let start_ticks: f64 = fields.get(19)?.parse().ok()?;
    let uptime: f64 = read_proc("/proc/uptime")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let running_seconds = (uptime - start_ticks / ticks).max(0.001);
    let rss_kib = read_proc(&format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(AgentProcess {
        pid,
        state,
        rss_kib,
        cpu_percent_average: (user + system) / ticks / running_seconds * 100.0,
    })
}

/// Whether process `pid` is stopped (SIGSTOP), from /proc.
pub fn process_is_stopped(pid: u32) -> bool {
    read_proc(&format!("/proc/{pid}/stat"))
        .and_then(|stat| {
            stat_fields(&stat)
                .first()
                .map(|state| matches!(*state, "T" | "t"))
        })
        .unwrap_or(false)
}

/// The fields of `/proc/<pid>/stat` after the command name, which sits in parentheses
/// and may itself contain spaces: the process state first.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// Starts `bramble agent --data-dir <data_dir>` in its own session (so closing the terminal
/// or pressing Ctrl-C in it does not reach the agent), logging to `<data_dir>/agent.log`.
pub fn spawn_agent(data_dir: &Path) -> Result<u32> {
    // This very executable through the magic link, which still opens it after a rebuild
    // or a package upgrade replaced the file under its name (`current_exe` would then name
    // a deleted path); the name is kept as argv[0] for `ps`.
    let name = std::env::current_exe()
        .map(|path| path.into_os_string())
        .unwrap_or_else(|_| "bramble".into());
    let log_path = data_dir.join("agent.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = Command::new("/proc/self/exe");
    std::os::unix::process::CommandExt::arg0(&mut command, name);
    command
        .arg("agent")
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("BRAMBLE_DIR")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log);
    detach(&mut command);
    // Network-namespace mode (`up --netns`): the agent starts in its node's namespace
    // (the file stays open until the spawn returns).
    let namespace = crate::emulator::netns::agent_namespace(data_dir)?;
    if let Some(namespace) = &namespace {
        crate::emulator::netns::enter_in_child(&mut command, namespace);
    }
    // An emulated board (`up --profile`): the agent starts inside the node's cgroup, from
    // its first instruction (kept open until the spawn returns).
    let board = crate::emulator::profile::agent_cgroup_for(data_dir)?;
    if let Some(board) = &board {
        let confinement = board.confinement();
        // SAFETY: `enter` makes only async-signal-safe system calls (write, setrlimit).
        unsafe {
            command.pre_exec(move || confinement.enter());
        }
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting the agent for {}", data_dir.display()))?;
    Ok(child.id())
}

/// Makes a child start its own session, so that closing the terminal or pressing Ctrl-C in
/// it does not reach the child.
pub fn detach(command: &mut Command) {
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// Signals the process group `pid` leads (a service replica leads its own, so whatever it
/// started gets the signal too, as on a board losing power), or `pid` alone when it
/// leads none.
pub fn send_signal_to_group_of(pid: u32, signal: libc::c_int) -> Result<()> {
    let leads_its_group = read_proc(&format!("/proc/{pid}/stat")).is_some_and(|stat| {
        // The fields after the name: state, parent, process group.
        stat_fields(&stat)
            .get(2)
            .and_then(|group| group.parse::<u32>().ok())
            == Some(pid)
    });
    if !leads_its_group {
        return send_signal(pid, signal);
    }
    // SAFETY: kill has no memory-safety preconditions.
    let result = unsafe { libc::kill(-(pid as libc::pid_t), signal) };
    if result != 0 {
        bail!(
            "could not signal the process group of {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

pub fn send_signal(pid: u32, signal: libc::c_int) -> Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    let result = unsafe { libc::kill(pid as libc::pid_t, signal) };
    if result != 0 {
        bail!(
            "could not signal process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Waits until the agent of `data_dir` has exited, up to `timeout`.
pub async fn wait_for_exit(data_dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if agent_process(data_dir).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent_process(data_dir).is_none()
}

/// Stops an agent: SIGTERM (and SIGCONT, in case it is stopped), then SIGKILL if it has not
/// exited after `grace`.
pub async fn stop_agent(data_dir: &Path, grace: Duration) -> Result<()> {
    let Some(process) = agent_process(data_dir) else {
        return Ok(());
    };
    send_signal(process.pid, libc::SIGTERM)?;
    if process.state == ProcessState::Stopped {
        send_signal(process.pid, libc::SIGCONT)?;
    }
    if !wait_for_exit(data_dir, grace).await {
        send_signal(process.pid, libc::SIGKILL)?;
        wait_for_exit(data_dir, Duration::from_secs(5)).await;
    }
    Ok(())
}

/// The last lines of an agent's log, to show why it failed to start.
pub fn log_tail(data_dir: &Path, lines: usize) -> String {
    let text =
        read_proc(data_dir.join("agent.log").to_str().unwrap_or_default()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
