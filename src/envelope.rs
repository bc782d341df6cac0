//! The user actor's event encoder: writes the JSON envelope of [`crate::event::EventFrame`]
//! with the parts that never change escaped once, not once per event.
//!
//! Every event of a run carries the same `thread_id`, `run_id` and `agent_name`, and every
//! event of a user actor the same `epoch`; [`RunFields`] and [`EpochField`] hold those
//! fields already encoded. Per event only `type`, `seq`, `timestamp`, `tool_name` and `data`
//! are written, into a reused per-thread buffer, and the finished frame is copied once into
//! an allocation of exactly its size that every socket of the user then shares. The output
//! is byte-for-byte what serializing an `EventFrame` with serde produces: the golden files
//! in `tests/golden/` pin both encoders, and a property test compares the two on arbitrary
//! strings.

use std::cell::RefCell;
use std::time::SystemTime;

use crate::event::{AgentEvent, RunMeta};
use crate::outbound::Frame;

/// A run's `"thread_id":…,"run_id":…,"agent_name":…`, encoded once.
#[derive(Debug)]
pub(crate) struct RunFields(Vec<u8>);

impl RunFields {
    pub(crate) fn new(meta: &RunMeta) -> Self {
        let mut out = Vec::with_capacity(64 + meta.run_id.len() + meta.thread_id.len());
        out.extend_from_slice(b"\"thread_id\":");
        write_json_str(&mut out, &meta.thread_id);
        out.extend_from_slice(b",\"run_id\":");
        write_json_str(&mut out, &meta.run_id);
        out.extend_from_slice(b",\"agent_name\":");
        write_json_str(&mut out, &meta.agent_name);
        RunFields(out)
    }

    /// The encoded fields, as [`encode_tail`] takes them.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A user actor's epoch and its `"epoch":…`, encoded once, in one allocation: the epoch
/// itself is read back out of the encoding (agentwire's epochs are hex, so encoding them
/// escapes nothing; an epoch that needed escaping keeps its own copy).
#[derive(Debug)]
pub(crate) struct EpochField {
    encoded: Box<str>,
    escaped_epoch: Option<Box<str>>,
}

impl EpochField {
    const PREFIX: &'static str = "\"epoch\":\"";

    pub(crate) fn new(epoch: &str) -> Self {
        let mut out = b"\"epoch\":".to_vec();
        write_json_str(&mut out, epoch);
        let encoded: Box<str> = String::from_utf8_lossy(&out).into();
        let plain = encoded.len() == Self::PREFIX.len() + epoch.len() + 1;
        EpochField {
            encoded,
            escaped_epoch: (!plain).then(|| epoch.into()),
        }
    }

