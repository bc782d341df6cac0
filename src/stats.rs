//! Per-actor counters, kept with atomics so the hot path never takes a lock.
//!
//! Each user and session actor owns an `Arc<ActorStats>`; whoever reports on the tree (the
//! registry's snapshot) reads the same `Arc`. The sender side also writes here: a user actor
//! counts the frames and bytes it queued for a session, the session counts what it wrote,
//! and the difference is that session's backlog, which the user actor checks to cut off a
//! client that stopped reading.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use serde::Serialize;

/// Live counters of one actor.
///
/// For a session: frames (and bytes) queued to it by its user's actor, and frames (and
/// bytes) it wrote to its socket. For a user actor: deliveries from the engine it received
/// and handled, the bytes of the events among them, and where the user's stream stands.
#[derive(Debug)]
pub struct ActorStats {
    started_at: SystemTime,
    queued: AtomicU64,
    queued_bytes: AtomicU64,
    handled: AtomicU64,
    handled_bytes: AtomicU64,
    /// Milliseconds since the Unix epoch of the last message handled.
    last_activity_ms: AtomicU64,
    state: AtomicU8,
    restarts: AtomicU32,
    /// A user actor's stream: its epoch (set when the engine says where the stream stands,
    /// rarely) and the `seq` of the last event the actor received (set on every event).
    epoch: Mutex<Option<Arc<str>>>,
    seq: AtomicU64,
}

/// What an actor is doing, as shown in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    /// A session waiting for its welcome.
    Connecting,
    /// A session holding live frames back until the client's first frame.
    Holding,
    /// A session waiting for its replay.
    Replaying,
    /// Delivering as frames come.
    Live,
    /// A session stalled by fault injection.
    Stalled,
    /// A session that gets nothing more (slow consumer or drain); its close is queued.
    CutOff,
    /// A user with no socket, within its resume window.
    Idle,
}

impl ActorState {
    const ALL: [ActorState; 7] = [
        ActorState::Connecting,
        ActorState::Holding,
        ActorState::Replaying,
        ActorState::Live,
        ActorState::Stalled,
        ActorState::CutOff,
        ActorState::Idle,
    ];
}

impl Default for ActorStats {
    fn default() -> Self {
        ActorStats {
            started_at: SystemTime::now(),
            queued: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            handled_bytes: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(now_ms()),
            state: AtomicU8::new(0),
            restarts: AtomicU32::new(0),
            epoch: Mutex::new(None),
            seq: AtomicU64::new(0),
        }
    }
}

fn now_ms() -> u64 {
    ms_since_epoch(SystemTime::now())
}

fn ms_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ActorStats {
    pub(crate) fn set_state(&self, state: ActorState) {
        let index = ActorState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or(0);
        self.state.store(index as u8, Relaxed);
    }

    pub(crate) fn state(&self) -> ActorState {
        ActorState::ALL[usize::from(self.state.load(Relaxed)).min(ActorState::ALL.len() - 1)]
    }

    pub(crate) fn restarted(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }

    /// Carries a crashed actor's restart count over to its replacement.
    pub(crate) fn inherit_restarts(&self, previous: &ActorStats) {
        self.restarts
            .store(previous.restarts.load(Relaxed), Relaxed);
    }

    /// A user actor learned where its stream stands.
    pub(crate) fn positioned(&self, epoch: &Arc<str>, seq: u64) {
        *self.epoch.lock() = Some(epoch.clone());
        self.seq.store(seq, Relaxed);
    }

    /// A user actor has handled (fanned out) the event `seq` of its stream.
    pub(crate) fn reached(&self, seq: u64) {
        self.seq.store(seq, Relaxed);
    }

    pub(crate) fn queued(&self, bytes: usize) {
        self.queued.fetch_add(1, Relaxed);
        self.queued_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// One frame or event handled (without reading the clock: the actor stamps its
    /// activity once per burst with [`ActorStats::active_at`]).
    pub(crate) fn handled(&self, bytes: usize) {
        self.handled.fetch_add(1, Relaxed);
        self.handled_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// The actor was active at `now` (shown as `idle_for_ms`).
    pub(crate) fn active_at(&self, now: SystemTime) {
        self.last_activity_ms.store(ms_since_epoch(now), Relaxed);
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
        let last_activity_ms = self.last_activity_ms.load(Relaxed);
        StatsSnapshot {
            state: self.state(),
            started_at: humantime::format_rfc3339_millis(self.started_at).to_string(),
            queued: self.queued.load(Relaxed),
            handled: self.handled.load(Relaxed),
            backlog,
            backlog_bytes,
            bytes: self.handled_bytes.load(Relaxed),
            idle_for_ms: now_ms().saturating_sub(last_activity_ms),
            restarts: self.restarts.load(Relaxed),
            stream: self.epoch.lock().as_ref().map(|epoch| StreamPosition {
                epoch: epoch.to_string(),
                seq: self.seq.load(Relaxed),
            }),
        }
    }
}

/// A point-in-time copy of [`ActorStats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// What the actor is doing.
    pub state: ActorState,
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
    /// Bytes written (sessions) or of the events fanned out (users).
    pub bytes: u64,
    /// Milliseconds since the actor last handled something.
    pub idle_for_ms: u64,
    /// Times the actor was restarted after a crash (users).
    pub restarts: u32,
    /// Where the user's stream stands for its actor (users, once the engine said): compare
    /// it across nodes to see whether a node is behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamPosition>,
}

/// A position in a user's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamPosition {
    /// The stream's numbering epoch.
    pub epoch: String,
    /// The `seq` of the last event received.
    pub seq: u64,
}
