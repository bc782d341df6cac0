//! The engine: the one seam between the code that emits events and the user actors that
//! deliver them, and the keeper of every user's stream (its numbering and its history).
//!
//! It has three sides, as a broker has in any pub/sub system:
//!
//! - **Publish** ([`Engine::publish`], [`Engine::stop`], [`Engine::has_room`]): what emitters
//!   use. An [`crate::AgentRun`] holds a [`RunStream`] (its user, its envelope fields
//!   encoded once, its stop switch) and publishes each event through it; the engine numbers
//!   the event within the user's stream (`seq` in an `epoch`), encodes it once, keeps it in
//!   the user's history and hands it to the user's actor. A stop is a request to the engine,
//!   which ends the run wherever it runs, so no code outside the engine shares a run's stop
//!   flag with the actors.
//! - **Delivery** ([`Engine::subscribe`], [`Engine::unsubscribe`]): what the registry uses. It
//!   subscribes a user while this node has an actor for them, with a [`DeliveryTarget`]; the
//!   engine then sends that target a [`Delivery::Position`] (where the stream stands) and
//!   every later event in order, with no gap: a stream the engine cannot continue exactly
//!   (its history was lost) is announced by a new `Position`, never by a skipped `seq`.
//! - **History** ([`Engine::history`]): what a resume reads. It answers with every event of a
//!   range, or with nothing when the range is no longer held in full: never part of it.
//!
//! The engine imports nothing of the actors above it: a target is a queue (the user actor's
//! [`Inbox`]) and a counter, as centrifuge's `Node` registers itself as its broker's event
//! handler.
//! [`local::LocalEngine`] keeps streams in process (the embedded default, nothing to
//! install); a second engine implements the same trait and touches nothing on the other side.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::burst_queue::BurstQueue;
use crate::envelope::RunFields;
use crate::event::{AgentEvent, RunMeta};
use crate::ids::UserId;
use crate::outbound::Frame;
use crate::stats::ActorStats;

pub(crate) mod local;
#[cfg(feature = "redis")]
pub(crate) mod redis;

#[cfg(feature = "redis")]
pub(crate) use self::redis::cluster::ClusterEngine;
pub(crate) mod replay;

/// A boxed future an engine answers with (an in-process engine answers at once).
pub(crate) type EngineFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A shared engine handle.
pub(crate) type SharedEngine = Arc<dyn Engine>;

/// What every engine does. See the module comment for the three sides.
pub(crate) trait Engine: Send + Sync + 'static {
    /// Registers a new run of `user`; its events are then published through the returned
    /// stream, and [`Engine::stop`] can find it until its terminal event.
    fn open_run(&self, user: UserId, meta: RunMeta) -> Arc<RunStream>;

    /// Numbers, keeps and delivers one event of `run`. Never blocks. Events of one run are
    /// numbered in the order they are published; nothing of a stopped run is published.
    fn publish(&self, run: &Arc<RunStream>, event: AgentEvent, emitted_at: SystemTime);

    /// Whether `run`'s user can take more events now (the emitter's [`crate::AgentRun::ready`]
    /// waits while this is false). It turns false early enough that what emitters publish
    /// between two checks still fits.
    fn has_room(&self, run: &RunStream) -> bool;

    /// Resolves once [`Engine::has_room`] would be true (the emitter's
    /// [`crate::AgentRun::ready`] awaits it when it is not).
    fn wait_for_room(&self, run: &RunStream) -> EngineFuture<()>;

    /// Stops `user`'s run `run_id`: its `agent_error` (code `cancelled`) is published, and
    /// nothing of it follows. `NotFound` when `user` has no such live run; a user can never
    /// reach another user's run.
    fn stop(&self, user: &UserId, run_id: &str) -> EngineFuture<StopOutcome>;

    /// Starts delivering `user`'s stream to `target`: first a [`Delivery::Position`], then
    /// every later event. Replaces an earlier subscription of the same user.
    fn subscribe(&self, user: &UserId, target: DeliveryTarget);

    /// Stops delivering `user`'s stream: once this returns, nothing more reaches the old
    /// target.
    fn unsubscribe(&self, user: &UserId);

    /// The events of `user`'s stream in `epoch` with `after < seq <= upto`, or `None` when
    /// the engine no longer holds every one of them (or the epoch is not the stream's).
    /// With `partial`, when the oldest of them are gone, the ones from the oldest event
    /// still held on (a contiguous tail ending at `upto`, possibly empty).
    fn history(
        &self,
        user: &UserId,
        epoch: &str,
        after: u64,
        upto: u64,
        partial: bool,
    ) -> EngineFuture<Option<Vec<HistoryEvent>>>;

    /// Counters for the supervision tree and the metrics.
    fn stats(&self) -> EngineStats;

    /// The engine's name, as the supervision tree shows it (`local`, `redis`).
    fn kind(&self) -> &'static str;

    /// This node's id among the nodes that share the engine's store, as the supervision
    /// tree names the node; `None` for an engine of one process.
    fn node_id(&self) -> Option<&str> {
        None
    }

    /// The runtime is about to drain its sockets: hand this node's user actors, within
    /// `deadline`, every event published before now, so the drain's closes queue behind
    /// them. The in-process engine hands each event over as it numbers it: nothing to do.
    fn settle(&self, _deadline: std::time::Duration) -> EngineFuture<()> {
        Box::pin(std::future::ready(()))
    }

    /// The runtime is shutting down (its sockets are drained): publish what is still queued,
    /// within `deadline`, and leave. The in-process engine has nothing to do.
    fn shutdown(&self, _deadline: std::time::Duration) -> EngineFuture<()> {
        Box::pin(std::future::ready(()))
    }
}