    /// The epoch.
    pub(crate) fn epoch(&self) -> &str {
        match &self.escaped_epoch {
            Some(epoch) => epoch,
            None => &self.encoded[Self::PREFIX.len()..self.encoded.len() - 1],
        }
    }
}

thread_local! {
    /// Where frames are assembled before their one exact-size copy.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// Encodes one numbered event as its envelope.
pub(crate) fn encode(
    seq: u64,
    epoch: &EpochField,
    run: &RunFields,
    timestamp: SystemTime,
    event: &AgentEvent,
) -> Frame {
    SCRATCH.with(|scratch| {
        let mut out = scratch.borrow_mut();
        out.clear();
        write_envelope(&mut out, seq, epoch, run, timestamp, event);
        // serde_json writes UTF-8 and so does everything else here; the fallback only
        // exists so this can never panic.
        match std::str::from_utf8(&out) {
            Ok(text) => Frame::from(text),
            Err(_) => Frame::from(String::from_utf8_lossy(&out).into_owned()),
        }
    })
}

fn write_envelope(
    out: &mut Vec<u8>,
    seq: u64,
    epoch: &EpochField,
    run: &RunFields,
    timestamp: SystemTime,
    event: &AgentEvent,
) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(event.wire_type().as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(itoa_u64(seq, &mut [0; 20]));
    out.push(b',');
    out.extend_from_slice(epoch.encoded.as_bytes());
    out.push(b',');
    out.extend_from_slice(&run.0);
    write_after_run(out, timestamp, event);
}

/// The envelope from its run fields on (`"thread_id":…}`), for an engine that numbers events
/// elsewhere: it writes `{"type":"…","seq":<seq>,"epoch":"<epoch>",` in front of this, which
/// gives exactly what [`encode`] writes. `run_fields` is a [`RunFields`]' bytes
/// ([`RunFields::as_bytes`]), possibly read back from where the engine stored them.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn encode_tail(run_fields: &[u8], timestamp: SystemTime, event: &AgentEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(run_fields.len() + 128);
    out.extend_from_slice(run_fields);
    write_after_run(&mut out, timestamp, event);
    out
}

/// `,"timestamp":…,"tool_name":…,"data":…}`: everything after the run fields.
fn write_after_run(out: &mut Vec<u8>, timestamp: SystemTime, event: &AgentEvent) {
    // RFC 3339 digits and separators only: nothing to escape.
    out.extend_from_slice(b",\"timestamp\":\"");
    write_rfc3339_micros(out, timestamp);
    out.push(b'"');
    if let Some(tool_name) = event.tool_name() {
        out.extend_from_slice(b",\"tool_name\":");
        write_json_str(out, tool_name);
    }
    out.extend_from_slice(b",\"data\":");
    // Writing plain structs of strings and `Value`s into a Vec cannot fail.
    let _ = match event {
        AgentEvent::Started(data) => serde_json::to_writer(&mut *out, data),
        AgentEvent::Thinking(data) => serde_json::to_writer(&mut *out, data),
        AgentEvent::ToolExecuting(data) => serde_json::to_writer(&mut *out, data),
        AgentEvent::ToolCompleted(data) => serde_json::to_writer(&mut *out, data),
        AgentEvent::Completed(data) => serde_json::to_writer(&mut *out, data),
        AgentEvent::Error(data) => serde_json::to_writer(&mut *out, data),
    };
    out.push(b'}');
}

/// A JSON string literal, escaped exactly as serde_json escapes it.
fn write_json_str(out: &mut Vec<u8>, value: &str) {
    let _ = serde_json::to_writer(out, value);
}

/// `at` as RFC 3339 UTC with microseconds (`2026-11-26T15:04:05.123456Z`), exactly as
/// `humantime::format_rfc3339_micros` writes it, without going through `fmt`. Times before
/// 1970 are written as 1970-01-01T00:00:00.000000Z. The date and the minute
/// (`2026-11-26T15:04:`) are worked out once a minute per thread: events come in order.
fn write_rfc3339_micros(out: &mut Vec<u8>, at: SystemTime) {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let minute = secs / 60;
    let (cached, prefix) = MINUTE.get();
    if cached == minute {
        out.extend_from_slice(&prefix);
    } else {
        let start = out.len();
        write_minute(out, minute);
        if let Ok(prefix) = <[u8; MINUTE_LEN]>::try_from(&out[start..]) {
            MINUTE.set((minute, prefix));
        }
    }
    let second = (secs % 60) as u32;
    let micros = since.subsec_micros();
    out.extend_from_slice(&[
        b'0' + (second / 10) as u8,
        b'0' + (second % 10) as u8,
        b'.',
        b'0' + (micros / 100_000) as u8,
        b'0' + (micros / 10_000 % 10) as u8,
        b'0' + (micros / 1_000 % 10) as u8,
        b'0' + (micros / 100 % 10) as u8,
        b'0' + (micros / 10 % 10) as u8,
        b'0' + (micros % 10) as u8,
        b'Z',
    ]);
}

/// The length of `YYYY-MM-DDTHH:MM:` (a year of more than four digits is not cached).
const MINUTE_LEN: usize = 17;

thread_local! {
    /// The minute (since the Unix epoch) whose `YYYY-MM-DDTHH:MM:` was written last.
    static MINUTE: std::cell::Cell<(u64, [u8; MINUTE_LEN])> =
        const { std::cell::Cell::new((u64::MAX, [0; MINUTE_LEN])) };
}

/// `YYYY-MM-DDTHH:MM:` of the `minute`-th minute since the Unix epoch.
fn write_minute(out: &mut Vec<u8>, minute: u64) {
    let (days, rem) = ((minute / 1_440) as i64, minute % 1_440);
    // Days to a civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    push_digits(out, year as u64, 4);
    out.push(b'-');
    push_digits(out, month as u64, 2);
    out.push(b'-');
    push_digits(out, day as u64, 2);
    out.push(b'T');
    push_digits(out, rem / 60, 2);
    out.push(b':');
    push_digits(out, rem % 60, 2);
    out.push(b':');
}

/// `value` in decimal, zero-padded to `width` digits.
fn push_digits(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut buf = [0; 20];
    let text = itoa_u64(value, &mut buf);
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(text.len())));
    out.extend_from_slice(text);
}

