//! The engine's records in Redis and on its channels, and their parsers.
//!
//! Every record is a run of length-prefixed fields, `<decimal byte length>:<bytes>`, so a
//! node reads an event without parsing JSON and no byte of a field (a frame, a thread id) can
//! be mistaken for a separator:
//!
//! - a numbered event (a history stream entry's `r` field, and each event of a published
//!   message): epoch, seq, wire type, run id, thread id, emission time (µs since the Unix
//!   epoch), frame. The publish script writes it (`publish.lua`).
//! - a published message on a user's channel: `aw1` then one or more numbered events, in
//!   seq order (one message per published batch).
//! - a live run (a value of the user's runs hash): owning node, thread id, then the run's
//!   encoded `"thread_id":…,"run_id":…,"agent_name":…` fields to the end.
//! - a member of a node's runs set: user id, then the run id to the end.
//! - a stop request on a node's control channel: `aws1`, user id, run id.
//! - a marker on a node's control channel, which the node publishes to itself to learn
//!   that its subscriber has handled every message sent before it: `awm1`, a number.
//!
//! Parsers never panic: anything malformed is a [`RecordError`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::ids::UserId;
use crate::outbound::Frame;

/// What a published message starts with.
pub(crate) const MESSAGE_MAGIC: &[u8] = b"aw1";
/// What a stop request starts with.
const STOP_MAGIC: &[u8] = b"aws1";
/// What a marker starts with.
const MARKER_MAGIC: &[u8] = b"awm1";

/// One event as the engine numbered it, read from a channel or from history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NumberedEvent {
    /// The user's numbering epoch (shared by the events of one message).
    pub epoch: Arc<str>,
    /// The event's number within the epoch.
    pub seq: u64,
    /// The wire `type` (one of [`crate::event::AgentEvent::wire_type`]'s).
    pub wire_type: &'static str,
    pub run_id: Box<str>,
    pub thread_id: Box<str>,
    /// When the application emitted it (to the microsecond).
    pub emitted_at: SystemTime,
    /// The envelope, byte for byte what every socket of the user is sent.
    pub frame: Frame,
}

#[cfg(test)]
impl NumberedEvent {
    /// True for the two events that end a run.
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self.wire_type, "agent_completed" | "agent_error")
    }
}

/// A malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordError(pub &'static str);

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed engine record: {}", self.0)
    }
}

impl std::error::Error for RecordError {}

/// Appends `field` length-prefixed.
pub(crate) fn put(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(field.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(field);
}

/// Reads length-prefixed fields off the front of a buffer.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    fn is_empty(&self) -> bool {
        self.at >= self.buf.len()
    }

    /// The next field's position in the buffer.
    fn field_range(&mut self) -> Result<std::ops::Range<usize>, RecordError> {
        let rest = &self.buf[self.at..];
        let colon = rest
            .iter()
            .take(11)
            .position(|&b| b == b':')
            .ok_or(RecordError("no field length"))?;
        let len: usize = parse_decimal(&rest[..colon]).ok_or(RecordError("bad field length"))?;
        let start = self.at + colon + 1;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.buf.len())
            .ok_or(RecordError("field runs past the end"))?;
        self.at = end;
        Ok(start..end)
    }

    fn field(&mut self) -> Result<&'a [u8], RecordError> {
        let range = self.field_range()?;
        Ok(&self.buf[range])
    }

    fn str(&mut self) -> Result<&'a str, RecordError> {
        std::str::from_utf8(self.field()?).map_err(|_| RecordError("not UTF-8"))
    }

    fn number(&mut self) -> Result<u64, RecordError> {
        parse_decimal(self.field()?).ok_or(RecordError("bad number"))
    }

    /// Everything left.
    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.at.min(self.buf.len())..];
        self.at = self.buf.len();
        rest
    }
}

/// A decimal number of at most 19 digits (no sign, no spaces).
fn parse_decimal<T: TryFrom<u64>>(digits: &[u8]) -> Option<T> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    T::try_from(value).ok()
}

fn wire_type(name: &[u8]) -> Option<&'static str> {
    Some(match name {
        b"agent_started" => "agent_started",
        b"agent_thinking" => "agent_thinking",
        b"tool_executing" => "tool_executing",
        b"tool_completed" => "tool_completed",
        b"agent_completed" => "agent_completed",
        b"agent_error" => "agent_error",
        _ => return None,
    })
}

