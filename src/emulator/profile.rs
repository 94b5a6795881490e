//! Board profiles for the emulator (`bramble up --profile pi3b`): each emulated node runs
//! as fast, with as many cores and as much memory as a Raspberry Pi of that model, as the
//! emulation article's QEMU Pis ran on a share of a host core (pidoc). The kernel enforces
//! it: the node's parent cgroup `bramble-<cluster>-<node>` gets a CFS quota and a memory
//! limit, the agent runs in its leaf `agent`, and the programs the agent starts (service
//! replicas, tasks) go into sibling children, so everything the node runs shares the board.
//!
//! - **Calibration.** A board's speed is its figure in the seeds' `sysbench --test=cpu
//!   --cpu-max-prime=9999` (milliseconds per event, one thread). `up` measures this host's
//!   CPU time per event of the same loop (`bramble bench cpu`'s), as the thread's own CPU
//!   time so a busy host does not make it look slower, and gives each emulated core the
//!   fraction host / board of a host core: the quota is cores × fraction × period. It
//!   measures twice: flat out, which gives the quota's shape, then in a probe process
//!   inside a throw-away cgroup with that quota, running the way the node will (bursts of
//!   the quota, idle for the rest of each period), which is slower per event and gives the
//!   quota used.
//! - **What a quota cannot do.** CFS bandwidth control bounds the node's CPU time summed
//!   over its threads, not each thread's: one busy thread on an otherwise idle 4-core board
//!   may use the whole board's quota, and so runs up to 4x faster than one core of the
//!   real board. `bench cpu --threads <cores>` is what lands on the board's per-event
//!   figure (every core busy), and the drill measures it that way.
//! - **Stored.** The board, the measured host figure and the quota are kept in the
//!   emulation's `cluster.toml`, and every start of an emulated agent (`up`, `chaos
//!   restart`, `reboot --rolling`) writes them again through [`agent_cgroup_for`].
//! - **Network.** Each profile carries its Ethernet rate, which `--netns` mode shapes with
//!   `tc`; on loopback nothing is shaped.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use bramble_cluster::AdminCredential;
use bramble_compute::limits::{
    AgentCgroup, MAXIMUM_CPU_PERIOD_MICROSECONDS, MINIMUM_CPU_QUOTA_MICROSECONDS, NodeCgroups,
    NodeLimits,
};
use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
const MEGABIT: u64 = 1_000_000;

/// The kernel's default CFS period, used unless the quota would fall under 1 ms.
pub const DEFAULT_PERIOD_MICROSECONDS: u64 = 100_000;

/// The `--cpu-max-prime` the seeds' board figures were measured at.
pub const CALIBRATION_MAX_PRIME: u64 = 9_999;

/// A board `bramble up --profile` can emulate.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Hash, PartialOrd,
)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Board {
    /// Raspberry Pi 1 B: 1 core, 33.05 ms per event, 512 MiB, 100 Mbit/s.
    Pi1,
    /// Raspberry Pi Zero W: 1 core, 22.82 ms per event, 512 MiB, 100 Mbit/s (a USB adapter).
    Zero,
    /// Raspberry Pi 2 B: 4 cores, 22.49 ms per event, 1 GiB, 100 Mbit/s.
    Pi2,
    /// Raspberry Pi 3 B: 4 cores, 13.96 ms per event, 1 GiB, 100 Mbit/s.
    Pi3b,
    /// Raspberry Pi 3 B with the Kraken article's USB gigabit adapter: 224 Mbit/s.
    Pi3bUsbGigabit,
    /// Raspberry Pi 4 B: 4 cores, 9.26 ms per event, 2 GiB, 1 Gbit/s.
    Pi4b,
    /// Raspberry Pi 5: 4 cores, 5.00 ms per event (derived), 4 GiB, 1 Gbit/s.
    Pi5,
    /// This host, unlimited (no cgroups).
    Host,
}

