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
