//! Hostile and broken input on the mux: every violation closes the connection with a
//! `GoAway` that names the problem, the server never panics, and it keeps serving other
//! connections afterwards. Too many streams are refused one by one (the connection stays).

mod common;

use std::time::Duration;

use bramble_net::mux::frame::{Frame, FrameKind, OpenPayload, Priority};
use bramble_net::{ErrorKind, MuxLimits};
use bytes::Bytes;
use common::{TestServer, expect_go_away, read_frame, standard_server, write_frames};
use tokio::io::AsyncWriteExt;

fn open_frame(id: u32, method: &str, header: &[u8]) -> Frame {
    let payload = postcard::to_allocvec(&OpenPayload {
        method: method.to_string(),
        header: header.to_vec(),
    })
    .unwrap();
    Frame::new(id, FrameKind::Open, Priority::Control, Bytes::from(payload))
}

/// The server still answers a well-formed call after the abuse.
async fn still_serves(server: &TestServer) {
    let client = server.mux_client();
    let sum: u64 = client
        .call(server.address, "math.add", &(1u64, 2u64), Priority::Control)
        .await
        .unwrap();
    assert_eq!(sum, 3);
}

async fn go_away_after(server: &TestServer, bytes: &[u8]) -> String {
    let mut stream = server.raw_mux_stream().await;
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
    expect_go_away(&mut stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_the_connection_with_a_reason() {
    let (server, _) = standard_server(1, MuxLimits::default()).await;

    let reason = go_away_after(&server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(reason.contains("unknown frame kind"), "{reason}");

    let mut unknown_priority = Vec::new();
    unknown_priority.extend_from_slice(&1u32.to_be_bytes());
    unknown_priority.extend_from_slice(&[1, 9]);
    unknown_priority.extend_from_slice(&4u32.to_be_bytes());
    let reason = go_away_after(&server, &unknown_priority).await;
    assert!(reason.contains("unknown priority"), "{reason}");

    let mut malformed_open = Vec::new();
    malformed_open.extend_from_slice(&1u32.to_be_bytes());
    malformed_open.extend_from_slice(&[1, 0]);
    malformed_open.extend_from_slice(&3u32.to_be_bytes());
    malformed_open.extend_from_slice(&[0xff, 0xff, 0xff]);
    let reason = go_away_after(&server, &malformed_open).await;
    assert!(reason.contains("malformed Open"), "{reason}");

    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_before_their_payload_is_read() {
    let (server, _) = standard_server(1, MuxLimits::default()).await;
    let mut header = Vec::new();
    header.extend_from_slice(&1u32.to_be_bytes());
    header.extend_from_slice(&[3, 1]);
    header.extend_from_slice(&(1u32 << 30).to_be_bytes());
    let reason = go_away_after(&server, &header).await;
    assert!(reason.contains("exceeds"), "{reason}");
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_for_streams_that_never_existed_close_the_connection() {
    let (server, _) = standard_server(1, MuxLimits::default()).await;

    let mut stream = server.raw_mux_stream().await;
    write_frames(
        &mut stream,
        &[Frame::new(
            99,
            FrameKind::Data,
            Priority::Bulk,
            Bytes::from_static(b"x"),
        )],
    )
    .await;
    let reason = expect_go_away(&mut stream).await;
    assert!(reason.contains("never opened"), "{reason}");

    let mut stream = server.raw_mux_stream().await;
    write_frames(&mut stream, &[Frame::window(5, 100)]).await;
    let reason = expect_go_away(&mut stream).await;
    assert!(reason.contains("never opened"), "{reason}");

    // Ids must grow: reopening stream 1 after 2 is refused.
    let mut stream = server.raw_mux_stream().await;
    let header = postcard::to_allocvec(&common::BlobRequest { length: 0, seed: 0 }).unwrap();
    write_frames(
        &mut stream,
        &[
            open_frame(2, "blob.upload", &header),
            open_frame(1, "blob.upload", &header),
        ],
    )
    .await;
    let reason = expect_go_away(&mut stream).await;
    assert!(reason.contains("ids must grow"), "{reason}");

    // A server does not accept response heads from a client.
    let mut stream = server.raw_mux_stream().await;
    write_frames(
        &mut stream,
        &[
            open_frame(1, "blob.hold", &header),
            Frame::new(1, FrameKind::Head, Priority::Control, Bytes::new()),
        ],
    )
    .await;
    let reason = expect_go_away(&mut stream).await;
    assert!(reason.contains("Head"), "{reason}");

    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaking_flow_control_closes_the_connection() {
    let (server, _) = standard_server(1, MuxLimits::default()).await;
    let header = postcard::to_allocvec(&common::BlobRequest { length: 0, seed: 0 }).unwrap();

    // More data than the initial window, to a handler that reads nothing.
    let mut stream = server.raw_mux_stream().await;
    let mut frames = vec![open_frame(1, "blob.hold", &header)];
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    for _ in 0..5 {
        frames.push(Frame::new(
            1,
            FrameKind::Data,
            Priority::Bulk,
            chunk.clone(),
        ));
    }
    write_frames(&mut stream, &frames).await;
    let reason = expect_go_away(&mut stream).await;
    assert!(reason.contains("credit"), "{reason}");

    // Granting absurd credit.
    let mut stream = server.raw_mux_stream().await;
    let mut frames = vec![open_frame(1, "blob.hold", &header)];
    for _ in 0..3 {
        frames.push(Frame::window(1, u32::MAX));
    }
    write_frames(&mut stream, &frames).await;
    let reason = expect_go_away(&mut stream).await;
    assert!(reason.contains("credit"), "{reason}");

    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_limit_are_refused_and_the_connection_stays() {
    let limits = MuxLimits {
        max_streams: 8,
        ..MuxLimits::default()
    };
    let (server, blob) = standard_server(1, limits).await;
    let header = postcard::to_allocvec(&common::BlobRequest { length: 0, seed: 0 }).unwrap();
    let mut stream = server.raw_mux_stream().await;
    let frames: Vec<Frame> = (1..=9)
        .map(|id| open_frame(id, "blob.hold", &header))
        .collect();
    write_frames(&mut stream, &frames).await;
    let (frame, payload) = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut stream))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame.kind, FrameKind::Reset);
    assert_eq!(frame.stream_id, 9);
    let error: bramble_net::RpcError = postcard::from_bytes(&payload).unwrap();
    assert_eq!(error.kind, ErrorKind::Unavailable);
    assert!(
        error.message.contains("too many concurrent streams"),
        "{error}"
    );

    // The eight accepted streams still work: finish their bodies and release them.
    let ends: Vec<Frame> = (1..=8)
        .map(|id| Frame::empty(id, FrameKind::End, Priority::Control))
        .collect();
    write_frames(&mut stream, &ends).await;
    blob.release.add_permits(8);
    let mut heads = 0;
    let mut done = 0;
    while done < 8 {
        let (frame, _) = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut stream))
            .await
            .unwrap()
            .unwrap();
        match frame.kind {
            FrameKind::Head => heads += 1,
            FrameKind::End => done += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(heads, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_peers_get_nothing_on_the_mux() {
    let (server, _) = standard_server(1, MuxLimits::default()).await;
    let config = server.ca.anonymous_client(bramble_net::mux::MUX_ALPN);
    let mut stream = common::raw_stream(server.address, config).await;
    let reason = expect_go_away(&mut stream).await;
    assert!(reason.contains("certificate"), "{reason}");
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_goes_silent_mid_frame_is_dropped() {
    let limits = MuxLimits {
        frame_timeout: Duration::from_millis(300),
        ..MuxLimits::default()
    };
    let (server, _) = standard_server(1, limits).await;
    let mut stream = server.raw_mux_stream().await;
    // Half a header, then nothing.
    stream.write_all(&[0, 0, 0]).await.unwrap();
    stream.flush().await.unwrap();
    let reason = expect_go_away(&mut stream).await;
    assert!(reason.contains("did not arrive"), "{reason}");
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_data_beyond_the_connection_credit_closes_the_connection() {
    let limits = MuxLimits {
        connection_bulk_window: 64 * 1024,
        ..MuxLimits::default()
    };
    let (server, _) = standard_server(1, limits).await;
    let header = postcard::to_allocvec(&common::BlobRequest { length: 0, seed: 0 }).unwrap();
    let mut stream = server.raw_mux_stream().await;
    // 20 KiB leaves 44 KiB of the 64 KiB connection credit (less than half is used, so
    // none is granted back yet); a 64 KiB frame then exceeds it, although the stream's own
    // window would allow it.
    write_frames(
        &mut stream,
        &[
            open_frame(1, "blob.hold", &header),
            Frame::new(
                1,
                FrameKind::Data,
                Priority::Bulk,
                Bytes::from(vec![0u8; 20 * 1024]),
            ),
            Frame::new(
                1,
                FrameKind::Data,
                Priority::Bulk,
                Bytes::from(vec![0u8; 64 * 1024]),
            ),
        ],
    )
    .await;
    let reason = expect_go_away(&mut stream).await;
    assert!(reason.contains("connection credit"), "{reason}");
    still_serves(&server).await;
}