/// Parses one numbered event from `record`, a slice of `buf` (frames are cut out of `buf`
/// without a copy). `epoch` is reused when the record's epoch equals it.
fn parse_event(
    buf: &Bytes,
    reader: &mut Reader<'_>,
    epoch: &mut Option<Arc<str>>,
) -> Result<NumberedEvent, RecordError> {
    let epoch_text = reader.str()?;
    let epoch = match epoch {
        Some(known) if &**known == epoch_text => known.clone(),
        _ => epoch.insert(Arc::from(epoch_text)).clone(),
    };
    let seq = reader.number()?;
    let wire_type = wire_type(reader.field()?).ok_or(RecordError("unknown event type"))?;
    let run_id = reader.str()?.into();
    let thread_id = reader.str()?.into();
    let micros = reader.number()?;
    let emitted_at = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_micros(micros))
        .ok_or(RecordError("emission time out of range"))?;
    let frame_range = reader.field_range()?;
    let frame =
        Frame::try_from(buf.slice(frame_range)).map_err(|_| RecordError("frame not UTF-8"))?;
    Ok(NumberedEvent {
        epoch,
        seq,
        wire_type,
        run_id,
        thread_id,
        emitted_at,
        frame,
    })
}

/// Parses a published message: one or more numbered events.
pub(crate) fn parse_message(payload: Bytes) -> Result<Vec<NumberedEvent>, RecordError> {
    let body = payload
        .strip_prefix(MESSAGE_MAGIC)
        .ok_or(RecordError("not an events message"))?;
    let mut reader = Reader::new(&payload);
    reader.at = payload.len() - body.len();
    let mut events = Vec::new();
    let mut epoch = None;
    while !reader.is_empty() {
        events.push(parse_event(&payload, &mut reader, &mut epoch)?);
    }
    if events.is_empty() {
        return Err(RecordError("an events message without events"));
    }
    Ok(events)
}

/// Parses one history entry's record.
pub(crate) fn parse_history_record(
    record: Bytes,
    epoch: &mut Option<Arc<str>>,
) -> Result<NumberedEvent, RecordError> {
    let mut reader = Reader::new(&record);
    let event = parse_event(&record, &mut reader, epoch)?;
    if !reader.is_empty() {
        return Err(RecordError("trailing bytes after a history record"));
    }
    Ok(event)
}

/// A live run, as the user's runs hash holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveRun {
    /// The node the run runs on.
    pub node: String,
    pub thread_id: String,
    /// The run's encoded `"thread_id":…,"run_id":…,"agent_name":…`.
    pub run_fields: Vec<u8>,
}

pub(crate) fn parse_live_run(value: &[u8]) -> Result<LiveRun, RecordError> {
    let mut reader = Reader::new(value);
    Ok(LiveRun {
        node: reader.str()?.to_owned(),
        thread_id: reader.str()?.to_owned(),
        run_fields: reader.rest().to_vec(),
    })
}

/// A member of a node's runs set.
pub(crate) fn node_run_member(user: &UserId, run_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(user.as_str().len() + run_id.len() + 4);
    put(&mut out, user.as_str().as_bytes());
    out.extend_from_slice(run_id.as_bytes());
    out
}

pub(crate) fn parse_node_run_member(member: &[u8]) -> Result<(UserId, String), RecordError> {
    let mut reader = Reader::new(member);
    let user = UserId::new(reader.str()?).map_err(|_| RecordError("bad user id"))?;
    let run_id = std::str::from_utf8(reader.rest()).map_err(|_| RecordError("not UTF-8"))?;
    Ok((user, run_id.to_owned()))
}

/// A stop request for `user`'s run `run_id`.
pub(crate) fn encode_stop(user: &UserId, run_id: &str) -> Vec<u8> {
    let mut out = STOP_MAGIC.to_vec();
    put(&mut out, user.as_str().as_bytes());
    put(&mut out, run_id.as_bytes());
    out
}

pub(crate) fn parse_stop(message: &[u8]) -> Result<(UserId, String), RecordError> {
    let body = message
        .strip_prefix(STOP_MAGIC)
        .ok_or(RecordError("not a stop request"))?;
    let mut reader = Reader::new(body);
    let user = UserId::new(reader.str()?).map_err(|_| RecordError("bad user id"))?;
    let run_id = reader.str()?.to_owned();
    if !reader.is_empty() {
        return Err(RecordError("trailing bytes after a stop request"));
    }
    Ok((user, run_id))
}

/// A message on a node's control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ControlMessage {
    /// Stop this user's run.
    Stop(UserId, String),
    /// The node's own marker with this number.
    Marker(u64),
}

/// The marker numbered `number`.
pub(crate) fn encode_marker(number: u64) -> Vec<u8> {
    let mut out = MARKER_MAGIC.to_vec();
    put(&mut out, number.to_string().as_bytes());
    out
}

