//! The session actor: one per WebSocket, and the only module that touches actix-web-actors.
//!
//! A session authenticates nothing and decides nothing about membership: it is born with an
//! authenticated user id, asks the registry to attach it, and then relays. Inbound, it decodes
//! client frames (see [`crate::inbound`]) and hands them to the application's handler or to
//! its user's actor. Outbound, it writes the frames its user's actor queues in its outbox,
//! which are already encoded and shared between the user's sockets. One timer pings, ends a
//! resume hold, and closes a socket that has been silent past the client timeout; another,
//! armed near the end, closes one whose token expired.
//!
//! The module has six files: this one (the actor, the upgrade, the timer and expiry),
//! `frame_guard` (the socket's bytes, judged one frame header at a time before the codec
//! buffers a payload), `requests` (the inbound side: client frames through the gate to the
//! handler or the user's actor), `delivery` (the outbound side: the welcome, the outbox's
//! items, and the hold/replay/live flow that keeps a replay ahead of live frames), `outbox`
//! (the ordered queue from the user's actor) and `in_memory` (the same session over an
//! in-process byte stream instead of a TCP socket).

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::{Actor, ActorContext, Addr, AsyncContext, StreamHandler};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use crate::close_code;
use crate::ids::{SessionId, UserId};
use crate::inbound_gate::{GateLimits, InboundGate, RawFrame, Verdict};
use crate::registry::{Connect, Disconnect};
use crate::runtime::Shared;
use crate::stats::ActorStats;
use crate::supervision::SupervisionKind;
use crate::user::User;

mod delivery;
mod frame_guard;
mod in_memory;
mod outbox;
mod requests;

use delivery::Flow;
pub(crate) use delivery::{CloseSession, Deliver, EventStamp, Replay, Stall, Welcome};
use frame_guard::{FrameGuard, GuardVerdict};
pub(crate) use in_memory::connect_in_memory;
pub use in_memory::InMemorySocket;
pub(crate) use outbox::{Outbound, Outbox};

/// Reported when a socket ended without any close frame (RFC 6455 reserves 1006 for it).
const ABNORMAL_CLOSURE: u16 = 1006;

/// Reported when the client's close frame carried no code (RFC 6455: 1005).
const NO_STATUS: u16 = 1005;

/// Stands for the bytes of a text frame actix refused as invalid UTF-8 before we saw them.
const INVALID_UTF8: &[u8] = &[0xFF];

/// What a session knows of its user's actor once welcomed.
struct UserLink {
    addr: Arc<Addr<User>>,
    /// Client requests of this user now running in handler tasks (all sockets share it).
    running_requests: Arc<AtomicUsize>,
}

pub(crate) struct Session {
    id: SessionId,
    user_id: UserId,
    shared: Arc<Shared>,
    /// The user's actor, known once the welcome frame arrived.
    user: Option<UserLink>,
    flow: Flow,
    /// `?epoch=&last_seq=` from the upgrade request, handed to the registry on connect.
    resume_at_connect: Option<Box<(String, u64)>>,
    /// When the token the socket was opened with expires; taken once its close is armed.
    token_expires_at: Option<SystemTime>,
    gate: InboundGate,
    /// Set by the socket's [`FrameGuard`] when a frame header ended the inbound stream.
    frame_guard: GuardVerdict,
    /// Verdicts on client frames that arrived before the welcome (messages to handle, errors
    /// to answer), acted on right after it, so the welcome is always the first frame.
    early: VecDeque<Verdict>,
    last_heard: Instant,
    /// When the next ping is due.
    next_heartbeat: Instant,
    /// When a `Holding` flow releases its frames if the client has said nothing.
    hold_until: Option<Instant>,
    stats: Arc<ActorStats>,
    /// The close code the socket ended with, once known (for the disconnect metrics).
    closed_with: Option<u16>,
    /// The last `switch_thread` the client asked for, re-applied if the user's actor is
    /// restarted.
    thread_filter: Option<String>,
    /// The outbox of the current user actor, and the handle of its stream in the context.
    outbox: Option<(Arc<Outbox>, actix::SpawnHandle)>,
    /// The outbox's items being acted on (kept between bursts, so they allocate nothing).
    burst: VecDeque<Outbound>,
}

