//! The six agent events as Rust types, and the JSON envelope they travel in.
//!
//! Application code never builds these directly: it emits them through an
//! [`crate::AgentRun`], which makes wrong orders unrepresentable. The user actor numbers each
//! event and encodes it exactly once with [`EventFrame`]; the resulting bytes are shared by
//! every socket of that user. The wire form is pinned by golden files in `tests/golden/`.

use std::time::SystemTime;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

/// What an agent run reports, one variant per wire `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// `agent_started`: the run began.
    Started(AgentStarted),
    /// `agent_thinking`: a piece of the agent's visible reasoning.
    Thinking(AgentThinking),
    /// `tool_executing`: a tool call began.
    ToolExecuting(ToolExecuting),
    /// `tool_completed`: a tool call ended, with a result or an error.
    ToolCompleted(ToolCompleted),
    /// `agent_completed`: the run ended with an answer.
    Completed(AgentCompleted),
    /// `agent_error`: the run ended without an answer.
    Error(AgentError),
}

impl AgentEvent {
    /// The wire name carried in the envelope's `type` field.
    pub fn wire_type(&self) -> &'static str {
        match self {
            AgentEvent::Started(_) => "agent_started",
            AgentEvent::Thinking(_) => "agent_thinking",
            AgentEvent::ToolExecuting(_) => "tool_executing",
            AgentEvent::ToolCompleted(_) => "tool_completed",
            AgentEvent::Completed(_) => "agent_completed",
            AgentEvent::Error(_) => "agent_error",
        }
    }

    /// True for the two events that end a run.
    pub fn is_terminal(&self) -> bool {
        matches!(self, AgentEvent::Completed(_) | AgentEvent::Error(_))
    }

    pub(crate) fn tool_name(&self) -> Option<&str> {
        match self {
            AgentEvent::ToolExecuting(e) => Some(&e.tool_name),
            AgentEvent::ToolCompleted(e) => Some(&e.tool_name),
            _ => None,
        }
    }
}

/// Payload of `agent_started`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentStarted {
    /// The client's request that started the run, when a client started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_request: Option<String>,
    /// The `ref` the client sent with that request, so it can match the run to it.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub client_ref: Option<Value>,
}

/// Payload of `agent_thinking`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentThinking {
    /// The text to show.
    pub text: String,
}

/// Payload of `tool_executing`; `tool_name` travels at the top level of the envelope.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolExecuting {
    /// Unique within the run; pairs this event with its `tool_completed`.
    pub tool_call_id: String,
    /// The tool's name (top level on the wire).
    #[serde(skip)]
    pub tool_name: String,
    /// The arguments the tool was called with.
    pub args: Value,
}

/// Payload of `tool_completed`; `tool_name` travels at the top level of the envelope.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCompleted {
    /// The id of the `tool_executing` event this completes.
    pub tool_call_id: String,
    /// The tool's name (top level on the wire).
    #[serde(skip)]
    pub tool_name: String,
    /// `ok` with a `result`, or `error` with an `error` message.
    #[serde(flatten)]
    pub outcome: ToolOutcome,
    /// Wall time between `tool_executing` and this event.
    pub duration_ms: u64,
}

/// How a tool call ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ToolOutcome {
    /// The tool returned a result.
    Ok {
        /// The tool's result.
        result: Value,
    },
    /// The tool failed, or its call was dropped unfinished.
    Error {
        /// What went wrong, for people.
        error: String,
    },
}

/// Payload of `agent_completed`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentCompleted {
    /// The agent's final answer.
    pub answer: String,
    /// Wall time since `agent_started`.
    pub duration_ms: u64,
}

/// Payload of `agent_error`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentError {
    /// Why the run ended; see [`RunErrorCode`].
    pub code: RunErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

