//! Supervision: the registry's restart policy for user actors, and the bounded log of what
//! supervision did (restarts, escalations, slow-consumer closes, heartbeat timeouts).
//!
//! A user actor that panics in one of its handlers is noticed by the registry, which runs
//! every user actor inside a `catch_unwind` of its own (see `registry`). The registry
//! restarts it,
//! OTP-style: at most `max_restarts` within `restart_window` per user; past that it
//! escalates, closing the user's sockets with 1011. Nothing here touches another user.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;

/// How many supervision events the log keeps (oldest dropped first).
pub const SUPERVISION_LOG_CAPACITY: usize = 256;

/// What kind of thing supervision did or saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SupervisionKind {
    /// A user actor died and was restarted.
    Restart,
    /// A user actor died too often; its sockets were closed with 1011.
    Escalation,
    /// A session was cut off for not reading (4001).
    SlowConsumer,
    /// A session was closed for silence (4000).
    HeartbeatTimeout,
    /// A fault was injected through the debug routes.
    FaultInjected,
}

/// One entry of the supervision log.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisionEvent {
    /// When (RFC 3339, milliseconds).
    pub at: String,
    /// What happened.
    pub kind: SupervisionKind,
    /// The actor it happened to: `user:<id>` or `session:<n>`.
    pub actor: String,
    /// Why, for people.
    pub reason: String,
}

/// The bounded, shared log. Appending takes a lock, which is fine: supervision events are
/// rare, and never on the per-event path.
#[derive(Debug, Default)]
pub struct SupervisionLog {
    events: Mutex<VecDeque<SupervisionEvent>>,
}

impl SupervisionLog {
    pub(crate) fn record(&self, kind: SupervisionKind, actor: String, reason: String) {
        let name = serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        log::warn!("{actor}: {name}: {reason}");
        let event = SupervisionEvent {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind,
            actor,
            reason,
        };
        let mut events = self.events.lock();
        if events.len() == SUPERVISION_LOG_CAPACITY {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The recorded events, oldest first.
    pub fn events(&self) -> Vec<SupervisionEvent> {
        self.events.lock().iter().cloned().collect()
    }
}

/// A user's recent restarts, for the restart-intensity check.
#[derive(Debug, Default)]
pub(crate) struct RestartHistory {
    at: VecDeque<Instant>,
}

impl RestartHistory {
    /// Records a crash now; true when a restart is still within `max` per `window`.
    pub(crate) fn allow_restart(&mut self, max: u32, window: Duration) -> bool {
        let now = Instant::now();
        while self
            .at
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.at.pop_front();
        }
        if self.at.len() >= max as usize {
            return false;
        }
        self.at.push_back(now);
        true
    }
}