/// What a board gives each emulated node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BoardProfile {
    pub board: Board,
    /// `Raspberry Pi 3 B`.
    pub label: &'static str,
    /// The seeds' sysbench figure, one thread, `--cpu-max-prime=9999` (None: the host).
    pub milliseconds_per_event: Option<f64>,
    /// Where that figure comes from.
    pub source: &'static str,
    pub cores: u32,
    /// None: the host's.
    pub memory_bytes: Option<u64>,
    /// The board's Ethernet rate, for `--netns` mode's `tc` shaping (None: unshaped).
    pub network_bits_per_second: Option<u64>,
}

const SEEDS: &str = "REFERENCE.md: sysbench --test=cpu --cpu-max-prime=9999, article 003";

impl Board {
    pub fn profile(self) -> BoardProfile {
        let board = |label, milliseconds, cores, memory_bytes, megabits| BoardProfile {
            board: self,
            label,
            milliseconds_per_event: Some(milliseconds),
            source: SEEDS,
            cores,
            memory_bytes: Some(memory_bytes),
            network_bits_per_second: Some(megabits * MEGABIT),
        };
        match self {
            Board::Pi1 => board("Raspberry Pi 1 B", 33.05, 1, 512 * MIB, 100),
            Board::Zero => board("Raspberry Pi Zero W", 22.82, 1, 512 * MIB, 100),
            Board::Pi2 => board("Raspberry Pi 2 B", 22.49, 4, GIB, 100),
            Board::Pi3b => board("Raspberry Pi 3 B", 13.96, 4, GIB, 100),
            Board::Pi3bUsbGigabit => BoardProfile {
                label: "Raspberry Pi 3 B, USB gigabit adapter",
                source: "REFERENCE.md: the Pi 3 B's sysbench figure (003); 224 Mbit/s measured \
                         through the adapter (001)",
                ..board("", 13.96, 4, GIB, 224)
            },
            Board::Pi4b => board("Raspberry Pi 4 B (2 GB)", 9.26, 4, 2 * GIB, 1000),
            Board::Pi5 => BoardProfile {
                label: "Raspberry Pi 5 (4 GB)",
                // No 32-bit figure of the seeds' kind is published for the Pi 5: the Pi 4
                // B's 9.26 ms scaled by the Pi 4 / Pi 5 ratio of one published run of
                // sysbench 1.0.20 (cpu, 10,000, one thread) on both: 1,477.83 and
                // 2,737.49 events/s (leoncode.co.uk/articles/raspberry-pi-benchmarks).
                source: "derived: 9.26 ms x 1477.83 / 2737.49 (Pi 4 and Pi 5 in one \
                         published sysbench 1.0.20 run, leoncode.co.uk)",
                ..board("", 9.26 * 1477.83 / 2737.49, 4, 4 * GIB, 1000)
            },
            Board::Host => BoardProfile {
                board: self,
                label: "this host, unlimited",
                milliseconds_per_event: None,
                source: "-",
                cores: std::thread::available_parallelism()
                    .map(|count| count.get() as u32)
                    .unwrap_or(1),
                memory_bytes: None,
                network_bits_per_second: None,
            },
        }
    }

    /// The name `--profile` takes (`pi3b`).
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|value| value.get_name().to_string())
            .unwrap_or_default()
    }
}

/// How the quota was chosen for this host.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// This host's CPU time per event of the same loop, measured at `up`.
    pub host_milliseconds_per_event: f64,
    /// The share of one host core an emulated core gets (host / board).
    pub fraction_per_core: f64,
    pub cpu_quota_microseconds: u64,
    pub cpu_period_microseconds: u64,
    pub memory_bytes: u64,
}

impl Calibration {
    pub fn node_limits(&self) -> NodeLimits {
        NodeLimits {
            cpu_quota_microseconds: self.cpu_quota_microseconds,
            cpu_period_microseconds: self.cpu_period_microseconds,
            memory_bytes: self.memory_bytes,
        }
    }

    /// The CPUs the whole board may use, in host CPUs (`0.092`).
    pub fn host_cpus(&self) -> f64 {
        self.cpu_quota_microseconds as f64 / self.cpu_period_microseconds as f64
    }
}

