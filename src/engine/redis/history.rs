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
