//! The user actor: one per user with a socket (or within its resume window), the isolation
//! boundary of agentwire.
//!
//! Everything a user receives passes through this actor, and only this actor: it numbers the
//! user's events (`seq` within an `epoch`), encodes each one once, keeps it in the user's
//! replay buffer, and posts the shared bytes to each of the user's sessions that wants the
//! event's thread. Because every frame to a session leaves from this one mailbox, a resume's
//! replay cannot interleave with live events. It enforces the slow-consumer limit from the
//! sender side: a session whose backlog is over the limit gets nothing more and is closed
//! once it has written what it already had, so no socket ever skips a `seq`. It also owns
//! the user's live runs, so `stop_agent` can only ever reach this user's runs. The registry
//! creates it, attaches and detaches sessions, and retires it.
//!
//! This file holds the actor, its numbering and fan-out, and the registry's messages;
//! `requests` holds its answers to the sessions' client requests (stop, switch, resume).

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::SystemTime;

mod requests;

pub(crate) use requests::{Crash, Resume, StopRun, SwitchThread};

use actix::{Actor, ActorContext, Addr, Context, Handler, Message};

use crate::bus::{Published, RunStop};
use crate::close_code;
use crate::config::Config;
use crate::envelope::{self, EpochField, RunFields};
use crate::event::{AgentEvent, RunMeta};
use crate::ids::{new_epoch, SessionId, UserId};
use crate::metrics::{DropReason, Metrics};
use crate::outbound::{ControlFrame, Frame};
use crate::replay::{ReplayBudget, ReplayBuffer};
use crate::session::{Deliver, Outbound, Outbox, Session, Welcome};
use crate::stats::ActorState;
use crate::stats::ActorStats;
use crate::supervision::{SupervisionKind, SupervisionLog};

/// A session attached to this user.
struct Member {
    id: SessionId,
    /// Everything after the welcome goes to the session through here, in order.
    outbox: Arc<Outbox>,
    stats: Arc<ActorStats>,
    /// `switch_thread`: when set, only this thread's events go to the session.
    thread: Option<String>,
    /// The user's `seq` when the session was welcomed: live events start after it.
    welcome_seq: u64,
    /// The last event `seq` queued to the session.
    last_sent_seq: u64,
    /// Set when the session gets nothing more (slow consumer, or drain): why, for the
    /// drop metrics. Its close is on its way.
    cut_off: Option<DropReason>,
    /// A resume was answered on this socket; later ones get no second replay.
    resumed: bool,
}

/// A run of this user's that has not ended yet (as far as this actor has seen).
struct LiveRun {
    meta: Arc<RunMeta>,
    /// Cancelled by `stop_agent`; from then on the run's events are swallowed.
    cancel: Arc<RunStop>,
    /// The run's envelope fields, encoded once for all its events.
    fields: RunFields,
}

pub(crate) struct User {
    id: UserId,
    /// The numbering epoch, kept encoded once for every event's envelope (`epoch()`).
    epoch_field: EpochField,
    seq: u64,
    sessions: Vec<Member>,
    runs: HashMap<String, LiveRun>,
    replay: ReplayBuffer,
    stats: Arc<ActorStats>,
    heartbeat_interval_ms: u64,
    max_backlog_frames: u64,
    max_backlog_bytes: u64,
    /// Client requests of this user running in handler tasks, shared with every session.
    running_requests: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    supervision: Arc<SupervisionLog>,
}

impl User {
    pub(crate) fn new(
        id: UserId,
        config: &Config,
        budget: Arc<ReplayBudget>,
        stats: Arc<ActorStats>,
        observers: (Arc<Metrics>, Arc<SupervisionLog>),
        running_requests: Arc<AtomicUsize>,
    ) -> Self {
        let (metrics, supervision) = observers;
        User {
            id,
            epoch_field: EpochField::new(&new_epoch()),
            seq: 0,
            // Most users have one socket.
            sessions: Vec::with_capacity(1),
            runs: HashMap::new(),
            replay: ReplayBuffer::new(config.replay_max_events, config.replay_max_age, budget),
            stats,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            max_backlog_frames: config.max_session_backlog_frames,
            max_backlog_bytes: config.max_session_backlog_bytes,
            running_requests,
            metrics,
            supervision,
        }
    }