/// A stop request or a marker.
pub(crate) fn parse_control(message: &[u8]) -> Result<ControlMessage, RecordError> {
    let Some(body) = message.strip_prefix(MARKER_MAGIC) else {
        let (user, run_id) = parse_stop(message)?;
        return Ok(ControlMessage::Stop(user, run_id));
    };
    let mut reader = Reader::new(body);
    let number = reader.number()?;
    if !reader.is_empty() {
        return Err(RecordError("trailing bytes after a marker"));
    }
    Ok(ControlMessage::Marker(number))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(epoch: &str, seq: u64, kind: &str, run: &str, thread: &str, frame: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for field in [
            epoch,
            &seq.to_string(),
            kind,
            run,
            thread,
            "1700000000123456",
            frame,
        ] {
            put(&mut out, field.as_bytes());
        }
        out
    }

    #[test]
    fn a_message_holds_events_in_order() {
        let mut message = MESSAGE_MAGIC.to_vec();
        message.extend(record("e1", 7, "agent_started", "run:1", "t", "{\"a\":1}"));
        message.extend(record("e1", 8, "agent_error", "run:1", "t:2", "{}"));
        let events = parse_message(Bytes::from(message)).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].seq, events[1].seq), (7, 8));
        assert_eq!(&*events[0].frame, "{\"a\":1}");
        assert_eq!(&*events[1].thread_id, "t:2");
        assert!(Arc::ptr_eq(&events[0].epoch, &events[1].epoch));
        assert!(!events[0].is_terminal() && events[1].is_terminal());
        assert_eq!(
            events[0].emitted_at,
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456)
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        let good = {
            let mut m = MESSAGE_MAGIC.to_vec();
            m.extend(record("e1", 1, "agent_thinking", "r", "t", "{}"));
            m
        };
        let mut cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"aw1".to_vec(),
            b"aw2...".to_vec(),
            b"aw1 9999999999999999999999:x".to_vec(),
            b"aw118446744073709551615:x".to_vec(),
        ];
        for cut in 1..good.len() - 3 {
            cases.push(good[..good.len() - cut].to_vec());
        }
        let mut bad_type = MESSAGE_MAGIC.to_vec();
        bad_type.extend(record("e1", 1, "agent_dancing", "r", "t", "{}"));
        cases.push(bad_type);
        let mut bad_utf8 = MESSAGE_MAGIC.to_vec();
        bad_utf8.extend(record("e1", 1, "agent_thinking", "r", "t", "{}"));
        let at = bad_utf8.len() - 1;
        bad_utf8[at] = 0xff;
        cases.push(bad_utf8);
        for case in cases {
            assert!(
                parse_message(Bytes::from(case.clone())).is_err(),
                "{case:?}"
            );
        }
    }

    #[test]
    fn stop_requests_and_members_round_trip() {
        let user = UserId::new("a:b 5:x").unwrap();
        let stop = encode_stop(&user, "run_1");
        assert_eq!(
            parse_stop(&stop).unwrap(),
            (user.clone(), "run_1".to_owned())
        );
        assert!(parse_stop(b"aws1").is_err());
        assert!(parse_stop(&stop[..stop.len() - 1]).is_err());
        assert_eq!(
            parse_control(&stop).unwrap(),
            ControlMessage::Stop(user.clone(), "run_1".to_owned())
        );
        assert_eq!(
            parse_control(&encode_marker(42)).unwrap(),
            ControlMessage::Marker(42)
        );
        assert!(parse_control(b"awm1").is_err());
        assert!(parse_control(b"awm1x").is_err());
        assert!(parse_control(&[encode_marker(7), b"1".to_vec()].concat()).is_err());
        let member = node_run_member(&user, "run:2");
        assert_eq!(
            parse_node_run_member(&member).unwrap(),
            (user, "run:2".to_owned())
        );
        let mut live = Vec::new();
        put(&mut live, b"node_1");
        put(&mut live, b"thread");
        live.extend_from_slice(b"\"thread_id\":\"thread\"");
        let run = parse_live_run(&live).unwrap();
        assert_eq!(
            (run.node.as_str(), run.thread_id.as_str()),
            ("node_1", "thread")
        );
        assert_eq!(run.run_fields, b"\"thread_id\":\"thread\"");
    }

    proptest! {
        /// Arbitrary bytes never panic a parser.
        #[test]
        fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut with_magic = MESSAGE_MAGIC.to_vec();
            with_magic.extend(&bytes);
            let _ = parse_message(Bytes::from(with_magic));
            let _ = parse_history_record(Bytes::from(bytes.clone()), &mut None);
            let _ = parse_live_run(&bytes);
            let _ = parse_node_run_member(&bytes);
            let _ = parse_stop(&bytes);
            let _ = parse_control(&bytes);
        }
    }
}
