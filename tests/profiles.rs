//! Board profiles (issue 13, item 5): `bramble up --profile pi3b` makes each emulated node
//! as fast as a Raspberry Pi 3 B, so `bramble bench cpu` lands within 10 % of the board's
//! figure in REFERENCE.md (13.96 ms per event); without the right to create cgroups,
//! `--profile` is refused with the reason rather than run unlimited.

mod harness;

use std::path::PathBuf;
use std::time::Instant;

use harness::TestCluster;
use serde_json::Value;

/// The Pi 3 B's figure: `sysbench --test=cpu --cpu-max-prime=9999`, ms per event.
const PI3B_MILLISECONDS_PER_EVENT: f64 = 13.96;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The cpu controller's tree (`/sys/fs/cgroup/cpu` on a v1 host, `/sys/fs/cgroup` on v2),
/// and whether it is v2.
fn cpu_tree() -> Option<(PathBuf, bool)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in mountinfo.lines() {
        let (before, after) = line.split_once(" - ")?;
        let point = before.split(' ').nth(4)?;
        let mut after = after.split(' ');
        let filesystem = after.next()?;
        let options = after.nth(1).unwrap_or_default();
        if filesystem == "cgroup" && options.split(',').any(|option| option == "cpu") {
            return Some((PathBuf::from(point), false));
        }
        if filesystem == "cgroup2"
            && std::fs::read_to_string(PathBuf::from(point).join("cgroup.controllers"))
                .is_ok_and(|controllers| controllers.split_whitespace().any(|name| name == "cpu"))
        {
            return Some((PathBuf::from(point), true));
        }
    }
    None
}