    /// Numbers and encodes (once) one event of a run this actor knows.
    fn encode(&mut self, meta: &RunMeta, event: &AgentEvent, emitted_at: SystemTime) -> Frame {
        self.seq += 1;
        match self.runs.get(&meta.run_id) {
            Some(run) => {
                envelope::encode(self.seq, &self.epoch_field, &run.fields, emitted_at, event)
            }
            // A run this actor first hears of at its end (after a restart).
            None => envelope::encode(
                self.seq,
                &self.epoch_field,
                &RunFields::new(meta),
                emitted_at,
                event,
            ),
        }
    }

    /// Buffers and fans out one encoded event (numbered `self.seq`); returns its size.
    fn deliver(
        &mut self,
        frame: Frame,
        meta: &Arc<RunMeta>,
        event: &AgentEvent,
        emitted_at: SystemTime,
    ) -> usize {
        let event_type = event.wire_type();
        self.metrics.published(event_type);
        for member in &mut self.sessions {
            if !wants(member, meta) {
                continue;
            }
            if member.cut_off.is_none()
                && over_backlog(member, 1, self.max_backlog_frames, self.max_backlog_bytes)
            {
                cut_off(&self.id, member, &self.supervision);
            }
            if let Some(reason) = member.cut_off {
                self.metrics.dropped(event_type, reason, 1);
                continue;
            }
            member.stats.queued(frame.len());
            member.last_sent_seq = self.seq;
            member.outbox.push(Outbound::Deliver(Deliver {
                frame: frame.clone(),
                event: Some((event_type, emitted_at)),
            }));
        }
        let size = frame.len();
        self.replay.push(self.seq, frame, meta.clone(), emitted_at);
        size
    }

    fn epoch(&self) -> &str {
        self.epoch_field.epoch()
    }

    fn member(&mut self, session: SessionId) -> Option<&mut Member> {
        self.sessions.iter_mut().find(|m| m.id == session)
    }
}

impl Member {
    /// Queues a control frame (not an event) to the session, counted into its backlog.
    fn send_control(&self, frame: Frame) {
        self.stats.queued(frame.len());
        self.outbox.push(Outbound::Deliver(Deliver::control(frame)));
    }
}

/// True when queuing `extra` more frames would put the session over a backlog limit.
fn over_backlog(member: &Member, extra: u64, max_frames: u64, max_bytes: u64) -> bool {
    let (frames, bytes) = member.stats.backlog();
    frames + extra > max_frames || bytes >= max_bytes
}

/// Stops queuing to a session that stopped reading and closes it after what it has.
fn cut_off(user: &UserId, member: &mut Member, supervision: &SupervisionLog) {
    let (frames, bytes) = member.stats.backlog();
    supervision.record(
        SupervisionKind::SlowConsumer,
        format!("session:{}", member.id),
        format!(
            "user:{user}'s socket is {frames} frames ({bytes} bytes) behind; cut off after \
             seq {} and closed with 4001 once it drains",
            member.last_sent_seq
        ),
    );
    member.cut_off = Some(DropReason::SlowConsumer);
    member.stats.set_state(ActorState::CutOff);
    member
        .outbox
        .push(Outbound::Close(close_code::SLOW_CONSUMER));
}

/// Whether a session receives events of this run's thread.
fn wants(member: &Member, meta: &RunMeta) -> bool {
    member.thread.as_deref().is_none_or(|t| t == meta.thread_id)
}

impl Actor for User {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        log::debug!("user:{}: stopped at seq {}", self.id, self.seq);
    }
}

