//! The session actor: one per WebSocket, and the only module that touches actix-web-actors.
//!
//! A session authenticates nothing and decides nothing about membership: it is born with an
//! authenticated user id, asks the registry to attach it, and then relays. Inbound, it decodes
//! client frames (see [`crate::inbound`]) and hands them to the application's handler or to
//! its user's actor. Outbound, it writes the frames its user's actor posts (`Deliver`), which
//! are already encoded and shared between the user's sockets. It pings on a timer and closes
//! a socket that has been silent past the client timeout.
//!
//! Resuming: a new socket holds back live frames for up to `resume_hold` after its welcome,
//! until the client's first frame. If that frame is `resume`, the user's actor answers with
//! the replay, which is written before the held frames; otherwise the held frames are
//! written at once. So a replay never interleaves with, or duplicates, a live event.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::{Actor, ActorContext, Addr, AsyncContext, Handler, Message, StreamHandler};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use crate::close_code;
use crate::emit::UserHandle;
use crate::handler::{AgentContext, HandlerRequest};
use crate::ids::{random_id, SessionId, UserId};
use crate::inbound::{ClientFrame, ClientMessage};
use crate::inbound_gate::{GateLimits, InboundGate, RawFrame, Verdict};
use crate::outbound::{ControlFrame, ErrorCode, Frame};
use crate::registry::{Connect, Disconnect};
use crate::runtime::Shared;
use crate::stats::ActorStats;
use crate::user::{self, User};

