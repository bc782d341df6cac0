//! The application's side of inbound traffic: the [`AgentHandler`] trait.
//!
//! The session actor decodes `start_agent` and `user_message` frames and hands them to the
//! application's handler with an [`AgentContext`] bound to the authenticated user, so a
//! handler can only emit to the user who asked. Each call runs as its own task, detached
//! from the socket: a run keeps going if the socket blips. A panic in handler code is caught
//! and logged; the run it held ends with `agent_error` (code `panicked`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::Value;

use crate::emit::{AgentRun, UserHandle};
use crate::event::AgentStarted;
use crate::ids::SessionId;
use crate::inbound::{StartAgent, UserMessage};

/// What an application implements to answer clients.
///
/// ```
/// use agentwire::{AgentContext, AgentHandler, StartAgent};
///
/// struct Echo;
///
/// impl AgentHandler for Echo {
///     async fn start_agent(&self, ctx: AgentContext, request: StartAgent) {
///         let run = ctx.start_run("echo");
///         run.thinking("repeating what you said");
///         run.complete(request.user_request);
///     }
/// }
/// ```
pub trait AgentHandler: Send + Sync + 'static {
    /// A client sent `start_agent`.
    fn start_agent(
        &self,
        ctx: AgentContext,
        request: StartAgent,
    ) -> impl Future<Output = ()> + Send;

    /// A client sent `user_message`. By default it is answered like a `start_agent` whose
    /// request is the message, on the message's thread.
    fn user_message(
        &self,
        ctx: AgentContext,
        message: UserMessage,
    ) -> impl Future<Output = ()> + Send {
        self.start_agent(
            ctx,
            StartAgent {
                user_request: message.content,
                thread_id: Some(message.thread_id),
                context: None,
            },
        )
    }
}

/// What a handler knows about the request: who asked, on which socket and thread.
pub struct AgentContext {
    user: UserHandle,
    session_id: SessionId,
    thread_id: String,
    user_request: String,
    client_ref: Option<Value>,
}

impl AgentContext {
    pub(crate) fn new(
        user: UserHandle,
        session_id: SessionId,
        thread_id: String,
        user_request: String,
        client_ref: Option<Value>,
    ) -> Self {
        AgentContext {
            user,
            session_id,
            thread_id,
            user_request,
            client_ref,
        }
    }

    /// The user who sent the request; emitting through it reaches that user only.
    pub fn user(&self) -> &UserHandle {
        &self.user
    }

    /// The socket the request came from.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The request's thread (the client's, or a new one when it sent none).
    pub fn thread_id(&self) -> &str {
        &self.thread_id
    }

    /// Starts a run for this request on its thread; `agent_started` carries the request
    /// and the client's `ref`.
    pub fn start_run(&self, agent_name: impl Into<String>) -> AgentRun {
        self.user.start_run_for(
            self.thread_id.clone(),
            agent_name.into(),
            AgentStarted {
                user_request: Some(self.user_request.clone()),
                client_ref: self.client_ref.clone(),
            },
        )
    }
}

/// A decoded request for the handler.
pub(crate) enum HandlerRequest {
    Start(StartAgent),
    Message(UserMessage),
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// [`AgentHandler`] behind a pointer, so the runtime does not need to be generic.
pub(crate) trait DynHandler: Send + Sync + 'static {
    fn dispatch(self: Arc<Self>, ctx: AgentContext, request: HandlerRequest) -> BoxFuture;
}

impl<H: AgentHandler> DynHandler for H {
    fn dispatch(self: Arc<Self>, ctx: AgentContext, request: HandlerRequest) -> BoxFuture {
        let user = ctx.user().user_id().clone();
        let work = async move {
            match request {
                HandlerRequest::Start(start) => self.start_agent(ctx, start).await,
                HandlerRequest::Message(message) => self.user_message(ctx, message).await,
            }
        };
        Box::pin(AssertUnwindSafe(work).catch_unwind().map(move |outcome| {
            if outcome.is_err() {
                log::error!(
                    "user:{user}: the agent handler panicked; its run ended with agent_error"
                );
            }
        }))
    }
}
