//! Backpressure and shutdown over real sockets: a client that stops reading is cut off at a
//! bounded backlog (and nobody else notices), and a drain closes every socket with 1012
//! after everything queued before it.

mod common;

use std::time::Duration;

use agentwire::supervision::SupervisionKind;
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
        // 256 frames of about 4.3 KiB: the frame limit binds before the default 8 MiB.
        max_session_backlog_frames: 256,
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
    // The slow user's actor has received all 40,002 events (with Redis they come through
    // pub/sub after the emitter's calls returned) while the cut-off socket is still open.
    server.wait_for_seq("slow", 40_002).await;

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

    // The server cut the socket off when it was exactly the limit, 256 frames, behind, and
    // says after which seq.
    let events = server.runtime.supervision_events();
    let cut_offs: Vec<_> = events
        .iter()
        .filter(|e| e.kind == SupervisionKind::SlowConsumer)
        .collect();
    assert_eq!(cut_offs.len(), 1, "{events:?}");
    let reason = &cut_offs[0].reason;
    assert!(
        reason.starts_with("user:slow's socket is 256 frames ("),
        "{reason}"
    );
    let cut_after: u64 = reason
        .split_once("cut off after seq ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a seq in {reason}"));
    // The whole backlog was queued to it, and far less than the flood: the connection's
    // buffers hold a few MiB at most.
    assert!((256..39_002).contains(&cut_after), "{reason}");

    // The slow client reads exactly what it was sent: every seq from 1 to the cut-off, no
    // gap, then the slow-consumer close.
    let (frames, code) = slow.frames_until_close().await;
    let received = common::seqs(&frames);
    assert_eq!(code, close_code::SLOW_CONSUMER);
    assert!(
        received.iter().copied().eq(1..=cut_after),
        "seqs 1..={cut_after} in order, got {} frames",
        received.len()
    );

    // Every event after the cut-off is counted as dropped for the slow consumer: the rest
    // of the 40,000 thinking events and the completion (seq 40,002).
    server.wait_for_sessions(1).await;
    let metrics = server.metrics().await;
    let dropped = |event_type: &str| {
        metrics.get(&format!(
            "agentwire_events_dropped_total{{type=\"{event_type}\",reason=\"slow_consumer\"}}"
        ))
    };
    assert_eq!(dropped("agent_thinking"), (40_001 - cut_after) as f64);
    assert_eq!(dropped("agent_completed"), 1.0);
    assert_eq!(
        metrics.get("agentwire_disconnects_total{code=\"4001\"}"),
        1.0
    );

    // The buffer keeps the last 1,000 of the 40,002 events (seq 39,003 on), so a resume
    // from the cut-off cannot be exact: the answer is `resync_required` at 40,002, before
    // anything else.
    let epoch = slow.welcome["epoch"].as_str().unwrap().to_owned();
    let mut again = server.connect_resuming("slow", &epoch, cut_after).await;
    assert_eq!(again.welcome["seq"], 40_002);
    assert_eq!(
        again.next().await,
        json!({ "type": "resync_required", "epoch": epoch, "seq": 40_002 })
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

/// An upgrade request with a valid token, written by hand; returns the status, the head's
/// header lines (lowercased names) and the body.
async fn upgrade_answer(server: &TestServer) -> (u16, Vec<String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        common::token("late", 60),
        server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(common::PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("a refusal closes the connection")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .map(|line| match line.split_once(':') {
            Some((name, value)) => format!("{}: {}", name.to_ascii_lowercase(), value.trim()),
            None => line.to_owned(),
        })
        .collect();
    (status, headers, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_drain_upgrades_get_503_and_events_are_numbered_but_not_sent() {
    let server = TestServer::start_with(Config {
        // Room for the whole flood below: the stalled socket is never cut off as slow.
        max_session_backlog_frames: 10_000,
        max_session_backlog_bytes: 128 * 1024 * 1024,
        ..Config::default()
    });
    let mut stalled = server.connect("stalled").await;
    let mut calm = server.connect("calm").await;
    for client in [&mut stalled, &mut calm] {
        client.send(json!({ "type": "ping" })).await; // ends the resume hold
        client.expect("pong").await;
    }

    // `stalled` stops reading while 32 MiB are sent to it: far more than the connection's
    // buffers take, so its session holds the rest and cannot write its close either.
    let flood = {
        let user = server.user("stalled");
        tokio::spawn(async move {
            let run = user.start_run("t", "flooder");
            for _ in 0..2_000 {
                run.ready().await;
                run.thinking("x".repeat(16 * 1024));
            }
            run.complete("flooded"); // seq 2,002
        })
    };
    flood.await.unwrap();
    // Every event reached the user's actor (with Redis, through pub/sub) ...
    server.wait_for_seq("stalled", 2_002).await;
    // ... which queued all of them to the session, still holding what it cannot write.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let snapshot = server.runtime.snapshot().await.unwrap();
        let user = &snapshot.users["stalled"];
        let session = user.sessions.values().next().unwrap();
        if user.stats.backlog == 0 && session.backlog > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{snapshot:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let runtime = server.runtime.clone();
    let shutdown = tokio::spawn(async move { runtime.shutdown(Duration::from_secs(3)).await });
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while !server.runtime.snapshot().await.unwrap().draining {
        assert!(tokio::time::Instant::now() < deadline, "the drain began");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // While the drain runs, an upgrade with a valid token is refused with 503.
    let (status, headers, body) = upgrade_answer(&server).await;
    assert_eq!(status, 503);
    assert!(
        headers.contains(&"retry-after: 1".to_owned()),
        "{headers:?}"
    );
    assert_eq!(body, "draining");

    // Events emitted now (seq 2,003 to 2,005) are numbered, but the closing socket does not
    // get them.
    let run = server.user("stalled").start_run("t", "late");
    run.thinking("emitted during the drain");
    run.complete("too late");

    // `calm` is closed with 1012; the stalled socket is still open at the deadline.
    let report = shutdown.await.unwrap().unwrap();
    assert_eq!((report.closed, report.still_open), (1, 1));
    assert_eq!(calm.expect_close().await, close_code::SERVICE_RESTART);
    let metrics = server.metrics().await;
    for event_type in ["agent_started", "agent_thinking", "agent_completed"] {
        let published = if event_type == "agent_thinking" {
            2_001.0
        } else {
            2.0
        };
        assert_eq!(
            metrics.get(&format!(
                "agentwire_events_published_total{{type=\"{event_type}\"}}"
            )),
            published
        );
        assert_eq!(
            metrics.get(&format!(
                "agentwire_events_dropped_total{{type=\"{event_type}\",reason=\"draining\"}}"
            )),
            1.0,
            "{event_type}"
        );
    }

    // Once it reads again, the stalled client gets everything sent before the drain, with
    // no gap, then 1012: nothing of the run emitted during the drain.
    let (frames, code) = stalled.frames_until_close().await;
    let received = common::seqs(&frames);
    assert_eq!(code, close_code::SERVICE_RESTART);
    assert!(
        received.iter().copied().eq(1..=2_002),
        "seqs 1..=2002 in order, got {} frames ending {:?}",
        received.len(),
        received.last()
    );
}
