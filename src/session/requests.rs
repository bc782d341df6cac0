//! The session's inbound side: client frames through the gate, then to the application's
//! handler (in a detached task, within the user's request limit) or to the user's actor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix_web_actors::ws;

use super::delivery::Flow;
use super::Session;
use crate::close_code;
use crate::emit::UserHandle;
use crate::handler::{AgentContext, HandlerRequest};
use crate::ids::random_id;
use crate::inbound::{ClientFrame, ClientMessage};
use crate::inbound_gate::{RawFrame, Verdict};
use crate::outbound::{ControlFrame, ErrorCode};
use crate::user;

impl Session {
    /// Runs a client data frame through the gate and acts on the verdict.
    pub(super) fn on_frame(&mut self, frame: RawFrame<'_>, ctx: &mut ws::WebsocketContext<Self>) {
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

    pub(super) fn act_on(&mut self, verdict: Verdict, ctx: &mut ws::WebsocketContext<Self>) {
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

    pub(super) fn handle_message(
        &mut self,
        frame: ClientFrame,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
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
            ClientMessage::SwitchThread { thread_id } => {
                self.thread_filter.clone_from(&thread_id);
                user.do_send(user::SwitchThread {
                    session_id: self.id,
                    thread_id,
                    client_ref,
                })
            }
            ClientMessage::Resume {
                epoch,
                last_seq,
                partial,
            } => user.do_send(user::Resume {
                session_id: self.id,
                epoch,
                last_seq,
                partial,
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
        let user = UserHandle::new(self.user_id.clone(), self.shared.engine.clone());
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

/// Releases one of the user's request slots when a handler task ends (or is dropped).
struct RequestSlot(Arc<AtomicUsize>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
