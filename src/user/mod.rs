//! The user actor: one per user with a socket (or within its resume window), the isolation
//! boundary of agentwire.
//!
//! Everything a user receives passes through this actor, and only this actor: the engine
//! hands it the user's stream (numbered, encoded events, in `seq` order) through its inbox,
//! which it takes a burst at a time, and it pushes the shared bytes into the outbox of each
//! of the user's sessions that wants the event's thread. Because every frame to a session
//! leaves from this one actor, and the actor leaves its inbox alone while a resume waits for
//! its history, a resume's replay cannot interleave with live events. It enforces the slow-consumer limit from the sender side: a session whose
//! backlog is over the limit gets nothing more and is closed once it has written what it
//! already had, so no socket ever skips a `seq`. The registry creates it, subscribes it to
//! the user's stream, attaches and detaches sessions, and retires it.
//!
//! This file holds the actor, its fan-out, and the registry's messages; `requests` holds
//! its answers to the sessions' client requests (stop, switch, resume).

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::SystemTime;

mod requests;

pub(crate) use requests::{Crash, Resume, StopRun, SwitchThread};

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message, StreamHandler};

use crate::burst_queue::{Burst, Bursts};
use crate::close_code;
use crate::config::Config;
use crate::engine::{Delivery, Inbox, SharedEngine, StreamEvent};
use crate::ids::{SessionId, UserId};
use crate::metrics::{DropReason, Metrics};
use crate::outbound::{ControlFrame, Frame};
use crate::session::{Deliver, EventStamp, Outbound, Outbox, Session, Welcome};
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

