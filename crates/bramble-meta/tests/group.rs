//! Group commit on a single real node (data directory, gossip, Raft on redb): writes made at
//! the same time share log entries, and each still gets the result it would have had
//! alone — compare-and-set included — and a group cannot be sent from outside.

mod common;

use bramble_meta::types::{Command, CommandResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_keep_their_own_results() {
    let node = common::SoloNode::start("grouping").await;
    let meta = node.meta.clone();
    // Let gossip announce this node's protocol before the first write.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let first_index = meta.reader().last_applied_index();

    const WRITES: usize = 300;
    let mut tasks = tokio::task::JoinSet::new();
    for number in 0..WRITES {
        let meta = meta.clone();
        tasks.spawn(async move {
            let key = format!("group/file-{number}");
            let result = meta
                .write(
                    Command::Put {
                        key: key.clone(),
                        value: vec![number as u8; 4096],
                    },
                    false,
                )
                .await
                .unwrap();
            (key, number, result)
        });
    }
    // Two creates of one name race inside the same burst: exactly one may win.
    for _ in 0..2 {
        let meta = meta.clone();
        tasks.spawn(async move {
            let result = meta
                .write(
                    Command::PutIfVersion {
                        key: "group/contested".into(),
                        value: b"mine".to_vec(),
                        expected_version: 0,
                    },
                    false,
                )
                .await
                .unwrap();
            ("group/contested".to_string(), usize::MAX, result)
        });
    }
    let mut contested = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (key, number, result) = joined.unwrap();
        if number == usize::MAX {
            contested.push(result);
            continue;
        }
        let CommandResult::Written { version } = result else {
            panic!("{key}: {result:?}");
        };
        let stored = meta.reader().get(&key).unwrap().expect("the key is stored");
        assert_eq!(stored.version, version, "{key}");
        assert_eq!(stored.value, vec![number as u8; 4096], "{key}");
    }
    let won = contested
        .iter()
        .filter(|result| matches!(result, CommandResult::Written { .. }))
        .count();
    let refused = contested
        .iter()
        .filter(|result| matches!(result, CommandResult::VersionMismatch { .. }))
        .count();
    assert_eq!((won, refused), (1, 1), "{contested:?}");

    let entries = meta.reader().last_applied_index() - first_index;
    assert!(
        entries < (WRITES as u64) / 2,
        "{} writes made at once took {entries} log entries",
        WRITES + 2
    );

    let refused = meta
        .write(
            Command::Group(vec![Command::Delete {
                key: "group/file-1".into(),
            }]),
            false,
        )
        .await
        .expect_err("a group from outside is refused");
    assert!(
        refused.message.contains("formed by the leader"),
        "{refused}"
    );
    assert!(meta.reader().get("group/file-1").unwrap().is_some());
    node.stop().await;
}
