//! The user actor's answers to its sessions' client requests: `stop_agent`,
//! `switch_thread` and `resume` (with the replay rules that keep a replay ahead of live
//! events), and the crash that fault injection asks for.

use std::time::SystemTime;

use actix::{Handler, Message};
use serde_json::Value;

use super::{cut_off, over_backlog, wants, Member, User};
use crate::event::{AgentError, AgentEvent, RunErrorCode};
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
    /// session has not been sent), or a resync when that is impossible.
    pub(super) fn answer_resume(
        &self,
        member: &Member,
        epoch: &str,
        last_seq: u64,
        upto: u64,
    ) -> Replay {
        let resync = || Replay {
            frames: Vec::new(),
            closing: ControlFrame::ResyncRequired {
                epoch: self.epoch(),
                seq: upto,
            }
            .encode(),
        };
        if epoch != self.epoch() || last_seq > upto {
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
        let stopped = self.runs.get(&msg.run_id).map(|run| {
            run.cancel.stop();
            run.meta.clone()
        });
        match stopped {
            Some(meta) => {
                let event = AgentEvent::Error(AgentError {
                    code: RunErrorCode::Cancelled,
                    message: "stopped by the client".to_owned(),
                });
                let now = SystemTime::now();
                // Encoded while the run is still known, with its fields escaped once.
                let frame = self.encode(&meta, &event, now);
                self.runs.remove(&msg.run_id);
                self.deliver(frame, &meta, &event, now);
            }
            None => {
                let frame = ControlFrame::Error {
                    code: ErrorCode::NotFound,
                    message: "no such run for this user",
                    client_ref: msg.client_ref.as_ref(),
                }
                .encode();
                if let Some(member) = self.member(msg.session_id) {
                    member.send_control(frame);
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

    fn handle(&mut self, msg: Resume, _: &mut Self::Context) {
        self.replay.expire(SystemTime::now());
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
            let last_seq = if msg.partial {
                self.replay.partial_start(msg.last_seq, member.welcome_seq)
            } else {
                msg.last_seq
            };
            self.answer_resume(member, &msg.epoch, last_seq, member.welcome_seq)
        } else {
            let upto = member.last_sent_seq;
            let closing = if msg.epoch == self.epoch() && msg.last_seq == upto {
                ControlFrame::Resumed {
                    from_seq: upto + 1,
                    to_seq: upto,
                }
            } else {
                ControlFrame::ResyncRequired {
                    epoch: self.epoch(),
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
