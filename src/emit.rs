//! Scoped emitting: the only way application code sends agent events.
//!
//! [`UserHandle`] is bound to one user; [`AgentRun`] to one run of that user; [`ToolCall`] to
//! one tool call of that run. Their methods make wrong orders unrepresentable: `agent_started`
//! is sent when the run is created, `tool_completed` only by a `ToolCall` (which sent its
//! `tool_executing`), and `complete`/`fail` consume the run, so nothing can follow them. A
//! `ToolCall` borrows its run, so the run cannot end while a call is open. Dropping either
//! unfinished (including while unwinding from a panic) still sends the closing event.
//! Every event goes through the engine, which numbers it in the user's stream and hands it
//! to the user's actor.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::Value;

use crate::engine::{RunStream, SharedEngine};
use crate::event::{
    AgentCompleted, AgentError, AgentEvent, AgentStarted, AgentThinking, RunErrorCode, RunMeta,
    ToolCompleted, ToolExecuting, ToolOutcome,
};
use crate::ids::{random_id, UserId};

/// A handle bound to one user: everything emitted through it reaches that user only.
///
/// Get one from [`crate::Runtime::user`] (from anywhere in the application) or from the
/// [`crate::AgentContext`] a handler receives.
#[derive(Clone)]
pub struct UserHandle {
    user_id: UserId,
    engine: SharedEngine,
}

impl UserHandle {
    pub(crate) fn new(user_id: UserId, engine: SharedEngine) -> Self {
        UserHandle { user_id, engine }
    }

    /// The user this handle is bound to.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// Starts a run on `thread_id` and sends `agent_started`.
    pub fn start_run(
        &self,
        thread_id: impl Into<String>,
        agent_name: impl Into<String>,
    ) -> AgentRun {
        self.start_run_for(
            thread_id.into(),
            agent_name.into(),
            AgentStarted {
                user_request: None,
                client_ref: None,
            },
        )
    }

    pub(crate) fn start_run_for(
        &self,
        thread_id: String,
        agent_name: String,
        started: AgentStarted,
    ) -> AgentRun {
        let meta = RunMeta {
            run_id: random_id("run"),
            thread_id,
            agent_name,
        };
        let run = AgentRun {
            stream: self.engine.open_run(self.user_id.clone(), meta),
            engine: self.engine.clone(),
            started: Instant::now(),
            next_tool: AtomicU32::new(1),
            finished: false,
        };
        run.publish(AgentEvent::Started(started));
        run
    }
}

/// One agent run of one user. Emits `agent_thinking` and tool calls, and ends with exactly one
/// of `agent_completed` ([`AgentRun::complete`]) or `agent_error` ([`AgentRun::fail`], or
/// automatically when dropped unfinished).
///
/// After the client stops the run (`stop_agent`), the user already received `agent_error`
/// with code `cancelled`; further emits are ignored and [`AgentRun::cancelled`] resolves.
pub struct AgentRun {
    engine: SharedEngine,
    stream: Arc<RunStream>,
    started: Instant,
    next_tool: AtomicU32,
    finished: bool,
}

impl AgentRun {
    /// The run's id, as sent in every event's `run_id`.
    pub fn run_id(&self) -> &str {
        &self.stream.meta.run_id
    }

    /// The thread the run belongs to.
    pub fn thread_id(&self) -> &str {
        &self.stream.meta.thread_id
    }

    /// The agent's name, as sent in every event's `agent_name`.
    pub fn agent_name(&self) -> &str {
        &self.stream.meta.agent_name
    }

    /// The user the run belongs to.
    pub fn user_id(&self) -> &UserId {
        &self.stream.user
    }

    /// True once the client stopped the run.
    pub fn is_cancelled(&self) -> bool {
        self.stream.stop.is_stopped()
    }

