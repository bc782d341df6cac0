//! Settling before a drain: when the runtime shuts down, the events already emitted reach
//! the user actors before the actors close their sockets with 1012, as they do on one
//! node, where the engine hands every event to its actor as it numbers it.
//!
//! On Redis an event emitted a moment before the drain may still be in this node's publish
//! queue, in Redis, or between Redis and the user's receiver. Settling waits, within its
//! deadline, for three things in turn: the publish queue to be empty; the subscriber to
//! reach a marker this node publishes to itself (so every message Redis published before
//! it, from any node, was handed to the receivers); and every receiver to have handed
//! what it got to its actor (no position being learned, no gap being repaired, nothing let
//! go and not yet read back). The registry's drain message then queues behind those events
//! in each actor's inbox. Redis being unreachable only costs the deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout_at, Instant};

use super::cluster::Shared;

/// How often settling looks at the receivers.
const POLL: Duration = Duration::from_millis(5);

impl Shared {
    /// Waits, at most `deadline`, until what was published before now has reached the
    /// user actors of this node.
    pub(super) async fn settle(self: Arc<Self>, deadline: Duration) {
        let Some(core) = self.core() else { return };
        let until = Instant::now() + deadline;
        if timeout_at(until, core.publisher().flushed()).await.is_err() {
            log::warn!(
                "redis engine: {} queued event(s) not published before the drain began",
                core.publisher().queued()
            );
            return;
        }
        match timeout_at(until, core.subscriber().sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                log::warn!("redis engine: could not settle before the drain: {error}");
                return;
            }
            Err(_) => {
                log::warn!("redis engine: the subscriber did not settle before the drain");
                return;
            }
        }
        loop {
            let unsettled = self
                .receivers
                .lock()
                .values()
                .filter(|r| !r.is_settled())
                .count();
            if unsettled == 0 {
                return;
            }
            if Instant::now() >= until {
                log::warn!(
                    "redis engine: {unsettled} user(s) still had events on their way when the \
                     drain began"
                );
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
