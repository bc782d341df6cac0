//! The sweeper: every node, every `sweep_interval`, looks for nodes whose lease expired and
//! ends each of their live runs with `agent_error` code `node_lost`, so every run ends on
//! the wire even when its node dies.
//!
//! A dead node's runs are the members of its runs set. For each, the sweeper reads the run
//! from the user's live-runs hash (its thread and encoded run fields, from which it encodes
//! the error) and publishes the error through the publish script as an `EndIfLost` event:
//! the script publishes it only while the run is live and owned by the dead node, and marks
//! the run lost. Several nodes sweeping the same dead node at once therefore end each run
//! once, and a run that ended normally just before its node died is left alone. When the
//! dead node's set is empty, it leaves the nodes set.
//!
//! A node sweeps only while its own lease refreshes have been healthy for a whole lease TTL
//! ([`Health::may_sweep`]), so a Redis stall that let every lease lapse does not end the
//! runs of nodes that are alive.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::error::EngineError;
use super::hooks::Part;
use super::lease::Health;
use super::outgoing::{OutgoingEvent, Step};
use super::record::{parse_live_run, parse_node_run_member};
use super::script::Batch;
use super::Node;
use crate::event::{AgentError, AgentEvent, RunErrorCode};

/// Members read per SSCAN of a dead node's runs set.
const SCAN_COUNT: usize = 256;

/// The message of a `node_lost` error.
pub(crate) const NODE_LOST_MESSAGE: &str = "the server running this run stopped";

/// Sweeps every `interval` forever.
pub(crate) async fn run(
    node: Arc<Node>,
    interval: Duration,
    lease_ttl: Duration,
    health: Arc<Health>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !health.may_sweep(lease_ttl) {
            continue;
        }
        if let Err(error) = sweep(&node).await {
            log::debug!("redis: sweep failed: {error}");
            node.monitor.error(Part::Sweep, &error);
        }
    }
}

/// One pass: ends the runs of every node whose lease expired. Returns how many runs this
/// pass ended.
pub(crate) async fn sweep(node: &Node) -> Result<usize, EngineError> {
    let nodes: Vec<String> = node
        .commands
        .query(redis::cmd("SMEMBERS").arg(node.keys.nodes()))
        .await?;
    let mut ended = 0;
    for other in nodes.iter().filter(|other| **other != node.id) {
        let alive: bool = node
            .commands
            .query(redis::cmd("EXISTS").arg(node.keys.lease(other)))
            .await?;
        if !alive {
            ended += sweep_node(node, other).await?;
        }
    }
    Ok(ended)
}

