//! The inbound gate: the pure state machine every client frame passes before it is handled.
//!
//! The session actor feeds it raw WebSocket data frames (whole or fragmented, text or
//! binary) and acts on its [`Verdict`]: handle a typed message, answer an `error` frame, or
//! close with a close code. The gate assembles fragments within `max_frame_bytes`, applies
//! the binary policy, fails a text message that is not UTF-8 once it is whole (1007, as
//! RFC 6455 §8.1 requires: a character split between fragments is fine), rate-limits with a
//! token bucket, counts invalid frames against a per-minute threshold, and decodes (see
//! [`crate::inbound::decode`]). It does no I/O and reads the clock only through the `now` it
//! is given, so it is fuzzed directly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::close_code;
use crate::config::Config;
use crate::inbound::{self, ClientFrame, InboundError};
use crate::outbound::ErrorCode;

/// The window in which `max_invalid_frames` applies.
const INVALID_WINDOW: Duration = Duration::from_secs(60);

/// A client data frame as it came off the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawFrame<'a> {
    /// A whole text frame (its bytes may still be invalid UTF-8).
    Text(&'a [u8]),
    /// A whole binary frame.
    Binary(&'a [u8]),
    /// The first fragment of a text message.
    FirstText(&'a [u8]),
    /// The first fragment of a binary message.
    FirstBinary(&'a [u8]),
    /// A middle fragment.
    Continue(&'a [u8]),
    /// The last fragment.
    Last(&'a [u8]),
}

/// What the session does with a frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Handle this message.
    Message(ClientFrame),
    /// Answer with an `error` frame; the socket stays open.
    Reject(InboundError),
    /// Close the socket with this code.
    Close(u16),
    /// A fragment was buffered; nothing to do yet.
    Pending,
}

/// The limits the gate enforces, copied from [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct GateLimits {
    pub max_message_bytes: usize,
    pub accept_binary: bool,
    pub rate_per_sec: u32,
    pub burst: u32,
    pub max_invalid_frames: usize,
}

impl From<&Config> for GateLimits {
    fn from(config: &Config) -> Self {
        GateLimits {
            max_message_bytes: config.max_frame_bytes,
            accept_binary: config.accept_binary,
            rate_per_sec: config.inbound_rate,
            burst: config.inbound_burst,
            max_invalid_frames: config.max_invalid_frames,
        }
    }
}

/// A whole message: all its bytes, and whether it came as text (or binary).
struct Whole {
    text: bool,
    bytes: Vec<u8>,
}

pub(crate) struct InboundGate {
    limits: GateLimits,
    /// A fragmented message being assembled (always within `max_message_bytes`).
    assembling: Option<Whole>,
    /// Token bucket: tokens available, and when it was last refilled.
    tokens: f64,
    refilled_at: Instant,
    /// `rate_limited` answers since the last accepted message.
    rate_strikes: u32,
    /// When recent invalid frames arrived (at most `max_invalid_frames + 1` kept).
    invalid_at: VecDeque<Instant>,
    /// Set once the gate decided to close; every later frame gets the same answer.
    closed: Option<u16>,
}

impl InboundGate {
    pub(crate) fn new(limits: GateLimits, now: Instant) -> Self {
        InboundGate {
            tokens: f64::from(limits.burst),
            limits,
            assembling: None,
            refilled_at: now,
            rate_strikes: 0,
            invalid_at: VecDeque::new(),
            closed: None,
        }
    }

    /// Takes one frame and says what to do with it.
    pub(crate) fn accept(&mut self, frame: RawFrame<'_>, now: Instant) -> Verdict {
        if let Some(code) = self.closed {
            return Verdict::Close(code);
        }
        let verdict = match self.assemble(frame) {
            Ok(Some(whole)) => self.admit(&whole, now),
            Ok(None) => Verdict::Pending,
            Err(code) => Verdict::Close(code),
        };
        if let Verdict::Close(code) = verdict {
            self.closed = Some(code);
            self.assembling = None;
        }
        verdict
    }

    /// Whether a WebSocket ping may be answered: pings draw on the same token bucket as
    /// messages, and one over the rate is left unanswered (no error, no strike).
    pub(crate) fn allow_ping(&mut self, now: Instant) -> bool {
        self.closed.is_none() && self.take_token(now)
    }

    /// A whole message, `None` while fragments are still coming, or a close code.
    fn assemble(&mut self, frame: RawFrame<'_>) -> Result<Option<Whole>, u16> {
        let max = self.limits.max_message_bytes;
        match frame {
            RawFrame::Text(_)
            | RawFrame::Binary(_)
            | RawFrame::FirstText(_)
            | RawFrame::FirstBinary(_)
                if self.assembling.is_some() =>
            {
                // A new message inside an unfinished one breaks RFC 6455 framing.
                Err(close_code::PROTOCOL_ERROR)
            }
            RawFrame::Continue(_) | RawFrame::Last(_) if self.assembling.is_none() => {
                Err(close_code::PROTOCOL_ERROR)
            }
            RawFrame::Binary(_) | RawFrame::FirstBinary(_) if !self.limits.accept_binary => {
                Err(close_code::UNSUPPORTED_DATA)
            }
            RawFrame::Text(bytes) | RawFrame::Binary(bytes) if bytes.len() > max => {
                Err(close_code::MESSAGE_TOO_BIG)
            }
            RawFrame::Text(bytes) | RawFrame::Binary(bytes) => Ok(Some(Whole {
                text: matches!(frame, RawFrame::Text(_)),
                bytes: bytes.to_vec(),
            })),
            RawFrame::FirstText(bytes) | RawFrame::FirstBinary(bytes) => {
                if bytes.len() > max {
                    return Err(close_code::MESSAGE_TOO_BIG);
                }
                self.assembling = Some(Whole {
                    text: matches!(frame, RawFrame::FirstText(_)),
                    bytes: bytes.to_vec(),
                });
                Ok(None)
            }
            RawFrame::Continue(bytes) | RawFrame::Last(bytes) => {
                let whole = self.assembling.as_mut().ok_or(close_code::PROTOCOL_ERROR)?;
                if whole.bytes.len() + bytes.len() > max {
                    return Err(close_code::MESSAGE_TOO_BIG);
                }
                whole.bytes.extend_from_slice(bytes);
                if matches!(frame, RawFrame::Last(_)) {
                    Ok(self.assembling.take())
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// UTF-8, rate limit and decoding for one whole message.
    fn admit(&mut self, whole: &Whole, now: Instant) -> Verdict {
        let text = match std::str::from_utf8(&whole.bytes) {
            Ok(text) => Ok(text),
            Err(_) if whole.text => return Verdict::Close(close_code::INVALID_PAYLOAD),
            // A binary message (when accepted) is read as UTF-8 JSON; one that is not UTF-8
            // is an invalid frame like any other, not a broken text message.
            Err(_) => Err(InboundError {
                code: ErrorCode::BadUtf8,
                message: "the binary message is not valid UTF-8".to_owned(),
                client_ref: None,
            }),
        };
        if !self.take_token(now) {
            self.rate_strikes += 1;
            if self.rate_strikes >= self.limits.burst {
                return Verdict::Close(close_code::RATE_LIMITED);
            }
            return Verdict::Reject(InboundError {
                code: ErrorCode::RateLimited,
                message: format!(
                    "more than {} messages per second; this one was not handled",
                    self.limits.rate_per_sec
                ),
                client_ref: None,
            });
        }
        self.rate_strikes = 0;
        match text.and_then(inbound::decode) {
            Ok(frame) => Verdict::Message(frame),
            Err(error) => {
                while self
                    .invalid_at
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) > INVALID_WINDOW)
                {
                    self.invalid_at.pop_front();
                }
                self.invalid_at.push_back(now);
                if self.invalid_at.len() > self.limits.max_invalid_frames {
                    Verdict::Close(close_code::POLICY_VIOLATION)
                } else {
                    Verdict::Reject(error)
                }
            }
        }
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.refilled_at = self.refilled_at.max(now);
        self.tokens = (self.tokens + elapsed * f64::from(self.limits.rate_per_sec))
            .min(f64::from(self.limits.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