/// The engine's own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EngineStats {
    /// Events emitted for users this node has no actor for, which no socket could receive.
    pub dropped_for_absent_users: u64,
    /// Bytes of history held in this process.
    pub history_bytes: u64,
}

/// Where a user's stream goes: the user actor's inbox, and the actor's counters (the
/// engine counts what it queues, so emitters can see the backlog).
#[derive(Clone)]
pub(crate) struct DeliveryTarget {
    pub inbox: Arc<Inbox>,
    pub stats: Arc<ActorStats>,
}

impl DeliveryTarget {
    pub(crate) fn send(&self, delivery: Delivery) {
        self.stats.queued(0);
        self.inbox.push(delivery);
    }
}

/// A user actor's inbox: the user's stream, in order, taken a burst at a time.
pub(crate) type Inbox = BurstQueue<Delivery>;

/// What the engine hands a subscribed user actor, in stream order.
pub(crate) enum Delivery {
    /// Where the stream stands: the `epoch`, and the `seq` of its last event. Sent first on
    /// every subscription, and again whenever the stream cannot be continued exactly.
    Position { epoch: Arc<str>, seq: u64 },
    /// The next event (`seq` one more than the last delivered).
    Event(StreamEvent),
}

/// One numbered, encoded event of a user's stream.
pub(crate) struct StreamEvent {
    pub seq: u64,
    /// The encoded envelope, shared by every socket.
    pub frame: Frame,
    /// The event's thread (sockets may filter on it).
    pub thread_id: Arc<str>,
    pub event_type: &'static str,
    /// When the application emitted it (the wire `timestamp`).
    pub emitted_at: SystemTime,
}

/// One event read back from a user's history.
#[derive(Clone)]
pub(crate) struct HistoryEvent {
    pub seq: u64,
    pub frame: Frame,
    pub thread_id: Arc<str>,
}

/// The answer to a stop request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopOutcome {
    /// The run was live and is now stopped; its `agent_error` is on its way.
    Stopped,
    /// The user has no such live run.
    NotFound,
    /// The engine could not find out (its store is unreachable); the client may retry.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Unavailable,
}

/// One run's side of the publish path, shared by its emitter and the engine.
pub(crate) struct RunStream {
    pub user: UserId,
    pub meta: RunMeta,
    /// The thread, shared with every event of the run.
    pub thread_id: Arc<str>,
    /// The run's fixed envelope fields, encoded once.
    pub fields: RunFields,
    pub stop: RunStop,
    /// Held by an engine that has no per-user lock of its own while it checks the run's
    /// state and queues one of its events, so a stop cannot slip between the two.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub order: parking_lot::Mutex<()>,
}

impl RunStream {
    pub(crate) fn new(user: UserId, meta: RunMeta) -> Self {
        RunStream {
            user,
            thread_id: meta.thread_id.as_str().into(),
            fields: RunFields::new(&meta),
            meta,
            stop: RunStop::default(),
            order: parking_lot::Mutex::new(()),
        }
    }
}

/// The `agent_error` that ends a run the client stopped.
pub(crate) fn cancelled() -> AgentEvent {
    AgentEvent::Error(crate::event::AgentError {
        code: crate::event::RunErrorCode::Cancelled,
        message: "stopped by the client".to_owned(),
    })
}

/// A run's life as the engine sees it: live, then either stopped (by a stop request) or
/// ended (its terminal event was published), exactly once. The engine moves it under the
/// user's stream lock, so a run's events and its stop are ordered: nothing of a stopped run
/// is numbered after its `cancelled` error, and a run that ended cannot be stopped.
/// Emitters read it with one atomic load; handler code awaiting
/// [`crate::AgentRun::cancelled`] wakes on its token.
#[derive(Debug, Default)]
pub(crate) struct RunStop {
    state: AtomicU8,
    token: CancellationToken,
}

const LIVE: u8 = 0;
const STOPPED: u8 = 1;
const ENDED: u8 = 2;

impl RunStop {
    /// Live to stopped (and wakes whoever awaits it); false when it had stopped or ended.
    pub(crate) fn try_stop(&self) -> bool {
        let stopped = self
            .state
            .compare_exchange(LIVE, STOPPED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if stopped {
            self.token.cancel();
        }
        stopped
    }

    /// Live to ended (its terminal event is being published); false when it had stopped.
    pub(crate) fn try_end(&self) -> bool {
        self.state
            .compare_exchange(LIVE, ENDED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether an event may be published: any event of a live run, and its terminal event
    /// once (which ends it). The caller holds the lock that orders the run's events.
    pub(crate) fn admit(&self, terminal: bool) -> bool {
        if terminal {
            self.try_end()
        } else {
            self.is_live()
        }
    }

    /// Neither stopped nor ended.
    pub(crate) fn is_live(&self) -> bool {
        self.state.load(Ordering::Acquire) == LIVE
    }

    /// Stopped by a stop request.
    pub(crate) fn is_stopped(&self) -> bool {
        self.state.load(Ordering::Acquire) == STOPPED
    }

    /// Completes once the run is stopped.
    pub(crate) async fn stopped(&self) {
        self.token.cancelled().await
    }
}
