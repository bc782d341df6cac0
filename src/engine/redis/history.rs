//! Reading a user's stored events: the user's current position, and an exact range of
//! events for a resume or a gap repair.
//!
//! A range is served whole or not at all: the events with `after < seq <= upto` in the
//! given epoch, or `None` when the epoch is not the user's current one, when the stream no
//! longer holds every one of them (trimmed, expired, or Redis lost its data), or when the
//! range is longer than `max_read` (a read is never unbounded). A partial read (a resume
//! with `partial`) answers with the contiguous tail of the range still held instead. A
//! resume's read counts only the events within the replay window (the last
//! `history_max_events`, none older than `history_ttl`) as held, as the in-process engine's
//! replay buffer does, so a resume is answered the same on both engines. The position and
//! the range are read in one MULTI/EXEC, so they describe the same moment.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

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

/// What a read may return.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadLimits {
    /// The most events one read returns.
    pub max_read: usize,
    /// When set, only the events a resume may still replay count as held: the last
    /// `max_events` of the stream, none older than `max_age` (the in-process engine's replay
    /// buffer keeps exactly these; the stream in Redis may hold more, since `MAXLEN ~` trims
    /// whole nodes of it and its TTL counts from the user's last event).
    pub window: Option<ReplayWindow>,
}

/// The events a resume may replay (see [`ReadLimits::window`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplayWindow {
    pub max_events: u64,
    pub max_age: Duration,
}

