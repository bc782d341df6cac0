// The events the golden files in this directory pin, one file per agent event type. Both
// encoders include this file: `tests/event_golden_files.rs` checks serde's encoding
// (`EventFrame::to_json`) against the files, and a unit test in `src/envelope.rs` checks the
// encoder the wire uses (`envelope::encode`), so the two are held to the same bytes. The
// including module brings `agentwire::event::*` (or `crate::event::*`) and `json!` into
// scope.

/// The epoch of every golden event.
pub const GOLDEN_EPOCH: &str = "5f1c9e2a7b3d4c60";

/// The run every golden event belongs to.
pub fn golden_meta() -> RunMeta {
    RunMeta {
        run_id: "run_00000000000000a1".into(),
        thread_id: "thread-1".into(),
        agent_name: "researcher".into(),
    }
}

/// When every golden event was emitted.
pub fn golden_timestamp() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_795_000_000_123_456)
}

/// The golden file's name (the event's wire type), its event and its `seq`, for every
/// agent event type.
pub fn golden_events() -> Vec<(&'static str, AgentEvent, u64)> {
    vec![
        (
            "agent_started",
            AgentEvent::Started(AgentStarted {
                user_request: Some("What is agentwire?".into()),
                client_ref: Some(json!("req-1")),
            }),
            1,
        ),
        (
            "agent_thinking",
            AgentEvent::Thinking(AgentThinking {
                text: "Looking it up".into(),
            }),
            2,
        ),
        (
            "tool_executing",
            AgentEvent::ToolExecuting(ToolExecuting {
                tool_call_id: "call_1".into(),
                tool_name: "web_search".into(),
                args: json!({ "query": "agentwire", "max_results": 3 }),
            }),
            3,
        ),
        (
            "tool_completed",
            AgentEvent::ToolCompleted(ToolCompleted {
                tool_call_id: "call_1".into(),
                tool_name: "web_search".into(),
                outcome: ToolOutcome::Ok {
                    result: json!({ "results": ["https://example.com"] }),
                },
                duration_ms: 412,
            }),
            4,
        ),
        (
            "agent_completed",
            AgentEvent::Completed(AgentCompleted {
                answer: "agentwire is a WebSocket runtime.".into(),
                duration_ms: 1830,
            }),
            5,
        ),
        (
            "agent_error",
            AgentEvent::Error(AgentError {
                code: RunErrorCode::Dropped,
                message: "the run ended without an answer".into(),
            }),
            6,
        ),
    ]
}
