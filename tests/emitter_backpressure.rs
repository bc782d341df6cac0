//! Emitter backpressure over a real socket: `AgentRun::ready` holds a producer in a tight
//! loop once `max_user_backlog` events wait in the user's actor's inbox, and lets it go
//! on, losing nothing, once the actor catches up. With Redis, where events reach the actor
//! through Redis, the producer is held a little later and the node bounds the inbox at
//! twice the limit.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentwire::Config;
use common::agent::WORKER_BLOCKED;
use common::{seqs, TestServer};
use serde_json::json;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_holds_a_tight_loop_at_max_user_backlog() {
    let server = TestServer::start_with(Config {
        max_user_backlog: 100,
        ..Config::default()
    });
    let mut client = server.connect("tess").await;
    client.send(json!({ "type": "ping" })).await; // ends the resume hold
    client.expect("pong").await;

    // tess's actor runs on the worker thread of her socket (the default placement), where
    // her requests' handlers run too: a handler that blocks that thread stops the actor
    // from taking its inbox, as a slow actor would.
    client
        .send(json!({ "type": "start_agent", "user_request": "block:3000" }))
        .await;
    let deadline = Instant::now() + common::PATIENCE;
    while !WORKER_BLOCKED.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the handler blocks its worker");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let emitted = Arc::new(AtomicU64::new(0));
    let producer = {
        let user = server.user("tess");
        let emitted = emitted.clone();
        tokio::spawn(async move {
            let run = user.start_run("t", "producer");
            for i in 0..500 {
                run.ready().await;
                run.thinking(i.to_string());
                emitted.fetch_add(1, Ordering::SeqCst);
            }
            run.complete("done");
        })
    };
    // agent_started and 99 thinking events fill the inbox to 100; then `ready` waits.
    let deadline = Instant::now() + common::PATIENCE;
    while emitted.load(Ordering::SeqCst) < 99 {
        assert!(Instant::now() < deadline, "the producer emits");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if common::engine::is_redis() {
        // With Redis an event reaches the actor through Redis a moment after it was
        // emitted, so the producer is held once the inbox shows 100, having emitted more
        // meanwhile; those still arrive, up to the node's limit of twice max_user_backlog
        // ahead of the actor (past it, the node reads them back from history later).
        let backlog = || async {
            server.runtime.snapshot().await.unwrap().users["tess"]
                .stats
                .backlog
        };
        let deadline = Instant::now() + common::PATIENCE;
        while backlog().await < 100 {
            assert!(Instant::now() < deadline, "the inbox fills");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held_at = emitted.load(Ordering::SeqCst);
        assert!(
            (99..500).contains(&held_at),
            "the producer waits: {held_at}"
        );
        let expected = (held_at + 1).min(200);
        let deadline = Instant::now() + common::PATIENCE;
        while backlog().await != expected {
            let now = backlog().await;
            assert!(now <= 200, "never more than twice max_user_backlog: {now}");
            assert!(
                Instant::now() < deadline,
                "{now} events waiting, not {expected}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            emitted.load(Ordering::SeqCst),
            held_at,
            "the producer still waits"
        );
        assert!(
            WORKER_BLOCKED.load(Ordering::SeqCst),
            "too slow to test: the worker was released before the producer was seen waiting"
        );
    } else {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held_at = emitted.load(Ordering::SeqCst);
        let snapshot = server.runtime.snapshot().await.unwrap();
        assert!(
            WORKER_BLOCKED.load(Ordering::SeqCst),
            "too slow to test: the worker was released before the producer was seen waiting"
        );
        assert_eq!(held_at, 99, "the producer waits at the limit");
        assert_eq!(snapshot.users["tess"].stats.backlog, 100);
    }

    // Once the actor takes its inbox again the producer goes on, and every event
    // arrives, in order.
    producer.await.unwrap();
    let frames = client.collect_run().await;
    assert_eq!(seqs(&frames), (1..=502).collect::<Vec<_>>());
}
