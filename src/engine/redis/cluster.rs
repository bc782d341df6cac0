//! The Redis engine behind the runtime's [`Engine`] seam: what turns the node's Redis parts
//! (publisher, subscriber, history, stop) into the three sides every engine has.
//!
//! - **Publish.** An event is encoded once on the emitter's thread (everything but its
//!   `seq` and `epoch`, which the publish script adds) and queued for the publisher, under
//!   its run's lock, so a run's events and its stop stay ordered. A full queue (Redis
//!   unreachable or too slow for too long) never blocks the emitter and never drops an event
//!   silently: the event is counted (`events_dropped{reason="engine_unavailable"}`) and
//!   logged, the run is stopped (its handler's `cancelled()` resolves), and once the queue
//!   has room again the run ends on the wire with `agent_error` code `engine_unavailable`.
//! - **Delivery.** Each subscribed user has a receiver (`receiver`), which hands the user's
//!   actor the stream in `seq` order, repairing gaps from history and turning what cannot
//!   be repaired into a new position (`resync_required`), and never posts more than twice
//!   `max_user_backlog` ahead of the actor. Before a drain, `settle` waits for what was
//!   published to reach the actors.
//! - **History** reads a resume's range from the user's stream in Redis, with a time limit:
//!   exactly, or (`partial`) its tail still held, within the same replay window as the
//!   in-process engine (the last `replay_max_events`, none older than `replay_max_age`).
//! - **Stop** finds the run's node in the user's live runs and asks it over its control
//!   channel; the owning node stops the run and publishes its `cancelled` error.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use actix::ArbiterHandle;
use parking_lot::Mutex;

use super::receiver::Receiver;
use super::{
    EnqueueError, Inbound, Monitor, NumberedEvent, OutgoingEvent, RedisConfig, RedisEngine, Step,
};
use crate::engine::{
    DeliveryTarget, Engine, EngineFuture, EngineStats, HistoryEvent, RunStream, StopOutcome,
};
use crate::event::{AgentError, AgentEvent, RunErrorCode, RunMeta};
use crate::ids::UserId;
use crate::metrics::{DropReason, Metrics};

/// How long a resume waits for history before it is answered with `resync_required`.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(3);

/// The Redis engine as the runtime uses it.
pub(crate) struct ClusterEngine {
    shared: Arc<Shared>,
}

/// What the engine's side and its callbacks share.
pub(super) struct Shared {
    pub(super) core: OnceLock<RedisEngine>,
    /// Where the receivers' repairs and the subscriptions run.
    pub(super) arbiter: ArbiterHandle,
    pub(super) receivers: Mutex<HashMap<UserId, Receiver>>,
    /// Source of receiver generations, so a late answer for an older subscription is ignored.
    pub(super) generations: Mutex<u64>,
    /// This node's live runs, by run id, for stop requests from any node.
    pub(super) runs: Mutex<HashMap<Arc<str>, Arc<RunStream>>>,
    pub(super) metrics: Arc<Metrics>,
    /// Each user's events queued for publishing and not yet applied by Redis: an emitter's
    /// `ready()` waits while its user has `max_user_backlog` of them, as it waits for the
    /// user actor's inbox with the in-process engine.
    pub(super) queued: Mutex<HashMap<UserId, usize>>,
    pub(super) max_user_backlog: usize,
    /// How many events a receiver posts ahead of its actor (see `catch_up`).
    pub(super) receiver_limit: u64,
    pub(super) self_ref: Weak<Shared>,
}

