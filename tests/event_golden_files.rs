//! Golden files pin the exact JSON of every agent event type (field names, order, and the
//! `tool_name`/`tool_call_id` placement). Set `UPDATE_GOLDEN=1` to rewrite them after an
//! intended wire change, then review the diff.

use std::time::{Duration, UNIX_EPOCH};

use agentwire::event::*;
use serde_json::json;

fn check(name: &str, event: AgentEvent, seq: u64) {
    let meta = RunMeta {
        run_id: "run_00000000000000a1".into(),
        thread_id: "thread-1".into(),
        agent_name: "researcher".into(),
    };
    let frame = EventFrame {
        seq,
        epoch: "5f1c9e2a7b3d4c60",
        meta: &meta,
        timestamp: UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456),
        event: &event,
    };
    assert_eq!(event.wire_type(), name);
    let actual = frame.to_json();
    let path = format!("{}/tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, format!("{actual}\n")).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (run with UPDATE_GOLDEN=1 to create it)"));
    assert_eq!(actual, expected.trim_end(), "{name} differs from {path}");
}

#[test]
fn agent_started() {
    check(
        "agent_started",
        AgentEvent::Started(AgentStarted {
            user_request: Some("What is agentwire?".into()),
            client_ref: Some(json!("req-1")),
        }),
        1,
    );
}

#[test]
fn agent_thinking() {
    check(
        "agent_thinking",
        AgentEvent::Thinking(AgentThinking {
            text: "Looking it up".into(),
        }),
        2,
    );
}

#[test]
fn tool_executing() {
    check(
        "tool_executing",
        AgentEvent::ToolExecuting(ToolExecuting {
            tool_call_id: "call_1".into(),
            tool_name: "web_search".into(),
            args: json!({ "query": "agentwire", "max_results": 3 }),
        }),
        3,
    );
}

#[test]
fn tool_completed() {
    check(
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
    );
}

#[test]
fn tool_completed_with_error() {
    let event = AgentEvent::ToolCompleted(ToolCompleted {
        tool_call_id: "call_2".into(),
        tool_name: "web_search".into(),
        outcome: ToolOutcome::Error {
            error: "rate limited".into(),
        },
        duration_ms: 9,
    });
    let meta = RunMeta {
        run_id: "r".into(),
        thread_id: "t".into(),
        agent_name: "a".into(),
    };
    let json: serde_json::Value = serde_json::from_str(
        &EventFrame {
            seq: 1,
            epoch: "e",
            meta: &meta,
            timestamp: UNIX_EPOCH,
            event: &event,
        }
        .to_json(),
    )
    .unwrap();
    assert_eq!(json["tool_name"], "web_search");
    assert_eq!(
        json["data"],
        json!({ "tool_call_id": "call_2", "status": "error", "error": "rate limited", "duration_ms": 9 })
    );
}

#[test]
fn agent_completed() {
    check(
        "agent_completed",
        AgentEvent::Completed(AgentCompleted {
            answer: "agentwire is a WebSocket runtime.".into(),
            duration_ms: 1830,
        }),
        5,
    );
}

#[test]
fn agent_error() {
    check(
        "agent_error",
        AgentEvent::Error(AgentError {
            code: RunErrorCode::Dropped,
            message: "the run ended without an answer".into(),
        }),
        6,
    );
}
