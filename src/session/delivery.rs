//! The session's outbound side: the frames its user's actor posts (`Deliver`, `Welcome`,
//! `Replay`, `CloseSession`) and the flow that decides when they are written.
//!
//! A new socket holds back live frames after its welcome until the client's first frame (or
//! `resume_hold`); a `resume` then keeps holding until the replay is written, so a replay is
//! always written before any live frame. Every write counts into the session's stats, which
//! the user actor reads as this session's backlog.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use actix::{Addr, AsyncContext, Handler, Message};
use actix_web_actors::ws;

use super::{Session, UserLink};
use crate::close_code;
use crate::outbound::{ControlFrame, Frame};
use crate::user::User;

/// Where the session is in delivering its user's frames.
pub(super) enum Flow {
    /// Before the welcome.
    Connecting,
    /// After the welcome, before the client's first frame (up to `resume_hold`): live
    /// frames are held.
    Holding(Vec<Frame>),
    /// A resume is being answered: live frames are held until the replay is written.
    Replaying(Vec<Frame>),
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

    /// Writes the frames held back since the welcome, and goes live.
    pub(super) fn release(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Flow::Holding(held) | Flow::Replaying(held) =
            std::mem::replace(&mut self.flow, Flow::Live)
        {
            for frame in held {
                self.write(ctx, frame);
            }
        }
    }
}

/// An encoded frame to write (from the user's actor).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Deliver(pub Frame);

impl Handler<Deliver> for Session {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        match &mut self.flow {
            Flow::Holding(held) | Flow::Replaying(held) => held.push(msg.0),
            Flow::Connecting | Flow::Live => self.write(ctx, msg.0),
        }
    }
}

/// The first frame, from the user's actor, with the actor's address. `resuming` says a
/// replay (for `?epoch=&last_seq=`) follows at once.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Welcome {
    pub user: Addr<User>,
    pub running_requests: Arc<AtomicUsize>,
    pub frame: Frame,
    pub resuming: bool,
}

impl Handler<Welcome> for Session {
    type Result = ();

    fn handle(&mut self, msg: Welcome, ctx: &mut Self::Context) {
        self.write(ctx, msg.frame);
        self.user = Some(UserLink {
            addr: msg.user,
            running_requests: msg.running_requests,
        });
        let hold = self.shared.config.resume_hold;
        self.flow = if msg.resuming {
            Flow::Replaying(Vec::new())
        } else if hold.is_zero() {
            Flow::Live
        } else {
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
