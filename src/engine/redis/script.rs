//! The publish script: one atomic call that numbers, stores and publishes a batch of one
//! user's events (`publish.lua`, run with EVALSHA, loaded again when Redis answers NOSCRIPT).
//!
//! For each event the script takes the user's next `seq` (starting a new epoch, from a
//! random candidate the caller passes, when the user has none), writes the frame from the
//! caller's tail as `{"type":"<type>","seq":<seq>,"epoch":"<epoch>",<tail>` (exactly what
//! `envelope::encode` writes), appends it to the user's history stream with entry id
//! `<seq>-0` (trimmed with `MAXLEN ~`), and keeps the user's live runs: a run's first event
//! records its owning node, its last removes it. Then it PUBLISHes the batch as one message
//! on the user's channel and refreshes the user's TTLs. History order is therefore pub/sub
//! order, and one user's events cost one round trip per batch, not per event.
//!
//! A retried batch applies once: the script records, per user and per sending node, the
//! number of the last batch it applied and its result, and answers a repeat with that result
//! (a timed-out call may still run after its retry, when Redis was only paused). One node
//! has one batch of a user in flight at a time, so its batch numbers reach the script in
//! order.
//!
//! Around the script, in the same pipeline, the sending node adds a starting run to its own
//! runs set before the script and removes an ending run after it, so a run is in its node's
//! set whenever it is live in the user's hash (that set is how a sweeper finds a dead node's
//! runs; it is a separate slot, so it cannot be in the script on Redis Cluster).

use std::sync::Arc;
use std::time::Duration;

use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};

use super::connection::Commands;
use super::error::EngineError;
use super::keys::UserKeys;
use super::outgoing::OutgoingEvent;

/// How long Redis remembers a node's last batch for a user: far longer than a timed-out call
/// can wait in a socket buffer before it runs.
const BATCH_RECORD_TTL: Duration = Duration::from_secs(60);

/// What the script did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchOutcome {
    /// The user's epoch the events were numbered in.
    pub epoch: Arc<str>,
    /// The batch started a new epoch (the user had none: first event, expired, or Redis
    /// lost its data).
    pub new_epoch: bool,
    /// Each event's seq, in batch order; `None` for an event the script dropped (an event
    /// of a run ended with `node_lost`, or an `EndIfLost` of a run no longer live).
    pub seqs: Vec<Option<u64>>,
}

/// The script's fixed settings.
#[derive(Debug, Clone)]
pub(crate) struct ScriptSettings {
    pub history_max_events: usize,
    pub history_ttl: Duration,
    pub state_ttl: Duration,
}

/// A batch to apply.
pub(crate) struct Batch<'a> {
    pub keys: &'a UserKeys,
    /// The events' node: it owns the runs they start.
    pub node: &'a str,
    /// Who sends the batch (the node, or the node's sweeper): one batch in flight per
    /// sender and user, numbered in sending order.
    pub sender: &'a str,
    pub number: u64,
    /// For `EndIfLost` events: the dead node whose runs they end.
    pub lost_node: Option<&'a str>,
    pub events: &'a [OutgoingEvent],
    /// The sender's runs set, with the members to add before the script and to remove
    /// after it.
    pub node_runs: Option<NodeRunsUpdate<'a>>,
}

pub(crate) struct NodeRunsUpdate<'a> {
    pub key: &'a str,
    pub add: Vec<Vec<u8>>,
    pub remove: Vec<Vec<u8>>,
}

/// The loaded script and its settings.
pub(crate) struct PublishScript {
    script: Script,
    settings: ScriptSettings,
}

impl PublishScript {
    pub(crate) fn new(settings: ScriptSettings) -> Self {
        PublishScript {
            script: Script::new(include_str!("publish.lua")),
            settings,
        }
    }