    /// Resolves when the client stops the run (`stop_agent`); use it in `select!` to abandon
    /// work early.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + '_ {
        self.stream.stop.stopped()
    }

    /// Waits while the user cannot take more events now, so a producer emitting in a
    /// tight loop neither grows server memory without bound nor runs ahead of the user's
    /// delivery: in process, while `max_user_backlog` or more of the user's events wait
    /// for the user's actor (it wakes the producer as soon as it takes them, so events
    /// spend their time on the way to the socket rather than in a queue); with Redis,
    /// while as many of the user's events wait to be published, or this node's publish
    /// queue is half full or more (Redis is slow or unreachable, or emitters outrun it;
    /// past full, events are refused and their run ends with `engine_unavailable`).
    /// Emitting never blocks; code that emits in a loop should await this every few dozen
    /// events. Returns at once when the run was cancelled.
    pub async fn ready(&self) {
        if self.stream.stop.is_stopped() || self.engine.has_room(&self.stream) {
            return;
        }
        tokio::select! {
            () = self.engine.wait_for_room(&self.stream) => {}
            () = self.stream.stop.stopped() => {}
        }
    }

    /// Sends `agent_thinking`.
    pub fn thinking(&self, text: impl Into<String>) {
        self.publish(AgentEvent::Thinking(AgentThinking { text: text.into() }));
    }

    /// Sends `tool_executing` and returns the call, which must end with
    /// [`ToolCall::complete`] or [`ToolCall::fail`] (or sends an error result when dropped).
    pub fn tool(&self, name: impl Into<String>, args: Value) -> ToolCall<'_> {
        let number = self.next_tool.fetch_add(1, Ordering::Relaxed);
        let call = ToolCall {
            run: self,
            tool_call_id: format!("call_{number}"),
            tool_name: name.into(),
            started: Instant::now(),
            finished: false,
        };
        self.publish(AgentEvent::ToolExecuting(ToolExecuting {
            tool_call_id: call.tool_call_id.clone(),
            tool_name: call.tool_name.clone(),
            args,
        }));
        call
    }

    /// Sends `agent_completed` with the final answer; the run is over.
    pub fn complete(mut self, answer: impl Into<String>) {
        self.finished = true;
        let duration_ms = self.elapsed_ms();
        self.publish(AgentEvent::Completed(AgentCompleted {
            answer: answer.into(),
            duration_ms,
        }));
    }

    /// Sends `agent_error` with code `failed`; the run is over.
    pub fn fail(mut self, message: impl Into<String>) {
        self.finished = true;
        self.end_with_error(RunErrorCode::Failed, message.into());
    }

    fn end_with_error(&self, code: RunErrorCode, message: String) {
        self.publish(AgentEvent::Error(AgentError { code, message }));
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn publish(&self, event: AgentEvent) {
        // After `stop_agent` the engine has ended the run (and sent `agent_error`); nothing
        // more of it goes out.
        if !self.stream.stop.is_live() {
            return;
        }
        self.engine.publish(&self.stream, event, SystemTime::now());
    }
}

impl Drop for AgentRun {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (code, message) = if std::thread::panicking() {
            (RunErrorCode::Panicked, "the agent's code panicked")
        } else {
            (RunErrorCode::Dropped, "the run ended without an answer")
        };
        log::debug!(
            "user:{}: run {} dropped unfinished ({code:?})",
            self.stream.user,
            self.stream.meta.run_id
        );
        self.end_with_error(code, message.to_owned());
    }
}

/// One tool call within a run; it borrows the run, so the run cannot end while it is open.
pub struct ToolCall<'run> {
    run: &'run AgentRun,
    tool_call_id: String,
    tool_name: String,
    started: Instant,
    finished: bool,
}

impl ToolCall<'_> {
    /// The call's id, as sent in `data.tool_call_id`.
    pub fn tool_call_id(&self) -> &str {
        &self.tool_call_id
    }

    /// Sends `tool_completed` with status `ok` and `result`.
    pub fn complete(mut self, result: Value) {
        self.finish(ToolOutcome::Ok { result });
    }

    /// Sends `tool_completed` with status `error`.
    pub fn fail(mut self, error: impl Into<String>) {
        self.finish(ToolOutcome::Error {
            error: error.into(),
        });
    }

    fn finish(&mut self, outcome: ToolOutcome) {
        self.finished = true;
        self.run.publish(AgentEvent::ToolCompleted(ToolCompleted {
            tool_call_id: std::mem::take(&mut self.tool_call_id),
            tool_name: std::mem::take(&mut self.tool_name),
            outcome,
            duration_ms: self.started.elapsed().as_millis() as u64,
        }));
    }
}

impl Drop for ToolCall<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let error = if std::thread::panicking() {
                "the tool's code panicked"
            } else {
                "the tool call ended without a result"
            };
            self.finish(ToolOutcome::Error {
                error: error.to_owned(),
            });
        }
    }
}
