//! The partition drill on a `bramble up --netns` cluster (issue 13, item 6): five nodes,
//! each in its own network namespace on a bridge, with the HA website demo. A minority of
//! two (the VIP holder and, if it is another node, the catalog leader) is cut off from
//! the majority by `bramble chaos partition`: the majority keeps a leader, commits, takes
//! the VIP and serves the website through it (requested from the switch namespace); the
//! minority cannot commit (a clear error, in bounded time) and lets the VIP go once its
//! lease ran out. `bramble chaos heal` makes one cluster again. Then `chaos slow`: the
//! delay and the rate are really applied to the node's cable, and `heal` removes them.
//!
//! Needs root and iproute2 (the CI runs as root); without them it says why and returns.

mod harness;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use harness::{TestCluster, wait_until};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// Why this machine cannot run the drill, if it cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the network-namespace drill needs root".into());
    }
    if std::process::Command::new("ip")
        .arg("-V")
        .output()
        .map(|output| !output.status.success())
        .unwrap_or(true)
    {
        return Some("the network-namespace drill needs `ip` (iproute2)".into());
    }
    None
}

/// Runs `f` on a thread that entered the namespace `name` (sockets made there stay there).
fn in_namespace<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
        // SAFETY: a valid namespace descriptor; only this thread changes namespace.
        let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(result, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the namespace thread panicked")
}

/// One GET of the website; the answering replica's name on a 200.
fn fetch(address: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8_lossy(&answer);
    answer.starts_with("HTTP/1.1 200").then(|| {
        answer
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("x-served-by:")
                    .map(|value| value.trim().to_string())
            })
            .unwrap_or_default()
    })
}

/// The median time of `count` TCP connects to `address` from the switch namespace.
fn connect_time(switch: &str, address: SocketAddr, count: usize) -> Duration {
    in_namespace(switch, move || {
        let mut times: Vec<Duration> = (0..count)
            .filter_map(|_| {
                let started = Instant::now();
                TcpStream::connect_timeout(&address, Duration::from_secs(3))
                    .ok()
                    .map(|_| started.elapsed())
            })
            .collect();
        assert!(!times.is_empty(), "no connect to {address} succeeded");
        times.sort();
        times[times.len() / 2]
    })
}

/// The nodes whose `eth0` has the VIP.
fn vip_holders(prefix: &str, names: &[String], vip: &str) -> Vec<String> {
    names
        .iter()
        .filter(|name| {
            std::process::Command::new("ip")
                .args([
                    "-n",
                    &format!("{prefix}-{name}"),
                    "-o",
                    "-4",
                    "addr",
                    "show",
                    "dev",
                    "eth0",
                ])
                .output()
                .is_ok_and(|output| {
                    String::from_utf8_lossy(&output.stdout).contains(&format!("{vip}/32"))
                })
        })
        .cloned()
        .collect()
}

fn node_address(status: &Value, name: &str) -> String {
    status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|node| node["name"] == name))
        .and_then(|node| node["addr"].as_str())
        .unwrap_or_else(|| panic!("no address for {name} in {status}"))
        .to_string()
}

