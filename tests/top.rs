//! Drill of `bramble top` (issue 12) on real agents from `bramble up --bare`, through its
//! script outputs (the screen itself needs a terminal; its drawing is unit-tested):
//!
//! - `--once` prints one table with every node alive and its figures, `--json` the
//!   dashboard's live snapshot: every node alive, reachable, with a point whose CPU share
//!   and load are present, plus the cluster's alerts;
//! - without a terminal and without either flag, it prints the table and says why on
//!   stderr;
//! - after `chaos kill n2 --no-wait`, `--json` shows n2 unreachable or dead within a few
//!   seconds, and `--once` counts it down.

mod harness;

use std::time::{Duration, Instant};

use harness::{TestCluster, wait_until};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(60);

/// The figure `series` of a node in a snapshot, if present.
fn figure(snapshot: &Value, node: &Value, series: &str) -> Option<f64> {
    let index = snapshot["series"]
        .as_array()?
        .iter()
        .position(|name| name == series)?;
    node["point"][index].as_f64()
}

fn node<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    snapshot["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|node| node["name"] == name))
        .unwrap_or_else(|| panic!("{name} is not in the snapshot: {snapshot}"))
}

#[test]
fn top_shows_every_node_and_a_killed_one_goes_red() {
    let cluster = TestCluster::up(2);
    cluster.assert_all_alive(SETTLE);

    // The monitor needs a couple of seconds of samples before every figure is there.
    let mut last = Value::Null;
    wait_until(
        "top --json shows both nodes alive with their figures",
        Duration::from_secs(30),
        || {
            let run = cluster.bramble(&["top", "--json"]);
            if !run.success {
                return false;
            }
            last = run.json();
            cluster.all().iter().all(|name| {
                let row = node(&last, name);
                row["state"] == "alive"
                    && row["reachable"] == true
                    && figure(&last, row, "cpu_busy_percent").is_some()
                    && figure(&last, row, "load1").is_some()
                    && figure(&last, row, "memory_used_bytes").is_some()
            })
        },
    );
    assert_eq!(last["nodes"].as_array().map(Vec::len), Some(2), "{last}");
    assert!(last["unix_ms"].as_u64().is_some(), "{last}");
    assert!(last["alerts"]["alerts"].is_array(), "{last}");
    for name in cluster.all() {
        let row = node(&last, name);
        let cpu = figure(&last, row, "cpu_busy_percent").unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&cpu), "{name}'s CPU {cpu}: {last}");
        assert!(row["load"]["cpus"].as_u64().unwrap_or(0) > 0, "{row}");
    }

    let run = cluster.bramble_ok(&["top", "--once"]);
    for expected in ["NODE", "HEALTH", "CPU", "THROTTLING", "2 of 2 nodes up"] {
        assert!(run.stdout.contains(expected), "{expected}:\n{}", run.stdout);
    }
    for name in cluster.all() {
        let line = run
            .stdout
            .lines()
            .find(|line| line.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{}", run.stdout));
        assert!(line.contains("alive") && line.contains(" ok "), "{line}");
        assert!(line.contains(" %"), "{name} has no CPU figure: {line}");
    }
    // Not a terminal (the test's pipe) and no flag: the table, and a note why.
    let run = cluster.bramble_ok(&["top"]);
    assert!(run.stdout.contains("2 of 2 nodes up"), "{}", run.stdout);
    assert!(run.stderr.contains("not a terminal"), "{}", run.stderr);
    // The interval is bounded.
    let run = cluster.bramble(&["top", "--once", "--interval", "100ms"]);
    assert!(
        !run.success && run.stderr.contains("between 1s and 60s"),
        "{run:?}"
    );

    // A killed node is red in the next snapshots: unreachable at once (before gossip has
    // decided, hence --no-wait), dead once gossip says so.
    let killed = Instant::now();
    cluster.bramble_ok(&["chaos", "kill", "n2", "--no-wait"]);
    wait_until(
        "top --json shows n2 unreachable or dead",
        Duration::from_secs(10),
        || {
            let run = cluster.bramble(&["top", "--json"]);
            if !run.success {
                return false;
            }
            let snapshot = run.json();
            let row = node(&snapshot, "n2");
            row["reachable"] == false || row["state"] == "dead" || row["state"] == "left"
        },
    );
    eprintln!(
        "n2 went red in top {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let run = cluster.bramble_ok(&["top", "--once"]);
    assert!(run.stdout.contains("1 of 2 nodes up"), "{}", run.stdout);
    assert!(
        run.stdout.contains("n2 did not answer") || run.stdout.contains(" dead "),
        "{}",
        run.stdout
    );
    let line = run
        .stdout
        .lines()
        .find(|line| line.contains(" n2 "))
        .unwrap_or_else(|| panic!("no row for n2:\n{}", run.stdout));
    assert!(line.contains(" down "), "{line}");
}
