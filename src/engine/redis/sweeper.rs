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
use super::record::{parse_live_run, parse_node_run_member};
use super::script::{Batch, OutgoingEvent, Step};
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
    let outcome = node.script.run(&node.commands, &batch).await?;
    Ok(outcome.seqs.first().copied().flatten().is_some())
}