/// The profile an emulated cluster runs with, as `cluster.toml` keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileState {
    pub board: Board,
    /// None for `host` (no limits).
    #[serde(default)]
    pub calibration: Option<Calibration>,
}

impl ProfileState {
    /// One line: `pi3b (Raspberry Pi 3 B): 4 cores at 2.3 % of a host core each (quota
    /// 9200 µs per 100000 µs), 1 GiB, 100 Mbit/s`.
    pub fn describe(&self) -> String {
        let profile = self.board.profile();
        let Some(calibration) = &self.calibration else {
            return format!("{} ({})", self.board.name(), profile.label);
        };
        let network = profile
            .network_bits_per_second
            .map(|rate| format!(", {} Mbit/s in --netns mode", rate / MEGABIT))
            .unwrap_or_default();
        format!(
            "{} ({}): {} core(s) at {:.2} % of a host core each (quota {} µs per {} µs: {:.3} host CPUs), {}{network}; \
             this host: {:.3} ms per event, the board: {:.2} ms",
            self.board.name(),
            profile.label,
            profile.cores,
            calibration.fraction_per_core * 100.0,
            calibration.cpu_quota_microseconds,
            calibration.cpu_period_microseconds,
            calibration.host_cpus(),
            bramble_compute::limits::describe_bytes(calibration.memory_bytes),
            calibration.host_milliseconds_per_event,
            profile.milliseconds_per_event.unwrap_or_default(),
        ) + &self
            .warning()
            .map(|warning| format!(". Warning: {warning}"))
            .unwrap_or_default()
    }

    /// What to expect of a board whose share is too small for the agent: a quota of the
    /// kernel's minimum 1 ms spread over a longer period runs the node 1 ms and then stops it
    /// for the rest of the period, longer than the catalog's 100 ms RPC timeout.
    pub fn warning(&self) -> Option<String> {
        let calibration = self.calibration.as_ref()?;
        (calibration.cpu_period_microseconds > DEFAULT_PERIOD_MICROSECONDS).then(|| {
            format!(
                "the board's share is so small that each node runs {} ms and then waits {} ms, \
                 longer than the catalog's 100 ms RPC timeout: measured with a Pi 1, gossip \
                 forms but the catalog elects leaders over and over and `up` fails",
                calibration.cpu_quota_microseconds / 1000,
                (calibration.cpu_period_microseconds - calibration.cpu_quota_microseconds) / 1000
            )
        })
    }

    /// For `--json`: the state, and the profile's figures.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "board": self.board,
            "profile": self.board.profile(),
            "calibration": self.calibration,
        })
    }
}

/// Why a board cannot be emulated on this host.
#[derive(Debug, PartialEq)]
pub enum CalibrationError {
    /// The host's core is not faster than the board's: a quota only slows.
    HostTooSlow {
        host: f64,
        board: f64,
        label: &'static str,
    },
    /// The board's share is under the kernel's smallest quota even at the longest period.
    HostTooFast {
        host: f64,
        label: &'static str,
    },
    BadMeasurement(f64),
}

impl std::fmt::Display for CalibrationError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalibrationError::HostTooSlow { host, board, label } => write!(
                formatter,
                "this host's core ({host:.3} ms per event) is not faster than a {label}'s \
                 ({board:.2} ms): a quota can slow a core but not speed it up; use a slower \
                 board or --profile host"
            ),
            CalibrationError::HostTooFast { host, label } => write!(
                formatter,
                "this host is so fast ({host:.4} ms per event) that a {label}'s share is under \
                 the kernel's smallest quota (1 ms per 1 s period)"
            ),
            CalibrationError::BadMeasurement(value) => write!(
                formatter,
                "the measured host figure {value} ms per event is not a usable number"
            ),
        }
    }
}

impl std::error::Error for CalibrationError {}

