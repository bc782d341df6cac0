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

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::bus::Published;
use crate::close_code;
use crate::config::Config;
use crate::event::{AgentError, AgentEvent, EventFrame, RunErrorCode, RunMeta};
use crate::ids::{new_epoch, SessionId, UserId};
use crate::metrics::{DropReason, Metrics};
use crate::outbound::{ControlFrame, ErrorCode, Frame};
use crate::replay::{ReplayBudget, ReplayBuffer};
use crate::session::{CloseSession, Deliver, Replay, Session, Welcome};
use crate::stats::ActorState;
use crate::stats::ActorStats;
use crate::supervision::{SupervisionKind, SupervisionLog};

/// How often the replay buffer drops events past their maximum age.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);

/// A session attached to this user.
struct Member {
    id: SessionId,
    addr: Addr<Session>,
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
    cancel: CancellationToken,
}

pub(crate) struct User {
    id: UserId,
    epoch: String,
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
            epoch: new_epoch(),
            seq: 0,
            sessions: Vec::new(),
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

    /// Numbers, encodes once, buffers, and fans out one event; returns the encoded size.
    fn deliver(
        &mut self,
        meta: &Arc<RunMeta>,
        event: &AgentEvent,
        emitted_at: SystemTime,
    ) -> usize {
        self.seq += 1;
        let frame: Frame = EventFrame {
            seq: self.seq,
            epoch: &self.epoch,
            meta,
            timestamp: emitted_at,
            event,
        }
        .to_json()
        .into();
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
            member.addr.do_send(Deliver {
                frame: frame.clone(),
                event: Some((event_type, emitted_at)),
            });
        }
        let size = frame.len();
        self.replay.push(self.seq, frame, meta.clone());
        size
    }

    fn member(&mut self, session: SessionId) -> Option<&mut Member> {
        self.sessions.iter_mut().find(|m| m.id == session)
    }

    /// Posts a replay to a session, counting its frames into the session's backlog; a
    /// replay that would put the session over its backlog limit cuts it off instead.
    fn send_replay(&mut self, session: SessionId, replay: Replay) {
        let (max_frames, max_bytes) = (self.max_backlog_frames, self.max_backlog_bytes);
        let user = self.id.clone();
        let Some(member) = self.sessions.iter_mut().find(|m| m.id == session) else {
            return;
        };
        if member.cut_off.is_some() {
            return;
        }
        member.resumed = true;
        let extra = replay.frames.len() as u64 + 1;
        if over_backlog(member, extra, max_frames, max_bytes) {
            cut_off(&user, member, &self.supervision);
            return;
        }
        for frame in replay.frames.iter().chain([&replay.closing]) {
            member.stats.queued(frame.len());
        }
        member.addr.do_send(replay);
    }

    /// Answers a resume for `session`: the events after `last_seq` up to `upto` (what the
    /// session has not been sent), or a resync when that is impossible.
    fn answer_resume(&self, member: &Member, epoch: &str, last_seq: u64, upto: u64) -> Replay {
        let resync = || Replay {
            frames: Vec::new(),
            closing: ControlFrame::ResyncRequired {
                epoch: &self.epoch,
                seq: upto,
            }
            .encode(),
        };
        if epoch != self.epoch || last_seq > upto {
            return resync();
        }
        let Some(events) = self.replay.range(last_seq, upto) else {
            return resync();
        };
        let frames: Vec<Frame> = events
            .filter(|e| wants(member, &e.meta))
            .map(|e| e.frame.clone())
            .collect();
        Replay {
            frames,
            closing: ControlFrame::Resumed {
                from_seq: last_seq + 1,
                to_seq: upto,
            }
            .encode(),
        }
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
    member.addr.do_send(CloseSession(close_code::SLOW_CONSUMER));
}

/// Whether a session receives events of this run's thread.
fn wants(member: &Member, meta: &RunMeta) -> bool {
    member.thread.as_deref().is_none_or(|t| t == meta.thread_id)
}

impl Actor for User {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(EXPIRE_EVERY, |user, _| user.replay.expire(Instant::now()));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        log::debug!("user:{}: stopped at seq {}", self.id, self.seq);
    }
}

/// Attach a session (from the registry). The user answers with the welcome frame, then,
/// for a resume requested at connect, the replay.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Attach {
    pub session_id: SessionId,
    pub addr: Addr<Session>,
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
        let frame = if msg.after_restart {
            ControlFrame::ResyncRequired {
                epoch: &self.epoch,
                seq: self.seq,
            }
            .encode()
        } else {
            ControlFrame::Welcome {
                session_id: msg.session_id.0,
                user_id: self.id.as_str(),
                epoch: &self.epoch,
                seq: self.seq,
                heartbeat_interval_ms: self.heartbeat_interval_ms,
                protocol: crate::outbound::PROTOCOL_VERSION,
            }
            .encode()
        };
        msg.stats.queued(frame.len());
        let member = Member {
            id: msg.session_id,
            addr: msg.addr,
            stats: msg.stats,
            thread: None,
            welcome_seq: self.seq,
            last_sent_seq: self.seq,
            cut_off: None,
            resumed: false,
        };
        member.addr.do_send(Welcome {
            user: ctx.address(),
            running_requests: self.running_requests.clone(),
            frame,
            resuming: msg.resume.is_some(),
            after_restart: msg.after_restart,
        });
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
                .addr
                .do_send(CloseSession(close_code::SERVICE_RESTART));
        }
    }
}