/// Where the session is in delivering its user's frames.
enum Flow {
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

/// The longest single timer a session arms for token expiry; longer waits re-arm.
const MAX_TIMER: Duration = Duration::from_secs(24 * 60 * 60);

/// Stands for the bytes of a text frame actix refused as invalid UTF-8 before we saw them.
const INVALID_UTF8: &[u8] = &[0xFF];

/// What a session knows of its user's actor once welcomed.
struct UserLink {
    addr: Addr<User>,
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
    resume_at_connect: Option<(String, u64)>,
    /// When the token the socket was opened with expires.
    token_expires_at: Option<SystemTime>,
    gate: InboundGate,
    /// Verdicts on client frames that arrived before the welcome (messages to handle, errors
    /// to answer), acted on right after it, so the welcome is always the first frame.
    early: VecDeque<Verdict>,
    last_heard: Instant,
    stats: Arc<ActorStats>,
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
    let now = Instant::now();
    let session = Session {
        id: shared.next_session_id(),
        user_id: start.user_id,
        gate: InboundGate::new(GateLimits::from(&*shared.config), now),
        shared,
        user: None,
        flow: Flow::Connecting,
        resume_at_connect: start.resume_at_connect,
        token_expires_at: start.token_expires_at,
        early: VecDeque::new(),
        last_heard: now,
        stats: Arc::new(ActorStats::default()),
    };
    let offered: Vec<&str> = start.subprotocol.as_deref().into_iter().collect();
    ws::WsResponseBuilder::new(session, req, payload)
        .frame_size(max_frame)
        .protocols(&offered)
        .start()
}

impl Session {
    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: u16) {
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(code),
            description: Some(close_code::reason(code).to_owned()),
        }));
        ctx.stop();
    }

    fn send_control(&self, ctx: &mut ws::WebsocketContext<Self>, frame: &ControlFrame<'_>) {
        let frame = frame.encode();
        self.stats.queued(frame.len());
        self.write(ctx, frame);
    }

    /// Writes one frame the user's actor (or this session) queued.
    fn write(&self, ctx: &mut ws::WebsocketContext<Self>, frame: Frame) {
        self.stats.handled(frame.len());
        ctx.text(frame);
    }

    /// Writes the frames held back since the welcome, and goes live.
    fn release(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Flow::Holding(held) | Flow::Replaying(held) =
            std::mem::replace(&mut self.flow, Flow::Live)
        {
            for frame in held {
                self.write(ctx, frame);
            }
        }
    }

    fn heartbeat(&self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.last_heard.elapsed() > self.shared.config.client_timeout {
            log::info!(
                "session:{}: user:{} silent for {:?}; closing",
                self.id,
                self.user_id,
                self.last_heard.elapsed()
            );
            self.close(ctx, close_code::HEARTBEAT_TIMEOUT);
        } else {
            ctx.ping(b"");
        }
    }

    /// Runs a client data frame through the gate and acts on the verdict.
    fn on_frame(&mut self, frame: RawFrame<'_>, ctx: &mut ws::WebsocketContext<Self>) {
        let verdict = self.gate.accept(frame, Instant::now());
        if self.user.is_none() && matches!(verdict, Verdict::Message(_) | Verdict::Reject(_)) {
            if self.early.len() < self.shared.config.max_frames_before_welcome {
                self.early.push_back(verdict);
            } else {
                log::info!("session:{}: flooded before its welcome; closing", self.id);
                self.close(ctx, close_code::POLICY_VIOLATION);
            }
            return;
        }
        self.act_on(verdict, ctx);
    }

    fn act_on(&mut self, verdict: Verdict, ctx: &mut ws::WebsocketContext<Self>) {
        match verdict {
            Verdict::Message(message) => self.handle_message(message, ctx),
            Verdict::Reject(error) => {
                log::debug!("session:{}: refused a frame: {}", self.id, error.message);
                self.send_control(
                    ctx,
                    &ControlFrame::Error {
                        code: error.code,
                        message: &error.message,
                        client_ref: error.client_ref.as_ref(),
                    },
                );
            }
            Verdict::Close(code) => {
                log::info!(
                    "session:{}: user:{} closed with {code} ({})",
                    self.id,
                    self.user_id,
                    close_code::reason(code)
                );
                self.close(ctx, code);
            }
            Verdict::Pending => {}
        }
    }

    fn handle_message(&mut self, frame: ClientFrame, ctx: &mut ws::WebsocketContext<Self>) {
        let holding = matches!(self.flow, Flow::Holding(_));
        if holding {
            if let ClientMessage::Resume { .. } = frame.message {
                // Keep holding: the replay goes out first.
                if let Flow::Holding(held) = std::mem::replace(&mut self.flow, Flow::Live) {
                    self.flow = Flow::Replaying(held);
                }
            } else {
                self.release(ctx);
            }
        }
        let Some(user) = &self.user else { return };
        let user = user.addr.clone();
        let client_ref = frame.client_ref;
        match frame.message {
            ClientMessage::Ping => self.send_control(
                ctx,
                &ControlFrame::Pong {
                    client_ref: client_ref.as_ref(),
                },
            ),
            ClientMessage::StartAgent(start) => {
                let thread_id = start
                    .thread_id
                    .clone()
                    .unwrap_or_else(|| random_id("thread"));
                let request = start.user_request.clone();
                self.dispatch(
                    ctx,
                    thread_id,
                    request,
                    HandlerRequest::Start(start),
                    client_ref,
                );
            }
            ClientMessage::UserMessage(message) => {
                let (thread_id, request) = (message.thread_id.clone(), message.content.clone());
                self.dispatch(
                    ctx,
                    thread_id,
                    request,
                    HandlerRequest::Message(message),
                    client_ref,
                );
            }
            ClientMessage::StopAgent { run_id } => user.do_send(user::StopRun {
                session_id: self.id,
                run_id,
                client_ref,
            }),
            ClientMessage::SwitchThread { thread_id } => user.do_send(user::SwitchThread {
                session_id: self.id,
                thread_id,
                client_ref,
            }),
            ClientMessage::Resume { epoch, last_seq } => user.do_send(user::Resume {
                session_id: self.id,
                epoch,
                last_seq,
                holding,
            }),
        }
    }

    /// Closes the socket with 4002 when its token expires.
    fn schedule_token_expiry(&self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(expires_at) = self.token_expires_at else {
            return;
        };
        let left = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        ctx.run_later(left.min(MAX_TIMER), move |session, ctx| {
            if left > MAX_TIMER {
                session.schedule_token_expiry(ctx);
            } else {
                log::info!(
                    "session:{}: token of user:{} expired",
                    session.id,
                    session.user_id
                );
                session.close(ctx, close_code::TOKEN_EXPIRED);
            }
        });
    }

    fn dispatch(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
        thread_id: String,
        user_request: String,
        request: HandlerRequest,
        client_ref: Option<serde_json::Value>,
    ) {
        let Some(handler) = self.shared.handler.clone() else {
            self.send_control(
                ctx,
                &ControlFrame::Error {
                    code: ErrorCode::Unsupported,
                    message: "this server runs no agents",
                    client_ref: client_ref.as_ref(),
                },
            );
            return;
        };
        let Some(link) = &self.user else { return };
        let max_runs = self.shared.config.max_runs_per_user;
        let running = link.running_requests.clone();
        if running.fetch_add(1, Ordering::AcqRel) >= max_runs {
            running.fetch_sub(1, Ordering::AcqRel);
            let message = format!("at most {max_runs} requests may run at once");
            self.send_control(
                ctx,
                &ControlFrame::Error {
                    code: ErrorCode::TooManyRuns,
                    message: &message,
                    client_ref: client_ref.as_ref(),
                },
            );
            return;
        }
        let user = UserHandle::new(self.user_id.clone(), self.shared.bus.clone());
        let context = AgentContext::new(user, self.id, thread_id, user_request, client_ref);
        let work = handler.dispatch(context, request);
        // Detached from this actor: the run outlives a socket blip. The guard releases the
        // user's request slot however the task ends.
        let slot = RequestSlot(running);
        actix_web::rt::spawn(async move {
            let _slot = slot;
            work.await;
        });
    }
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        log::debug!("session:{}: opened for user:{}", self.id, self.user_id);
        self.shared.registry.do_send(Connect {
            session_id: self.id,
            user: self.user_id.clone(),
            addr: ctx.address(),
            stats: self.stats.clone(),
            resume: self.resume_at_connect.take(),
        });
        ctx.run_interval(self.shared.config.heartbeat_interval, |session, ctx| {
            session.heartbeat(ctx)
        });
        self.schedule_token_expiry(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        log::debug!("session:{}: closed", self.id);
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
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Overflow) => self.close(ctx, close_code::MESSAGE_TOO_BIG),
            // actix refuses a text frame that is not UTF-8 before we see its bytes; the
            // gate judges it like any invalid frame (an `error`, until the threshold).
            Err(ws::ProtocolError::Io(error)) if error.to_string().contains("utf-8") => {
                self.on_frame(RawFrame::Text(INVALID_UTF8), ctx)
            }
            Err(error) => {
                log::debug!("session:{}: protocol error: {error}", self.id);
                self.close(ctx, close_code::PROTOCOL_ERROR);
            }
        }
    }
}

/// Releases one of the user's request slots when a handler task ends (or is dropped).
struct RequestSlot(Arc<AtomicUsize>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