/// The events of `user` with `after < seq <= upto` in `epoch`, all of them, or `None`.
/// With `partial`, when the oldest of them are no longer held, the ones from the oldest
/// still held on (a contiguous tail ending at `upto`, possibly empty); `None` still for
/// another epoch or a range past the stream's end.
pub(crate) async fn range(
    commands: &Commands,
    keys: &Keys,
    user: &UserId,
    epoch: &str,
    (after, upto): (u64, u64),
    partial: bool,
    limits: ReadLimits,
) -> Result<Option<Vec<NumberedEvent>>, EngineError> {
    let Some(count) = upto.checked_sub(after) else {
        return Ok(None);
    };
    let max_read = limits.max_read as u64;
    // A longer range is refused without reading, or (partial) read from its last events.
    let first = match count > max_read {
        false => after + 1,
        true if partial => upto - max_read + 1,
        true => return Ok(None),
    };
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
            .arg(format!("{first}-0"))
            .arg(format!("{upto}-0"))
            .arg("COUNT")
            .arg(upto + 1 - first);
    }
    let mut replies: Vec<Value> = commands.pipeline(&pipeline).await?;
    let entries = if count > 0 { replies.pop() } else { None };
    let meta = replies.pop().ok_or(EngineError::Reply("HMGET"))?;
    let (stored_epoch, seq): (Option<String>, Option<u64>) =
        redis::from_redis_value(meta).map_err(|_| EngineError::Reply("HMGET"))?;
    let position = match position_of(stored_epoch, seq) {
        Some(position) if &*position.epoch == epoch && upto <= position.seq => position,
        _ => return Ok(None),
    };
    let Some(entries) = entries else {
        return Ok(Some(Vec::new()));
    };
    let Value::Array(entries) = entries else {
        return Err(EngineError::Reply("XRANGE"));
    };
    let mut events = Vec::with_capacity(entries.len());
    let mut shared_epoch = None;
    for entry in entries {
        let event = parse_history_record(entry_record(entry)?, &mut shared_epoch)?;
        let follows = events
            .last()
            .is_none_or(|last: &NumberedEvent| event.seq == last.seq + 1);
        if !follows || &*event.epoch != epoch {
            return Ok(None);
        }
        events.push(event);
    }
    if let Some(window) = limits.window {
        let oldest_kept = position.seq.saturating_sub(window.max_events) + 1;
        let now = SystemTime::now();
        let expired = |event: &NumberedEvent| {
            event.seq < oldest_kept
                || now.duration_since(event.emitted_at).unwrap_or_default() > window.max_age
        };
        let gone = events.iter().take_while(|e| expired(e)).count();
        events.drain(..gone);
    }
    let tail_ends_at_upto = events.last().is_none_or(|last| last.seq == upto);
    let whole = events.first().map(|e| e.seq) == Some(after + 1) && tail_ends_at_upto;
    if whole || (partial && tail_ends_at_upto) {
        Ok(Some(events))
    } else {
        Ok(None)
    }
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
    use super::super::outgoing::OutgoingEvent;
    use super::super::script::Batch;
    use super::super::test_server::TestRedis;
    use super::super::testing::*;
    use super::super::{Node, RedisConfig};
    use super::*;
    use crate::envelope::RunFields;

    /// Publishes `count` thinking events of `user` (in batches of up to 100); returns the
    /// epoch.
    async fn publish(node: &Node, user: &UserId, count: usize) -> Arc<str> {
        publish_at(node, user, count, SystemTime::now()).await
    }

    /// [`publish`], the events emitted at `at`.
    async fn publish_at(node: &Node, user: &UserId, count: usize, at: SystemTime) -> Arc<str> {
        let meta = run_meta("run_1");
        let events: Vec<OutgoingEvent> = (0..count)
            .map(|i| {
                let event = thinking(format!("event {i}"));
                OutgoingEvent::new(user.clone(), &meta, &RunFields::new(&meta), at, &event)
            })
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

    /// The seqs a resume of `(after, upto]` reads within `window`.
    async fn replayed(
        node: &Node,
        user: &UserId,
        epoch: &str,
        (after, upto): (u64, u64),
        partial: bool,
        window: ReplayWindow,
    ) -> Option<Vec<u64>> {
        let limits = ReadLimits {
            max_read: 50,
            window: Some(window),
        };
        let (commands, keys) = (&node.commands, &node.keys);
        range(commands, keys, user, epoch, (after, upto), partial, limits)
            .await
            .unwrap()
            .map(|events| events.iter().map(|e| e.seq).collect())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resume_reads_the_replay_window_exactly_or_its_tail() {
        let redis = TestRedis::start();
        let node = node(&RedisConfig {
            history_max_events: 5,
            ..config(&redis, "n1")
        });
        let alice = user("alice");
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        publish_at(&node, &alice, 4, an_hour_ago).await; // 1..=4
        let epoch = publish(&node, &alice, 8).await; // 5..=12
        let window = ReplayWindow {
            max_events: 5,
            max_age: Duration::from_secs(600),
        };
        // The stream holds more than 5 events (`MAXLEN ~` trims whole nodes of it); a resume
        // sees the last 5, as the in-process replay buffer would hold them.
        assert_eq!(
            seqs(&node, &alice, &epoch, 2, 12).await,
            Some((3..=12).collect())
        );
        let read = |range, partial, window| replayed(&node, &alice, &epoch, range, partial, window);
        assert_eq!(read((2, 12), false, window).await, None);
        assert_eq!(read((7, 12), false, window).await, Some((8..=12).collect()));
        assert_eq!(read((7, 9), false, window).await, Some(vec![8, 9]));
        assert_eq!(read((6, 9), false, window).await, None, "7 is out");
        assert_eq!(
            read((2, 12), true, window).await,
            Some((8..=12).collect()),
            "partial: the tail in the window"
        );
        assert_eq!(
            read((2, 6), true, window).await,
            Some(vec![]),
            "partial: nothing of 3..=6 is in the window"
        );
        assert_eq!(read((0, 13), true, window).await, None, "13 does not exist");
        assert_eq!(
            replayed(&node, &alice, "another", (0, 12), true, window).await,
            None,
            "another epoch"
        );

        // By age: events emitted longer ago than `max_age` are out of the window.
        let recent = ReplayWindow {
            max_events: 100,
            max_age: Duration::from_secs(600),
        };
        assert_eq!(read((4, 12), false, recent).await, Some((5..=12).collect()));
        assert_eq!(read((3, 12), false, recent).await, None, "4 is too old");
        assert_eq!(read((0, 12), true, recent).await, Some((5..=12).collect()));
    }

    async fn seqs(
        node: &Node,
        user: &UserId,
        epoch: &str,
        after: u64,
        upto: u64,
    ) -> Option<Vec<u64>> {
        let limits = ReadLimits {
            max_read: 50,
            window: None,
        };
        range(
            &node.commands,
            &node.keys,
            user,
            epoch,
            (after, upto),
            false,
            limits,
        )
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
        let limits = ReadLimits {
            max_read: 50,
            window: None,
        };
        let texts: Vec<String> = range(
            &node.commands,
            &node.keys,
            &alice,
            &epoch,
            (8, 10),
            false,
            limits,
        )
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
