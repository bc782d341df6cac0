//! The only shared state: a lock-protected map of user → (epoch, seq, senders). An event is
//! numbered, encoded once and queued to every socket of its user under that lock, so each
//! socket sees the user's events in `seq` order.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Sends one socket's outgoing frames to its writer task.
pub type Outbox = UnboundedSender<Message>;

struct UserState {
    epoch: String,
    seq: u64,
    senders: Vec<(u64, Outbox)>,
}

#[derive(Default)]
pub struct Hub {
    users: Mutex<HashMap<String, UserState>>,
    next_session: AtomicU64,
}

/// `<prefix>` followed by 16 random lowercase hex digits.
pub fn random_hex(prefix: &str) -> String {
    let bits: u64 = rand::rng().random();
    format!("{prefix}{bits:016x}")
}

/// The frames that are not agent events, `type` first as agentwire writes them.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control<'a> {
    Welcome {
        session_id: u64,
        user_id: &'a str,
        epoch: &'a str,
        seq: u64,
        heartbeat_interval_ms: u64,
        protocol: u32,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        client_ref: Option<&'a Value>,
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        client_ref: Option<&'a Value>,
    },
}

impl Control<'_> {
    /// Encodes the frame as a text message.
    pub fn message(&self) -> Message {
        let json = serde_json::to_string(self).expect("control frames serialize");
        Message::Text(Utf8Bytes::from(json))
    }
}

/// A JSON string literal, escaped.
fn quoted(s: &str) -> String {
    Value::from(s).to_string()
}

impl Hub {
    /// Registers a socket under its user and queues its welcome frame. Returns the session id.
    pub fn attach(&self, user: &str, outbox: Outbox) -> u64 {
        let session_id = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let mut users = self.users.lock();
        let state = users.entry(user.to_owned()).or_insert_with(|| UserState {
            epoch: random_hex(""),
            seq: 0,
            senders: Vec::new(),
        });
        let welcome = Control::Welcome {
            session_id,
            user_id: user,
            epoch: &state.epoch,
            seq: state.seq,
            heartbeat_interval_ms: 10_000,
            protocol: 1,
        };
        // Queued under the lock, so it comes before any event numbered after `seq`.
        let _ = outbox.send(welcome.message());
        state.senders.push((session_id, outbox));
        session_id
    }

    /// Removes a socket; the user (epoch and seq) goes with its last socket.
    pub fn detach(&self, user: &str, session_id: u64) {
        let mut users = self.users.lock();
        if let Some(state) = users.get_mut(user) {
            state.senders.retain(|(id, _)| *id != session_id);
            if state.senders.is_empty() {
                users.remove(user);
            }
        }
    }

    /// The user's current epoch, if it has a socket.
    pub fn epoch(&self, user: &str) -> Option<String> {
        self.users.lock().get(user).map(|state| state.epoch.clone())
    }
}

/// One run's envelope fields, encoded once; each event adds its type, seq, time and data.
pub struct RunEmitter<'a> {
    hub: &'a Hub,
    user: String,
    epoch: String,
    /// `"thread_id":..,"run_id":..,"agent_name":..,`
    ids: String,
}

impl<'a> RunEmitter<'a> {
    pub fn new(hub: &'a Hub, user: String, epoch: String, thread_id: &str, run_id: &str) -> Self {
        let ids = format!(
            "\"thread_id\":{},\"run_id\":{},\"agent_name\":\"synthetic\",",
            quoted(thread_id),
            quoted(run_id)
        );
        RunEmitter {
            hub,
            user,
            epoch,
            ids,
        }
    }

    /// Numbers, encodes and queues one event (`data` is its encoded payload) to every socket
    /// of the user. False when the user has no socket left (or came back under a new epoch):
    /// the run should stop.
    pub fn emit(&self, kind: &str, data: &str) -> bool {
        let timestamp = humantime::format_rfc3339_micros(SystemTime::now());
        // Everything after `seq`, built outside the lock.
        let tail = format!(
            ",\"epoch\":\"{}\",{}\"timestamp\":\"{timestamp}\",\"data\":{data}}}",
            self.epoch, self.ids
        );
        let mut users = self.hub.users.lock();
        let Some(state) = users.get_mut(&self.user) else {
            return false;
        };
        if state.epoch != self.epoch {
            return false;
        }
        state.seq += 1;
        let mut frame = String::with_capacity(40 + tail.len());
        let _ = write!(frame, "{{\"type\":\"{kind}\",\"seq\":{}{tail}", state.seq);
        let message = Message::Text(Utf8Bytes::from(frame));
        for (_, outbox) in &state.senders {
            let _ = outbox.send(message.clone());
        }
        true
    }
}
