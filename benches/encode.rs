//! Micro-benchmarks of the per-event work that does not need sockets: encoding each event
//! type into its wire envelope, and handing one encoded event to K sessions (encode once
//! and share the bytes, as the user actor does, against encoding per socket).
//!
//! `cargo bench --bench encode`

use std::hint::black_box;
use std::time::UNIX_EPOCH;

use agentwire::event::*;
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::json;

fn events() -> Vec<AgentEvent> {
    vec![
        AgentEvent::Started(AgentStarted {
            user_request: Some("What is the weather in Lisbon tomorrow?".into()),
            client_ref: Some(json!("req-1")),
        }),
        AgentEvent::Thinking(AgentThinking {
            text: "Looking up the forecast for Lisbon".into(),
        }),
        AgentEvent::ToolExecuting(ToolExecuting {
            tool_call_id: "call_1".into(),
            tool_name: "weather".into(),
            args: json!({ "city": "Lisbon", "days": 1 }),
        }),
        AgentEvent::ToolCompleted(ToolCompleted {
            tool_call_id: "call_1".into(),
            tool_name: "weather".into(),
            outcome: ToolOutcome::Ok {
                result: json!({ "high_c": 21, "low_c": 14, "sky": "clear" }),
            },
            duration_ms: 212,
        }),
        AgentEvent::Completed(AgentCompleted {
            answer: "Tomorrow in Lisbon: clear, 14 to 21 °C.".into(),
            duration_ms: 1480,
        }),
        AgentEvent::Error(AgentError {
            code: RunErrorCode::Failed,
            message: "the weather service timed out".into(),
        }),
    ]
}

fn meta() -> RunMeta {
    RunMeta {
        run_id: "run_3f9a0c2e5b7d1a44".into(),
        thread_id: "thread_8d1c2b3a4f5e6d7c".into(),
        agent_name: "assistant".into(),
    }
}

fn encode(c: &mut Criterion) {
    let meta = meta();
    let mut group = c.benchmark_group("encode");
    for event in events() {
        group.bench_function(event.wire_type(), |b| {
            b.iter(|| {
                EventFrame {
                    seq: black_box(42),
                    epoch: "5f1c9e2a7b3d4c60",
                    meta: &meta,
                    timestamp: UNIX_EPOCH,
                    event: black_box(&event),
                }
                .to_json()
            })
        });
    }
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let meta = meta();
    let event = AgentEvent::Thinking(AgentThinking {
        text: "Looking up the forecast for Lisbon".into(),
    });
    let frame = || EventFrame {
        seq: 42,
        epoch: "5f1c9e2a7b3d4c60",
        meta: &meta,
        timestamp: UNIX_EPOCH,
        event: &event,
    };
    let mut group = c.benchmark_group("fan_out");
    for k in [1usize, 4, 16] {
        group.bench_with_input(BenchmarkId::new("encode_once_share", k), &k, |b, &k| {
            b.iter(|| {
                let bytes: ByteString = frame().to_json().into();
                let copies: Vec<ByteString> = (0..k).map(|_| bytes.clone()).collect();
                black_box(copies)
            })
        });
        group.bench_with_input(BenchmarkId::new("encode_per_socket", k), &k, |b, &k| {
            b.iter(|| {
                let copies: Vec<ByteString> = (0..k).map(|_| frame().to_json().into()).collect();
                black_box(copies)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode, fan_out);
criterion_main!(benches);
