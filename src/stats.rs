//! Per-actor counters, kept with atomics so the hot path never takes a lock.
//!
//! Each user and session actor owns an `Arc<ActorStats>`; whoever reports on the tree (the
//! registry's snapshot) reads the same `Arc`. The sender side also writes here: a user actor
//! counts the frames and bytes it queued for a session, the session counts what it wrote,
//! and the difference is that session's backlog, which the user actor checks to cut off a
//! client that stopped reading.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use serde::Serialize;

/// Live counters of one actor.
///
/// For a session: frames (and bytes) queued to it by its user's actor, and frames (and
/// bytes) it wrote to its socket. For a user actor: events it received and handled, and the
/// bytes it encoded.
#[derive(Debug)]
pub struct ActorStats {
    started_at: SystemTime,
    queued: AtomicU64,
    queued_bytes: AtomicU64,
    handled: AtomicU64,
    handled_bytes: AtomicU64,
}

impl Default for ActorStats {
    fn default() -> Self {
        ActorStats {
            started_at: SystemTime::now(),
            queued: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            handled_bytes: AtomicU64::new(0),
        }
    }
}

impl ActorStats {
    pub(crate) fn queued(&self, bytes: usize) {
        self.queued.fetch_add(1, Relaxed);
        self.queued_bytes.fetch_add(bytes as u64, Relaxed);
    }

    pub(crate) fn handled(&self, bytes: usize) {
        self.handled.fetch_add(1, Relaxed);
        self.handled_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Frames and bytes queued but not yet handled.
    pub(crate) fn backlog(&self) -> (u64, u64) {
        let frames = self
            .queued
            .load(Relaxed)
            .saturating_sub(self.handled.load(Relaxed));
        let bytes = self
            .queued_bytes
            .load(Relaxed)
            .saturating_sub(self.handled_bytes.load(Relaxed));
        (frames, bytes)
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> StatsSnapshot {
        let (backlog, backlog_bytes) = self.backlog();
        StatsSnapshot {
            started_at: humantime::format_rfc3339_millis(self.started_at).to_string(),
            queued: self.queued.load(Relaxed),
            handled: self.handled.load(Relaxed),
            backlog,
            backlog_bytes,
            bytes: self.handled_bytes.load(Relaxed),
        }
    }
}

/// A point-in-time copy of [`ActorStats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// When the actor started (RFC 3339).
    pub started_at: String,
    /// Frames (sessions) or events (users) handed to the actor.
    pub queued: u64,
    /// Frames written (sessions) or events handled (users).
    pub handled: u64,
    /// `queued - handled`: what is waiting for the actor.
    pub backlog: u64,
    /// The backlog in bytes.
    pub backlog_bytes: u64,
    /// Bytes written (sessions) or encoded (users).
    pub bytes: u64,
}
