//! Replicated service drills (issue 11) on real emulated clusters: replicas spread over
//! the nodes, a node killed (its replica runs elsewhere soon after gossip calls it dead,
//! and nothing is duplicated when it returns), scaling up past what the nodes can take
//! and back down, removal leaving no process behind, a crash loop backing off, a
//! program that does not exist, rolling updates (one that fails rolls back) with a client
//! loop that sees no error, and `--cpus`/`--memory` through the host's cgroups.

mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::{TestCluster, wait_until};
use serde_json::Value;

fn ps(cluster: &TestCluster, name: &str) -> Value {
    cluster
        .bramble_ok(&["service", "ps", name, "--json"])
        .json()
}

/// Running replicas by index: index → (node, pid).
fn running(view: &Value) -> BTreeMap<u64, Vec<(String, u64)>> {
    let mut found: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
    for replica in view["replicas"].as_array().cloned().unwrap_or_default() {
        if replica["state"].as_str() == Some("running") {
            found
                .entry(replica["index"].as_u64().unwrap_or(u64::MAX))
                .or_default()
                .push((
                    replica["node"].as_str().unwrap_or_default().to_string(),
                    replica["pid"].as_u64().unwrap_or(0),
                ));
        }
    }
    found
}

/// `wait_until`, but a timeout first prints what the cluster says of `service` and the
/// balancer `site`, and the agents' warnings, so a failure can be understood.
fn wait_or_explain(
    cluster: &TestCluster,
    service: &str,
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if condition() {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            eprintln!("{}", cluster.bramble(&["service", "ps", service]).stdout);
            eprintln!("{}", cluster.bramble(&["lb", "show", "site"]).stdout);
            eprintln!("{}", cluster.bramble(&["kv", "ls", "services/"]).stdout);
            for name in &cluster.names {
                let log = std::fs::read_to_string(cluster.dir.path().join(name).join("agent.log"))
                    .unwrap_or_default();
                for line in log
                    .lines()
                    .filter(|line| line.contains("WARN") || line.contains("ERROR"))
                {
                    eprintln!("{name}: {line}");
                }
            }
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A balancer `name` on `listen` whose backends are `service`'s replicas, checked with
/// `GET /`.
fn balance_service(cluster: &TestCluster, name: &str, listen: std::net::SocketAddr, service: &str) {
    let listen_text = listen.to_string();
    let backend = format!("service:{service}");
    cluster.bramble_ok(&[
        "lb",
        "create",
        name,
        "--listen",
        &listen_text,
        "--backend",
        &backend,
        "--check",
        "GET /",
    ]);
}

/// Whether balancer `name` has exactly `count` backends, all up.
fn backends_up(cluster: &TestCluster, name: &str, count: usize) -> bool {
    let run = cluster.bramble(&["lb", "show", name, "--json"]);
    run.success
        && run.json()["live"]["backends"]
            .as_array()
            .is_some_and(|backends| {
                backends.len() == count
                    && backends
                        .iter()
                        .all(|backend| backend["status"].as_str() == Some("up"))
            })
}

fn process_alive(pid: u64) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn reconciler(cluster: &TestCluster) -> String {
    let run = cluster.bramble_ok(&["kv", "get", "leases/services/reconciler"]);
    let record: Value = serde_json::from_str(run.stdout.trim()).unwrap_or(Value::Null);
    record["holder"].as_str().unwrap_or_default().to_string()
}

#[test]
fn replicas_move_off_a_dead_node_scale_and_leave_nothing_behind() {
    let cluster = TestCluster::up(4);
    cluster.bramble_ok(&[
        "service",
        "create",
        "sleeper",
        "--replicas",
        "2",
        "--max-per-node",
        "1",
        "--port",
        "8300",
        "--stop-grace",
        "2s",
        "--",
        "sleep",
        "600",
    ]);
    let mut view = Value::Null;
    wait_until("both replicas run", Duration::from_secs(30), || {
        view = ps(&cluster, "sleeper");
        let placed = running(&view);
        placed.len() == 2 && placed.values().all(|copies| copies.len() == 1)
    });
    let placed = running(&view);
    let nodes: Vec<&str> = placed.values().map(|copies| copies[0].0.as_str()).collect();
    assert_ne!(nodes[0], nodes[1], "--max-per-node 1 spreads them: {view}");
    let ports: Vec<u64> = view["replicas"]
        .as_array()
        .map(|replicas| replicas.iter().filter_map(|r| r["port"].as_u64()).collect())
        .unwrap_or_default();
    assert!(ports.contains(&8300) && ports.contains(&8301), "{view}");

    // Each replica leads a session of its own, outside its agent's scheduling group (the
    // agent raises that group's weight for its control plane: bramble_util::scheduling).
    for copies in placed.values() {
        let (node, pid) = &copies[0];
        assert_eq!(session_of(*pid), Some(*pid), "replica {pid} on {node}");
        let agent = cluster.status_of(node)["pid"].as_u64().expect("agent pid");
        assert_eq!(session_of(agent), Some(agent), "the agent of {node}");
        let autogroups_on = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
            .is_ok_and(|value| value.trim() == "1");
        // As root the raise is permitted.
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
            status
                .lines()
                .any(|line| line.split_whitespace().take(3).eq(["Uid:", "0", "0"]))
        });
        if autogroups_on && root {
            let group =
                std::fs::read_to_string(format!("/proc/{agent}/autogroup")).unwrap_or_default();
            assert!(group.trim_end().ends_with("nice -20"), "{node}: {group}");
            let replica_group =
                std::fs::read_to_string(format!("/proc/{pid}/autogroup")).unwrap_or_default();
            assert!(
                replica_group.trim_end().ends_with("nice 0"),
                "{pid}: {replica_group}"
            );
        }
    }

    // Kill the node of a replica that is not the reconciler's node.
    let holder = reconciler(&cluster);
    let (index, victim, old_pid) = placed
        .iter()
        .map(|(index, copies)| (*index, copies[0].0.clone(), copies[0].1))
        .find(|(_, node, _)| *node != holder)
        .expect("a replica away from the reconciler");
    eprintln!("killing {victim} (replica {index}; reconciler {holder})");
    let killed = Instant::now();
    let report = cluster.chaos("kill", &victim);
    eprintln!("chaos: {report}");
    let mut moved_to = String::new();
    let moved = wait_until(
        "the replica runs elsewhere",
        Duration::from_secs(30),
        || {
            let view = ps(&cluster, "sleeper");
            match running(&view).get(&index) {
                Some(copies) if copies.len() == 1 && copies[0].0 != victim => {
                    moved_to = copies[0].0.clone();
                    true
                }
                _ => false,
            }
        },
    );
    // `chaos kill` returns once every other node calls the victim dead.
    eprintln!(
        "replica {index} running on {moved_to} {:.2} s after the others called {victim} dead ({:.2} s after the kill)",
        moved.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    // The replica's process died with its agent (as with a power cut).
    wait_until(
        "the dead node's replica process is gone",
        Duration::from_secs(5),
        || !process_alive(old_pid),
    );
    // The node comes back: it must not start a duplicate.
    cluster.chaos("restart", &victim);
    cluster.assert_all_alive(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let view = ps(&cluster, "sleeper");
    let placed = running(&view);
    assert_eq!(placed.len(), 2, "{view}");
    assert!(
        placed.values().all(|copies| copies.len() == 1),
        "duplicates: {view}"
    );

    // Five replicas on four nodes with one per node: four run, one waits, and says why.
    cluster.bramble_ok(&["service", "scale", "sleeper", "5"]);
    // Asked of a node that is not the reconciler: any node can say why.
    let holder = reconciler(&cluster);
    let other = cluster
        .all()
        .into_iter()
        .find(|node| *node != holder)
        .expect("another node")
        .to_string();
    let other_addr = cluster.addr(&other).to_string();
    wait_until(
        "four replicas run, one waits",
        Duration::from_secs(30),
        || {
            let run =
                cluster.bramble(&["--addr", &other_addr, "service", "ps", "sleeper", "--json"]);
            if !run.success {
                return false;
            }
            let view = run.json();
            running(&view).len() == 4
                && view["pending"].as_array().is_some_and(|pending| {
                    pending.len() == 1
                        && pending[0][1]
                            .as_str()
                            .is_some_and(|why| why.contains("max-per-node"))
                })
        },
    );
    let before: Vec<u64> = running(&ps(&cluster, "sleeper"))
        .values()
        .flat_map(|copies| copies.iter().map(|copy| copy.1))
        .collect();
    cluster.bramble_ok(&["service", "scale", "sleeper", "1"]);
    wait_until("one replica is left", Duration::from_secs(30), || {
        let view = ps(&cluster, "sleeper");
        running(&view).len() == 1 && view["replicas"].as_array().is_some_and(|r| r.len() == 1)
    });
    let kept: Vec<u64> = running(&ps(&cluster, "sleeper"))
        .values()
        .flat_map(|copies| copies.iter().map(|copy| copy.1))
        .collect();
    for pid in before.iter().filter(|pid| !kept.contains(pid)) {
        wait_until(
            "a scaled-down replica's process is gone",
            Duration::from_secs(10),
            || !process_alive(*pid),
        );
    }
    cluster.bramble_ok(&["service", "rm", "sleeper"]);
    for pid in &kept {
        wait_until(
            "the removed service's process is gone",
            Duration::from_secs(10),
            || !process_alive(*pid),
        );
    }
    let listing = cluster.bramble_ok(&["service", "ls", "--json"]).json();
    assert_eq!(listing.as_array().map(Vec::len), Some(0), "{listing}");
}

#[test]
fn a_crash_loop_backs_off_and_a_missing_program_is_reported() {
    let cluster = TestCluster::up(3);
    cluster.bramble_ok(&[
        "service",
        "create",
        "crasher",
        "--",
        "sh",
        "-c",
        "echo boom; exit 3",
    ]);
    std::thread::sleep(Duration::from_secs(6));
    let view = ps(&cluster, "crasher");
    let replica = &view["replicas"][0];
    let restarts = replica["restarts"].as_u64().unwrap_or(0);
    // 100 ms, 200, 400, 800, 1.6 s, 3.2 s...: about six restarts in six seconds, where
    // restarting at once would have made thousands.
    assert!((2..=12).contains(&restarts), "restarts: {restarts}: {view}");
    assert_eq!(replica["last_exit"].as_str(), Some("exit code 3"), "{view}");
    let logs = cluster.bramble_ok(&["service", "logs", "crasher", "--replica", "0"]);
    assert!(logs.stdout.contains("boom"), "{logs:?}");
    // `logs --follow` prints what a replica writes as it writes it.
    cluster.bramble_ok(&[
        "service",
        "create",
        "ticker",
        "--",
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done",
    ]);
    wait_until("the ticker runs", Duration::from_secs(20), || {
        running(&ps(&cluster, "ticker")).len() == 1
    });
    let mut follower = std::process::Command::new(harness::bramble_binary())
        .args(["service", "logs", "ticker", "--follow", "--tail", "20"])
        .env("BRAMBLE_DIR", cluster.dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting logs --follow");
    std::thread::sleep(Duration::from_secs(3));
    let _ = follower.kill();
    let output = follower.wait_with_output().expect("the follower's output");
    let ticks: Vec<u64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("tick ")?.trim().parse().ok())
        .collect();
    // Three seconds of ticks every 100 ms, in order, none twice.
    assert!(ticks.len() >= 10, "{ticks:?}");
    assert!(
        ticks.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{ticks:?}"
    );
    cluster.bramble_ok(&["service", "rm", "ticker"]);

    cluster.bramble_ok(&["service", "create", "ghost", "--", "/nonexistent/server"]);
    wait_until(
        "the missing program is reported",
        Duration::from_secs(20),
        || {
            let view = ps(&cluster, "ghost");
            view["replicas"][0]["error"]
                .as_str()
                .is_some_and(|error| error.contains("was not found"))
        },
    );
    // A port another program holds is named as such (and tried again after the back-off).
    let holder_port = harness::free_port_run(1);
    let _holder = std::net::TcpListener::bind(("127.0.0.1", holder_port)).expect("holding a port");
    let holder_text = holder_port.to_string();
    cluster.bramble_ok(&[
        "service",
        "create",
        "squatter",
        "--port",
        &holder_text,
        "--",
        "sleep",
        "600",
    ]);
    wait_until(
        "the taken port is reported",
        Duration::from_secs(20),
        || {
            ps(&cluster, "squatter")["replicas"][0]["error"]
                .as_str()
                .is_some_and(|error| {
                    error.contains(&format!("port {holder_port} is already in use"))
                })
        },
    );
    // Bad input is refused with the reason.
    let taken = cluster.bramble(&["service", "create", "ghost", "--", "true"]);
    assert!(
        !taken.success && taken.stderr.contains("exists"),
        "{taken:?}"
    );
    let bad = cluster.bramble(&["service", "create", "Bad_Name", "--", "true"]);
    assert!(!bad.success, "{bad:?}");
    let port = cluster.bramble(&[
        "service",
        "create",
        "p",
        "--replicas",
        "3",
        "--port",
        "65534",
        "--",
        "true",
    ]);
    assert!(!port.success && port.stderr.contains("port"), "{port:?}");
    let rule = cluster.bramble(&[
        "service",
        "create",
        "c",
        "--constraint",
        "zone=eu",
        "--",
        "true",
    ]);
    assert!(!rule.success && rule.stderr.contains("zone"), "{rule:?}");
    cluster.assert_all_alive(Duration::from_secs(10));
    cluster.bramble_ok(&["service", "rm", "crasher"]);
    cluster.bramble_ok(&["service", "rm", "ghost"]);
}

#[test]
fn a_service_is_a_balancer_s_backends_and_a_lost_replica_costs_no_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let cluster = TestCluster::up(5);
    // The balancer runs on the lb nodes (n2 and n3); the replicas stay off them, so
    // killing a replica's node never moves the VIP.
    let port = harness::free_port_run(3);
    let port_text = port.to_string();
    cluster.bramble_ok(&[
        "service",
        "create",
        "web",
        "--replicas",
        "2",
        "--max-per-node",
        "1",
        "--port",
        &port_text,
        "--constraint",
        "node!=n2",
        "--constraint",
        "node!=n3",
        "--stop-grace",
        "1s",
        "--",
        "sh",
        "-c",
        "exec python3 -m http.server $PORT --bind 127.0.0.1",
    ]);
    let listen = std::net::SocketAddr::from(([127, 0, 2, 61], harness::free_port([127, 0, 0, 1])));
    balance_service(&cluster, "site", listen, "web");
    let backends_up = |count: usize| backends_up(&cluster, "site", count);
    wait_until(
        "both replicas are the balancer's backends, up",
        Duration::from_secs(60),
        || backends_up(2),
    );
    // Both in one answer (a busy node may miss ps's 2 s deadline once).
    let mut placed = BTreeMap::new();
    wait_until("ps shows both replicas", Duration::from_secs(20), || {
        placed = running(&ps(&cluster, "web"));
        placed.len() == 2
    });
    let (index, victim) = placed
        .iter()
        .map(|(index, copies)| (*index, copies[0].0.clone()))
        .find(|(_, node)| node != "n1")
        .expect("a replica away from n1");
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let done = done.clone();
        std::thread::spawn(move || {
            harness::web::raise_thread_priority();
            harness::web::client_loop(listen, Duration::from_millis(20), &done)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("killing {victim} (replica {index})");
    cluster.chaos("kill", &victim);
    let moved = wait_until(
        "the replica runs elsewhere",
        Duration::from_secs(30),
        || {
            running(&ps(&cluster, "web"))
                .get(&index)
                .is_some_and(|copies| copies.len() == 1 && copies[0].0 != victim)
        },
    );
    wait_or_explain(
        &cluster,
        "web",
        "the balancer has both backends up again",
        Duration::from_secs(60),
        || backends_up(2),
    );
    std::thread::sleep(Duration::from_secs(1));
    done.store(true, Ordering::Relaxed);
    let record = client.join().expect("the client loop");
    eprintln!(
        "replica {index} moved {:.2} s after {victim} was called dead; {} requests, failures: {:?}",
        moved.as_secs_f64(),
        record.requests,
        record.failures
    );
    assert!(record.requests > 50, "{record:?}");
    // Requests in flight when the node died may fail; nothing else.
    assert!(record.failures.len() <= 2, "{record:?}");
    // Scaling adds and removes backends with no manual step (the third replica needs the
    // killed node back: the others run one each or are the balancer's).
    cluster.chaos("restart", &victim);
    cluster.assert_all_alive(Duration::from_secs(30));
    cluster.bramble_ok(&["service", "scale", "web", "3"]);
    wait_until("three backends", Duration::from_secs(60), || backends_up(3));
    cluster.bramble_ok(&["service", "scale", "web", "1"]);
    wait_until("one backend", Duration::from_secs(60), || backends_up(1));
}

#[test]
fn an_unhealthy_replica_is_restarted_and_a_healthy_one_is_left_alone() {
    let cluster = TestCluster::up(3);
    let healthy_port = harness::free_port_run(1).to_string();
    let sick_port = harness::free_port_run(1).to_string();
    let server = "exec python3 -m http.server $PORT --bind 127.0.0.1";
    cluster.bramble_ok(&[
        "service",
        "create",
        "fine",
        "--port",
        &healthy_port,
        "--health-http",
        "/",
        "--health-interval",
        "300ms",
        "--health-start-period",
        "500ms",
        "--",
        "sh",
        "-c",
        server,
    ]);
    // It serves, but not the page its check asks for: 404, so it is restarted.
    cluster.bramble_ok(&[
        "service",
        "create",
        "sick",
        "--port",
        &sick_port,
        "--health-http",
        "/missing",
        "--health-interval",
        "300ms",
        "--health-retries",
        "2",
        "--health-start-period",
        "500ms",
        "--stop-grace",
        "1s",
        "--",
        "sh",
        "-c",
        server,
    ]);
    wait_until(
        "the sick replica is restarted for failing its check",
        Duration::from_secs(30),
        || {
            let view = ps(&cluster, "sick");
            let replica = &view["replicas"][0];
            replica["restarts"].as_u64().unwrap_or(0) >= 1
                && replica["last_exit"]
                    .as_str()
                    .is_some_and(|exit| exit.contains("unhealthy") && exit.contains("404"))
        },
    );
    let view = ps(&cluster, "fine");
    let replica = &view["replicas"][0];
    assert_eq!(replica["health"].as_str(), Some("healthy"), "{view}");
    assert_eq!(replica["restarts"].as_u64(), Some(0), "{view}");
    // A command check that fails: restarted too, with the check's exit in the reason.
    cluster.bramble_ok(&[
        "service",
        "create",
        "grumpy",
        "--health-cmd",
        "exit 7",
        "--health-interval",
        "300ms",
        "--health-retries",
        "1",
        "--health-start-period",
        "100ms",
        "--stop-grace",
        "1s",
        "--",
        "sleep",
        "600",
    ]);
    wait_until(
        "the command check restarts its replica",
        Duration::from_secs(30),
        || {
            let view = ps(&cluster, "grumpy");
            view["replicas"][0]["last_exit"]
                .as_str()
                .is_some_and(|exit| exit.contains("unhealthy") && exit.contains("exit code 7"))
        },
    );
    // Bad checks are refused.
    let no_port = cluster.bramble(&["service", "create", "x", "--health-http", "/", "--", "true"]);
    assert!(
        !no_port.success && no_port.stderr.contains("--port"),
        "{no_port:?}"
    );
    let bad_path = cluster.bramble(&[
        "service",
        "create",
        "y",
        "--port",
        "9999",
        "--health-http",
        "no-slash",
        "--",
        "true",
    ]);
    assert!(
        !bad_path.success && bad_path.stderr.contains("health-http"),
        "{bad_path:?}"
    );
    cluster.assert_all_alive(Duration::from_secs(10));
}

#[test]
fn a_rolling_update_replaces_replicas_without_a_failed_request_and_a_bad_one_rolls_back() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let cluster = TestCluster::up(5);
    let port = harness::free_port_run(2).to_string();
    cluster.bramble_ok(&[
        "service",
        "create",
        "web",
        "--replicas",
        "2",
        "--max-per-node",
        "1",
        "--port",
        &port,
        "--constraint",
        "node!=n2",
        "--constraint",
        "node!=n3",
        "--health-http",
        "/",
        "--health-interval",
        "300ms",
        "--health-start-period",
        "300ms",
        "--stop-grace",
        "1s",
        "--",
        "sh",
        "-c",
        "exec python3 -m http.server $PORT --bind 127.0.0.1",
    ]);
    let listen = std::net::SocketAddr::from(([127, 0, 2, 62], harness::free_port([127, 0, 0, 1])));
    balance_service(&cluster, "site", listen, "web");
    let backends_up = |count: usize| backends_up(&cluster, "site", count);
    wait_or_explain(
        &cluster,
        "web",
        "both replicas serve",
        Duration::from_secs(60),
        || backends_up(2),
    );
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let done = done.clone();
        std::thread::spawn(move || {
            harness::web::raise_thread_priority();
            harness::web::client_loop(listen, Duration::from_millis(20), &done)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    // A good version: every replica is replaced, one at a time.
    let started = Instant::now();
    let good = cluster.bramble(&[
        "service",
        "update",
        "web",
        "--env",
        "VERSION=2",
        "--monitor",
        "1s",
        "--on-failure",
        "rollback",
    ]);
    assert!(good.success, "{good:?}");
    eprintln!("the update took {:.1} s", started.elapsed().as_secs_f64());
    let view = ps(&cluster, "web");
    assert_eq!(view["spec"]["generation"].as_u64(), Some(2), "{view}");
    assert_eq!(
        view["rollout"]["state"].as_str(),
        Some("completed"),
        "{view}"
    );
    let listing = cluster.bramble_ok(&["service", "ls", "--json"]).json();
    assert_eq!(listing[0]["version"].as_u64(), Some(2), "{listing}");
    assert!(
        listing[0]["update"].is_null(),
        "a finished update is not news: {listing}"
    );
    let replicas = view["replicas"].as_array().cloned().unwrap_or_default();
    assert!(
        replicas.len() == 2
            && replicas
                .iter()
                .all(|replica| replica["generation"].as_u64() == Some(2)
                    && replica["state"].as_str() == Some("running")),
        "{view}"
    );
    // A bad version (it runs but never listens, so its checks fail and the balancer's
    // connections are refused): the update rolls back by itself to version 2.
    let started = Instant::now();
    let bad = cluster.bramble(&["service", "update", "web", "--", "sleep", "600"]);
    eprintln!(
        "the bad update was rolled back after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        !bad.success && bad.stderr.contains("rolled back"),
        "{bad:?}"
    );
    let view = ps(&cluster, "web");
    assert_eq!(view["spec"]["generation"].as_u64(), Some(2), "{view}");
    assert_eq!(
        view["spec"]["previous"]["generation"].as_u64(),
        Some(3),
        "{view}"
    );
    assert_eq!(view["rollout"]["kind"].as_str(), Some("rollback"), "{view}");
    assert!(
        view["rollout"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("unhealthy")),
        "{view}"
    );
    let back = wait_until(
        "both replicas serve version 2 again",
        Duration::from_secs(30),
        || backends_up(2),
    );
    eprintln!("both served again {:.1} s later", back.as_secs_f64());
    std::thread::sleep(Duration::from_secs(1));
    done.store(true, Ordering::Relaxed);
    let record = client.join().expect("the client loop");
    eprintln!(
        "{} requests during the updates, failures: {:?}",
        record.requests, record.failures
    );
    assert!(record.requests > 100, "{record:?}");
    assert!(record.failures.is_empty(), "{record:?}");
    // Asking for nothing changes nothing; a service never updated has nothing to roll
    // back to.
    let nothing = cluster.bramble(&["service", "update", "web"]);
    assert!(
        !nothing.success && nothing.stderr.contains("nothing to change"),
        "{nothing:?}"
    );
    cluster.bramble_ok(&["service", "create", "lonely", "--", "sleep", "600"]);
    let no_previous = cluster.bramble(&["service", "rollback", "lonely"]);
    assert!(
        !no_previous.success && no_previous.stderr.contains("no previous version"),
        "{no_previous:?}"
    );
    cluster.assert_all_alive(Duration::from_secs(10));
}

/// The session a process belongs to, from `/proc/<pid>/stat`.
fn session_of(pid: u64) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the name: state, parent, process group, session.
    let after_name = &text[text.rfind(')')? + 2..];
    after_name.split_whitespace().nth(3)?.parse().ok()
}

/// `utime + stime` of a process from `/proc/<pid>/stat`, in seconds.
fn cpu_seconds(pid: u64) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after the name.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// `--memory 32M` on a program that allocates 100 MB: OOM-killed at every start and `ps`
/// says so; `--cpus 0.5` on a busy loop: its cgroup holds the quota, it is in that cgroup,
/// and it gets about half a core; limits the node cannot honour are a warning in `ps`; bad
/// values are refused. Real agents, real cgroups: the controllers this host lacks are
/// skipped with a message.
#[test]
fn memory_and_cpu_limits_hold_and_an_oom_kill_is_reported() {
    use bramble_compute::limits::{Layout, Version};
    let layout = Layout::detect();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    eprintln!("cgroups here: {}; root: {root}", layout.describe());
    let cluster = TestCluster::up(2);

    // Bad values are refused, naming the flag and the problem.
    for (flag, value, expected) in [
        ("--cpus", "0", "0.01 to 1024"),
        ("--cpus", "1.2345", "three decimals"),
        ("--cpus", "half", "not a number of CPUs"),
        ("--memory", "1K", "4M to 1024G"),
        ("--memory", "2000G", "4M to 1024G"),
        ("--memory", "lots", "not a size"),
    ] {
        let refused = cluster.bramble(&["service", "create", "bad", flag, value, "--", "true"]);
        assert!(
            !refused.success && refused.stderr.contains(flag) && refused.stderr.contains(expected),
            "{flag} {value}: {refused:?}"
        );
    }

    // Limits no node can honour: it runs, and ps says why the limits mean nothing.
    cluster.bramble_ok(&[
        "service",
        "create",
        "huge",
        "--cpus",
        "1000",
        "--memory",
        "1000G",
        "--stop-grace",
        "1s",
        "--",
        "sleep",
        "600",
    ]);
    wait_until(
        "ps warns of limits above the node's",
        Duration::from_secs(30),
        || {
            let view = ps(&cluster, "huge");
            let replica = &view["replicas"][0];
            replica["state"].as_str() == Some("running")
                && replica["warning"].as_str().is_some_and(|warning| {
                    warning.contains("--cpus 1000 is more than this node's")
                        && warning.contains("--memory 1000 GiB is more than this node's")
                })
        },
    );
    let table = cluster.bramble_ok(&["service", "ps", "huge"]);
    assert!(
        table.stdout.contains("warning (huge.0 on n"),
        "{}",
        table.stdout
    );
    cluster.bramble_ok(&["service", "rm", "huge"]);

    if !root {
        eprintln!("skipped the cgroup checks: the test does not run as root");
        return;
    }
    match &layout.memory {
        None => eprintln!("skipped the OOM drill: this host has no memory controller"),
        Some(_) => {
            // Restarted after each kill (the default policy): every run is limited anew.
            cluster.bramble_ok(&[
                "service",
                "create",
                "eater",
                "--memory",
                "32M",
                "--",
                "python3",
                "-c",
                "import time; b = bytearray(100 * 1024 * 1024); time.sleep(600)",
            ]);
            let mut view = Value::Null;
            wait_until(
                "the replica is OOM-killed at three starts in a row",
                Duration::from_secs(60),
                || {
                    view = ps(&cluster, "eater");
                    let replica = &view["replicas"][0];
                    replica["restarts"].as_u64().unwrap_or(0) >= 3
                        && replica["last_exit"].as_str() == Some("OOM-killed (memory limit 32 MiB)")
                },
            );
            assert!(view["replicas"][0]["warning"].is_null(), "{view}");
            let table = cluster.bramble_ok(&["service", "ps", "eater"]);
            assert!(table.stdout.contains("OOM-killed"), "{}", table.stdout);
            let spec = cluster.bramble_ok(&["service", "inspect", "eater"]).json();
            assert_eq!(
                spec["memory_bytes"].as_u64(),
                Some(32 * 1024 * 1024),
                "{spec}"
            );
            cluster.bramble_ok(&["service", "rm", "eater"]);
        }
    }
    let Some(cpu) = &layout.cpu else {
        eprintln!("skipped the CPU drill: this host has no cpu controller");
        cluster.assert_all_alive(Duration::from_secs(10));
        return;
    };
    cluster.bramble_ok(&[
        "service",
        "create",
        "hog",
        "--cpus",
        "0.5",
        "--stop-grace",
        "1s",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    let mut pid = 0;
    wait_until("the busy loop runs", Duration::from_secs(30), || {
        pid = running(&ps(&cluster, "hog"))
            .get(&0)
            .map(|copies| copies[0].1)
            .unwrap_or(0);
        pid > 0
    });
    // It runs as nobody with no supplementary groups: the user change, made after the
    // cgroup move in the same pre_exec, still happens.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    if let Some((uid, gid)) = bramble_compute::process::lookup_user("nobody") {
        assert!(
            field("Uid:").len() == 4 && field("Uid:").iter().all(|id| *id == uid.to_string()),
            "{status}"
        );
        assert!(
            field("Gid:").len() == 4 && field("Gid:").iter().all(|id| *id == gid.to_string()),
            "{status}"
        );
        assert!(field("Groups:").is_empty(), "{status}");
    }
    // It is in its own cgroup, which holds the quota: 50 ms in each 100 ms.
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let cgroup_path = membership
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let ours = match cpu.version {
                Version::V2 => controllers.is_empty(),
                Version::V1 => controllers.split(',').any(|name| name == "cpu"),
            };
            ours.then(|| path.to_string())
        })
        .unwrap_or_default();
    assert!(
        cgroup_path.ends_with("-n1/service-hog-0") || cgroup_path.ends_with("-n2/service-hog-0"),
        "{membership}"
    );
    let directory = cpu
        .directory_of(&cgroup_path)
        .expect("the cgroup lies under the cpu tree");
    let quota = match cpu.version {
        Version::V2 => std::fs::read_to_string(directory.join("cpu.max")).unwrap_or_default(),
        Version::V1 => format!(
            "{} {}",
            std::fs::read_to_string(directory.join("cpu.cfs_quota_us"))
                .unwrap_or_default()
                .trim(),
            std::fs::read_to_string(directory.join("cpu.cfs_period_us"))
                .unwrap_or_default()
                .trim()
        ),
    };
    assert_eq!(quota.trim(), "50000 100000", "{}", directory.display());
    // And it bites: over two seconds the loop gets about half a core (without the quota
    // it would take a whole one on a machine not saturated).
    let before = cpu_seconds(pid).expect("the loop's CPU time");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(pid).expect("the loop's CPU time") - before;
    let cores = used / started.elapsed().as_secs_f64();
    let throttled = std::fs::read_to_string(directory.join("cpu.stat")).unwrap_or_default();
    eprintln!("the --cpus 0.5 loop used {cores:.2} cores; cpu.stat: {throttled:?}");
    assert!(cores <= 0.75, "the loop used {cores:.2} cores");
    cluster.bramble_ok(&["service", "rm", "hog"]);
    wait_until(
        "the removed replica's cgroup is gone",
        Duration::from_secs(15),
        || !directory.exists() && !process_alive(pid),
    );
    cluster.assert_all_alive(Duration::from_secs(10));
}

/// A service whose replicas run a WebAssembly module (`examples/wasm-web`, the same file
/// on every architecture): it serves on the port the agent preopened for it, behind a
/// balancer, its health checked over HTTP, and a rolling update changes what it says.
#[test]
fn a_webassembly_service_serves_behind_a_balancer_and_updates() {
    let Some(module) = harness::wasm_example("wasm-web") else {
        return;
    };
    let module = module.to_string_lossy().to_string();
    let cluster = TestCluster::up(3);
    let port = harness::free_port_run(2).to_string();
    cluster.bramble_ok(&[
        "service",
        "create",
        "hello",
        "--replicas",
        "2",
        "--max-per-node",
        "1",
        "--port",
        &port,
        "--health-http",
        "/health",
        "--health-interval",
        "300ms",
        "--health-start-period",
        "200ms",
        "--stop-grace",
        "1s",
        "--wasm",
        &module,
    ]);
    let listen = std::net::SocketAddr::from(([127, 0, 2, 63], harness::free_port([127, 0, 0, 1])));
    let listen_text = listen.to_string();
    cluster.bramble_ok(&[
        "lb",
        "create",
        "wasm-site",
        "--listen",
        &listen_text,
        "--backend",
        "service:hello",
        "--check",
        "GET /health",
    ]);
    let pages = |count: usize| -> Vec<String> {
        (0..count)
            .filter_map(|_| harness::web::get_answer(listen, Duration::from_secs(2)).ok())
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
            .collect()
    };
    wait_until(
        "both WebAssembly replicas answer through the balancer",
        Duration::from_secs(60),
        || {
            let seen = pages(6);
            seen.iter()
                .any(|page| page.starts_with("hello from hello.0"))
                && seen
                    .iter()
                    .any(|page| page.starts_with("hello from hello.1"))
        },
    );
    let view = ps(&cluster, "hello");
    assert_eq!(
        view["spec"]["program"].as_str(),
        Some("wasm-web.wasm"),
        "{view}"
    );
    assert!(
        view["replicas"]
            .as_array()
            .is_some_and(|replicas| replicas
                .iter()
                .all(|replica| replica["health"].as_str() == Some("healthy")
                    && replica["user"].as_str() == Some("nobody"))),
        "{view}"
    );
    cluster.bramble_ok(&[
        "service",
        "update",
        "hello",
        "--env",
        "GREETING=bonjour",
        "--monitor",
        "500ms",
    ]);
    let seen = pages(4);
    assert!(
        seen.len() == 4
            && seen
                .iter()
                .all(|page| page.starts_with("bonjour from hello.")),
        "{seen:?}"
    );
    // A file that is not WebAssembly is refused before anything runs.
    let not_wasm = cluster.dir.path().join("not.wasm");
    std::fs::write(&not_wasm, b"#!/bin/sh\necho hi\n").expect("writing a file");
    let refused = cluster.bramble(&[
        "service",
        "create",
        "broken",
        "--wasm",
        &not_wasm.to_string_lossy(),
    ]);
    assert!(
        !refused.success && refused.stderr.contains("WebAssembly"),
        "{refused:?}"
    );
    cluster.assert_all_alive(Duration::from_secs(10));
}
