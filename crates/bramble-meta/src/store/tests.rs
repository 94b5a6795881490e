//! Tests of the store: openraft's storage suite, durability across reopening, snapshots,
//! watches, compare-and-set, corrupt records.

use std::collections::BTreeSet;

use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Membership};
use tempfile::TempDir;

use super::snapshot::SaveRule;
use super::*;

struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let directory = TempDir::new().map_err(|error| {
            StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, error)
        })?;
        let (log_store, state_machine, _) = open(&directory.path().join("meta.redb"))
            .map_err(storage_error(ErrorSubject::Store, ErrorVerb::Write))?;
        Ok((directory, log_store, state_machine))
    }
}

#[test]
fn handles_can_move_between_tasks() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<LogStore>();
    assert_send_sync::<StateMachineStore>();
    assert_send_sync::<CatalogReader>();
    assert_send_sync::<MetaStoreError>();
}

/// openraft's own conformance suite. It builds a runtime per test, so this test must
/// not run inside one.
#[test]
fn passes_openraft_storage_suite() {
    Suite::<TypeConfig, LogStore, StateMachineStore, TempStoreBuilder, TempDir>::test_all(
        TempStoreBuilder,
    )
    .unwrap();
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn command_entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(command),
    }
}

fn put(index: u64, key: &str, value: &[u8]) -> Entry<TypeConfig> {
    command_entry(
        index,
        Command::Put {
            key: key.to_string(),
            value: value.to_vec(),
        },
    )
}

fn delete(index: u64, key: &str) -> Entry<TypeConfig> {
    command_entry(
        index,
        Command::Delete {
            key: key.to_string(),
        },
    )
}

fn membership_entry(index: u64) -> Entry<TypeConfig> {
    let voters = BTreeSet::from([1u64]);
    let nodes = [(
        1u64,
        MetaNode::new("alpha", "127.0.0.1:7000".parse().unwrap()),
    )];
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Membership(Membership::new(
            vec![voters],
            nodes
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        )),
    }
}

fn open_in(directory: &TempDir) -> (LogStore, StateMachineStore, CatalogReader) {
    open(&directory.path().join("meta.redb")).unwrap()
}

