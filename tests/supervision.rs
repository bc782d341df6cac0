//! Supervision over real sockets: a user actor that crashes mid-run is restarted and its
//! client carries on (told to resync), other users never notice, the restart limit
//! escalates to 1011, and the log and the metrics show all of it (the tree's own outputs are
//! in `supervision_tree.rs`).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use agentwire::{close_code, supervision::SupervisionKind, Config, Fault, UserId};
use common::agent::WORKER_BLOCKED;
use common::engine::is_redis;
use common::{seqs, TestServer};
use serde_json::{json, Value};

async fn crash(server: &TestServer, user: &str) {
    server
        .runtime
        .inject_fault(Fault::CrashUser(UserId::new(user).unwrap()))
        .await
        .expect("the user has an actor");
}

fn tree_user<'a>(tree: &'a Value, user: &str) -> Option<&'a Value> {
    tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_user_actor_is_restarted_and_its_run_ends_properly() {
    let server = TestServer::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let alice_epoch = alice.welcome["epoch"].clone();
    for client in [&mut alice, &mut bob] {
        client
            .send(json!({ "type": "start_agent", "user_request": "pace:60:15" }))
            .await;
    }
    for _ in 0..10 {
        alice.next().await;
    }
    crash(&server, "alice").await;

    // Alice: the rest of her stream, then `resync_required`, then the same run carries on,
    // numbered from the resync's position, to its end.
    let resync = loop {
        let frame = alice.next().await;
        if frame["type"] == "resync_required" {
            break frame;
        }
        assert_eq!(
            frame["epoch"], alice_epoch,
            "old numbering before the resync"
        );
    };
    if is_redis() {
        // The stream lives in Redis, not in the actor: it survives the crash, and the resync
        // names the same epoch (events the old actor had not delivered can be resumed).
        assert_eq!(resync["epoch"], alice_epoch);
    } else {
        // In process, the stream was the actor's: a new one starts with a new epoch.
        assert_ne!(resync["epoch"], alice_epoch);
    }
    let after = alice.collect_run().await;
    assert_eq!(
        after.last().unwrap()["type"],
        "agent_completed",
        "the run ended properly"
    );
    let first = resync["seq"].as_u64().unwrap() + 1;
    let expected: Vec<u64> = (first..first + after.len() as u64).collect();
    assert_eq!(seqs(&after), expected);
    assert!(after.iter().all(|f| f["epoch"] == resync["epoch"]));

    // Bob never noticed: one epoch, every event.
    let bob_frames = bob.collect_run().await;
    assert_eq!(seqs(&bob_frames), (1..=62).collect::<Vec<_>>());
    assert!(bob_frames
        .iter()
        .all(|f| f["epoch"] == bob.welcome["epoch"]));

    // The tree, the log and the metrics show the restart.
    let (status, body) = server.admin_get("/debug/tree").await;
    assert_eq!(status, 200);
    let tree: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(tree_user(&tree, "alice").unwrap()["stats"]["restarts"], 1);
    assert_eq!(tree_user(&tree, "bob").unwrap()["stats"]["restarts"], 0);
    assert_eq!(tree["totals"]["restarts"], 1);
    // Exactly one crash (the injected one), restarted once, never escalated.
    let events = server.runtime.supervision_events();
    let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.actor.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (SupervisionKind::FaultInjected, "user:alice"),
            (SupervisionKind::Restart, "user:alice")
        ]
    );
    let metrics = server.metrics().await;
    assert_eq!(metrics.get("agentwire_actor_restarts_total"), 1.0);
    assert_eq!(metrics.get("agentwire_escalations_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_past_the_restart_limit_escalates_with_1011() {
    let server = TestServer::start_with(Config {
        max_restarts: 2,
        restart_window: Duration::from_secs(60),
        ..Config::default()
    });
    let mut tabs = vec![server.connect("carol").await, server.connect("carol").await];
    let mut dave = server.connect("dave").await;
    server.wait_for_sessions(3).await;
    for _ in 0..2 {
        crash(&server, "carol").await;
        for tab in &mut tabs {
            tab.expect("resync_required").await;
        }
    }
    crash(&server, "carol").await;
    for tab in &mut tabs {
        assert_eq!(tab.expect_close().await, close_code::INTERNAL_ERROR);
    }
    let snapshot = server.wait_for_sessions(1).await;
    assert!(!snapshot.users.contains_key("carol"));
    let kinds: Vec<_> = server
        .runtime
        .supervision_events()
        .into_iter()
        .filter(|e| e.kind != SupervisionKind::FaultInjected)
        .map(|e| (e.kind, e.actor))
        .collect();
    let carol = || "user:carol".to_owned();
    assert_eq!(
        kinds,
        [
            (SupervisionKind::Restart, carol()),
            (SupervisionKind::Restart, carol()),
            (SupervisionKind::Escalation, carol())
        ]
    );
    let metrics = server.metrics().await;
    assert_eq!(metrics.get("agentwire_actor_restarts_total"), 2.0);
    assert_eq!(metrics.get("agentwire_escalations_total"), 1.0);
    assert_eq!(
        metrics.get("agentwire_disconnects_total{code=\"1011\"}"),
        2.0
    );
    // Dave carries on untouched.
    dave.send(json!({ "type": "start_agent", "user_request": "stream:3" }))
        .await;
    assert_eq!(seqs(&dave.collect_run().await), [1, 2, 3, 4, 5]);
    // Carol can come back: a fresh actor.
    let mut again = server.connect("carol").await;
    again.send(json!({ "type": "ping" })).await;
    again.expect("pong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restart_limit_counts_only_restarts_within_the_sliding_window() {
    let window = Duration::from_secs(3);
    let server = TestServer::start_with(Config {
        max_restarts: 2,
        restart_window: window,
        ..Config::default()
    });
    let mut tab = server.connect("rae").await;
    crash(&server, "rae").await;
    tab.expect("resync_required").await;
    // No earlier than the first restart.
    let first = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // No later than the second restart.
    let second = Instant::now();
    crash(&server, "rae").await;
    tab.expect("resync_required").await;

    // Once the first restart is more than a window old, it no longer counts: a third crash
    // is restarted, where a count that never forgot would escalate...
    tokio::time::sleep_until(first + window + Duration::from_millis(200)).await;
    crash(&server, "rae").await;
    tab.expect("resync_required").await;
    // ...and a fourth right away finds two restarts (the second and third) within the
    // window, where a window that restarted from zero would allow it: escalation.
    crash(&server, "rae").await;
    let frame = tokio::time::timeout(common::PATIENCE, tab.socket.next())
        .await
        .expect("a frame within the patience window");
    assert!(
        second.elapsed() < window,
        "too slow to test: the fourth crash came more than a window after the second"
    );
    match frame {
        Some(Ok(Message::Close(Some(close)))) => {
            assert_eq!(u16::from(close.code), close_code::INTERNAL_ERROR)
        }
        other => panic!("expected the 1011 close, got {other:?}"),
    }
    let kinds: Vec<_> = server
        .runtime
        .supervision_events()
        .into_iter()
        .filter(|e| e.kind != SupervisionKind::FaultInjected)
        .map(|e| e.kind)
        .collect();
    use SupervisionKind::{Escalation, Restart};
    assert_eq!(kinds, [Restart, Restart, Restart, Escalation]);
    let metrics = server.metrics().await;
    assert_eq!(metrics.get("agentwire_actor_restarts_total"), 3.0);
    assert_eq!(metrics.get("agentwire_escalations_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_session_is_cut_off_and_the_log_says_so() {
    let server = TestServer::start_with(Config {
        max_session_backlog_frames: 50,
        resume_hold: Duration::ZERO,
        ..Config::default()
    });
    let mut ivy = server.connect("ivy").await;
    let snapshot = server.wait_for_sessions(1).await;
    let session = *snapshot.users["ivy"].sessions.keys().next().unwrap();
    server
        .runtime
        .inject_fault(Fault::StallSession {
            session: agentwire::SessionId(session),
            // Longer than the test: the cut-off, not the timer, ends this stall.
            duration: Duration::from_secs(60),
        })
        .await
        .unwrap();
    // The fault reaches the session as a message of its own: wait until the tree shows it
    // stalled, so that nothing below is written before the stall.
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let (_, body) = server.admin_get("/debug/tree").await;
        let tree: Value = serde_json::from_str(&body).unwrap();
        let state = &tree_user(&tree, "ivy").unwrap()["children"][0]["stats"]["state"];
        if state == "stalled" {
            break;
        }
        assert_eq!(state, "live", "{tree}");
        assert!(Instant::now() < deadline, "the session stalls: {tree}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ivy's actor runs on the worker thread of her socket (the default placement), where
    // her requests' handlers run too: while a handler blocks that thread, the 202 events
    // below all reach the actor's inbox before it handles any, so the socket's cut-off,
    // its close and its detach all come after every event (else events emitted after the
    // detach would not be counted as dropped for it).
    ivy.send(json!({ "type": "start_agent", "user_request": "block:2000" }))
        .await;
    let deadline = Instant::now() + common::PATIENCE;
    while !WORKER_BLOCKED.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the handler blocks its worker");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let run = server.user("ivy").start_run("t", "app");
    for i in 0..200 {
        run.thinking(format!("{i}"));
    }
    run.complete("done");
    // With Redis the events reach the inbox through pub/sub: wait until all are there.
    loop {
        let snapshot = server.runtime.snapshot().await.unwrap();
        if snapshot.users["ivy"].stats.backlog >= 202 {
            break;
        }
        assert!(Instant::now() < deadline, "the events reach ivy's actor");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        WORKER_BLOCKED.load(Ordering::SeqCst),
        "too slow to test: the worker was released before every event was queued"
    );
    // Nothing was written during the stall, so the 51st event (seq 51) found the backlog
    // at the limit of 50: the socket gets seq 1 to 50, in order, then 4001.
    let (frames, code) = ivy.frames_until_close().await;
    let received = seqs(&frames);
    assert_eq!(code, close_code::SLOW_CONSUMER);
    assert_eq!(received, (1..=50).collect::<Vec<u64>>());
    let events = server.runtime.supervision_events();
    let cut_off = events
        .iter()
        .find(|e| e.kind == SupervisionKind::SlowConsumer)
        .expect("a slow_consumer event");
    assert!(
        cut_off
            .reason
            .starts_with("user:ivy's socket is 50 frames (")
            && cut_off.reason.contains("cut off after seq 50 "),
        "{}",
        cut_off.reason
    );
    // Of the 202 events (agent_started, 200 thinking, agent_completed) the last 152 were
    // dropped for the slow consumer, counted as ivy's actor handles them (the socket may be
    // gone from the registry's count before).
    server.wait_for_sessions(0).await;
    server.wait_for_seq("ivy", 202).await;
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.series("agentwire_events_dropped_total"),
        [
            (
                "agentwire_events_dropped_total{type=\"agent_completed\",reason=\"slow_consumer\"}",
                1.0
            ),
            (
                "agentwire_events_dropped_total{type=\"agent_thinking\",reason=\"slow_consumer\"}",
                151.0
            )
        ]
        .into_iter()
        .collect()
    );
    let (_, events) = server.admin_get("/debug/events").await;
    let events: Value = serde_json::from_str(&events).unwrap();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"fault_injected") && kinds.contains(&"slow_consumer"),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sockets_thread_filter_survives_a_restart() {
    let server = TestServer::start();
    let mut lee = server.connect("lee").await;
    lee.send(json!({ "type": "switch_thread", "thread_id": "t1" }))
        .await;
    lee.expect("thread_switched").await;
    crash(&server, "lee").await;
    lee.expect("resync_required").await;
    assert_eq!(lee.expect("thread_switched").await["thread_id"], "t1");
    for thread in ["t2", "t1"] {
        let run = server.user("lee").start_run(thread, "app");
        run.complete(thread);
    }
    let frames = lee.collect_run().await;
    assert!(frames.iter().all(|f| f["thread_id"] == "t1"), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pool_placement_user_actors_deliver_in_order_and_restart_too() {
    let server = TestServer::start_with(Config {
        user_placement: agentwire::UserPlacement::Pool,
        user_arbiters: 2,
        ..Config::default()
    });
    let mut tabs = vec![server.connect("pia").await, server.connect("pia").await];
    let mut quinn = server.connect("quinn").await;
    tabs[0]
        .send(json!({ "type": "start_agent", "user_request": "golden" }))
        .await;
    for tab in &mut tabs {
        assert_eq!(seqs(&tab.collect_run().await), [1, 2, 3, 4, 5]);
    }
    crash(&server, "pia").await;
    let mut resyncs = Vec::new();
    for tab in &mut tabs {
        resyncs.push(tab.expect("resync_required").await);
    }
    assert_eq!(
        resyncs[0], resyncs[1],
        "both tabs continue from one position"
    );
    tabs[1]
        .send(json!({ "type": "start_agent", "user_request": "golden" }))
        .await;
    // The next run is numbered from the resync's position, in its epoch (a new stream in
    // process, the same one in Redis).
    let from = resyncs[0]["seq"].as_u64().unwrap();
    for tab in &mut tabs {
        let frames = tab.collect_run().await;
        assert_eq!(seqs(&frames), (from + 1..=from + 5).collect::<Vec<_>>());
        assert!(frames.iter().all(|f| f["epoch"] == resyncs[0]["epoch"]));
    }
    quinn
        .send(json!({ "type": "start_agent", "user_request": "golden" }))
        .await;
    assert_eq!(seqs(&quinn.collect_run().await), [1, 2, 3, 4, 5]);
}
