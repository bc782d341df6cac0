//! Property-based fuzzing of everything a client's bytes reach before a handler does: the
//! decoder ([`crate::inbound::decode`]) and the inbound gate's state machine
//! ([`crate::inbound_gate::InboundGate`]).
//!
//! CI runs a short pass (2,000 cases per property); a long pass is
//! `PROPTEST_CASES=1000000 cargo test --release --lib inbound_fuzz`. A failing case is kept in
//! `src/inbound_fuzz.regressions` (the whole corpus: a few lines) and replayed first on
//! every run.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::Value;

use crate::close_code;
use crate::inbound::{decode, ClientMessage, MAX_ID_BYTES};
use crate::inbound_gate::{GateLimits, InboundGate, RawFrame, Verdict};

pub(crate) fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object that looks like a client frame: a known (or unknown) type and fields that
/// are sometimes right and sometimes wrong.
fn frame_like() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("start_agent"),
        Just("user_message"),
        Just("stop_agent"),
        Just("switch_thread"),
        Just("ping"),
        Just("resume"),
        Just("launch"),
    ];
    let field = prop_oneof![
        Just("user_request"),
        Just("thread_id"),
        Just("context"),
        Just("content"),
        Just("run_id"),
        Just("epoch"),
        Just("last_seq"),
        Just("ref"),
        Just("type"),
    ];
    (kind, prop::collection::vec((field, json_value()), 0..5)).prop_map(|(kind, fields)| {
        let mut object = serde_json::Map::new();
        object.insert("type".into(), Value::from(kind));
        for (name, value) in fields {
            object.insert(name.into(), value);
        }
        Value::Object(object).to_string()
    })
}

/// One step of a client: a frame of some kind with some bytes, after some time.
#[derive(Debug, Clone)]
enum Step {
    Frame(u8, Vec<u8>),
    Wait(u64),
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        frame_like().prop_map(String::into_bytes),
        Just(br#"{"type":"ping"}"#.to_vec()),
        prop::collection::vec(any::<u8>(), 0..64),
        (0usize..3000).prop_map(|n| vec![b' '; n]),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        8 => (0u8..6, payload()).prop_map(|(kind, bytes)| Step::Frame(kind, bytes)),
        1 => (0u64..3_000).prop_map(Step::Wait),
    ];
    prop::collection::vec(step, 1..48)
}

fn raw(kind: u8, bytes: &[u8]) -> RawFrame<'_> {
    match kind {
        0 => RawFrame::Text(bytes),
        1 => RawFrame::Binary(bytes),
        2 => RawFrame::FirstText(bytes),
        3 => RawFrame::FirstBinary(bytes),
        4 => RawFrame::Continue(bytes),
        _ => RawFrame::Last(bytes),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoding_any_text_never_panics(text in ".{0,200}") {
        let _ = decode(&text);
    }

    #[test]
    fn decoded_frames_respect_the_documented_bounds(text in frame_like()) {
        if let Ok(frame) = decode(&text) {
            match frame.message {
                ClientMessage::StopAgent { run_id } => prop_assert!(!run_id.is_empty() && run_id.len() <= MAX_ID_BYTES),
                ClientMessage::Resume { epoch, .. } => prop_assert!(epoch.len() <= MAX_ID_BYTES),
                ClientMessage::SwitchThread { thread_id } => {
                    prop_assert!(thread_id.is_none_or(|t| !t.is_empty() && t.len() <= MAX_ID_BYTES))
                }
                ClientMessage::StartAgent(start) => {
                    prop_assert!(start.thread_id.is_none_or(|t| t.len() <= MAX_ID_BYTES))
                }
                ClientMessage::UserMessage(message) => prop_assert!(message.thread_id.len() <= MAX_ID_BYTES),
                ClientMessage::Ping => {}
            }
        }
    }

    #[test]
    fn the_gate_never_panics_and_keeps_its_promises(
        steps in steps(),
        accept_binary in any::<bool>(),
        rate in 1u32..50,
        burst in 1u32..50,
        max_invalid in 0usize..10,
    ) {
        let limits = GateLimits {
            max_message_bytes: 1024,
            accept_binary,
            rate_per_sec: rate,
            burst,
            max_invalid_frames: max_invalid,
        };
        let start = Instant::now();
        let mut now = start;
        let mut gate = InboundGate::new(limits, now);
        let mut closed: Option<u16> = None;
        let mut admitted = 0u64;
        let mut assembling = false;
        for step in steps {
            let (kind, bytes) = match step {
                Step::Wait(ms) => { now += Duration::from_millis(ms); continue; }
                Step::Frame(kind, bytes) => (kind, bytes),
            };
            let verdict = gate.accept(raw(kind, &bytes), now);
            if let Some(code) = closed {
                prop_assert_eq!(&verdict, &Verdict::Close(code), "closing is final");
                continue;
            }
            let whole = kind <= 1;
            match &verdict {
                Verdict::Close(code) => {
                    closed = Some(*code);
                    if whole && !assembling && bytes.len() > 1024 && (kind == 0 || accept_binary) {
                        prop_assert_eq!(*code, close_code::MESSAGE_TOO_BIG);
                    }
                    if (kind == 1 || kind == 3) && !accept_binary && !assembling {
                        prop_assert_eq!(*code, close_code::UNSUPPORTED_DATA);
                    }
                }
                Verdict::Pending => {
                    prop_assert!(matches!(kind, 2..=4), "only unfinished messages wait");
                    assembling = true;
                }
                Verdict::Message(_) | Verdict::Reject(_) => {
                    prop_assert!(kind == 0 || kind == 1 || kind == 5, "only whole messages are judged");
                    if kind == 1 { prop_assert!(accept_binary); }
                    assembling = false;
                    if matches!(verdict, Verdict::Message(_)) { admitted += 1; }
                }
            }
            // The token bucket: never more than the burst plus the refill so far.
            let refill = now.duration_since(start).as_secs_f64() * f64::from(rate);
            prop_assert!(admitted as f64 <= f64::from(burst) + refill + 1e-6);
        }
    }
}
