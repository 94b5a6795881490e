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

/// `total` writes of `value` to 16 keys under `data/`, 64 in flight.
async fn write_concurrently(meta: &std::sync::Arc<bramble_meta::Meta>, value: &[u8], total: u32) {
    let writers: Vec<_> = (0..64u32)
        .map(|writer| {
            let meta = meta.clone();
            let value = value.to_vec();
            tokio::spawn(async move {
                for round in 0..total / 64 {
                    let key = format!("data/{}", (writer + round) % 16);
                    meta.write(
                        Command::Put {
                            key,
                            value: value.clone(),
                        },
                        false,
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kilobytes| kilobytes * 1024)
        .expect("VmRSS in /proc/self/status")
}

/// A watcher that never reads while 10,048 writes of 4 KiB (39 MiB) go by under its
/// prefix: it is cut off instead of holding them, reads one Reset, then new changes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_off_and_memory_stays_bounded() {
    let node = common::SoloNode::start("solo").await;
    let meta = node.meta.clone();
    let mut stalled = meta.watch("data/");
    let value = vec![42u8; 4 * 1024];
    // Warm up the store, its caches and the allocator with the same load first, so the
    // measurement sees the steady state.
    write_concurrently(&meta, &value, 2_048).await;
    let before = resident_bytes();
    write_concurrently(&meta, &value, 10_048).await;
    let after = resident_bytes();
    let growth = after.saturating_sub(before);
    eprintln!(
        "resident memory {} MiB before and {} MiB after 10,048 writes of 4 KiB with a stalled watcher (measured)",
        before / (1024 * 1024),
        after / (1024 * 1024)
    );
    assert!(
        growth < 24 * 1024 * 1024,
        "memory grew by {} MiB: the stalled watcher held the changes",
        growth / (1024 * 1024)
    );
    assert_eq!(next_change(&mut stalled).await, Change::Reset);
    meta.write(
        Command::Put {
            key: "data/after".into(),
            value: b"x".to_vec(),
        },
        false,
    )
    .await
    .unwrap();
    match next_change(&mut stalled).await {
        Change::Key { key, .. } => assert_eq!(key, "data/after"),
        other => panic!("expected the new change, got {other:?}"),
    }
    node.stop().await;
}