    /// Applies `batch` (one round trip; two when Redis must load the script first).
    pub(crate) async fn run(
        &self,
        commands: &Commands,
        batch: &Batch<'_>,
    ) -> Result<BatchOutcome, EngineError> {
        let settings = &self.settings;
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&batch.keys.meta)
            .key(&batch.keys.history)
            .key(&batch.keys.runs)
            .key(&batch.keys.lost)
            .key(batch.keys.batch(batch.sender))
            .arg(batch.node)
            .arg(batch.number)
            .arg(crate::ids::new_epoch())
            .arg(settings.history_max_events)
            .arg(millis(settings.history_ttl))
            .arg(millis(settings.state_ttl))
            .arg(millis(BATCH_RECORD_TTL))
            .arg(&batch.keys.events)
            .arg(batch.lost_node.unwrap_or(""));
        for event in batch.events {
            invocation
                .arg(event.step.code())
                .arg(event.wire_type)
                .arg(&event.run_id)
                .arg(&event.thread_id)
                .arg(event.emitted_at_micros)
                .arg(event.run_fields_len)
                .arg(&event.tail);
        }
        let mut pipeline = redis::pipe();
        if let Some(runs) = batch.node_runs.as_ref().filter(|r| !r.add.is_empty()) {
            pipeline.cmd("SADD").arg(runs.key).arg(&runs.add).ignore();
        }
        pipeline.invoke_script(&invocation);
        if let Some(runs) = batch.node_runs.as_ref().filter(|r| !r.remove.is_empty()) {
            pipeline
                .cmd("SREM")
                .arg(runs.key)
                .arg(&runs.remove)
                .ignore();
        }
        let reply: (Value,) = match commands.pipeline(&pipeline).await {
            Err(error) if is_noscript(&error) => {
                commands.load_script(&self.script).await?;
                commands.pipeline(&pipeline).await?
            }
            reply => reply?,
        };
        parse_reply(reply.0, batch.events.len())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn is_noscript(error: &RedisError) -> bool {
    error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) || error.code() == Some("NOSCRIPT")
}

