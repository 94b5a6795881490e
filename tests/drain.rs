//! Rolling chores (issue 13, item 2) on real emulated clusters: draining the VIP holder
//! under a client loop (the VIP moves within about a second, only the requests that meet
//! the switch fail, the drained node stops contending, undrain makes it eligible again),
//! then `reboot --rolling` of the demo cluster under the same loop (every agent restarted,
//! no request reaching a replica that goes away, the site unanswered only while the VIP
//! changes holder or the catalog elects a leader); draining a node with
//! service replicas (each new copy healthy before the old one stops, so the service never
//! has fewer healthy replicas and the balancer's clients see no error; the drained node
//! ends with none and gets no new replica or job task; undrain makes it eligible again);
//! `rolling -- true` node by node in order, refused up front where exec is off, and a
//! failing command stopping the chore at its node, which stays drained; a replica whose
//! new copy never gets healthy keeps its old copy serving, and undrain calls the move off.

mod harness;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use harness::web::{client_loop, demo_site, raise_thread_priority, vip_holder};
use harness::{TestCluster, wait_until};
use serde_json::Value;

/// The holder of `balancer`'s VIP lease, as the catalog leader has it.
fn lease_holder(cluster: &TestCluster, balancer: &str) -> Option<String> {
    let run = cluster.bramble(&["kv", "get", &format!("leases/lb/vip/{balancer}")]);
    if !run.success {
        return None;
    }
    let record: Value = serde_json::from_str(run.stdout.trim()).ok()?;
    record["holder"].as_str().map(str::to_string)
}

/// Whether `node` is a catalog voter, per `bramble cluster status`.
fn is_voter(cluster: &TestCluster, node: &str) -> Option<bool> {
    let status = cluster.bramble_ok(&["cluster", "status", "--json"]).json();
    status["members"]
        .as_array()?
        .iter()
        .find(|member| member["name"] == node)?["voter"]
        .as_bool()
}

/// A node's row in `bramble nodes --json`.
fn node_row(cluster: &TestCluster, name: &str) -> Value {
    let nodes = cluster.bramble_ok(&["nodes", "--json"]).json();
    nodes
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["name"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} is not in bramble nodes: {nodes}"))
}

/// Waits until `bramble nodes` (which reads the answering agent's replica, a heartbeat
/// behind the leader at most) shows `name` not drained.
fn wait_undrained(cluster: &TestCluster, name: &str) {
    wait_until(
        &format!("{name} shows as not drained"),
        Duration::from_secs(10),
        || node_row(cluster, name)["drained"].is_null(),
    );
}

fn ps(cluster: &TestCluster, name: &str) -> Value {
    cluster
        .bramble_ok(&["service", "ps", name, "--json"])
        .json()
}

