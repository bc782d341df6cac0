//! Isolation under load: 1,000 users connected at once, each running two agents
//! concurrently (over 100,000 events in all), while every user also tries to stop another
//! user's run and to resume into another user's numbering. Every frame each client receives
//! is checked against its owner: zero leaks, nothing missing, and nobody's run disturbed.

mod common;

use std::collections::HashSet;

use common::TestServer;
use futures_util::future::join_all;
use serde_json::{json, Value};

const USERS: usize = 1_000;
const RUNS_PER_USER: usize = 2;
const THOUGHTS: usize = 50;
const EVENTS_PER_USER: usize = RUNS_PER_USER * (THOUGHTS + 2);

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_at_once_receive_only_their_own_frames() {
    raise_fd_limit();
    let server = TestServer::start();
    let mut clients = Vec::with_capacity(USERS);
    for u in 0..USERS {
        clients.push(server.connect(&format!("iso-{u}")).await);
    }
    server.wait_for_sessions(USERS).await;
    let epochs: Vec<String> = clients
        .iter()
        .map(|c| c.welcome["epoch"].as_str().unwrap().to_owned())
        .collect();

    // Phase 1: every user starts its runs and learns its run ids from agent_started.
    for (u, client) in clients.iter_mut().enumerate() {
        for r in 0..RUNS_PER_USER {
            client
                .send(json!({
                    "type": "start_agent",
                    "user_request": format!("stream:{THOUGHTS}"),
                    "thread_id": format!("iso-{u}-{r}"),
                }))
                .await;
        }
    }
    let results = join_all(clients.into_iter().enumerate().map(|(u, mut client)| {
        let others_epoch = epochs[(u + 1) % USERS].clone();
        async move {
            let mut frames: Vec<Value> = Vec::new();
            let mut completed = 0;
            let mut refused = false;
            // Try to resume into the next user's numbering: never granted.
            client
                .send(json!({ "type": "resume", "epoch": others_epoch, "last_seq": 0, "ref": "r" }))
                .await;
            while completed < RUNS_PER_USER || !refused {
                let frame = client.next().await;
                match frame["type"].as_str().unwrap() {
                    "agent_completed" => completed += 1,
                    "resync_required" => refused = true,
                    "agent_error" => panic!("iso-{u}: a run was disturbed: {frame}"),
                    _ => {}
                }
                frames.push(frame);
            }
            (u, client, frames)
        }
    }))
    .await;

    let mut total_events = 0;
    let mut all_runs: Vec<(usize, String)> = Vec::new();
    let mut clients = Vec::new();
    for (u, client, frames) in results {
        let owner_threads: HashSet<String> =
            (0..RUNS_PER_USER).map(|r| format!("iso-{u}-{r}")).collect();
        let events: Vec<&Value> = frames
            .iter()
            .filter(|f| f.get("seq").is_some() && f.get("run_id").is_some())
            .collect();
        for event in &events {
            let thread = event["thread_id"].as_str().unwrap();
            assert!(owner_threads.contains(thread), "iso-{u} received {event}");
            assert_eq!(
                event["epoch"],
                epochs[u].as_str(),
                "iso-{u}: foreign numbering"
            );
        }
        for frame in frames.iter().filter(|f| f.get("run_id").is_none()) {
            // Only the refused resume may appear besides events.
            assert_eq!(frame["type"], "resync_required", "iso-{u}: {frame}");
            assert_eq!(frame["epoch"], epochs[u].as_str());
        }
        assert_eq!(
            events.len(),
            EVENTS_PER_USER,
            "iso-{u}: every event of its own"
        );
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=EVENTS_PER_USER as u64).collect::<Vec<_>>());
        total_events += events.len();
        for event in events.iter().filter(|e| e["type"] == "agent_started") {
            all_runs.push((u, event["run_id"].as_str().unwrap().to_owned()));
        }
        clients.push(client);
    }
    assert!(total_events >= 100_000, "{total_events} events");
    eprintln!("{total_events} events to {USERS} users, zero leaks");

    // Phase 2: every user tries to stop the next user's (finished) run and a long-running
    // run of its neighbour: `not_found`, and the neighbour's run goes on.
    for (u, client) in clients.iter_mut().enumerate() {
        client
            .send(json!({ "type": "start_agent", "user_request": "wait", "thread_id": format!("iso-{u}-w") }))
            .await;
    }
    let mut waiting = Vec::new();
    for client in clients.iter_mut() {
        let started = client.expect("agent_started").await;
        client.expect("agent_thinking").await;
        waiting.push(started["run_id"].as_str().unwrap().to_owned());
    }
    for (u, client) in clients.iter_mut().enumerate() {
        let victim = (u + 1) % USERS;
        for run_id in [&all_runs[victim * RUNS_PER_USER].1, &waiting[victim]] {
            client
                .send(json!({ "type": "stop_agent", "run_id": run_id, "ref": "steal" }))
                .await;
            let error = client.expect("error").await;
            assert_eq!(error["code"], "not_found");
            assert_eq!(error["ref"], "steal");
        }
    }
    // Each user stops its own waiting run: the first thing it sees of it is its own cancel.
    for (u, client) in clients.iter_mut().enumerate() {
        client
            .send(json!({ "type": "stop_agent", "run_id": waiting[u] }))
            .await;
        let error = client.expect("agent_error").await;
        assert_eq!(error["run_id"], waiting[u].as_str());
        assert_eq!(error["data"]["code"], "cancelled");
    }
}
