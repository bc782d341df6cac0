//! The WebSocket close codes agentwire sends, one per kind of failure.
//!
//! Every place that closes a socket uses a constant from here, and `docs/protocol.md`
//! documents the same table, so a client can tell from the code alone what happened and
//! whether reconnecting can help.

/// Normal closure: the client asked to close, or the server finished with the session.
pub const NORMAL: u16 = 1000;
/// The client broke the WebSocket framing rules (bad opcode, unmasked frame, ...).
pub const PROTOCOL_ERROR: u16 = 1002;
/// The client sent a binary frame or a frame type agentwire does not accept.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// A text message (whole, or its fragments together) was not valid UTF-8; RFC 6455 §8.1
/// requires failing the connection.
pub const INVALID_PAYLOAD: u16 = 1007;
/// The client broke the rules in a way an `error` frame no longer answers: more than
/// `max_invalid_frames` invalid frames within a minute, or a flood before the welcome.
pub const POLICY_VIOLATION: u16 = 1008;
/// A frame, or a fragmented message all together, declared more than the configured
/// `max_frame_bytes` (closed at the frame header, before the payload is read).
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The server hit an internal failure for this user; reconnecting may help.
pub const INTERNAL_ERROR: u16 = 1011;
/// The server is restarting or draining; reconnect (with `resume`) shortly.
pub const SERVICE_RESTART: u16 = 1012;
/// The server is at capacity (`max_sessions` sockets, or `max_users` users all connected);
/// reconnect later.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// The client answered no heartbeat within `client_timeout`.
pub const HEARTBEAT_TIMEOUT: u16 = 4000;
/// The client stopped reading: more than `max_session_backlog_frames` (or bytes) were
/// waiting for it. It received every event up to the cut-off, with no gap; reconnect with
/// `resume` to get the rest.
pub const SLOW_CONSUMER: u16 = 4001;
/// The token the socket was opened with expired; reconnect with a fresh token.
pub const TOKEN_EXPIRED: u16 = 4002;
/// The user already has `max_sockets_per_user` open sockets; close one first.
pub const TOO_MANY_SOCKETS: u16 = 4003;
/// The client kept sending faster than `inbound_rate` after `rate_limited` errors.
pub const RATE_LIMITED: u16 = 4008;

/// The reason text sent with a close code, for logs and people reading packet captures.
pub fn reason(code: u16) -> &'static str {
    match code {
        NORMAL => "normal closure",
        PROTOCOL_ERROR => "protocol error",
        UNSUPPORTED_DATA => "unsupported data",
        INVALID_PAYLOAD => "invalid payload data",
        POLICY_VIOLATION => "policy violation",
        MESSAGE_TOO_BIG => "message too big",
        INTERNAL_ERROR => "internal error",
        SERVICE_RESTART => "service restart",
        TRY_AGAIN_LATER => "try again later",
        HEARTBEAT_TIMEOUT => "heartbeat timeout",
        SLOW_CONSUMER => "slow consumer",
        TOKEN_EXPIRED => "token expired",
        TOO_MANY_SOCKETS => "too many sockets for this user",
        RATE_LIMITED => "rate limited",
        _ => "closed",
    }
}
