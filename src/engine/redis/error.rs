//! The engine's error: Redis failed, or something it returned is not what the engine wrote.
//!
//! [`EngineError::is_transient`] decides what is retried: a lost or refused connection, a
//! timeout, a Redis that is loading or failing over. An answer that a retry would not change
//! (a script error, a key of the wrong type) is not.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use super::record::RecordError;

#[derive(Debug)]
pub(crate) enum EngineError {
    /// Redis could not be reached, or answered with an error.
    Redis(RedisError),
    /// A record read from Redis is malformed.
    Record(RecordError),
    /// A reply did not have the shape the engine expects.
    Reply(&'static str),
    /// The subscriber is not connected; what was asked is done when it reconnects.
    Disconnected,
    /// Redis did not answer in time.
    Timeout,
}

impl EngineError {
    /// Whether trying again later may succeed.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            EngineError::Redis(error) => match error.kind() {
                ErrorKind::Server(
                    ServerErrorKind::ResponseError
                    | ServerErrorKind::ExecAbort
                    | ServerErrorKind::CrossSlot
                    | ServerErrorKind::NoPerm
                    | ServerErrorKind::NotBusy
                    | ServerErrorKind::NoSub,
                ) => false,
                ErrorKind::Extension => error.code() != Some("WRONGTYPE"),
                _ => true,
            },
            EngineError::Disconnected | EngineError::Timeout => true,
            EngineError::Record(_) | EngineError::Reply(_) => false,
        }
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Redis(error) => write!(f, "redis: {error}"),
            EngineError::Record(error) => error.fmt(f),
            EngineError::Reply(what) => write!(f, "unexpected reply from redis: {what}"),
            EngineError::Disconnected => f.write_str("not connected to redis"),
            EngineError::Timeout => f.write_str("redis did not answer in time"),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<RedisError> for EngineError {
    fn from(error: RedisError) -> Self {
        EngineError::Redis(error)
    }
}

impl From<tokio::time::error::Elapsed> for EngineError {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        EngineError::Timeout
    }
}

impl From<RecordError> for EngineError {
    fn from(error: RecordError) -> Self {
        EngineError::Record(error)
    }
}
