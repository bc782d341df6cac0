//! Identifiers: who a user is, which socket a session is, which run an event belongs to.
//!
//! `UserId` is the isolation key of the whole crate: every map of connection state is keyed
//! by it and every emitting handle is bound to one. It is cheap to clone (an `Arc<str>`)
//! because it travels inside actor messages. Session ids are process-unique counters; run,
//! tool-call and thread ids are random so that clients cannot guess another user's.

use std::fmt;
use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The longest user id accepted, in bytes. Longer `sub` claims are refused at authentication.
pub const MAX_USER_ID_BYTES: usize = 256;

/// The authenticated identity of a user: the isolation boundary of agentwire.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl UserId {
    /// Builds a user id, refusing empty ids, ids longer than [`MAX_USER_ID_BYTES`] and ids
    /// containing control characters.
    pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidUserId> {
        let id = id.as_ref();
        if id.is_empty() || id.len() > MAX_USER_ID_BYTES || id.chars().any(char::is_control) {
            return Err(InvalidUserId);
        }
        Ok(UserId(Arc::from(id)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user:{}", self.0)
    }
}

/// A user id was empty, too long, or contained control characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUserId;

impl fmt::Display for InvalidUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "user id must be 1 to {MAX_USER_ID_BYTES} bytes without control characters"
        )
    }
}

impl std::error::Error for InvalidUserId {}

/// One WebSocket connection, unique within the process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session:{}", self.0)
    }
}

/// A random identifier with a readable prefix, e.g. `run_3f9a0c2e5b7d1a44`.
pub(crate) fn random_id(prefix: &str) -> String {
    let bits: u64 = rand::rng().random();
    format!("{prefix}_{bits:016x}")
}

/// A fresh epoch: a random 16-hex-digit string that changes whenever numbering restarts.
pub(crate) fn new_epoch() -> String {
    let bits: u64 = rand::rng().random();
    format!("{bits:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_validated() {
        assert!(UserId::new("alice").is_ok());
        assert!(UserId::new("").is_err());
        assert!(UserId::new("a\nb").is_err());
        assert!(UserId::new("x".repeat(MAX_USER_ID_BYTES + 1)).is_err());
        assert!(UserId::new("x".repeat(MAX_USER_ID_BYTES)).is_ok());
    }

    #[test]
    fn random_ids_differ_and_carry_their_prefix() {
        let a = random_id("run");
        let b = random_id("run");
        assert_ne!(a, b);
        assert!(a.starts_with("run_") && a.len() == 20);
    }
}
