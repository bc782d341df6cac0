//! Server → client control frames (everything that is not an agent event) and the error
//! codes carried by `error` frames.
//!
//! Agent events are encoded by [`crate::event::EventFrame`]; the frames here answer the
//! client (`welcome`, `pong`, `error`, `thread_switched`, `resumed`, `resync_required`). Each is encoded
//! once into a [`Frame`], the shared, reference-counted text that sessions write.

use bytestring::ByteString;
use serde::Serialize;
use serde_json::Value;

/// The version of the wire protocol, sent in the welcome frame.
pub const PROTOCOL_VERSION: u32 = 1;

/// One encoded text frame. Cloning shares the bytes (a reference count), so an event is
/// encoded once and written to every socket of its user without copying.
pub type Frame = ByteString;

/// The `code` of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON.
    BadJson,
    /// The frame was JSON but not an object with a string `type`.
    BadFrame,
    /// The `type` is not one agentwire knows.
    UnknownType,
    /// A field was missing, of the wrong type, out of range, or not expected.
    InvalidField,
    /// The run (or other object) named does not exist for this user.
    NotFound,
    /// The server has no application handler for this request.
    Unsupported,
    /// A binary message (accepted with `accept_binary`) was not valid UTF-8. A text message
    /// that is not UTF-8 closes the socket with 1007 instead.
    BadUtf8,
    /// More than `inbound_rate` messages per second; this one was not handled.
    RateLimited,
    /// The user already has `max_runs_per_user` requests running.
    TooManyRuns,
    /// The server could not reach what it needs to answer (with several nodes: its Redis);
    /// the request may be sent again.
    Unavailable,
}

/// A control frame sent to one socket.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlFrame<'a> {
    /// First frame on every socket.
    Welcome {
        /// This socket's session id.
        session_id: u64,
        /// The authenticated user.
        user_id: &'a str,
        /// The user's numbering epoch.
        epoch: &'a str,
        /// The `seq` of the user's latest event (0 when none yet).
        seq: u64,
        /// How often the server pings, so the client can size its own timeouts.
        heartbeat_interval_ms: u64,
        /// [`PROTOCOL_VERSION`].
        protocol: u32,
    },
    /// Answer to `ping`.
    Pong {
        /// The client's `ref`, if it sent one.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        client_ref: Option<&'a Value>,
    },
    /// A client frame could not be handled.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// What went wrong, for people.
        message: &'a str,
        /// The client's `ref`, if it sent one.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        client_ref: Option<&'a Value>,
    },
    /// Acknowledges `switch_thread`: from here on this socket receives only that thread.
    ThreadSwitched {
        /// The thread now selected; `null` means every thread.
        thread_id: Option<&'a str>,
        /// The client's `ref`, if it sent one.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        client_ref: Option<&'a Value>,
    },
    /// A resume succeeded: every event with `from_seq <= seq <= to_seq` was just replayed
    /// (none when `from_seq > to_seq`), and live events follow from `to_seq + 1`.
    Resumed {
        /// The first replayed `seq`.
        from_seq: u64,
        /// The last replayed `seq`.
        to_seq: u64,
    },
    /// The events a `resume` asked for cannot be replayed (another epoch, or evicted): the
    /// client must reload its state; this socket's events continue after `seq`.
    ResyncRequired {
        /// The user's current epoch.
        epoch: &'a str,
        /// The last `seq` this socket has been sent; live events continue after it.
        seq: u64,
    },
}

impl ControlFrame<'_> {
    /// Encodes the frame once into shareable text.
    pub fn encode(&self) -> Frame {
        // Strings, numbers and `Value`s always serialize.
        ByteString::from(serde_json::to_string(self).expect("control frame serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frames_echo_the_ref() {
        let r = Value::from("r1");
        let frame = ControlFrame::Error {
            code: ErrorCode::NotFound,
            message: "no such run",
            client_ref: Some(&r),
        };
        assert_eq!(
            &*frame.encode(),
            r#"{"type":"error","code":"not_found","message":"no such run","ref":"r1"}"#
        );
    }
}