/// Distinct replicas of `view` that run and pass their health check, by index → node.
fn healthy(view: &Value) -> Vec<(u64, String)> {
    let mut found: Vec<(u64, String)> = view["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|replica| {
            replica["state"].as_str() == Some("running")
                && replica["health"].as_str() == Some("healthy")
        })
        .map(|replica| {
            (
                replica["index"].as_u64().unwrap_or(u64::MAX),
                replica["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    found.sort();
    found.dedup_by_key(|(index, _)| *index);
    found
}

fn opt_into_exec(cluster: &TestCluster, nodes: &[&str]) {
    for node in nodes {
        std::fs::write(
            cluster.path().join(node).join("exec.toml"),
            "enabled = true\n",
        )
        .expect("opting a node into exec");
    }
}

fn generation(cluster: &TestCluster, name: &str) -> u64 {
    node_row(cluster, name)["generation"]
        .as_u64()
        .unwrap_or_default()
}

#[test]
fn draining_the_vip_holder_hands_the_vip_over_at_once_and_a_rolling_reboot_keeps_the_site_up() {
    let cluster = TestCluster::up_with(3, &[]);
    let site = demo_site(&cluster);
    let holder = vip_holder(&cluster).expect("the demo's VIP has a holder");
    let backup = if holder == "n2" { "n3" } else { "n2" };
    let done = AtomicBool::new(false);
    let (moved_after, record) = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            raise_thread_priority();
            client_loop(site, Duration::from_millis(20), &done)
        });
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let drained = cluster.bramble_ok(&["drain", &holder, "--detach", "--json"]);
        assert_eq!(
            drained.json()["record"]["node"].as_str(),
            Some(holder.as_str())
        );
        wait_until("the backup holds the VIP", Duration::from_secs(10), || {
            lease_holder(&cluster, "webfarm").as_deref() == Some(backup)
        });
        // From before the drain command (its own start included) to the lease seen moved.
        let moved_after = started.elapsed();
        // Drained, the preferred node does not take its VIP back (it would, by preemption,
        // if it still stood for it).
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            lease_holder(&cluster, "webfarm").as_deref(),
            Some(backup),
            "a drained node took the VIP back"
        );
        let row = node_row(&cluster, &holder);
        assert_eq!(
            row["drained"]["node"].as_str(),
            Some(holder.as_str()),
            "{row}"
        );
        std::thread::sleep(Duration::from_millis(500));
        done.store(true, Ordering::Relaxed);
        (moved_after, client.join().expect("the client loop"))
    });
    eprintln!(
        "draining the VIP holder {holder}: {backup} held the VIP {:.2} s after `drain` started; longest gap {:?}, {} of {} requests failed: {:?}",
        moved_after.as_secs_f64(),
        record.longest_gap,
        record.failures.len(),
        record.requests,
        record.failures
    );
    assert!(record.requests > 50, "{record:?}");
    assert!(
        moved_after < Duration::from_millis(1500),
        "the VIP moved {moved_after:?} after the drain (was the lease waited out?)"
    );
    assert!(
        record.longest_gap < Duration::from_secs(1),
        "{:?}",
        record.longest_gap
    );
    // A planned switch is make-before-break on the loopback VIP: the old holder keeps
    // accepting until the new one has bound beside it, so no request fails.
    assert!(record.failures.is_empty(), "{:?}", record.failures);
    // A drained node holds nothing: `drain` without --detach returns at once.
    let again = cluster.bramble_ok(&["drain", &holder, "--json"]).json();
    assert_eq!(again["already_drained"].as_bool(), Some(true), "{again}");
    assert!(again["seconds"].as_f64().is_some(), "{again}");
    // Draining the backup too would leave the VIP with nobody: refused, nothing changed.
    let stranded = cluster.bramble(&["drain", backup]);
    assert!(
        !stranded.success && stranded.stderr.contains("no node to serve it"),
        "{stranded:?}"
    );
    assert!(node_row(&cluster, backup)["drained"].is_null());
    // Undrained, it stands for the VIP again: with preemption it takes it back.
    cluster.bramble_ok(&["undrain", &holder]);
    wait_undrained(&cluster, &holder);
    wait_until(
        "the preferred node holds the VIP again",
        Duration::from_secs(10),
        || lease_holder(&cluster, "webfarm").as_deref() == Some(holder.as_str()),
    );

    // `reboot --rolling`: every agent restarted in turn (a new incarnation each), the site
    // answering throughout but for the requests that meet a VIP switch.
    let before: Vec<u64> = cluster
        .all()
        .iter()
        .map(|name| generation(&cluster, name))
        .collect();
    let done = AtomicBool::new(false);
    let (report, record) = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            raise_thread_priority();
            client_loop(site, Duration::from_millis(20), &done)
        });
        std::thread::sleep(Duration::from_millis(500));
        let run = cluster.bramble(&["reboot", "--rolling", "--timeout", "2m", "--json"]);
        std::thread::sleep(Duration::from_millis(500));
        done.store(true, Ordering::Relaxed);
        (run, client.join().expect("the client loop"))
    });
    assert!(report.success, "{report:?}");
    let report = report.json();
    let nodes = report["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 3, "{report}");
    assert!(nodes.iter().all(|node| node["result"] == "ok"), "{report}");
    for (index, name) in cluster.all().iter().enumerate() {
        let now = generation(&cluster, name);
        assert!(
            now > before[index],
            "{name} was not restarted ({now} after {})",
            before[index]
        );
        wait_undrained(&cluster, name);
    }
    // No request reached a replica that was going away (no 5xx, no reset: replicas move
    // healthy first). The VIP's planned moves (its holder drained, then taking it back when
    // undrained) refuse nothing; connections may still be refused while the catalog elects
    // a new leader after the old one restarts (openraft 0.9 cannot hand leadership over,
    // so VIP renewals wait out the election and the holder may let go for a moment).
    eprintln!(
        "reboot --rolling: {} of {} requests refused, longest gap {:?}",
        record.failures.len(),
        record.requests,
        record.longest_gap
    );
    assert!(record.requests > 100, "{record:?}");
    assert!(
        record
            .failures
            .iter()
            .all(|failure| failure.contains("refused")),
        "only connections refused while the VIP moved: {:?}",
        record.failures
    );
    assert!(
        record.longest_gap < Duration::from_millis(1500),
        "the site was unanswered for {:?}",
        record.longest_gap
    );
    cluster.assert_all_alive(Duration::from_secs(10));
}