/// `n` in decimal, without going through `fmt`.
fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn both(seq: u64, epoch: &str, meta: &RunMeta, at: SystemTime, event: &AgentEvent) {
        let fast = encode(
            seq,
            &EpochField::new(epoch),
            &RunFields::new(meta),
            at,
            event,
        );
        let serde = EventFrame {
            seq,
            epoch,
            meta,
            timestamp: at,
            event,
        }
        .to_json();
        assert_eq!(&*fast, serde.as_str());
    }

    fn events(text: &str) -> Vec<AgentEvent> {
        vec![
            AgentEvent::Started(AgentStarted {
                user_request: Some(text.into()),
                client_ref: Some(json!({ "k": text })),
            }),
            AgentEvent::Thinking(AgentThinking { text: text.into() }),
            AgentEvent::ToolExecuting(ToolExecuting {
                tool_call_id: "call_1".into(),
                tool_name: text.into(),
                args: json!([text, 1.5, null]),
            }),
            AgentEvent::ToolCompleted(ToolCompleted {
                tool_call_id: "call_1".into(),
                tool_name: text.into(),
                outcome: ToolOutcome::Error { error: text.into() },
                duration_ms: 3,
            }),
            AgentEvent::Completed(AgentCompleted {
                answer: text.into(),
                duration_ms: u64::MAX,
            }),
            AgentEvent::Error(AgentError {
                code: RunErrorCode::Panicked,
                message: text.into(),
            }),
        ]
    }

    /// The golden files' events, shared with `tests/event_golden_files.rs`.
    mod golden {
        use crate::event::*;
        use serde_json::json;

        include!("../tests/golden/events.rs");
    }

    /// The encoder the wire uses writes every golden file byte for byte.
    #[test]
    fn the_wire_encoding_matches_the_golden_files() {
        let epoch = EpochField::new(golden::GOLDEN_EPOCH);
        let run = RunFields::new(&golden::golden_meta());
        let events = golden::golden_events();
        let mut types: Vec<&str> = events.iter().map(|(_, e, _)| e.wire_type()).collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), 6, "one golden file per event type");
        for (name, event, seq) in events {
            let path = format!("{}/tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
            let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let wire = encode(seq, &epoch, &run, golden::golden_timestamp(), &event);
            assert_eq!(
                &*wire,
                expected.trim_end(),
                "the wire's {name} differs from {path}"
            );
        }
    }

    #[test]
    fn the_epoch_reads_back_from_its_encoding() {
        for epoch in ["0123456789abcdef", "", "with \"quotes\" and \\ and \u{1}"] {
            assert_eq!(EpochField::new(epoch).epoch(), epoch);
        }
    }

    #[test]
    fn timestamps_match_humantime() {
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&(0u64..253_402_300_799_999_999), |micros| {
                let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(micros);
                let mut ours = Vec::new();
                write_rfc3339_micros(&mut ours, at);
                let theirs = humantime::format_rfc3339_micros(at).to_string();
                prop_assert_eq!(String::from_utf8(ours).unwrap(), theirs);
                Ok(())
            })
            .unwrap();
        // Times in order, as events come: the date and minute are reused within a minute
        // and worked out again across minutes, days and years.
        let new_year = 1_798_761_599_000_000u64; // 2026-12-31T23:59:59Z
        for micros in (new_year - 120_000_000..new_year + 120_000_000).step_by(999_999) {
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(micros);
            let mut ours = Vec::new();
            write_rfc3339_micros(&mut ours, at);
            let theirs = humantime::format_rfc3339_micros(at).to_string();
            assert_eq!(String::from_utf8(ours).unwrap(), theirs);
        }
    }

    #[test]
    fn seq_digits() {
        for n in [0, 7, 10, 99, 12_345, u64::MAX] {
            assert_eq!(itoa_u64(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    proptest! {
        /// The fast encoder writes exactly what serde writes, whatever the strings hold
        /// (quotes, backslashes, control characters, non-ASCII).
        #[test]
        fn same_bytes_as_serde(
            text in any::<String>(),
            ids in prop::array::uniform3(any::<String>()),
            epoch in any::<String>(),
            seq in any::<u64>(),
            micros in 0u64..4_102_444_800_000_000,
        ) {
            let [run_id, thread_id, agent_name] = ids;
            let meta = RunMeta { run_id, thread_id, agent_name };
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(micros);
            for event in events(&text) {
                both(seq, &epoch, &meta, at, &event);
            }
        }
    }
}
