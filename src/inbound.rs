//! Client → server frames: decoding text into typed [`ClientMessage`]s, or into an error
//! with a code the client can act on.
//!
//! Decoding is total: any input, however malformed, yields either a message or an
//! [`InboundError`] naming what was wrong; nothing here panics. The session actor calls
//! [`decode`] for every text frame and answers errors with an `error` frame.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::outbound::ErrorCode;

/// The longest accepted `thread_id`, `run_id` or `epoch`, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// A decoded client frame: the message and the client's optional correlation `ref`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    /// Echoed back in the `error` (and `pong`, `thread_switched`) frames this frame causes.
    pub client_ref: Option<Value>,
    /// What the client asked for.
    pub message: ClientMessage,
}

/// Everything a client can ask, one variant per wire `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `start_agent {user_request, thread_id?, context?}`
    StartAgent(StartAgent),
    /// `user_message {content, thread_id}`
    UserMessage(UserMessage),
    /// `stop_agent {run_id}`
    StopAgent {
        /// The run to cancel; must be one of this user's.
        run_id: String,
    },
    /// `switch_thread {thread_id}`; `null` receives every thread again.
    SwitchThread {
        /// The only thread whose events this socket receives from now on.
        thread_id: Option<String>,
    },
    /// `ping`, answered with `pong`.
    Ping,
    /// `resume {epoch, last_seq, partial?}`
    Resume {
        /// The epoch the client's `last_seq` belongs to.
        epoch: String,
        /// The last `seq` the client received.
        last_seq: u64,
        /// When the replay buffer no longer holds every event after `last_seq`, replay the
        /// ones it still holds (the answer's `from_seq` says where they start) instead of
        /// answering `resync_required`.
        partial: bool,
    },
}

/// A request to start an agent run, as the client sent it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartAgent {
    /// What the user asked.
    pub user_request: String,
    /// The thread to run in; a new thread id is made when absent.
    #[serde(default)]
    pub thread_id: Option<String>,
    /// Free-form context for the application (the demo agent reads `synthetic`).
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
}

/// A chat message on an existing thread.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserMessage {
    /// The message text.
    pub content: String,
    /// The thread it belongs to.
    pub thread_id: String,
}

/// Why a client frame could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundError {
    /// The error code sent to the client.
    pub code: ErrorCode,
    /// What was wrong, for people.
    pub message: String,
    /// The client's `ref`, when the frame was well-formed enough to carry one.
    pub client_ref: Option<Value>,
}

