//! Drills of the foundation issue: forming a cluster, failure detection, rejoin, hung
//! nodes, graceful leave, and restarting every node — all with real agent processes.

mod harness;

use std::time::Duration;

use harness::{TestCluster, run_bramble, wait_until};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn five_nodes_form_a_cluster_that_any_member_describes() {
    let cluster = TestCluster::up(5);
    for observer in cluster.all() {
        let view = cluster
            .view_of(observer)
            .expect("every member answers `nodes`");
        assert_eq!(view.len(), 5, "{observer} sees {view:?}");
        for node in &view {
            assert_eq!(node["state"], "alive", "{observer} sees {node}");
            for field in ["name", "addr", "state", "roles", "version"] {
                assert!(!node[field].is_null(), "{field} missing in {node}");
            }
            assert!(
                node["addr"]
                    .as_str()
                    .unwrap()
                    .parse::<std::net::SocketAddr>()
                    .is_ok()
            );
        }
    }
    // `down` then `up` resumes the same cluster.
    cluster.bramble_ok(&["down"]);
    assert!(
        cluster
            .all()
            .iter()
            .all(|name| cluster.process_state(name) == "exited")
    );
    cluster.bramble_ok(&["up", "--nodes", "5"]);
    cluster.assert_all_alive(LONG);
    // `up` again on a running cluster says so and changes nothing.
    let again = cluster.bramble_ok(&["up", "--nodes", "5"]);
    assert!(again.stdout.contains("already running"), "{}", again.stdout);
    // The human table names every node.
    let table = cluster.bramble_ok(&["nodes"]).stdout;
    for name in cluster.all() {
        assert!(table.contains(name), "{table}");
    }
    assert!(table.contains("5 of 5 nodes alive"), "{table}");
}

#[test]
fn a_killed_node_is_dead_everywhere_and_alive_again_after_restart() {
    let cluster = TestCluster::up(5);
    let report = cluster.chaos("kill", "n3");
    assert_eq!(report["expected_state"], "dead");
    assert!(report["seconds"].as_f64().is_some(), "{report}");
    assert_eq!(report["observers"], 4);
    // Check independently of chaos's own wait: each other node says dead.
    for observer in cluster.others("n3") {
        assert_eq!(
            cluster.state_seen_by(observer, "n3").as_deref(),
            Some("dead"),
            "{observer}"
        );
    }
    assert_eq!(cluster.process_state("n3"), "exited");

    let report = cluster.chaos("restart", "n3");
    assert_eq!(report["expected_state"], "alive");
    for observer in cluster.others("n3") {
        assert_eq!(
            cluster.state_seen_by(observer, "n3").as_deref(),
            Some("alive"),
            "{observer}"
        );
    }
    cluster.assert_all_alive(LONG);
}

#[test]
fn a_hung_node_is_declared_dead_and_recovers_when_continued() {
    let cluster = TestCluster::up(5);
    let report = cluster.chaos("stop", "n2");
    assert_eq!(report["expected_state"], "dead");
    assert_eq!(cluster.process_state("n2"), "stopped");
    for observer in cluster.others("n2") {
        assert_eq!(
            cluster.state_seen_by(observer, "n2").as_deref(),
            Some("dead"),
            "{observer}"
        );
    }
    cluster.chaos("cont", "n2");
    cluster.assert_all_alive(LONG);
    // The continued node sees everyone alive too: it did not stay convinced they died.
    for target in cluster.others("n2") {
        assert_eq!(
            cluster.state_seen_by("n2", target).as_deref(),
            Some("alive")
        );
    }
}