fn parse_reply(reply: Value, events: usize) -> Result<BatchOutcome, EngineError> {
    let (status, epoch, seqs): (String, String, String) =
        redis::from_redis_value(reply).map_err(|_| EngineError::Reply("publish script reply"))?;
    let new_epoch = match status.as_str() {
        "ok" => false,
        "new" => true,
        "stale" => {
            return Err(EngineError::Reply(
                "a later batch of this sender came first",
            ))
        }
        _ => return Err(EngineError::Reply("publish script status")),
    };
    let seqs = seqs
        .split(',')
        .map(|seq| match seq.parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(seq) => Ok(Some(seq)),
            Err(_) => Err(EngineError::Reply("publish script seq")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if seqs.len() != events {
        return Err(EngineError::Reply("publish script seq count"));
    }
    Ok(BatchOutcome {
        epoch: epoch.into(),
        new_epoch,
        seqs,
    })
}

#[cfg(test)]
mod tests {
    use super::super::outgoing::Step;
    use super::super::record::parse_live_run;
    use super::super::test_server::TestRedis;
    use super::super::testing::*;
    use super::super::{history, Node};
    use super::*;
    use crate::envelope::{encode, EpochField, RunFields};
    use crate::event::RunMeta;
    use crate::ids::UserId;
    use std::time::SystemTime;

    /// Applies `events` (of one user) as batch `number` of `node`.
    async fn apply(
        node: &Node,
        number: u64,
        lost_node: Option<&str>,
        events: &[OutgoingEvent],
    ) -> Result<BatchOutcome, EngineError> {
        let keys = node.keys.user(&events[0].user);
        let batch = Batch {
            keys: &keys,
            node: &node.id,
            sender: &node.id,
            number,
            lost_node,
            events,
            node_runs: None,
        };
        node.script.run(&node.commands, &batch).await
    }

    async fn stored(node: &Node, user: &UserId, epoch: &str, upto: u64) -> Vec<String> {
        let limits = history::ReadLimits {
            max_read: 1_000,
            window: None,
        };
        history::range(
            &node.commands,
            &node.keys,
            user,
            epoch,
            (0, upto),
            false,
            limits,
        )
        .await
        .unwrap()
        .expect("the whole history")
        .iter()
        .map(|e| e.frame.to_string())
        .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_are_numbered_in_order_with_the_envelopes_exact_bytes() {
        let redis = TestRedis::start();
        let node = node(&config(&redis, "n1"));
        let alice = user("alice");
        // Strings that need escaping, and bytes Lua must pass through untouched.
        let meta = RunMeta {
            run_id: "run_\"1\"".into(),
            thread_id: "t {x} %7B \\ \u{2028} é 😀".into(),
            agent_name: "a\u{1}b".into(),
        };
        let at = SystemTime::now();
        let events = [
            started(),
            thinking("one"),
            thinking("two \" \n"),
            completed(),
        ];
        let outgoing: Vec<_> = events
            .iter()
            .map(|e| OutgoingEvent::new(alice.clone(), &meta, &RunFields::new(&meta), at, e))
            .collect();

        let first = apply(&node, 1, None, &outgoing[..2]).await.unwrap();
        assert!(first.new_epoch);
        assert_eq!(first.seqs, [Some(1), Some(2)]);
        let second = apply(&node, 2, None, &outgoing[2..]).await.unwrap();
        assert!(!second.new_epoch);
        assert_eq!(second.epoch, first.epoch);
        assert_eq!(second.seqs, [Some(3), Some(4)]);

        let epoch = EpochField::new(&first.epoch);
        let expected: Vec<String> = (1..)
            .zip(&events)
            .map(|(seq, event)| encode(seq, &epoch, &RunFields::new(&meta), at, event).to_string())
            .collect();
        assert_eq!(stored(&node, &alice, &first.epoch, 4).await, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retried_batch_applies_once() {
        let redis = TestRedis::start();
        let node = node(&config(&redis, "n1"));
        let alice = user("alice");
        let meta = run_meta("run_1");
        let batch = [
            outgoing(&alice, &meta, &started()),
            outgoing(&alice, &meta, &thinking("x")),
        ];
        let applied = apply(&node, 7, None, &batch).await.unwrap();
        let repeated = apply(&node, 7, None, &batch).await.unwrap();
        assert_eq!(
            repeated, applied,
            "the first application's outcome, new epoch included"
        );
        assert!(repeated.new_epoch);
        // An older batch arriving late is refused, not applied.
        assert!(apply(&node, 6, None, &batch).await.is_err());
        let position = history::position(&node.commands, &node.keys, &alice)
            .await
            .unwrap();
        assert_eq!(position.map(|p| p.seq), Some(2), "each event numbered once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_runs_follow_their_first_and_last_events() {
        let redis = TestRedis::start();
        let n1 = node(&config(&redis, "n1"));
        let alice = user("alice");
        let meta = run_meta("run_1");
        let runs_key = n1.keys.user(&alice).runs;
        let live = || async {
            let value: Option<Vec<u8>> = n1
                .commands
                .query(redis::cmd("HGET").arg(&runs_key).arg("run_1"))
                .await
                .unwrap();
            value.map(|v| parse_live_run(&v).unwrap())
        };

        apply(&n1, 1, None, &[outgoing(&alice, &meta, &started())])
            .await
            .unwrap();
        let entry = live().await.expect("live after its first event");
        assert_eq!(entry.node, "n1");
        assert_eq!(entry.thread_id, meta.thread_id);
        assert_eq!(entry.run_fields, RunFields::new(&meta).as_bytes());
        apply(&n1, 2, None, &[outgoing(&alice, &meta, &completed())])
            .await
            .unwrap();
        assert_eq!(live().await, None, "gone after its last");

        // A later event of a run Redis forgot (it lost its data) records it again.
        apply(&n1, 3, None, &[outgoing(&alice, &meta, &thinking("again"))])
            .await
            .unwrap();
        assert_eq!(live().await.map(|r| r.node), Some("n1".to_owned()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_run_ends_once_and_its_late_events_are_dropped() {
        let redis = TestRedis::start();
        let n1 = node(&config(&redis, "n1"));
        let n2 = node(&config(&redis, "n2"));
        let alice = user("alice");
        let meta = run_meta("run_1");
        apply(&n1, 1, None, &[outgoing(&alice, &meta, &started())])
            .await
            .unwrap();
        let lost = |number| {
            let n2 = n2.clone();
            let event = OutgoingEvent {
                step: Step::EndIfLost,
                ..outgoing(&alice, &meta, &completed())
            };
            async move { apply(&n2, number, Some("n1"), &[event]).await.unwrap().seqs }
        };
        // Not the owner named: nothing happens.
        let wrong_owner = OutgoingEvent {
            step: Step::EndIfLost,
            ..outgoing(&alice, &meta, &completed())
        };
        let outcome = apply(&n2, 1, Some("n3"), &[wrong_owner]).await.unwrap();
        assert_eq!(outcome.seqs, [None]);
        assert_eq!(lost(2).await, [Some(2)]);
        assert_eq!(lost(3).await, [None], "a second sweeper finds it ended");
        // The owner comes back too late: its events of that run are dropped.
        let late = [
            outgoing(&alice, &meta, &thinking("late")),
            outgoing(&alice, &meta, &completed()),
        ];
        assert_eq!(apply(&n1, 2, None, &late).await.unwrap().seqs, [None, None]);
        let position = history::position(&n1.commands, &n1.keys, &alice)
            .await
            .unwrap();
        assert_eq!(position.map(|p| p.seq), Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_restarted_empty_starts_a_new_epoch() {
        let mut redis = TestRedis::start();
        let node = node(&config(&redis, "n1"));
        let alice = user("alice");
        let meta = run_meta("run_1");
        let before = apply(&node, 1, None, &[outgoing(&alice, &meta, &started())])
            .await
            .unwrap();
        redis.restart();
        // The first calls may fail while the connection is made again (and the script is
        // loaded again); the engine retries them.
        let mut number = 2;
        let after = loop {
            match apply(
                &node,
                number,
                None,
                &[outgoing(&alice, &meta, &thinking("x"))],
            )
            .await
            {
                Ok(outcome) => break outcome,
                Err(error) => assert!(error.is_transient(), "{error}"),
            }
            number += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(after.new_epoch);
        assert_ne!(after.epoch, before.epoch);
        assert_eq!(after.seqs, [Some(1)]);
    }
}
