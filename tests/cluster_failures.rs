//! A cluster when things fail: `agentwire serve --redis` nodes as separate processes on a
//! real `redis-server` of the test's own, one of them killed with SIGKILL mid-run or
//! stopped while Redis drops its pub/sub connection, and Redis itself restarted empty or
//! paused (a stop it cannot look up, a publish queue that overflows).

mod common;
#[path = "common/serve_process.rs"]
mod serve_process;

use std::net::SocketAddr;

use serve_process::spawn_serve;
use std::process::Child;
use std::time::{Duration, Instant};

use common::engine::TestRedis;
use common::metrics::Exposition;
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
        Node::start_with(redis, &[])
    }

    /// A node with `extra` flags.
    fn start_with(redis: &TestRedis, extra: &[&str]) -> Node {
        let secret = std::str::from_utf8(common::SECRET).unwrap();
        let url = redis.url();
        let args = [
            "--jwt-secret",
            secret,
            "--admin-token",
            common::ADMIN,
            "--redis",
            &url,
            "--redis-prefix",
            "failures",
        ];
        let (child, addr) = spawn_serve(&[&args[..], extra].concat());
        Node { child, addr }
    }

    /// Sends the node's process `signal` (SIGSTOP, SIGCONT).
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    /// The node's metrics.
    async fn metrics(&self) -> Exposition {
        let auth = format!("Authorization: Bearer {}\r\n", common::ADMIN);
        let (status, text) = common::http(self.addr, "GET", "/metrics", None, &auth).await;
        assert_eq!(status, 200, "{text}");
        Exposition::parse(&text)
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
        self.signal(libc::SIGCONT);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_redis_is_unreachable_is_answered_unavailable_and_the_run_goes_on() {
    let redis = TestRedis::start();
    let node = Node::start(&redis);
    let mut client = node.connect("kim").await;
    // 2,000 events 10 ms apart: still running when the stops come.
    start_synthetic(&mut client, 2_000, 10).await;
    let started = next_event(&mut client, PATIENCE).await;
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    let mut expected = started["seq"].as_u64().unwrap() + 1;

    // Redis stops answering: the node cannot look the run up, and says so.
    redis.pause();
    client
        .send(json!({ "type": "stop_agent", "run_id": run_id, "ref": "while paused" }))
        .await;
    let refusal = loop {
        let frame = tokio::time::timeout(PATIENCE + MARGIN, client.next())
            .await
            .expect("the stop is answered");
        if frame["type"] == "error" {
            break frame;
        }
        assert_eq!(frame["type"], "agent_thinking", "{frame}");
        assert_eq!(frame["seq"], expected, "{frame}");
        expected += 1;
    };
    assert_eq!(refusal["code"], "unavailable", "{refusal}");
    assert_eq!(refusal["ref"], "while paused");
    redis.resume();

    // The run was not stopped: it goes on, in order, once Redis is back ...
    for _ in 0..20 {
        let event = next_event(&mut client, PATIENCE + MARGIN).await;
        assert_eq!(event["type"], "agent_thinking", "{event}");
        assert_eq!(event["seq"], expected, "{event}");
        expected += 1;
    }
    // ... and the same stop, sent again, ends it.
    client
        .send(json!({ "type": "stop_agent", "run_id": run_id, "ref": "again" }))
        .await;
    let end = loop {
        let event = next_event(&mut client, PATIENCE + MARGIN).await;
        assert_eq!(event["seq"], expected, "in order, once each: {event}");
        expected += 1;
        if event["type"] == "agent_error" {
            break event;
        }
    };
    assert_eq!(end["run_id"], run_id.as_str());
    assert_eq!(end["data"]["code"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_events_overflow_the_publish_queue_ends_with_engine_unavailable() {
    let redis = TestRedis::start();
    let node = Node::start_with(&redis, &["--redis-queue-capacity", "16"]);
    let mut client = node.connect("lou").await;
    // 2,000 events 5 ms apart, emitted on schedule (without waiting in `ready()`).
    start_synthetic(&mut client, 2_000, 5).await;
    let started = next_event(&mut client, PATIENCE).await;
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    let mut expected = started["seq"].as_u64().unwrap() + 1;
    for _ in 0..5 {
        let event = next_event(&mut client, PATIENCE).await;
        assert_eq!(event["seq"], expected);
        expected += 1;
    }

    // With Redis stopped, the node's 16-event queue fills and refuses the next event.
    redis.pause();
    let dropped =
        "agentwire_events_dropped_total{type=\"agent_thinking\",reason=\"engine_unavailable\"}";
    let deadline = Instant::now() + PATIENCE;
    while node.metrics().await.find(dropped).is_none() {
        assert!(Instant::now() < deadline, "the queue overflows");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.resume();

    // What the queue held arrives in order, then the run's end: engine_unavailable, with
    // the next seq, and nothing more of the run.
    let end = loop {
        let event = next_event(&mut client, PATIENCE + MARGIN).await;
        assert_eq!(event["seq"], expected, "in order, once each: {event}");
        expected += 1;
        if event["type"] != "agent_thinking" {
            break event;
        }
    };
    assert_eq!(end["type"], "agent_error", "{end}");
    assert_eq!(end["run_id"], run_id.as_str());
    assert_eq!(end["data"]["code"], "engine_unavailable", "{end}");
    client.send(json!({ "type": "ping", "ref": "after" })).await;
    let pong = client.expect("pong").await;
    assert_eq!(pong["ref"], "after", "nothing of the run after its end");
    assert_eq!(node.metrics().await.get(dropped), 1.0, "one event refused");

    // The user can run again once Redis keeps up.
    start_synthetic(&mut client, 3, 0).await;
    let next = next_event(&mut client, PATIENCE).await;
    assert_eq!(next["type"], "agent_started");
    assert_eq!(next["seq"], expected);
}

/// Redis's id of the pub/sub connection with `subscriptions` channels: the one node's
/// subscriber that has that many (its control channel and its users' channels).
fn subscriber_with(redis: &TestRedis, subscriptions: usize) -> String {
    let clients = redis.bulk("CLIENT LIST TYPE pubsub");
    let wanted = format!(" sub={subscriptions} ");
    let matching: Vec<&str> = clients.lines().filter(|c| c.contains(&wanted)).collect();
    assert_eq!(matching.len(), 1, "{clients}");
    let id = matching[0]
        .split(' ')
        .find_map(|field| field.strip_prefix("id="))
        .unwrap_or_else(|| panic!("an id in {}", matching[0]));
    id.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_node_missed_on_pub_sub_are_repaired_from_history_in_order() {
    let redis = TestRedis::start();
    let runner = Node::start(&redis);
    let watcher = Node::start(&redis);
    let mut on_runner = runner.connect("max").await;
    let mut on_watcher = watcher.connect("max").await;
    // A second user on the watcher, so that its subscriber (control, max, ned) is told
    // apart from the runner's (control, max) in Redis's client list.
    let _ned = watcher.connect("ned").await;
    let start = on_watcher.welcome["seq"].as_u64().unwrap();
    // 600 events 5 ms apart, from the runner's node.
    start_synthetic(&mut on_runner, 600, 5).await;
    for n in 1..=10 {
        let event = next_event(&mut on_watcher, PATIENCE).await;
        assert_eq!(event["seq"], start + n);
    }

    // The watcher's node stops; Redis drops its pub/sub connection meanwhile, so every
    // event published from now on is lost to it on pub/sub.
    watcher.signal(libc::SIGSTOP);
    let id = subscriber_with(&redis, 3);
    assert_eq!(redis.command(&format!("CLIENT KILL ID {id}")), ":1");
    let killed_at = loop {
        let event = next_event(&mut on_runner, PATIENCE).await;
        if event["seq"].as_u64().unwrap() > start + 10 {
            break event["seq"].as_u64().unwrap();
        }
    };
    // At least 50 events published while the watcher could not receive them.
    while next_event(&mut on_runner, PATIENCE).await["seq"]
        .as_u64()
        .unwrap()
        < killed_at + 50
    {}
    watcher.signal(libc::SIGCONT);

    // The watcher's socket gets every event once, in order, to the run's end: what pub/sub
    // lost was read from history when the node resubscribed.
    let mut expected = start + 11;
    loop {
        let event = next_event(&mut on_watcher, PATIENCE + MARGIN).await;
        assert_eq!(event["seq"], expected, "in order, once each: {event}");
        expected += 1;
        if event["type"] == "agent_completed" {
            break;
        }
    }
    assert_eq!(expected, start + 601, "all 600 events arrived");
    let metrics = watcher.metrics().await;
    assert!(
        metrics.get("agentwire_engine_gaps_repaired_total") >= 1.0,
        "{}",
        metrics.text()
    );
    assert_eq!(metrics.get("agentwire_engine_resyncs_total"), 0.0);
}
