//! Reading a user's stored events: the user's current position, and an exact range of
//! events for a resume or a gap repair.
//!
//! A range is served whole or not at all: the events with `after < seq <= upto` in the
//! given epoch, or `None` when the epoch is not the user's current one, when the stream no
//! longer holds every one of them (trimmed, expired, or Redis lost its data), or when the
//! range is longer than `max_read` (a read is never unbounded). The position and the range
//! are read in one MULTI/EXEC, so they describe the same moment.

use std::sync::Arc;

use bytes::Bytes;
use redis::Value;

use super::connection::Commands;
use super::error::EngineError;
use super::keys::Keys;
use super::record::{parse_history_record, NumberedEvent};
use crate::ids::UserId;

/// Where a user's numbering stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub epoch: Arc<str>,
    /// The last seq given out (0 when none yet in this epoch).
    pub seq: u64,
}

#[cfg(test)]
/// The user's position, or `None` when Redis holds none (no event yet, expired, or lost).
pub(crate) async fn position(
    commands: &Commands,
    keys: &Keys,
    user: &UserId,
) -> Result<Option<Position>, EngineError> {
    let meta = keys.user(user).meta;
    let (epoch, seq): (Option<String>, Option<u64>) = commands
        .query(redis::cmd("HMGET").arg(&meta).arg("e").arg("s"))
        .await?;
    Ok(position_of(epoch, seq))
}

/// Starts a numbering when the user has none (setting `candidate` as its epoch, with no
/// history), and refreshes its TTL: a node that subscribes a user learns where the stream
/// stands even before its first event.
const ENSURE_POSITION: &str = r"
local position = redis.call('HMGET', KEYS[1], 'e', 's')
local epoch, seq = position[1], position[2]
if not epoch or not seq then
  epoch, seq = ARGV[1], '0'
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {epoch, seq}
";

/// The user's position, starting a numbering with a new epoch when Redis holds none.
pub(crate) async fn ensure_position(
    commands: &Commands,
    keys: &Keys,
    user: &UserId,
    state_ttl_ms: u64,
) -> Result<Position, EngineError> {
    let user_keys = keys.user(user);
    let (epoch, seq): (String, u64) = commands
        .query(
            redis::cmd("EVAL")
                .arg(ENSURE_POSITION)
                .arg(2)
                .arg(&user_keys.meta)
                .arg(&user_keys.history)
                .arg(crate::ids::new_epoch())
                .arg(state_ttl_ms),
        )
        .await?;
    Ok(Position {
        epoch: epoch.into(),
        seq,
    })
}

fn position_of(epoch: Option<String>, seq: Option<u64>) -> Option<Position> {
    Some(Position {
        epoch: epoch?.into(),
        seq: seq?,
    })
}

/// The events of `user` with `after < seq <= upto` in `epoch`, all of them, or `None`.
pub(crate) async fn range(
    commands: &Commands,
    keys: &Keys,
    user: &UserId,
    epoch: &str,
    after: u64,
    upto: u64,
    max_read: usize,
) -> Result<Option<Vec<NumberedEvent>>, EngineError> {
    let Some(count) = upto.checked_sub(after) else {
        return Ok(None);
    };
    if count > max_read as u64 {
        return Ok(None);
    }
    let user_keys = keys.user(user);
    let mut pipeline = redis::pipe();
    pipeline
        .atomic()
        .cmd("HMGET")
        .arg(&user_keys.meta)
        .arg("e")
        .arg("s");
    if count > 0 {
        pipeline
            .cmd("XRANGE")
            .arg(&user_keys.history)
            .arg(format!("{}-0", after + 1))
            .arg(format!("{upto}-0"))
            .arg("COUNT")
            .arg(count);
    }
    let mut replies: Vec<Value> = commands.pipeline(&pipeline).await?;
    let entries = if count > 0 { replies.pop() } else { None };
    let meta = replies.pop().ok_or(EngineError::Reply("HMGET"))?;
    let (stored_epoch, seq): (Option<String>, Option<u64>) =
        redis::from_redis_value(meta).map_err(|_| EngineError::Reply("HMGET"))?;
    match position_of(stored_epoch, seq) {
        Some(position) if &*position.epoch == epoch && upto <= position.seq => {}
        _ => return Ok(None),
    }
    let Some(entries) = entries else {
        return Ok(Some(Vec::new()));
    };
    let Value::Array(entries) = entries else {
        return Err(EngineError::Reply("XRANGE"));
    };
    if entries.len() as u64 != count {
        return Ok(None);
    }
    let mut events = Vec::with_capacity(entries.len());
    let mut shared_epoch = None;
    for (expected, entry) in (after + 1..).zip(entries) {
        let record = entry_record(entry)?;
        let event = parse_history_record(record, &mut shared_epoch)?;
        if event.seq != expected || &*event.epoch != epoch {
            return Ok(None);
        }
        events.push(event);
    }
    Ok(Some(events))
}

/// The `r` field of one XRANGE entry, `[id, [field, value, ...]]`.
fn entry_record(entry: Value) -> Result<Bytes, EngineError> {
    let Value::Array(mut parts) = entry else {
        return Err(EngineError::Reply("stream entry"));
    };
    let Some(Value::Array(fields)) = parts.pop() else {
        return Err(EngineError::Reply("stream entry fields"));
    };
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if let (Value::BulkString(name), Value::BulkString(value)) = (name, value) {
            if name == b"r" {
                return Ok(Bytes::from(value));
            }
        }
    }
    Err(EngineError::Reply("stream entry without a record"))
}

