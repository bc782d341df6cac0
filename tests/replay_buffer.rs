//! The replay buffer's bounds over real sockets: events older than `replay_max_age` are gone
//! by the next resume, and a push over the global `max_replay_bytes` budget costs only the
//! pushing user's oldest events.
//!
//! The in-process engine's buffer only: `max_replay_bytes` has no counterpart in Redis
//! (there, `replay_max_events` and `replay_max_age` bound a resume; `tests/resume.rs` checks
//! them on both engines), so this suite does not run on the Redis engine.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use agentwire::Config;
use common::{seqs, Client, TestServer};
use serde_json::{json, Value};

/// Emits a run of `thoughts` thinking events of `size` bytes of text each.
fn emit(server: &TestServer, user: &str, thoughts: usize, size: usize) {
    let run = server.user(user).start_run("t", "app");
    for _ in 0..thoughts {
        run.thinking("x".repeat(size));
    }
    run.complete("done");
}

/// Reads `n` events and returns each one's seq and size on the wire (the replay buffer
/// holds exactly these bytes).
async fn read_sized(client: &mut Client, n: usize) -> Vec<(u64, usize)> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut sized = Vec::new();
    while sized.len() < n {
        let message = tokio::time::timeout(common::PATIENCE, client.socket.next())
            .await
            .expect("an event within the patience window");
        match message {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                sized.push((frame["seq"].as_u64().unwrap(), text.len()));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
    sized
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_older_than_the_maximum_age_are_not_replayed() {
    let max_age = Duration::from_secs(2);
    let server = TestServer::start_with(Config {
        replay_max_age: max_age,
        ..Config::default()
    });
    let mut first = server.connect("ada").await;
    let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
    first.send(json!({ "type": "ping" })).await;
    first.expect("pong").await;
    let emitted = std::time::Instant::now();
    emit(&server, "ada", 1, 10); // seq 1..=3
    assert_eq!(seqs(&first.collect_run().await), [1, 2, 3]);

    // Within the age: replayed.
    let mut young = server.connect_resuming("ada", &epoch, 0).await;
    let frames = [young.next().await, young.next().await, young.next().await];
    assert_eq!(seqs(&frames), [1, 2, 3]);
    young.expect("resumed").await;
    assert!(
        emitted.elapsed() < max_age,
        "too slow to test: the first resume came after the maximum age"
    );
    assert!(server.runtime.snapshot().await.unwrap().replay_bytes > 0);

    // Past the age, with no event pushed since: the resume (here, the attach it comes with)
    // drops them first, so even the last one is gone.
    tokio::time::sleep(max_age.saturating_sub(emitted.elapsed()) + Duration::from_millis(100))
        .await;
    let mut old = server.connect_resuming("ada", &epoch, 2).await;
    assert_eq!(old.welcome["seq"], 3);
    assert_eq!(
        old.next().await,
        json!({ "type": "resync_required", "epoch": epoch, "seq": 3 })
    );
    assert_eq!(server.runtime.snapshot().await.unwrap().replay_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_who_crosses_the_byte_budget_drops_its_own_oldest_events() {
    let budget = 16 * 1024;
    let server = TestServer::start_with(Config {
        max_replay_bytes: budget,
        ..Config::default()
    });
    let mut small = server.connect("small").await;
    let mut heavy = server.connect("heavy").await;
    let small_epoch = small.welcome["epoch"].as_str().unwrap().to_owned();
    let heavy_epoch = heavy.welcome["epoch"].as_str().unwrap().to_owned();
    for client in [&mut small, &mut heavy] {
        client.send(json!({ "type": "ping" })).await;
        client.expect("pong").await;
    }

    // small: 4 events, well within the budget.
    emit(&server, "small", 2, 100);
    let small_events = read_sized(&mut small, 4).await;
    let small_bytes: usize = small_events.iter().map(|(_, size)| size).sum();
    // heavy: 32 events of about 1 KiB, twice the budget. Model the rule: after each push,
    // while the total is over the budget, heavy drops its own oldest event.
    emit(&server, "heavy", 30, 1000);
    let heavy_events = read_sized(&mut heavy, 32).await;
    let mut kept: VecDeque<(u64, usize)> = VecDeque::new();
    let mut total = small_bytes;
    for event in heavy_events {
        kept.push_back(event);
        total += event.1;
        while total > budget {
            let (_, size) = kept.pop_front().expect("heavy has events to drop");
            total -= size;
        }
    }
    let oldest_kept = kept.front().unwrap().0;
    assert!(oldest_kept > 1, "heavy dropped some: {kept:?}");
    assert_eq!(server.runtime.snapshot().await.unwrap().replay_bytes, total);

    // small's buffer is untouched: a full replay.
    let mut back = server.connect_resuming("small", &small_epoch, 0).await;
    let replayed: Vec<Value> = [
        back.next().await,
        back.next().await,
        back.next().await,
        back.next().await,
    ]
    .into();
    assert_eq!(seqs(&replayed), [1, 2, 3, 4]);
    back.expect("resumed").await;

    // heavy: everything it kept is replayed, and nothing it dropped.
    let mut back = server
        .connect_resuming("heavy", &heavy_epoch, oldest_kept - 1)
        .await;
    let mut replayed = Vec::new();
    for _ in oldest_kept..=32 {
        replayed.push(back.next().await);
    }
    assert_eq!(seqs(&replayed), (oldest_kept..=32).collect::<Vec<_>>());
    back.expect("resumed").await;
    let mut back = server
        .connect_resuming("heavy", &heavy_epoch, oldest_kept - 2)
        .await;
    assert_eq!(
        back.next().await,
        json!({ "type": "resync_required", "epoch": heavy_epoch, "seq": 32 })
    );
}
