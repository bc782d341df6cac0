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
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, ActorContext, Addr, AsyncContext, Handler, Message, StreamHandler};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use bytestring::ByteString;

use crate::close_code;
use crate::emit::UserHandle;
use crate::handler::{AgentContext, HandlerRequest};
use crate::ids::{random_id, SessionId, UserId};
use crate::inbound::{self, ClientMessage};
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

pub(crate) struct Session {
    id: SessionId,
    user_id: UserId,
    shared: Arc<Shared>,
    /// The user's actor, known once the welcome frame arrived.
    user: Option<Addr<User>>,
    flow: Flow,
    /// `?epoch=&last_seq=` from the upgrade request, handed to the registry on connect.
    resume_at_connect: Option<(String, u64)>,
    /// Client frames that arrived before the welcome, handled right after it.
    early_frames: VecDeque<ByteString>,
    last_heard: Instant,
    stats: Arc<ActorStats>,
}

/// Performs the WebSocket upgrade for an authenticated request and starts its session.
/// `subprotocol` is echoed when the token came as `jwt.<token>`.
pub(crate) fn upgrade(
    req: &HttpRequest,
    payload: web::Payload,
    shared: Arc<Shared>,
    user_id: UserId,
    subprotocol: Option<&str>,
    resume_at_connect: Option<(String, u64)>,
) -> Result<HttpResponse, actix_web::Error> {
    let max_frame = shared.config.max_frame_bytes;
    let session = Session {
        id: shared.next_session_id(),
        user_id,
        shared,
        user: None,
        flow: Flow::Connecting,
        resume_at_connect,
        early_frames: VecDeque::new(),
        last_heard: Instant::now(),
        stats: Arc::new(ActorStats::default()),
    };
    let offered: Vec<&str> = subprotocol.into_iter().collect();
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

    fn handle_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let frame = match inbound::decode(text) {
            Ok(frame) => frame,
            Err(error) => {
                log::debug!("session:{}: refused a frame: {}", self.id, error.message);
                self.send_control(
                    ctx,
                    &ControlFrame::Error {
                        code: error.code,
                        message: &error.message,
                        client_ref: error.client_ref.as_ref(),
                    },
                );
                return;
            }
        };
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
        let user = UserHandle::new(self.user_id.clone(), self.shared.bus.clone());
        let context = AgentContext::new(user, self.id, thread_id, user_request, client_ref);
        // Detached from this actor: the run outlives a socket blip.
        actix_web::rt::spawn(handler.dispatch(context, request));
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
            Ok(ws::Message::Text(text)) => {
                if self.user.is_some() {
                    self.handle_text(&text, ctx);
                } else if self.early_frames.len() < self.shared.config.max_frames_before_welcome {
                    self.early_frames.push_back(text);
                } else {
                    log::info!("session:{}: flooded before its welcome; closing", self.id);
                    self.close(ctx, close_code::POLICY_VIOLATION);
                }
            }
            Ok(ws::Message::Binary(_)) | Ok(ws::Message::Continuation(_)) => {
                self.close(ctx, close_code::UNSUPPORTED_DATA)
            }
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Overflow) => self.close(ctx, close_code::MESSAGE_TOO_BIG),
            Err(error) => {
                log::debug!("session:{}: protocol error: {error}", self.id);
                self.close(ctx, close_code::PROTOCOL_ERROR);
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
    pub frame: Frame,
    pub resuming: bool,
}

impl Handler<Welcome> for Session {
    type Result = ();

    fn handle(&mut self, msg: Welcome, ctx: &mut Self::Context) {
        self.write(ctx, msg.frame);
        self.user = Some(msg.user);
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
        while let Some(text) = self.early_frames.pop_front() {
            self.handle_text(&text, ctx);
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
