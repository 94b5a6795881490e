//! The multiplexed streams over real mutual TLS on loopback: many calls on one
//! connection, large bodies checked by hash without holding them, flow control that
//! stalls only the stream whose reader stops, control calls served while bulk streams
//! run flat out, and the RPC still answering on the same port.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_net::{ErrorKind, MuxError, MuxLimits, Priority, RpcClient};
use bytes::Bytes;
use common::{BlobRequest, standard_server};
use tokio::task::JoinSet;

const MIB: u64 = 1024 * 1024;

fn blob_header(length: u64, seed: u64) -> Vec<u8> {
    postcard::to_allocvec(&BlobRequest { length, seed }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_unary_calls_run_at_once_on_one_connection() {
    const PARTIES: usize = 40;
    let (server, _) = standard_server(PARTIES, MuxLimits::default()).await;
    let client = server.mux_client();
    let connection = client.connection(server.address).await.unwrap();

    // The barrier answers only once PARTIES calls are inside it at the same time, so this
    // finishes only if they are all in flight together on the one connection.
    let mut calls = JoinSet::new();
    for _ in 0..PARTIES {
        let connection = connection.clone();
        calls.spawn(async move {
            connection
                .call::<_, ()>(
                    "math.barrier",
                    &(),
                    Priority::Control,
                    1024,
                    Duration::from_secs(20),
                )
                .await
        });
    }
    while let Some(outcome) = calls.join_next().await {
        outcome.unwrap().unwrap();
    }

    // And a thousand ordinary calls, interleaved, each with its own answer.
    let mut calls = JoinSet::new();
    for index in 0..1000u64 {
        let client = client.clone();
        let address = server.address;
        calls.spawn(async move {
            let sum: u64 = client
                .call(address, "math.add", &(index, 1000u64), Priority::Control)
                .await?;
            Ok::<_, MuxError>((index, sum))
        });
    }
    while let Some(outcome) = calls.join_next().await {
        let (index, sum) = outcome.unwrap().unwrap();
        assert_eq!(sum, index + 1000);
    }
    let same = client.connection(server.address).await.unwrap();
    assert_eq!(same.peer(), connection.peer());
    assert!(!connection.is_closed());
    assert_eq!(connection.open_streams(), 0, "every stream was cleaned up");

    // Errors of handlers arrive as remote errors and leave the connection up.
    let error = connection
        .call::<_, u64>(
            "math.nope",
            &(),
            Priority::Control,
            1024,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.remote().map(|error| error.kind),
        Some(ErrorKind::NotFound)
    );
    let error = connection
        .call::<_, u64>(
            "nothing.here",
            &(),
            Priority::Control,
            1024,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.remote().map(|error| error.kind),
        Some(ErrorKind::NotFound)
    );
    assert!(!connection.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_stream_each_way_arrives_intact_without_being_held() {
    const LENGTH: u64 = 256 * MIB;
    let (server, blob) = standard_server(1, MuxLimits::default()).await;
    let client = server.mux_client();
    let pattern = blob.pattern(7);
    let expected = pattern.digest(LENGTH);
    let memory_before = common::peak_rss_kib();

    // Download: hash the chunks as they come.
    let (sender, response) = client
        .open(
            server.address,
            "blob.download",
            &blob_header(LENGTH, 7),
            Priority::Bulk,
        )
        .await
        .unwrap();
    sender.finish().await.unwrap();
    let mut response = response.wait().await.unwrap();
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut received = 0u64;
    while let Some(chunk) = response.body.next_chunk().await.unwrap() {
        received += chunk.len() as u64;
        context.update(&chunk);
    }
    assert_eq!(received, LENGTH);
    assert_eq!(context.finish().as_ref(), expected.as_slice());

    // Upload: the server hashes as it reads and answers with the digest.
    let (mut sender, response) = client
        .open(
            server.address,
            "blob.upload",
            &blob_header(LENGTH, 7),
            Priority::Bulk,
        )
        .await
        .unwrap();
    let upload = tokio::spawn(async move {
        let mut offset = 0;
        while offset < LENGTH {
            let take = (LENGTH - offset).min(MIB) as usize;
            sender.send(pattern.slice(offset, take)).await?;
            offset += take as u64;
        }
        sender.finish().await
    });
    let response = response.wait().await.unwrap();
    upload.await.unwrap().unwrap();
    assert_eq!(response.header, expected);

    // Both sides of both transfers lived in this process; a body held whole would have
    // added at least 256 MiB to the peak.
    let growth_mib = common::peak_rss_kib().saturating_sub(memory_before) / 1024;
    println!("peak resident memory grew by {growth_mib} MiB over two 256 MiB transfers");
    assert!(growth_mib < 96, "peak memory grew by {growth_mib} MiB");
    assert_eq!(blob.outcomes(), vec!["finished".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_streams_both_bodies_at_once() {
    const LENGTH: u64 = 8 * MIB;
    // The smallest connection bulk window on both sides: the two directions and their
    // credit grants must still keep each other going.
    let limits = MuxLimits {
        connection_bulk_window: 64 * 1024,
        ..MuxLimits::default()
    };
    let (server, blob) = standard_server(1, limits.clone()).await;
    let client = server.mux_client().with_limits(limits);
    let pattern = blob.pattern(3);
    let (mut sender, response) = client
        .open(
            server.address,
            "blob.echo",
            &blob_header(0, 3),
            Priority::Bulk,
        )
        .await
        .unwrap();
    // The echo sends each chunk back before reading the next, so this works only if the
    // request and response bodies really flow at the same time (8 MiB is far beyond
    // both windows).
    let sending = {
        let pattern = pattern.clone();
        tokio::spawn(async move {
            let mut offset = 0;
            while offset < LENGTH {
                let take = (LENGTH - offset).min(100_000) as usize;
                sender.send(pattern.slice(offset, take)).await?;
                offset += take as u64;
            }
            sender.finish().await
        })
    };
    let mut response = response.wait().await.unwrap();
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut received = 0;
    while let Some(chunk) = response.body.next_chunk().await.unwrap() {
        received += chunk.len() as u64;
        context.update(&chunk);
    }
    sending.await.unwrap().unwrap();
    assert_eq!(received, LENGTH);
    assert_eq!(context.finish().as_ref(), pattern.digest(LENGTH).as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_stalls_only_its_own_stream() {
    let (server, blob) = standard_server(1, MuxLimits::default()).await;
    let client = server.mux_client();
    let connection = client.connection(server.address).await.unwrap();

    // Upload to a handler that reads nothing: the sender gets one window through, then
    // waits for credit.
    let (mut sender, held_response) = connection
        .open("blob.hold", &blob_header(0, 0), Priority::Bulk)
        .await
        .unwrap();
    let stalled_sender = tokio::spawn(async move {
        let mut sent = 0u64;
        for _ in 0..(4 * MIB / 65536) {
            sender.send(Bytes::from(vec![1u8; 65536])).await?;
            sent += 65536;
        }
        sender.finish().await?;
        Ok::<_, MuxError>(sent)
    });

    // A download whose reader takes one chunk and then stops reading.
    let (request, response) = connection
        .open("blob.download", &blob_header(64 * MIB, 1), Priority::Bulk)
        .await
        .unwrap();
    request.finish().await.unwrap();
    let mut stalled_download = response.wait().await.unwrap();
    assert!(stalled_download.body.next_chunk().await.unwrap().is_some());

    // Meanwhile the connection serves other calls, and other streams flow.
    for index in 0..50u64 {
        let sum: u64 = connection
            .call(
                "math.add",
                &(index, 1u64),
                Priority::Control,
                1024,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(sum, index + 1);
    }
    let (request, response) = connection
        .open("blob.download", &blob_header(4 * MIB, 2), Priority::Bulk)
        .await
        .unwrap();
    request.finish().await.unwrap();
    let mut other = response.wait().await.unwrap();
    let mut received = 0;
    while let Some(chunk) = other.body.next_chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    assert_eq!(received, 4 * MIB);
    assert!(
        !stalled_sender.is_finished(),
        "the upload to a handler that reads nothing must wait for credit"
    );

    // Once the handler reads, the stalled upload completes in full.
    blob.release.add_permits(1);
    assert_eq!(stalled_sender.await.unwrap().unwrap(), 4 * MIB);
    let held = held_response.wait().await.unwrap();
    assert_eq!(held.header, (4 * MIB).to_be_bytes());

    // Dropping the stalled reader tells the server to stop: its send fails with Stopped
    // instead of waiting for credit that will never come.
    drop(stalled_download);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !blob.outcomes().iter().any(|outcome| outcome == "Stopped") {
        assert!(Instant::now() < deadline, "outcomes: {:?}", blob.outcomes());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!connection.is_closed());
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

async fn control_latencies(connection: &bramble_net::MuxConnection, count: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for index in 0..count as u64 {
        let started = Instant::now();
        let sum: u64 = connection
            .call(
                "math.add",
                &(index, 1u64),
                Priority::Control,
                1024,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        latencies.push(started.elapsed());
        assert_eq!(sum, index + 1);
        // Spread the calls out like heartbeats instead of a tight loop.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    latencies.sort();
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_calls_go_through_while_two_bulk_streams_run_flat_out() {
    let (server, _) = standard_server(1, MuxLimits::default()).await;
    let client = server.mux_client();
    let connection = client.connection(server.address).await.unwrap();
    let idle = control_latencies(&connection, 200).await;

    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut bulk = JoinSet::new();
    for seed in 0..2 {
        let connection = connection.clone();
        let received = received.clone();
        bulk.spawn(async move {
            let (request, response) = connection
                .open(
                    "blob.download",
                    &blob_header(u64::MAX, seed),
                    Priority::Bulk,
                )
                .await?;
            request.finish().await?;
            let mut response = response.wait().await?;
            while let Some(chunk) = response.body.next_chunk().await? {
                received.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Ok::<_, MuxError>(())
        });
    }
    // Let the bulk streams reach full speed.
    while received.load(std::sync::atomic::Ordering::Relaxed) < 64 * MIB {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = received.load(std::sync::atomic::Ordering::Relaxed);
    let loaded = control_latencies(&connection, 200).await;
    let during = received.load(std::sync::atomic::Ordering::Relaxed) - before;
    bulk.abort_all();

    let idle_p50 = percentile(&idle, 0.5);
    let idle_p99 = percentile(&idle, 0.99);
    let loaded_p50 = percentile(&loaded, 0.5);
    let loaded_p99 = percentile(&loaded, 0.99);
    println!(
        "control call latency: idle p50 {idle_p50:?} p99 {idle_p99:?}; with 2 bulk streams p50 {loaded_p50:?} p99 {loaded_p99:?}; bulk moved {} MiB meanwhile",
        during / MIB
    );
    // Correctness, not speed (timings on a shared machine are printed, not asserted): the
    // control calls completed while the bulk streams kept moving data on the same
    // connection, so control frames were interleaved with bulk frames rather than queued
    // behind the (endless) transfers.
    assert!(
        during > 0,
        "the bulk streams did not move while control calls ran"
    );
    assert!(!connection.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rpc_still_answers_on_the_same_port() {
    let (server, _) = standard_server(1, MuxLimits::default()).await;
    let rpc = RpcClient::new(server.client_credential.client_config().unwrap());
    let sum: u64 = rpc
        .call(server.address, "math.add", &(2u64, 3u64))
        .await
        .unwrap();
    assert_eq!(sum, 5);
    let client = server.mux_client();
    let sum: u64 = client
        .call(server.address, "math.add", &(4u64, 3u64), Priority::Control)
        .await
        .unwrap();
    assert_eq!(sum, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_mux_is_reported_clearly() {
    let ca = common::TestCa::new();
    let credential = ca.node("plain");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (trigger, shutdown) = bramble_util::ShutdownTrigger::new();
    tokio::spawn(bramble_net::serve(
        listener,
        credential.server_config().unwrap(),
        Arc::new(bramble_net::Router::new()),
        bramble_net::ServerLimits::default(),
        shutdown,
    ));
    let client =
        bramble_net::MuxClient::new(credential.client_config().unwrap(), trigger.subscribe());
    let error = client.connect(address).await.unwrap_err();
    assert!(
        error.to_string().contains("does not offer bramble-mux/1"),
        "{error}"
    );
    trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_with_a_clear_error() {
    let (server, _) = standard_server(1, MuxLimits::default()).await;
    let client = server.mux_client();
    let (request, response) = client
        .open(
            server.address,
            "blob.download",
            &blob_header(u64::MAX, 5),
            Priority::Bulk,
        )
        .await
        .unwrap();
    request.finish().await.unwrap();
    let mut response = response.wait().await.unwrap();
    assert!(response.body.next_chunk().await.unwrap().is_some());
    server.stop();
    let error = loop {
        match response.body.next_chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("an endless stream ended cleanly"),
            Err(error) => break error,
        }
    };
    assert!(
        error.to_string().contains("shutting down"),
        "unexpected error: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_copy_from_readers_and_into_writers() {
    let (server, blob) = standard_server(1, MuxLimits::default()).await;
    let client = server.mux_client();
    let data = blob.pattern(11).slice(0, 3_000_000);
    let (mut sender, response) = client
        .open(
            server.address,
            "blob.echo",
            &blob_header(0, 11),
            Priority::Bulk,
        )
        .await
        .unwrap();
    let source = data.clone();
    let sending = tokio::spawn(async move {
        let sent = sender.send_from(&mut &source[..], 100_000).await?;
        sender.finish().await?;
        Ok::<_, MuxError>(sent)
    });
    let mut response = response.wait().await.unwrap();
    let mut copy = Vec::new();
    let written = response.body.write_into(&mut copy).await.unwrap();
    assert_eq!(sending.await.unwrap().unwrap(), data.len() as u64);
    assert_eq!(written, data.len() as u64);
    assert_eq!(copy, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_the_client_dials_again() {
    let limits = MuxLimits {
        connection_idle_timeout: Duration::from_millis(200),
        ..MuxLimits::default()
    };
    let (server, _) = standard_server(1, limits).await;
    let client = server.mux_client();
    let first = client.connection(server.address).await.unwrap();
    let sum: u64 = client
        .call(server.address, "math.add", &(1u64, 1u64), Priority::Control)
        .await
        .unwrap();
    assert_eq!(sum, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !first.is_closed() {
        assert!(Instant::now() < deadline, "the idle connection stayed open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sum: u64 = client
        .call(server.address, "math.add", &(2u64, 2u64), Priority::Control)
        .await
        .unwrap();
    assert_eq!(sum, 4);
    let second = client.connection(server.address).await.unwrap();
    assert!(!second.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_comes_before_the_request_is_read_still_arrives() {
    let (server, _) = standard_server(1, MuxLimits::default()).await;
    let client = server.mux_client();
    let connection = client.connection(server.address).await.unwrap();
    // A body far larger than the window: the handler answers and stops reading, the
    // sender gets `Stopped`, and the call still returns the answer.
    for size in [0usize, 10, 4 * 1024 * 1024] {
        let reply = connection
            .call_bytes(
                "blob.ignore",
                Bytes::from(vec![7u8; size]),
                Priority::Control,
                1024,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(reply, b"ignored");
    }
    // Many small ones, where the answer often overtakes the end of the request.
    for _ in 0..300 {
        let reply = connection
            .call_bytes(
                "blob.ignore",
                Bytes::new(),
                Priority::Control,
                1024,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(reply, b"ignored");
    }
    assert!(!connection.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_a_request_the_handler_already_stopped_reading_is_not_an_error() {
    // A handler that answers without reading its (empty) request body stops reading; a
    // caller whose `finish` comes after that must still get the answer, as a file read
    // through the mount does (it once turned such reads into EIO).
    let (server, _) = standard_server(1, MuxLimits::default()).await;
    let client = server.mux_client();
    let connection = client.connection(server.address).await.unwrap();
    for _ in 0..50 {
        let (sender, response) = connection
            .open("blob.ignore", &[], Priority::Control)
            .await
            .unwrap();
        // The answer first: by then the handler has returned and dropped its reader.
        let mut answer = response.wait().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        sender
            .finish()
            .await
            .expect("finish after the handler stopped reading");
        let body = answer.body.read_to_end(1024).await.unwrap();
        assert_eq!(body, b"ignored");
    }
    assert!(!connection.is_closed());
}
