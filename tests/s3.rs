//! The S3 drill (issue 9): boto3, aws-cli and rclone against the S3 endpoint of a real
//! emulated cluster — put, list with prefixes and delimiters, get with ranges, delete, a
//! 64 MiB multipart upload, copy, metadata, presigned URLs, and bad input (a wrong
//! signature, an expired URL, anonymous requests, parts too small). The client side is
//! `tests/s3_clients.py`; it needs python3 with boto3, aws-cli and rclone (`.ci/run`
//! installs them).

mod harness;

use std::process::Command;

use harness::TestCluster;

#[test]
fn s3_clients_work_against_a_volume() {
    let cluster = TestCluster::up(3);
    cluster.bramble_ok(&["volume", "create", "photos", "--replica", "2", "n1", "n2"]);
    let key = cluster
        .bramble_ok(&["s3", "key", "create", "drill", "--json"])
        .json();
    let settings = std::fs::read_to_string(cluster.path().join("n3").join("store.toml")).unwrap();
    let listen = settings
        .lines()
        .find_map(|line| line.strip_prefix("s3_listen = "))
        .map(|value| value.trim_matches('"').to_string())
        .expect("the emulator gives every node an S3 endpoint");
    let work = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_clients.py");
    let output = Command::new("python3")
        .arg(&script)
        .env("BRAMBLE_S3_ENDPOINT", format!("http://{listen}"))
        .env("BRAMBLE_S3_KEY", key["access_key"].as_str().unwrap())
        .env("BRAMBLE_S3_SECRET", key["secret"].as_str().unwrap())
        .env("BRAMBLE_S3_BUCKET", "photos")
        .env("BRAMBLE_S3_WORKDIR", work.path())
        .output()
        .expect("running python3 (needs boto3, aws-cli and rclone: see .ci/run)");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "the S3 clients failed:\n{}\n{}\nagent log of n3:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        cluster.log("n3")
    );
    // The objects are files of the volume, as every other view sees them.
    let listing = cluster
        .bramble_ok(&["fs", "ls", "photos:/big", "--json"])
        .json();
    assert_eq!(listing[0]["size"], 64 * 1024 * 1024, "{listing}");
}

/// Clients that stop sending mid-request (a half-sent head, a body that stalls) are cut
/// off within the endpoint's timeouts while others are served (`tests/s3_stalls.py`).
#[test]
fn stalled_s3_clients_are_cut_off() {
    let cluster = TestCluster::up(3);
    cluster.bramble_ok(&["volume", "create", "stalls", "--replica", "2", "n1", "n2"]);
    let key = cluster
        .bramble_ok(&["s3", "key", "create", "stalls", "--json"])
        .json();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_stalls.py");
    let output = Command::new("python3")
        .arg(&script)
        .env(
            "BRAMBLE_S3_ENDPOINT",
            format!("http://{}", s3_endpoint(&cluster, "n3")),
        )
        .env("BRAMBLE_S3_KEY", key["access_key"].as_str().unwrap())
        .env("BRAMBLE_S3_SECRET", key["secret"].as_str().unwrap())
        .env("BRAMBLE_S3_BUCKET", "stalls")
        .output()
        .expect("running python3 (needs boto3: see .ci/run)");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "the stall drill failed:\n{}\n{}\nagent log of n3:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        cluster.log("n3")
    );
    // The resumed PUT's first 64 KiB, sent before its 3 s pause while ten stalled bodies
    // wanted the write budget, was stored as a block of its own: 4 MiB in 5 blocks.
    let resumed = cluster
        .bramble_ok(&["fs", "stat", "stalls:/resumed", "--json"])
        .json();
    assert_eq!(resumed["size"].as_u64(), Some(4 * 1024 * 1024), "{resumed}");
    assert_eq!(resumed["blocks"].as_u64(), Some(5), "{resumed}");
}