#[test]
fn a_partitioned_minority_loses_the_catalog_and_the_vip_and_heal_makes_one_cluster() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let cluster = TestCluster::up_with(5, &["--netns"]);
    let status = cluster.bramble_ok(&["status", "--json"]).json();
    let prefix = status["netns"]["prefix"]
        .as_str()
        .expect("the status names the namespaces")
        .to_string();
    let switch = format!("{prefix}-sw");
    let site: SocketAddr = status["demo"]["site"]
        .as_str()
        .and_then(|site| site.parse().ok())
        .expect("the demo's site");
    let vip = site.ip().to_string();
    assert!(
        vip.starts_with("10."),
        "the VIP is on the private /24: {vip}"
    );
    // Every node has its own address on its own namespace's eth0, default port.
    for name in &cluster.names {
        let address = node_address(&status, name);
        assert!(address.ends_with(":7946"), "{name} listens on {address}");
        assert!(
            std::path::Path::new(&format!("/var/run/netns/{prefix}-{name}")).exists(),
            "{name} has no namespace"
        );
    }
    // The website is served through the VIP, from the switch, and forwarded to the host.
    wait_until("the website answers through the VIP", LONG, || {
        in_namespace(&switch, move || fetch(site)).is_some()
    });
    let forwarded = status["netns"]["forwards"]
        .as_array()
        .and_then(|forwards| forwards.iter().find(|forward| forward["name"] == "website"))
        .and_then(|forward| forward["listen"].as_str())
        .and_then(|listen| listen.parse::<SocketAddr>().ok())
        .expect("the website is forwarded to the host");
    assert!(forwarded.ip().is_loopback());
    wait_until(
        "the website answers on the host's forwarded port",
        LONG,
        || fetch(forwarded).is_some(),
    );

    // The minority: the VIP holder, and the catalog leader (or another node).
    let mut holders = Vec::new();
    wait_until("one node holds the VIP", LONG, || {
        holders = vip_holders(&prefix, &cluster.names, &vip);
        holders.len() == 1
    });
    let holder = holders[0].clone();
    let leader = status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|node| node["catalog_role"] == "leader"))
        .and_then(|node| node["name"].as_str())
        .expect("a catalog leader")
        .to_string();
    let second = if leader != holder {
        leader.clone()
    } else {
        cluster
            .names
            .iter()
            .find(|name| **name != holder)
            .cloned()
            .expect("another node")
    };
    let minority = vec![holder.clone(), second.clone()];
    let majority: Vec<String> = cluster
        .names
        .iter()
        .filter(|name| !minority.contains(name))
        .cloned()
        .collect();
    eprintln!(
        "partition: minority {minority:?} (VIP holder {holder}, leader {leader}), majority {majority:?}"
    );

    // Refused: a node in both groups, an unknown node, a bad delay.
    let both = cluster.bramble(&["chaos", "partition", "n1,n2", "n2,n3"]);
    assert!(
        !both.success && both.stderr.contains("in both groups"),
        "{both:?}"
    );
    let unknown = cluster.bramble(&["chaos", "partition", "n1", "n9"]);
    assert!(
        !unknown.success && unknown.stderr.contains("n9"),
        "{unknown:?}"
    );
    let bad = cluster.bramble(&["chaos", "slow", "n1", "--delay", "1h"]);
    assert!(!bad.success, "{bad:?}");

    let cut = cluster
        .bramble_ok(&[
            "chaos",
            "partition",
            &minority.join(","),
            &majority.join(","),
            "--json",
        ])
        .json();
    assert_eq!(cut["partitions"].as_array().map(Vec::len), Some(1), "{cut}");
    let shown = cluster.bramble_ok(&["status"]).stdout;
    assert!(shown.contains("Partition:"), "{shown}");
    let partitioned = Instant::now();

    // The majority keeps (or elects) a leader and commits through any of its nodes.
    let majority_address = node_address(&status, &majority[0]);
    wait_until("a write through the majority commits", LONG, || {
        cluster
            .bramble(&[
                "--addr",
                &majority_address,
                "kv",
                "put",
                "drill/after",
                "majority",
            ])
            .success
    });
    let catalog = cluster
        .bramble_ok(&["--addr", &majority_address, "cluster", "status", "--json"])
        .json();
    let new_leader = catalog["leader"].as_str().unwrap_or_default().to_string();
    assert!(
        majority.contains(&new_leader),
        "the leader {new_leader:?} is not in the majority {majority:?}"
    );

    // The minority cannot commit: a clear error, within a bounded time.
    let minority_address = node_address(&status, &minority[0]);
    let started = Instant::now();
    let refused = cluster.bramble(&[
        "--addr",
        &minority_address,
        "kv",
        "put",
        "drill/minority",
        "x",
    ]);
    let took = started.elapsed();
    assert!(
        !refused.success,
        "a write through the minority committed: {refused:?}"
    );
    assert!(
        refused.stderr.contains("quorum"),
        "the minority's refusal does not say why: {}",
        refused.stderr
    );
    assert!(took < Duration::from_secs(20), "the refusal took {took:?}");

    // Nor can the old leader answer a linearizable read from its replica: its read lease
    // ran out long before the majority could elect another leader, so it must not report
    // the majority's new key as missing (a stale answer); it fails for want of a quorum.
    let old_leader_address = node_address(&status, &leader);
    let read = cluster.bramble(&["--addr", &old_leader_address, "kv", "get", "drill/after"]);
    assert!(
        !read.success && read.stderr.contains("quorum"),
        "a linearizable read through the partitioned old leader {leader} answered: {read:?}"
    );

    // The VIP: on a majority node only, once the minority's lease ran out; the website
    // answers through it from the switch.
    wait_until("only a majority node holds the VIP", LONG, || {
        let now = vip_holders(&prefix, &cluster.names, &vip);
        now.len() == 1 && majority.contains(&now[0])
    });
    wait_until(
        "the website answers through the majority's VIP",
        LONG,
        || in_namespace(&switch, move || fetch(site)).is_some(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let holders_later = vip_holders(&prefix, &cluster.names, &vip);
    assert!(
        holders_later.iter().all(|holder| majority.contains(holder)),
        "a minority node holds the VIP {:?} after the partition: {holders_later:?}",
        partitioned.elapsed()
    );

    // Heal: one cluster again, every node alive in every view, the catalog caught up.
    let healed = cluster.bramble_ok(&["chaos", "heal", "--json"]).json();
    assert_eq!(healed["partitions_removed"], 1, "{healed}");
    for observer in &cluster.names {
        wait_until(&format!("{observer} sees all five alive"), LONG, || {
            cluster.view_of(observer).is_some_and(|view| {
                view.len() == 5 && view.iter().all(|node| node["state"] == "alive")
            })
        });
    }
    for name in &cluster.names {
        let address = node_address(&status, name);
        wait_until(
            &format!("{name}'s replica has the majority's write"),
            LONG,
            || {
                let run = cluster.bramble(&[
                    "--addr",
                    &address,
                    "kv",
                    "get",
                    "drill/after",
                    "--stale",
                    "--json",
                ]);
                run.success && run.stdout.contains("majority")
            },
        );
    }
    let after = cluster.bramble_ok(&["status"]).stdout;
    assert!(!after.contains("Partition:"), "{after}");

    // Slow: the delay is really on the cable (netem, or the user-space delay line where
    // the kernel has no netem): a TCP connect from the switch waits for the node's SYN-ACK.
    let slow_node = majority[0].clone();
    let target: SocketAddr = node_address(&status, &slow_node)
        .parse()
        .expect("an address");
    let before = connect_time(&switch, target, 9);
    let delayed = cluster
        .bramble_ok(&[
            "chaos", "slow", &slow_node, "--delay", "100ms", "--jitter", "5ms", "--json",
        ])
        .json();
    assert_eq!(delayed["delay_ms"], 100.0, "{delayed}");
    let slowed = connect_time(&switch, target, 9);
    eprintln!("TCP connect to {slow_node}: {before:?} before, {slowed:?} with --delay 100ms");
    assert!(
        slowed >= before + Duration::from_millis(90) && slowed < Duration::from_secs(1),
        "the delay is not applied: {before:?} before, {slowed:?} after"
    );
    // The slowed node stays in the cluster (gossip and Raft tolerate 100 ms).
    std::thread::sleep(Duration::from_secs(3));
    wait_until("the slowed node is alive to the others", LONG, || {
        cluster.state_seen_by(&majority[1], &slow_node).as_deref() == Some("alive")
    });
    cluster.bramble_ok(&["chaos", "heal"]);
    let healed_time = connect_time(&switch, target, 9);
    assert!(
        healed_time < before + Duration::from_millis(50),
        "heal left the delay on: {healed_time:?}"
    );
    let other = majority[1].clone();
    let throughput = |label: &str| -> f64 {
        let report = cluster
            .bramble_ok(&[
                "bench",
                "net",
                "--from",
                &slow_node,
                "--to",
                &other,
                "--seconds",
                "2",
                "--json",
            ])
            .json();
        let bits = report["bits_per_second"].as_f64().unwrap_or(0.0);
        eprintln!(
            "bench net {slow_node} -> {other} {label}: {:.1} Mbit/s",
            bits / 1e6
        );
        bits
    };
    let free = throughput("unshaped");
    cluster.bramble_ok(&["chaos", "slow", &slow_node, "--rate", "20mbit"]);
    let shaped = throughput("at --rate 20mbit");
    assert!(
        shaped < 24e6 && shaped > 5e6,
        "--rate 20mbit gave {:.1} Mbit/s (unshaped {:.1})",
        shaped / 1e6,
        free / 1e6
    );
    assert!(
        free > 2.0 * shaped,
        "the unshaped link is not faster: {free} vs {shaped}"
    );
    cluster.bramble_ok(&["chaos", "heal"]);
    let restored = throughput("after heal");
    assert!(restored > 2.0 * shaped, "heal left the rate on: {restored}");
}
