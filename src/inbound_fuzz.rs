//! Property-based fuzzing of everything a client's bytes reach before a handler does: the
//! decoder ([`crate::inbound::decode`]) and the inbound gate's state machine
//! ([`crate::inbound_gate::InboundGate`]), whose every verdict is compared with the one an
//! independent model of the documented rules computes (`inbound_gate_model`).
//!
//! CI runs a short pass (2,000 cases per property); a long pass is
//! `PROPTEST_CASES=1000000 cargo test --release --lib inbound_fuzz`. When a case fails,
//! proptest writes its seed to `src/inbound_fuzz.regressions`; the committed file is replayed
//! first on every run. The properties that count what they saw (how many frames decoded,
//! which verdicts the gate gave) also assert that the run was not vacuous, once it has at
//! least [`COVERAGE_CASES`] cases.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{json, Map, Value};

use crate::inbound::{decode, ClientFrame, ClientMessage, StartAgent, UserMessage, MAX_ID_BYTES};
use crate::inbound_gate::{GateLimits, InboundGate};
use crate::inbound_gate_model::{
    raw, Expected, Model, BINARY, CONTINUE, FIRST_BINARY, FIRST_TEXT, LAST, TEXT,
};

/// The smallest run for which the coverage of a property is asserted.
const COVERAGE_CASES: u32 = 1_000;

/// The gate's message limit in these properties.
const MAX_MESSAGE: usize = 1024;

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
        // For the properties run by hand; `proptest!` sets its own.
        source_file: Some(file!()),
        ..ProptestConfig::default()
    }
}

/// Runs `property` over `strategy` with [`config`], panicking on a failure as `proptest!`
/// would.
fn run<S: Strategy>(strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>) -> u32 {
    let config = config();
    let cases = config.cases;
    if let Err(failure) = TestRunner::new(config).run(&strategy, property) {
        panic!("{failure}");
    }
    cases
}

fn leaf(floats: bool) -> BoxedStrategy<Value> {
    let plain = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
    ];
    if !floats {
        return plain.boxed();
    }
    let float = any::<f64>()
        .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number));
    prop_oneof![5 => plain, 1 => float].boxed()
}

fn json_of(leaf: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Any JSON value, a few levels deep.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    json_of(leaf(true))
}

/// An id as the decoder accepts it: 1 to 128 bytes, no control characters (mostly short).
fn id() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z0-9_-]{1,12}", 1 => "[a-zA-Z0-9_.:-]{1,128}"]
}

/// A well-formed client frame as JSON text, and what it must decode to.
fn valid_frame() -> impl Strategy<Value = (String, ClientFrame)> {
    // No floats: serde_json does not promise to read back every float it writes.
    let context = prop::collection::btree_map("[a-z]{1,5}", json_of(leaf(false)), 0..3);
    let message = prop_oneof![
        (
            ".{0,40}",
            prop::option::of(id()),
            prop::option::weighted(0.3, context)
        )
            .prop_map(|(user_request, thread_id, context)| {
                ClientMessage::StartAgent(StartAgent {
                    user_request,
                    thread_id,
                    context: context.map(|c: BTreeMap<_, _>| c.into_iter().collect()),
                })
            }),
        (".{0,40}", id()).prop_map(|(content, thread_id)| {
            ClientMessage::UserMessage(UserMessage { content, thread_id })
        }),
        id().prop_map(|run_id| ClientMessage::StopAgent { run_id }),
        prop::option::of(id()).prop_map(|thread_id| ClientMessage::SwitchThread { thread_id }),
        Just(ClientMessage::Ping),
        (id(), any::<u64>(), any::<bool>()).prop_map(|(epoch, last_seq, partial)| {
            ClientMessage::Resume {
                epoch,
                last_seq,
                partial,
            }
        }),
    ];
    let client_ref = prop_oneof![
        Just(None),
        any::<i64>().prop_map(|n| Some(json!(n))),
        "[ -~]{0,128}".prop_map(|s| Some(json!(s))),
    ];
    (message, client_ref).prop_map(|(message, client_ref)| {
        let text = to_json(&message, client_ref.as_ref());
        (
            text,
            ClientFrame {
                client_ref,
                message,
            },
        )
    })
}

