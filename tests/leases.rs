//! Drills of the platform issue's leases, on the demo `bramble up` sets up (the HA website
//! on a VIP held under the catalog lease `lb/vip/webfarm`):
//!
//! - an idle cluster holding its VIP commits nothing: renewals stay in the leader's memory;
//! - a SIGTERMed VIP holder releases the lease and the backup serves at once, instead of
//!   after the lease runs out;
//! - with every core kept busy by other programs and a load generator on the site, the
//!   VIP never moves and the site never stops answering. CI runs it for 30 s; the issue's
//!   five minutes: `BRAMBLE_SATURATION_SECS=300 cargo test --test leases the_vip_holds --
//!   --nocapture` (nextest stops a test after 300 s).

mod harness;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::web::{ServiceRecord, client_loop, get_status, raise_thread_priority, vip_holder};
use harness::{TestCluster, wait_until};

const LONG: Duration = Duration::from_secs(60);
/// The VIP's lease period (`bramble_lb::vip::LEASE_TTL`): a holder that lost its lease
/// and a backup that waited it out leave a gap of at least this.
const LEASE_TTL: Duration = Duration::from_millis(600);
/// The platform issue's bound on the saturation drill's client: no gap over 100 ms between
/// two answered requests (40-60 ms measured here with the drill running alone, as nextest
/// runs it; 130-150 ms beside the storage drills, whose agents' raised session groups then
/// take the CPU from the demo's web servers).
const SATURATION_GAP_BOUND: Duration = Duration::from_millis(100);

/// The demo site, once it answers and a VIP holder is reported.
fn demo_site(cluster: &TestCluster) -> SocketAddr {
    let site = harness::web::demo_site(cluster);
    wait_until("a VIP holder is reported", LONG, || {
        vip_holder(cluster).is_some()
    });
    site
}

fn commit_index(cluster: &TestCluster) -> u64 {
    cluster.bramble_ok(&["cluster", "status", "--json"]).json()["commit_index"]
        .as_u64()
        .expect("a commit index")
}

fn agent_pid(cluster: &TestCluster, node: &str) -> i32 {
    cluster.status_of(node)["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{node} has no pid")) as i32
}

/// Lines of every agent log that contain `needle`.
fn log_lines(cluster: &TestCluster, needle: &str) -> Vec<String> {
    cluster
        .all()
        .iter()
        .flat_map(|node| {
            cluster
                .log(node)
                .lines()
                .filter(|line| line.contains(needle))
                .map(|line| format!("{node}: {line}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn an_idle_cluster_holding_its_vip_commits_nothing() {
    let cluster = TestCluster::up_with(5, &[]);
    demo_site(&cluster);
    // Let the start-up settle: learners promoted, the lease granted.
    std::thread::sleep(Duration::from_secs(2));
    let window = Duration::from_secs(10);
    let before = commit_index(&cluster);
    std::thread::sleep(window);
    let after = commit_index(&cluster);
    let per_second = (after - before) as f64 / window.as_secs_f64();
    eprintln!(
        "catalog commits on an idle demo cluster: {} in {} s ({per_second:.2}/s; measured, goal <= 0.1/s)",
        after - before,
        window.as_secs()
    );
    assert!(
        after - before <= 1,
        "an idle cluster committed {} entries in {} s: lease renewals must not reach the log",
        after - before,
        window.as_secs()
    );
    assert!(vip_holder(&cluster).is_some());
}

#[test]
fn a_sigtermed_vip_holder_hands_the_vip_over_at_once() {
    let cluster = TestCluster::up_with(3, &[]);
    let site = demo_site(&cluster);
    let holder = vip_holder(&cluster).unwrap();
    let pid = agent_pid(&cluster, &holder);
    let done = AtomicBool::new(false);
    let record = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            raise_thread_priority();
            client_loop(site, Duration::from_millis(10), &done)
        });
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: a signal to a process the test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        wait_until("another node holds the VIP", LONG, || {
            vip_holder(&cluster).is_some_and(|now| now != holder)
        });
        std::thread::sleep(Duration::from_millis(500));
        done.store(true, Ordering::Relaxed);
        client.join().expect("the client thread")
    });
    eprintln!(
        "SIGTERM of the VIP holder {holder}: longest service gap {:?}, {} of {} requests unanswered (measured)",
        record.longest_gap,
        record.failures.len(),
        record.requests
    );
    assert!(
        !log_lines(&cluster, "released the VIP lease").is_empty(),
        "the stopping holder did not release its lease"
    );
    assert!(
        record.longest_gap < Duration::from_millis(300),
        "the backup took {:?} to serve (the lease is {LEASE_TTL:?}: was it waited out?)",
        record.longest_gap
    );
}

