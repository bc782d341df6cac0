//! The in-process engine: every user's stream lives in this process. The embedded default:
//! nothing to install, and an event costs one lock, one encode and one push into the user's
//! actor's inbox.
//!
//! A user has a stream while the registry has them subscribed (while this process has an
//! actor for them): a random epoch, a `seq` counter and a bounded replay buffer. Publishing
//! numbers, encodes and buffers the event and pushes it into the user's actor's inbox, all
//! under the stream's lock, so inbox order is `seq` order; the registry's unsubscribe takes the map's
//! write lock, so once it returns nothing more reaches the old actor. Events for a user with
//! no stream have no socket to go to and are dropped and counted. A new subscription starts
//! a new stream (a new epoch): in process, history does not outlive the user's actor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};

use super::replay::{ReplayBudget, ReplayBuffer};
use super::{
    Delivery, DeliveryTarget, Engine, EngineFuture, EngineStats, HistoryEvent, RunStream,
    StopOutcome, StreamEvent,
};
use crate::envelope::{self, EpochField};
use crate::event::{AgentEvent, RunMeta};
use crate::ids::{new_epoch, UserId};
use crate::metrics::{DropReason, Metrics};

/// How the in-process engine bounds what it keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalLimits {
    /// Events kept per user for resume.
    pub replay_max_events: usize,
    /// How long an event is kept for resume.
    pub replay_max_age: Duration,
    /// Bytes kept for resume over all users.
    pub max_replay_bytes: usize,
    /// Events that may wait in a user actor's inbox before emitters' `ready()` waits.
    pub max_user_backlog: usize,
}

/// The in-process engine.
pub(crate) struct LocalEngine {
    streams: RwLock<HashMap<UserId, Box<UserStream>>>,
    /// Every live run, by run id (random, so unique), for stop requests.
    runs: Mutex<HashMap<Arc<str>, Arc<RunStream>>>,
    budget: Arc<ReplayBudget>,
    limits: LocalLimits,
    metrics: Arc<Metrics>,
    dropped_for_absent_users: AtomicU64,
}

/// A subscribed user's stream.
struct UserStream {
    target: DeliveryTarget,
    state: Mutex<StreamState>,
}

struct StreamState {
    /// The epoch, encoded once for every envelope.
    epoch: EpochField,
    /// The `seq` of the last event.
    seq: u64,
    history: ReplayBuffer,
}

impl LocalEngine {
    pub(crate) fn new(limits: LocalLimits, metrics: Arc<Metrics>) -> Self {
        LocalEngine {
            streams: RwLock::default(),
            runs: Mutex::default(),
            budget: ReplayBudget::new(limits.max_replay_bytes),
            limits,
            metrics,
            dropped_for_absent_users: AtomicU64::new(0),
        }
    }

    /// Numbers, encodes, keeps and delivers one event (the caller holds the stream's lock
    /// and has checked the run may publish it).
    fn append(
        &self,
        stream: &UserStream,
        state: &mut StreamState,
        run: &RunStream,
        event: &AgentEvent,
        emitted_at: SystemTime,
    ) {
        state.seq += 1;
        let seq = state.seq;
        let frame = envelope::encode(seq, &state.epoch, &run.fields, emitted_at, event);
        let event_type = event.wire_type();
        self.metrics.published(event_type);
        state
            .history
            .push(seq, frame.clone(), run.thread_id.clone(), emitted_at);
        stream.target.send(Delivery::Event(StreamEvent {
            seq,
            frame,
            thread_id: run.thread_id.clone(),
            event_type,
            emitted_at,
        }));
    }

    fn forget_run(&self, run: &RunStream) {
        self.runs.lock().remove(run.meta.run_id.as_str());
    }
}

impl Engine for LocalEngine {
    fn open_run(&self, user: UserId, meta: RunMeta) -> Arc<RunStream> {
        let run = Arc::new(RunStream::new(user, meta));
        self.runs
            .lock()
            .insert(run.meta.run_id.as_str().into(), run.clone());
        run
    }

