//! `bramble upgrade` (issue 13, item 3) on a real emulated cluster with the demo website:
//! builds that are not bramble, or not for these nodes, are refused before any agent
//! stops; a new build is copied to every node, checked by hash, and each agent restarts as
//! it one at a time (same process, new incarnation) while a client keeps asking the site
//! through the balancer's VIP; a restart afterwards keeps the new build (the launcher), and
//! upgrading to the build every node already runs restarts nothing.
//!
//! The new build is this test's own `bramble` with bytes appended: a different file and
//! hash that runs the same code. Old and new therefore speak the same protocol; the rules
//! for builds of different protocols are unit-tested in `bramble_cluster::protocol`, and
//! `bench/upgrade.sh` upgrades from the previous commit's build.

mod harness;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harness::web::{client_loop, demo_site, raise_thread_priority};
use harness::{TestCluster, run_bramble};
use serde_json::Value;

/// The members as `bramble nodes --json` has them, by name.
fn members(cluster: &TestCluster) -> Vec<Value> {
    cluster
        .bramble_ok(&["nodes", "--json"])
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn member_field(cluster: &TestCluster, name: &str, field: &str) -> Value {
    members(cluster)
        .into_iter()
        .find(|member| member["name"] == name)
        .map(|member| member[field].clone())
        .unwrap_or(Value::Null)
}

/// Each node's agent pid, from `bramble status`.
fn pids(cluster: &TestCluster) -> Vec<u64> {
    cluster
        .all()
        .iter()
        .map(|name| cluster.status_of(name)["pid"].as_u64().unwrap_or_default())
        .collect()
}

/// A copy of this test's bramble with `trailer` appended: another file, the same program.
fn new_build(directory: &Path, trailer: &str) -> (PathBuf, String) {
    let path = directory.join(format!("bramble-{trailer}"));
    let mut bytes = std::fs::read(harness::bramble_binary()).expect("reading bramble");
    bytes.extend_from_slice(trailer.as_bytes());
    std::fs::write(&path, bytes).expect("writing the new build");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("making the new build executable");
    let version = std::process::Command::new(&path)
        .args(["version", "--json"])
        .output()
        .expect("running the new build");
    let version: Value = serde_json::from_slice(&version.stdout).expect("version --json");
    let hash = version["executable_hash"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(hash.len(), 16, "{version}");
    (path, hash)
}

#[test]
fn upgrade_refuses_what_cannot_run_then_moves_every_node_one_at_a_time_with_the_site_up() {
    let cluster = TestCluster::up_with(3, &[]);
    let site = demo_site(&cluster);
    let scratch = cluster.path().join("builds");
    std::fs::create_dir_all(&scratch).expect("creating the builds folder");
    let running = member_field(&cluster, "n1", "build");
    harness::wait_until(
        "every node announces its build",
        Duration::from_secs(20),
        || {
            members(&cluster).iter().all(|member| {
                member["build"]
                    .as_str()
                    .is_some_and(|build| build.len() == 16)
            })
        },
    );
    let generations: Vec<u64> = cluster
        .all()
        .iter()
        .map(|name| {
            member_field(&cluster, name, "generation")
                .as_u64()
                .unwrap_or_default()
        })
        .collect();

    // Refused before any agent stops: a script, another machine's executable, and an
    // executable for these nodes that is not bramble.
    let script = scratch.join("script");
    std::fs::write(&script, "#!/bin/sh\necho bramble 9.9.9\n").expect("writing a script");
    let refused = cluster.bramble(&["upgrade", "--binary", script.to_str().unwrap_or_default()]);
    assert!(!refused.success, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("is not a little-endian ELF executable"),
        "{refused:?}"
    );
    let (foreign, _) = new_build(&scratch, "foreign");
    let mut bytes = std::fs::read(&foreign).expect("reading the build");
    let other_machine: u16 = if std::env::consts::ARCH == "aarch64" {
        62
    } else {
        183
    };
    bytes[18..20].copy_from_slice(&other_machine.to_le_bytes());
    std::fs::write(&foreign, bytes).expect("writing another machine's build");
    let refused = cluster.bramble(&["upgrade", "--binary", foreign.to_str().unwrap_or_default()]);
    assert!(!refused.success, "{refused:?}");
    assert!(
        refused.stderr.contains("no --binary is built for it"),
        "{refused:?}"
    );
    let not_bramble = PathBuf::from("/bin/true");
    let refused = cluster.bramble(&[
        "upgrade",
        "--binary",
        not_bramble.to_str().unwrap_or_default(),
    ]);
    assert!(!refused.success, "{refused:?}");
    assert!(
        refused.stderr.contains("no agent was restarted")
            && refused.stderr.contains("is this a bramble executable"),
        "{refused:?}"
    );
    for (index, name) in cluster.all().iter().enumerate() {
        assert_eq!(
            member_field(&cluster, name, "generation").as_u64(),
            Some(generations[index]),
            "{name} restarted although every build was refused"
        );
        assert_eq!(member_field(&cluster, name, "build"), running);
    }

    // The upgrade, under a client loop through the VIP.
    let (new, hash) = new_build(&scratch, "next");
    assert_ne!(Value::String(hash.clone()), running);
    let pids_before = pids(&cluster);
    let done = AtomicBool::new(false);
    let (report, record) = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            raise_thread_priority();
            client_loop(site, Duration::from_millis(20), &done)
        });
        std::thread::sleep(Duration::from_millis(500));
        let run = cluster.bramble(&[
            "upgrade",
            "--binary",
            new.to_str().unwrap_or_default(),
            "--timeout",
            "2m",
            "--json",
        ]);
        std::thread::sleep(Duration::from_millis(500));
        done.store(true, Ordering::Relaxed);
        (run, client.join().expect("the client loop"))
    });
    assert!(report.success, "{report:?}");
    let report = report.json();
    assert_eq!(report["chore"], "upgrade", "{report}");
    let nodes = report["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 3, "{report}");
    assert!(nodes.iter().all(|node| node["result"] == "ok"), "{report}");
    // One at a time: each node's turn ended before the next one's began.
    for pair in nodes.windows(2) {
        assert!(
            pair[0]["finished_unix_ms"].as_u64() <= pair[1]["started_unix_ms"].as_u64(),
            "{report}"
        );
    }
    for (index, name) in cluster.all().iter().enumerate() {
        assert_eq!(
            member_field(&cluster, name, "build").as_str(),
            Some(hash.as_str()),
            "{name} does not run the new build"
        );
        assert!(
            member_field(&cluster, name, "generation")
                .as_u64()
                .unwrap_or_default()
                > generations[index],
            "{name} was not restarted"
        );
        let staged = cluster.path().join(name).join("upgrade");
        let record: Value = serde_json::from_slice(
            &std::fs::read(staged.join("installed.json")).expect("the install record"),
        )
        .expect("the install record is JSON");
        assert_eq!(record["confirmed"], true, "{record}");
    }
    // The same processes, now running the new build: systemd and the emulator keep
    // following them.
    assert_eq!(pids(&cluster), pids_before);
    eprintln!(
        "upgrade: {} of {} requests failed, longest gap {:?}",
        record.failures.len(),
        record.requests,
        record.longest_gap
    );
    assert!(record.requests > 100, "{record:?}");
    // The VIP's planned moves refuse nothing; a connection may be refused only while the
    // catalog elects a leader after the old one restarted (see tests/drain.rs).
    assert!(
        record
            .failures
            .iter()
            .all(|failure| failure.contains("refused")),
        "{:?}",
        record.failures
    );
    assert!(
        record.longest_gap < Duration::from_millis(1500),
        "the site was unanswered for {:?}",
        record.longest_gap
    );

    // A restart keeps the new build: the packaged executable starts it.
    cluster.chaos("restart", "n2");
    cluster.assert_all_alive(Duration::from_secs(20));
    harness::wait_until(
        "n2 announces its build after the restart",
        Duration::from_secs(20),
        || member_field(&cluster, "n2", "build").as_str() == Some(hash.as_str()),
    );

    // Upgrading to what every node runs restarts nothing.
    let generations: Vec<Value> = cluster
        .all()
        .iter()
        .map(|name| member_field(&cluster, name, "generation"))
        .collect();
    let again = cluster.bramble_ok(&["upgrade", "--binary", new.to_str().unwrap_or_default()]);
    assert!(
        again
            .stdout
            .contains("every chosen node already runs this build"),
        "{again:?}"
    );
    for (index, name) in cluster.all().iter().enumerate() {
        assert_eq!(
            member_field(&cluster, name, "generation"),
            generations[index]
        );
    }
}

#[test]
fn version_names_the_build_s_protocol_and_architecture() {
    let run = run_bramble(None, &["version", "--json"]);
    assert!(run.success, "{run:?}");
    let version = run.json();
    assert_eq!(version["architecture"], std::env::consts::ARCH);
    assert!(version["protocol"].as_u64().unwrap_or_default() >= 1);
    assert!(
        version["oldest_compatible_protocol"].as_u64() <= version["protocol"].as_u64(),
        "{version}"
    );
}
