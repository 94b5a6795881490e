//! The lease protocol on a real one-voter catalog (Raft on redb, in-process): grants,
//! renewals that commit nothing, refusals, expiry by the leader after the period and the
//! margin, release and hand-over, and keys under `leases/` closed to ordinary writes.

mod common;

use std::time::{Duration, Instant};

use bramble_meta::Meta;
use bramble_meta::lease::{LeaseAnswer, LeaseOperation, LeaseRequest, MARGIN};
use bramble_meta::types::Command;

const TTL_MS: u32 = 600;

fn request(holder: &str, operation: LeaseOperation) -> LeaseRequest {
    LeaseRequest {
        name: "test/coordinator".to_string(),
        holder: holder.to_string(),
        operation,
        forwarded: false,
    }
}

/// Retries while the node is still becoming leader and taking over the leases.
async fn lease(meta: &Meta, holder: &str, operation: LeaseOperation) -> LeaseAnswer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match meta.lease(request(holder, operation.clone())).await {
            Ok(answer) => return answer,
            Err(error) if Instant::now() < deadline => {
                assert!(
                    error.message.contains("taking over") || error.message.contains("no leader"),
                    "{error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("lease request failed: {error}"),
        }
    }
}

fn last_applied(meta: &Meta) -> u64 {
    meta.reader().last_applied_index()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_granted_renewed_in_memory_expired_released_and_handed_over() {
    let node = common::SoloNode::start("solo").await;
    let meta = node.meta.clone();

    let LeaseAnswer::Granted { version, epoch } =
        lease(&meta, "n1", LeaseOperation::Acquire { ttl_ms: TTL_MS }).await
    else {
        panic!("a free lease is granted");
    };
    assert_eq!(epoch, 1);
    let record = meta.lease_record("test/coordinator").unwrap();
    assert_eq!(record.0.holder.as_deref(), Some("n1"));
    assert_eq!(record.1, version);

    // Renewals commit nothing: the log does not move while the holder keeps its lease
    // for several periods.
    let applied_before = last_applied(&meta);
    for _ in 0..20 {
        assert_eq!(
            lease(&meta, "n1", LeaseOperation::Renew { version }).await,
            LeaseAnswer::Renewed
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(
        last_applied(&meta),
        applied_before,
        "renewals must not be written to the log"
    );

    // Nobody else can take it or renew it while it is held.
    assert!(matches!(
        lease(&meta, "n2", LeaseOperation::Acquire { ttl_ms: TTL_MS }).await,
        LeaseAnswer::Refused { holder: Some(holder), .. } if holder == "n1"
    ));
    assert!(matches!(
        lease(&meta, "n2", LeaseOperation::Renew { version }).await,
        LeaseAnswer::Refused { .. }
    ));
    assert!(matches!(
        lease(
            &meta,
            "n1",
            LeaseOperation::Renew {
                version: version - 1
            }
        )
        .await,
        LeaseAnswer::Refused { .. }
    ));

    // The holder goes quiet: the leader expires the lease, but not before the period and
    // the margin have passed since the last renewal.
    let last_renewal = Instant::now();
    assert_eq!(
        lease(&meta, "n1", LeaseOperation::Renew { version }).await,
        LeaseAnswer::Renewed
    );
    let expired_at = loop {
        let record = meta.lease_record("test/coordinator").unwrap().0;
        if record.holder.is_none() {
            assert_eq!(record.previous.as_deref(), Some("n1"));
            break Instant::now();
        }
        assert!(
            last_renewal.elapsed() < Duration::from_secs(10),
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        expired_at.duration_since(last_renewal)
            >= Duration::from_millis(u64::from(TTL_MS)) + MARGIN,
        "expired after {:?}",
        expired_at.duration_since(last_renewal)
    );
    assert!(matches!(
        lease(&meta, "n1", LeaseOperation::Renew { version }).await,
        LeaseAnswer::Refused { .. }
    ));

    // Another node takes it, hands it over, and the new holder releases it.
    let LeaseAnswer::Granted {
        version: second,
        epoch,
    } = lease(&meta, "n2", LeaseOperation::Acquire { ttl_ms: TTL_MS }).await
    else {
        panic!("an expired lease is granted");
    };
    assert_eq!(epoch, 2);
    assert_eq!(
        lease(
            &meta,
            "n2",
            LeaseOperation::HandOver {
                version: second,
                to: "n3".to_string()
            }
        )
        .await,
        LeaseAnswer::Done
    );
    let (record, third) = meta.lease_record("test/coordinator").unwrap();
    assert_eq!(record.holder.as_deref(), Some("n3"));
    assert_eq!(record.epoch, 3);
    assert_eq!(
        lease(&meta, "n3", LeaseOperation::Renew { version: third }).await,
        LeaseAnswer::Renewed
    );
    assert_eq!(
        lease(&meta, "n3", LeaseOperation::Release { version: third }).await,
        LeaseAnswer::Done
    );
    let record = meta.lease_record("test/coordinator").unwrap().0;
    assert_eq!(record.holder, None);
    assert_eq!(record.previous.as_deref(), Some("n3"));

    // Lease records are closed to ordinary writes, and bad requests are refused.
    let error = meta
        .write(
            Command::Delete {
                key: "leases/test/coordinator".to_string(),
            },
            false,
        )
        .await
        .unwrap_err();
    assert!(error.message.contains("lease protocol"), "{error}");
    let error = meta
        .lease(LeaseRequest {
            name: "../escape".to_string(),
            ..request("n1", LeaseOperation::Acquire { ttl_ms: TTL_MS })
        })
        .await
        .unwrap_err();
    assert!(error.message.contains("segments"), "{error}");
    let error = meta
        .lease(request("n1", LeaseOperation::Acquire { ttl_ms: 1 }))
        .await
        .unwrap_err();
    assert!(error.message.contains("lease period"), "{error}");

    node.stop().await;
}
