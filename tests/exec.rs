//! `bramble exec` (issue 13) on a real emulated cluster: only nodes that opted in run
//! the command, as `nobody`; the others refuse clearly; the exit status says so; a command
//! that hangs is cut at `--timeout`; every command is in the node's audit log.

mod harness;

use std::time::{Duration, Instant};

use harness::TestCluster;
use serde_json::Value;

#[test]
fn exec_runs_where_nodes_opted_in_refuses_elsewhere_and_cuts_at_its_timeout() {
    let cluster = TestCluster::up(5);
    for node in ["n1", "n2"] {
        std::fs::write(
            cluster.dir.path().join(node).join("exec.toml"),
            "enabled = true\n",
        )
        .expect("opting in");
    }
    let run = cluster.bramble(&[
        "exec",
        "--json",
        "--",
        "sh",
        "-c",
        "echo $BRAMBLE_NODE; id -un",
    ]);
    assert!(
        !run.success,
        "three nodes refused: the exit status says so: {run:?}"
    );
    let results: Value = run.json();
    let results = results.as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 5, "{results:?}");
    for result in &results {
        let node = result["node"].as_str().unwrap_or_default();
        if node == "n1" || node == "n2" {
            assert_eq!(result["result"].as_str(), Some("ok"), "{result}");
            let stdout: Vec<u8> = result["outcome"]["stdout"]
                .as_array()
                .map(|bytes| {
                    bytes
                        .iter()
                        .filter_map(|b| b.as_u64())
                        .map(|b| b as u8)
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&stdout),
                format!("{node}\nnobody\n")
            );
        } else {
            assert_eq!(result["result"].as_str(), Some("refused"), "{result}");
            assert!(
                result["error"]
                    .as_str()
                    .is_some_and(|error| error.contains("does not allow exec")),
                "{result}"
            );
        }
    }
    // Only the opted-in nodes: success.
    let good = cluster.bramble(&[
        "exec",
        "--nodes",
        "n1,n2",
        "--one-line",
        "--",
        "uname",
        "-n",
    ]);
    assert!(good.success, "{good:?}");
    assert_eq!(good.stdout.lines().count(), 2, "{good:?}");
    // Root is refused unless the node allows it.
    let root = cluster.bramble(&["exec", "--nodes", "n1", "--user", "root", "--", "true"]);
    assert!(
        !root.success && root.stdout.contains("does not allow exec as root"),
        "{root:?}"
    );
    // A command that hangs is cut at its timeout, and its whole group with it.
    let started = Instant::now();
    let hung = cluster.bramble(&[
        "exec",
        "--nodes",
        "n1",
        "--timeout",
        "1s",
        "--json",
        "--",
        "sh",
        "-c",
        "sleep 300 & sleep 300",
    ]);
    assert!(!hung.success, "{hung:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let hung: Value = hung.json();
    assert_eq!(
        hung[0]["outcome"]["timed_out"].as_bool(),
        Some(true),
        "{hung}"
    );
    // A failing command fails the run; a missing program is named.
    let failing = cluster.bramble(&["exec", "--nodes", "n2", "--", "sh", "-c", "exit 3"]);
    assert!(
        !failing.success && failing.stdout.contains("exit 3"),
        "{failing:?}"
    );
    let missing = cluster.bramble(&["exec", "--nodes", "n2", "--", "/no/such/program"]);
    assert!(
        !missing.success && missing.stdout.contains("was not found"),
        "{missing:?}"
    );
    // Every command is in the node's audit log, which only its owner reads.
    let audit_path = cluster.dir.path().join("n1").join("exec-audit.log");
    let audit = std::fs::read_to_string(&audit_path).expect("the audit log");
    assert!(audit.lines().count() >= 4, "{audit}");
    assert!(
        audit.contains("cut after 1000 ms") && audit.contains("uname"),
        "{audit}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&audit_path)
        .map(|meta| meta.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600);
    // Bad input is refused before anything runs.
    let no_timeout = cluster.bramble(&["exec", "--timeout", "90m", "--", "true"]);
    assert!(
        !no_timeout.success && no_timeout.stderr.contains("--timeout"),
        "{no_timeout:?}"
    );
    cluster.assert_all_alive(Duration::from_secs(10));
}
