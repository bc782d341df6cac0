//! Numbering, replay and resume over real sockets: a blip loses nothing a client can get
//! back, and a resume that cannot be exact says so with `resync_required`.

mod common;

use std::time::Duration;

use agentwire::Config;
use common::engine::is_redis;
use common::{seqs, TestServer};
use serde_json::json;

/// Emits a run of `thinking` events from the application side.
fn emit(server: &TestServer, user: &str, thoughts: usize) {
    let run = server.user(user).start_run("t-app", "app");
    for i in 0..thoughts {
        run.thinking(format!("app {i}"));
    }
    run.complete("app done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_frame_replays_exactly_the_missed_events_before_any_live_one() {
    let server = TestServer::start();
    let mut first = server.connect("ana").await;
    let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
    first
        .send(json!({ "type": "start_agent", "user_request": "stream:5" }))
        .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(first.next().await);
    }
    assert_eq!(seqs(&got), [1, 2, 3]);
    first.abort(); // seq 4..=7 were sent to a dead socket

    // While she is away the application emits more: seq 8..=10.
    server.wait_for_sessions(0).await;
    emit(&server, "ana", 1);
    server.wait_for_seq("ana", 10).await;

    let mut second = server.connect("ana").await;
    assert_eq!(second.welcome["epoch"], epoch.as_str(), "same numbering");
    assert_eq!(second.welcome["seq"], 10);
    // A live event right after the welcome, before the client's first frame: held back.
    emit(&server, "ana", 0); // seq 11, 12
    second
        .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 3 }))
        .await;
    let mut replayed = Vec::new();
    for _ in 4..=10 {
        replayed.push(second.next().await);
    }
    assert_eq!(seqs(&replayed), (4..=10).collect::<Vec<_>>());
    assert_eq!(
        replayed[3]["type"], "agent_completed",
        "seq 7 ended the run"
    );
    let resumed = second.expect("resumed").await;
    assert_eq!(
        (resumed["from_seq"].as_u64(), resumed["to_seq"].as_u64()),
        (Some(4), Some(10))
    );
    let live = second.collect_run().await;
    assert_eq!(seqs(&live), [11, 12], "held live events follow, once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_at_connect_replays_before_the_live_stream() {
    let server = TestServer::start_with(Config {
        resume_hold: Duration::ZERO,
        ..Config::default()
    });
    let first = server.connect("ben").await;
    let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
    first.abort();
    server.wait_for_sessions(0).await;
    emit(&server, "ben", 3); // seq 1..=5
    server.wait_for_seq("ben", 5).await;

    let mut second = server.connect_resuming("ben", &epoch, 2).await;
    assert_eq!(second.welcome["seq"], 5);
    let frames: Vec<_> = [
        second.next().await,
        second.next().await,
        second.next().await,
    ]
    .into();
    assert_eq!(seqs(&frames), [3, 4, 5]);
    let resumed = second.expect("resumed").await;
    assert_eq!(resumed["from_seq"], 3);
    assert_eq!(resumed["to_seq"], 5);

    // Nothing missed: an empty replay.
    let third = server.connect_resuming("ben", &epoch, 5).await;
    let mut third = third;
    let resumed = third.expect("resumed").await;
    assert_eq!(
        (resumed["from_seq"].as_u64(), resumed["to_seq"].as_u64()),
        (Some(6), Some(5))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_epoch_or_evicted_events_get_resync_required_and_nothing_partial() {
    let server = TestServer::start_with(Config {
        replay_max_events: 5,
        ..Config::default()
    });
    let mut first = server.connect("cy").await;
    let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();

    // Wrong epoch.
    first
        .send(json!({ "type": "resume", "epoch": "0123456789abcdef", "last_seq": 0 }))
        .await;
    let resync = first.expect("resync_required").await;
    assert_eq!(resync["epoch"], epoch.as_str());
    assert_eq!(resync["seq"], 0);

    // Evicted: 12 events, the buffer keeps 5, the client asks from 2.
    emit(&server, "cy", 10); // seq 1..=12
    for _ in 1..=12 {
        first.next().await;
    }
    first.abort();
    server.wait_for_sessions(0).await;
    let mut second = server.connect("cy").await;
    second
        .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 2 }))
        .await;
    let resync = second.expect("resync_required").await;
    assert_eq!(resync["seq"], 12, "the socket's stream continues after 12");
    // Still within the buffer: exact.
    let mut third = server.connect_resuming("cy", &epoch, 9).await;
    let frames = [third.next().await, third.next().await, third.next().await];
    assert_eq!(seqs(&frames), [10, 11, 12]);
    third.expect("resumed").await;
    // A client claiming more than exists is told to resync too.
    let mut fourth = server.connect_resuming("cy", &epoch, 99).await;
    assert_eq!(fourth.expect("resync_required").await["seq"], 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_live_events_reached_the_socket_is_refused_not_reordered() {
    let server = TestServer::start_with(Config {
        resume_hold: Duration::ZERO,
        ..Config::default()
    });
    let mut first = server.connect("dee").await;
    let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
    emit(&server, "dee", 1); // seq 1..=3, delivered live
    for _ in 0..3 {
        first.next().await;
    }
    first
        .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 1 }))
        .await;
    let resync = first.expect("resync_required").await;
    assert_eq!(resync["seq"], 3);
    // Claiming exactly what it has is fine.
    first
        .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 3 }))
        .await;
    assert_eq!(first.expect("resumed").await["to_seq"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_nothing_still_gets_live_events_after_the_hold() {
    let hold = Duration::from_millis(1500);
    let server = TestServer::start_with(Config {
        resume_hold: hold,
        ..Config::default()
    });
    // The hold starts when the server sends the welcome, after this instant.
    let before_connect = std::time::Instant::now();
    let mut quiet = server.connect("eve").await;
    emit(&server, "eve", 2);
    let first = quiet.next().await;
    let waited = before_connect.elapsed();
    assert!(
        waited >= hold,
        "the first live event came {waited:?} after connecting, within the hold"
    );
    let mut frames = vec![first];
    frames.extend(quiet.collect_run().await);
    assert_eq!(seqs(&frames), [1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_on_a_socket_narrowed_to_a_thread_holds_only_that_threads_events() {
    let server = TestServer::start();
    let first = server.connect("ike").await;
    let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
    first.abort();
    server.wait_for_sessions(0).await;
    // While away: seq 1..=3 on t1, 4..=6 on t2, 7..=9 on t1.
    for thread in ["t1", "t2", "t1"] {
        let run = server.user("ike").start_run(thread, "app");
        run.thinking(thread);
        run.complete(thread);
    }
    server.wait_for_seq("ike", 9).await;

    let mut narrow = server.connect("ike").await;
    assert_eq!(narrow.welcome["seq"], 9);
    narrow
        .send(json!({ "type": "switch_thread", "thread_id": "t1" }))
        .await;
    narrow.expect("thread_switched").await;
    // No live event has reached the socket yet, so this resume is still answered with a
    // replay: t1's events in the range, then `resumed` for the whole range.
    narrow
        .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 1 }))
        .await;
    let mut replayed = Vec::new();
    for _ in 0..5 {
        replayed.push(narrow.next().await);
    }
    assert_eq!(seqs(&replayed), [2, 3, 7, 8, 9]);
    assert!(replayed.iter().all(|f| f["thread_id"] == "t1"));
    let resumed = narrow.expect("resumed").await;
    assert_eq!(
        (&resumed["from_seq"], &resumed["to_seq"]),
        (&json!(2), &json!(9))
    );

    // A socket without a filter resuming from the same point gets every event.
    let mut wide = server.connect_resuming("ike", &epoch, 1).await;
    let mut replayed = Vec::new();
    for _ in 0..8 {
        replayed.push(wide.next().await);
    }
    assert_eq!(seqs(&replayed), (2..=9).collect::<Vec<_>>());
    wide.expect("resumed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_resume_window_an_in_process_stream_starts_over_and_one_in_redis_goes_on() {
    let server = TestServer::start_with(Config {
        resume_window: Duration::from_millis(200),
        ..Config::default()
    });
    let first = server.connect("fay").await;
    let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
    emit(&server, "fay", 0); // seq 1, 2
    server.wait_for_seq("fay", 2).await;
    drop(first);
    server.wait_for_user_gone("fay").await;
    let mut second = server.connect("fay").await;
    second
        .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 0 }))
        .await;
    if is_redis() {
        // The stream lives in Redis, not in the user's actor: it outlives the actor (for
        // the engine's `state_ttl`), so the numbering goes on and the resume is exact.
        assert_eq!(second.welcome["epoch"], epoch.as_str(), "the same epoch");
        assert_eq!(second.welcome["seq"], 2);
        assert_eq!(seqs(&[second.next().await, second.next().await]), [1, 2]);
        assert_eq!(second.expect("resumed").await["to_seq"], 2);
    } else {
        // In process, the stream is the actor's: it ended with the window.
        assert_ne!(second.welcome["epoch"], epoch.as_str(), "a new epoch");
        assert_eq!(second.welcome["seq"], 0);
        let resync = second.expect("resync_required").await;
        assert_eq!(resync["epoch"], second.welcome["epoch"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_resume_parameters_are_refused_before_the_upgrade() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::start();
    for query in [
        "epoch=abc",
        "last_seq=3",
        "epoch=abc&last_seq=-1",
        "epoch=a%20b&last_seq=1",
    ] {
        let url = format!(
            "{}?{query}&token={}",
            server.ws_url(),
            common::token("gus", 60)
        );
        match tokio_tungstenite::connect_async(url.into_client_request().unwrap()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "{query}")
            }
            other => panic!("{query}: expected 400, got {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_gets_at_most_one_replay() {
    let server = TestServer::start();
    let first = server.connect("hal").await;
    let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
    first.abort();
    server.wait_for_sessions(0).await;
    emit(&server, "hal", 3); // seq 1..=5
    server.wait_for_seq("hal", 5).await;
    let mut second = server.connect("hal").await;
    second
        .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 0 }))
        .await;
    for seq in 1..=5 {
        assert_eq!(second.next().await["seq"], seq);
    }
    second.expect("resumed").await;
    // Asking again cannot make the server queue the buffer again.
    for _ in 0..3 {
        second
            .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 0 }))
            .await;
        assert_eq!(second.expect("resync_required").await["seq"], 5);
    }
    second
        .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 5 }))
        .await;
    assert_eq!(second.expect("resumed").await["to_seq"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_resume_is_answered_ahead_of_the_live_events_behind_it() {
    // A live socket that has not been sent a live event yet may still resume; events the
    // application emits right behind the `resume` must follow the replay, never precede it.
    let server = TestServer::start_with(Config {
        resume_hold: Duration::ZERO,
        ..Config::default()
    });
    let mut replays = 0;
    for round in 0..30u64 {
        let user = format!("late-{round}");
        let mut first = server.connect(&user).await;
        let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
        emit(&server, &user, 3); // seq 1..=5
        for _ in 0..5 {
            first.next().await;
        }
        let mut second = server.connect(&user).await;
        assert_eq!(second.welcome["seq"], 5);
        second
            .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 1 }))
            .await;
        let handle = server.user(&user);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_micros(round * 20));
            let run = handle.start_run("t-burst", "burst");
            for i in 0..50 {
                run.thinking(format!("burst {i}"));
            }
            run.complete("burst done");
        });
        // Either the resume came first (the replay of 2..=5, `resumed`, then seq 6 on) or a
        // live event did (then live events from 6, and `resync_required` at the last of them).
        let mut before = Vec::new();
        let expected = loop {
            let frame = second.next().await;
            match frame["type"].as_str().unwrap() {
                "resumed" => {
                    assert_eq!(before, (2..=5).collect::<Vec<u64>>(), "round {round}");
                    replays += 1;
                    break 6;
                }
                "resync_required" => {
                    let seq = frame["seq"].as_u64().unwrap();
                    assert_eq!(before, (6..=seq).collect::<Vec<u64>>(), "round {round}");
                    break seq + 1;
                }
                _ => before.push(frame["seq"].as_u64().unwrap()),
            }
        };
        // The rest of the stream continues without a gap.
        let mut next = expected;
        while next <= 57 {
            let frame = second.next().await;
            assert_eq!(frame["seq"], next, "round {round}: {frame}");
            next += 1;
        }
    }
    assert!(replays > 0, "at least one round resumed ahead of the burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_resume_replays_what_the_buffer_still_holds_and_says_from_where() {
    let server = TestServer::start_with(Config {
        replay_max_events: 4,
        ..Config::default()
    });
    let first = server.connect("ivy").await;
    let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
    emit(&server, "ivy", 5); // seq 1..=7; the buffer keeps 4..=7
    server.wait_for_seq("ivy", 7).await;
    let mut exact = server.connect("ivy").await;
    assert_eq!(exact.welcome["seq"], 7);
    exact
        .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 0 }))
        .await;
    assert_eq!(
        exact.expect("resync_required").await["seq"],
        7,
        "without `partial` the answer stays all or nothing"
    );

    let mut partial = server.connect("ivy").await;
    partial
        .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 0, "partial": true }))
        .await;
    let mut replayed = Vec::new();
    for _ in 4..=7 {
        replayed.push(partial.next().await);
    }
    assert_eq!(seqs(&replayed), [4, 5, 6, 7]);
    let resumed = partial.expect("resumed").await;
    assert_eq!(
        (resumed["from_seq"].as_u64(), resumed["to_seq"].as_u64()),
        (Some(4), Some(7)),
        "from_seq says the events before 4 are gone"
    );

    // Where nothing asked for was evicted, `partial` changes nothing.
    let mut whole = server.connect("ivy").await;
    whole
        .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 5, "partial": true }))
        .await;
    assert_eq!(seqs(&[whole.next().await, whole.next().await]), [6, 7]);
    assert_eq!(whole.expect("resumed").await["from_seq"], 6);

    // Another epoch is never partially answered.
    let mut other = server.connect("ivy").await;
    other
        .send(json!({ "type": "resume", "epoch": "0123456789abcdef", "last_seq": 0, "partial": true }))
        .await;
    assert_eq!(
        other.expect("resync_required").await["epoch"],
        epoch.as_str()
    );
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_resume_with_nothing_left_in_the_buffer_still_resyncs() {
    let server = TestServer::start_with(Config {
        replay_max_age: Duration::from_millis(1),
        ..Config::default()
    });
    let first = server.connect("jon").await;
    let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
    emit(&server, "jon", 1); // seq 1..=3
    server.wait_for_seq("jon", 3).await;
    tokio::time::sleep(Duration::from_millis(20)).await; // all three are past the age limit
    let mut second = server.connect("jon").await;
    assert_eq!(second.welcome["seq"], 3);
    second
        .send(json!({ "type": "resume", "epoch": epoch, "last_seq": 0, "partial": true }))
        .await;
    let answer = second.next().await;
    assert_eq!(answer["type"], "resync_required", "{answer}");
    assert_eq!(answer["seq"], 3);
    drop(first);
}