/// The quota for `profile` on a host whose core takes `host_milliseconds_per_event` of CPU
/// time per event: fraction = host / board per core, quota = cores × fraction × period,
/// with the kernel's 100 ms period unless that would make the quota less than the 1 ms
/// the kernel accepts (a Pi 1 on a fast host gets about 1 % of a core), in which case the
/// period grows (up to the 1 s maximum) until it does not. `None` for the host profile.
pub fn calibrate(
    profile: &BoardProfile,
    host_milliseconds_per_event: f64,
) -> Result<Option<Calibration>, CalibrationError> {
    let Some(board) = profile.milliseconds_per_event else {
        return Ok(None);
    };
    if !host_milliseconds_per_event.is_finite() || host_milliseconds_per_event <= 0.0 {
        return Err(CalibrationError::BadMeasurement(
            host_milliseconds_per_event,
        ));
    }
    let fraction_per_core = host_milliseconds_per_event / board;
    if fraction_per_core >= 1.0 {
        return Err(CalibrationError::HostTooSlow {
            host: host_milliseconds_per_event,
            board,
            label: profile.label,
        });
    }
    let share = fraction_per_core * f64::from(profile.cores);
    let mut period = DEFAULT_PERIOD_MICROSECONDS;
    if share * (period as f64) < MINIMUM_CPU_QUOTA_MICROSECONDS as f64 {
        // The smallest whole millisecond of period that gives a 1 ms quota.
        let needed = (MINIMUM_CPU_QUOTA_MICROSECONDS as f64 / share / 1000.0).ceil() as u64;
        period = needed.saturating_mul(1000);
        if period > MAXIMUM_CPU_PERIOD_MICROSECONDS {
            return Err(CalibrationError::HostTooFast {
                host: host_milliseconds_per_event,
                label: profile.label,
            });
        }
    }
    let quota = ((share * period as f64).round() as u64).max(MINIMUM_CPU_QUOTA_MICROSECONDS);
    Ok(Some(Calibration {
        host_milliseconds_per_event,
        fraction_per_core,
        cpu_quota_microseconds: quota,
        cpu_period_microseconds: period,
        memory_bytes: profile.memory_bytes.unwrap_or(u64::MAX),
    }))
}

