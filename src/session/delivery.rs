//! The session's outbound side: what its user's actor sends (the `Welcome` message, then
//! `Deliver`, `Replay` and closes through the outbox), the registry's `CloseSession` and
//! `Stall`, and the flow that decides when frames are written.
//!
//! A new socket holds back live frames after its welcome until the client's first frame (or
//! `resume_hold`); a `resume` then keeps holding until the replay is written, so a replay is
//! always written before any live frame. Every write counts into the session's stats, which
//! the user actor reads as this session's backlog.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use std::time::{Duration, SystemTime};

use actix::{ActorContext, Addr, AsyncContext, Handler, Message, StreamHandler};
use actix_web_actors::ws;

use super::outbox::{Outbound, Outbox};
use super::{Session, UserLink};
use crate::burst_queue::{Burst, Bursts};
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

    /// Writes a frame the user's actor posted, counting agent events as delivered (their
    /// latency as of `now`, read once per burst).
    fn deliver(&self, ctx: &mut ws::WebsocketContext<Self>, deliver: Deliver, now: SystemTime) {
        self.write(ctx, deliver.frame);
        if let Some(event) = deliver.event {
            let metrics = &self.shared.metrics;
            let latency = now.duration_since(event.emitted_at).unwrap_or_default();
            metrics.delivered(event.event_type, latency.as_secs_f64());
            #[cfg(feature = "stage-times")]
            metrics.waited(
                crate::metrics::Stage::Outbox,
                now.duration_since(event.queued_at).unwrap_or_default(),
            );
        }
    }

    /// Writes the frames held back since the welcome, and goes live.
    pub(super) fn release(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        self.stats.set_state(ActorState::Live);
        if let Flow::Holding(held) | Flow::Replaying(held) | Flow::Stalled(held) =
            std::mem::replace(&mut self.flow, Flow::Live)
        {
            let now = SystemTime::now();
            for deliver in held {
                self.deliver(ctx, deliver, now);
            }
        }
    }
}

/// An encoded frame to write (from the user's actor); `event` says what agent event it is,
/// for the delivery metrics.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Deliver {
    pub frame: Frame,
    pub event: Option<EventStamp>,
}

/// What the delivery metrics need of an agent event.
pub(crate) struct EventStamp {
    pub event_type: &'static str,
    /// When the application emitted it.
    pub emitted_at: SystemTime,
    /// When the user's actor queued it for this session (for the `stage-times` feature's
    /// outbox wait).
    #[cfg(feature = "stage-times")]
    pub queued_at: SystemTime,
}

impl Deliver {
    /// A control frame (not an agent event).
    pub(crate) fn control(frame: Frame) -> Self {
        Deliver { frame, event: None }
    }
}

impl Session {
    /// A frame from the outbox: held or written, as the flow says.
    fn on_deliver(&mut self, msg: Deliver, ctx: &mut ws::WebsocketContext<Self>, now: SystemTime) {
        match &mut self.flow {
            Flow::Holding(held) | Flow::Replaying(held) | Flow::Stalled(held) => held.push(msg),
            Flow::Connecting | Flow::Live => self.deliver(ctx, msg, now),
        }
    }

    /// Acts on one item of the outbox.
    fn on_outbound(
        &mut self,
        item: Outbound,
        ctx: &mut ws::WebsocketContext<Self>,
        now: SystemTime,
    ) {
        match item {
            Outbound::Deliver(deliver) => self.on_deliver(deliver, ctx, now),
            Outbound::Replay(replay) => self.on_replay(replay, ctx),
            Outbound::Close(code) => self.close_after_queued(code, ctx),
        }
    }

    /// Acts on everything queued in the current outbox now: on every wakeup, and before a
    /// close or a switch to a restarted actor's outbox. Nothing after a close is written.
    pub(super) fn drain_outbox(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some((outbox, _)) = &self.outbox else {
            return;
        };
        let mut burst = std::mem::take(&mut self.burst);
        outbox.take_all(&mut burst);
        let now = SystemTime::now();
        self.stats.active_at(now);
        while let Some(item) = burst.pop_front() {
            if ctx.state().stopping() {
                burst.clear();
                break;
            }
            self.on_outbound(item, ctx, now);
        }
        // Keep the buffer for the next burst, unless one long burst made it large.
        if burst.capacity() <= KEPT_BURST_CAPACITY {
            self.burst = burst;
        }
    }

    /// Starts draining `outbox` (from a welcome), after everything in the previous one.
    fn switch_outbox(&mut self, outbox: Arc<Outbox>, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some((_, handle)) = self.outbox.take() {
            ctx.cancel_future(handle);
        }
        let handle = ctx.add_stream(Bursts(outbox.clone()));
        self.outbox = Some((outbox, handle));
    }

    /// Writes what is held, then closes with `code`.
    fn close_after_queued(&mut self, code: u16, ctx: &mut ws::WebsocketContext<Self>) {
        self.release(ctx);
        log::info!(
            "session:{}: closing with {} ({})",
            self.id,
            code,
            close_code::reason(code)
        );
        self.close(ctx, code);
    }
}

/// The most items a session's burst buffer keeps room for between bursts.
const KEPT_BURST_CAPACITY: usize = 64;

impl StreamHandler<Burst> for Session {
    fn handle(&mut self, _: Burst, ctx: &mut Self::Context) {
        self.drain_outbox(ctx);
    }

    /// An outbox never ends (a replaced one is cancelled); nothing to do.
    fn finished(&mut self, _: &mut Self::Context) {}
}

/// The first frame, from the user's actor, with the actor's address and the outbox through
/// which everything else from it arrives. `resuming` says a replay (for
/// `?epoch=&last_seq=`) follows at once.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Welcome {
    pub user: Arc<Addr<User>>,
    pub outbox: Arc<Outbox>,
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
            self.drain_outbox(ctx);
            self.switch_outbox(msg.outbox, ctx);
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
        self.switch_outbox(msg.outbox, ctx);
        let hold = self.shared.config.resume_hold;
        self.flow = if msg.resuming {
            self.stats.set_state(ActorState::Replaying);
            Flow::Replaying(Vec::new())
        } else if hold.is_zero() {
            self.stats.set_state(ActorState::Live);
            Flow::Live
        } else {
            self.stats.set_state(ActorState::Holding);
            // The session's one timer (see `tick`) releases the hold when it runs out.
            self.hold_until = Some(std::time::Instant::now() + hold);
            Flow::Holding(Vec::new())
        };
        while let Some(verdict) = self.early.pop_front() {
            self.act_on(verdict, ctx);
        }
    }
}

/// The answer to a resume (from the user's actor, through the outbox): the replayed
/// events, then `resumed` or `resync_required`. Held live frames follow.
pub(crate) struct Replay {
    pub frames: Vec<Frame>,
    pub closing: Frame,
}

impl Session {
    fn on_replay(&mut self, msg: Replay, ctx: &mut ws::WebsocketContext<Self>) {
        for frame in msg.frames {
            self.write(ctx, frame);
        }
        self.write(ctx, msg.closing);
        self.release(ctx);
    }
}

/// Close the socket with this code, after everything queued before it (from the
/// registry: a refusal, or an escalation after the user's actor died; the user's actor
/// closes through the outbox).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CloseSession(pub u16);

impl Handler<CloseSession> for Session {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        self.drain_outbox(ctx);
        self.close_after_queued(msg.0, ctx);
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
