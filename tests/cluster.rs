//! Several agentwire nodes on one real Redis (each test starts its own `redis-server` on a
//! free loopback port): one ordered stream per user across nodes, resume on any node, stop
//! from any node, and isolation between users across nodes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use agentwire::Config;
use common::engine::TestRedis;
use common::{seqs, types, Client, TestServer, PATIENCE};
use serde_json::{json, Value};

/// Three nodes on `redis`, each under the same prefix.
fn cluster(redis: &TestRedis, nodes: usize) -> Vec<TestServer> {
    (0..nodes)
        .map(|_| TestServer::start_clustered(Config::default(), &redis.url(), "cluster-test"))
        .collect()
}

/// Reads frames until `count` agent events arrived (control frames are skipped).
async fn events(client: &mut Client, count: usize) -> Vec<Value> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let frame = tokio::time::timeout(PATIENCE, client.next())
            .await
            .expect("the events arrive");
        if frame["seq"].is_u64() && frame["run_id"].is_string() {
            events.push(frame);
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_emitted_on_one_node_reaches_the_users_sockets_on_every_node_in_one_order() {
    let redis = TestRedis::start();
    let nodes = cluster(&redis, 3);
    let mut on_first = nodes[0].connect("alice").await;
    let mut on_second = nodes[1].connect("alice").await;
    let mut bob = nodes[1].connect("bob").await;
    assert_eq!(on_first.welcome["epoch"], on_second.welcome["epoch"]);
    assert_eq!(on_first.welcome["seq"], on_second.welcome["seq"]);
    // Ends the resume hold, so live events are written as they come.
    for client in [&mut on_first, &mut on_second, &mut bob] {
        client.send(json!({ "type": "ping" })).await;
        client.expect("pong").await;
    }

    // An app route on the third node, which has no socket of alice's.
    let run = nodes[2].user("alice").start_run("t-cluster", "cluster");
    for i in 0..200 {
        run.thinking(format!("step {i}"));
    }
    run.complete("done");

    let first = events(&mut on_first, 202).await;
    let second = events(&mut on_second, 202).await;
    assert_eq!(first, second, "both sockets got the same frames");
    let start = on_first.welcome["seq"].as_u64().unwrap();
    assert_eq!(seqs(&first), (start + 1..=start + 202).collect::<Vec<_>>());
    assert_eq!(types(&first)[0], "agent_started");
    assert_eq!(types(&first)[201], "agent_completed");
    assert!(first
        .iter()
        .all(|e| e["epoch"] == on_first.welcome["epoch"]));

    // Bob, on a node that delivered alice's run, saw none of it.
    bob.send(json!({ "type": "ping", "ref": "after" })).await;
    let pong = bob.expect("pong").await;
    assert_eq!(pong["ref"], "after");
    let bobs_run = nodes[0].user("bob").start_run("t-bob", "bob");
    bobs_run.complete("bob's");
    let bobs = events(&mut bob, 2).await;
    assert_eq!(seqs(&bobs), vec![1, 2], "bob's stream is his own: {bobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_with_exactly_what_it_missed() {
    let redis = TestRedis::start();
    let nodes = cluster(&redis, 2);
    let mut client = nodes[0].connect("carol").await;
    client.send(json!({ "type": "ping" })).await;
    client.expect("pong").await;
    let epoch = client.welcome["epoch"].as_str().unwrap().to_owned();

    let run = nodes[0].user("carol").start_run("t", "resumer");
    for i in 0..10 {
        run.thinking(format!("before {i}"));
    }
    let seen = events(&mut client, 11).await;
    let last_seq = seen.last().unwrap()["seq"].as_u64().unwrap();
    client.abort();

    // Emitted while carol has no socket anywhere: kept in Redis.
    for i in 0..20 {
        run.thinking(format!("while away {i}"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut back = nodes[1].connect_resuming("carol", &epoch, last_seq).await;
    assert_eq!(back.welcome["epoch"], epoch.as_str());
    let replayed = events(&mut back, 20).await;
    assert_eq!(
        seqs(&replayed),
        (last_seq + 1..=last_seq + 20).collect::<Vec<_>>()
    );
    assert_eq!(replayed[0]["data"]["text"], "while away 0");
    let resumed = back.expect("resumed").await;
    assert_eq!(resumed["from_seq"], last_seq + 1);
    assert_eq!(resumed["to_seq"], last_seq + 20);

    run.complete("done");
    let live = events(&mut back, 1).await;
    assert_eq!(
        live[0]["seq"],
        last_seq + 21,
        "live events follow the replay"
    );
    assert_eq!(live[0]["type"], "agent_completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_agent_on_any_node_stops_the_run_where_it_runs_and_only_the_users_own() {
    let redis = TestRedis::start();
    let nodes = cluster(&redis, 2);
    let mut runner = nodes[0].connect("dave").await;
    let mut other_tab = nodes[1].connect("dave").await;
    let mut eve = nodes[1].connect("eve").await;
    for client in [&mut runner, &mut other_tab, &mut eve] {
        client.send(json!({ "type": "ping" })).await;
        client.expect("pong").await;
    }
    // The test agent's `wait` run waits for its stop on the first node.
    runner
        .send(json!({ "type": "start_agent", "user_request": "wait" }))
        .await;
    let started = events(&mut other_tab, 2).await;
    assert_eq!(types(&started), vec!["agent_started", "agent_thinking"]);
    let run_id = started[0]["run_id"].as_str().unwrap().to_owned();

    // Another user cannot stop it, on any node.
    eve.send(json!({ "type": "stop_agent", "run_id": run_id, "ref": "not-yours" }))
        .await;
    let refused = eve.expect("error").await;
    assert_eq!(refused["code"], "not_found");
    assert_eq!(refused["ref"], "not-yours");

    // The user can, from the other node.
    other_tab
        .send(json!({ "type": "stop_agent", "run_id": run_id }))
        .await;
    let stopped = events(&mut other_tab, 1).await;
    assert_eq!(stopped[0]["type"], "agent_error");
    assert_eq!(stopped[0]["data"]["code"], "cancelled");
    assert_eq!(stopped[0]["run_id"], run_id.as_str());
    let on_runner = events(&mut runner, 3).await;
    assert_eq!(on_runner[2], stopped[0], "both tabs saw the same stop");

    // The run is over everywhere: a second stop is not_found, and the next run's first seq
    // follows the stop (nothing of the stopped run came after it).
    other_tab
        .send(json!({ "type": "stop_agent", "run_id": run_id }))
        .await;
    assert_eq!(other_tab.expect("error").await["code"], "not_found");
    let next = nodes[1].user("dave").start_run("t", "next");
    next.complete("next");
    let following = events(&mut other_tab, 2).await;
    assert_eq!(following[0]["seq"], stopped[0]["seq"].as_u64().unwrap() + 1);
    assert_ne!(following[0]["run_id"], run_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_on_three_nodes_each_get_their_whole_stream_in_order() {
    let redis = TestRedis::start();
    let nodes = cluster(&redis, 3);
    let users = ["fay", "gus"];
    let mut clients: Vec<(&str, Client)> = Vec::new();
    for user in users {
        for node in &nodes {
            let mut client = node.connect(user).await;
            client.send(json!({ "type": "ping" })).await;
            client.expect("pong").await;
            clients.push((user, client));
        }
    }
    // Every node emits runs for both users at once.
    const RUNS_PER_NODE: usize = 4;
    const THOUGHTS: usize = 500;
    let mut emitters = Vec::new();
    for node in &nodes {
        for user in users {
            let handle = node.user(user);
            emitters.push(std::thread::spawn(move || {
                for r in 0..RUNS_PER_NODE {
                    let run = handle.start_run(format!("t{r}"), "load");
                    for i in 0..THOUGHTS {
                        run.thinking(format!("{r}:{i}"));
                    }
                    run.complete("done");
                }
            }));
        }
    }
    for emitter in emitters {
        emitter.join().unwrap();
    }
    let per_user = nodes.len() * RUNS_PER_NODE * (THOUGHTS + 2);
    let mut streams: HashMap<&str, Vec<Value>> = HashMap::new();
    for (user, client) in &mut clients {
        let got = events(client, per_user).await;
        let start = client.welcome["seq"].as_u64().unwrap();
        assert_eq!(
            seqs(&got),
            (start + 1..=start + per_user as u64).collect::<Vec<_>>(),
            "{user}: contiguous seq"
        );
        let mut open: HashMap<String, usize> = HashMap::new();
        for event in &got {
            let run = event["run_id"].as_str().unwrap().to_owned();
            match event["type"].as_str().unwrap() {
                "agent_started" => assert!(open.insert(run, 0).is_none()),
                "agent_thinking" => *open.get_mut(&run).expect("started first") += 1,
                "agent_completed" => assert_eq!(open.remove(&run), Some(THOUGHTS)),
                other => panic!("{user}: unexpected {other}"),
            }
        }
        assert!(open.is_empty(), "{user}: every run ended");
        match streams.get(user) {
            Some(first) => assert_eq!(first, &got, "{user}: every socket the same frames"),
            None => {
                streams.insert(user, got);
            }
        }
    }
    let runs_of = |user: &str| -> Vec<String> {
        streams[user]
            .iter()
            .filter(|e| e["type"] == "agent_started")
            .map(|e| e["run_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (fay, gus) = (runs_of("fay"), runs_of("gus"));
    assert!(
        fay.iter().all(|run| !gus.contains(run)),
        "no run crossed users"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emitter_that_awaits_ready_waits_for_redis_instead_of_losing_its_run() {
    let redis = TestRedis::start();
    let config = Config {
        max_user_backlog: 50,
        ..Config::default()
    };
    let node = TestServer::start_clustered(config, &redis.url(), "backpressure");
    let mut client = node.connect("kim").await;
    client.send(json!({ "type": "ping" })).await;
    client.expect("pong").await;

    redis.pause();
    let emitted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = {
        let (user, emitted) = (node.user("kim"), emitted.clone());
        tokio::spawn(async move {
            let run = user.start_run("t", "producer");
            emitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            for i in 0..200 {
                run.ready().await;
                run.thinking(i.to_string());
                emitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            run.complete("done");
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        emitted.load(std::sync::atomic::Ordering::SeqCst),
        50,
        "ready() holds the producer at the user's backlog while Redis cannot take events"
    );
    redis.resume();
    tokio::time::timeout(PATIENCE, producer)
        .await
        .expect("the producer finishes once Redis is back")
        .unwrap();
    let got = events(&mut client, 202).await;
    let start = client.welcome["seq"].as_u64().unwrap();
    assert_eq!(seqs(&got), (start + 1..=start + 202).collect::<Vec<_>>());
    assert_eq!(got[201]["type"], "agent_completed", "the run was not cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_nodes_tree_names_the_node_in_json_text_and_dot() {
    let redis = TestRedis::start();
    let nodes = cluster(&redis, 2);
    let _alice = nodes[0].connect("alice").await;
    let mut names = Vec::new();
    for node in &nodes {
        let (status, json) = node.admin_get("/debug/tree").await;
        assert_eq!(status, 200);
        let tree: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(tree["engine"], "redis");
        let id = tree["node"]
            .as_str()
            .expect("the tree names its node")
            .to_owned();
        // The id the cluster knows the node by: it holds a lease under it.
        assert_eq!(
            redis.command(&format!("SISMEMBER cluster-test:nodes {id}")),
            ":1",
            "{id} is a node of the cluster"
        );
        let (_, text) = node.admin_get("/debug/tree?format=text").await;
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("registry@{id}  engine=redis users=")),
            "{text}"
        );
        let (_, dot) = node.admin_get("/debug/tree?format=dot").await;
        assert!(dot.contains(&format!("\"registry@{id}\" [label=")), "{dot}");
        names.push(id);
    }
    assert_ne!(names[0], names[1], "each node names itself");
    // Alice's socket is on the first node only: each tree shows its own node's actors.
    let (_, first) = nodes[0].admin_get("/debug/tree").await;
    let (_, second) = nodes[1].admin_get("/debug/tree").await;
    assert!(first.contains("\"id\":\"alice\""), "{first}");
    assert!(!second.contains("\"id\":\"alice\""), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_actor_crash_on_one_node_loses_nothing_of_the_stream_in_redis() {
    let redis = TestRedis::start();
    let nodes = cluster(&redis, 2);
    let mut tab = nodes[0].connect("hana").await;
    let mut roamer = nodes[0].connect("hana").await;
    let mut watcher = nodes[1].connect("hana").await;
    for client in [&mut roamer, &mut watcher] {
        client.send(json!({ "type": "ping" })).await;
        client.expect("pong").await;
    }
    let epoch = tab.welcome["epoch"].as_str().unwrap().to_owned();
    // A run of the first node's handler: agent_started, 60 thoughts 15 ms apart, completed.
    tab.send(json!({ "type": "start_agent", "user_request": "pace:60:15" }))
        .await;
    let before = events(&mut tab, 10).await;
    let roamed = events(&mut roamer, 10).await;

    // The first node's actor of hana crashes (the operators' fault route).
    let auth = format!("Authorization: Bearer {}\r\n", common::ADMIN);
    let body = r#"{"action":"crash_user","user":"hana"}"#;
    let (status, _) = common::http(nodes[0].addr, "POST", "/debug/fault", Some(body), &auth).await;
    assert_eq!(status, 202);

    // The tab: the rest of what the old actor had queued, then `resync_required` in the
    // same epoch (the stream lives in Redis), then the run carries on from its position
    // in that epoch, to its end.
    let mut last = before.last().unwrap()["seq"].as_u64().unwrap();
    let resync = loop {
        let frame = tab.next().await;
        if frame["type"] == "resync_required" {
            break frame;
        }
        assert_eq!(frame["seq"], last + 1, "{frame}");
        last += 1;
    };
    assert_eq!(
        resync["epoch"],
        epoch.as_str(),
        "the stream survived the crash"
    );
    let position = resync["seq"].as_u64().unwrap();
    assert!(
        position >= last,
        "the resync is not behind what the tab has"
    );
    let after = tab.collect_run().await;
    assert_eq!(
        seqs(&after),
        (position + 1..=62).collect::<Vec<_>>(),
        "later events continue the same stream"
    );
    assert!(after.iter().all(|f| f["epoch"] == epoch.as_str()));
    assert_eq!(types(&after).last(), Some(&"agent_completed"));

    // The other node's actor never noticed: the whole run, in order, once.
    let whole = events(&mut watcher, 62).await;
    assert_eq!(seqs(&whole), (1..=62).collect::<Vec<_>>());

    // A client of the crashed node that moves to the other node and resumes from the last
    // event it had gets exactly what it missed, then the rest, as the other node saw it.
    let had = roamed.last().unwrap()["seq"].as_u64().unwrap();
    roamer.abort();
    let mut moved = nodes[1].connect_resuming("hana", &epoch, had).await;
    let missed = events(&mut moved, (62 - had) as usize).await;
    assert_eq!(missed, whole[had as usize..], "exactly the missed events");
    let resumed = moved.expect("resumed").await;
    assert_eq!(resumed["from_seq"], had + 1);

    // Only the first node restarted anything.
    let kinds = |node: &TestServer| -> Vec<SupervisionKind> {
        let events = node.runtime.supervision_events();
        events.into_iter().map(|e| e.kind).collect()
    };
    use agentwire::supervision::SupervisionKind;
    assert_eq!(
        kinds(&nodes[0]),
        [SupervisionKind::FaultInjected, SupervisionKind::Restart]
    );
    assert_eq!(kinds(&nodes[1]), []);
}