#[tokio::test]
async fn catalog_survives_reopening() {
    let directory = TempDir::new().unwrap();
    {
        let (_, mut state_machine, reader) = open_in(&directory);
        let results = state_machine
            .apply([
                membership_entry(1),
                put(2, "lb/web/config", b"one"),
                put(3, "dns/zone", b"two"),
                put(4, "lb/web/config", b"three"),
                delete(5, "dns/zone"),
                put(6, "dns/other", b"four"),
            ])
            .await
            .unwrap();
        assert_eq!(results[3], CommandResult::Written { version: 4 });
        assert_eq!(results[4], CommandResult::Deleted { existed: true });
        assert_eq!(reader.last_applied_index(), 6);
    }
    let (_, mut state_machine, reader) = open_in(&directory);
    assert_eq!(reader.last_applied_index(), 6);
    assert_eq!(
        reader.get("lb/web/config").unwrap(),
        Some(VersionedValue {
            value: b"three".to_vec(),
            version: 4
        })
    );
    assert_eq!(reader.get("dns/zone").unwrap(), None);
    assert_eq!(reader.get("dns/other").unwrap().unwrap().version, 6);
    assert_eq!(reader.len().unwrap(), 2);
    let (last_applied, membership) = state_machine.applied_state().await.unwrap();
    assert_eq!(last_applied, Some(log_id(1, 6)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
    assert_eq!(
        membership
            .nodes()
            .next()
            .map(|(_, node)| node.name.as_str()),
        Some("alpha")
    );
}

#[tokio::test]
async fn log_vote_and_committed_survive_reopening() {
    let directory = TempDir::new().unwrap();
    {
        let (mut log_store, _, _) = open_in(&directory);
        log_store.save_vote(&Vote::new(3, 7)).await.unwrap();
        log_store.save_committed(Some(log_id(3, 2))).await.unwrap();
        let entries = vec![put(1, "a", b"1"), put(2, "b", b"2"), put(3, "c", b"3")];
        log_store.append_entries(entries.into_iter()).unwrap();
        log_store.purge(log_id(1, 1)).await.unwrap();
    }
    let (mut log_store, _, _) = open_in(&directory);
    assert_eq!(log_store.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
    // The non-durable committed record was made durable by the later commits.
    assert_eq!(
        log_store.read_committed().await.unwrap(),
        Some(log_id(3, 2))
    );
    let state = log_store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(1, 3)));
    let entries = log_store.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].log_id.index, 2);
    // A reversed range is empty, not a panic.
    assert!(
        log_store
            .try_get_log_entries((Bound::Included(5), Bound::Excluded(3)))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn snapshot_moves_the_catalog_to_a_fresh_store() {
    let leader_directory = TempDir::new().unwrap();
    let follower_directory = TempDir::new().unwrap();
    let (_, mut leader, leader_reader) = open_in(&leader_directory);
    leader
        .apply([
            membership_entry(1),
            put(2, "a/1", b"x"),
            put(3, "a/2", b"y"),
            put(4, "b/1", b"z"),
            delete(5, "a/1"),
        ])
        .await
        .unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 5)));
    assert_eq!(snapshot.meta.snapshot_id, "1-5-1");
    // The id counter makes a second build at the same log id distinct.
    let again = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(again.meta.snapshot_id, "1-5-2");

    let (_, mut follower, follower_reader) = open_in(&follower_directory);
    follower.apply([put(1, "stale", b"gone")]).await.unwrap();
    let mut watcher = follower_reader.watch("");
    let current = leader.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, again.meta);
    follower
        .install_snapshot(&current.meta, current.snapshot)
        .await
        .unwrap();

    assert_eq!(watcher.next().await.unwrap(), Change::Reset);
    assert_eq!(
        follower_reader.list("", usize::MAX).unwrap(),
        leader_reader.list("", usize::MAX).unwrap()
    );
    assert_eq!(follower_reader.get("stale").unwrap(), None);
    assert_eq!(follower_reader.last_applied_index(), 5);
    assert_eq!(
        follower.applied_state().await.unwrap(),
        leader.applied_state().await.unwrap()
    );
    let saved = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(saved.meta, again.meta);
    assert_eq!(saved.snapshot.into_inner(), again.snapshot.into_inner());
    // The snapshot file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(snapshot_path_for(
        &follower_directory.path().join("meta.redb"),
    ))
    .unwrap()
    .permissions()
    .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn an_older_build_does_not_replace_a_newer_snapshot() {
    let directory = TempDir::new().unwrap();
    let (_, mut state_machine, _) = open_in(&directory);
    state_machine.apply([put(1, "a", b"1")]).await.unwrap();
    let older = state_machine.shared.build_snapshot().unwrap();
    state_machine.apply([put(2, "b", b"2")]).await.unwrap();
    let newer = state_machine.shared.build_snapshot().unwrap();
    // Simulate the older build finishing last.
    let data = older.snapshot.into_inner();
    state_machine
        .shared
        .save_snapshot(&older.meta, &data, SaveRule::UnlessNewerSaved)
        .unwrap();
    let current = state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, newer.meta);
}

#[tokio::test]
async fn a_snapshot_file_older_than_the_last_install_is_ignored() {
    let leader_directory = TempDir::new().unwrap();
    let follower_directory = TempDir::new().unwrap();
    let (_, mut leader, _) = open_in(&leader_directory);
    leader.apply([put(1, "a", b"1")]).await.unwrap();
    let older = leader.shared.build_snapshot().unwrap();
    leader.apply([put(2, "b", b"2")]).await.unwrap();
    let newer = leader.shared.build_snapshot().unwrap();

    let (_, mut follower, _) = open_in(&follower_directory);
    follower
        .install_snapshot(&newer.meta, newer.snapshot)
        .await
        .unwrap();
    // A crash between the install's commit and its file write leaves the previous
    // snapshot file in place.
    let data = older.snapshot.into_inner();
    follower
        .shared
        .save_snapshot(&older.meta, &data, SaveRule::Always)
        .unwrap();
    assert!(follower.get_current_snapshot().await.unwrap().is_none());
}