/// A keyed line of `cpu.stat`.
fn stat_value(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The agent's CPU time so far (all its threads, the finished ones too), in seconds.
fn process_cpu_seconds(pid: u64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / per_second
}

/// Each thread of the agent and its CPU time so far in nanoseconds, from the scheduler's
/// statistics (precise, where `/proc/<pid>/stat` counts 10 ms ticks).
fn thread_cpu_nanoseconds(pid: u64) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|task| {
                    let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
                    let nanoseconds = text.split_whitespace().next()?.parse().ok()?;
                    Some((task.file_name().to_string_lossy().into_owned(), nanoseconds))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One run of `bench cpu` on n1 with every core of the board busy; what it and the
/// cgroup's accounting say.
struct Attempt {
    /// sysbench's latency average: wall time per event, per thread.
    milliseconds_per_event: f64,
    /// CPU the agent used over the run, in host CPUs (its quota is the ceiling).
    cpus_used: f64,
    /// Periods in which the quota ran out, out of all periods of the run.
    throttled_share: f64,
    /// The share of the node's CPU over the run that went to the agent's own threads
    /// (gossip, catalog, monitor: every thread that was there before the run), not to the
    /// benchmark's (new threads, ended by the time it answers).
    housekeeping_share: f64,
}

fn bench_once(cluster: &TestCluster, pid: u64, cpu_stat: &PathBuf, threads: u32) -> Attempt {
    // 1,600 events over 4 threads: 400 each at 13.96 ms, about 5.6 s (bench cpu stops at
    // 12 s), over 50 CFS periods, so one period's rounding is 2 % at most.
    let events = 400 * threads;
    let stat_before = std::fs::read_to_string(cpu_stat).unwrap_or_default();
    let threads_before = thread_cpu_nanoseconds(pid);
    let cpu_before = process_cpu_seconds(pid);
    let started = Instant::now();
    let run = cluster.bramble_ok(&[
        "bench",
        "cpu",
        "--nodes",
        "n1",
        "--cpu-max-prime",
        "9999",
        "--threads",
        &threads.to_string(),
        "--events",
        &events.to_string(),
        "--time",
        "0",
        "--json",
    ]);
    let wall = started.elapsed().as_secs_f64();
    let used_seconds = process_cpu_seconds(pid) - cpu_before;
    let cpus_used = used_seconds / wall;
    let housekeeping_seconds = thread_cpu_nanoseconds(pid)
        .iter()
        .filter_map(|(thread, after)| Some(after.saturating_sub(*threads_before.get(thread)?)))
        .sum::<u64>() as f64
        / 1e9;
    let stat_after = std::fs::read_to_string(cpu_stat).unwrap_or_default();
    let periods = stat_value(&stat_after, "nr_periods") - stat_value(&stat_before, "nr_periods");
    let throttled =
        stat_value(&stat_after, "nr_throttled") - stat_value(&stat_before, "nr_throttled");
    let result: Value = run.json()[0].clone();
    assert_eq!(
        result["events"].as_u64(),
        Some(u64::from(events)),
        "{result}"
    );
    assert_eq!(result["primes_per_event"].as_u64(), Some(1228), "{result}");
    Attempt {
        milliseconds_per_event: result["latency_average_ms"].as_f64().expect("a latency"),
        cpus_used,
        throttled_share: throttled as f64 / periods.max(1) as f64,
        housekeeping_share: (housekeeping_seconds / used_seconds.max(1e-9)).clamp(0.0, 1.0),
    }
}

/// The drill. Why it does not flake on a loaded 2-core CI machine:
/// - *Faster than the board* cannot happen: the kernel lets the node's threads run at most
///   its quota per period (asserted on the process's own CPU accounting too), and the
///   quota is what makes 4 threads take 13.96 ms per event at this host's measured speed.
/// - *Slower than the board* happens only when the node does not get its whole quota, that
///   is when the host is so busy that even 9 % of a core is not free for it (CFS gives the
///   node's cgroup a top-level share like any one busy process: it takes about 30 busy
///   processes to push it under 6 % of two cores). The cgroup's own counters tell the two
///   apart: a run in which the quota ran out in most periods was bounded by the quota and
///   counts; a run that was starved is repeated, up to three times.
/// - The agent's own housekeeping (about 1 % of a host core in a debug build, a sixth of a
///   Pi 3 B's share) runs inside the same quota, as an operating system's does on a real
///   board; it is measured on the agent's own threads over the run (the benchmark runs on
///   new ones) and the figure is judged net of it, the raw figure printed and bounded
///   beside it (never faster than the board).
#[test]
fn a_pi3b_profile_makes_bench_cpu_land_on_the_pi3b_s_figure() {
    let Some((tree, unified)) = cpu_tree() else {
        eprintln!("SKIPPED: this host has no cpu controller");
        return;
    };
    if !is_root() {
        eprintln!("SKIPPED: board profiles need root (to create cgroups)");
        return;
    }
    let cluster = TestCluster::up_with(1, &["--bare", "--profile", "pi3b"]);
    let status = cluster.bramble_ok(&["status", "--json"]).json();
    let profile = &status["profile"];
    assert_eq!(profile["board"].as_str(), Some("pi3b"), "{status}");
    assert_eq!(profile["profile"]["cores"].as_u64(), Some(4), "{profile}");
    assert_eq!(
        profile["profile"]["network_bits_per_second"].as_u64(),
        Some(100_000_000),
        "{profile}"
    );
    let calibration = &profile["calibration"];
    let quota = calibration["cpu_quota_microseconds"]
        .as_f64()
        .expect("quota");
    let period = calibration["cpu_period_microseconds"]
        .as_f64()
        .expect("period");
    let host = calibration["host_milliseconds_per_event"]
        .as_f64()
        .expect("host figure");
    // 4 cores, each host / board of a host core.
    let expected_share = 4.0 * host / PI3B_MILLISECONDS_PER_EVENT;
    assert!(
        (quota / period - expected_share).abs() < 0.001 + expected_share * 0.01,
        "{calibration}"
    );
    let pid = status["nodes"][0]["pid"].as_u64().expect("n1's pid");

    // The agent is in its board's leaf, and the quota is on the board (the parent).
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroups");
    let path = cgroup
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let is_cpu = if unified {
                id == "0"
            } else {
                controllers.split(',').any(|name| name == "cpu")
            };
            is_cpu.then(|| path.to_string())
        })
        .expect("a cpu cgroup line");
    assert!(
        path.starts_with("/bramble-") && path.ends_with("-n1/agent"),
        "{cgroup}"
    );
    let board = tree.join(path.trim_start_matches('/').trim_end_matches("/agent"));
    let written = if unified {
        std::fs::read_to_string(board.join("cpu.max")).expect("cpu.max")
    } else {
        std::fs::read_to_string(board.join("cpu.cfs_quota_us")).expect("cpu.cfs_quota_us")
    };
    assert!(written.starts_with(&format!("{quota}")), "{written}");

    let cpu_stat = board.join("cpu.stat");
    let share = quota / period;
    let low = PI3B_MILLISECONDS_PER_EVENT * 0.9;
    let high = PI3B_MILLISECONDS_PER_EVENT * 1.1;
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let attempt = bench_once(&cluster, pid, &cpu_stat, 4);
        // The board's figure is sysbench's on a board doing nothing else; here the agent's
        // own housekeeping shares the quota with the benchmark's threads, so their figure
        // is also given net of it: what they would take with the whole board.
        let net = attempt.milliseconds_per_event * (1.0 - attempt.housekeeping_share);
        eprintln!(
            "bench cpu --threads 4 on a pi3b node: {:.2} ms per event; {net:.2} net of the \
             agent's housekeeping ({:.0} % of the node's CPU meanwhile); the Pi 3 B: \
             {PI3B_MILLISECONDS_PER_EVENT}. The node used {:.4} host CPUs of its {share:.4}; \
             the quota ran out in {:.0} % of periods",
            attempt.milliseconds_per_event,
            attempt.housekeeping_share * 100.0,
            attempt.cpus_used,
            attempt.throttled_share * 100.0
        );
        // The ceiling holds whatever the load (tick-granular accounting: 5 % slack).
        assert!(
            attempt.cpus_used <= share * 1.05 + 0.01,
            "used {:.4} CPUs, quota {share:.4}",
            attempt.cpus_used,
        );
        assert!(
            attempt.milliseconds_per_event >= low,
            "{:.2} ms per event is faster than a Pi 3 B allows",
            attempt.milliseconds_per_event
        );
        let bounded_by_quota = attempt.throttled_share >= 0.5;
        let within = (low..=high).contains(&net);
        attempts.push((attempt, net));
        if within || bounded_by_quota {
            break;
        }
    }
    let (last, net) = attempts.last().expect("an attempt");
    assert!(
        (low..=high).contains(net),
        "{net:.2} ms per event net of housekeeping ({:.2} raw), more than 10 % off the Pi 3 \
         B's {PI3B_MILLISECONDS_PER_EVENT} (quota ran out in {:.0} % of periods: {})",
        last.milliseconds_per_event,
        last.throttled_share * 100.0,
        if last.throttled_share >= 0.5 {
            "the quota bound it, so the calibration is off"
        } else {
            "this host was too busy to give the node its quota, three times"
        }
    );

    // One thread alone may use the whole board's quota (CFS bounds the sum over threads):
    // it runs faster than one Pi 3 B core, up to 4x.
    let alone = bench_once(&cluster, pid, &cpu_stat, 1);
    eprintln!(
        "bench cpu --threads 1 on a pi3b node: {:.2} ms per event",
        alone.milliseconds_per_event
    );
    assert!(
        alone.milliseconds_per_event >= PI3B_MILLISECONDS_PER_EVENT / 4.0 * 0.9,
        "{:.2} ms per event",
        alone.milliseconds_per_event
    );

    // `down` removes the board's cgroups.
    drop(cluster);
    assert!(!board.exists(), "{} is left", board.display());
}