#[test]
fn every_node_killed_and_restarted_in_turn_reforms_with_the_same_names() {
    let cluster = TestCluster::up(5);
    let generations_before: Vec<u64> = cluster
        .view_of("n1")
        .unwrap()
        .iter()
        .map(|node| node["generation"].as_u64().unwrap())
        .collect();
    for name in cluster.names.clone() {
        cluster.chaos("kill", &name);
        cluster.chaos("restart", &name);
    }
    cluster.assert_all_alive(LONG);
    let view = cluster.view_of("n5").unwrap();
    let names: Vec<&str> = view
        .iter()
        .map(|node| node["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        cluster.all(),
        "one row per name, no duplicates from old incarnations"
    );
    for (node, before) in view.iter().zip(generations_before) {
        assert!(
            node["generation"].as_u64().unwrap() > before,
            "{node} was not restarted"
        );
    }
}

#[test]
fn a_node_that_leaves_is_left_not_dead() {
    let cluster = TestCluster::up(4);
    let run = cluster.bramble_ok(&["leave", "--node", "n4"]);
    assert!(run.stdout.contains("n4 left"), "{}", run.stdout);
    assert_eq!(cluster.process_state("n4"), "exited");
    cluster.wait_seen_as(&["n1", "n2", "n3"], "n4", "left", LONG);
    // Still left, not dead, well after the failure detector would have fired.
    std::thread::sleep(Duration::from_secs(3));
    for observer in ["n1", "n2", "n3"] {
        assert_eq!(
            cluster.state_seen_by(observer, "n4").as_deref(),
            Some("left")
        );
    }
    // Coming back makes it alive again.
    cluster.chaos("restart", "n4");
    cluster.wait_seen_as(&["n1", "n2", "n3"], "n4", "alive", LONG);
}

#[test]
fn init_join_and_agent_by_hand_and_a_restarted_node_rejoins_without_a_token() {
    let work = tempfile::tempdir().unwrap();
    let first = work.path().join("first");
    let second = work.path().join("second");
    let ports = free_ports(2);
    let first_address = format!("127.0.0.1:{}", ports[0]);
    let second_address = format!("127.0.0.1:{}", ports[1]);

    let init = run_bramble(
        None,
        &[
            "init",
            "--name",
            "alpha",
            "--listen",
            &first_address,
            "--data-dir",
            first.to_str().unwrap(),
        ],
    );
    assert!(init.success, "{}", init.stderr);
    let token = init
        .stdout
        .split_whitespace()
        .find(|word| word.starts_with("bramble1-"))
        .expect("init prints a join token")
        .to_string();
    let mut agents = Agents::default();
    agents.start(&first);
    wait_until("alpha answers", LONG, || {
        run_bramble(
            None,
            &["nodes", "--json", "--data-dir", first.to_str().unwrap()],
        )
        .success
    });

    let join = run_bramble(
        None,
        &[
            "join",
            &first_address,
            "--token",
            &token,
            "--name",
            "beta",
            "--listen",
            &second_address,
            "--data-dir",
            second.to_str().unwrap(),
        ],
    );
    assert!(join.success, "{}", join.stderr);
    agents.start(&second);
    let both_alive = |data_dir: &std::path::Path| {
        let run = run_bramble(
            None,
            &["nodes", "--json", "--data-dir", data_dir.to_str().unwrap()],
        );
        run.success
            && run.json().as_array().is_some_and(|nodes| {
                nodes.len() == 2 && nodes.iter().all(|node| node["state"] == "alive")
            })
    };
    // The joined node uses its own certificate to ask; the first uses the admin credential.
    wait_until("both see both alive", LONG, || {
        both_alive(&first) && both_alive(&second)
    });

    // Restart beta from its data directory alone: no token, no seed flag.
    agents.kill_all_of(&second);
    wait_until("alpha sees beta dead", LONG, || {
        let run = run_bramble(
            None,
            &["nodes", "--json", "--data-dir", first.to_str().unwrap()],
        );
        run.success
            && run
                .json()
                .as_array()
                .unwrap()
                .iter()
                .any(|node| node["name"] == "beta" && node["state"] == "dead")
    });
    agents.start(&second);
    wait_until("beta is back", LONG, || {
        both_alive(&first) && both_alive(&second)
    });
}

fn free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut held = Vec::new();
    while ports.len() < count {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
        held.push(tcp);
    }
    ports
}

/// Agents started by hand (outside the emulator); killed when dropped.
#[derive(Default)]
struct Agents {
    children: Vec<(std::path::PathBuf, std::process::Child)>,
}

impl Agents {
    fn start(&mut self, data_dir: &std::path::Path) {
        let child = std::process::Command::new(harness::bramble_binary())
            .args(["agent", "--data-dir", data_dir.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(data_dir.join("test-agent.log")).unwrap())
            .spawn()
            .unwrap();
        self.children.push((data_dir.to_path_buf(), child));
    }

    fn kill_all_of(&mut self, data_dir: &std::path::Path) {
        for (dir, child) in &mut self.children {
            if dir == data_dir {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