#[tokio::test]
async fn watchers_see_changes_in_log_order() {
    let directory = TempDir::new().unwrap();
    let (_, mut state_machine, reader) = open_in(&directory);
    let mut watcher = reader.watch("");
    state_machine
        .apply([put(1, "k", b"1"), put(2, "j", b"2"), delete(3, "missing")])
        .await
        .unwrap();
    state_machine
        .apply([delete(4, "k"), put(5, "j", b"3")])
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(change) = watcher.try_next() {
        seen.push(change);
    }
    let key = |key: &str, value: Option<&[u8]>, version| Change::Key {
        key: key.to_string(),
        value: value.map(<[u8]>::to_vec),
        version,
    };
    assert_eq!(
        seen,
        vec![
            key("k", Some(b"1"), 1),
            key("j", Some(b"2"), 2),
            key("k", None, 4),
            key("j", Some(b"3"), 5),
        ]
    );
}

#[tokio::test]
async fn compare_and_set_with_a_wrong_version_changes_nothing() {
    let directory = TempDir::new().unwrap();
    let (_, mut state_machine, reader) = open_in(&directory);
    let put_if = |index, expected_version, value: &[u8]| {
        command_entry(
            index,
            Command::PutIfVersion {
                key: "lock".to_string(),
                value: value.to_vec(),
                expected_version,
            },
        )
    };
    let mut watcher = reader.watch("");
    let results = state_machine
        .apply([
            put_if(1, 0, b"first"),
            put_if(2, 7, b"second"),
            put_if(3, 0, b"third"),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            CommandResult::Written { version: 1 },
            CommandResult::VersionMismatch { current_version: 1 },
            CommandResult::VersionMismatch { current_version: 1 },
        ]
    );
    assert_eq!(
        reader.get("lock").unwrap(),
        Some(VersionedValue {
            value: b"first".to_vec(),
            version: 1
        })
    );
    // Only the successful write is announced; the entries are applied all the same.
    assert!(matches!(
        watcher.try_next(),
        Some(Change::Key { version: 1, .. })
    ));
    assert!(watcher.try_next().is_none());
    assert_eq!(reader.last_applied_index(), 3);

    let results = state_machine
        .apply([
            put_if(4, 1, b"fourth"),
            command_entry(
                5,
                Command::Put {
                    key: String::new(),
                    value: Vec::new(),
                },
            ),
        ])
        .await
        .unwrap();
    assert_eq!(results[0], CommandResult::Written { version: 4 });
    assert!(matches!(results[1], CommandResult::Rejected { .. }));
    assert_eq!(reader.len().unwrap(), 1);
}

#[tokio::test]
async fn list_returns_keys_with_the_prefix_in_order() {
    let directory = TempDir::new().unwrap();
    let (_, mut state_machine, reader) = open_in(&directory);
    state_machine
        .apply([
            put(1, "lb/b", b""),
            put(2, "lb/a", b""),
            put(3, "lc", b""),
            put(4, "la", b""),
            put(5, "lb/c", b""),
        ])
        .await
        .unwrap();
    let keys = |prefix, limit| {
        reader
            .list(prefix, limit)
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect::<Vec<_>>()
    };
    assert_eq!(keys("lb/", 10), ["lb/a", "lb/b", "lb/c"]);
    assert_eq!(keys("lb/", 2), ["lb/a", "lb/b"]);
    assert_eq!(keys("", 10).len(), 5);
    assert!(keys("zz", 10).is_empty());
}

