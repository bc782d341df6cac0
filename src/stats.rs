//! Per-actor counters, kept with atomics so the hot path never takes a lock.
//!
//! Each user and session actor owns an `Arc<ActorStats>`; whoever reports on the tree (the
//! registry's snapshot) reads the same `Arc`. The sender side also writes here: a user actor
//! counts frames it queued for a session, the session counts frames it wrote, and the
//! difference is that session's backlog.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use serde::Serialize;

/// Live counters of one actor.
#[derive(Debug)]
pub struct ActorStats {
    started_at: SystemTime,
    /// Frames (or events) handed to this actor for delivery.
    queued: AtomicU64,
    /// Frames (or events) this actor finished handling.
    handled: AtomicU64,
    /// Bytes this actor wrote (sessions) or encoded (users).
    bytes: AtomicU64,
}

impl Default for ActorStats {
    fn default() -> Self {
        ActorStats {
            started_at: SystemTime::now(),
            queued: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

impl ActorStats {
    pub(crate) fn queued(&self) {
        self.queued.fetch_add(1, Relaxed);
    }

    pub(crate) fn handled(&self, bytes: usize) {
        self.handled.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }

    pub(crate) fn add_bytes(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> StatsSnapshot {
        let handled = self.handled.load(Relaxed);
        let queued = self.queued.load(Relaxed);
        StatsSnapshot {
            started_at: humantime::format_rfc3339_millis(self.started_at).to_string(),
            queued,
            handled,
            backlog: queued.saturating_sub(handled),
            bytes: self.bytes.load(Relaxed),
        }
    }
}

/// A point-in-time copy of [`ActorStats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// When the actor started (RFC 3339).
    pub started_at: String,
    /// Frames or events handed to the actor.
    pub queued: u64,
    /// Frames or events the actor handled.
    pub handled: u64,
    /// `queued - handled`: what is waiting in the actor's mailbox.
    pub backlog: u64,
    /// Bytes written (sessions) or encoded (users).
    pub bytes: u64,
}
