//! The user actor's answers to its sessions' client requests: `stop_agent`,
//! `switch_thread` and `resume` (with the replay rules that keep a replay ahead of live
//! events), and the crash that fault injection asks for.

use actix::{ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use serde_json::Value;

use super::{cut_off, over_backlog, wants, User};
use crate::engine::{HistoryEvent, StopOutcome};
use crate::ids::SessionId;
use crate::outbound::{ControlFrame, ErrorCode, Frame};
use crate::session::{Outbound, Replay};

impl User {
    /// Posts a replay to a session, counting its frames into the session's backlog; a
    /// replay that would put the session over its backlog limit cuts it off instead.
    pub(super) fn send_replay(&mut self, session: SessionId, replay: Replay) {
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
        member.outbox.push(Outbound::Replay(replay));
    }

    /// Answers a resume for `session`: the events after `last_seq` up to `upto` (what the
    /// session has not been sent) from the engine's history, or a resync when the history
    /// no longer holds all of them. The actor waits for the history before it handles its
    /// next message, so no live event can be pushed to the session ahead of the replay.
    pub(super) fn replay(
        &mut self,
        session: SessionId,
        epoch: String,
        range: ResumeRange,
        ctx: &mut Context<Self>,
    ) {
        let ResumeRange {
            last_seq,
            upto,
            partial,
        } = range;
        if let Some(member) = self.member(session) {
            member.resumed = true;
        }
        if epoch != self.epoch() || last_seq > upto {
            let resync = self.resync(upto);
            self.send_replay(session, resync);
            return;
        }
        if last_seq == upto {
            let resumed = resumed(last_seq, upto, Vec::new());
            self.send_replay(session, resumed);
            return;
        }
        let history = self
            .engine
            .history(&self.id, &epoch, last_seq, upto, partial);
        ctx.wait(history.into_actor(self).map(move |events, user, _| {
            let replay = match (events, user.sessions.iter().find(|m| m.id == session)) {
                (Some(events), Some(member)) if is_answer(&events, last_seq, upto, partial) => {
                    // A partial answer starts at the oldest event still held.
                    let from = events.first().map_or(last_seq, |e| e.seq - 1);
                    let frames = events
                        .into_iter()
                        .filter(|e| wants(member, &e.thread_id))
                        .map(|e| e.frame)
                        .collect();
                    resumed(from, upto, frames)
                }
                (_, Some(_)) => user.resync(upto),
                (_, None) => return,
            };
            user.send_replay(session, replay);
        }));
    }

    /// A resume that cannot be answered exactly: the stream's position, nothing replayed.
    fn resync(&self, upto: u64) -> Replay {
        Replay {
            frames: Vec::new(),
            closing: ControlFrame::ResyncRequired {
                epoch: self.epoch(),
                seq: upto,
            }
            .encode(),
        }
    }
}

/// The range a resume asks for: the events after `last_seq` up to `upto`; `partial` accepts
/// the tail of it the engine still holds when it no longer holds all of it.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResumeRange {
    pub last_seq: u64,
    pub upto: u64,
    pub partial: bool,
}

/// Whether `events` answer the range: exactly the events after `last_seq` up to `upto`, in
/// order, or for a partial resume a contiguous tail of them ending at `upto`.
/// Whatever the engine answered, a replay never has a hole.
fn is_answer(events: &[HistoryEvent], last_seq: u64, upto: u64, partial: bool) -> bool {
    let from = match (events.first(), partial) {
        (Some(first), true) if first.seq > last_seq => first.seq - 1,
        _ => last_seq,
    };
    events.len() as u64 == upto - from
        && events
            .iter()
            .zip(from + 1..)
            .all(|(event, seq)| event.seq == seq)
}

/// A resume answered exactly: the replayed frames, then `resumed`.
fn resumed(last_seq: u64, upto: u64, frames: Vec<Frame>) -> Replay {
    Replay {
        frames,
        closing: ControlFrame::Resumed {
            from_seq: last_seq + 1,
            to_seq: upto,
        }
        .encode(),
    }
}

/// `stop_agent` from one of this user's sessions: the engine stops the run wherever it
/// runs (its `agent_error` then arrives through the stream, for every socket), or the
/// session that asked gets `not_found`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopRun {
    pub session_id: SessionId,
    pub run_id: String,
    pub client_ref: Option<Value>,
}

impl Handler<StopRun> for User {
    type Result = ();

    fn handle(&mut self, msg: StopRun, ctx: &mut Self::Context) {
        let stop = self.engine.stop(&self.id, &msg.run_id);
        ctx.spawn(stop.into_actor(self).map(move |outcome, user, _| {
            let (code, message) = match outcome {
                StopOutcome::Stopped => return,
                StopOutcome::NotFound => (ErrorCode::NotFound, "no such run for this user"),
                StopOutcome::Unavailable => (
                    ErrorCode::Unavailable,
                    "the run could not be looked up now; try again",
                ),
            };
            let frame = ControlFrame::Error {
                code,
                message,
                client_ref: msg.client_ref.as_ref(),
            }
            .encode();
            if let Some(member) = user.member(msg.session_id) {
                member.send_control(frame);
            }
        }));
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
        member.send_control(frame);
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
    /// Replay what the buffer still holds when it no longer holds everything asked for.
    pub partial: bool,
    pub holding: bool,
}

impl Handler<Resume> for User {
    type Result = ();

    fn handle(&mut self, msg: Resume, ctx: &mut Self::Context) {
        let Some(member) = self.sessions.iter().find(|m| m.id == msg.session_id) else {
            return;
        };
        // A replay can only go out ahead of the socket's live stream: when the socket still
        // holds its live frames back (this is its first client frame), or when nothing live
        // was queued to it yet, and only once per socket. Otherwise the answer is `resumed`
        // when the client already has everything it was sent, else `resync_required`.
        let can_replay =
            (msg.holding || member.last_sent_seq == member.welcome_seq) && !member.resumed;
        if can_replay {
            let upto = member.welcome_seq;
            let range = ResumeRange {
                last_seq: msg.last_seq,
                upto,
                partial: msg.partial,
            };
            self.replay(msg.session_id, msg.epoch, range, ctx);
            return;
        }
        let upto = member.last_sent_seq;
        let replay = if msg.epoch == self.epoch() && msg.last_seq == upto {
            resumed(upto, upto, Vec::new())
        } else {
            self.resync(upto)
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