pub(crate) struct User {
    id: UserId,
    /// Where the user's stream stands: its epoch and the `seq` of the last event this actor
    /// received. `None` until the engine's first `Position`; attaches wait for it.
    position: Option<(Arc<str>, u64)>,
    /// Attaches that arrived before the position.
    waiting: Vec<Attach>,
    sessions: Vec<Member>,
    engine: SharedEngine,
    /// The user's stream from the engine, taken a burst at a time into `burst`.
    inbox: Arc<Inbox>,
    burst: VecDeque<Delivery>,
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
        engine: SharedEngine,
        inbox: Arc<Inbox>,
        stats: Arc<ActorStats>,
        observers: (Arc<Metrics>, Arc<SupervisionLog>),
        running_requests: Arc<AtomicUsize>,
    ) -> Self {
        let (metrics, supervision) = observers;
        User {
            id,
            position: None,
            waiting: Vec::new(),
            // Most users have one socket.
            sessions: Vec::with_capacity(1),
            engine,
            inbox,
            burst: VecDeque::new(),
            stats,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            max_backlog_frames: config.max_session_backlog_frames,
            max_backlog_bytes: config.max_session_backlog_bytes,
            running_requests,
            metrics,
            supervision,
        }
    }

    /// Fans one event out to the sessions that want it (`now`: when this burst was taken
    /// from the inbox, for the `stage-times` feature); returns its size.
    #[cfg_attr(not(feature = "stage-times"), allow(unused_variables))]
    fn deliver(&mut self, event: StreamEvent, now: SystemTime) -> usize {
        let event_type = event.event_type;
        #[cfg(feature = "stage-times")]
        self.metrics.waited(
            crate::metrics::Stage::Inbox,
            now.duration_since(event.emitted_at).unwrap_or_default(),
        );
        for member in &mut self.sessions {
            if !wants(member, &event.thread_id) {
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
            member.stats.queued(event.frame.len());
            member.last_sent_seq = event.seq;
            member.outbox.push(Outbound::Deliver(Deliver {
                frame: event.frame.clone(),
                event: Some(EventStamp {
                    event_type,
                    emitted_at: event.emitted_at,
                    #[cfg(feature = "stage-times")]
                    queued_at: now,
                }),
            }));
        }
        event.frame.len()
    }

    /// The stream's epoch and last `seq` (the position is known once sessions are attached).
    fn epoch(&self) -> &str {
        self.position.as_ref().map_or("", |(epoch, _)| epoch)
    }

    fn seq(&self) -> u64 {
        self.position.as_ref().map_or(0, |(_, seq)| *seq)
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

/// Whether a session receives events of this thread.
fn wants(member: &Member, thread_id: &str) -> bool {
    member.thread.as_deref().is_none_or(|t| t == thread_id)
}

impl Actor for User {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.add_stream(Bursts(self.inbox.clone()));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        log::debug!("user:{}: stopped at seq {}", self.id, self.seq());
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

    fn handle(&mut self, msg: Attach, ctx: &mut Self::Context) {
        if self.position.is_none() {
            self.waiting.push(msg);
            return;
        }
        self.attach(msg, ctx);
    }
}

impl User {
    fn attach(&mut self, msg: Attach, ctx: &mut Context<Self>) {
        let (epoch, seq) = (self.epoch(), self.seq());
        let frame = if msg.after_restart {
            ControlFrame::ResyncRequired { epoch, seq }.encode()
        } else {
            ControlFrame::Welcome {
                session_id: msg.session_id.0,
                user_id: self.id.as_str(),
                epoch,
                seq,
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
            welcome_seq: seq,
            last_sent_seq: seq,
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
        self.sessions.push(member);
        if let Some((epoch, last_seq)) = msg.resume {
            let range = requests::ResumeRange {
                last_seq,
                upto: seq,
                partial: false,
            };
            self.replay(msg.session_id, epoch, range, ctx);
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
        // The registry unsubscribed this actor before retiring it: whatever the engine
        // handed over is in the inbox now, and is fanned out (or counted) before the stop.
        self.take_inbox(ctx);
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

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) {
        // What the engine already handed over goes out before the close.
        self.take_inbox(ctx);
        for member in &mut self.sessions {
            member.cut_off = Some(DropReason::Draining);
            member.stats.set_state(ActorState::CutOff);
            member
                .outbox
                .push(Outbound::Close(close_code::SERVICE_RESTART));
        }
    }
}

/// The most deliveries the inbox's burst buffer keeps room for between bursts.
const KEPT_BURST_CAPACITY: usize = 64;

impl StreamHandler<Burst> for User {
    fn handle(&mut self, _: Burst, ctx: &mut Self::Context) {
        // actix polls a stream even when a message handled just before asked the actor to
        // wait (a resume waiting for its history): the events stay queued until the wait is
        // over, so none reaches a socket ahead of the replay. The stream yields again then.
        if ctx.waiting() {
            return;
        }
        self.take_inbox(ctx);
    }

    /// The inbox never ends while the actor lives; nothing to do.
    fn finished(&mut self, _: &mut Self::Context) {}
}

impl User {
    /// Acts on everything the engine queued, in stream order.
    fn take_inbox(&mut self, ctx: &mut Context<Self>) {
        let mut burst = std::mem::take(&mut self.burst);
        self.inbox.take_all(&mut burst);
        if burst.is_empty() {
            self.burst = burst;
            return;
        }
        let now = SystemTime::now();
        self.stats.active_at(now);
        // A burst of events keeps its buffer for the next one; a lone position (what an
        // idle user ever receives) does not hold one for nothing.
        let keep = burst.capacity() <= KEPT_BURST_CAPACITY
            && !matches!(burst.front(), Some(Delivery::Position { .. }) if burst.len() == 1);
        for delivery in burst.drain(..) {
            self.on_delivery(delivery, now, ctx);
        }
        if keep {
            self.burst = burst;
        }
    }

    fn on_delivery(&mut self, delivery: Delivery, now: SystemTime, ctx: &mut Context<Self>) {
        match delivery {
            Delivery::Position { epoch, seq } => {
                let first = self.position.is_none();
                self.stats.positioned(&epoch, seq);
                self.position = Some((epoch, seq));
                if first {
                    for attach in std::mem::take(&mut self.waiting) {
                        self.attach(attach, ctx);
                    }
                } else {
                    self.reposition();
                }
                self.stats.handled(0);
            }
            Delivery::Event(event) => {
                let seq = event.seq;
                if let Some((_, position)) = &mut self.position {
                    *position = seq;
                }
                let size = self.deliver(event, now);
                self.stats.reached(seq);
                self.stats.handled(size);
            }
        }
    }
}

impl User {
    /// The engine could not continue the stream exactly (its history was lost): every
    /// session learns the new position, and carries on from it.
    fn reposition(&mut self) {
        let (epoch, seq) = (self.epoch().to_owned(), self.seq());
        log::warn!(
            "user:{}: the stream continues at epoch {epoch}, seq {seq}; sockets resync",
            self.id
        );
        let frame = ControlFrame::ResyncRequired { epoch: &epoch, seq }.encode();
        for member in &mut self.sessions {
            member.welcome_seq = seq;
            member.last_sent_seq = seq;
            if member.cut_off.is_none() {
                member.send_control(frame.clone());
            }
        }
    }
}
