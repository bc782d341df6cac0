//! Golden files pin the exact JSON of every agent event type (field names, order, and the
//! `tool_name`/`tool_call_id` placement). Set `UPDATE_GOLDEN=1` to rewrite them after an
//! intended wire change, then review the diff. The events are in `tests/golden/events.rs`,
//! which the wire encoder's own golden test (in `src/envelope.rs`) shares.

use std::time::UNIX_EPOCH;

use agentwire::event::*;
use serde_json::json;

include!("golden/events.rs");

fn check(name: &str) {
    let meta = golden_meta();
    let (_, event, seq) = golden_events()
        .into_iter()
        .find(|(file, _, _)| *file == name)
        .unwrap_or_else(|| panic!("no golden event {name}"));
    let frame = EventFrame {
        seq,
        epoch: GOLDEN_EPOCH,
        meta: &meta,
        timestamp: golden_timestamp(),
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
    check("agent_started");
}

#[test]
fn agent_thinking() {
    check("agent_thinking");
}

#[test]
fn tool_executing() {
    check("tool_executing");
}

#[test]
fn tool_completed() {
    check("tool_completed");
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
    check("agent_completed");
}

#[test]
fn agent_error() {
    check("agent_error");
}
