//! A cluster when things fail: `agentwire serve --redis` nodes as separate processes on a
//! real `redis-server` of the test's own, one of them killed with SIGKILL mid-run, and Redis
//! itself restarted empty or paused.

mod common;
#[path = "common/serve_process.rs"]
mod serve_process;

use std::net::SocketAddr;

use serve_process::spawn_serve;
use std::process::Child;
use std::time::{Duration, Instant};

use common::engine::TestRedis;
use common::{token, Client, PATIENCE};
use serde_json::{json, Value};

/// The documented bound from a node's death to its runs' `node_lost` errors, and a margin
/// for a loaded machine.
const NODE_LOST_BOUND: Duration = Duration::from_secs(15);
const MARGIN: Duration = Duration::from_secs(10);

/// One `agentwire serve --redis` process.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    fn start(redis: &TestRedis) -> Node {
        let secret = std::str::from_utf8(common::SECRET).unwrap();
        let url = redis.url();
        let (child, addr) = spawn_serve(&[
            "--jwt-secret",
            secret,
            "--admin-token",
            common::ADMIN,
            "--redis",
            &url,
            "--redis-prefix",
            "failures",
        ]);
        Node { child, addr }
    }

    async fn connect(&self, user: &str) -> Client {
        let url = format!("ws://{}/ws", self.addr);
        let mut client = Client::connect_subprotocol(&url, &token(user, 3600)).await;
        client.send(json!({ "type": "ping" })).await;
        client.expect("pong").await;
        client
    }

    async fn connect_resuming(&self, user: &str, epoch: &str, last_seq: u64) -> Client {
        let url = format!("ws://{}/ws?epoch={epoch}&last_seq={last_seq}", self.addr);
        Client::connect_subprotocol(&url, &token(user, 3600)).await
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The next agent event (control frames skipped), within `within`.
async fn next_event(client: &mut Client, within: Duration) -> Value {
    loop {
        let frame = tokio::time::timeout(within, client.next())
            .await
            .expect("an event arrives in time");
        if frame["run_id"].is_string() {
            return frame;
        }
    }
}

/// A synthetic run of `events` events, `interval_ms` apart, started by `client`.
async fn start_synthetic(client: &mut Client, events: u64, interval_ms: u64) {
    client
        .send(json!({
            "type": "start_agent",
            "user_request": "synthetic",
            "context": { "synthetic": { "events": events, "interval_ms": interval_ms } },
        }))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_clients_resume_elsewhere_and_its_run_ends_with_node_lost() {
    let redis = TestRedis::start();
    let mut doomed = Node::start(&redis);
    let survivor = Node::start(&redis);

    let mut runner = doomed.connect("hal").await;
    let mut watcher = survivor.connect("hal").await;
    let epoch = runner.welcome["epoch"].as_str().unwrap().to_owned();
    assert_eq!(watcher.welcome["epoch"], epoch.as_str());
    // 10,000 events 5 ms apart: still running when its node dies.
    start_synthetic(&mut runner, 10_000, 5).await;

    let mut runner_seqs = Vec::new();
    while runner_seqs.len() < 40 {
        runner_seqs.push(
            next_event(&mut runner, PATIENCE).await["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    let run_id = next_event(&mut watcher, PATIENCE).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    doomed.kill();
    let killed_at = Instant::now();
    let last_seq = *runner_seqs.last().unwrap();
    drop(runner);

    // The runner's client reconnects to the surviving node and resumes there: exactly the
    // events it missed (whatever the dead node published before it died), then the run's end.
    let mut resumed = survivor.connect_resuming("hal", &epoch, last_seq).await;
    let mut expected = last_seq + 1;
    let mut saw_resumed = false;
    let end = loop {
        let frame = tokio::time::timeout(NODE_LOST_BOUND + MARGIN, resumed.next())
            .await
            .expect("the run ends in time");
        match frame["type"].as_str().unwrap() {
            "resumed" => {
                assert_eq!(frame["from_seq"], last_seq + 1);
                saw_resumed = true;
            }
            "agent_error" => break frame,
            "agent_thinking" => {
                assert_eq!(frame["seq"], expected, "nothing lost, nothing twice");
                expected += 1;
            }
            other => panic!("unexpected {other}: {frame}"),
        }
    };
    assert!(saw_resumed, "the resume was answered exactly");
    assert_eq!(end["seq"], expected, "the end follows without a gap");
    assert_eq!(end["run_id"], run_id.as_str());
    assert_eq!(end["data"]["code"], "node_lost");
    assert!(
        killed_at.elapsed() < NODE_LOST_BOUND + MARGIN,
        "node_lost within the documented bound (plus a margin): {:?}",
        killed_at.elapsed()
    );

    // The watcher on the surviving node saw the same end, in order.
    let mut watcher_last = 0;
    loop {
        let event = next_event(&mut watcher, PATIENCE).await;
        let seq = event["seq"].as_u64().unwrap();
        assert!(seq > watcher_last, "in order");
        watcher_last = seq;
        if event["type"] == "agent_error" {
            assert_eq!(event, end, "every socket sees the same end");
            break;
        }
    }

    // The user can start a new run on the surviving node.
    start_synthetic(&mut watcher, 3, 0).await;
    let next = next_event(&mut watcher, PATIENCE).await;
    assert_eq!(next["type"], "agent_started");
    assert_eq!(next["seq"], end["seq"].as_u64().unwrap() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_means_resync_with_a_new_epoch_and_new_runs_work() {
    let mut redis = TestRedis::start();
    let node = Node::start(&redis);
    let mut client = node.connect("ivy").await;
    let epoch = client.welcome["epoch"].as_str().unwrap().to_owned();
    start_synthetic(&mut client, 5, 0).await;
    for _ in 0..5 {
        next_event(&mut client, PATIENCE).await;
    }

    redis.restart();

    // The node reconnects on its own and finds the stream gone: the socket is told to
    // resync with a new epoch, and nothing of the old numbering follows.
    let resync = loop {
        let frame = tokio::time::timeout(PATIENCE + MARGIN, client.next())
            .await
            .expect("the resync arrives");
        if frame["type"] == "resync_required" {
            break frame;
        }
        assert!(
            !frame["run_id"].is_string(),
            "no event before the resync: {frame}"
        );
    };
    assert_ne!(resync["epoch"], epoch.as_str());
    let new_epoch = resync["epoch"].as_str().unwrap().to_owned();
    let position = resync["seq"].as_u64().unwrap();

    // New runs work again without restarting the node.
    start_synthetic(&mut client, 3, 0).await;
    for n in 1..=3 {
        let event = next_event(&mut client, PATIENCE + MARGIN).await;
        assert_eq!(event["epoch"], new_epoch.as_str());
        assert_eq!(event["seq"], position + n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_delays_events_but_loses_and_repeats_none() {
    let redis = TestRedis::start();
    let node = Node::start(&redis);
    let mut client = node.connect("jay").await;
    let start = client.welcome["seq"].as_u64().unwrap();
    // 400 events 10 ms apart: about 4 s, with Redis stopped for 2 s in the middle.
    start_synthetic(&mut client, 400, 10).await;
    for _ in 0..50 {
        next_event(&mut client, PATIENCE).await;
    }
    redis.pause();
    std::thread::sleep(Duration::from_secs(2));
    redis.resume();
    let mut expected = start + 51;
    loop {
        let event = next_event(&mut client, PATIENCE + MARGIN).await;
        assert_eq!(event["seq"], expected, "in order, once each: {event}");
        expected += 1;
        if event["type"] == "agent_completed" {
            break;
        }
    }
    assert_eq!(expected, start + 401, "all 400 events arrived");
}