#[test]
fn draining_a_node_moves_its_replicas_healthy_first_and_undrain_makes_it_eligible() {
    let cluster = TestCluster::up(4);
    // The third port is where a moved replica listens while its old copy still holds its
    // own (every emulated node shares 127.0.0.1).
    let port = harness::free_port_run(5).to_string();
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
    let listen = std::net::SocketAddr::from(([127, 0, 2, 63], harness::free_port([127, 0, 0, 1])));
    let listen_text = listen.to_string();
    cluster.bramble_ok(&[
        "lb",
        "create",
        "site",
        "--listen",
        &listen_text,
        "--backend",
        "service:web",
        "--check",
        "GET /",
    ]);
    wait_until("both replicas are healthy", Duration::from_secs(60), || {
        healthy(&ps(&cluster, "web")).len() == 2
    });
    wait_until("the site answers", Duration::from_secs(60), || {
        harness::web::get_status(listen, Duration::from_secs(2)) == Ok(200)
    });
    // Drain the node of a replica that does not hold the site's VIP (that is the other
    // drill): its replica must move while the balancer's clients see nothing.
    let vip = lease_holder(&cluster, "site");
    let placed = healthy(&ps(&cluster, "web"));
    let (index, victim) = placed
        .iter()
        .find(|(_, node)| Some(node) != vip.as_ref())
        .cloned()
        .expect("a replica away from the VIP holder");
    let voter_before = is_voter(&cluster, &victim);
    let done = Arc::new(AtomicBool::new(false));
    let fewest = Arc::new(AtomicUsize::new(usize::MAX));
    let sampler = {
        let (done, fewest, dir) = (done.clone(), fewest.clone(), cluster.path().to_path_buf());
        std::thread::spawn(move || {
            let mut samples = 0;
            while !done.load(Ordering::Relaxed) {
                let run = harness::run_bramble(Some(&dir), &["service", "ps", "web", "--json"]);
                // Only answers from every node count: a busy node may miss ps's deadline.
                if run.success
                    && run.json()["unreachable"]
                        .as_array()
                        .is_some_and(Vec::is_empty)
                {
                    fewest.fetch_min(healthy(&run.json()).len(), Ordering::Relaxed);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };
    let client = {
        let done = done.clone();
        std::thread::spawn(move || {
            raise_thread_priority();
            client_loop(listen, Duration::from_millis(20), &done)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let drained = cluster.bramble(&["drain", &victim, "--reason", "drill", "--json"]);
    std::thread::sleep(Duration::from_secs(1));
    done.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("the ps sampler");
    let record = client.join().expect("the client loop");
    assert!(drained.success, "{drained:?}");
    let report = drained.json();
    let replica = format!("web.{index}");
    eprintln!(
        "drained {victim} in {:.1} s: {}; {samples} ps samples, fewest healthy {}; {} requests through the balancer, failures {:?}",
        report["seconds"].as_f64().unwrap_or_default(),
        report["replicas_now_on"],
        fewest.load(Ordering::Relaxed),
        record.requests,
        record.failures
    );
    assert_eq!(
        report["held"]["replicas"][0].as_str(),
        Some(replica.as_str()),
        "{report}"
    );
    let moved_to = report["replicas_now_on"][&replica]
        .as_str()
        .expect("the replica runs elsewhere")
        .to_string();
    assert_ne!(moved_to, victim);
    assert!(samples >= 3, "the sampler saw the drain");
    // Make before break: the service never had fewer healthy replicas (none allowed to
    // drop: there was room to move), and no client of the balancer saw an error.
    assert_eq!(fewest.load(Ordering::Relaxed), 2);
    assert!(record.requests > 50, "{record:?}");
    assert!(record.failures.is_empty(), "{record:?}");
    // The drained node holds nothing, and the hand-over is over.
    let view = ps(&cluster, "web");
    assert!(
        view["replicas"].as_array().is_some_and(|replicas| replicas
            .iter()
            .all(|replica| replica["node"] != victim.as_str())),
        "{view}"
    );
    assert!(
        view["handovers"].as_array().is_some_and(Vec::is_empty),
        "{view}"
    );
    assert_eq!(healthy(&view).len(), 2, "{view}");
    // Drained, it stays a gossip member and keeps its place in the catalog.
    let row = node_row(&cluster, &victim);
    assert_eq!(row["drained"]["reason"].as_str(), Some("drill"), "{row}");
    assert_eq!(row["state"].as_str(), Some("alive"), "{row}");
    assert!(voter_before.is_some());
    assert_eq!(is_voter(&cluster, &victim), voter_before);
    // A drained node gets no new replica...
    cluster.bramble_ok(&["service", "scale", "web", "3"]);
    wait_until(
        "three replicas are healthy",
        Duration::from_secs(60),
        || healthy(&ps(&cluster, "web")).len() == 3,
    );
    let view = ps(&cluster, "web");
    assert!(
        healthy(&view).iter().all(|(_, node)| *node != victim),
        "{view}"
    );
    // ...and no job task: round robin would give it a quarter of them.
    let job = cluster
        .bramble_ok(&[
            "run",
            "-n",
            "24",
            "--policy",
            "roundrobin",
            "--reduce",
            "concat",
            "--json",
            "--",
            "sh",
            "-c",
            "echo $BRAMBLE_NODE",
        ])
        .json();
    let ran_on: BTreeSet<String> = job["result"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(job["state"].as_str(), Some("succeeded"), "{job}");
    assert!(
        !ran_on.contains(&victim),
        "a task ran on the drained {victim}: {ran_on:?}"
    );
    assert!(ran_on.len() >= 2, "the others shared them: {ran_on:?}");
    // Undrained, it is eligible again: a fourth replica can only go there; the moved
    // replica stays where it went.
    cluster.bramble_ok(&["undrain", &victim]);
    wait_undrained(&cluster, &victim);
    cluster.bramble_ok(&["service", "scale", "web", "4"]);
    wait_until(
        "a replica runs on the undrained node",
        Duration::from_secs(60),
        || {
            healthy(&ps(&cluster, "web"))
                .iter()
                .any(|(_, node)| *node == victim)
        },
    );
    let view = ps(&cluster, "web");
    assert!(
        healthy(&view)
            .iter()
            .any(|(moved, node)| *moved == index && *node == moved_to),
        "replica {index} was moved back: {view}"
    );
    cluster.assert_all_alive(Duration::from_secs(10));
}

#[test]
fn rolling_goes_node_by_node_in_order_and_stops_at_a_failing_node() {
    let cluster = TestCluster::up(3);
    // A service whose replicas the drains move, so each node's health gate means something.
    let port = harness::free_port_run(3).to_string();
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
        "--stop-grace",
        "1s",
        "--",
        "sleep",
        "600",
    ]);
    wait_until("both replicas run", Duration::from_secs(30), || {
        ps(&cluster, "web")["replicas"]
            .as_array()
            .is_some_and(|replicas| {
                replicas.len() == 2 && replicas.iter().all(|replica| replica["state"] == "running")
            })
    });
    // Exec off on n3: refused before anything is touched.
    opt_into_exec(&cluster, &["n1", "n2"]);
    let refused = cluster.bramble(&["rolling", "--", "true"]);
    assert!(
        !refused.success && refused.stderr.contains("n3") && refused.stderr.contains("exec"),
        "{refused:?}"
    );
    for name in cluster.all() {
        assert!(
            node_row(&cluster, name)["drained"].is_null(),
            "{name} was drained"
        );
    }
    opt_into_exec(&cluster, &["n3"]);
    let run = cluster.bramble(&["rolling", "--json", "--", "true"]);
    assert!(run.success, "{run:?}");
    let report = run.json();
    let nodes = report["nodes"].as_array().cloned().unwrap_or_default();
    let order: Vec<&str> = nodes
        .iter()
        .filter_map(|node| node["node"].as_str())
        .collect();
    assert_eq!(order, vec!["n1", "n2", "n3"], "{report}");
    assert!(nodes.iter().all(|node| node["result"] == "ok"), "{report}");
    // One at a time: each node started once the one before had finished (healthy again).
    for pair in nodes.windows(2) {
        let finished = pair[0]["finished_unix_ms"].as_u64().unwrap_or(u64::MAX);
        let started = pair[1]["started_unix_ms"].as_u64().unwrap_or(0);
        assert!(
            started >= finished,
            "{} overlapped {}: {report}",
            pair[1]["node"],
            pair[0]["node"]
        );
    }
    let moved: usize = nodes
        .iter()
        .filter_map(|node| node["moved"]["replicas"].as_array().map(Vec::len))
        .sum();
    assert!(moved >= 2, "the drains moved the replicas: {report}");
    for name in cluster.all() {
        wait_undrained(&cluster, name);
    }

    // A command failing on n2 stops the chore there: n3 is not started, n2 stays drained,
    // and the exit status says so. (Its newline must not upset the drain's one-line reason.)
    let failing = cluster.bramble(&[
        "rolling",
        "--json",
        "--",
        "sh",
        "-c",
        "test \"$BRAMBLE_NODE\" != n2 ||\nexit 7",
    ]);
    assert!(!failing.success, "{failing:?}");
    assert!(failing.stderr.contains("failed"), "{failing:?}");
    let report = failing.json();
    let nodes = report["nodes"].as_array().cloned().unwrap_or_default();
    let results: Vec<(&str, &str)> = nodes
        .iter()
        .map(|node| {
            (
                node["node"].as_str().unwrap_or_default(),
                node["result"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        results,
        vec![("n1", "ok"), ("n2", "failed"), ("n3", "skipped")],
        "{report}"
    );
    assert_eq!(
        nodes[1]["failed_step"].as_str(),
        Some("command"),
        "{report}"
    );
    assert_eq!(nodes[1]["exit_code"].as_i64(), Some(7), "{report}");
    assert!(
        nodes[1]["error"]
            .as_str()
            .is_some_and(|error| error.contains("exit 7"))
    );
    assert_eq!(nodes[1]["left_drained"].as_bool(), Some(true));
    assert!(
        !node_row(&cluster, "n2")["drained"].is_null(),
        "n2 stays drained"
    );
    assert!(node_row(&cluster, "n3")["drained"].is_null());
    // With --max-fail 1 the chore carries on past it (and still exits non-zero).
    cluster.bramble_ok(&["undrain", "n2"]);
    let tolerant = cluster.bramble(&[
        "rolling",
        "--max-fail",
        "1",
        "--json",
        "--",
        "sh",
        "-c",
        "test \"$BRAMBLE_NODE\" != n2 || exit 7",
    ]);
    assert!(!tolerant.success, "{tolerant:?}");
    let results: Vec<String> = tolerant.json()["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|node| node["result"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(results, vec!["ok", "failed", "ok"]);
    cluster.bramble_ok(&["undrain", "n2"]);
    // A replica whose new copy never gets healthy is not lost: the drain times out and
    // says why, the old copy keeps serving, and undrain calls the move off. (Its check
    // passes only on its own port; a moved copy gets another one, as every emulated node
    // shares 127.0.0.1.)
    let picky_port = harness::free_port_run(2);
    let picky_port_text = picky_port.to_string();
    let check = format!("test \"$PORT\" = {picky_port}");
    cluster.bramble_ok(&[
        "service",
        "create",
        "picky",
        "--port",
        &picky_port_text,
        "--health-cmd",
        &check,
        "--health-interval",
        "300ms",
        "--health-start-period",
        "300ms",
        "--stop-grace",
        "1s",
        "--",
        "sleep",
        "600",
    ]);
    let mut home = String::new();
    wait_until(
        "picky is healthy",
        Duration::from_secs(60),
        || match healthy(&ps(&cluster, "picky")).first() {
            Some((_, node)) => {
                home = node.clone();
                true
            }
            None => false,
        },
    );
    let stuck = cluster.bramble(&["drain", &home, "--timeout", "5s"]);
    assert!(
        !stuck.success && stuck.stderr.contains("picky.0: its new copy on"),
        "{stuck:?}"
    );
    let view = ps(&cluster, "picky");
    assert!(
        healthy(&view)
            .iter()
            .any(|(index, node)| *index == 0 && *node == home),
        "the old copy still serves: {view}"
    );
    assert_eq!(
        view["handovers"].as_array().map(Vec::len),
        Some(1),
        "{view}"
    );
    cluster.bramble_ok(&["undrain", &home]);
    wait_until("the move is called off", Duration::from_secs(30), || {
        let view = ps(&cluster, "picky");
        view["handovers"].as_array().is_some_and(Vec::is_empty)
            && view["withheld"].as_array().is_some_and(Vec::is_empty)
            && view["replicas"]
                .as_array()
                .is_some_and(|replicas| replicas.len() == 1 && replicas[0]["node"] == home.as_str())
    });
    assert_eq!(healthy(&ps(&cluster, "picky")).len(), 1);
    // Bad input is refused with the problem named.
    let bad = cluster.bramble(&["rolling", "--nodes", "n1,n1", "--", "true"]);
    assert!(!bad.success && bad.stderr.contains("twice"), "{bad:?}");
    let bad = cluster.bramble(&["rolling", "--timeout", "48h", "--", "true"]);
    assert!(!bad.success && bad.stderr.contains("--timeout"), "{bad:?}");
    let bad = cluster.bramble(&["drain", "n9"]);
    assert!(
        !bad.success && bad.stderr.contains("no node named"),
        "{bad:?}"
    );
    let long = "x".repeat(300);
    let bad = cluster.bramble(&["drain", "n1", "--reason", &long]);
    assert!(
        !bad.success && bad.stderr.contains("at most 200"),
        "{bad:?}"
    );
    cluster.assert_all_alive(Duration::from_secs(10));
}