impl Handler<Published> for User {
    type Result = ();

    fn handle(&mut self, msg: Published, _: &mut Self::Context) {
        let run_id = &msg.meta.run_id;
        let mut encoded = 0;
        if msg.cancel.is_cancelled() {
            // The client stopped this run and already got its `agent_error` (from this
            // actor, or from the one before it): nothing of the run may follow.
            self.runs.remove(run_id);
            self.metrics
                .dropped(msg.event.wire_type(), DropReason::StoppedRun, 1);
        } else {
            if msg.event.is_terminal() {
                self.runs.remove(run_id);
            } else if !self.runs.contains_key(run_id) {
                self.runs.insert(
                    run_id.clone(),
                    LiveRun {
                        meta: msg.meta.clone(),
                        cancel: msg.cancel.clone(),
                    },
                );
            }
            encoded = self.deliver(&msg.meta, &msg.event, msg.emitted_at);
        }
        self.stats.handled(encoded);
    }
}

/// `stop_agent` from one of this user's sessions.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopRun {
    pub session_id: SessionId,
    pub run_id: String,
    pub client_ref: Option<Value>,
}

impl Handler<StopRun> for User {
    type Result = ();

    fn handle(&mut self, msg: StopRun, _: &mut Self::Context) {
        match self.runs.remove(&msg.run_id) {
            Some(run) => {
                run.cancel.cancel();
                let event = AgentEvent::Error(AgentError {
                    code: RunErrorCode::Cancelled,
                    message: "stopped by the client".to_owned(),
                });
                self.deliver(&run.meta, &event, SystemTime::now());
            }
            None => {
                let frame = ControlFrame::Error {
                    code: ErrorCode::NotFound,
                    message: "no such run for this user",
                    client_ref: msg.client_ref.as_ref(),
                }
                .encode();
                if let Some(member) = self.member(msg.session_id) {
                    member.stats.queued(frame.len());
                    member.addr.do_send(Deliver::control(frame));
                }
            }
        }
    }
}

/// `switch_thread` from one of this user's sessions.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SwitchThread {
    pub session_id: SessionId,
    pub thread_id: Option<String>,
    pub client_ref: Option<Value>,
}

impl Handler<SwitchThread> for User {
    type Result = ();

    fn handle(&mut self, msg: SwitchThread, _: &mut Self::Context) {
        let Some(member) = self.member(msg.session_id) else {
            return;
        };
        member.thread = msg.thread_id;
        let frame = ControlFrame::ThreadSwitched {
            thread_id: member.thread.as_deref(),
            client_ref: msg.client_ref.as_ref(),
        }
        .encode();
        member.stats.queued(frame.len());
        member.addr.do_send(Deliver::control(frame));
    }
}

/// `resume` from one of this user's sessions. `holding` says the session has held back
/// every live event since its welcome (this is its first client frame), so the replay can
/// still go out ahead of them.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Resume {
    pub session_id: SessionId,
    pub epoch: String,
    pub last_seq: u64,
    pub holding: bool,
}

impl Handler<Resume> for User {
    type Result = ();

    fn handle(&mut self, msg: Resume, _: &mut Self::Context) {
        let Some(member) = self.sessions.iter().find(|m| m.id == msg.session_id) else {
            return;
        };
        // A replay can only go out ahead of the socket's live stream: when the socket still
        // holds its live frames back (this is its first client frame), or when nothing live
        // was queued to it yet, and only once per socket. Otherwise the answer is `resumed`
        // when the client already has everything it was sent, else `resync_required`.
        let can_replay =
            (msg.holding || member.last_sent_seq == member.welcome_seq) && !member.resumed;
        let replay = if can_replay {
            self.answer_resume(member, &msg.epoch, msg.last_seq, member.welcome_seq)
        } else {
            let upto = member.last_sent_seq;
            let closing = if msg.epoch == self.epoch && msg.last_seq == upto {
                ControlFrame::Resumed {
                    from_seq: upto + 1,
                    to_seq: upto,
                }
            } else {
                ControlFrame::ResyncRequired {
                    epoch: &self.epoch,
                    seq: upto,
                }
            };
            Replay {
                frames: Vec::new(),
                closing: closing.encode(),
            }
        };
        self.send_replay(msg.session_id, replay);
    }
}

/// Fault injection (from the registry): panic, as a bug in this actor would.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Crash;

impl Handler<Crash> for User {
    type Result = ();

    fn handle(&mut self, _: Crash, _: &mut Self::Context) {
        panic!("user:{}: crash injected through the debug routes", self.id);
    }
}
