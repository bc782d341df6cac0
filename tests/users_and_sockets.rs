//! Users and their sockets over real connections: isolation between users, identical
//! sequences on every tab of one user, switch_thread, and the registry's view of who is
//! connected.

mod common;

use std::time::Duration;

use common::engine::is_redis;
use common::{seqs, types, TestServer};
use serde_json::{json, Value};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_at_once_never_see_each_others_frames() {
    let server = TestServer::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    assert_ne!(alice.welcome["epoch"], bob.welcome["epoch"]);

    alice
        .send(json!({ "type": "start_agent", "user_request": "stream:50", "thread_id": "a" }))
        .await;
    bob.send(json!({ "type": "start_agent", "user_request": "stream:50", "thread_id": "b" }))
        .await;
    let (alice_frames, bob_frames) = tokio::join!(alice.collect_run(), bob.collect_run());

    for (frames, thread, epoch) in [
        (&alice_frames, "a", &alice.welcome["epoch"]),
        (&bob_frames, "b", &bob.welcome["epoch"]),
    ] {
        assert_eq!(frames.len(), 52);
        assert_eq!(seqs(frames), (1..=52).collect::<Vec<u64>>());
        assert!(frames
            .iter()
            .all(|f| f["thread_id"] == thread && &f["epoch"] == epoch));
    }
    let alice_runs: Vec<&Value> = alice_frames.iter().map(|f| &f["run_id"]).collect();
    assert!(bob_frames
        .iter()
        .all(|f| !alice_runs.contains(&&f["run_id"])));

    // Bob cannot stop Alice's run: it is not found for him.
    alice
        .send(json!({ "type": "start_agent", "user_request": "wait" }))
        .await;
    let started = alice.expect("agent_started").await;
    alice.expect("agent_thinking").await;
    bob.send(json!({ "type": "stop_agent", "run_id": started["run_id"] }))
        .await;
    assert_eq!(bob.expect("error").await["code"], "not_found");
    alice
        .send(json!({ "type": "stop_agent", "run_id": started["run_id"] }))
        .await;
    assert_eq!(
        alice.expect("agent_error").await["data"]["code"],
        "cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_of_one_user_see_identical_sequences() {
    let server = TestServer::start();
    let mut tab1 = server.connect("carol").await;
    let mut tab2 = server.connect("carol").await;
    assert_eq!(tab1.welcome["epoch"], tab2.welcome["epoch"]);
    assert_ne!(tab1.welcome["session_id"], tab2.welcome["session_id"]);
    server.wait_for_sessions(2).await;

    // Two runs at once, started from different tabs, interleave identically on both.
    tab1.send(json!({ "type": "start_agent", "user_request": "stream:100" }))
        .await;
    tab2.send(json!({ "type": "start_agent", "user_request": "stream:100" }))
        .await;
    let mut record1 = Vec::new();
    let mut record2 = Vec::new();
    for _ in 0..204 {
        record1.push(tab1.next().await);
        record2.push(tab2.next().await);
    }
    assert_eq!(
        record1, record2,
        "both tabs received the same frames in the same order"
    );
    assert_eq!(seqs(&record1), (1..=204).collect::<Vec<u64>>());
    let terminal = types(&record1)
        .iter()
        .filter(|t| **t == "agent_completed")
        .count();
    assert_eq!(terminal, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_from_one_tab_ends_the_run_on_every_tab_that_follows_its_thread() {
    let server = TestServer::start();
    let mut tab1 = server.connect("ivy").await;
    let mut tab2 = server.connect("ivy").await;
    let mut elsewhere = server.connect("ivy").await;
    server.wait_for_sessions(3).await;
    elsewhere
        .send(json!({ "type": "switch_thread", "thread_id": "other" }))
        .await;
    elsewhere.expect("thread_switched").await;
    tab2.send(json!({ "type": "ping" })).await; // ends the resume hold
    tab2.expect("pong").await;

    tab1.send(json!({ "type": "start_agent", "user_request": "wait", "thread_id": "t" }))
        .await;
    let mut run_id = Value::Null;
    for tab in [&mut tab1, &mut tab2] {
        let started = tab.expect("agent_started").await;
        assert_eq!(started["seq"], 1);
        run_id = started["run_id"].clone();
        assert_eq!(tab.expect("agent_thinking").await["seq"], 2);
    }
    tab1.send(json!({ "type": "stop_agent", "run_id": run_id }))
        .await;
    for tab in [&mut tab1, &mut tab2] {
        let error = tab.expect("agent_error").await;
        assert_eq!(
            (&error["seq"], &error["run_id"], &error["data"]["code"]),
            (&json!(3), &run_id, &json!("cancelled"))
        );
    }
    // Nothing of the stopped run follows on either tab (its handler emits once more after
    // the stop): the next event on both is the first of a new run, seq 4.
    tab2.send(json!({ "type": "start_agent", "user_request": "stream:0", "thread_id": "t" }))
        .await;
    for tab in [&mut tab1, &mut tab2] {
        let frames = tab.collect_run().await;
        assert_eq!(seqs(&frames), [4, 5]);
        assert_ne!(frames[0]["run_id"], run_id);
    }
    // The tab narrowed to another thread saw none of it.
    let run = server.user("ivy").start_run("other", "app");
    run.complete("elsewhere");
    let frames = elsewhere.collect_run().await;
    assert_eq!(seqs(&frames), [6, 7]);
    assert!(frames.iter().all(|f| f["thread_id"] == "other"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_thread_narrows_one_socket_only() {
    let server = TestServer::start();
    let mut narrow = server.connect("dave").await;
    let mut wide = server.connect("dave").await;
    server.wait_for_sessions(2).await;

    narrow
        .send(json!({ "type": "switch_thread", "thread_id": "t2", "ref": "s" }))
        .await;
    let ack = narrow.expect("thread_switched").await;
    assert_eq!(ack["thread_id"], "t2");
    assert_eq!(ack["ref"], "s");

    for thread in ["t1", "t2", "t1"] {
        wide.send(
            json!({ "type": "start_agent", "user_request": "stream:1", "thread_id": thread }),
        )
        .await;
        let frames = wide.collect_run().await;
        assert!(frames.iter().all(|f| f["thread_id"] == thread));
    }
    // The narrowed socket got only t2's run: seq 4..=6 of the user's numbering.
    let frames = narrow.collect_run().await;
    assert!(frames.iter().all(|f| f["thread_id"] == "t2"));
    assert_eq!(seqs(&frames), [4, 5, 6]);

    // Back to every thread.
    narrow
        .send(json!({ "type": "switch_thread", "thread_id": null }))
        .await;
    assert_eq!(
        narrow.expect("thread_switched").await["thread_id"],
        Value::Null
    );
    wide.send(json!({ "type": "start_agent", "user_request": "stream:0", "thread_id": "t9" }))
        .await;
    let frames = narrow.collect_run().await;
    assert_eq!(seqs(&frames), [10, 11]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_restarts_the_resume_window_and_each_user_expires_on_its_own_clock() {
    let window = Duration::from_secs(3);
    let server = TestServer::start_with(agentwire::Config {
        resume_window: window,
        ..agentwire::Config::default()
    });
    // gail goes idle first, then (1 s later) hal; 1 s after that gail comes back and leaves
    // again, so her window starts over and now ends 1 s after hal's.
    drop(server.connect("gail").await);
    server.wait_for_sessions(0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(server.connect("hal").await);
    server.wait_for_sessions(0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gail = server.connect("gail").await;
    server.wait_for_sessions(1).await;
    let gail_idle = Instant::now();
    drop(gail);
    server.wait_for_sessions(0).await;

    // Both idle now; gail's window counts from her second departure, after hal's.
    let snapshot = server.runtime.snapshot().await.unwrap();
    let idle_ms = |user: &str| snapshot.users[user].idle_ms.expect("idle");
    assert!(idle_ms("gail") < idle_ms("hal"), "{snapshot:?}");

    // The first of them to go is hal, alone: gail was not retired on her first window
    // (which ended 1 s before hal's).
    let deadline = Instant::now() + common::PATIENCE;
    let users = loop {
        let snapshot = server.runtime.snapshot().await.unwrap();
        if snapshot.users.len() < 2 {
            break snapshot.users.into_keys().collect::<Vec<_>>();
        }
        assert!(Instant::now() < deadline, "{snapshot:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(users, ["gail"], "hal's window ended first");
    server.wait_for_user_gone("gail").await;
    assert!(
        gail_idle.elapsed() >= window,
        "a whole window after she left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_tracks_sockets_and_retires_users() {
    let server = TestServer::start_with(agentwire::Config {
        resume_window: Duration::from_millis(300),
        ..agentwire::Config::default()
    });
    let erin1 = server.connect("erin").await;
    let erin_epoch = erin1.welcome["epoch"].as_str().unwrap().to_owned();
    let erin2 = server.connect("erin").await;
    let frank = server.connect("frank").await;
    let snapshot = server.wait_for_sessions(3).await;
    assert_eq!(snapshot.users.len(), 2);
    assert_eq!(snapshot.users["erin"].sessions.len(), 2);
    assert_eq!(snapshot.users["frank"].sessions.len(), 1);
    assert!(snapshot.users["erin"].idle_ms.is_none());

    drop(erin1);
    let snapshot = server.wait_for_sessions(2).await;
    assert_eq!(snapshot.users["erin"].sessions.len(), 1);

    // With the last socket gone the user's actor stays for the resume window, then goes.
    drop(erin2);
    let snapshot = server.wait_for_sessions(1).await;
    assert!(snapshot.users["erin"].sessions.is_empty());
    assert!(snapshot.users["erin"].idle_ms.is_some());
    server.wait_for_user_gone("erin").await;
    drop(frank);
    server.wait_for_sessions(0).await;
    server.wait_for_user_gone("frank").await;

    // Emitting to a user with no actor is safe.
    let run = server
        .runtime
        .user(agentwire::UserId::new("erin").unwrap())
        .start_run("t", "app");
    run.complete("nobody is listening");
    if is_redis() {
        // Redis keeps a user's stream whether or not a node has an actor for them: nothing
        // is dropped, and a socket resuming from where erin left receives both events (as
        // a replay, or live when they reach Redis after its welcome), once, in order.
        let mut back = server.connect_resuming("erin", &erin_epoch, 0).await;
        assert_eq!(back.welcome["epoch"], erin_epoch.as_str());
        let mut events = Vec::new();
        let mut resumed = 0;
        while events.len() < 2 {
            let frame = back.next().await;
            match frame["type"].as_str() {
                Some("resumed") => resumed += 1,
                _ => events.push(frame),
            }
        }
        assert_eq!(types(&events), ["agent_started", "agent_completed"]);
        assert_eq!(seqs(&events), [1, 2]);
        if resumed == 0 {
            assert_eq!(back.expect("resumed").await["from_seq"], 1);
        }
        let snapshot = server.runtime.snapshot().await.unwrap();
        assert_eq!(snapshot.dropped_for_absent_users, 0);
        return;
    }
    // In process, a stream lives in its user's actor: with none, the events are dropped,
    // and counted.
    let deadline = Instant::now() + common::PATIENCE;
    let dropped = loop {
        let dropped = server
            .runtime
            .snapshot()
            .await
            .unwrap()
            .dropped_for_absent_users;
        if dropped >= 2 || Instant::now() >= deadline {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(dropped, 2, "agent_started and agent_completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_emits_through_the_runtime_to_every_tab() {
    let server = TestServer::start();
    let mut tab1 = server.connect("gina").await;
    let mut tab2 = server.connect("gina").await;
    let mut other = server.connect("hank").await;
    server.wait_for_sessions(3).await;

    let gina = server.runtime.user(agentwire::UserId::new("gina").unwrap());
    let run = gina.start_run("inbox", "mailer");
    run.thinking("sorting mail");
    {
        let call = run.tool("fetch_mail", json!({ "folder": "inbox" }));
        call.fail("mail server down");
    }
    run.complete("You have mail.");

    let frames1 = tab1.collect_run().await;
    let frames2 = tab2.collect_run().await;
    assert_eq!(frames1, frames2);
    assert_eq!(
        types(&frames1),
        [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_completed"
        ]
    );
    assert_eq!(frames1[0]["agent_name"], "mailer");
    assert!(frames1[0]["data"].get("user_request").is_none());
    assert_eq!(frames1[3]["data"]["error"], "mail server down");

    // Hank received nothing: his next frames are his own first run, numbered from 1.
    let run = server.user("hank").start_run("inbox", "mailer");
    run.complete("Nothing for you.");
    let frames = other.collect_run().await;
    assert_eq!(types(&frames), ["agent_started", "agent_completed"]);
    assert_eq!(seqs(&frames), [1, 2]);
    assert_ne!(frames[0]["run_id"], frames1[0]["run_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_streaming_while_its_user_connects_stays_in_order() {
    // The emitter's first events find no actor for the user (in process they are dropped;
    // in Redis they are numbered and kept); once the registry subscribes the actor, events
    // are delivered from the stream's position then. Across that moment no event may
    // overtake another, and the numbering has no hole.
    let server = TestServer::start();
    for round in 0..10 {
        let user = format!("racer-{round}");
        let handle = server.runtime.user(agentwire::UserId::new(&user).unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let emitter = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let run = handle.start_run("t", "racer");
                let mut step = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && step < 2_000_000 {
                    run.thinking(step.to_string());
                    step += 1;
                    if step.is_multiple_of(16) {
                        // A brisk stream, not a flood of the registry's mailbox.
                        std::thread::sleep(std::time::Duration::from_micros(100));
                    }
                }
                run.complete("done");
            })
        };
        let mut client = server.connect(&user).await;
        let mut last_step: Option<u64> = None;
        let mut last_seq = client.welcome["seq"].as_u64().unwrap();
        for _ in 0..300 {
            let mut frame = client.next().await;
            if frame["type"] == "agent_started" {
                // The client connected before the run started.
                last_seq += 1;
                assert_eq!(frame["seq"], last_seq);
                frame = client.next().await;
            }
            assert_eq!(frame["type"], "agent_thinking");
            let seq = frame["seq"].as_u64().unwrap();
            assert_eq!(seq, last_seq + 1, "contiguous seq");
            last_seq = seq;
            let step: u64 = frame["data"]["text"].as_str().unwrap().parse().unwrap();
            if let Some(last) = last_step {
                assert_eq!(step, last + 1, "round {round}: events of one run in order");
            }
            last_step = Some(step);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        emitter.join().unwrap();
    }
}
