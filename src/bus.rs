//! The bus: the one seam every emitted event passes through on its way to a user's actor.
//!
//! Each emitter (an [`crate::AgentRun`]) owns an [`EmitStream`]: an ordered stream of events
//! to one user. The in-process [`LocalBus`] posts each event straight into the user actor's
//! mailbox, found in the directory, while holding the directory's read lock; the registry
//! takes the write lock to unpublish an actor before it retires it, so no event is ever
//! posted into a mailbox that is about to close. When the user has no actor, the event goes
//! to the registry, which decides what becomes of it. A stream that went through the
//! registry goes direct again only once the registry has handled everything the stream sent
//! it, so a later event can never overtake an earlier one on the other path. A multi-node
//! bus (Redis) replaces `LocalBus` here without touching actors.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use actix::{Addr, Message};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::directory::DirectoryReader;
use crate::event::{AgentEvent, RunMeta};
use crate::ids::UserId;
use crate::registry::{PublishToAbsent, Registry};
use crate::stats::ActorStats;

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
    /// How the user's actor cancels the run on `stop_agent` (shared by all its events, so
    /// an actor that first hears of a run mid-way can still stop it).
    pub cancel: Arc<RunStop>,
}

/// A run's stop switch, shared by its emitter and its user's actor. Events carry it by
/// `Arc` (one atomic increment each) and check it with one atomic load; the token is what
/// handler code awaiting [`crate::AgentRun::cancelled`] wakes on.
#[derive(Debug, Default)]
pub(crate) struct RunStop {
    stopped: AtomicBool,
    token: CancellationToken,
}

impl RunStop {
    /// Stops the run (`stop_agent`): nothing more of it is delivered.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Completes once the run is stopped.
    pub(crate) async fn stopped(&self) {
        self.token.cancelled().await
    }
}

/// Where emitted events go. Implementations keep each stream's events in publish order.
pub(crate) trait Bus: Send + Sync + 'static {
    /// Sends `event` along `stream` towards its user's actor.
    fn publish(&self, stream: &EmitStream, event: Published);

    /// Whether the stream's user actor has room for more (its mailbox is under the
    /// configured `max_user_backlog`).
    fn has_room(&self, stream: &EmitStream) -> bool;
}

/// A shared bus handle.
pub(crate) type SharedBus = Arc<dyn Bus>;

/// An ordered stream of events from one emitter to one user.
pub(crate) struct EmitStream {
    user: UserId,
    /// Set while events of this stream may still be in the registry's mailbox.
    via_registry: Mutex<Option<ViaRegistry>>,
}

impl EmitStream {
    pub(crate) fn new(user: UserId) -> Self {
        EmitStream {
            user,
            via_registry: Mutex::new(None),
        }
    }

    pub(crate) fn user(&self) -> &UserId {
        &self.user
    }
}

/// A stream's traffic through the registry: `sent` events so far, of which the registry
/// reports in `handoff` how many it has handled.
struct ViaRegistry {
    handoff: Arc<Handoff>,
    sent: u64,
}

/// What the registry reports back to a stream that went through it.
#[derive(Default)]
pub(crate) struct Handoff {
    handled: AtomicU64,
}

impl Handoff {
    /// Called by the registry after it handled (forwarded or dropped) one event.
    pub(crate) fn record(&self) {
        self.handled.fetch_add(1, Ordering::Release);
    }
}

/// The in-process bus: a mailbox post per event, no registry hop while the user has an actor.
pub(crate) struct LocalBus {
    directory: DirectoryReader,
    registry: Addr<Registry>,
    registry_stats: Arc<ActorStats>,
    max_user_backlog: u64,
}

impl LocalBus {
    pub(crate) fn new(
        directory: DirectoryReader,
        registry: Addr<Registry>,
        registry_stats: Arc<ActorStats>,
        max_user_backlog: u64,
    ) -> Self {
        LocalBus {
            directory,
            registry,
            registry_stats,
            max_user_backlog,
        }
    }
}

impl Bus for LocalBus {
    fn publish(&self, stream: &EmitStream, event: Published) {
        let mut via_registry = stream.via_registry.lock();
        // While the registry still holds some of this stream's events, the rest follow
        // them through the registry; once it has handled all of them, everything earlier
        // is already in the actor's mailbox (or was dropped) and the stream may go direct.
        let drained = via_registry
            .as_ref()
            .is_none_or(|via| via.handoff.handled.load(Ordering::Acquire) == via.sent);
        let event = if drained {
            match self.directory.post(&stream.user, event) {
                Ok(()) => {
                    *via_registry = None;
                    return;
                }
                Err(event) => event,
            }
        } else {
            event
        };
        let via = via_registry.get_or_insert_with(|| ViaRegistry {
            handoff: Arc::default(),
            sent: 0,
        });
        via.sent += 1;
        self.registry_stats.queued(0);
        self.registry.do_send(PublishToAbsent {
            user: stream.user.clone(),
            event,
            handoff: via.handoff.clone(),
        });
    }

    fn has_room(&self, stream: &EmitStream) -> bool {
        let in_registry = stream.via_registry.lock().as_ref().map_or(0, |via| {
            via.sent
                .saturating_sub(via.handoff.handled.load(Ordering::Acquire))
        });
        in_registry + self.directory.backlog(&stream.user) < self.max_user_backlog
    }
}