/// The JSON a client sends for `message`.
fn to_json(message: &ClientMessage, client_ref: Option<&Value>) -> String {
    let mut frame = match message {
        ClientMessage::StartAgent(start) => {
            let mut frame = json!({ "type": "start_agent", "user_request": start.user_request });
            if let Some(thread_id) = &start.thread_id {
                frame["thread_id"] = json!(thread_id);
            }
            if let Some(context) = &start.context {
                frame["context"] = Value::Object(context.clone());
            }
            frame
        }
        ClientMessage::UserMessage(m) => {
            json!({ "type": "user_message", "content": m.content, "thread_id": m.thread_id })
        }
        ClientMessage::StopAgent { run_id } => json!({ "type": "stop_agent", "run_id": run_id }),
        ClientMessage::SwitchThread { thread_id } => {
            json!({ "type": "switch_thread", "thread_id": thread_id })
        }
        ClientMessage::Ping => json!({ "type": "ping" }),
        ClientMessage::Resume {
            epoch,
            last_seq,
            partial: false,
        } => json!({ "type": "resume", "epoch": epoch, "last_seq": last_seq }),
        ClientMessage::Resume {
            epoch,
            last_seq,
            partial: true,
        } => json!({ "type": "resume", "epoch": epoch, "last_seq": last_seq, "partial": true }),
    };
    if let Some(client_ref) = client_ref {
        frame["ref"] = client_ref.clone();
    }
    frame.to_string()
}

/// A JSON object that looks like a client frame: a known (or unknown) type, most of its
/// fields present, their values usually of the right type with lengths on both sides of
/// the bounds, sometimes anything at all, and now and then a field that does not belong.
fn frame_like() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just(("start_agent", &["user_request", "thread_id", "context"][..])),
        Just(("user_message", &["content", "thread_id"][..])),
        Just(("stop_agent", &["run_id"][..])),
        Just(("switch_thread", &["thread_id"][..])),
        Just(("ping", &[][..])),
        Just(("resume", &["epoch", "last_seq"][..])),
        Just(("launch", &["run_id"][..])),
    ];
    let value = prop_oneof![
        6 => ".{0,160}".prop_map(Value::String),
        1 => "\\PC{120,140}".prop_map(Value::String),
        1 => any::<u64>().prop_map(Value::from),
        1 => json_value(),
    ];
    let values = prop::collection::vec((prop::bool::weighted(0.85), value), 3);
    let extra = prop::option::weighted(0.15, (".{1,8}", json_value()));
    (kind, values, extra).prop_map(|((kind, fields), values, extra)| {
        let mut object = Map::new();
        object.insert("type".into(), Value::from(kind));
        for (name, (present, value)) in fields.iter().zip(values) {
            let value = match (*name, value) {
                ("context", Value::String(_)) => json!({}),
                ("last_seq", Value::String(s)) => Value::from(s.len()),
                (_, value) => value,
            };
            if present {
                object.insert((*name).into(), value);
            }
        }
        if let Some((name, value)) = extra {
            object.insert(name, value);
        }
        Value::Object(object).to_string()
    })
}