/// Busy loops at normal priority, one per core; killed when dropped.
struct BusyLoops(Vec<Child>);

impl BusyLoops {
    fn start() -> BusyLoops {
        let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
        BusyLoops(
            (0..cores)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("starting a busy loop")
                })
                .collect(),
        )
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Load on the site for `duration`: wrk where it is installed (as CI does), otherwise
/// two threads of keep-alive-less GETs.
fn drive_load(site: SocketAddr, duration: Duration, done: &AtomicBool) -> String {
    let wrk = Command::new("wrk")
        .args([
            "-t1",
            "-c8",
            &format!("-d{}s", duration.as_secs()),
            &format!("http://{site}/"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    match wrk {
        Ok(child) => {
            let output = child.wait_with_output().expect("wrk runs");
            let text = String::from_utf8_lossy(&output.stdout);
            text.lines()
                .find(|line| line.starts_with("Requests/sec"))
                .map(|line| format!("wrk: {}", line.trim()))
                .unwrap_or_else(|| format!("wrk printed: {text}"))
        }
        Err(_) => {
            let served = std::sync::atomic::AtomicUsize::new(0);
            // The scope waits for its loops, so they stop on their own clock: `done` is
            // only set once this function has returned.
            let load_over = AtomicBool::new(false);
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| {
                        while !done.load(Ordering::Relaxed) && !load_over.load(Ordering::Relaxed) {
                            if get_status(site, Duration::from_secs(2)) == Ok(200) {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                std::thread::sleep(duration);
                load_over.store(true, Ordering::Relaxed);
            });
            format!(
                "wrk is not installed: two request loops served {} requests",
                served.load(Ordering::Relaxed)
            )
        }
    }
}

#[test]
fn the_vip_holds_while_every_core_is_busy() {
    let cluster = TestCluster::up_with(3, &[]);
    let site = demo_site(&cluster);
    let holder = vip_holder(&cluster).unwrap();
    let seconds: u64 = std::env::var("BRAMBLE_SATURATION_SECS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(30);
    let duration = Duration::from_secs(seconds);
    let started = Instant::now();
    let busy = BusyLoops::start();
    let done = AtomicBool::new(false);
    let (record, load): (ServiceRecord, String) = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            raise_thread_priority();
            client_loop(site, Duration::from_millis(20), &done)
        });
        let load = drive_load(site, duration, &done);
        done.store(true, Ordering::Relaxed);
        (client.join().expect("the client thread"), load)
    });
    drop(busy);
    let slow_renewals = log_lines(&cluster, "slow VIP lease renewal");
    let releases = log_lines(&cluster, "not holding the VIP: releasing it");
    let takeovers = log_lines(&cluster, "taking the VIP lease");
    eprintln!(
        "{} s with every core busy ({load}): {} requests, {} unanswered, longest gap {:?}, {} slow renewals, {} releases (measured)",
        started.elapsed().as_secs(),
        record.requests,
        record.failures.len(),
        record.longest_gap,
        slow_renewals.len(),
        releases.len()
    );
    for line in &slow_renewals {
        eprintln!("  {line}");
    }
    assert_eq!(vip_holder(&cluster).as_deref(), Some(holder.as_str()));
    assert!(releases.is_empty(), "the VIP lapsed: {releases:?}");
    assert_eq!(takeovers.len(), 1, "the VIP moved: {takeovers:?}");
    assert!(
        record.failures.is_empty(),
        "unanswered requests: {:?}",
        record.failures
    );
    assert!(
        record.longest_gap <= SATURATION_GAP_BOUND,
        "the site stopped answering for {:?} (bound {SATURATION_GAP_BOUND:?})",
        record.longest_gap
    );
}