/// Without the right to create cgroups (not root), `--profile` is refused with the reason,
/// before anything is created or started: never a silently unlimited "board".
#[test]
fn without_cgroup_rights_a_profile_is_refused_with_the_reason() {
    if !is_root() {
        // Already unprivileged: the refusal is this test itself.
        let directory = tempfile::tempdir().expect("a temporary directory");
        let cluster = directory.path().join("c");
        let run = harness::run_bramble(
            None,
            &[
                "--dir",
                cluster.to_str().expect("utf-8"),
                "up",
                "--nodes",
                "1",
                "--bare",
                "--profile",
                "pi3b",
            ],
        );
        assert!(!run.success && run.stderr.contains("cgroup"), "{run:?}");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let directory = tempfile::tempdir().expect("a temporary directory");
    std::fs::set_permissions(directory.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    let cluster = directory.path().join("c");
    // nobody: an unprivileged user with the bramble binary still readable.
    let output = std::process::Command::new(harness::bramble_binary())
        .args(["--dir", cluster.to_str().expect("utf-8")])
        .args(["up", "--nodes", "1", "--bare", "--profile", "pi3b"])
        .env_remove("BRAMBLE_DIR")
        .env("HOME", directory.path())
        .uid(65534)
        .gid(65534)
        .output()
        .expect("running bramble as nobody");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("Permission denied") && !stderr.contains("cgroup") {
        eprintln!("SKIPPED: nobody cannot run the test binary here: {stderr}");
        return;
    }
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("--profile pi3b needs cgroups") && stderr.contains("run as root"),
        "{stderr}"
    );
    assert!(
        !cluster.join("cluster.toml").exists(),
        "nothing is created before the refusal"
    );
}