/// Attach a session (from the registry). The user answers with the welcome frame, then,
/// for a resume requested at connect, the replay.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Attach {
    /// This actor's address as the registry shares it (handed on to the session).
    pub user_addr: Arc<Addr<User>>,
    pub session_id: SessionId,
    pub addr: Arc<Addr<Session>>,
    pub stats: Arc<ActorStats>,
    /// `?epoch=&last_seq=` from the upgrade request.
    pub resume: Option<(String, u64)>,
    /// Re-attaching a live socket to a restarted actor: the socket gets `resync_required`
    /// (new epoch, seq 0) instead of a second welcome.
    pub after_restart: bool,
}

impl Handler<Attach> for User {
    type Result = ();

    fn handle(&mut self, msg: Attach, _: &mut Self::Context) {
        let frame = if msg.after_restart {
            ControlFrame::ResyncRequired {
                epoch: self.epoch_field.epoch(),
                seq: self.seq,
            }
            .encode()
        } else {
            ControlFrame::Welcome {
                session_id: msg.session_id.0,
                user_id: self.id.as_str(),
                epoch: self.epoch_field.epoch(),
                seq: self.seq,
                heartbeat_interval_ms: self.heartbeat_interval_ms,
                protocol: crate::outbound::PROTOCOL_VERSION,
            }
            .encode()
        };
        msg.stats.queued(frame.len());
        let outbox = Arc::new(Outbox::default());
        let member = Member {
            id: msg.session_id,
            outbox: outbox.clone(),
            stats: msg.stats,
            thread: None,
            welcome_seq: self.seq,
            last_sent_seq: self.seq,
            cut_off: None,
            resumed: false,
        };
        msg.addr.do_send(Welcome {
            user: msg.user_addr,
            outbox,
            running_requests: self.running_requests.clone(),
            frame,
            resuming: msg.resume.is_some(),
            after_restart: msg.after_restart,
        });
        self.replay.expire(SystemTime::now());
        let replay = msg
            .resume
            .map(|(epoch, last_seq)| self.answer_resume(&member, &epoch, last_seq, self.seq));
        self.sessions.push(member);
        if let Some(replay) = replay {
            self.send_replay(msg.session_id, replay);
        }
    }
}

/// Detach a session (from the registry).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Detach {
    pub session_id: SessionId,
}

impl Handler<Detach> for User {
    type Result = ();

    fn handle(&mut self, msg: Detach, _: &mut Self::Context) {
        self.sessions.retain(|m| m.id != msg.session_id);
    }
}

/// The user's resume window ran out with no socket (from the registry): stop.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Retire;

impl Handler<Retire> for User {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The runtime is shutting down (from the registry): close every socket with 1012 after
/// what was already queued to it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain;

impl Handler<Drain> for User {
    type Result = ();

    fn handle(&mut self, _: Drain, _: &mut Self::Context) {
        for member in &mut self.sessions {
            member.cut_off = Some(DropReason::Draining);
            member.stats.set_state(ActorState::CutOff);
            member
                .outbox
                .push(Outbound::Close(close_code::SERVICE_RESTART));
        }
    }
}

impl Handler<Published> for User {
    type Result = ();

    fn handle(&mut self, msg: Published, _: &mut Self::Context) {
        let run_id = &msg.meta.run_id;
        let mut encoded = 0;
        if msg.cancel.is_stopped() {
            // The client stopped this run and already got its `agent_error` (from this
            // actor, or from the one before it): nothing of the run may follow.
            self.runs.remove(run_id);
            self.metrics
                .dropped(msg.event.wire_type(), DropReason::StoppedRun, 1);
        } else {
            let terminal = msg.event.is_terminal();
            if !terminal && !self.runs.contains_key(run_id) {
                self.runs.insert(
                    run_id.clone(),
                    LiveRun {
                        meta: msg.meta.clone(),
                        cancel: msg.cancel.clone(),
                        fields: RunFields::new(&msg.meta),
                    },
                );
            }
            let frame = self.encode(&msg.meta, &msg.event, msg.emitted_at);
            if terminal {
                self.runs.remove(run_id);
            }
            encoded = self.deliver(frame, &msg.meta, &msg.event, msg.emitted_at);
        }
        self.stats.handled(encoded);
    }
}