/// Runs `tests/s3_scopes.py <phase>` against n3's endpoint with the drill's keys.
fn run_scopes_phase(cluster: &TestCluster, keys: &serde_json::Value, phase: &str) {
    let work = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_scopes.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(phase)
        .env(
            "BRAMBLE_S3_ENDPOINT",
            format!("http://{}", s3_endpoint(cluster, "n3")),
        )
        .env("BRAMBLE_S3_KEYS", keys.to_string())
        .env("BRAMBLE_S3_WORKDIR", work.path())
        .output()
        .expect("running python3 (needs boto3 and aws-cli: see .ci/run)");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "the scope drill ({phase}) failed:\n{}\n{}\nagent log of n3:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        cluster.log("n3")
    );
}

fn s3_endpoint(cluster: &TestCluster, node: &str) -> String {
    let settings = std::fs::read_to_string(cluster.path().join(node).join("store.toml")).unwrap();
    settings
        .lines()
        .find_map(|line| line.strip_prefix("s3_listen = "))
        .map(|value| value.trim_matches('"').to_string())
        .expect("the emulator gives every node an S3 endpoint")
}

/// Scoped keys (`--bucket`, `--read-only`) hold against boto3 and aws-cli, uploads in
/// progress list as S3 lists them, and `bramble s3 cleanup-uploads` aborts the stale ones
/// (the function every node's reaper runs after `s3_stale_upload_hours`).
#[test]
fn scoped_keys_reach_only_their_buckets_and_stale_uploads_are_cleaned_up() {
    let cluster = TestCluster::up(3);
    cluster.bramble_ok(&["volume", "create", "photos", "--replica", "2", "n1", "n2"]);
    cluster.bramble_ok(&["volume", "create", "docs", "--replica", "2", "n2", "n3"]);
    let refused = cluster.bramble(&["s3", "key", "create", "typo", "--bucket", "photoz"]);
    assert!(
        !refused.success && refused.stderr.contains("no volume (bucket) named photoz"),
        "{refused:?}"
    );
    let mut keys = serde_json::Map::new();
    for (name, extra) in [
        ("full", vec![]),
        ("reader", vec!["--bucket", "photos", "--read-only"]),
        ("docs", vec!["--bucket", "docs"]),
    ] {
        let mut arguments = vec!["s3", "key", "create", name, "--json"];
        arguments.extend(extra);
        let key = cluster.bramble_ok(&arguments).json();
        keys.insert(
            name.to_string(),
            serde_json::json!([key["access_key"], key["secret"]]),
        );
    }
    let listed = cluster.bramble_ok(&["s3", "key", "ls", "--json"]).json();
    let reader = listed
        .as_array()
        .and_then(|keys| keys.iter().find(|key| key["name"] == "reader"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        reader["scope"]["buckets"],
        serde_json::json!(["photos"]),
        "{listed}"
    );
    assert_eq!(reader["scope"]["read_only"], true, "{listed}");
    assert!(
        listed.to_string().find("secret").is_none(),
        "a listing never shows secrets: {listed}"
    );
    let keys = serde_json::Value::Object(keys);
    run_scopes_phase(&cluster, &keys, "setup");

    // Three uploads are left in progress; none is older than an hour, all older than 0 s.
    let none = cluster
        .bramble_ok(&["s3", "cleanup-uploads", "--older-than", "1h", "--json"])
        .json();
    assert_eq!(none["aborted"], 0, "{none}");
    let unknown = cluster.bramble(&[
        "s3",
        "cleanup-uploads",
        "--older-than",
        "0s",
        "--bucket",
        "nope",
    ]);
    assert!(
        !unknown.success && unknown.stderr.contains("no volume (bucket) named nope"),
        "{unknown:?}"
    );
    let cleaned = cluster
        .bramble_ok(&[
            "s3",
            "cleanup-uploads",
            "--older-than",
            "0s",
            "--bucket",
            "photos",
            "--json",
        ])
        .json();
    assert_eq!(cleaned["aborted"], 3, "{cleaned}");
    run_scopes_phase(&cluster, &keys, "after-cleanup");

    // A removed key is refused at once.
    cluster.bramble_ok(&["s3", "key", "rm", "reader"]);
    let listed = cluster.bramble_ok(&["s3", "key", "ls", "--json"]).json();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
}