impl ClusterEngine {
    /// Starts the node's Redis engine on its own arbiter. Connecting happens in the
    /// background: a Redis that is down at start is retried like one that went down later.
    pub(crate) fn start(
        config: RedisConfig,
        max_user_backlog: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        config.validate().map_err(|e| e.to_string())?;
        let bound = config.node_lost_bound();
        let receiver_limit = super::catch_up::receiver_limit(max_user_backlog, &config);
        let arbiter = actix::Arbiter::new();
        let shared = Arc::new_cyclic(|self_ref| Shared {
            core: OnceLock::new(),
            arbiter: arbiter.handle(),
            receivers: Mutex::default(),
            generations: Mutex::new(0),
            runs: Mutex::default(),
            metrics,
            queued: Mutex::default(),
            max_user_backlog,
            receiver_limit,
            self_ref: self_ref.clone(),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let inbound: Arc<dyn Inbound> = shared.clone();
        let monitor: Arc<dyn Monitor> = shared.clone();
        let spawned = arbiter.spawn_fn(move || {
            let _ = tx.send(RedisEngine::start(config, inbound, monitor));
        });
        if !spawned {
            return Err("the Redis engine's thread did not start".to_owned());
        }
        let core = rx
            .recv()
            .map_err(|_| "the Redis engine's thread stopped".to_owned())?
            .map_err(|e| e.to_string())?;
        log::info!(
            "redis engine: node {} started; a run of a node that dies ends within {:?}",
            core.node_id(),
            bound
        );
        let _ = shared.core.set(core);
        // The arbiter's thread lives as long as the process; its handle is kept in `shared`.
        std::mem::forget(arbiter);
        Ok(ClusterEngine { shared })
    }
}

#[cfg(test)]
impl ClusterEngine {
    /// The engine's shared state, for the tests of the parts that work on it.
    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Shared {
    /// Whether `user`'s emitters on this node may go on: the user's own share of the
    /// publish queue; the user's actor on this node, as the in-process engine bounds it (its
    /// inbox, and a receiver that let events go and has not read them back yet); and the
    /// node's queue, shared by every emitter: past half full, emitters that await `ready()`
    /// wait, and the other half takes what they emit between two checks.
    fn has_room(&self, user: &UserId) -> bool {
        let user_queued = self.queued.lock().get(user).copied().unwrap_or(0);
        let actor_behind = self.receivers.lock().get(user).is_some_and(|r| {
            r.behind.is_some() || r.actor_backlog() >= self.max_user_backlog as u64
        });
        user_queued < self.max_user_backlog
            && !actor_behind
            && self
                .core()
                .is_none_or(|core| core.publisher().has_headroom())
    }

    pub(super) fn core(&self) -> Option<&RedisEngine> {
        self.core.get()
    }

    /// Queues one event of `run` (the caller holds the run's lock and checked its state).
    fn enqueue(self: &Arc<Self>, run: &Arc<RunStream>, event: &AgentEvent, at: SystemTime) {
        let Some(core) = self.core() else { return };
        let outgoing = OutgoingEvent::new(run.user.clone(), &run.meta, &run.fields, at, event);
        match self.push(core, outgoing) {
            Ok(()) => {}
            Err(EnqueueError::Full(_) | EnqueueError::Closed(_)) => {
                self.refused(run, event);
            }
        }
    }

    /// The publisher refused an event: count it, stop the run, and end it on the wire as
    /// soon as the queue has room again.
    fn refused(self: &Arc<Self>, run: &Arc<RunStream>, event: &AgentEvent) {
        self.metrics
            .dropped(event.wire_type(), DropReason::EngineUnavailable, 1);
        log::warn!(
            "redis engine: the publish queue is full; dropped {} of run {} of user:{}, and \
             the run is stopped",
            event.wire_type(),
            run.meta.run_id,
            run.user
        );
        let terminal = event.is_terminal();
        if !terminal && !run.stop.try_stop() {
            return;
        }
        let this = self.clone();
        let run = run.clone();
        self.arbiter.spawn(async move {
            let Some(core) = this.core() else { return };
            let error = AgentEvent::Error(AgentError {
                code: RunErrorCode::EngineUnavailable,
                message: "the server could not publish this run's events".to_owned(),
            });
            let mut outgoing = OutgoingEvent::new(
                run.user.clone(),
                &run.meta,
                &run.fields,
                SystemTime::now(),
                &error,
            );
            outgoing.step = Step::End;
            loop {
                core.publisher().room(outgoing.size()).await;
                match this.push(core, outgoing) {
                    Ok(()) => break,
                    Err(EnqueueError::Full(back)) => outgoing = *back,
                    Err(EnqueueError::Closed(back)) => {
                        log::warn!(
                            "redis engine: shutting down; run {} of user:{} ends unpublished",
                            back.run_id,
                            back.user
                        );
                        break;
                    }
                }
            }
            this.forget_run(&run);
        });
    }

    /// Queues one event for publishing, counting it as its user's.
    fn push(&self, core: &RedisEngine, outgoing: OutgoingEvent) -> Result<(), EnqueueError> {
        // Counted before it is queued: the publisher may apply it (and uncount it) at once.
        let user = outgoing.user.clone();
        *self.queued.lock().entry(user.clone()).or_insert(0) += 1;
        let queued = core.publisher().enqueue(outgoing);
        if queued.is_err() {
            self.unqueued(&user, 1);
        }
        queued
    }

    /// `events` of `user`'s queued events left the queue (applied, or refused for good).
    fn unqueued(&self, user: &UserId, events: usize) {
        let mut queued = self.queued.lock();
        if let Some(count) = queued.get_mut(user) {
            *count = count.saturating_sub(events);
            if *count == 0 {
                queued.remove(user);
            }
        }
    }

    fn forget_run(&self, run: &RunStream) {
        self.runs.lock().remove(run.meta.run_id.as_str());
    }
}

impl Inbound for Shared {
    fn events(&self, user: &UserId, events: Vec<NumberedEvent>) {
        // The callbacks get `&self`; the repairs they start need the `Arc`.
        if let Some(this) = self.this() {
            this.accept(user, events);
        }
    }

    fn stop_requested(&self, user: UserId, run_id: String) {
        let run = self
            .runs
            .lock()
            .get(run_id.as_str())
            .filter(|run| run.user == user)
            .cloned();
        let (Some(run), Some(this)) = (run, self.this()) else {
            return;
        };
        let _order = run.order.lock();
        if run.stop.try_stop() {
            let error = crate::engine::cancelled();
            let mut outgoing =
                OutgoingEvent::new(user, &run.meta, &run.fields, SystemTime::now(), &error);
            outgoing.step = Step::End;
            if let Some(core) = this.core() {
                if this.push(core, outgoing).is_err() {
                    this.refused(&run, &error);
                }
            }
            this.forget_run(&run);
        }
    }

    fn resubscribed(&self) {
        let Some(this) = self.this() else { return };
        let users: Vec<(UserId, u64)> = self
            .receivers
            .lock()
            .iter()
            .filter(|(_, r)| r.position.is_some())
            .map(|(user, r)| (user.clone(), r.generation))
            .collect();
        for (user, generation) in users {
            this.locate(user, generation);
        }
    }
}

impl Monitor for Shared {
    fn error(&self, part: super::Part, error: &super::EngineError) {
        self.metrics.engine_error(part.name());
        log::debug!("redis engine: {}: {error}", part.name());
    }

    fn published(
        &self,
        user: &UserId,
        events: &[OutgoingEvent],
        outcome: &super::BatchOutcome,
        latency: Duration,
    ) {
        self.metrics.engine_published(latency.as_secs_f64());
        // Numbered by this node (the script drops the late events of a run already ended
        // with `node_lost`): the in-process engine counts at the same step.
        for (event, seq) in events.iter().zip(&outcome.seqs) {
            if seq.is_some() {
                self.metrics.published(event.wire_type);
            }
        }
        self.unqueued(user, events.len());
    }

    fn batch_dropped(&self, user: &UserId, events: usize, error: &super::EngineError) {
        self.unqueued(user, events);
        self.metrics
            .dropped("unknown", DropReason::EngineUnavailable, events as u64);
        log::error!("redis engine: Redis refused {events} event(s) of user:{user}: {error}");
    }

    fn subscriber_disconnected(&self) {
        log::warn!("redis engine: lost the pub/sub connection; reconnecting");
    }
}

impl Shared {
    /// Runs `work` on the engine's thread, where its connections live, and answers with its
    /// result (or `fallback` when the engine is gone).
    fn on_engine<T, F, Fut>(self: &Arc<Self>, fallback: T, work: F) -> EngineFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        self.arbiter.spawn(async move {
            let _ = tx.send(work(this).await);
        });
        Box::pin(async move { rx.await.unwrap_or(fallback) })
    }

    /// The `Arc` this callback target lives in (the engine keeps one while it runs).
    fn this(&self) -> Option<Arc<Shared>> {
        self.self_ref.upgrade()
    }
}

impl Engine for ClusterEngine {
    fn open_run(&self, user: UserId, meta: RunMeta) -> Arc<RunStream> {
        let run = Arc::new(RunStream::new(user, meta));
        self.shared
            .runs
            .lock()
            .insert(run.meta.run_id.as_str().into(), run.clone());
        run
    }

    fn publish(&self, run: &Arc<RunStream>, event: AgentEvent, emitted_at: SystemTime) {
        let terminal = event.is_terminal();
        {
            let _order = run.order.lock();
            let may_publish = run.stop.admit(terminal);
            if may_publish {
                self.shared.enqueue(run, &event, emitted_at);
            } else {
                self.shared
                    .metrics
                    .dropped(event.wire_type(), DropReason::StoppedRun, 1);
            }
        }
        if terminal {
            self.shared.forget_run(run);
        }
    }

    fn has_room(&self, run: &RunStream) -> bool {
        self.shared.has_room(&run.user)
    }

    /// Checks again every millisecond: room comes back when Redis answers, which this
    /// side of the engine is not told of one user at a time.
    fn wait_for_room(&self, run: &RunStream) -> EngineFuture<()> {
        let (shared, user) = (self.shared.clone(), run.user.clone());
        Box::pin(async move {
            while !shared.has_room(&user) {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
    }

    fn stop(&self, user: &UserId, run_id: &str) -> EngineFuture<StopOutcome> {
        let (user, run_id) = (user.clone(), run_id.to_owned());
        self.shared
            .on_engine(StopOutcome::Unavailable, move |shared| async move {
                let Some(core) = shared.core() else {
                    return StopOutcome::Unavailable;
                };
                match core.stop(&user, &run_id).await {
                    Ok(super::StopOutcome::Sent {
                        delivered: true, ..
                    }) => StopOutcome::Stopped,
                    // The owning node is not listening now (it is reconnecting, or dead, and
                    // then its runs end with node_lost): the client may ask again.
                    Ok(super::StopOutcome::Sent {
                        delivered: false, ..
                    }) => StopOutcome::Unavailable,
                    Ok(super::StopOutcome::NotFound) => StopOutcome::NotFound,
                    Err(error) => {
                        log::warn!("redis engine: stop of run {run_id} of user:{user}: {error}");
                        StopOutcome::Unavailable
                    }
                }
            })
    }

    fn subscribe(&self, user: &UserId, target: DeliveryTarget) {
        let generation = {
            let mut generations = self.shared.generations.lock();
            *generations += 1;
            *generations
        };
        self.shared
            .receivers
            .lock()
            .insert(user.clone(), Receiver::new(target, generation));
        let (shared, user) = (self.shared.clone(), user.clone());
        self.shared.arbiter.spawn(async move {
            if let Some(core) = shared.core() {
                // A subscription that fails now is made again on reconnect; `locate` then
                // repeats until Redis answers.
                let _ = core.subscriber().subscribe(&user).await;
            }
            shared.locate(user, generation);
        });
    }

    fn unsubscribe(&self, user: &UserId) {
        let removed = self.shared.receivers.lock().remove(user);
        drop(removed);
        let (shared, user) = (self.shared.clone(), user.clone());
        self.shared.arbiter.spawn(async move {
            let subscribed_again = shared.receivers.lock().contains_key(&user);
            if let (Some(core), false) = (shared.core(), subscribed_again) {
                let _ = core.subscriber().unsubscribe(&user).await;
            }
        });
    }

    fn history(
        &self,
        user: &UserId,
        epoch: &str,
        after: u64,
        upto: u64,
        partial: bool,
    ) -> EngineFuture<Option<Vec<HistoryEvent>>> {
        let (user, epoch) = (user.clone(), epoch.to_owned());
        self.shared.on_engine(None, move |shared| async move {
            let core = shared.core()?;
            let replay = core.replay(&user, &epoch, (after, upto), partial);
            let read = tokio::time::timeout(HISTORY_TIMEOUT, replay).await;
            let events = match read {
                Ok(Ok(events)) => events,
                Ok(Err(error)) => {
                    log::warn!("redis engine: history of user:{user}: {error}");
                    None
                }
                Err(_) => {
                    log::warn!("redis engine: history of user:{user} timed out");
                    None
                }
            };
            events.map(|events| {
                events
                    .into_iter()
                    .map(|event| HistoryEvent {
                        seq: event.seq,
                        frame: event.frame,
                        thread_id: Arc::from(&*event.thread_id),
                    })
                    .collect()
            })
        })
    }

    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn node_id(&self) -> Option<&str> {
        self.shared.core().map(RedisEngine::node_id)
    }

    fn settle(&self, deadline: Duration) -> EngineFuture<()> {
        self.shared
            .on_engine((), move |shared| shared.settle(deadline))
    }

    fn shutdown(&self, deadline: Duration) -> EngineFuture<()> {
        self.shared.on_engine((), move |shared| async move {
            if let Some(core) = shared.core() {
                let unpublished = core.shutdown(deadline).await;
                if unpublished > 0 {
                    log::warn!(
                        "redis engine: {unpublished} event(s) were still unpublished at shutdown"
                    );
                }
            }
        })
    }
}
