//! The bus: the one seam every emitted event passes through on its way to a user's actor.
//!
//! [`crate::AgentRun`] hands each event to a [`Bus`]; the in-process [`LocalBus`] finds the
//! user's actor in the directory and posts the event to its mailbox, or, when the user has
//! no actor, hands it to the registry (which decides what happens to events for users who are
//! not connected). A multi-node bus (Redis) replaces `LocalBus` here without touching actors.

use std::sync::Arc;
use std::time::SystemTime;

use actix::{Addr, Message};
use tokio_util::sync::CancellationToken;

use crate::directory::DirectoryReader;
use crate::event::{AgentEvent, RunMeta};
use crate::ids::UserId;
use crate::registry::{PublishToAbsent, Registry};

/// One event on its way to a user's actor, not yet numbered.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Published {
    /// The run the event belongs to.
    pub meta: Arc<RunMeta>,
    /// The event.
    pub event: AgentEvent,
    /// When the application emitted it (the wire `timestamp`).
    pub emitted_at: SystemTime,
    /// With `agent_started` only: how the user's actor cancels the run on `stop_agent`.
    pub cancel: Option<CancellationToken>,
}

/// Where emitted events go. Implementations must keep each emitter's events in the order it
/// published them.
pub(crate) trait Bus: Send + Sync + 'static {
    /// Sends `event` towards `user`'s actor.
    fn publish(&self, user: &UserId, event: Published);
}

/// The in-process bus: a directory read and a mailbox post per event, no registry hop.
pub(crate) struct LocalBus {
    directory: DirectoryReader,
    registry: Addr<Registry>,
}

impl LocalBus {
    pub(crate) fn new(directory: DirectoryReader, registry: Addr<Registry>) -> Self {
        LocalBus {
            directory,
            registry,
        }
    }
}

impl Bus for LocalBus {
    fn publish(&self, user: &UserId, event: Published) {
        match self.directory.get(user) {
            // Posting to the user's mailbox keeps one emitter's events in order. The
            // registry, when it creates a user's actor, posts the events it holds before it
            // publishes the actor in the directory, so order holds across that switch too.
            Some(addr) if addr.connected() => addr.do_send(event),
            _ => self.registry.do_send(PublishToAbsent {
                user: user.clone(),
                event,
            }),
        }
    }
}

/// A shared bus handle.
pub(crate) type SharedBus = Arc<dyn Bus>;