/// One step of a client: a frame of some kind with some bytes, a whole message sent in
/// fragments, or a wait.
#[derive(Debug, Clone)]
enum Step {
    Frame(u8, Vec<u8>),
    Fragmented(bool, Vec<Vec<u8>>),
    Wait(u64),
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => valid_frame().prop_map(|(text, _)| text.into_bytes()),
        1 => frame_like().prop_map(String::into_bytes),
        1 => Just(br#"{"type":"ping"}"#.to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        // Valid JSON broken by one byte that is never UTF-8, or cut inside a character.
        1 => (valid_frame(), any::<prop::sample::Index>()).prop_map(|((text, _), at)| {
            let mut bytes = text.into_bytes();
            bytes.insert(at.index(bytes.len() + 1), 0xFF);
            bytes
        }),
        1 => Just("{\"type\":\"ping\",\"ref\":\"é\"}".as_bytes()[..22].to_vec()),
        1 => (0usize..3000).prop_map(|n| vec![b' '; n]),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let fragmented = (
        any::<bool>(),
        payload(),
        prop::collection::vec(any::<prop::sample::Index>(), 1..4),
    )
        .prop_map(|(text, bytes, cuts)| {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.extend([0, bytes.len()]);
            cuts.sort_unstable();
            let pieces = cuts
                .windows(2)
                .map(|w| bytes[w[0]..w[1]].to_vec())
                .collect();
            Step::Fragmented(text, pieces)
        });
    let step = prop_oneof![
        6 => (0u8..6, payload()).prop_map(|(kind, bytes)| Step::Frame(kind, bytes)),
        3 => (prop::bool::weighted(0.8), payload())
            .prop_map(|(text, bytes)| Step::Frame(if text { TEXT } else { BINARY }, bytes)),
        2 => fragmented,
        // Short waits refill the token bucket; long ones straddle the 60 s window of the
        // invalid-frame count.
        2 => prop_oneof![3 => 0u64..3_000, 1 => 55_000u64..65_000].prop_map(Step::Wait),
    ];
    prop::collection::vec(step, 1..48)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoding_any_text_never_panics(text in ".{0,200}") {
        let _ = decode(&text);
    }

    #[test]
    fn valid_frames_decode_to_exactly_what_was_sent(frame in valid_frame()) {
        let (text, expected) = frame;
        prop_assert_eq!(decode(&text), Ok(expected), "{}", text);
    }
}

#[test]
fn decoded_frames_respect_the_documented_bounds() {
    let decoded = RefCell::new(0u32);
    let cases = run(frame_like(), |text| {
        let Ok(frame) = decode(&text) else {
            return Ok(());
        };
        *decoded.borrow_mut() += 1;
        let id_ok = |id: &str| !id.is_empty() && id.len() <= MAX_ID_BYTES;
        match frame.message {
            ClientMessage::StopAgent { run_id } => prop_assert!(id_ok(&run_id)),
            ClientMessage::Resume { epoch, .. } => prop_assert!(id_ok(&epoch)),
            ClientMessage::SwitchThread { thread_id } => {
                prop_assert!(thread_id.is_none_or(|t| id_ok(&t)))
            }
            ClientMessage::StartAgent(start) => {
                prop_assert!(start.thread_id.is_none_or(|t| id_ok(&t)))
            }
            ClientMessage::UserMessage(message) => prop_assert!(id_ok(&message.thread_id)),
            ClientMessage::Ping => {}
        }
        if let Some(Value::String(client_ref)) = &frame.client_ref {
            prop_assert!(client_ref.len() <= MAX_ID_BYTES);
        }
        Ok(())
    });
    let decoded = decoded.into_inner();
    if cases >= COVERAGE_CASES {
        assert!(
            decoded >= cases / 10,
            "only {decoded} of {cases} frame-like inputs decoded: the bounds went unchecked"
        );
    }
}

#[test]
fn the_gate_answers_every_frame_as_the_model_of_its_rules_does() {
    let seen = RefCell::new(BTreeMap::<String, u32>::new());
    let limits = (
        any::<bool>(),
        1u32..50,
        prop_oneof![1u32..8, 1u32..50],
        0usize..10,
    );
    let cases = run((steps(), limits), |(steps, limits)| {
        let (accept_binary, rate, burst, max_invalid) = limits;
        let limits = GateLimits {
            max_message_bytes: MAX_MESSAGE,
            accept_binary,
            rate_per_sec: rate,
            burst,
            max_invalid_frames: max_invalid,
        };
        let start = Instant::now();
        let mut now = start;
        let mut gate = InboundGate::new(limits.clone(), now);
        let mut model = Model::new(limits, now);
        let mut admitted = 0u64;
        let frames = steps.into_iter().flat_map(|step| match step {
            Step::Wait(ms) => vec![(None, ms)],
            Step::Frame(kind, bytes) => vec![(Some((kind, bytes)), 0)],
            Step::Fragmented(text, pieces) => {
                let last = pieces.len() - 1;
                let kind = |i| match (i, text) {
                    (0, true) if last == 0 => TEXT,
                    (0, false) if last == 0 => BINARY,
                    (0, true) => FIRST_TEXT,
                    (0, false) => FIRST_BINARY,
                    (i, _) if i == last => LAST,
                    _ => CONTINUE,
                };
                pieces
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| (Some((kind(i), p)), 0))
                    .collect()
            }
        });
        for (frame, wait) in frames {
            now += Duration::from_millis(wait);
            let Some((kind, bytes)) = frame else { continue };
            let expected = model.step(kind, &bytes, now);
            let actual = Expected::of(gate.accept(raw(kind, &bytes), now));
            prop_assert_eq!(
                &actual,
                &expected,
                "kind {} bytes {:?}",
                kind,
                String::from_utf8_lossy(&bytes)
            );
            *seen.borrow_mut().entry(actual.label()).or_default() += 1;
            if matches!(actual, Expected::Message(_)) {
                admitted += 1;
            }
            // The token bucket: never more than the burst plus the refill so far.
            let refill = now.duration_since(start).as_secs_f64() * f64::from(rate);
            prop_assert!(admitted as f64 <= f64::from(burst) + refill + 1e-6);
        }
        Ok(())
    });
    let seen = seen.into_inner();
    if cases >= COVERAGE_CASES {
        for label in [
            "message",
            "invalid",
            "rate_limited",
            "pending",
            "1002",
            "1003",
            "1007",
            "1008",
            "1009",
            "4008",
        ] {
            assert!(
                seen.contains_key(label),
                "no case reached `{label}`: {seen:?}"
            );
        }
    }
}