#[tokio::test]
async fn corrupt_records_are_errors_not_panics() {
    let directory = TempDir::new().unwrap();
    let path = directory.path().join("meta.redb");
    let (mut log_store, mut state_machine, reader) = open(&path).unwrap();
    {
        let transaction = log_store.database.begin_write().unwrap();
        {
            let mut log = transaction.open_table(LOG).unwrap();
            log.insert(1, [0xffu8; 3].as_slice()).unwrap();
            let mut catalog = transaction.open_table(CATALOG).unwrap();
            catalog.insert("bad", [0xffu8; 3].as_slice()).unwrap();
            let mut meta = transaction.open_table(LOG_META).unwrap();
            meta.insert(VOTE_KEY, [0xffu8].as_slice()).unwrap();
        }
        transaction.commit().unwrap();
    }
    let error = log_store.try_get_log_entries(0..5).await.unwrap_err();
    assert!(error.to_string().contains("log entry 1"), "{error}");
    assert!(log_store.read_vote().await.is_err());
    let error = reader.get("bad").unwrap_err();
    assert!(error.to_string().contains("meta.redb"), "{error}");
    assert!(
        state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .is_err()
    );

    std::fs::write(snapshot_path_for(&path), b"BRSNAP01 not really").unwrap();
    assert!(state_machine.get_current_snapshot().await.is_err());
}

#[tokio::test]
async fn a_large_catalog_builds_a_snapshot() {
    const KEYS: u64 = 100_000;
    const BATCH: u64 = 10_000;
    let directory = TempDir::new().unwrap();
    let (_, mut state_machine, reader) = open_in(&directory);
    for start in (1..=KEYS).step_by(BATCH as usize) {
        let batch = (start..start + BATCH)
            .map(|index| put(index, &format!("service/{index:08}"), &index.to_le_bytes()));
        state_machine.apply(batch).await.unwrap();
    }
    assert_eq!(reader.len().unwrap(), KEYS as usize);
    let snapshot = state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, KEYS)));

    let other_directory = TempDir::new().unwrap();
    let (_, mut other, other_reader) = open_in(&other_directory);
    other
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(other_reader.len().unwrap(), KEYS as usize);
    assert_eq!(
        other_reader
            .get("service/00054321")
            .unwrap()
            .unwrap()
            .version,
        54321
    );
}

fn batch(index: u64, conditions: &[(&str, u64)], operations: Vec<Operation>) -> Entry<TypeConfig> {
    command_entry(
        index,
        Command::Batch {
            conditions: conditions
                .iter()
                .map(|(key, version)| crate::types::Condition {
                    key: key.to_string(),
                    version: *version,
                })
                .collect(),
            operations,
        },
    )
}

fn put_operation(key: &str, value: &[u8]) -> Operation {
    Operation::Put {
        key: key.to_string(),
        value: value.to_vec(),
    }
}