    fn publish(&self, run: &Arc<RunStream>, event: AgentEvent, emitted_at: SystemTime) {
        let terminal = event.is_terminal();
        {
            let streams = self.streams.read();
            let stream = streams.get(&run.user);
            let mut state = stream.map(|s| s.state.lock());
            let may_publish = run.stop.admit(terminal);
            match (stream, state.as_deref_mut()) {
                _ if !may_publish => {
                    self.metrics
                        .dropped(event.wire_type(), DropReason::StoppedRun, 1);
                }
                (Some(stream), Some(state)) => {
                    self.append(stream, state, run, &event, emitted_at);
                }
                _ => {
                    self.dropped_for_absent_users
                        .fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .dropped(event.wire_type(), DropReason::NoUser, 1);
                    log::debug!(
                        "engine: user:{} has no actor here; dropped {} of run {}",
                        run.user,
                        event.wire_type(),
                        run.meta.run_id
                    );
                }
            }
        }
        if terminal {
            self.forget_run(run);
        }
    }

    fn has_room(&self, run: &RunStream) -> bool {
        self.streams
            .read()
            .get(&run.user)
            .is_none_or(|stream| stream.target.inbox.len() < self.limits.max_user_backlog)
    }

    fn wait_for_room(&self, run: &RunStream) -> EngineFuture<()> {
        let inbox = self
            .streams
            .read()
            .get(&run.user)
            .map(|stream| stream.target.inbox.clone());
        let limit = self.limits.max_user_backlog;
        Box::pin(async move {
            if let Some(inbox) = inbox {
                inbox.room(limit).await;
            }
        })
    }

    fn stop(&self, user: &UserId, run_id: &str) -> EngineFuture<StopOutcome> {
        let run = self
            .runs
            .lock()
            .get(run_id)
            .filter(|run| run.user == *user)
            .cloned();
        let outcome = match run {
            Some(run) => {
                let streams = self.streams.read();
                let stream = streams.get(user);
                let mut state = stream.map(|s| s.state.lock());
                if run.stop.try_stop() {
                    if let (Some(stream), Some(state)) = (stream, state.as_deref_mut()) {
                        let event = super::cancelled();
                        self.append(stream, state, &run, &event, SystemTime::now());
                    }
                    drop(state);
                    drop(streams);
                    self.forget_run(&run);
                    StopOutcome::Stopped
                } else {
                    StopOutcome::NotFound
                }
            }
            None => StopOutcome::NotFound,
        };
        Box::pin(std::future::ready(outcome))
    }

    fn subscribe(&self, user: &UserId, target: DeliveryTarget) {
        let epoch = new_epoch();
        let limits = &self.limits;
        let state = StreamState {
            epoch: EpochField::new(&epoch),
            seq: 0,
            history: ReplayBuffer::new(
                limits.replay_max_events,
                limits.replay_max_age,
                self.budget.clone(),
            ),
        };
        let mut streams = self.streams.write();
        // Under the write lock: the position is the first thing the target receives.
        target.send(Delivery::Position {
            epoch: epoch.into(),
            seq: 0,
        });
        streams.insert(
            user.clone(),
            Box::new(UserStream {
                target,
                state: Mutex::new(state),
            }),
        );
    }

    fn unsubscribe(&self, user: &UserId) {
        let removed = self.streams.write().remove(user);
        drop(removed);
    }

    fn history(
        &self,
        user: &UserId,
        epoch: &str,
        after: u64,
        upto: u64,
        partial: bool,
    ) -> EngineFuture<Option<Vec<HistoryEvent>>> {
        let events = self.streams.read().get(user).and_then(|stream| {
            let mut state = stream.state.lock();
            if state.epoch.epoch() != epoch {
                return None;
            }
            state.history.expire(SystemTime::now());
            let after = if partial {
                state.history.partial_start(after, upto)
            } else {
                after
            };
            let events = state.history.range(after, upto)?;
            Some(
                events
                    .map(|e| HistoryEvent {
                        seq: e.seq,
                        frame: e.frame.clone(),
                        thread_id: e.thread_id.clone(),
                    })
                    .collect(),
            )
        });
        Box::pin(std::future::ready(events))
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            dropped_for_absent_users: self.dropped_for_absent_users.load(Ordering::Relaxed),
            history_bytes: self.budget.used() as u64,
        }
    }
}