/// Who the socket belongs to, from the authenticator, and what the upgrade asked for.
pub(crate) struct SessionStart {
    pub user_id: UserId,
    pub token_expires_at: Option<SystemTime>,
    pub subprotocol: Option<String>,
    pub resume_at_connect: Option<(String, u64)>,
}

/// Performs the WebSocket upgrade for an authenticated request and starts its session.
/// `subprotocol` is echoed when the token came as `jwt.<token>`.
pub(crate) fn upgrade(
    req: &HttpRequest,
    payload: web::Payload,
    shared: Arc<Shared>,
    start: SessionStart,
) -> Result<HttpResponse, actix_web::Error> {
    let max_frame = shared.config.max_frame_bytes;
    let subprotocol = start.subprotocol.clone();
    let offered: Vec<&str> = subprotocol.as_deref().into_iter().collect();
    let session = Session::new(shared, start);
    let payload = FrameGuard::new(payload, max_frame, session.frame_guard.clone());
    ws::WsResponseBuilder::new(session, req, payload)
        .frame_size(max_frame)
        .protocols(&offered)
        .start()
}

impl Session {
    /// A session for `start`'s user, not yet attached to anything (a transport starts it).
    fn new(shared: Arc<Shared>, start: SessionStart) -> Session {
        let now = Instant::now();
        let shared_heartbeat = shared.config.heartbeat_interval;
        Session {
            id: shared.next_session_id(),
            user_id: start.user_id,
            gate: InboundGate::new(GateLimits::from(&*shared.config), now),
            frame_guard: GuardVerdict::default(),
            shared,
            user: None,
            flow: Flow::Connecting,
            resume_at_connect: start.resume_at_connect.map(Box::new),
            token_expires_at: start.token_expires_at,
            early: VecDeque::new(),
            last_heard: now,
            next_heartbeat: now + shared_heartbeat,
            hold_until: None,
            stats: Arc::new(ActorStats::default()),
            closed_with: None,
            thread_filter: None,
            outbox: None,
            burst: VecDeque::new(),
        }
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: u16) {
        self.closed_with.get_or_insert(code);
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(code),
            description: Some(close_code::reason(code).to_owned()),
        }));
        ctx.stop();
    }

    /// The session's one timer: releases a resume hold that ran out, pings (and checks for
    /// silence and token expiry) when the heartbeat is due, and re-arms itself for whichever
    /// comes next. One timer instead of an interval plus a hold timer keeps an idle
    /// socket's actor context within its inline room for timers and streams.
    fn tick(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let now = Instant::now();
        if self.hold_until.is_some_and(|until| until <= now) {
            self.hold_until = None;
            if matches!(self.flow, delivery::Flow::Holding(_)) {
                self.release(ctx);
            }
        }
        if self.next_heartbeat <= now {
            self.next_heartbeat = now + self.shared.config.heartbeat_interval;
            self.arm_token_expiry(ctx);
            self.heartbeat(ctx);
        }
        if ctx.state().stopping() {
            return;
        }
        let next = self
            .hold_until
            .map_or(self.next_heartbeat, |until| until.min(self.next_heartbeat));
        ctx.run_later(next.saturating_duration_since(now), |session, ctx| {
            session.tick(ctx)
        });
    }

    fn heartbeat(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.last_heard.elapsed() > self.shared.config.client_timeout {
            self.shared.supervision.record(
                SupervisionKind::HeartbeatTimeout,
                format!("session:{}", self.id),
                format!(
                    "user:{}'s socket was silent for {:?}; closed with 4000",
                    self.user_id,
                    self.last_heard.elapsed()
                ),
            );
            self.close(ctx, close_code::HEARTBEAT_TIMEOUT);
        } else {
            ctx.ping(b"");
        }
    }

    /// Arms the close with 4002 for when the token expires, once that is within one
    /// heartbeat interval (checked at start and on every heartbeat). A socket whose token
    /// lives for hours so holds one timer (the heartbeat) instead of two: memory per idle
    /// socket.
    fn arm_token_expiry(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(expires_at) = self.token_expires_at else {
            return;
        };
        let left = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if left > self.shared.config.heartbeat_interval {
            return;
        }
        self.token_expires_at = None;
        ctx.run_later(left, |session, ctx| {
            log::info!(
                "session:{}: token of user:{} expired",
                session.id,
                session.user_id
            );
            session.close(ctx, close_code::TOKEN_EXPIRED);
        });
    }
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        log::debug!("session:{}: opened for user:{}", self.id, self.user_id);
        self.shared.registry_stats.queued(0);
        self.shared.registry.do_send(Connect {
            session_id: self.id,
            user: self.user_id.clone(),
            addr: Arc::new(ctx.address()),
            stats: self.stats.clone(),
            resume: self.resume_at_connect.take().map(|resume| *resume),
            home: actix::Arbiter::try_current(),
        });
        // The first tick comes when a resume hold (starting with the welcome, moments from
        // now) would end, or at the first heartbeat.
        let config = &self.shared.config;
        let first = if config.resume_hold.is_zero() {
            config.heartbeat_interval
        } else {
            config.resume_hold.min(config.heartbeat_interval)
        };
        ctx.run_later(first, |session, ctx| session.tick(ctx));
        self.arm_token_expiry(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some((outbox, _)) = &self.outbox {
            outbox.close();
        }
        let code = self.closed_with.unwrap_or(ABNORMAL_CLOSURE);
        log::debug!("session:{}: closed ({code})", self.id);
        self.shared.metrics.disconnected(code);
        self.shared.registry_stats.queued(0);
        self.shared.registry.do_send(Disconnect {
            session_id: self.id,
            user: self.user_id.clone(),
        });
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match item {
            Ok(ws::Message::Text(text)) => self.on_frame(RawFrame::Text(text.as_bytes()), ctx),
            Ok(ws::Message::Binary(bytes)) => self.on_frame(RawFrame::Binary(&bytes), ctx),
            Ok(ws::Message::Continuation(item)) => {
                let frame = match &item {
                    actix_http::ws::Item::FirstText(bytes) => RawFrame::FirstText(bytes),
                    actix_http::ws::Item::FirstBinary(bytes) => RawFrame::FirstBinary(bytes),
                    actix_http::ws::Item::Continue(bytes) => RawFrame::Continue(bytes),
                    actix_http::ws::Item::Last(bytes) => RawFrame::Last(bytes),
                };
                self.on_frame(frame, ctx);
            }
            Ok(ws::Message::Ping(payload)) => {
                if self.gate.allow_ping(Instant::now()) {
                    ctx.pong(&payload);
                }
            }
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                let code = reason.as_ref().map_or(NO_STATUS, |r| u16::from(r.code));
                self.closed_with.get_or_insert(code);
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Overflow) => self.close(ctx, close_code::MESSAGE_TOO_BIG),
            // actix refuses a whole text frame that is not UTF-8 before we see its bytes;
            // the gate fails it like any text message that is not UTF-8 (1007).
            Err(ws::ProtocolError::Io(error)) if error.to_string().contains("utf-8") => {
                self.on_frame(RawFrame::Text(INVALID_UTF8), ctx)
            }
            Err(error) => {
                log::debug!("session:{}: protocol error: {error}", self.id);
                self.close(ctx, close_code::PROTOCOL_ERROR);
            }
        }
    }

    /// The socket's frames ended: either the connection did, or the frame guard stopped
    /// reading at a header that declared too much (then every frame before it was handled).
    fn finished(&mut self, ctx: &mut Self::Context) {
        match self.frame_guard.close_code() {
            Some(code) => {
                log::info!(
                    "session:{}: user:{} closed with {code} ({}) at a frame header",
                    self.id,
                    self.user_id,
                    close_code::reason(code)
                );
                self.close(ctx, code);
            }
            None => ctx.stop(),
        }
    }
}