impl InboundError {
    fn new(code: ErrorCode, message: impl Into<String>, client_ref: Option<Value>) -> Self {
        InboundError {
            code,
            message: message.into(),
            client_ref,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopAgentFields {
    run_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchThreadFields {
    thread_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeFields {
    epoch: String,
    last_seq: u64,
    #[serde(default)]
    partial: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// Decodes one client text frame.
///
/// ```
/// use agentwire::inbound::{decode, ClientMessage};
/// let frame = decode(r#"{"type":"stop_agent","run_id":"run_1","ref":7}"#).unwrap();
/// assert_eq!(frame.message, ClientMessage::StopAgent { run_id: "run_1".into() });
/// assert_eq!(frame.client_ref, Some(serde_json::json!(7)));
/// assert!(decode("{not json").is_err());
/// ```
pub fn decode(text: &str) -> Result<ClientFrame, InboundError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| InboundError::new(ErrorCode::BadJson, format!("invalid JSON: {e}"), None))?;
    let Value::Object(mut fields) = value else {
        return Err(InboundError::new(
            ErrorCode::BadFrame,
            "a frame must be a JSON object",
            None,
        ));
    };
    let client_ref = match fields.remove("ref") {
        None | Some(Value::Null) => None,
        Some(r @ Value::Number(_)) => Some(r),
        Some(Value::String(s)) if s.len() <= MAX_ID_BYTES => Some(Value::String(s)),
        Some(_) => {
            return Err(InboundError::new(
                ErrorCode::InvalidField,
                format!("`ref` must be a number or a string of at most {MAX_ID_BYTES} bytes"),
                None,
            ))
        }
    };
    let kind = match fields.remove("type") {
        Some(Value::String(kind)) => kind,
        Some(_) => {
            return Err(InboundError::new(
                ErrorCode::BadFrame,
                "`type` must be a string",
                client_ref,
            ))
        }
        None => {
            return Err(InboundError::new(
                ErrorCode::BadFrame,
                "the frame has no `type`",
                client_ref,
            ))
        }
    };
    match decode_message(&kind, Value::Object(fields)) {
        Ok(message) => Ok(ClientFrame {
            client_ref,
            message,
        }),
        Err(mut error) => {
            error.client_ref = client_ref;
            Err(error)
        }
    }
}

fn decode_message(kind: &str, rest: Value) -> Result<ClientMessage, InboundError> {
    let invalid = |e: serde_json::Error| {
        InboundError::new(ErrorCode::InvalidField, format!("{kind}: {e}"), None)
    };
    let message = match kind {
        "start_agent" => {
            let start: StartAgent = serde_json::from_value(rest).map_err(invalid)?;
            check_optional_id("thread_id", start.thread_id.as_deref())?;
            ClientMessage::StartAgent(start)
        }
        "user_message" => {
            let message: UserMessage = serde_json::from_value(rest).map_err(invalid)?;
            check_id("thread_id", &message.thread_id)?;
            ClientMessage::UserMessage(message)
        }
        "stop_agent" => {
            let StopAgentFields { run_id } = serde_json::from_value(rest).map_err(invalid)?;
            check_id("run_id", &run_id)?;
            ClientMessage::StopAgent { run_id }
        }
        "switch_thread" => {
            let SwitchThreadFields { thread_id } = serde_json::from_value(rest).map_err(invalid)?;
            check_optional_id("thread_id", thread_id.as_deref())?;
            ClientMessage::SwitchThread { thread_id }
        }
        "ping" => {
            let NoFields {} = serde_json::from_value(rest).map_err(invalid)?;
            ClientMessage::Ping
        }
        "resume" => {
            let ResumeFields {
                epoch,
                last_seq,
                partial,
            } = serde_json::from_value(rest).map_err(invalid)?;
            check_id("epoch", &epoch)?;
            ClientMessage::Resume {
                epoch,
                last_seq,
                partial,
            }
        }
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(InboundError::new(
                ErrorCode::UnknownType,
                format!("unknown frame type `{shown}`"),
                None,
            ));
        }
    };
    Ok(message)
}

fn check_id(field: &str, id: &str) -> Result<(), InboundError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(InboundError::new(
            ErrorCode::InvalidField,
            format!("`{field}` must be 1 to {MAX_ID_BYTES} bytes without control characters"),
            None,
        ));
    }
    Ok(())
}

fn check_optional_id(field: &str, id: Option<&str>) -> Result<(), InboundError> {
    id.map_or(Ok(()), |id| check_id(field, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> ErrorCode {
        decode(text).expect_err("should be refused").code
    }

    #[test]
    fn every_kind_of_bad_input_has_its_code() {
        assert_eq!(code_of("{"), ErrorCode::BadJson);
        assert_eq!(code_of("[1,2]"), ErrorCode::BadFrame);
        assert_eq!(code_of(r#"{"x":1}"#), ErrorCode::BadFrame);
        assert_eq!(code_of(r#"{"type":5}"#), ErrorCode::BadFrame);
        assert_eq!(
            code_of(r#"{"type":"launch_missiles"}"#),
            ErrorCode::UnknownType
        );
        assert_eq!(code_of(r#"{"type":"stop_agent"}"#), ErrorCode::InvalidField);
        assert_eq!(
            code_of(r#"{"type":"stop_agent","run_id":7}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code_of(r#"{"type":"stop_agent","run_id":""}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code_of(r#"{"type":"resume","epoch":"e","last_seq":-1}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code_of(r#"{"type":"resume","epoch":"e","last_seq":1e400}"#),
            ErrorCode::BadJson
        );
        assert_eq!(
            code_of(r#"{"type":"ping","extra":true}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code_of(r#"{"type":"ping","ref":[1]}"#),
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn a_resume_is_partial_only_when_it_says_so() {
        let partial = |text: &str| match decode(text).map(|f| f.message) {
            Ok(ClientMessage::Resume { partial, .. }) => Some(partial),
            _ => None,
        };
        assert_eq!(
            partial(r#"{"type":"resume","epoch":"e","last_seq":1}"#),
            Some(false)
        );
        assert_eq!(
            partial(r#"{"type":"resume","epoch":"e","last_seq":1,"partial":true}"#),
            Some(true)
        );
        assert_eq!(
            code_of(r#"{"type":"resume","epoch":"e","last_seq":1,"partial":"yes"}"#),
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn errors_carry_the_clients_ref() {
        let error = decode(r#"{"type":"stop_agent","ref":"abc"}"#).unwrap_err();
        assert_eq!(error.client_ref, Some(Value::String("abc".into())));
    }

    #[test]
    fn well_formed_frames_decode() {
        let frame = decode(
            r#"{"type":"start_agent","user_request":"hi","thread_id":"t1","context":{"a":1}}"#,
        )
        .unwrap();
        let ClientMessage::StartAgent(start) = frame.message else {
            panic!("wrong variant")
        };
        assert_eq!(start.user_request, "hi");
        assert_eq!(start.thread_id.as_deref(), Some("t1"));
        assert_eq!(
            decode(r#"{"type":"switch_thread","thread_id":null}"#)
                .unwrap()
                .message,
            ClientMessage::SwitchThread { thread_id: None }
        );
        assert_eq!(
            decode(r#"{"type":"ping"}"#).unwrap().message,
            ClientMessage::Ping
        );
    }
}
