//! A model of the inbound gate's documented rules, for fuzzing
//! ([`crate::inbound_gate::InboundGate`] against it, in `inbound_fuzz`), tests only.
//!
//! [`Model`] is written from `docs/security.md` (section 4, and the order of checks in
//! section 7), not from `inbound_gate.rs`, so the gate and the model can only agree on every
//! verdict if the gate does what the documentation says.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::close_code;
use crate::inbound::{decode, ClientFrame};
use crate::inbound_gate::{GateLimits, RawFrame, Verdict};
use crate::outbound::ErrorCode;

// The kinds of frame the fuzzer sends, as numbers a strategy can pick.
pub(crate) const TEXT: u8 = 0;
pub(crate) const BINARY: u8 = 1;
pub(crate) const FIRST_TEXT: u8 = 2;
pub(crate) const FIRST_BINARY: u8 = 3;
pub(crate) const CONTINUE: u8 = 4;
pub(crate) const LAST: u8 = 5;

/// The [`RawFrame`] of `kind` (one of the constants above) over `bytes`.
pub(crate) fn raw(kind: u8, bytes: &[u8]) -> RawFrame<'_> {
    match kind {
        TEXT => RawFrame::Text(bytes),
        BINARY => RawFrame::Binary(bytes),
        FIRST_TEXT => RawFrame::FirstText(bytes),
        FIRST_BINARY => RawFrame::FirstBinary(bytes),
        CONTINUE => RawFrame::Continue(bytes),
        _ => RawFrame::Last(bytes),
    }
}

/// What the gate must answer, as [`Model`] computes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expected {
    Message(ClientFrame),
    /// An `error` frame with this code and `ref`.
    Reject(ErrorCode, Option<Value>),
    Close(u16),
    Pending,
}

impl Expected {
    pub(crate) fn of(verdict: Verdict) -> Expected {
        match verdict {
            Verdict::Message(frame) => Expected::Message(frame),
            Verdict::Reject(error) => Expected::Reject(error.code, error.client_ref),
            Verdict::Close(code) => Expected::Close(code),
            Verdict::Pending => Expected::Pending,
        }
    }

    pub(crate) fn label(&self) -> String {
        match self {
            Expected::Message(_) => "message".into(),
            Expected::Reject(ErrorCode::RateLimited, _) => "rate_limited".into(),
            Expected::Reject(..) => "invalid".into(),
            Expected::Close(code) => code.to_string(),
            Expected::Pending => "pending".into(),
        }
    }
}

/// The gate's rules as `docs/security.md` states them (section 4, and the order of checks
/// in section 7), written out plainly without `inbound_gate.rs`: fragment order (1002),
/// binary policy (1003), size of the whole message (1009), UTF-8 of a whole text message
/// (1007), the token bucket (`rate_limited`, then 4008 at the `burst`-th refusal in a row),
/// decoding, and more than `max_invalid` invalid messages within 60 s (1008). Closing is
/// final.
pub(crate) struct Model {
    limits: GateLimits,
    closed: Option<u16>,
    /// The fragmented message in progress: whether it is text, and its bytes so far.
    assembling: Option<(bool, Vec<u8>)>,
    tokens: f64,
    refilled_at: Instant,
    refused_in_a_row: u32,
    invalid_at: Vec<Instant>,
}

impl Model {
    pub(crate) fn new(limits: GateLimits, now: Instant) -> Model {
        Model {
            tokens: f64::from(limits.burst),
            limits,
            closed: None,
            assembling: None,
            refilled_at: now,
            refused_in_a_row: 0,
            invalid_at: Vec::new(),
        }
    }

    pub(crate) fn step(&mut self, kind: u8, bytes: &[u8], now: Instant) -> Expected {
        if let Some(code) = self.closed {
            return Expected::Close(code);
        }
        let expected = self.judge(kind, bytes, now);
        if let Expected::Close(code) = expected {
            self.closed = Some(code);
            self.assembling = None;
        }
        expected
    }

    fn judge(&mut self, kind: u8, bytes: &[u8], now: Instant) -> Expected {
        let starts = matches!(kind, TEXT | BINARY | FIRST_TEXT | FIRST_BINARY);
        if starts == self.assembling.is_some() {
            return Expected::Close(close_code::PROTOCOL_ERROR);
        }
        if matches!(kind, BINARY | FIRST_BINARY) && !self.limits.accept_binary {
            return Expected::Close(close_code::UNSUPPORTED_DATA);
        }
        let so_far = self.assembling.as_ref().map_or(0, |(_, b)| b.len());
        if so_far + bytes.len() > self.limits.max_message_bytes {
            return Expected::Close(close_code::MESSAGE_TOO_BIG);
        }
        let (text, whole) = match kind {
            TEXT | BINARY => (kind == TEXT, bytes.to_vec()),
            FIRST_TEXT | FIRST_BINARY => {
                self.assembling = Some((kind == FIRST_TEXT, bytes.to_vec()));
                return Expected::Pending;
            }
            CONTINUE => {
                if let Some((_, so_far)) = &mut self.assembling {
                    so_far.extend_from_slice(bytes);
                }
                return Expected::Pending;
            }
            _ => {
                let Some((text, mut so_far)) = self.assembling.take() else {
                    unreachable!("checked above")
                };
                so_far.extend_from_slice(bytes);
                (text, so_far)
            }
        };
        let whole = String::from_utf8(whole).ok();
        if text && whole.is_none() {
            return Expected::Close(close_code::INVALID_PAYLOAD);
        }
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.refilled_at = self.refilled_at.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * f64::from(self.limits.rate_per_sec))
            .min(f64::from(self.limits.burst));
        if self.tokens < 1.0 {
            self.refused_in_a_row += 1;
            if self.refused_in_a_row >= self.limits.burst {
                return Expected::Close(close_code::RATE_LIMITED);
            }
            return Expected::Reject(ErrorCode::RateLimited, None);
        }
        self.tokens -= 1.0;
        self.refused_in_a_row = 0;
        let decoded = match &whole {
            Some(text) => decode(text).map_err(|e| (e.code, e.client_ref)),
            None => Err((ErrorCode::BadUtf8, None)),
        };
        match decoded {
            Ok(frame) => Expected::Message(frame),
            Err((code, client_ref)) => {
                let window = Duration::from_secs(60);
                self.invalid_at
                    .retain(|at| now.duration_since(*at) <= window);
                self.invalid_at.push(now);
                if self.invalid_at.len() > self.limits.max_invalid_frames {
                    Expected::Close(close_code::POLICY_VIOLATION)
                } else {
                    Expected::Reject(code, client_ref)
                }
            }
        }
    }
}
