//! The session's outbound side: the frames its user's actor posts (`Deliver`, `Welcome`,
//! `Replay`, `CloseSession`) and the flow that decides when they are written.
//!
//! A new socket holds back live frames after its welcome until the client's first frame (or
//! `resume_hold`); a `resume` then keeps holding until the replay is written, so a replay is
//! always written before any live frame. Every write counts into the session's stats, which
//! the user actor reads as this session's backlog.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use std::time::{Duration, SystemTime};

use actix::{Addr, AsyncContext, Handler, Message};
use actix_web_actors::ws;

use super::{Session, UserLink};
use crate::close_code;
use crate::outbound::{ControlFrame, Frame};
use crate::stats::ActorState;
use crate::user::User;

/// Where the session is in delivering its user's frames.
pub(crate) enum Flow {
    /// Before the welcome.
    Connecting,
    /// After the welcome, before the client's first frame (up to `resume_hold`): live
    /// frames are held.
    Holding(Vec<Deliver>),
    /// A resume is being answered: live frames are held until the replay is written.
    Replaying(Vec<Deliver>),
    /// Fault injection: writing nothing (as if the client stopped reading) until a timer.
    Stalled(Vec<Deliver>),
    /// Frames are written as they come.
    Live,
}

impl Session {
    pub(super) fn send_control(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
        frame: &ControlFrame<'_>,
    ) {
        let frame = frame.encode();
        self.stats.queued(frame.len());
        self.write(ctx, frame);
    }

    /// Writes one frame the user's actor (or this session) queued.
    pub(super) fn write(&self, ctx: &mut ws::WebsocketContext<Self>, frame: Frame) {
        self.stats.handled(frame.len());
        ctx.text(frame);
    }

    /// Writes a frame the user's actor posted, counting agent events as delivered.
    fn deliver(&self, ctx: &mut ws::WebsocketContext<Self>, deliver: Deliver) {
        self.write(ctx, deliver.frame);
        if let Some((event_type, emitted_at)) = deliver.event {
            let latency = emitted_at.elapsed().unwrap_or_default();
            self.shared
                .metrics
                .delivered(event_type, latency.as_secs_f64());
        }
    }

    /// Writes the frames held back since the welcome, and goes live.
    pub(super) fn release(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        self.stats.set_state(ActorState::Live);
        if let Flow::Holding(held) | Flow::Replaying(held) | Flow::Stalled(held) =
            std::mem::replace(&mut self.flow, Flow::Live)
        {
            for deliver in held {
                self.deliver(ctx, deliver);
            }
        }
    }
}

/// An encoded frame to write (from the user's actor); `event` names an agent event's type
/// and emission time, for the delivery metrics.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Deliver {
    pub frame: Frame,
    pub event: Option<(&'static str, SystemTime)>,
}

impl Deliver {
    /// A control frame (not an agent event).
    pub(crate) fn control(frame: Frame) -> Self {
        Deliver { frame, event: None }
    }
}

impl Handler<Deliver> for Session {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        match &mut self.flow {
            Flow::Holding(held) | Flow::Replaying(held) | Flow::Stalled(held) => held.push(msg),
            Flow::Connecting | Flow::Live => self.deliver(ctx, msg),
        }
    }
}

/// The first frame, from the user's actor, with the actor's address. `resuming` says a
/// replay (for `?epoch=&last_seq=`) follows at once.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Welcome {
    pub user: Arc<Addr<User>>,
    pub running_requests: Arc<AtomicUsize>,
    pub frame: Frame,
    pub resuming: bool,
    /// The user's actor was restarted: `frame` is a `resync_required`, and the socket
    /// carries on with the new actor.
    pub after_restart: bool,
}

impl Handler<Welcome> for Session {
    type Result = ();

    fn handle(&mut self, msg: Welcome, ctx: &mut Self::Context) {
        self.user = Some(UserLink {
            addr: msg.user,
            running_requests: msg.running_requests,
        });
        if msg.after_restart {
            // What the old actor queued goes out first, then the news of the new numbering;
            // the new actor learns this socket's thread filter again (and acknowledges it).
            self.release(ctx);
            self.write(ctx, msg.frame);
            if let (Some(thread), Some(user)) = (&self.thread_filter, &self.user) {
                user.addr.do_send(crate::user::SwitchThread {
                    session_id: self.id,
                    thread_id: Some(thread.clone()),
                    client_ref: None,
                });
            }
            return;
        }
        self.write(ctx, msg.frame);
        let hold = self.shared.config.resume_hold;
        self.flow = if msg.resuming {
            self.stats.set_state(ActorState::Replaying);
            Flow::Replaying(Vec::new())
        } else if hold.is_zero() {
            self.stats.set_state(ActorState::Live);
            Flow::Live
        } else {
            self.stats.set_state(ActorState::Holding);
            ctx.run_later(hold, |session, ctx| {
                if matches!(session.flow, Flow::Holding(_)) {
                    session.release(ctx);
                }
            });
            Flow::Holding(Vec::new())
        };
        while let Some(verdict) = self.early.pop_front() {
            self.act_on(verdict, ctx);
        }
    }
}

/// The answer to a resume (from the user's actor): the replayed events, then `resumed` or
/// `resync_required`. Held live frames follow.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Replay {
    pub frames: Vec<Frame>,
    pub closing: Frame,
}

impl Handler<Replay> for Session {
    type Result = ();

    fn handle(&mut self, msg: Replay, ctx: &mut Self::Context) {
        for frame in msg.frames {
            self.write(ctx, frame);
        }
        self.write(ctx, msg.closing);
        self.release(ctx);
    }
}

/// Close the socket with this code, after everything queued before it (from the user's
/// actor or the registry).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CloseSession(pub u16);

impl Handler<CloseSession> for Session {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        self.release(ctx);
        log::info!(
            "session:{}: closing with {} ({})",
            self.id,
            msg.0,
            close_code::reason(msg.0)
        );
        self.close(ctx, msg.0);
    }
}

/// Fault injection (from the registry): write nothing for a while, as a client that stopped
/// reading would cause. Frames pile up (and count as backlog) until the timer releases them.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Stall(pub Duration);

impl Handler<Stall> for Session {
    type Result = ();

    fn handle(&mut self, msg: Stall, ctx: &mut Self::Context) {
        let held = match std::mem::replace(&mut self.flow, Flow::Live) {
            Flow::Holding(held) | Flow::Replaying(held) | Flow::Stalled(held) => held,
            Flow::Connecting | Flow::Live => Vec::new(),
        };
        self.flow = Flow::Stalled(held);
        self.stats.set_state(ActorState::Stalled);
        ctx.run_later(msg.0, |session, ctx| {
            if matches!(session.flow, Flow::Stalled(_)) {
                session.release(ctx);
            }
        });
    }
}