/// A batch applies all of its operations under one version, or none when a condition
/// fails: the atomic rename volumes rely on.
#[tokio::test]
async fn batches_apply_all_or_nothing() {
    let directory = TempDir::new().unwrap();
    let (_, mut state_machine, reader) = open_in(&directory);
    let results = state_machine
        .apply([
            put(1, "fs/v/a", b"file a"),
            put(2, "fs/v/d/x", b"x"),
            put(3, "fs/v/d/y", b"y"),
            put(4, "other", b"kept"),
            // Rename a to b only if b does not exist and a is still at version 1.
            batch(
                5,
                &[("fs/v/a", 1), ("fs/v/b", 0)],
                vec![
                    put_operation("fs/v/b", b"file a"),
                    Operation::Delete {
                        key: "fs/v/a".to_string(),
                    },
                ],
            ),
            // The same rename again: a is gone, so nothing happens.
            batch(
                6,
                &[("fs/v/a", 1)],
                vec![
                    put_operation("fs/v/c", b"never"),
                    Operation::Delete {
                        key: "fs/v/a".to_string(),
                    },
                ],
            ),
            batch(
                7,
                &[],
                vec![Operation::DeletePrefix {
                    prefix: "fs/v/d/".to_string(),
                }],
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        results[4],
        CommandResult::BatchApplied {
            version: 5,
            deleted: 1
        }
    );
    assert_eq!(
        results[5],
        CommandResult::ConditionFailed {
            key: "fs/v/a".to_string(),
            current_version: 0
        }
    );
    assert_eq!(
        results[6],
        CommandResult::BatchApplied {
            version: 7,
            deleted: 2
        }
    );
    assert_eq!(reader.get("fs/v/a").unwrap(), None);
    assert_eq!(reader.get("fs/v/c").unwrap(), None);
    assert_eq!(reader.get("fs/v/b").unwrap().unwrap().version, 5);
    assert_eq!(reader.get("fs/v/d/x").unwrap(), None);
    assert_eq!(reader.get("other").unwrap().unwrap().value, b"kept");
}

/// Scans group keys by a delimiter, page after page, like S3's ListObjectsV2.
#[tokio::test]
async fn scans_roll_up_subtrees_and_page() {
    let directory = TempDir::new().unwrap();
    let (_, mut state_machine, reader) = open_in(&directory);
    let keys = [
        "fs/v/a",
        "fs/v/b/",
        "fs/v/b/one",
        "fs/v/b/two/deep",
        "fs/v/b-sibling",
        "fs/v/c",
        "fs/w/other-volume",
    ];
    let entries: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(index, key)| put(index as u64 + 1, key, b"."))
        .collect();
    state_machine.apply(entries).await.unwrap();

    let page = reader.scan("fs/v/", None, Some('/'), 100).unwrap();
    let names: Vec<_> = page.entries.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(names, ["fs/v/a", "fs/v/b-sibling", "fs/v/c"]);
    assert_eq!(page.common_prefixes, ["fs/v/b/"]);
    assert_eq!(page.next_start_after, None);

    // One item a page: every item exactly once, in key order.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = reader
            .scan("fs/v/", after.as_deref(), Some('/'), 1)
            .unwrap();
        seen.extend(page.entries.iter().map(|(key, _)| key.clone()));
        seen.extend(page.common_prefixes.iter().cloned());
        match page.next_start_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["fs/v/a", "fs/v/b-sibling", "fs/v/b/", "fs/v/c"]);

    let inside = reader.scan("fs/v/b/", None, Some('/'), 100).unwrap();
    let names: Vec<_> = inside.entries.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(names, ["fs/v/b/", "fs/v/b/one"]);
    assert_eq!(inside.common_prefixes, ["fs/v/b/two/"]);

    let flat = reader.scan("fs/v/", None, None, 100).unwrap();
    assert_eq!(flat.entries.len(), 6);
}

/// A page of large values ends at [`crate::api::MAX_SCAN_PAGE_BYTES`] however many entries
/// were asked for, and paging on from `next_start_after` still sees every key once.
#[tokio::test]
async fn scans_of_large_values_page_by_bytes() {
    let directory = TempDir::new().unwrap();
    let (_, mut state_machine, reader) = open_in(&directory);
    let value = vec![7u8; 64 * 1024];
    let count = 40usize; // 2.5 MiB of values
    let entries: Vec<_> = (0..count)
        .map(|index| put(index as u64 + 1, &format!("fs/v/f{index:03}"), &value))
        .collect();
    state_machine.apply(entries).await.unwrap();

    let first = reader.scan("fs/v/", None, Some('/'), 1000).unwrap();
    let bytes: usize = first.entries.iter().map(|(_, v)| v.value.len()).sum();
    assert!(first.entries.len() < count, "the page ended early");
    assert!(
        bytes <= crate::api::MAX_SCAN_PAGE_BYTES + value.len(),
        "{bytes} bytes in one page"
    );
    assert!(first.next_start_after.is_some());

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = reader.scan("fs/v/", after.as_deref(), None, 1000).unwrap();
        seen.extend(page.entries.iter().map(|(key, _)| key.clone()));
        match page.next_start_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<_> = (0..count)
        .map(|index| format!("fs/v/f{index:03}"))
        .collect();
    assert_eq!(seen, expected);
}