#[cfg(test)]
mod tests {
    use super::super::script::{Batch, OutgoingEvent};
    use super::super::test_server::TestRedis;
    use super::super::testing::*;
    use super::super::{Node, RedisConfig};
    use super::*;
    use std::time::Duration;

    /// Publishes `count` thinking events of `user` (in batches of up to 100), numbered after
    /// `first_batch`; returns the epoch.
    async fn publish(node: &Node, user: &UserId, count: usize) -> Arc<str> {
        let meta = run_meta("run_1");
        let events: Vec<OutgoingEvent> = (0..count)
            .map(|i| outgoing(user, &meta, &thinking(format!("event {i}"))))
            .collect();
        let keys = node.keys.user(user);
        let mut epoch = None;
        for chunk in events.chunks(100) {
            let batch = Batch {
                keys: &keys,
                node: &node.id,
                sender: &node.id,
                number: node.next_batch_number(),
                lost_node: None,
                events: chunk,
                node_runs: None,
            };
            epoch = Some(node.script.run(&node.commands, &batch).await.unwrap().epoch);
        }
        epoch.expect("at least one event")
    }

    async fn seqs(
        node: &Node,
        user: &UserId,
        epoch: &str,
        after: u64,
        upto: u64,
    ) -> Option<Vec<u64>> {
        range(&node.commands, &node.keys, user, epoch, after, upto, 50)
            .await
            .unwrap()
            .map(|events| events.iter().map(|e| e.seq).collect())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_are_exact_or_refused() {
        let redis = TestRedis::start();
        let node = node(&config(&redis, "n1"));
        let alice = user("alice");
        assert_eq!(
            position(&node.commands, &node.keys, &alice).await.unwrap(),
            None
        );
        let epoch = publish(&node, &alice, 10).await;
        assert_eq!(
            position(&node.commands, &node.keys, &alice).await.unwrap(),
            Some(Position {
                epoch: epoch.clone(),
                seq: 10
            })
        );
        assert_eq!(
            seqs(&node, &alice, &epoch, 0, 10).await,
            Some((1..=10).collect())
        );
        assert_eq!(
            seqs(&node, &alice, &epoch, 3, 7).await,
            Some(vec![4, 5, 6, 7])
        );
        assert_eq!(seqs(&node, &alice, &epoch, 10, 10).await, Some(vec![]));
        assert_eq!(
            seqs(&node, &alice, &epoch, 0, 11).await,
            None,
            "seq 11 does not exist"
        );
        assert_eq!(
            seqs(&node, &alice, &epoch, 7, 3).await,
            None,
            "a backwards range"
        );
        assert_eq!(
            seqs(&node, &alice, "another", 0, 10).await,
            None,
            "another epoch"
        );
        assert_eq!(
            seqs(&node, &user("bob"), &epoch, 0, 1).await,
            None,
            "another user"
        );
        let texts: Vec<String> = range(&node.commands, &node.keys, &alice, &epoch, 8, 10, 50)
            .await
            .unwrap()
            .unwrap()
            .iter()
            .map(text_of)
            .collect();
        assert_eq!(texts, ["event 8", "event 9"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_is_bounded_and_a_trimmed_range_is_refused() {
        let redis = TestRedis::start();
        let node = node(&RedisConfig {
            history_max_events: 5,
            ..config(&redis, "n1")
        });
        let alice = user("alice");
        let epoch = publish(&node, &alice, 300).await;
        // Longer than the read bound (50 in `seqs`): refused without reading.
        assert_eq!(seqs(&node, &alice, &epoch, 200, 251).await, None);
        // The stream keeps at least the last 5 (MAXLEN ~ trims whole nodes of it).
        assert_eq!(
            seqs(&node, &alice, &epoch, 295, 300).await,
            Some((296..=300).collect())
        );
        let held: u64 = node
            .commands
            .query(redis::cmd("XLEN").arg(node.keys.user(&alice).history))
            .await
            .unwrap();
        assert!(held < 300, "the stream was trimmed");
        let oldest_gone = 300 - held;
        assert_eq!(
            seqs(&node, &alice, &epoch, oldest_gone - 1, oldest_gone + 10).await,
            None
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_expires_and_numbering_goes_on() {
        let redis = TestRedis::start();
        let node = node(&RedisConfig {
            history_ttl: Duration::from_millis(100),
            ..config(&redis, "n1")
        });
        let alice = user("alice");
        let epoch = publish(&node, &alice, 3).await;
        let stream = node.keys.user(&alice).history;
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let exists: bool = node
                .commands
                .query(redis::cmd("EXISTS").arg(&stream))
                .await
                .unwrap();
            if !exists {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "history never expired"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            seqs(&node, &alice, &epoch, 0, 3).await,
            None,
            "gone: no partial replay"
        );
        assert_eq!(
            seqs(&node, &alice, &epoch, 3, 3).await,
            Some(vec![]),
            "nothing missed"
        );
        // The numbering outlives the history: the same epoch goes on.
        assert_eq!(publish(&node, &alice, 1).await, epoch);
        assert_eq!(seqs(&node, &alice, &epoch, 3, 4).await, Some(vec![4]));
    }
}
