//! A single real node — data directory, gossip, Raft on redb — exercised in-process: a
//! subsystem that watches a key prefix sees committed changes, in order, and nothing
//! outside its prefix; and compare-and-set refuses a stale version.

mod common;

use std::time::Duration;

use bramble_meta::api::Consistency;
use bramble_meta::types::{Change, Command, CommandResult};

async fn next_change(watch: &mut bramble_meta::Watch) -> Change {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a change arrives")
        .expect("the watch is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_committed_changes_under_their_prefix_in_order() {
    let node = common::SoloNode::start("solo").await;
    let meta = node.meta.clone();

    let mut watch = meta.watch("lb/");
    let put = |key: &str, value: &str| Command::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    };
    let first = meta.write(put("lb/web", "one"), false).await.unwrap();
    meta.write(put("other/thing", "ignored"), false)
        .await
        .unwrap();
    let second = meta.write(put("lb/web", "two"), false).await.unwrap();
    meta.write(
        Command::Delete {
            key: "lb/web".into(),
        },
        false,
    )
    .await
    .unwrap();

    let (
        CommandResult::Written {
            version: first_version,
        },
        CommandResult::Written {
            version: second_version,
        },
    ) = (first, second)
    else {
        panic!("writes were not applied");
    };
    assert_eq!(
        next_change(&mut watch).await,
        Change::Key {
            key: "lb/web".into(),
            value: Some(b"one".to_vec()),
            version: first_version
        }
    );
    assert_eq!(
        next_change(&mut watch).await,
        Change::Key {
            key: "lb/web".into(),
            value: Some(b"two".to_vec()),
            version: second_version
        }
    );
    match next_change(&mut watch).await {
        Change::Key {
            key, value: None, ..
        } => assert_eq!(key, "lb/web"),
        other => panic!("expected the deletion, got {other:?}"),
    }

    // Compare-and-set: the version read is the one to present.
    meta.write(put("lb/config", "v1"), false).await.unwrap();
    let current = meta
        .read("lb/config", Consistency::Linearizable, false)
        .await
        .unwrap()
        .unwrap();
    let stale = Command::PutIfVersion {
        key: "lb/config".into(),
        value: b"v2".to_vec(),
        expected_version: current.version - 1,
    };
    assert_eq!(
        meta.write(stale, false).await.unwrap(),
        CommandResult::VersionMismatch {
            current_version: current.version
        }
    );
    let fresh = Command::PutIfVersion {
        key: "lb/config".into(),
        value: b"v2".to_vec(),
        expected_version: current.version,
    };
    assert!(matches!(
        meta.write(fresh, false).await.unwrap(),
        CommandResult::Written { .. }
    ));
    // Bad input is refused with a clear error, not applied.
    let error = meta.write(put("", "x"), false).await.unwrap_err();
    assert!(error.message.contains("key is empty"), "{error}");

    node.stop().await;
}