/// Snapshots are written and read one entry at a time; their bytes must stay those of the
/// whole-state encoding, which agents of earlier versions send and expect.
#[tokio::test]
async fn streamed_snapshots_keep_the_whole_state_encoding() {
    let directory = TempDir::new().unwrap();
    let (_, mut state_machine, reader) = open_in(&directory);
    state_machine
        .apply([
            membership_entry(1),
            put(2, "a/1", b"x"),
            put(3, "b/\u{e9}", &[0u8; 300]),
            put(4, "c", b""),
        ])
        .await
        .unwrap();
    let built = state_machine.shared.build_snapshot().unwrap();
    let (last_applied, last_membership) = state_machine.applied_state().await.unwrap();
    let whole = SnapshotContents {
        last_applied,
        last_membership,
        catalog: reader.list("", usize::MAX).unwrap(),
    };
    let expected = postcard::to_stdvec(&whole).unwrap();
    assert_eq!(built.snapshot.into_inner(), expected);

    // An earlier agent's snapshot (the whole state encoded at once) installs.
    let other_directory = TempDir::new().unwrap();
    let (_, mut other, other_reader) = open_in(&other_directory);
    other
        .install_snapshot(&built.meta, Box::new(Cursor::new(expected.clone())))
        .await
        .unwrap();
    assert_eq!(
        other_reader.list("", usize::MAX).unwrap(),
        reader.list("", usize::MAX).unwrap()
    );

    // A snapshot that claims more entries than it holds is refused, and the catalog it
    // would have replaced is kept.
    let mut truncated = expected;
    truncated.truncate(truncated.len() - 1);
    let third_directory = TempDir::new().unwrap();
    let (_, mut third, third_reader) = open_in(&third_directory);
    third.apply([put(1, "kept", b"1")]).await.unwrap();
    assert!(
        third
            .install_snapshot(&built.meta, Box::new(Cursor::new(truncated)))
            .await
            .is_err()
    );
    assert!(third_reader.get("kept").unwrap().is_some());
}

/// A group applies its commands one after another, each with its own result and the
/// entry's index as its version: a failed condition or a broken bound fails only its own
/// command, and a group inside a group is refused whole.
#[tokio::test]
async fn a_group_applies_each_command_alone() {
    let directory = TempDir::new().unwrap();
    let (_, mut state_machine, reader) = open_in(&directory);
    state_machine.apply([put(1, "a", b"old")]).await.unwrap();
    let group = Command::Group(vec![
        Command::Put {
            key: "b".into(),
            value: b"new".to_vec(),
        },
        // Tests the version `a` had before the group: it still holds.
        Command::PutIfVersion {
            key: "a".into(),
            value: b"changed".to_vec(),
            expected_version: 1,
        },
        // The same test again: `a` changed in this very entry, so it fails.
        Command::PutIfVersion {
            key: "a".into(),
            value: b"again".to_vec(),
            expected_version: 1,
        },
        Command::Put {
            key: String::new(),
            value: b"no key".to_vec(),
        },
        Command::Delete { key: "b".into() },
    ]);
    let results = state_machine
        .apply([command_entry(2, group)])
        .await
        .unwrap();
    let CommandResult::Group(results) = &results[0] else {
        panic!("{results:?}");
    };
    assert_eq!(results[0], CommandResult::Written { version: 2 });
    assert_eq!(results[1], CommandResult::Written { version: 2 });
    assert_eq!(
        results[2],
        CommandResult::VersionMismatch { current_version: 2 }
    );
    assert!(
        matches!(&results[3], CommandResult::Rejected { reason } if reason.contains("empty")),
        "{:?}",
        results[3]
    );
    assert_eq!(results[4], CommandResult::Deleted { existed: true });
    assert_eq!(
        reader.get("a").unwrap(),
        Some(VersionedValue {
            value: b"changed".to_vec(),
            version: 2
        })
    );
    assert_eq!(reader.get("b").unwrap(), None);

    let nested = Command::Group(vec![Command::Group(vec![Command::Delete {
        key: "a".into(),
    }])]);
    let results = state_machine
        .apply([command_entry(3, nested)])
        .await
        .unwrap();
    assert!(
        matches!(&results[0], CommandResult::Rejected { reason } if reason.contains("another group")),
        "{results:?}"
    );
    assert!(reader.get("a").unwrap().is_some());
}
