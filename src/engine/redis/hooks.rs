//! What the engine calls back into: [`Inbound`], the delivery side (numbered events, stop
//! requests and reconnects, handed to whoever fans them out on this node), and [`Monitor`],
//! which only observes (metrics, logs).
//!
//! Both are called from the engine's tasks, so they must return quickly (post to a mailbox,
//! bump a counter) and never block.

use std::time::Duration;

use super::error::EngineError;
use super::outgoing::OutgoingEvent;
use super::record::NumberedEvent;
use super::script::BatchOutcome;
use crate::ids::UserId;

/// The delivery side: what this node's user actors need from the engine.
pub(crate) trait Inbound: Send + Sync + 'static {
    /// Numbered events of `user` from one published batch, in seq order. Batches of one
    /// user arrive in the order Redis numbered them, but one may be missing (pub/sub is at
    /// most once, and a reconnect loses what was published meanwhile): a receiver that sees
    /// a gap in `seq`, or a new epoch, reads the missing events from history.
    fn events(&self, user: &UserId, events: Vec<NumberedEvent>);

    /// A client on some node asked to stop `user`'s run `run_id`, which the node that asked
    /// found owned by this node.
    fn stop_requested(&self, user: UserId, run_id: String);

    /// The subscriber (re)connected and every channel subscribed before is subscribed again.
    /// Events published while it was away were not received: each user's receiver should
    /// compare its position with the stored one and read what it missed.
    fn resubscribed(&self);
}

/// Which part of the engine saw an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Part {
    Publish,
    Subscribe,
    Lease,
    Sweep,
}

impl Part {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Part::Publish => "publish",
            Part::Subscribe => "subscribe",
            Part::Lease => "lease",
            Part::Sweep => "sweep",
        }
    }
}

/// Observes the engine; every method has an empty default.
pub(crate) trait Monitor: Send + Sync + 'static {
    /// A batch of `user`'s `events` was applied, `latency` after it was sent first
    /// (`outcome.seqs` says which of them were numbered).
    fn published(
        &self,
        _user: &UserId,
        _events: &[OutgoingEvent],
        _outcome: &BatchOutcome,
        _latency: Duration,
    ) {
    }

    /// Redis failed `part`; it is retried (with backoff) when [`EngineError::is_transient`].
    fn error(&self, _part: Part, _error: &EngineError) {}

    /// A batch of `events` events of `user` failed with an error a retry would not change,
    /// and was not published.
    fn batch_dropped(&self, _user: &UserId, _events: usize, _error: &EngineError) {}

    /// The subscriber lost its connection.
    fn subscriber_disconnected(&self) {}

    /// This node found its lease gone (it stalled for longer than the lease TTL, or Redis
    /// lost its data): other nodes may have ended its runs with `node_lost`.
    fn lease_lost(&self) {}

    /// This node ended `runs` runs of the dead node `node` with `node_lost`.
    fn node_swept(&self, _node: &str, _runs: usize) {}
}

/// A monitor that observes nothing.
#[cfg(test)]
pub(crate) struct NoMonitor;

#[cfg(test)]
impl Monitor for NoMonitor {}
