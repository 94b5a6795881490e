//! Drills of the platform's named workers: a worker that panics (through the test-only
//! fault switch `BRAMBLE_TEST_PANIC_WORKER`) is reported by `bramble workers` with its
//! error, restarted with back-off, and the agent keeps serving meanwhile.

mod harness;

use std::time::Duration;

use harness::{TestCluster, wait_until};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn worker_row(report: &Value, node: &str, worker: &str) -> Option<Value> {
    report.as_array()?.iter().find(|row| row["node"] == node)?["workers"]
        .as_array()?
        .iter()
        .find(|row| row["name"] == worker)
        .cloned()
}

#[test]
fn a_panicking_worker_is_reported_restarted_and_the_agent_keeps_serving() {
    // Every agent this test starts inherits the switch: `lb-catalog` panics at its first
    // two runs on each `lb` node.
    // SAFETY: set before this test process starts any thread that reads the environment.
    unsafe { std::env::set_var("BRAMBLE_TEST_PANIC_WORKER", "lb-catalog:2") };
    let cluster = TestCluster::up_with(3, &[]);
    // Two failed runs, restarted after 1 s and 2 s: then the balancer follows the catalog
    // and serves the demo site.
    harness::web::demo_site(&cluster);
    let mut report = Value::Null;
    wait_until(
        "both lb nodes have restarted lb-catalog twice",
        LONG,
        || {
            report = cluster.bramble_ok(&["workers", "--json"]).json();
            ["n2", "n3"].iter().all(|node| {
                worker_row(&report, node, "lb-catalog")
                    .is_some_and(|row| row["restarts"] == 2 && row["state"] != "failed")
            })
        },
    );
    for node in ["n2", "n3"] {
        let row = worker_row(&report, node, "lb-catalog").unwrap();
        assert_eq!(row["errors"], 2, "{row}");
        assert!(
            row["last_error"]
                .as_str()
                .is_some_and(|error| error.contains("panicked")),
            "{row}"
        );
    }
    // Nodes without the `lb` role run no balancer worker; every node runs the catalog's.
    assert!(
        worker_row(&report, "n1", "lb-catalog").is_none(),
        "{report}"
    );
    for node in cluster.all() {
        let row = worker_row(&report, node, "catalog-leases")
            .unwrap_or_else(|| panic!("no catalog-leases worker on {node}: {report}"));
        assert_eq!(row["errors"], 0, "{row}");
    }
    // The table for people names the failure too.
    let table = cluster.bramble_ok(&["workers", "--node", "n2"]).stdout;
    assert!(
        table.contains("lb-catalog") && table.contains("panicked"),
        "{table}"
    );
    // And the agents kept running throughout.
    cluster.assert_all_alive(LONG);
}