/// The calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID): unlike the wall clock, it
/// does not run while the thread waits for a core another process holds.
fn thread_cpu_time() -> std::time::Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time);
    }
    std::time::Duration::new(
        time.tv_sec.max(0) as u64,
        time.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// This host's CPU time per event of `bench cpu`'s loop at the seeds' max prime, in
/// milliseconds: the median of five batches of about 60 ms of CPU time each (a batch
/// disturbed by an interrupt storm or a sibling hyperthread does not decide it).
pub fn measure_host_milliseconds_per_event() -> f64 {
    let mut batches = Vec::new();
    for _ in 0..5 {
        let started = thread_cpu_time();
        let mut events = 0u32;
        while events < 5 || (thread_cpu_time() - started).as_millis() < 60 {
            std::hint::black_box(bramble_compute::cpu_bench::prime_event(
                std::hint::black_box(CALIBRATION_MAX_PRIME),
            ));
            events += 1;
        }
        batches.push((thread_cpu_time() - started).as_secs_f64() * 1000.0 / f64::from(events));
    }
    median(batches)
}

/// The middle of `figures` (the upper middle of an even count); `figures` is never empty.
fn median(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

/// The longest and shortest probe run `calibrate-board` accepts, in milliseconds.
const PROBE_MILLISECONDS: std::ops::RangeInclusive<u64> = 100..=10_000;

/// How long each probe run lasts: at a Pi 3 B's share, 4 threads do about 280 events.
const PROBE_RUN_MILLISECONDS: u64 = 1_000;

/// How many probe runs `up` makes; their median decides. One run of 1.5 s was off by
/// 12 % on a busy CI machine (and a flat-out run here once by 75 %), enough to put the
/// board outside the drill's 10 %; runs on this machine spread by about 4 %.
const PROBE_RUNS: usize = 3;

/// The probe's side (`bramble calibrate-board`, started by `up` inside a throw-away board
/// cgroup): runs the loop on `threads` threads at once for `milliseconds` of wall time and
/// prints their CPU time per event, in milliseconds.
pub fn run_calibration_probe(args: &crate::cli::CalibrateBoardArgs) -> Result<()> {
    if !(1..=64).contains(&args.threads) {
        bail!("--threads must be 1 to 64, not {}", args.threads);
    }
    if !PROBE_MILLISECONDS.contains(&args.milliseconds) {
        bail!(
            "--milliseconds must be {} to {}, not {}",
            PROBE_MILLISECONDS.start(),
            PROBE_MILLISECONDS.end(),
            args.milliseconds
        );
    }
    let run_for = std::time::Duration::from_millis(args.milliseconds);
    let start_together = std::sync::Barrier::new(args.threads as usize);
    let results: Vec<(std::time::Duration, u32)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads)
            .map(|_| {
                scope.spawn(|| {
                    start_together.wait();
                    let started_wall = std::time::Instant::now();
                    let started = thread_cpu_time();
                    let mut events = 0u32;
                    while events < 5 || started_wall.elapsed() < run_for {
                        std::hint::black_box(bramble_compute::cpu_bench::prime_event(
                            std::hint::black_box(CALIBRATION_MAX_PRIME),
                        ));
                        events += 1;
                    }
                    (thread_cpu_time() - started, events)
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|handle| handle.join().ok())
            .collect()
    });
    let spent: f64 = results.iter().map(|(spent, _)| spent.as_secs_f64()).sum();
    let events: u32 = results.iter().map(|(_, events)| events).sum();
    if events == 0 {
        bail!("the probe's threads ran no event");
    }
    println!("{}", spent * 1000.0 / f64::from(events));
    Ok(())
}

/// This host's CPU time per event as a board's node gets it: a probe process runs the loop
/// on the board's cores inside a throw-away cgroup with `first`'s quota, so it runs the way
/// the node will, in bursts of the quota and idle for the rest of each period. Slower per
/// event than flat out (a core's clock ramps down while it idles, its caches and predictors
/// go cold): 4-7 % on this machine and over 10 % on a CI machine, enough to put a board
/// calibrated on the flat-out figure outside the drill's 10 %. The median of
/// [`PROBE_RUNS`] runs, so one disturbed run does not decide. Fails, with the reason, when
/// this host cannot enforce the quota (not root, no cpu or memory controller).
fn measure_as_the_board_runs(board: Board, first: &Calibration) -> Result<f64> {
    let probe = NodeCgroups::new(&format!("probe{}", std::process::id()), "probe");
    let outcome = (0..PROBE_RUNS)
        .map(|_| probe_in(&probe, board, first))
        .collect::<Result<Vec<f64>>>();
    probe.remove_node();
    Ok(median(outcome?))
}

fn probe_in(probe: &NodeCgroups, board: Board, first: &Calibration) -> Result<f64> {
    use std::os::unix::process::CommandExt;
    let name = board.name();
    let cores = board.profile().cores;
    let cgroup = probe
        .limit_node(&first.node_limits())
        .map_err(|error| {
            anyhow!(
                "{error} (board profiles limit each agent with cgroups: run as root, on a host \
                 with the cpu and memory controllers)"
            )
        })
        .with_context(|| format!("--profile {name} needs cgroups"))?;
    let binary = std::env::current_exe()
        .with_context(|| format!("--profile {name}: finding this binary for the probe"))?;
    let mut command = std::process::Command::new(&binary);
    command
        .args(["calibrate-board", "--threads", &cores.to_string()])
        .args(["--milliseconds", &PROBE_RUN_MILLISECONDS.to_string()])
        .stdin(std::process::Stdio::null());
    let confinement = cgroup.confinement();
    // SAFETY: `enter` makes only async-signal-safe system calls (write, setrlimit).
    unsafe {
        command.pre_exec(move || confinement.enter());
    }
    let output = command.output().with_context(|| {
        format!(
            "--profile {name}: running the calibration probe {}",
            binary.display()
        )
    })?;
    drop(cgroup);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "--profile {name}: the calibration probe failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    stdout
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|figure| figure.is_finite() && *figure > 0.0)
        .ok_or_else(|| {
            anyhow!("--profile {name}: the calibration probe printed {stdout:?}, not a figure")
        })
}

/// Decides the profile `up` runs with: the one asked for, or the one stored. A profile
/// asked for that differs from the stored one is calibrated anew (only while no agent
/// runs: running agents keep the limits they started with). Checks that this host can
/// enforce it before anything starts.
pub fn settle(
    stored: Option<ProfileState>,
    asked: Option<Board>,
    any_running: bool,
    directory: &Path,
) -> Result<Option<ProfileState>> {
    let Some(asked) = asked else {
        return Ok(stored);
    };
    if let Some(stored) = stored
        && stored.board == asked
    {
        return Ok(Some(stored));
    }
    if any_running {
        bail!(
            "the emulated cluster in {} runs with {}; stop it first (`bramble down`) to start it with --profile {}",
            directory.display(),
            stored.map_or_else(
                || "no profile".to_string(),
                |stored| format!("--profile {}", stored.board.name())
            ),
            asked.name()
        );
    }
    let profile = asked.profile();
    let calibration = match profile.milliseconds_per_event {
        None => None,
        Some(_) => {
            // The flat-out figure gives the quota's shape; the figure measured running in
            // that shape gives the quota.
            let refused = |error| anyhow!("--profile {}: {error}", asked.name());
            let flat_out = measure_host_milliseconds_per_event();
            match calibrate(&profile, flat_out).map_err(refused)? {
                Some(first) => {
                    let throttled = measure_as_the_board_runs(asked, &first)?;
                    calibrate(&profile, throttled).map_err(refused)?
                }
                None => None,
            }
        }
    };
    let settled = ProfileState {
        board: asked,
        calibration,
    };
    if let Some(warning) = settled.warning() {
        eprintln!("warning: --profile {}: {warning}", asked.name());
    }
    Ok(Some(settled))
}

/// The board cgroup an emulated agent of `data_dir` starts in, when its cluster runs with a
/// profile that limits (its limits written again now: the node's cgroups may have been
/// removed by `down`). `None` without a profile, with `host`, or outside an emulation.
pub fn agent_cgroup_for(data_dir: &Path) -> Result<Option<AgentCgroup>> {
    let (Some(directory), Some(node)) = (
        data_dir.parent(),
        data_dir.file_name().and_then(|name| name.to_str()),
    ) else {
        return Ok(None);
    };
    let state_path = directory.join(super::STATE_FILE);
    if !state_path.exists() {
        return Ok(None);
    }
    let state: super::EmulationState = bramble_util::files::read_toml(&state_path)?;
    let Some(calibration) = state.profile.and_then(|profile| profile.calibration) else {
        return Ok(None);
    };
    let admin_path = directory.join(AdminCredential::FILE_NAME);
    let admin = AdminCredential::load(&admin_path)
        .with_context(|| format!("reading the cluster's identity in {}", admin_path.display()))?;
    let cgroups = NodeCgroups::new(&admin.cluster_id, node);
    let agent = cgroups
        .limit_node(&calibration.node_limits())
        .with_context(|| {
            format!("putting {node} in its board's cgroup (the cluster runs with a --profile)")
        })?;
    Ok(Some(agent))
}

/// Removes a node's cgroups once its agent has stopped (`down`): what still runs in them is
/// killed. Nothing happens for a node that has none.
pub fn remove_node_cgroups(cluster_id: &str, node: &str) {
    let cgroups = NodeCgroups::new(cluster_id, node);
    if !cgroups.remove_node() {
        tracing::warn!(node, "a cgroup of the node could not be removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn profiles_parse_by_name_and_carry_the_boards_figures() {
        for (name, board) in [
            ("pi1", Board::Pi1),
            ("zero", Board::Zero),
            ("pi2", Board::Pi2),
            ("pi3b", Board::Pi3b),
            ("pi3b-usb-gigabit", Board::Pi3bUsbGigabit),
            ("pi4b", Board::Pi4b),
            ("pi5", Board::Pi5),
            ("host", Board::Host),
        ] {
            assert_eq!(Board::from_str(name, false), Ok(board), "{name}");
            assert_eq!(board.name(), name);
            let stored = toml::to_string(&ProfileState {
                board,
                calibration: None,
            })
            .expect("toml");
            assert!(stored.contains(&format!("board = \"{name}\"")), "{stored}");
        }
        assert!(Board::from_str("pi9", false).is_err());
        assert!(Board::from_str("", false).is_err());
        let pi3b = Board::Pi3b.profile();
        assert_eq!(pi3b.milliseconds_per_event, Some(13.96));
        assert_eq!(pi3b.cores, 4);
        assert_eq!(pi3b.memory_bytes, Some(GIB));
        assert_eq!(pi3b.network_bits_per_second, Some(100_000_000));
        assert_eq!(
            Board::Pi3bUsbGigabit.profile().network_bits_per_second,
            Some(224_000_000)
        );
        assert_eq!(Board::Pi1.profile().cores, 1);
        assert_eq!(Board::Zero.profile().memory_bytes, Some(512 * MIB));
        let pi5 = Board::Pi5
            .profile()
            .milliseconds_per_event
            .unwrap_or_default();
        assert!((pi5 - 5.00).abs() < 0.01, "{pi5}");
        assert_eq!(Board::Host.profile().milliseconds_per_event, None);
    }

    #[test]
    fn the_quota_is_cores_times_the_host_share_of_the_boards_speed() {
        // REFERENCE.md's own host: sysbench 3,116 events/s, 0.321 ms per event.
        let host = 1000.0 / 3116.0;
        let pi3b = calibrate(&Board::Pi3b.profile(), host)
            .expect("calibrates")
            .expect("limits");
        assert!((pi3b.fraction_per_core - host / 13.96).abs() < 1e-12);
        assert_eq!(pi3b.cpu_period_microseconds, 100_000);
        // 4 cores x 2.30 % x 100 ms.
        assert_eq!(pi3b.cpu_quota_microseconds, 9_196);
        assert_eq!(pi3b.memory_bytes, GIB);
        // A Pi 1's single core at 0.97 % would be 971 µs per 100 ms, under the kernel's
        // 1 ms: the period grows to 103 ms.
        let pi1 = calibrate(&Board::Pi1.profile(), host)
            .expect("calibrates")
            .expect("limits");
        assert_eq!(pi1.cpu_period_microseconds, 103_000);
        assert_eq!(pi1.cpu_quota_microseconds, 1_000);
        assert!((pi1.host_cpus() - host / 33.05).abs() / (host / 33.05) < 0.01);
        let stalls = ProfileState {
            board: Board::Pi1,
            calibration: Some(pi1),
        };
        assert!(
            stalls
                .warning()
                .is_some_and(|warning| warning.contains("runs 1 ms and then waits 102 ms")),
            "{:?}",
            stalls.warning()
        );
        let smooth = ProfileState {
            board: Board::Pi3b,
            calibration: Some(pi3b),
        };
        assert_eq!(smooth.warning(), None);
        // The host profile limits nothing.
        assert_eq!(calibrate(&Board::Host.profile(), host), Ok(None));
        // A host slower than the board cannot emulate it; one so fast that the share is
        // under 1 ms per second cannot either; a broken measurement is refused.
        assert!(matches!(
            calibrate(&Board::Pi5.profile(), 6.0),
            Err(CalibrationError::HostTooSlow { .. })
        ));
        assert!(matches!(
            calibrate(&Board::Pi1.profile(), 0.02),
            Err(CalibrationError::HostTooFast { .. })
        ));
        assert!(calibrate(&Board::Pi1.profile(), f64::NAN).is_err());
        assert!(calibrate(&Board::Pi1.profile(), 0.0).is_err());
    }

    #[test]
    fn this_host_is_measured_in_its_own_cpu_time() {
        let measured = measure_host_milliseconds_per_event();
        // A core of this decade: 0.1 to 5 ms per event (a Pi 4 in 64-bit takes 0.68).
        assert!((0.05..5.0).contains(&measured), "{measured} ms per event");
    }
}
