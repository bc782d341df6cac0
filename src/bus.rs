//! The bus: the one seam every emitted event passes through on its way to a user's actor.
//!
//! Each emitter (an [`crate::AgentRun`]) owns an [`EmitStream`]: an ordered stream of events
//! to one user. The in-process [`LocalBus`] posts each event straight to the user's actor,
//! found in the directory, and never through the registry's mailbox while the actor exists.
//! When the user has no actor, the event goes to the registry, which decides what becomes of
//! it. A stream that went through the registry switches back to the direct path only once the
//! registry has handled everything the stream sent it, so a later event can never overtake
//! an earlier one on the other path. A multi-node bus (Redis) replaces `LocalBus` here
//! without touching actors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use actix::{Addr, Message};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::directory::DirectoryReader;
use crate::event::{AgentEvent, RunMeta};
use crate::ids::UserId;
use crate::registry::{PublishToAbsent, Registry};
use crate::user::User;

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
    pub cancel: CancellationToken,
}

/// Where emitted events go. Implementations keep each stream's events in publish order.
pub(crate) trait Bus: Send + Sync + 'static {
    /// Sends `event` along `stream` towards its user's actor.
    fn publish(&self, stream: &EmitStream, event: Published);
}

/// A shared bus handle.
pub(crate) type SharedBus = Arc<dyn Bus>;

/// An ordered stream of events from one emitter to one user.
pub(crate) struct EmitStream {
    user: UserId,
    /// How the stream reaches its user; `None` until the first event, or after the actor
    /// it used went away (then the directory is asked again).
    route: Mutex<Option<Route>>,
}

impl EmitStream {
    pub(crate) fn new(user: UserId) -> Self {
        EmitStream {
            user,
            route: Mutex::new(None),
        }
    }

    pub(crate) fn user(&self) -> &UserId {
        &self.user
    }
}

/// How a stream currently reaches its user.
enum Route {
    /// Straight into the user actor's mailbox.
    Direct(Addr<User>),
    /// Through the registry: `sent` events so far; the registry reports in `handoff` how
    /// many it handled and to which actor it posted the last one.
    ViaRegistry { handoff: Arc<Handoff>, sent: u64 },
}

/// What the registry reports back to a stream that went through it.
#[derive(Default)]
pub(crate) struct Handoff {
    handled: AtomicU64,
    forwarded_to: Mutex<Option<Addr<User>>>,
}

impl Handoff {
    /// Called by the registry after it handled one event of the stream: `to` is the actor
    /// it posted the event to, or `None` when it dropped it.
    pub(crate) fn record(&self, to: Option<&Addr<User>>) {
        *self.forwarded_to.lock() = to.cloned();
        self.handled.fetch_add(1, Ordering::Release);
    }
}

/// The in-process bus: a mailbox post per event, no registry hop while the user has an actor.
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

impl LocalBus {
    /// The route for a stream with no usable route: the user's actor, or the registry.
    fn look_up(&self, user: &UserId) -> Route {
        match self.directory.get(user) {
            Some(addr) if addr.connected() => Route::Direct(addr),
            _ => Route::ViaRegistry {
                handoff: Arc::default(),
                sent: 0,
            },
        }
    }
}

impl Bus for LocalBus {
    fn publish(&self, stream: &EmitStream, event: Published) {
        let mut slot = stream.route.lock();
        let kept = match slot.take() {
            // A stream that went through the registry goes direct again once the registry
            // has handled all it sent and posted the last of it to a live actor: everything
            // earlier is then already in that actor's mailbox, ahead of what follows.
            Some(Route::ViaRegistry { handoff, sent }) => {
                if handoff.handled.load(Ordering::Acquire) == sent {
                    let forwarded_to = handoff.forwarded_to.lock().take();
                    forwarded_to.map(Route::Direct)
                } else {
                    Some(Route::ViaRegistry { handoff, sent })
                }
            }
            other => other,
        };
        let mut route = match kept {
            Some(Route::Direct(addr)) if !addr.connected() => self.look_up(&stream.user),
            Some(route) => route,
            None => self.look_up(&stream.user),
        };
        match &mut route {
            Route::Direct(addr) => addr.do_send(event),
            Route::ViaRegistry { handoff, sent } => {
                *sent += 1;
                self.registry.do_send(PublishToAbsent {
                    user: stream.user.clone(),
                    event,
                    handoff: handoff.clone(),
                });
            }
        }
        *slot = Some(route);
    }
}
