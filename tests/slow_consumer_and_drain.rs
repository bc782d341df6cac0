//! Backpressure and shutdown over real sockets: a client that stops reading is cut off at a
//! bounded backlog (and nobody else notices), and a drain closes every socket with 1012
//! after everything queued before it.

mod common;

use std::time::Duration;

use agentwire::{close_code, Config};
use common::{seqs, TestServer};
use serde_json::json;

/// This process's resident memory, from /proc/self/status.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("linux /proc");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_at_a_bounded_backlog() {
    let server = TestServer::start_with(Config {
        max_session_backlog_frames: 256,
        max_session_backlog_bytes: 1024 * 1024,
        max_user_backlog: 1_000,
        replay_max_events: 1_000,
        resume_hold: Duration::ZERO,
        ..Config::default()
    });
    let mut slow = server.connect("slow").await;
    let mut fast = server.connect("fast").await;
    server.wait_for_sessions(2).await;
    let baseline = rss_bytes();

    // 40,000 events of 4 KiB to the slow user: 160 MiB if anything on the way were unbounded.
    let payload = "x".repeat(4096);
    let flood = {
        let slow_user = server.user("slow");
        tokio::spawn(async move {
            let run = slow_user.start_run("flood", "flooder");
            for i in 0..40_000 {
                run.thinking(payload.clone());
                if i % 64 == 0 {
                    run.ready().await;
                }
            }
            run.complete("flooded");
        })
    };
    // Meanwhile another user is served as usual.
    fast.send(json!({ "type": "start_agent", "user_request": "stream:200" }))
        .await;
    let fast_frames = fast.collect_run().await;
    assert_eq!(seqs(&fast_frames), (1..=202).collect::<Vec<_>>());
    flood.await.unwrap();

    let grown = rss_bytes().saturating_sub(baseline);
    eprintln!("RSS grew {} KiB during the flood", grown / 1024);
    assert!(
        grown < 96 * 1024 * 1024,
        "server memory grew {} MiB for a client that stopped reading",
        grown / (1024 * 1024)
    );
    let snapshot = server.runtime.snapshot().await.unwrap();
    assert!(
        snapshot.replay_bytes <= 1_000 * 5 * 1024,
        "replay buffer bounded"
    );

    // The slow client reads what it had: every seq from 1 up to the cut-off, no gap, then
    // the slow-consumer close.
    let mut expected = 1;
    let code = loop {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        match tokio::time::timeout(common::PATIENCE, slow.socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(frame["seq"], expected, "no gap before the cut-off");
                expected += 1;
            }
            Ok(Some(Ok(Message::Close(Some(close))))) => break u16::from(close.code),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, close_code::SLOW_CONSUMER);
    assert!(
        expected > 1 && expected < 40_000,
        "cut off after {} events",
        expected - 1
    );

    // Resuming gets back what the buffer still holds, or an honest resync.
    let epoch = slow.welcome["epoch"].as_str().unwrap().to_owned();
    let mut again = server.connect_resuming("slow", &epoch, expected - 1).await;
    let answer = again.next().await;
    assert!(
        answer["type"] == "resync_required" || answer["seq"] == expected,
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_every_socket_with_1012_after_everything_queued() {
    let server = TestServer::start_with(Config {
        drain_batch_users: 3,
        ..Config::default()
    });
    let mut clients = Vec::new();
    for user in 0..10 {
        for _ in 0..2 {
            let mut client = server.connect(&format!("drain-{user}")).await;
            client.send(json!({ "type": "ping" })).await; // ends the resume hold
            client.expect("pong").await;
            clients.push((user, client));
        }
    }
    server.wait_for_sessions(20).await;
    for user in 0..10 {
        let run = server.user(&format!("drain-{user}")).start_run("t", "app");
        for i in 0..300 {
            run.thinking(format!("queued before shutdown {i}"));
        }
        run.complete("done");
    }
    let report = server
        .runtime
        .shutdown(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((report.closed, report.still_open), (20, 0));

    for (user, mut client) in clients {
        let frames = client.collect_run().await;
        assert_eq!(seqs(&frames), (1..=302).collect::<Vec<_>>(), "user {user}");
        assert_eq!(client.expect_close().await, close_code::SERVICE_RESTART);
    }
    // New sockets are refused while draining.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}?token={}", server.ws_url(), common::token("late", 60));
    match tokio_tungstenite::connect_async(url.into_client_request().unwrap()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
}