/// Ends every live run of the dead node `dead`. Returns how many runs this call ended.
pub(crate) async fn sweep_node(node: &Node, dead: &str) -> Result<usize, EngineError> {
    if super::keys::validate_node_id(dead).is_err() {
        // Not a node this engine registers; leave it be.
        return Ok(0);
    }
    let runs_key = node.keys.node_runs(dead);
    let mut ended = 0;
    let mut cursor: u64 = 0;
    loop {
        let (next, members): (u64, Vec<Vec<u8>>) = node
            .commands
            .query(
                redis::cmd("SSCAN")
                    .arg(&runs_key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_COUNT),
            )
            .await?;
        for member in members {
            if end_run(node, dead, &member).await? {
                ended += 1;
            }
            node.commands
                .query::<()>(redis::cmd("SREM").arg(&runs_key).arg(&member))
                .await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // Forget the node once nothing of it is left (and it did not come back meanwhile).
    let (left, alive): (u64, bool) = node
        .commands
        .pipeline(
            redis::pipe()
                .cmd("SCARD")
                .arg(&runs_key)
                .cmd("EXISTS")
                .arg(node.keys.lease(dead)),
        )
        .await?;
    if left == 0 && !alive {
        node.commands
            .query::<()>(redis::cmd("SREM").arg(node.keys.nodes()).arg(dead))
            .await?;
    }
    if ended > 0 {
        log::warn!("redis: node {dead} is gone; ended {ended} of its runs with node_lost");
        node.monitor.node_swept(dead, ended);
    }
    Ok(ended)
}

/// Ends one run of the dead node, if it is still live. Returns whether this call ended it.
async fn end_run(node: &Node, dead: &str, member: &[u8]) -> Result<bool, EngineError> {
    let Ok((user, run_id)) = parse_node_run_member(member) else {
        log::error!("redis: node {dead}'s runs set holds a malformed member");
        return Ok(false);
    };
    let keys = node.keys.user(&user);
    let live: Option<Vec<u8>> = node
        .commands
        .query(redis::cmd("HGET").arg(&keys.runs).arg(&run_id))
        .await?;
    let Some(live) = live else {
        return Ok(false);
    };
    let Ok(live) = parse_live_run(&live) else {
        log::error!("redis: {user:?}'s live run {run_id} is malformed");
        return Ok(false);
    };
    if live.node != dead {
        return Ok(false);
    }
    let error = AgentEvent::Error(AgentError {
        code: RunErrorCode::NodeLost,
        message: NODE_LOST_MESSAGE.into(),
    });
    let event = OutgoingEvent::from_run_fields(
        user,
        Step::EndIfLost,
        &run_id,
        &live.thread_id,
        &live.run_fields,
        SystemTime::now(),
        &error,
    );
    let batch = Batch {
        keys: &keys,
        node: &node.id,
        sender: &node.sweeper_id,
        number: node.next_batch_number(),
        lost_node: Some(dead),
        events: std::slice::from_ref(&event),
        node_runs: None,
    };
    let started = std::time::Instant::now();
    let outcome = node.script.run(&node.commands, &batch).await?;
    let events = std::slice::from_ref(&event);
    node.monitor
        .published(&event.user, events, &outcome, started.elapsed());
    Ok(outcome.seqs.first().copied().flatten().is_some())
}

#[cfg(test)]
mod tests {
    use super::super::record::NumberedEvent;
    use super::super::test_server::TestRedis;
    use super::super::testing::*;
    use super::super::RedisEngine;
    use super::*;
    use crate::event::RunMeta;
    use crate::ids::UserId;

    fn publish(engine: &RedisEngine, user: &UserId, meta: &RunMeta, event: AgentEvent) {
        assert!(engine
            .publisher()
            .enqueue(outgoing(user, meta, &event))
            .is_ok());
    }

    /// Every event of `user` stored so far.
    async fn stored(engine: &RedisEngine, user: &UserId) -> Vec<NumberedEvent> {
        let Some(position) = engine.position(user).await.unwrap() else {
            return Vec::new();
        };
        engine
            .history(user, &position.epoch, 0, position.seq)
            .await
            .unwrap()
            .expect("the whole history")
    }

    /// The runs `events` ended with `node_lost`, checking each error's envelope.
    fn lost_runs(events: &[NumberedEvent]) -> Vec<String> {
        events
            .iter()
            .filter(|e| e.wire_type == "agent_error")
            .map(|e| {
                let frame: serde_json::Value = serde_json::from_str(&e.frame).unwrap();
                assert_eq!(frame["data"]["code"], "node_lost");
                assert_eq!(frame["data"]["message"], NODE_LOST_MESSAGE);
                assert_eq!(frame["run_id"], *e.run_id);
                assert_eq!(frame["thread_id"], *e.thread_id);
                assert_eq!(frame["thread_id"], run_meta(&e.run_id).thread_id);
                assert_eq!(frame["agent_name"], "tester");
                e.run_id.to_string()
            })
            .collect()
    }

    async fn is_member(engine: &RedisEngine, node: &str) -> bool {
        let keys = &engine.node.keys;
        engine
            .node
            .commands
            .query(redis::cmd("SISMEMBER").arg(keys.nodes()).arg(node))
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_nodes_live_runs_end_once_with_node_lost() {
        let redis = TestRedis::start();
        let (alice, bob) = (user("alice"), user("bob"));
        let watchers: Vec<(RedisEngine, _)> = ["b", "c"]
            .iter()
            .map(|id| {
                let recorder = Recorder::new();
                (engine(config(&redis, id), recorder.clone()), recorder)
            })
            .collect();
        for (engine, _) in &watchers {
            subscribe(engine, &alice).await;
        }
        let doomed = engine(config(&redis, "a"), Recorder::new());
        let (run_1, run_2, run_3) = (run_meta("run_1"), run_meta("run_2"), run_meta("run_3"));
        publish(&doomed, &alice, &run_1, started());
        publish(&doomed, &alice, &run_1, thinking("working"));
        publish(&doomed, &alice, &run_2, started());
        publish(&doomed, &bob, &run_3, started());
        publish(&doomed, &bob, &run_3, completed());
        flushed(&doomed).await;
        let (checker, _) = &watchers[0];
        let deadline = std::time::Instant::now() + PATIENCE;
        while !is_member(checker, "a").await {
            assert!(
                std::time::Instant::now() < deadline,
                "the node took no lease"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(doomed); // a crash: the lease is left to expire

        for (_, recorder) in &watchers {
            eventually("both watchers to see both runs end", || {
                lost_runs(&recorder.events(&alice)).len() >= 2
            })
            .await;
        }
        let mut lost = lost_runs(&stored(checker, &alice).await);
        lost.sort();
        assert_eq!(lost, ["run_1", "run_2"], "each run ended once");
        assert!(
            lost_runs(&stored(checker, &bob).await).is_empty(),
            "run_3 had ended"
        );
        for (_, recorder) in &watchers {
            let mut seen = lost_runs(&recorder.events(&alice));
            seen.sort();
            assert_eq!(seen, ["run_1", "run_2"]);
        }
        // Once forgotten, the dead node is swept no more.
        while is_member(checker, "a").await {
            assert!(
                std::time::Instant::now() < deadline,
                "the dead node was never forgotten"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (engine, _) in &watchers {
            assert_eq!(sweep(&engine.node).await.unwrap(), 0);
        }
        assert_eq!(lost_runs(&stored(checker, &alice).await).len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sweepers_racing_end_each_run_once() {
        let redis = TestRedis::start();
        let alice = user("alice");
        let doomed = engine(config(&redis, "a"), Recorder::new());
        let runs: Vec<RunMeta> = (0..20).map(|i| run_meta(&format!("run_{i}"))).collect();
        for meta in &runs {
            publish(&doomed, &alice, meta, started());
        }
        flushed(&doomed).await;
        drop(doomed);
        let (b, c) = (node(&config(&redis, "b")), node(&config(&redis, "c")));
        let (ended_b, ended_c) = tokio::join!(sweep_node(&b, "a"), sweep_node(&c, "a"));
        assert_eq!(ended_b.unwrap() + ended_c.unwrap(), 20);
        let position = super::super::history::position(&b.commands, &b.keys, &alice)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(position.seq, 40, "20 starts and 20 errors, no more");
        assert_eq!(sweep_node(&b, "a").await.unwrap(), 0);
    }
}