/// Machine-readable reasons a run ends with `agent_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunErrorCode {
    /// The application called [`crate::AgentRun::fail`].
    Failed,
    /// The client sent `stop_agent` for this run.
    Cancelled,
    /// The [`crate::AgentRun`] was dropped without `complete` or `fail`.
    Dropped,
    /// The code holding the [`crate::AgentRun`] panicked.
    Panicked,
    /// The node the run was running on stopped (it crashed, was killed, or lost Redis for
    /// longer than its lease) before the run ended; another node of the cluster ended the
    /// run on its behalf. Only with several nodes on Redis.
    NodeLost,
    /// The server could not publish the run's events (its Redis was unreachable or too slow
    /// for longer than its publish queue could hold): the run was stopped. Only with
    /// several nodes on Redis.
    EngineUnavailable,
}

/// The run an event belongs to: shared (in an `Arc`) by every event of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMeta {
    /// The run's id, e.g. `run_3f9a0c2e5b7d1a44`.
    pub run_id: String,
    /// The conversation thread the run belongs to.
    pub thread_id: String,
    /// The name of the agent doing the work.
    pub agent_name: String,
}

/// One numbered event, ready to be encoded as the wire envelope:
/// `{"type", "seq", "epoch", "thread_id", "run_id", "agent_name", "timestamp", "tool_name"?, "data"}`.
///
/// ```
/// use agentwire::event::*;
/// let meta = RunMeta { run_id: "run_1".into(), thread_id: "t".into(), agent_name: "a".into() };
/// let event = AgentEvent::Thinking(AgentThinking { text: "hm".into() });
/// let frame = EventFrame { seq: 7, epoch: "e1", meta: &meta, timestamp: std::time::UNIX_EPOCH, event: &event };
/// assert_eq!(
///     frame.to_json(),
///     r#"{"type":"agent_thinking","seq":7,"epoch":"e1","thread_id":"t","run_id":"run_1","agent_name":"a","timestamp":"1970-01-01T00:00:00.000000Z","data":{"text":"hm"}}"#
/// );
/// ```
#[derive(Debug, Clone, Copy)]
pub struct EventFrame<'a> {
    /// The user's sequence number for this event (contiguous from 1 within an epoch).
    pub seq: u64,
    /// The user's numbering epoch.
    pub epoch: &'a str,
    /// The run the event belongs to.
    pub meta: &'a RunMeta,
    /// When the event was emitted; encoded as RFC 3339 UTC with microseconds.
    pub timestamp: SystemTime,
    /// The event itself.
    pub event: &'a AgentEvent,
}

impl EventFrame<'_> {
    /// Encodes the envelope as one JSON text frame.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and `Value`s into a String cannot fail.
        serde_json::to_string(self).expect("event envelope serializes")
    }
}

impl Serialize for EventFrame<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tool_name = self.event.tool_name();
        let mut map = serializer.serialize_map(Some(8 + usize::from(tool_name.is_some())))?;
        map.serialize_entry("type", self.event.wire_type())?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("epoch", self.epoch)?;
        map.serialize_entry("thread_id", &self.meta.thread_id)?;
        map.serialize_entry("run_id", &self.meta.run_id)?;
        map.serialize_entry("agent_name", &self.meta.agent_name)?;
        let timestamp = humantime::format_rfc3339_micros(self.timestamp).to_string();
        map.serialize_entry("timestamp", &timestamp)?;
        if let Some(tool_name) = tool_name {
            map.serialize_entry("tool_name", tool_name)?;
        }
        match self.event {
            AgentEvent::Started(data) => map.serialize_entry("data", data)?,
            AgentEvent::Thinking(data) => map.serialize_entry("data", data)?,
            AgentEvent::ToolExecuting(data) => map.serialize_entry("data", data)?,
            AgentEvent::ToolCompleted(data) => map.serialize_entry("data", data)?,
            AgentEvent::Completed(data) => map.serialize_entry("data", data)?,
            AgentEvent::Error(data) => map.serialize_entry("data", data)?,
        }
        map.end()
    }
}
