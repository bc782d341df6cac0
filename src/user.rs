//! The user actor: one per connected user, the isolation boundary of agentwire.
//!
//! Everything a user receives passes through this actor, and only this actor: it numbers the
//! user's events (`seq` within an `epoch`), encodes each one once, and posts the shared bytes
//! to each of the user's sessions that wants the event's thread. It also owns the user's live
//! runs, so `stop_agent` can only ever reach this user's runs. The registry creates it, attaches
//! and detaches sessions, and retires it; nothing else holds its address except the directory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::bus::Published;
use crate::config::Config;
use crate::event::{AgentError, AgentEvent, EventFrame, RunErrorCode, RunMeta};
use crate::ids::{new_epoch, SessionId, UserId};
use crate::outbound::{ControlFrame, ErrorCode, Frame};
use crate::session::{Deliver, Session, Welcome};
use crate::stats::ActorStats;

/// A session attached to this user.
struct Member {
    id: SessionId,
    addr: Addr<Session>,
    stats: Arc<ActorStats>,
    /// `switch_thread`: when set, only this thread's events go to the session.
    thread: Option<String>,
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
    stats: Arc<ActorStats>,
    heartbeat_interval_ms: u64,
}

impl User {
    pub(crate) fn new(id: UserId, config: &Config, stats: Arc<ActorStats>) -> Self {
        User {
            id,
            epoch: new_epoch(),
            seq: 0,
            sessions: Vec::new(),
            runs: HashMap::new(),
            stats,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        }
    }

    /// Numbers, encodes once, and fans out one event.
    fn deliver(&mut self, meta: &RunMeta, event: &AgentEvent, emitted_at: SystemTime) {
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
        self.stats.add_bytes(frame.len());
        for member in &self.sessions {
            if member.thread.as_deref().is_none_or(|t| t == meta.thread_id) {
                member.stats.queued();
                member.addr.do_send(Deliver(frame.clone()));
            }
        }
    }

    fn send_to(&self, session: SessionId, frame: Frame) {
        if let Some(member) = self.sessions.iter().find(|m| m.id == session) {
            member.stats.queued();
            member.addr.do_send(Deliver(frame));
        }
    }
}

impl Actor for User {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        log::debug!("user:{}: stopped at seq {}", self.id, self.seq);
    }
}

/// Attach a session (from the registry). The user answers with the welcome frame.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Attach {
    pub session_id: SessionId,
    pub addr: Addr<Session>,
    pub stats: Arc<ActorStats>,
}

impl Handler<Attach> for User {
    type Result = ();

    fn handle(&mut self, msg: Attach, ctx: &mut Self::Context) {
        let frame = ControlFrame::Welcome {
            session_id: msg.session_id.0,
            user_id: self.id.as_str(),
            epoch: &self.epoch,
            seq: self.seq,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            protocol: crate::outbound::PROTOCOL_VERSION,
        }
        .encode();
        msg.stats.queued();
        msg.addr.do_send(Welcome {
            user: ctx.address(),
            frame,
        });
        self.sessions.push(Member {
            id: msg.session_id,
            addr: msg.addr,
            stats: msg.stats,
            thread: None,
        });
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

/// The user's last socket left (from the registry): stop.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Retire;

impl Handler<Retire> for User {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Published> for User {
    type Result = ();

    fn handle(&mut self, msg: Published, _: &mut Self::Context) {
        self.stats.queued();
        let run_id = &msg.meta.run_id;
        if msg.cancel.is_cancelled() {
            // The client stopped this run and already got its `agent_error` (from this
            // actor, or from the one before it): nothing of the run may follow.
            self.runs.remove(run_id);
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
            self.deliver(&msg.meta, &msg.event, msg.emitted_at);
        }
        self.stats.handled(0);
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
                let meta = run.meta;
                let event = AgentEvent::Error(AgentError {
                    code: RunErrorCode::Cancelled,
                    message: "stopped by the client".to_owned(),
                });
                self.deliver(&meta, &event, SystemTime::now());
            }
            None => {
                let frame = ControlFrame::Error {
                    code: ErrorCode::NotFound,
                    message: "no such run for this user",
                    client_ref: msg.client_ref.as_ref(),
                }
                .encode();
                self.send_to(msg.session_id, frame);
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
        let Some(member) = self.sessions.iter_mut().find(|m| m.id == msg.session_id) else {
            return;
        };
        member.thread = msg.thread_id;
        let frame = ControlFrame::ThreadSwitched {
            thread_id: member.thread.as_deref(),
            client_ref: msg.client_ref.as_ref(),
        }
        .encode();
        member.stats.queued();
        member.addr.do_send(Deliver(frame));
    }
}

/// `resume` from one of this user's sessions. Without a replay buffer nothing can be
/// replayed, so the answer is `resync_required` with the current numbering.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Resume {
    pub session_id: SessionId,
}

impl Handler<Resume> for User {
    type Result = ();

    fn handle(&mut self, msg: Resume, _: &mut Self::Context) {
        let frame = ControlFrame::ResyncRequired {
            epoch: &self.epoch,
            seq: self.seq,
        }
        .encode();
        self.send_to(msg.session_id, frame);
    }
}
